//! The view of a message the codec, the fallback and the consumer read.

use async_nats::{HeaderMap, Message};

/// What the crate reads from a message: its subject, headers, payload and,
/// for a message consumed from a stream, its JetStream delivery. The
/// consumer adapter extracts and describes a message's context from it, and
/// a [`FallbackKey`](crate::fallback::FallbackKey) derives the KV key from
/// it, identically on the publish and the consume side.
///
/// # Examples
///
/// ```
/// use nats_otel::consume::MessageMeta;
///
/// let meta = MessageMeta::new("jobs.42.created", None, b"{}");
/// assert_eq!(meta.subject, "jobs.42.created");
/// assert!(meta.jetstream.is_none());
/// ```
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct MessageMeta<'a> {
    /// The subject the message arrived on.
    pub subject: &'a str,
    /// The headers, if any.
    pub headers: Option<&'a HeaderMap>,
    /// The payload.
    pub payload: &'a [u8],
    /// JetStream delivery details, for messages consumed from a stream.
    pub jetstream: Option<JetStreamMeta<'a>>,
}

impl<'a> MessageMeta<'a> {
    /// Metadata from its parts, without JetStream delivery details.
    pub fn new(subject: &'a str, headers: Option<&'a HeaderMap>, payload: &'a [u8]) -> Self {
        Self {
            subject,
            headers,
            payload,
            jetstream: None,
        }
    }

    /// Metadata of a core NATS message.
    pub fn of(message: &'a Message) -> Self {
        Self {
            subject: message.subject.as_str(),
            headers: message.headers.as_ref(),
            payload: &message.payload,
            jetstream: None,
        }
    }
}

/// JetStream delivery details of a consumed message.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct JetStreamMeta<'a> {
    /// The stream name.
    pub stream: &'a str,
    /// The consumer name.
    pub consumer: &'a str,
    /// The message's sequence in the stream.
    pub stream_sequence: u64,
    /// How many times the message has been delivered (1 on first delivery).
    pub delivered: i64,
}
