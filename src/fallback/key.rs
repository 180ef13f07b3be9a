use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use crate::propagation::{find_header, KeyError, MessageMeta, MAX_ENCODED_KEY_LEN};

type KeyFn = dyn Fn(&MessageMeta<'_>) -> Option<String> + Send + Sync;

/// How the KV fallback derives a message's key, identically on both sides.
///
/// The derived id is [encoded](encode_key) before it is used as a KV key,
/// so any string is safe.
///
/// Pick a source that survives the loss you guard against: a relay that
/// drops headers drops a header-derived id too, so there prefer a subject
/// token or an id inside the payload.
///
/// # Examples
///
/// ```
/// use nats_otel::consume::MessageMeta;
/// use nats_otel::fallback::FallbackKey;
///
/// let by_token = FallbackKey::subject_token(1); // jobs.<id>.created → <id>
/// let input = MessageMeta::new("jobs.42.created", None, b"");
/// assert_eq!(by_token.derive(&input).unwrap(), "42");
///
/// let by_payload = FallbackKey::from_fn("json field id", |input: &MessageMeta<'_>| {
///     let doc: serde_json::Value = serde_json::from_slice(input.payload).ok()?;
///     doc.get("id")?.as_str().map(str::to_owned)
/// });
/// let input = MessageMeta::new("jobs", None, br#"{"id":"a..b"}"#);
/// assert_eq!(by_payload.derive(&input).unwrap(), "a=2E=2Eb");
/// ```
#[derive(Clone)]
pub struct FallbackKey {
    rule: Rule,
}

#[derive(Clone)]
enum Rule {
    Header(String),
    SubjectToken(usize),
    Subject,
    Custom { name: String, f: Arc<KeyFn> },
}

impl fmt::Debug for FallbackKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FallbackKey({self})")
    }
}

impl fmt::Display for FallbackKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.rule {
            Rule::Header(name) => write!(f, "header {name}"),
            Rule::SubjectToken(i) => write!(f, "subject token {i}"),
            Rule::Subject => f.write_str("whole subject"),
            Rule::Custom { name, .. } => write!(f, "{name}"),
        }
    }
}

impl FallbackKey {
    /// The value of header `name` (any casing), e.g. `Nats-Msg-Id` or your
    /// own `Job-Id`.
    pub fn header(name: impl Into<String>) -> Self {
        Self {
            rule: Rule::Header(name.into()),
        }
    }

    /// The `index`-th (0-based) `.`-separated token of the subject.
    pub fn subject_token(index: usize) -> Self {
        Self {
            rule: Rule::SubjectToken(index),
        }
    }

    /// The whole subject (for subjects that carry a unique id).
    pub fn subject() -> Self {
        Self {
            rule: Rule::Subject,
        }
    }

    /// Your own rule, e.g. an id inside the payload. `name` describes it in
    /// reasons and logs.
    pub fn from_fn<F>(name: impl Into<String>, f: F) -> Self
    where
        F: Fn(&MessageMeta<'_>) -> Option<String> + Send + Sync + 'static,
    {
        Self {
            rule: Rule::Custom {
                name: name.into(),
                f: Arc::new(f),
            },
        }
    }

    /// The raw id for `input`, before encoding; `None` when the source is
    /// absent (no such header, too few tokens, the closure found nothing).
    pub fn raw_id(&self, input: &MessageMeta<'_>) -> Option<String> {
        self.raw_id_ref(input).map(Cow::into_owned)
    }

    /// [`raw_id`](Self::raw_id), borrowed from the message where it can
    /// be: a key is derived per published message, so the id is not
    /// copied before it is encoded.
    fn raw_id_ref<'a>(&self, input: &MessageMeta<'a>) -> Option<Cow<'a, str>> {
        match &self.rule {
            Rule::Header(name) => input
                .headers
                .and_then(|h| find_header(h, name))
                .map(|(_, v)| Cow::Borrowed(v)),
            Rule::SubjectToken(i) => input.subject.split('.').nth(*i).map(Cow::Borrowed),
            Rule::Subject => Some(Cow::Borrowed(input.subject)),
            Rule::Custom { f, .. } => f(input).map(Cow::Owned),
        }
    }

    /// The encoded KV key for `input`.
    pub fn derive(&self, input: &MessageMeta<'_>) -> Result<String, KeyError> {
        let id = self.raw_id_ref(input).ok_or_else(|| KeyError::Missing {
            rule: self.to_string(),
        })?;
        encode_key(&id)
    }
}

/// Encodes any id as a KV key that NATS accepts and that no other id maps
/// to.
///
/// `A-Z a-z 0-9 - _` stay as they are; every other byte of the UTF-8 id —
/// including `.`, `/` and `=` — becomes `=XX` (two uppercase hex digits).
/// The result never contains `.`, so it cannot be empty-tokened, lead or
/// trail with a dot, or address a different key; and since `=` is always
/// escaped, decoding is unambiguous ([`decode_key`]).
///
/// # Examples
///
/// ```
/// use nats_otel::fallback::{decode_key, encode_key};
///
/// assert_eq!(encode_key("job-7").unwrap(), "job-7");
/// assert_eq!(encode_key("a..b").unwrap(), "a=2E=2Eb");
/// assert_eq!(encode_key("x>y").unwrap(), "x=3Ey");
/// assert_eq!(decode_key(&encode_key("ключ").unwrap()).unwrap(), "ключ");
/// assert!(encode_key("").is_err());
/// ```
pub fn encode_key(id: &str) -> Result<String, KeyError> {
    if id.is_empty() {
        return Err(KeyError::Empty);
    }
    // Most ids need no escaping: copy those whole.
    if id.len() <= MAX_ENCODED_KEY_LEN && id.bytes().all(is_key_safe) {
        return Ok(id.to_owned());
    }
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if is_key_safe(b) {
            out.push(b as char);
        } else {
            out.push('=');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 0x0f)] as char);
        }
        if out.len() > MAX_ENCODED_KEY_LEN {
            return Err(KeyError::TooLong {
                len: encoded_len(id),
            });
        }
    }
    Ok(out)
}

/// Whether `b` stands for itself in an encoded key.
fn is_key_safe(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

fn encoded_len(id: &str) -> usize {
    id.bytes().map(|b| if is_key_safe(b) { 1 } else { 3 }).sum()
}

/// Reverses [`encode_key`]; `None` if `key` is not an encoding of any id.
pub fn decode_key(key: &str) -> Option<String> {
    let bytes = key.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'=' => {
                let hex = key.get(i + 1..i + 3)?;
                if hex.bytes().any(|b| b.is_ascii_lowercase()) {
                    return None;
                }
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' => {
                out.push(b);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_awkward_ids() {
        let long = "x".repeat(300);
        for id in [
            "a..b", "a b", "ключ", "x>y", ".lead", "trail.", "=", "a=2E", &long,
        ] {
            let key = encode_key(id).unwrap();
            assert!(key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'='));
            assert_eq!(decode_key(&key).as_deref(), Some(id), "{id:?} via {key:?}");
        }
        assert_ne!(encode_key("a=2E").unwrap(), encode_key("a.").unwrap());
    }

    #[test]
    fn rejects_empty_and_too_long() {
        assert_eq!(encode_key(""), Err(KeyError::Empty));
        let huge = "ж".repeat(400);
        assert!(matches!(
            encode_key(&huge),
            Err(KeyError::TooLong { len: 2400 })
        ));
    }
}
