//! What the publish and consume sides' spans share besides the span
//! itself: span naming and captured headers as attributes.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use async_nats::HeaderMap;
use opentelemetry::KeyValue;

use crate::attr;
use crate::propagation::find_header;

/// Names a span from the message subject.
pub(crate) type SpanNameFn = Arc<dyn Fn(&str) -> String + Send + Sync>;

/// A span's name: given whole, or `{operation} {destination}` (the
/// operation alone when the destination is empty), written out only once:
/// by tracing-opentelemetry for a `tracing` span, here for a tracer span.
#[derive(Debug)]
pub(crate) enum SpanName<'a> {
    /// A name made by the caller (a custom span-name function, or fixed).
    Given(Cow<'static, str>),
    /// The operation and the destination's template or subject.
    Joined(&'static str, &'a str),
}

impl SpanName<'_> {
    /// The name as the span builder takes it.
    pub(crate) fn into_cow(self) -> Cow<'static, str> {
        match self {
            Self::Given(name) => name,
            Self::Joined(operation, "") => Cow::Borrowed(operation),
            Self::Joined(operation, destination) => {
                let mut name = String::with_capacity(operation.len() + 1 + destination.len());
                name.push_str(operation);
                name.push(' ');
                name.push_str(destination);
                Cow::Owned(name)
            }
        }
    }
}

impl fmt::Display for SpanName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Given(name) => f.write_str(name),
            Self::Joined(operation, "") => f.write_str(operation),
            Self::Joined(operation, destination) => {
                // One write: a `String` being formatted into then grows
                // once, to the whole name, instead of at every part.
                let len = operation.len() + 1 + destination.len();
                let mut joined = [0; 128];
                match joined.get_mut(..len) {
                    Some(joined) => {
                        let (head, tail) = joined.split_at_mut(operation.len());
                        head.copy_from_slice(operation.as_bytes());
                        tail[0] = b' ';
                        tail[1..].copy_from_slice(destination.as_bytes());
                        f.write_str(std::str::from_utf8(joined).map_err(|_| fmt::Error)?)
                    }
                    None => write!(f, "{operation} {destination}"),
                }
            }
        }
    }
}

/// The allow-listed headers as `messaging.nats.header.<name>` attributes.
pub(crate) fn captured_headers<'a>(
    headers: Option<&'a HeaderMap>,
    names: &'a [String],
) -> impl Iterator<Item = KeyValue> + 'a {
    headers.into_iter().flat_map(move |headers| {
        names.iter().filter_map(move |name| {
            find_header(headers, name).map(|(_, value)| {
                KeyValue::new(
                    format!("{}{}", attr::NATS_HEADER_PREFIX, name.to_ascii_lowercase()),
                    value.to_owned(),
                )
            })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::SpanName;

    #[test]
    fn span_names_read_the_same_written_out_or_formatted() {
        let long = "a.".repeat(100);
        let cases = [
            (SpanName::Joined("publish", "orders.*"), "publish orders.*"),
            (SpanName::Joined("publish", ""), "publish"),
            (SpanName::Given("custom name".into()), "custom name"),
            (
                SpanName::Joined("process", &long),
                &format!("process {long}"),
            ),
        ];
        for (name, expected) in cases {
            assert_eq!(name.to_string(), expected);
            assert_eq!(name.into_cow(), expected);
        }
    }
}
