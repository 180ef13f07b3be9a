//! What the publish and consume sides' spans share besides the span
//! itself: span naming and captured headers as attributes.

use std::sync::Arc;

use async_nats::HeaderMap;
use opentelemetry::KeyValue;

use crate::attr;
use crate::propagation::find_header;

/// Names a span from the message subject.
pub(crate) type SpanNameFn = Arc<dyn Fn(&str) -> String + Send + Sync>;

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
