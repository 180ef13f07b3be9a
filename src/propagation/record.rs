//! The extraction record: where a consumed message's trace context came
//! from, and — when it came from nowhere — why.
//!
//! Every [`Context`](opentelemetry::Context) yielded by the consumer adapter
//! carries an [`ExtractionRecord`], read with
//! [`MessageContextExt::extraction`](crate::consume::MessageContextExt::extraction)
//! (it is stored in a private entry, so `cx.get::<ExtractionRecord>()`
//! finds nothing).

use std::borrow::Cow;
use std::fmt;

use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

use super::w3c::TraceparentProblem;

/// Where a message's trace context came from.
///
/// # Examples
///
/// ```
/// use nats_otel::ContextSource;
///
/// assert_eq!(ContextSource::Headers.as_str(), "headers");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ContextSource {
    /// The message headers.
    Headers,
    /// The KV fallback bucket.
    Kv,
    /// A carrier embedded in the message payload or job data.
    Payload,
    /// Nowhere: the consumer started a new trace. The record's
    /// [`reason`](ExtractionRecord::reason) says why.
    None,
}

impl ContextSource {
    /// A short, stable name for metrics and logs: `headers`, `kv`, `payload`
    /// or `none`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Headers => "headers",
            Self::Kv => "kv",
            Self::Payload => "payload",
            Self::None => "none",
        }
    }
}

impl fmt::Display for ContextSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The longest excerpt of an offending header value kept in a reason.
pub(crate) const EXCERPT_LEN: usize = 64;

/// Why a message yielded no trace context.
///
/// Each variant's `Display` says what to check.
///
/// # Examples
///
/// ```
/// use nats_otel::consume::NoContextReason;
///
/// let reason = NoContextReason::NoHeaders;
/// assert_eq!(reason.as_str(), "no_headers");
/// assert!(reason.to_string().contains("no headers"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NoContextReason {
    /// The message carries no headers at all.
    NoHeaders,
    /// The message has headers, but none of the propagator's fields
    /// (e.g. no `traceparent` in any casing).
    MissingTraceparent {
        /// The header names that did arrive.
        present: Vec<String>,
    },
    /// A `traceparent` arrived but breaks a W3C rule.
    MalformedTraceparent {
        /// The header name as it arrived (its casing may differ).
        header: String,
        /// The value, truncated to 64 characters.
        value: String,
        /// The rule it breaks.
        problem: TraceparentProblem,
    },
    /// More than one `traceparent` arrived with different values (several
    /// values under one name, or the name in several casings): there is no
    /// telling which parent is right, so none is used.
    AmbiguousTraceparent {
        /// The header names as they arrived, one per value (at most four).
        headers: Vec<String>,
        /// The values, each truncated to 64 characters (at most four).
        values: Vec<String>,
    },
    /// A custom propagator produced no valid context from headers that
    /// contain some of its fields.
    PropagatorRejected {
        /// The propagator's fields that were present.
        fields: Vec<String>,
    },
    /// The payload carrier function found no carrier in the message.
    NoPayloadCarrier,
    /// The subject matches the consumer's skip filter: not traced, by
    /// configuration.
    SkippedByFilter,
    /// No KV fallback key could be derived from the message.
    #[cfg(feature = "kv")]
    #[cfg_attr(docsrs, doc(cfg(feature = "kv")))]
    FallbackKey(KeyError),
    /// The KV fallback bucket has no record under the key (never written,
    /// or expired after the bucket's `max_age`).
    KvNotFound {
        /// The encoded key.
        key: String,
    },
    /// The KV lookup took longer than the lookup timeout.
    KvTimeout {
        /// The encoded key.
        key: String,
        /// The timeout.
        timeout: std::time::Duration,
    },
    /// The KV lookup failed (bucket deleted, server unreachable, …).
    KvError {
        /// The encoded key.
        key: String,
        /// The error.
        error: String,
    },
    /// The KV record is not a carrier record this crate can read.
    #[cfg(feature = "kv")]
    #[cfg_attr(docsrs, doc(cfg(feature = "kv")))]
    KvInvalidRecord {
        /// The encoded key.
        key: String,
        /// Why it could not be read.
        error: super::kv_record::RecordError,
    },
}

impl NoContextReason {
    /// A short, stable name for metrics and logs, e.g. `"no_headers"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::NoHeaders => "no_headers",
            Self::MissingTraceparent { .. } => "no_traceparent",
            Self::MalformedTraceparent { .. } => "malformed_traceparent",
            Self::AmbiguousTraceparent { .. } => "ambiguous_traceparent",
            Self::PropagatorRejected { .. } => "propagator_rejected",
            Self::NoPayloadCarrier => "no_payload_carrier",
            Self::SkippedByFilter => "skipped_by_filter",
            #[cfg(feature = "kv")]
            Self::FallbackKey(_) => "no_fallback_key",
            Self::KvNotFound { .. } => "kv_not_found",
            Self::KvTimeout { .. } => "kv_timeout",
            Self::KvError { .. } => "kv_error",
            #[cfg(feature = "kv")]
            Self::KvInvalidRecord { .. } => "kv_invalid_record",
        }
    }
}

impl fmt::Display for NoContextReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoHeaders => f.write_str(
                "no headers: the publisher injected nothing (no-op propagator? invalid span \
                 context at publish time?) or something in transit dropped the headers",
            ),
            Self::MissingTraceparent { present } => write!(
                f,
                "no traceparent header in any casing (headers present: {}); the publisher did \
                 not inject or a relay renamed or dropped it",
                present.join(", ")
            ),
            Self::MalformedTraceparent {
                header,
                value,
                problem,
            } => write!(f, "malformed {header} {value:?}: {problem}"),
            Self::AmbiguousTraceparent { headers, values } => {
                write!(
                    f,
                    "{} traceparent values that disagree (",
                    values.len().max(2)
                )?;
                for (i, (header, value)) in headers.iter().zip(values).enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{header}: {value:?}")?;
                }
                f.write_str(
                    "); no parent is used: the publisher or a relay appended a second \
                     context instead of replacing it",
                )
            }
            Self::PropagatorRejected { fields } => write!(
                f,
                "the configured propagator found no valid context in fields {}",
                fields.join(", ")
            ),
            Self::NoPayloadCarrier => f.write_str("no trace carrier in the message payload"),
            Self::SkippedByFilter => {
                f.write_str("the subject matches the consumer's skip filter (not traced)")
            }
            #[cfg(feature = "kv")]
            Self::FallbackKey(e) => e.fmt(f),
            Self::KvNotFound { key } => write!(
                f,
                "no KV fallback record under key {key:?} (never written, or expired)"
            ),
            Self::KvTimeout { key, timeout } => write!(
                f,
                "KV fallback lookup of key {key:?} took longer than {timeout:?}"
            ),
            Self::KvError { key, error } => {
                write!(f, "KV fallback lookup of key {key:?} failed: {error}")
            }
            #[cfg(feature = "kv")]
            Self::KvInvalidRecord { key, error } => {
                write!(
                    f,
                    "KV fallback record under key {key:?} is invalid: {error}"
                )
            }
        }
    }
}

/// Where a consumed message's context came from, and why when nowhere.
///
/// Stored in the [`Context`](opentelemetry::Context) the consumer adapter yields; read it with
/// [`MessageContextExt::extraction`](crate::MessageContextExt::extraction).
///
/// # Examples
///
/// ```
/// use nats_otel::{ContextSource, ExtractionRecord, MessageContextExt};
/// use opentelemetry::Context;
///
/// # fn handle(cx: Context) {
/// if let Some(record) = cx.extraction() {
///     if record.source() == ContextSource::None {
///         eprintln!("new trace: {}", record.reason().unwrap());
///     }
/// }
/// # }
/// # handle(Context::new());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtractionRecord {
    source: ContextSource,
    // Boxed: present only when something went wrong, and the record is
    // moved with every message.
    reason: Option<Box<NoContextReason>>,
    fallback_reason: Option<Box<NoContextReason>>,
    header_name: Option<Cow<'static, str>>,
    notes: Vec<String>,
    /// The remote span's ids and flags; not its trace state, so that
    /// recording it costs no allocation per message.
    remote: Option<(TraceId, SpanId, TraceFlags)>,
}

impl ExtractionRecord {
    pub(crate) fn found(source: ContextSource) -> Self {
        Self {
            source,
            reason: None,
            fallback_reason: None,
            header_name: None,
            notes: Vec::new(),
            remote: None,
        }
    }

    pub(crate) fn none(reason: NoContextReason) -> Self {
        Self {
            source: ContextSource::None,
            reason: Some(Box::new(reason)),
            fallback_reason: None,
            header_name: None,
            notes: Vec::new(),
            remote: None,
        }
    }

    pub(crate) fn with_header_name(mut self, name: &str) -> Self {
        // The casings peers actually send need no allocation.
        self.header_name = Some(match name {
            "Traceparent" => Cow::Borrowed("Traceparent"),
            "TRACEPARENT" => Cow::Borrowed("TRACEPARENT"),
            "TraceParent" => Cow::Borrowed("TraceParent"),
            other => Cow::Owned(other.to_owned()),
        });
        self
    }

    pub(crate) fn push_note(&mut self, note: String) {
        self.notes.push(note);
    }

    /// Records the remote span context that was found (when it is valid).
    pub(crate) fn with_remote(mut self, remote: &SpanContext) -> Self {
        self.remote = remote
            .is_valid()
            .then(|| (remote.trace_id(), remote.span_id(), remote.trace_flags()));
        self
    }

    /// The remote span context the message's context continues: the
    /// producer's trace id, span id (the parent of the `process` span) and
    /// flags, whichever [`source`](Self::source) it came from, marked remote;
    /// `None` when the source is [`ContextSource::None`]. Its trace state is
    /// left out (the `process` span carries it).
    ///
    /// # Examples
    ///
    /// ```
    /// use async_nats::HeaderMap;
    /// use nats_otel::propagation::HeaderExtractor;
    ///
    /// let mut headers = HeaderMap::new();
    /// headers.insert("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
    /// let (_, record) = HeaderExtractor::new(&headers).extract_context();
    /// let remote = record.remote_span_context().unwrap();
    /// assert_eq!(remote.trace_id().to_string(), "0af7651916cd43dd8448eb211c80319c");
    /// assert_eq!(remote.span_id().to_string(), "b7ad6b7169203331");
    /// ```
    pub fn remote_span_context(&self) -> Option<SpanContext> {
        self.remote.map(|(trace_id, span_id, flags)| {
            SpanContext::new(trace_id, span_id, flags, true, TraceState::NONE)
        })
    }

    /// The headers gave nothing, but a fallback did.
    pub(crate) fn recovered(mut self, source: ContextSource) -> Self {
        self.source = source;
        self
    }

    /// The headers gave nothing, and neither did a fallback.
    pub(crate) fn fallback_missed(mut self, reason: NoContextReason) -> Self {
        self.fallback_reason = Some(Box::new(reason));
        self
    }

    /// Where the context came from.
    pub fn source(&self) -> ContextSource {
        self.source
    }

    /// Why the headers gave no context; `Some` whenever the source is not
    /// [`ContextSource::Headers`]. With source [`ContextSource::None`] this
    /// is why a new trace started; with `Kv` or `Payload` it is what the
    /// fallback recovered from (e.g. a relay dropped the headers).
    pub fn reason(&self) -> Option<&NoContextReason> {
        self.reason.as_deref()
    }

    /// Why the configured fallback (payload carrier or KV) gave no context
    /// either; `None` when it was not configured, or when it succeeded.
    pub fn fallback_reason(&self) -> Option<&NoContextReason> {
        self.fallback_reason.as_deref()
    }

    /// The `traceparent` header name as it arrived, when the context came
    /// from headers and the name was not the lowercase W3C one
    /// (e.g. `Traceparent` from Go).
    pub fn header_name(&self) -> Option<&str> {
        self.header_name.as_deref()
    }

    /// Further observations, e.g. headers and the fallback disagreeing.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }
}

impl fmt::Display for ExtractionRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "source={}", self.source)?;
        if let Some(reason) = &self.reason {
            write!(f, " reason={reason}")?;
        }
        if let Some(reason) = &self.fallback_reason {
            write!(f, " fallback_reason={reason}")?;
        }
        Ok(())
    }
}

/// Truncates `value` to at most [`EXCERPT_LEN`] characters.
pub(crate) fn excerpt(value: &str) -> String {
    match value.char_indices().nth(EXCERPT_LEN) {
        Some((end, _)) => format!("{}…", &value[..end]),
        None => value.to_owned(),
    }
}

/// The longest encoded key this crate writes. NATS subjects (and so KV keys)
/// travel in the protocol's control line, which servers cap at 4 KiB.
#[cfg(feature = "kv")]
pub const MAX_ENCODED_KEY_LEN: usize = 1024;

/// Why no KV key could be derived.
#[cfg(feature = "kv")]
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyError {
    /// The key source is absent from the message.
    Missing {
        /// The rule, e.g. `header Job-Id`.
        rule: String,
    },
    /// The derived id is empty.
    Empty,
    /// The encoded id is longer than [`MAX_ENCODED_KEY_LEN`].
    TooLong {
        /// The encoded length.
        len: usize,
    },
}

#[cfg(feature = "kv")]
impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing { rule } => write!(f, "no fallback key: {rule} is absent"),
            Self::Empty => f.write_str("the fallback key id is empty"),
            Self::TooLong { len } => write!(
                f,
                "the encoded fallback key is {len} characters, over the limit of \
                 {MAX_ENCODED_KEY_LEN}"
            ),
        }
    }
}

#[cfg(feature = "kv")]
impl std::error::Error for KeyError {}
