//! What a message's headers say about its trace context; shared by
//! `doctor` and `inspect`.

use async_nats::HeaderMap;
use nats_otel::propagation::{check_traceparent, HeaderExtractor, TraceparentProblem, TRACEPARENT};
use nats_otel::{ContextSource, ExtractionRecord};
use opentelemetry::trace::{TraceContextExt, TraceId};
use opentelemetry::Context;
use serde_json::{json, Value};

/// A `traceparent` header as it arrived, under any casing.
#[derive(Debug, Clone)]
pub(crate) struct TraceparentSeen {
    pub(crate) header: String,
    pub(crate) value: String,
    pub(crate) problem: Option<TraceparentProblem>,
}

impl TraceparentSeen {
    /// Whether the header name is not the lowercase W3C one.
    pub(crate) fn recased(&self) -> bool {
        self.header != TRACEPARENT
    }

    /// The trace id, when the value is valid.
    pub(crate) fn trace_id(&self) -> Option<&str> {
        match self.problem {
            None => self.value.trim().split('-').nth(1),
            Some(_) => None,
        }
    }

    /// The parent span id, when the value is valid.
    pub(crate) fn span_id(&self) -> Option<&str> {
        match self.problem {
            None => self.value.trim().split('-').nth(2),
            Some(_) => None,
        }
    }

    pub(crate) fn to_json(&self) -> Value {
        json!({
            "header": self.header,
            "value": self.value,
            "valid": self.problem.is_none(),
            "problem": self.problem.map(|p| p.as_str()),
            "problem_text": self.problem.map(|p| p.to_string()),
            "trace_id": self.trace_id(),
        })
    }
}

/// A traceparent-shaped value under a header that is not `traceparent`
/// in any casing: something renamed the header.
#[derive(Debug, Clone)]
pub(crate) struct Misplaced {
    pub(crate) header: String,
    pub(crate) value: String,
}

impl Misplaced {
    /// The trace id field of the value, lowercased.
    pub(crate) fn trace_id(&self) -> Option<String> {
        self.value
            .trim()
            .split('-')
            .nth(1)
            .map(str::to_ascii_lowercase)
    }
}

/// Everything the headers of one message say about trace context.
#[derive(Debug, Clone, Default)]
pub(crate) struct HeaderAnalysis {
    /// Every header as (name, value), sorted by name ignoring case.
    pub(crate) pairs: Vec<(String, String)>,
    /// `traceparent`, in any casing (an exact match wins).
    pub(crate) traceparent: Option<TraceparentSeen>,
    /// Traceparent-shaped values under other names.
    pub(crate) misplaced: Vec<Misplaced>,
}

impl HeaderAnalysis {
    pub(crate) fn of(headers: Option<&HeaderMap>) -> Self {
        let Some(headers) = headers else {
            return Self::default();
        };
        let mut pairs = Vec::new();
        for (name, values) in headers.iter() {
            for value in values {
                pairs.push((name.to_string(), value.as_str().to_owned()));
            }
        }
        // The header map does not keep arrival order; sort for stable output.
        pairs.sort_by(|a, b| {
            a.0.to_ascii_lowercase()
                .cmp(&b.0.to_ascii_lowercase())
                .then_with(|| a.0.cmp(&b.0))
        });
        let traceparent = HeaderExtractor::new(headers)
            .find(TRACEPARENT)
            .map(|(header, value)| TraceparentSeen {
                header: header.to_owned(),
                value: value.to_owned(),
                problem: check_traceparent(value).err(),
            });
        let misplaced = pairs
            .iter()
            .filter(|(name, value)| {
                !name.eq_ignore_ascii_case(TRACEPARENT) && traceparent_shaped(value)
            })
            .map(|(name, value)| Misplaced {
                header: name.clone(),
                value: value.clone(),
            })
            .collect();
        Self {
            pairs,
            traceparent,
            misplaced,
        }
    }

    /// The names `traceparent` arrived under, in any casing, sorted.
    pub(crate) fn traceparent_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .names()
            .into_iter()
            .filter(|name| name.eq_ignore_ascii_case(TRACEPARENT))
            .collect();
        names.sort_unstable();
        names
    }

    /// The distinct header names, sorted ignoring case.
    pub(crate) fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for (name, _) in &self.pairs {
            if !names.contains(&name.as_str()) {
                names.push(name);
            }
        }
        names
    }

    pub(crate) fn headers_json(&self) -> Value {
        Value::Array(
            self.pairs
                .iter()
                .map(|(name, value)| json!({ "name": name, "value": value }))
                .collect(),
        )
    }

    pub(crate) fn misplaced_json(&self) -> Value {
        Value::Array(
            self.misplaced
                .iter()
                .map(|m| json!({ "header": m.header, "value": m.value, "trace_id": m.trace_id() }))
                .collect(),
        )
    }
}

/// Whether `value` looks like a W3C traceparent
/// (`xx-<32 hex>-<16 hex>-xx`, hex in any case), valid or not.
pub(crate) fn traceparent_shaped(value: &str) -> bool {
    let mut fields = value.trim().split('-');
    [2, 32, 16, 2].iter().all(|&len| {
        fields
            .next()
            .is_some_and(|f| f.len() == len && f.bytes().all(|b| b.is_ascii_hexdigit()))
    })
}

/// The trace id of the remote context the consumer adapter found, if any.
pub(crate) fn extracted_trace_id(cx: &Context) -> Option<TraceId> {
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| sc.trace_id())
}

/// The extraction record as JSON.
pub(crate) fn record_json(record: Option<&ExtractionRecord>) -> Value {
    let Some(record) = record else {
        return Value::Null;
    };
    json!({
        "source": record.source().as_str(),
        "reason": record.reason().map(|r| r.as_str()),
        "reason_text": record.reason().map(|r| r.to_string()),
        "fallback_reason": record.fallback_reason().map(|r| r.as_str()),
        "fallback_reason_text": record.fallback_reason().map(|r| r.to_string()),
        "header_name": record.header_name(),
        "notes": record.notes(),
    })
}

/// One-line description of where the context came from.
pub(crate) fn describe_record(record: Option<&ExtractionRecord>) -> String {
    let Some(record) = record else {
        return "unknown".to_owned();
    };
    let mut out = record.source().as_str().to_owned();
    match record.source() {
        ContextSource::None => {
            if let Some(reason) = record.reason() {
                out.push_str(&format!("({})", reason.as_str()));
            }
        }
        ContextSource::Headers => {
            if let Some(name) = record.header_name() {
                out.push_str(&format!("(as {name})"));
            }
        }
        _ => {
            if let Some(reason) = record.reason() {
                out.push_str(&format!("(headers: {})", reason.as_str()));
            }
        }
    }
    out
}

/// Whether a subject matches a NATS subject pattern (`*`, `>`).
pub(crate) fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut pattern = pattern.split('.');
    let mut subject = subject.split('.');
    loop {
        match (pattern.next(), subject.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(p), Some(s)) if p == s => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Which common readers miss a `traceparent` that arrived only under
/// `names` (every casing it arrived under), or `None` when every one of them
/// finds it.
///
/// OpenTelemetry Go's `propagation.HeaderCarrier(http.Header(msg.Header))`
/// reads only `Traceparent`; opentelemetry-python over a header dict, nats.js
/// `MsgHdrs.get` and `HeaderMap::get("traceparent")` read only
/// `traceparent`; nats-otel reads any casing.
pub(crate) fn readers_missing(names: &[&str]) -> Option<String> {
    let mut missing = Vec::new();
    if !names.contains(&"Traceparent") {
        missing.push(
            "OpenTelemetry Go consumers (propagation.HeaderCarrier(http.Header(msg.Header)) \
             reads only Traceparent)",
        );
    }
    if !names.contains(&TRACEPARENT) {
        missing.push(
            "readers matching the W3C name exactly (opentelemetry-python over a header dict, \
             nats.js MsgHdrs.get, async-nats HeaderMap::get(\"traceparent\") read only \
             traceparent)",
        );
    }
    (!missing.is_empty()).then(|| missing.join(" and "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_missing_names_each_casing() {
        assert_eq!(readers_missing(&["Traceparent", "traceparent"]), None);
        let go_only = readers_missing(&["Traceparent"]).unwrap();
        assert!(go_only.contains("opentelemetry-python") && !go_only.contains("Go consumers"));
        let lower_only = readers_missing(&["traceparent"]).unwrap();
        assert!(lower_only.contains("Go consumers") && !lower_only.contains("python"));
        let upper = readers_missing(&["TRACEPARENT"]).unwrap();
        assert!(upper.contains("Go consumers") && upper.contains("python"));
    }

    #[test]
    fn shapes_and_subjects() {
        assert!(traceparent_shaped(
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01"
        ));
        assert!(!traceparent_shaped("00-abc-def-01"));
        assert!(subject_matches("jobs.>", "jobs.a.b"));
        assert!(!subject_matches("jobs.>", "jobs"));
        assert!(subject_matches("jobs.*", "jobs.a"));
        assert!(!subject_matches("jobs.*", "jobs.a.b"));
        assert!(subject_matches("jobs", "jobs"));
    }
}
