//! The extraction record: where a consumed message's trace context came
//! from, and — when it came from nowhere — why.
//!
//! Every [`Context`] yielded by the consumer adapter carries an
//! [`ExtractionRecord`], read with
//! [`MessageContextExt::extraction`](crate::MessageContextExt::extraction)
//! (it is stored in a private entry, so `cx.get::<ExtractionRecord>()`
//! finds nothing).

use std::borrow::Cow;
use std::fmt;

use async_nats::HeaderMap;
use opentelemetry::trace::TraceContextExt;
use opentelemetry::Context;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

use crate::carrier::{find_header, scan_w3c, traceparent_values, HeaderExtractor};
use crate::propagator::{PropagatorChoice, Resolved};
use crate::w3c::{
    extract_baggage, parse_traceparent, parse_tracestate, TraceparentProblem, BAGGAGE, TRACEPARENT,
    TRACESTATE,
};

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
/// use nats_otel::NoContextReason;
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
    FallbackKey(crate::fallback::KeyError),
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
        error: crate::fallback::RecordError,
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
/// Stored in the [`Context`] the consumer adapter yields; read it with
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
    reason: Option<NoContextReason>,
    fallback_reason: Option<NoContextReason>,
    header_name: Option<Cow<'static, str>>,
    notes: Vec<String>,
}

impl ExtractionRecord {
    pub(crate) fn found(source: ContextSource) -> Self {
        Self {
            source,
            reason: None,
            fallback_reason: None,
            header_name: None,
            notes: Vec::new(),
        }
    }

    pub(crate) fn none(reason: NoContextReason) -> Self {
        Self {
            source: ContextSource::None,
            reason: Some(reason),
            fallback_reason: None,
            header_name: None,
            notes: Vec::new(),
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

    /// The headers gave nothing, but a fallback did.
    pub(crate) fn recovered(mut self, source: ContextSource) -> Self {
        self.source = source;
        self
    }

    /// The headers gave nothing, and neither did a fallback.
    pub(crate) fn fallback_missed(mut self, reason: NoContextReason) -> Self {
        self.fallback_reason = Some(reason);
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
        self.reason.as_ref()
    }

    /// Why the configured fallback (payload carrier or KV) gave no context
    /// either; `None` when it was not configured, or when it succeeded.
    pub fn fallback_reason(&self) -> Option<&NoContextReason> {
        self.fallback_reason.as_ref()
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

/// Extracts the remote context from message headers and records the
/// outcome. Never panics; the returned context may carry baggage even when
/// it carries no span.
pub(crate) fn extract_headers(
    propagator: &PropagatorChoice,
    headers: Option<&HeaderMap>,
) -> (Context, ExtractionRecord) {
    let Some(headers) = headers.filter(|h| !h.is_empty()) else {
        return (
            Context::new(),
            ExtractionRecord::none(NoContextReason::NoHeaders),
        );
    };
    propagator.resolve(|resolved| match resolved {
        Resolved::W3c => extract_w3c(headers),
        Resolved::Generic(p) => extract_generic(p, headers),
    })
}

/// How many conflicting `traceparent` values a reason quotes at most.
const AMBIGUOUS_QUOTED: usize = 4;

fn ambiguous_reason(headers: &HeaderMap) -> NoContextReason {
    let values = traceparent_values(headers, AMBIGUOUS_QUOTED);
    NoContextReason::AmbiguousTraceparent {
        headers: values.iter().map(|(name, _)| (*name).to_owned()).collect(),
        values: values.iter().map(|(_, value)| excerpt(value)).collect(),
    }
}

/// The W3C fast path: one pass over the headers, `traceparent` parsed by
/// [`parse_traceparent`], `tracestate` and `baggage` read only when present,
/// within the W3C limits. Gives the same context as the SDK's
/// `TraceContextPropagator` + `BaggagePropagator` for valid input, and
/// rejects everything W3C rejects (some of which the SDK lets through).
pub(crate) fn extract_w3c(headers: &HeaderMap) -> (Context, ExtractionRecord) {
    let found = scan_w3c(headers);
    if found.ambiguous {
        let cx = decode_w3c(None, found.tracestate, found.baggage).context;
        return (cx, ExtractionRecord::none(ambiguous_reason(headers)));
    }
    let decoded = decode_w3c(found.traceparent, found.tracestate, found.baggage);
    let mut record = match decoded.outcome {
        Ok(name) => {
            let record = ExtractionRecord::found(ContextSource::Headers);
            match name {
                Some(name) if name != TRACEPARENT => record.with_header_name(name),
                _ => record,
            }
        }
        Err(None) => ExtractionRecord::none(NoContextReason::MissingTraceparent {
            present: headers.iter().map(|(n, _)| n.to_string()).collect(),
        }),
        Err(Some(reason)) => ExtractionRecord::none(reason),
    };
    for note in decoded.notes {
        record.push_note(note);
    }
    (decoded.context, record)
}

/// What [`decode_w3c`] made of the three W3C fields.
pub(crate) struct Decoded<'a> {
    /// The remote span context (when `traceparent` was valid) and the
    /// baggage.
    pub(crate) context: Context,
    /// `Ok` with the name `traceparent` came under when it gave a span
    /// context; `Err(None)` when there was no `traceparent`, `Err(Some(..))`
    /// when it was malformed.
    pub(crate) outcome: Result<Option<&'a str>, Option<NoContextReason>>,
    /// What was discarded or cut from `tracestate` and `baggage`.
    pub(crate) notes: Vec<String>,
}

/// The one W3C decoder, for headers, [`TraceCarrier`](crate::TraceCarrier)s
/// and KV records alike: `traceparent` (its name as it came, and its value)
/// by every W3C rule, `tracestate` and `baggage` within the W3C limits.
pub(crate) fn decode_w3c<'a>(
    traceparent: Option<(&'a str, &'a str)>,
    tracestate: Option<&str>,
    baggage: Option<&str>,
) -> Decoded<'a> {
    let mut notes: Vec<String> = Vec::new();
    let (cx, outcome) = match traceparent {
        None => (Context::new(), Err(None)),
        Some((name, value)) => match parse_traceparent(value) {
            Err(problem) => (
                Context::new(),
                Err(Some(NoContextReason::MalformedTraceparent {
                    header: name.to_owned(),
                    value: excerpt(value),
                    problem,
                })),
            ),
            Ok(tp) => {
                let trace_state = match tracestate {
                    None => TraceState::NONE,
                    Some(value) => {
                        let (trace_state, issue) = parse_tracestate(value);
                        if let Some(issue) = issue {
                            notes.push(issue.note(TRACESTATE));
                        }
                        trace_state
                    }
                };
                let span_context = SpanContext::new(
                    TraceId::from(tp.trace_id),
                    SpanId::from(tp.span_id),
                    TraceFlags::new(tp.flags) & TraceFlags::SAMPLED,
                    true,
                    trace_state,
                );
                (
                    Context::new().with_remote_span_context(span_context),
                    Ok(Some(name)),
                )
            }
        },
    };
    let context = match baggage {
        None => cx,
        Some(value) => {
            let (cx, issue) = extract_baggage(cx, value);
            if let Some(issue) = issue {
                notes.push(issue.note(BAGGAGE));
            }
            cx
        }
    };
    Decoded {
        context,
        outcome,
        notes,
    }
}

/// Any other propagator, through [`HeaderExtractor`]; the outcome is
/// explained with the W3C rules where `traceparent` is involved.
fn extract_generic(p: &dyn TextMapPropagator, headers: &HeaderMap) -> (Context, ExtractionRecord) {
    let cx = p.extract_with_context(&Context::new(), &HeaderExtractor::new(headers));
    if cx.span().span_context().is_valid() {
        let mut record = ExtractionRecord::found(ContextSource::Headers);
        if let Some((name, value)) = find_header(headers, TRACEPARENT) {
            // The SDK's parser pads short ids and reads short flags; hold
            // the value to every W3C rule before trusting it.
            if let Err(problem) = parse_traceparent(value) {
                let reason = NoContextReason::MalformedTraceparent {
                    header: name.to_owned(),
                    value: excerpt(value),
                    problem,
                };
                return (without_span(&cx), ExtractionRecord::none(reason));
            }
            if name != TRACEPARENT {
                record = record.with_header_name(name);
            }
        }
        return (cx, record);
    }
    if p.fields().any(|f| f == TRACEPARENT) && scan_w3c(headers).ambiguous {
        return (cx, ExtractionRecord::none(ambiguous_reason(headers)));
    }
    let reason = match find_header(headers, TRACEPARENT) {
        Some((name, value)) => match parse_traceparent(value) {
            Err(problem) => NoContextReason::MalformedTraceparent {
                header: name.to_owned(),
                value: excerpt(value),
                problem,
            },
            Ok(_) => NoContextReason::PropagatorRejected {
                fields: present_fields(p, headers),
            },
        },
        None => {
            let fields = present_fields(p, headers);
            if fields.is_empty() || fields.iter().all(|f| !is_trace_field(f)) {
                NoContextReason::MissingTraceparent {
                    present: headers.iter().map(|(n, _)| n.to_string()).collect(),
                }
            } else {
                NoContextReason::PropagatorRejected { fields }
            }
        }
    };
    (cx, ExtractionRecord::none(reason))
}

/// Reads a [`TraceCarrier`](crate::TraceCarrier) with the one W3C decoder
/// ([`decode_w3c`]), by the same rules and limits as headers; `what` names
/// the carrier in reasons (e.g. `"kv traceparent"`).
pub(crate) fn context_from_carrier(
    carrier: &crate::TraceCarrier,
    what: &str,
) -> Result<Context, NoContextReason> {
    let decoded = decode_w3c(
        Some((what, carrier.traceparent.as_deref().unwrap_or(""))),
        carrier.tracestate.as_deref(),
        carrier.baggage.as_deref(),
    );
    match decoded.outcome {
        Ok(_) => Ok(decoded.context),
        Err(reason) => Err(reason.unwrap_or(NoContextReason::PropagatorRejected {
            fields: vec![what.to_owned()],
        })),
    }
}

/// `cx` with its baggage but without its span context.
fn without_span(cx: &Context) -> Context {
    use opentelemetry::baggage::BaggageExt;
    Context::new().with_baggage(
        cx.baggage()
            .iter()
            .map(|(k, (v, _))| opentelemetry::KeyValue::new(k.clone(), v.clone())),
    )
}

fn present_fields(
    p: &dyn opentelemetry::propagation::TextMapPropagator,
    headers: &HeaderMap,
) -> Vec<String> {
    p.fields()
        .filter(|f| find_header(headers, f).is_some())
        .map(str::to_owned)
        .collect()
}

/// Fields that carry a span (as opposed to baggage or trace state).
fn is_trace_field(field: &str) -> bool {
    !matches!(field, "baggage" | "tracestate")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpt_truncates_on_char_boundary() {
        let long = "ж".repeat(100);
        let e = excerpt(&long);
        assert_eq!(e.chars().count(), EXCERPT_LEN + 1);
        assert_eq!(excerpt("short"), "short");
    }

    #[test]
    fn reasons_for_each_header_shape() {
        let choice = PropagatorChoice::Auto;
        let (_, r) = extract_headers(&choice, None);
        assert_eq!(r.reason(), Some(&NoContextReason::NoHeaders));

        let mut h = HeaderMap::new();
        h.insert("job-id", "1");
        let (_, r) = extract_headers(&choice, Some(&h));
        assert_eq!(r.reason().unwrap().as_str(), "no_traceparent");

        h.insert(
            "Traceparent",
            "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01",
        );
        let (_, r) = extract_headers(&choice, Some(&h));
        assert!(matches!(
            r.reason(),
            Some(NoContextReason::MalformedTraceparent {
                problem: TraceparentProblem::UppercaseHex,
                ..
            })
        ));

        let mut h = HeaderMap::new();
        h.insert(
            "Traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        );
        let (cx, r) = extract_headers(&choice, Some(&h));
        assert_eq!(r.source(), ContextSource::Headers);
        assert_eq!(r.header_name(), Some("Traceparent"));
        assert!(cx.span().span_context().is_remote());
    }
}
