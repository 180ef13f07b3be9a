use async_nats::header::{HeaderMap, HeaderName, HeaderValue};
use async_nats::Subject;
use bytes::Bytes;
use opentelemetry::Context;

use crate::publish::InvalidHeader;

/// A request the [`TracePropagationLayer`](crate::TracePropagationLayer) can
/// trace: it has a subject and headers the layer may write into.
///
/// Implemented by [`Publish`]; implement it for your own request type to put
/// the layer in front of your own publish service.
///
/// # Examples
///
/// ```
/// use async_nats::HeaderMap;
/// use nats_otel::publish::PublishMessage;
///
/// struct Job {
///     subject: String,
///     headers: HeaderMap,
///     body: Vec<u8>,
/// }
///
/// impl PublishMessage for Job {
///     fn subject(&self) -> &str {
///         &self.subject
///     }
///     fn headers(&self) -> Option<&HeaderMap> {
///         Some(&self.headers)
///     }
///     fn headers_mut(&mut self) -> &mut HeaderMap {
///         &mut self.headers
///     }
///     fn payload(&self) -> &[u8] {
///         &self.body
///     }
/// }
/// ```
pub trait PublishMessage {
    /// The subject the message goes to.
    fn subject(&self) -> &str;

    /// The headers, if any were set.
    fn headers(&self) -> Option<&HeaderMap>;

    /// The headers, created empty if there were none: the same map
    /// [`headers`](Self::headers) returns. The layer takes it out while it
    /// reads the message's context and writes the trace headers, and puts
    /// it back before the inner service is called.
    fn headers_mut(&mut self) -> &mut HeaderMap;

    /// The payload.
    fn payload(&self) -> &[u8];

    /// The payload size in bytes, recorded as `messaging.message.body.size`.
    ///
    /// By default, the length of [`payload`](Self::payload).
    fn payload_len(&self) -> usize {
        self.payload().len()
    }

    /// The context to inject, overriding the current span's.
    ///
    /// By default, `None`: the layer uses the current `tracing` span.
    #[inline]
    fn parent_context(&self) -> Option<&Context> {
        None
    }
}

/// A message to publish: subject, payload, optional headers, reply subject
/// and explicit trace context.
///
/// # Examples
///
/// ```
/// use nats_otel::publish::PublishMessage;
/// use nats_otel::Publish;
///
/// let publish = Publish::new("jobs.resize", "{\"id\":7}")
///     .header("Job-Id", "7")
///     .unwrap();
/// assert_eq!(publish.subject(), "jobs.resize");
/// assert_eq!(publish.header_map().unwrap().get("Job-Id").unwrap().as_str(), "7");
/// ```
#[derive(Debug, Clone)]
pub struct Publish {
    pub(super) subject: Subject,
    pub(super) payload: Bytes,
    pub(super) headers: Option<HeaderMap>,
    pub(super) reply: Option<Subject>,
    pub(super) context: Option<Context>,
}

impl Publish {
    /// A message to `subject` with `payload` and no headers.
    pub fn new(subject: impl Into<Subject>, payload: impl Into<Bytes>) -> Self {
        Self {
            subject: subject.into(),
            payload: payload.into(),
            headers: None,
            reply: None,
            context: None,
        }
    }

    /// Replaces the headers.
    ///
    /// (Named `with_headers` so as not to shadow
    /// [`PublishMessage::headers`], which reads them.)
    #[inline]
    pub fn with_headers(mut self, headers: HeaderMap) -> Self {
        self.headers = Some(headers);
        self
    }

    /// Adds one header, replacing any value under the same name.
    ///
    /// Returns [`InvalidHeader`] instead of panicking when the name or value
    /// cannot travel in a NATS header.
    pub fn header(mut self, name: &str, value: &str) -> Result<Self, InvalidHeader> {
        let header_name = name
            .parse::<HeaderName>()
            .map_err(|_| InvalidHeader::name(name))?;
        let header_value = value
            .parse::<HeaderValue>()
            .map_err(|_| InvalidHeader::value(name))?;
        self.headers
            .get_or_insert_with(HeaderMap::new)
            .insert(header_name, header_value);
        Ok(self)
    }

    /// Sets the reply subject.
    #[inline]
    pub fn reply(mut self, reply: impl Into<Subject>) -> Self {
        self.reply = Some(reply.into());
        self
    }

    /// Sets the context to inject, instead of the current span's.
    #[inline]
    pub fn context(mut self, cx: Context) -> Self {
        self.context = Some(cx);
        self
    }

    /// The payload.
    #[inline]
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// The headers, if any.
    #[inline]
    pub fn header_map(&self) -> Option<&HeaderMap> {
        self.headers.as_ref()
    }

    /// The reply subject, if any.
    #[inline]
    pub fn reply_subject(&self) -> Option<&Subject> {
        self.reply.as_ref()
    }

    /// Splits the message into its parts.
    #[inline]
    pub fn into_parts(self) -> PublishParts {
        PublishParts {
            subject: self.subject,
            payload: self.payload,
            headers: self.headers.unwrap_or_default(),
            reply: self.reply,
        }
    }
}

/// The parts of a [`Publish`], as the leaf services send them.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PublishParts {
    /// The subject.
    pub subject: Subject,
    /// The payload.
    pub payload: Bytes,
    /// The headers (empty if none were set).
    pub headers: HeaderMap,
    /// The reply subject.
    pub reply: Option<Subject>,
}

impl PublishMessage for Publish {
    #[inline]
    fn subject(&self) -> &str {
        self.subject.as_str()
    }

    #[inline]
    fn headers(&self) -> Option<&HeaderMap> {
        self.headers.as_ref()
    }

    #[inline]
    fn headers_mut(&mut self) -> &mut HeaderMap {
        self.headers.get_or_insert_with(HeaderMap::new)
    }

    #[inline]
    fn payload(&self) -> &[u8] {
        &self.payload
    }

    #[inline]
    fn parent_context(&self) -> Option<&Context> {
        self.context.as_ref()
    }
}
