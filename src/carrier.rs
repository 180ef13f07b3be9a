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

use std::fmt;

use async_nats::header::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector};

/// Reads propagation fields from NATS headers, whatever their casing.
///
/// An exact match wins; otherwise the first header whose name matches
/// ignoring ASCII case is used.
///
/// # Examples
///
/// ```
/// use async_nats::HeaderMap;
/// use nats_otel::HeaderExtractor;
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

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.find(key).map(|(_, value)| value)
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
/// use nats_otel::{HeaderInjector, InjectSkip};
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
        }
    }
}

/// Writes propagation fields into NATS headers without ever panicking.
///
/// Names are written in lowercase (`traceparent`, `tracestate`, `baggage`),
/// as W3C specifies. A field whose name or value NATS cannot carry is
/// skipped and recorded in [`skipped`](Self::skipped).
///
/// # Examples
///
/// ```
/// use async_nats::HeaderMap;
/// use nats_otel::HeaderInjector;
/// use opentelemetry::propagation::Injector;
///
/// let mut headers = HeaderMap::new();
/// HeaderInjector::new(&mut headers).set("TraceParent", "00-…".to_string());
/// assert!(headers.get("traceparent").is_some());
/// ```
#[derive(Debug)]
pub struct HeaderInjector<'a> {
    headers: &'a mut HeaderMap,
    skipped: Vec<InjectSkip>,
}

impl<'a> HeaderInjector<'a> {
    /// Wraps a header map for writing.
    pub fn new(headers: &'a mut HeaderMap) -> Self {
        Self {
            headers,
            skipped: Vec::new(),
        }
    }

    /// The fields that could not be written, with the reason.
    pub fn skipped(&self) -> &[InjectSkip] {
        &self.skipped
    }

    /// Consumes the injector, returning what was skipped.
    pub fn into_skipped(self) -> Vec<InjectSkip> {
        self.skipped
    }
}

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        let parsed = if key.bytes().any(|b| b.is_ascii_uppercase()) {
            key.to_ascii_lowercase().parse::<HeaderName>()
        } else {
            key.parse::<HeaderName>()
        };
        let Ok(name) = parsed else {
            self.skipped.push(InjectSkip::InvalidName {
                name: key.to_owned(),
            });
            return;
        };
        if value.contains(['\r', '\n']) {
            self.skipped.push(InjectSkip::InvalidValue {
                name: key.to_owned(),
            });
            return;
        }
        // Validated above, so the conversion cannot panic; it moves the
        // string instead of copying it.
        self.headers.insert(name, HeaderValue::from(value));
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
            HeaderExtractor::new(&headers).get("traceparent"),
            Some("lower")
        );
        assert_eq!(HeaderExtractor::new(&headers).get("baggage"), None);
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
        assert_eq!(headers.len(), 1);
    }
}
