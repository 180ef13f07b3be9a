//! The header carrier: [`Injector`] and [`Extractor`] for
//! [`async_nats::HeaderMap`].
//!
//! NATS header names are case-sensitive and `async_nats::HeaderMap` looks
//! them up exactly, but peers do not agree on casing: Go's OpenTelemetry
//! `HeaderCarrier` writes `Traceparent`, Java and Rust write `traceparent`,
//! and some servers rewrite names. [`HeaderExtractor`] therefore prefers an
//! exact match and falls back to an ASCII case-insensitive one.
//!
//! `HeaderMap::insert` panics on invalid names or values; [`HeaderInjector`]
//! parses them fallibly and records what it had to skip instead.
//!
//! Both apply the W3C limits to `tracestate` (32 list-members) and
//! `baggage` (180 list-members, 8192 bytes), whatever the propagator, so
//! that propagation can never push a message over JetStream's 64 KiB header
//! limit or `max_payload`.

use std::fmt;

use async_nats::header::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::{SpanContext, TraceContextExt};
use opentelemetry::Context;

use super::propagator::PropagatorChoice;
use super::record::ExtractionRecord;
use super::w3c::{
    baggage_value, traceparent_string, tracestate_value, BAGGAGE, MAX_BAGGAGE_LEN,
    MAX_BAGGAGE_MEMBERS, MAX_TRACESTATE_MEMBERS, TRACEPARENT, TRACESTATE, TRACESTATE_CEILING,
};

const TRACEPARENT_NAME: HeaderName = HeaderName::from_static(TRACEPARENT);
const TRACESTATE_NAME: HeaderName = HeaderName::from_static(TRACESTATE);
const BAGGAGE_NAME: HeaderName = HeaderName::from_static(BAGGAGE);
/// The W3C names in the canonical MIME form Go's `net/http` gives them.
const TRACEPARENT_CANONICAL: HeaderName = HeaderName::from_static("Traceparent");
const TRACESTATE_CANONICAL: HeaderName = HeaderName::from_static("Tracestate");
const BAGGAGE_CANONICAL: HeaderName = HeaderName::from_static("Baggage");

/// The names the trace headers are written under.
///
/// NATS header names are case-sensitive, and the peers a message reaches
/// read different casings:
///
/// | reader | reads |
/// |---|---|
/// | OpenTelemetry Go, `propagation.HeaderCarrier(http.Header(msg.Header))` | `Traceparent` only |
/// | opentelemetry-python over a header `dict`, nats.js `MsgHdrs.get`, `HeaderMap::get("traceparent")` | `traceparent` only |
/// | nats-otel ([`HeaderExtractor`]) | any casing |
///
/// Writing both makes every one of them continue the trace, for about 70
/// more bytes per message (see the README's "Header names").
///
/// Applies to every field the propagator writes (`traceparent`,
/// `tracestate`, `baggage`, and the fields of a custom propagator). Our own
/// extractor reads the same value under two names as one; two different
/// values stay ambiguous.
///
/// # Examples
///
/// ```
/// use async_nats::HeaderMap;
/// use nats_otel::{propagation::HeaderInjector, HeaderNames};
/// use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
/// use opentelemetry::Context;
///
/// let cx = Context::new().with_remote_span_context(SpanContext::new(
///     TraceId::from(0x0af7651916cd43dd8448eb211c80319c),
///     SpanId::from(0xb7ad6b7169203331),
///     TraceFlags::SAMPLED,
///     false,
///     TraceState::NONE,
/// ));
/// let mut headers = HeaderMap::new();
/// HeaderInjector::new(&mut headers).inject_context(&cx);
/// // By default, both: Go reads the first, Python and JavaScript the second.
/// assert!(headers.get("Traceparent").is_some());
/// assert!(headers.get("traceparent").is_some());
///
/// let mut headers = HeaderMap::new();
/// HeaderInjector::new(&mut headers)
///     .header_names(HeaderNames::Lowercase)
///     .inject_context(&cx);
/// assert!(headers.get("Traceparent").is_none());
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HeaderNames {
    /// The W3C names: `traceparent`, `tracestate`, `baggage`. Read by
    /// OpenTelemetry for Python, JavaScript, Java, .NET and Rust; missed by
    /// OpenTelemetry Go's `HeaderCarrier`.
    Lowercase,
    /// The canonical MIME names Go's `net/http` uses: `Traceparent`,
    /// `Tracestate`, `Baggage` (each `-`-separated word capitalised). Read by
    /// OpenTelemetry Go; missed by readers that match the W3C name exactly.
    Canonical,
    /// Both names, with the same value. Every reader above continues the
    /// trace. The default.
    #[default]
    Both,
}

impl HeaderNames {
    /// Whether the canonical MIME name is written.
    fn canonical(self) -> bool {
        matches!(self, Self::Canonical | Self::Both)
    }

    /// A stable lowercase name for logs and configuration: `lowercase`,
    /// `canonical` or `both`.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(nats_otel::HeaderNames::default().as_str(), "both");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Lowercase => "lowercase",
            Self::Canonical => "canonical",
            Self::Both => "both",
        }
    }
}

impl fmt::Display for HeaderNames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `name` in canonical MIME form: the first letter and each letter after a
/// `-` in uppercase, the rest in lowercase (Go's
/// `textproto.CanonicalMIMEHeaderKey`).
fn canonical_mime(name: &str) -> String {
    let mut upper = true;
    name.chars()
        .map(|c| {
            let out = if upper {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            };
            upper = c == '-';
            out
        })
        .collect()
}

/// Reads propagation fields from NATS headers, whatever their casing.
///
/// An exact match wins; otherwise the first header whose name matches
/// ignoring ASCII case is used.
///
/// # Examples
///
/// ```
/// use async_nats::HeaderMap;
/// use nats_otel::propagation::HeaderExtractor;
/// use opentelemetry::propagation::Extractor;
///
/// let mut headers = HeaderMap::new();
/// // What Go's otel HeaderCarrier writes:
/// headers.insert("Traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
///
/// let extractor = HeaderExtractor::new(&headers);
/// assert!(extractor.get("traceparent").is_some());
/// ```
#[derive(Debug, Clone, Copy)]
pub struct HeaderExtractor<'a> {
    headers: &'a HeaderMap,
}

impl<'a> HeaderExtractor<'a> {
    /// Wraps a header map for reading.
    pub fn new(headers: &'a HeaderMap) -> Self {
        Self { headers }
    }

    /// Finds the header `key`, exactly or ignoring ASCII case, and returns the
    /// name as it arrived together with its first value.
    pub fn find(&self, key: &str) -> Option<(&'a str, &'a str)> {
        find_header(self.headers, key)
    }

    /// Extracts the remote context with the crate's default propagator (the
    /// global one if set, else W3C Trace Context + Baggage), and says where
    /// it came from — what the consumer adapter does for each message,
    /// without the CONSUMER span.
    ///
    /// # Examples
    ///
    /// ```
    /// use async_nats::HeaderMap;
    /// use nats_otel::{ContextSource, propagation::HeaderExtractor};
    /// use opentelemetry::trace::TraceContextExt;
    ///
    /// let mut headers = HeaderMap::new();
    /// headers.insert("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
    /// let (cx, record) = HeaderExtractor::new(&headers).extract_context();
    /// assert_eq!(record.source(), ContextSource::Headers);
    /// assert!(cx.span().span_context().is_remote());
    /// ```
    pub fn extract_context(&self) -> (Context, ExtractionRecord) {
        super::extract::extract_headers(&PropagatorChoice::Auto, Some(self.headers))
    }
}

/// The W3C fields of a header map, found in one pass, any casing.
#[derive(Debug, Default)]
pub(crate) struct W3cHeaders<'a> {
    /// The `traceparent` name as it arrived (an exact match preferred) and
    /// its value.
    pub(crate) traceparent: Option<(&'a str, &'a str)>,
    /// More than one distinct `traceparent` value arrived (several values
    /// under one name, or several casings).
    pub(crate) ambiguous: bool,
    pub(crate) tracestate: Option<&'a str>,
    pub(crate) baggage: Option<&'a str>,
}

/// Finds `traceparent`, `tracestate` and `baggage` in one pass over the
/// headers, without allocating.
pub(crate) fn scan_w3c(headers: &HeaderMap) -> W3cHeaders<'_> {
    let mut found = W3cHeaders::default();
    let (mut state_exact, mut baggage_exact) = (false, false);
    for (name, values) in headers.iter() {
        let name: &str = name.as_ref();
        let Some(first) = values.first() else {
            continue;
        };
        match name.len() {
            11 if eq_letters_ignore_case(name, TRACEPARENT) => {
                for value in values {
                    let value = value.as_str();
                    match found.traceparent {
                        None => found.traceparent = Some((name, value)),
                        Some((_, chosen)) => {
                            if trim_ows(chosen) != trim_ows(value) {
                                found.ambiguous = true;
                            }
                        }
                    }
                }
                if name == TRACEPARENT {
                    found.traceparent = Some((name, first.as_str()));
                }
            }
            // An exact name wins over other casings; otherwise the first.
            10 if eq_letters_ignore_case(name, TRACESTATE)
                && !state_exact
                && (found.tracestate.is_none() || name == TRACESTATE) =>
            {
                found.tracestate = Some(first.as_str());
                state_exact = name == TRACESTATE;
            }
            7 if eq_letters_ignore_case(name, BAGGAGE)
                && !baggage_exact
                && (found.baggage.is_none() || name == BAGGAGE) =>
            {
                found.baggage = Some(first.as_str());
                baggage_exact = name == BAGGAGE;
            }
            _ => {}
        }
    }
    found
}

/// Every `traceparent` value that arrived, with its header name, in any
/// casing; at most `limit` of them.
pub(crate) fn traceparent_values(headers: &HeaderMap, limit: usize) -> Vec<(&str, &str)> {
    headers
        .iter()
        .filter(|(name, _)| {
            let name: &str = name.as_ref();
            name.eq_ignore_ascii_case(TRACEPARENT)
        })
        .flat_map(|(name, values)| {
            let name: &str = name.as_ref();
            values.iter().map(move |v| (name, v.as_str()))
        })
        .take(limit)
        .collect()
}

/// `name == lower` ignoring ASCII case, where `lower` is made of lowercase
/// ASCII letters only: OR-ing 0x20 into each byte of `name` maps exactly
/// the two cases of each letter onto it. Compares eight bytes at a time.
#[inline]
fn eq_letters_ignore_case(name: &str, lower: &str) -> bool {
    let (name, lower) = (name.as_bytes(), lower.as_bytes());
    if name.len() != lower.len() {
        return false;
    }
    let n = name.len();
    if n < 8 {
        return name.iter().zip(lower).all(|(a, b)| a | 0x20 == *b);
    }
    let word = |s: &[u8], at: usize| -> u64 {
        s.get(at..at + 8)
            .and_then(|w| w.try_into().ok())
            .map_or(0, u64::from_le_bytes)
    };
    const CASE: u64 = 0x2020_2020_2020_2020;
    // Two overlapping words cover any length from 8 to 16.
    n <= 16
        && word(name, 0) | CASE == word(lower, 0)
        && word(name, n - 8) | CASE == word(lower, n - 8)
}

fn trim_ows(value: &str) -> &str {
    value.trim_matches([' ', '\t'])
}

/// Whether an incoming `tracestate` is within the W3C limits (32
/// list-members, and no longer than a valid list can be).
fn tracestate_within_limits(value: &str) -> bool {
    value.len() <= TRACESTATE_CEILING
        && value
            .split(',')
            .filter(|m| !trim_ows(m).is_empty())
            .nth(MAX_TRACESTATE_MEMBERS)
            .is_none()
}

pub(crate) fn find_header<'a>(headers: &'a HeaderMap, key: &str) -> Option<(&'a str, &'a str)> {
    let mut fallback = None;
    for (name, values) in headers.iter() {
        let name: &str = name.as_ref();
        if name.len() != key.len() {
            continue;
        }
        if name == key {
            return values.first().map(|v| (name, v.as_str()));
        }
        if fallback.is_none() && name.eq_ignore_ascii_case(key) {
            fallback = values.first().map(|v| (name, v.as_str()));
        }
    }
    fallback
}

/// Reads propagation fields for any propagator.
///
/// `traceparent` is `None` when several different values arrived (under one
/// name or in several casings): there is no telling which one is right.
/// `tracestate` is `None` when it breaks the W3C limits (more than 32
/// list-members), as W3C asks for an invalid `tracestate`.
impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        if key.eq_ignore_ascii_case(TRACEPARENT) {
            let found = scan_w3c(self.headers);
            return if found.ambiguous {
                None
            } else {
                found.traceparent.map(|(_, value)| value)
            };
        }
        let value = self.find(key).map(|(_, value)| value)?;
        if key.eq_ignore_ascii_case(TRACESTATE) && !tracestate_within_limits(value) {
            return None;
        }
        Some(value)
    }

    fn keys(&self) -> Vec<&str> {
        self.headers.iter().map(|(name, _)| name.as_ref()).collect()
    }
}

/// Why a propagation field could not be written into the headers.
///
/// # Examples
///
/// ```
/// use async_nats::HeaderMap;
/// use nats_otel::{propagation::HeaderInjector, propagation::InjectSkip};
/// use opentelemetry::propagation::Injector;
///
/// let mut headers = HeaderMap::new();
/// let mut injector = HeaderInjector::new(&mut headers);
/// injector.set("baggage", "user=a\r\nInjected: yes".to_string());
/// assert!(matches!(injector.skipped()[0], InjectSkip::InvalidValue { .. }));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum InjectSkip {
    /// The field name is not a valid NATS header name (non-ASCII, `:`, space
    /// or control characters).
    InvalidName {
        /// The name, as the propagator gave it.
        name: String,
    },
    /// The value contains `\r` or `\n`, which NATS headers cannot carry.
    InvalidValue {
        /// The header name.
        name: String,
    },
    /// Whole list-members of `tracestate` or `baggage` were left out to
    /// stay within the W3C limits (`tracestate`: 32 list-members;
    /// `baggage`: 180 list-members and 8192 bytes). The rest was injected.
    MembersDropped {
        /// The header name.
        name: String,
        /// How many list-members were left out.
        dropped: usize,
    },
}

impl InjectSkip {
    fn is_dropped(&self, key: &str) -> bool {
        matches!(self, Self::MembersDropped { name, .. } if name.eq_ignore_ascii_case(key))
    }
}

impl fmt::Display for InjectSkip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidName { name } => {
                write!(
                    f,
                    "{name:?} is not a valid NATS header name; field not injected"
                )
            }
            Self::InvalidValue { name } => write!(
                f,
                "the value for header {name:?} contains CR or LF; field not injected"
            ),
            Self::MembersDropped { name, dropped } => {
                let limits = if name.eq_ignore_ascii_case(BAGGAGE) {
                    "180 list-members and 8192 bytes"
                } else {
                    "32 list-members"
                };
                write!(
                    f,
                    "{dropped} list-member(s) of header {name:?} left out to stay within the \
                     W3C limits ({limits}); the rest was injected"
                )
            }
        }
    }
}

/// Writes propagation fields into NATS headers without ever panicking.
///
/// Names are written as [`HeaderNames`] says: by default both in lowercase
/// (`traceparent`, as W3C specifies) and in Go's canonical form
/// (`Traceparent`), so that every peer finds them. A field whose name or
/// value NATS cannot carry is skipped and recorded in
/// [`skipped`](Self::skipped).
///
/// # Examples
///
/// ```
/// use async_nats::HeaderMap;
/// use nats_otel::propagation::HeaderInjector;
/// use opentelemetry::propagation::Injector;
///
/// let mut headers = HeaderMap::new();
/// HeaderInjector::new(&mut headers).set("TraceParent", "00-…".to_string());
/// assert!(headers.get("traceparent").is_some());
/// assert!(headers.get("Traceparent").is_some());
/// ```
#[derive(Debug)]
pub struct HeaderInjector<'a> {
    headers: &'a mut HeaderMap,
    names: HeaderNames,
    skipped: Vec<InjectSkip>,
}

impl<'a> HeaderInjector<'a> {
    /// Wraps a header map for writing.
    pub fn new(headers: &'a mut HeaderMap) -> Self {
        Self {
            headers,
            names: HeaderNames::default(),
            skipped: Vec::new(),
        }
    }

    /// Writes each field under these names.
    ///
    /// By default, [`HeaderNames::Both`]: lowercase and Go's canonical form.
    pub fn header_names(mut self, names: HeaderNames) -> Self {
        self.names = names;
        self
    }

    /// The fields that could not be written, with the reason.
    pub fn skipped(&self) -> &[InjectSkip] {
        &self.skipped
    }

    /// Consumes the injector, returning what was skipped.
    pub fn into_skipped(self) -> Vec<InjectSkip> {
        self.skipped
    }

    /// Injects `cx` with the crate's default propagator: the global one if
    /// set, else W3C Trace Context + Baggage — what the publish layer does.
    ///
    /// With the W3C default, `traceparent` is formatted without
    /// intermediate strings, `tracestate` is written only when non-empty
    /// and `baggage` only when the context has baggage.
    ///
    /// # Examples
    ///
    /// ```
    /// use async_nats::HeaderMap;
    /// use nats_otel::propagation::HeaderInjector;
    /// use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
    /// use opentelemetry::Context;
    ///
    /// let cx = Context::new().with_remote_span_context(SpanContext::new(
    ///     TraceId::from(0x0af7651916cd43dd8448eb211c80319c),
    ///     SpanId::from(0xb7ad6b7169203331),
    ///     TraceFlags::SAMPLED,
    ///     false,
    ///     TraceState::NONE,
    /// ));
    /// let mut headers = HeaderMap::new();
    /// HeaderInjector::new(&mut headers).inject_context(&cx);
    /// assert_eq!(
    ///     headers.get("traceparent").unwrap().as_str(),
    ///     "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    /// );
    /// ```
    pub fn inject_context(&mut self, cx: &Context) {
        PropagatorChoice::Auto.inject(cx, self);
    }

    /// The W3C fast path: what `TraceContextPropagator` and
    /// `BaggagePropagator` write, minus the empty `tracestate`, within the
    /// W3C limits.
    pub(crate) fn inject_w3c(&mut self, cx: &Context) {
        self.inject_w3c_span(cx.span().span_context(), cx);
    }

    /// [`inject_w3c`](Self::inject_w3c) for the span `sc`, with the baggage
    /// of `baggage_cx`.
    pub(crate) fn inject_w3c_span(&mut self, sc: &SpanContext, baggage_cx: &Context) {
        if sc.is_valid() {
            let traceparent = traceparent_string(sc.trace_id(), sc.span_id(), sc.trace_flags());
            self.insert_named(
                TRACEPARENT_NAME,
                TRACEPARENT_CANONICAL,
                checked_header_value(traceparent),
            );
            if let Some((value, dropped)) = tracestate_value(sc.trace_state()) {
                self.note_dropped(TRACESTATE, dropped);
                self.insert_checked(TRACESTATE_NAME, TRACESTATE_CANONICAL, TRACESTATE, value);
            }
        }
        if let Some((value, dropped)) = baggage_value(baggage_cx) {
            self.note_dropped(BAGGAGE, dropped);
            self.insert_checked(BAGGAGE_NAME, BAGGAGE_CANONICAL, BAGGAGE, value);
        }
    }

    /// Inserts `value` under `lower`, `canonical` or both, as the
    /// [`HeaderNames`] policy says.
    fn insert_named(&mut self, lower: HeaderName, canonical: HeaderName, value: HeaderValue) {
        match self.names {
            HeaderNames::Lowercase => self.headers.insert(lower, value),
            HeaderNames::Canonical => self.headers.insert(canonical, value),
            HeaderNames::Both => {
                self.headers.insert(canonical, value.clone());
                self.headers.insert(lower, value);
            }
        }
    }

    fn note_dropped(&mut self, name: &str, dropped: usize) {
        if dropped > 0 {
            self.skipped.push(InjectSkip::MembersDropped {
                name: name.to_owned(),
                dropped,
            });
        }
    }

    fn insert_checked(
        &mut self,
        lower: HeaderName,
        canonical: HeaderName,
        key: &str,
        value: String,
    ) {
        if has_cr_or_lf(&value) {
            self.skipped.push(InjectSkip::InvalidValue {
                name: key.to_owned(),
            });
            return;
        }
        self.insert_named(lower, canonical, checked_header_value(value));
    }

    /// The lowercase and the canonical name of the field `key`, or `None`
    /// when `key` is not a valid NATS header name.
    fn field_names(&self, key: &str) -> Option<(HeaderName, HeaderName)> {
        if let Some(names) = w3c_names(key) {
            return Some(names);
        }
        let lower = if key.bytes().any(|b| b.is_ascii_uppercase()) {
            key.to_ascii_lowercase().parse::<HeaderName>()
        } else {
            key.parse::<HeaderName>()
        }
        .ok()?;
        // Only parsed when written: a valid lowercase name stays valid.
        let canonical = if self.names.canonical() {
            canonical_mime(key).parse::<HeaderName>().ok()?
        } else {
            lower.clone()
        };
        Some((lower, canonical))
    }
}

/// The W3C header names, lowercase and canonical, without allocating.
fn w3c_names(key: &str) -> Option<(HeaderName, HeaderName)> {
    if key.eq_ignore_ascii_case(TRACEPARENT) {
        Some((TRACEPARENT_NAME, TRACEPARENT_CANONICAL))
    } else if key.eq_ignore_ascii_case(TRACESTATE) {
        Some((TRACESTATE_NAME, TRACESTATE_CANONICAL))
    } else if key.eq_ignore_ascii_case(BAGGAGE) {
        Some((BAGGAGE_NAME, BAGGAGE_CANONICAL))
    } else {
        None
    }
}

fn has_cr_or_lf(value: &str) -> bool {
    value.bytes().any(|b| b == b'\r' || b == b'\n')
}

/// Moves a value the caller has checked for CR and LF into a
/// [`HeaderValue`].
///
/// `HeaderValue` is `#[serde(transparent)]` over `String`, so going through
/// its `Deserialize` impl moves the string in without the char-by-char
/// CR/LF scan of `From<String>` (a quarter of the W3C inject path).
fn checked_header_value(value: String) -> HeaderValue {
    use serde::de::IntoDeserializer;
    use serde::Deserialize;
    let de: serde::de::value::StringDeserializer<serde::de::value::Error> =
        value.into_deserializer();
    // A `String` always deserializes into a transparent `String` wrapper.
    HeaderValue::deserialize(de).unwrap_or_default()
}

/// Keeps the first `max_members` non-empty list-members of `value` that fit
/// in `max_len` bytes, whole; returns the value and how many were dropped.
fn limit_list(value: String, max_members: usize, max_len: usize) -> (String, usize) {
    let members = value.split(',').filter(|m| !trim_ows(m).is_empty());
    if value.len() <= max_len && members.clone().nth(max_members).is_none() {
        return (value, 0);
    }
    let mut out = String::with_capacity(value.len().min(max_len));
    let (mut kept, mut dropped) = (0usize, 0usize);
    for member in members {
        let needed = member.len() + usize::from(kept > 0);
        if kept == max_members || out.len() + needed > max_len {
            dropped += 1;
            continue;
        }
        if kept > 0 {
            out.push(',');
        }
        out.push_str(member);
        kept += 1;
    }
    (out, dropped)
}

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        let Some((lower, canonical)) = self.field_names(key) else {
            self.skipped.push(InjectSkip::InvalidName {
                name: key.to_owned(),
            });
            return;
        };
        if has_cr_or_lf(&value) {
            self.skipped.push(InjectSkip::InvalidValue {
                name: key.to_owned(),
            });
            return;
        }
        let value = if key.eq_ignore_ascii_case(TRACESTATE) {
            let (value, dropped) = limit_list(value, MAX_TRACESTATE_MEMBERS, usize::MAX);
            self.note_dropped(TRACESTATE, dropped);
            value
        } else if key.eq_ignore_ascii_case(BAGGAGE) {
            let (value, dropped) = limit_list(value, MAX_BAGGAGE_MEMBERS, MAX_BAGGAGE_LEN);
            self.note_dropped(BAGGAGE, dropped);
            value
        } else {
            value
        };
        if value.is_empty() && self.skipped.last().is_some_and(|s| s.is_dropped(key)) {
            // Every member was over a limit: nothing left to send.
            return;
        }
        // Checked above; this moves the string instead of copying it.
        let value = checked_header_value(value);
        if lower == canonical {
            // A name without letters to capitalise: one header either way.
            self.headers.insert(lower, value);
        } else {
            self.insert_named(lower, canonical, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_any_casing_and_prefers_exact() {
        let mut headers = HeaderMap::new();
        headers.insert("TRACEPARENT", "upper");
        assert_eq!(
            HeaderExtractor::new(&headers).find("traceparent"),
            Some(("TRACEPARENT", "upper"))
        );
        headers.insert("traceparent", "lower");
        assert_eq!(
            HeaderExtractor::new(&headers).find("traceparent"),
            Some(("traceparent", "lower"))
        );
        // Two different traceparents: no telling which is right.
        assert_eq!(HeaderExtractor::new(&headers).get("traceparent"), None);
        headers.insert("TRACEPARENT", "lower");
        assert_eq!(
            HeaderExtractor::new(&headers).get("traceparent"),
            Some("lower")
        );
        headers.insert("Baggage", "a=1");
        headers.insert("baggage", "b=2");
        assert_eq!(HeaderExtractor::new(&headers).get("baggage"), Some("b=2"));
        assert_eq!(HeaderExtractor::new(&headers).get("tracestate"), None);
    }

    #[test]
    fn extractor_drops_tracestate_over_the_limits() {
        let mut headers = HeaderMap::new();
        let members = |n: usize| {
            (0..n)
                .map(|i| format!("k{i}=v"))
                .collect::<Vec<_>>()
                .join(",")
        };
        headers.insert("tracestate", members(32).as_str());
        assert!(HeaderExtractor::new(&headers).get("tracestate").is_some());
        headers.insert("tracestate", members(33).as_str());
        assert_eq!(HeaderExtractor::new(&headers).get("tracestate"), None);
    }

    #[test]
    fn letters_compare_ignoring_case_exactly() {
        for (name, expected) in [
            ("traceparent", true),
            ("Traceparent", true),
            ("TRACEPARENT", true),
            ("tRaCePaReNt", true),
            ("traceparenu", false),
            ("traceparen", false),
            ("trace@arent", false),
            ("Nats-Msg-Id", false),
        ] {
            assert_eq!(
                eq_letters_ignore_case(name, TRACEPARENT),
                expected,
                "{name}"
            );
            assert_eq!(name.eq_ignore_ascii_case(TRACEPARENT), expected, "{name}");
        }
        assert!(eq_letters_ignore_case("BAGGAGE", BAGGAGE));
        assert!(!eq_letters_ignore_case("BAGGAG\u{7}", BAGGAGE));
        assert!(eq_letters_ignore_case("TraceState", TRACESTATE));
    }

    #[test]
    fn checked_header_value_moves_the_string() {
        let value = checked_header_value("00-abc-01".to_owned());
        assert_eq!(value.as_str(), "00-abc-01");
        assert!(has_cr_or_lf("a\rb") && has_cr_or_lf("a\n") && !has_cr_or_lf("ab é"));
    }

    #[test]
    fn injector_skips_instead_of_panicking() {
        let mut headers = HeaderMap::new();
        let mut injector = HeaderInjector::new(&mut headers);
        injector.set("bad name", "v".into());
        injector.set("ключ", "v".into());
        injector.set("a:b", "v".into());
        injector.set("tracestate", "a=1\nb=2".into());
        injector.set("Traceparent", "ok".into());
        assert_eq!(injector.skipped().len(), 4);
        assert_eq!(headers.get("traceparent").map(|v| v.as_str()), Some("ok"));
        assert_eq!(headers.get("Traceparent").map(|v| v.as_str()), Some("ok"));
        assert_eq!(headers.len(), 2);
    }

    #[test]
    fn generic_fields_follow_the_names_policy() {
        for (names, expected) in [
            (HeaderNames::Lowercase, &["uber-trace-id", "x"][..]),
            (HeaderNames::Canonical, &["Uber-Trace-Id", "X"]),
            (
                HeaderNames::Both,
                &["uber-trace-id", "Uber-Trace-Id", "x", "X"],
            ),
        ] {
            let mut headers = HeaderMap::new();
            let mut injector = HeaderInjector::new(&mut headers).header_names(names);
            injector.set("UBER-trace-ID", "v".into());
            injector.set("x", "w".into());
            assert!(injector.skipped().is_empty());
            let mut got: Vec<&str> = headers.iter().map(|(n, _)| n.as_ref()).collect();
            let mut expected = expected.to_vec();
            got.sort_unstable();
            expected.sort_unstable();
            assert_eq!(got, expected, "{names}");
        }
        assert_eq!(canonical_mime("x-b3-traceid"), "X-B3-Traceid");
        assert_eq!(canonical_mime("TRACEPARENT"), "Traceparent");
    }

    #[test]
    fn both_names_with_one_value_are_one_context_two_values_are_ambiguous() {
        let mut headers = HeaderMap::new();
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        headers.insert("traceparent", tp);
        headers.insert("Traceparent", tp);
        let (cx, record) = HeaderExtractor::new(&headers).extract_context();
        assert_eq!(
            record.source(),
            crate::propagation::ContextSource::Headers,
            "{record}"
        );
        assert!(cx.span().span_context().is_valid());
        let other = "00-0af7651916cd43dd8448eb211c80319c-00000000000000aa-01";
        headers.insert("Traceparent", other);
        let (cx, record) = HeaderExtractor::new(&headers).extract_context();
        assert_eq!(
            record.reason().map(|r| r.as_str()),
            Some("ambiguous_traceparent")
        );
        assert!(!cx.span().span_context().is_valid());
    }
}
