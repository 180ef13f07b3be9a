//! [`TraceCarrier`]: the W3C propagation fields as a serde document, for
//! job data and for the KV fallback record.

use opentelemetry::propagation::{Extractor, Injector};
use serde::{Deserialize, Serialize};

use crate::w3c::{BAGGAGE, TRACEPARENT, TRACESTATE};

/// The W3C propagation fields (`traceparent`, `tracestate`, `baggage`) as a
/// small serde document.
///
/// Embed it in the job data your worker already reads — with
/// `#[serde(flatten)]` the three fields sit at the top level of your
/// document — so a trace survives even when message headers do not. Hand
/// it to the consumer with
/// [`ContextExtractor::payload_carrier`](crate::ContextExtractor::payload_carrier)
/// (source [`Payload`](crate::ContextSource::Payload)). It implements
/// [`Injector`] and [`Extractor`]; fields of other propagators are ignored.
///
/// # Examples
///
/// ```
/// use nats_otel::TraceCarrier;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct Job {
///     id: String,
///     #[serde(flatten)]
///     trace: TraceCarrier,
/// }
///
/// let job = Job { id: "7".into(), trace: TraceCarrier::from_current() };
/// let json = serde_json::to_string(&job).unwrap();
/// let back: Job = serde_json::from_str(&json).unwrap();
/// assert_eq!(back.trace, job.trace);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceCarrier {
    /// The W3C `traceparent` value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// The W3C `tracestate` value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
    /// The W3C `baggage` value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baggage: Option<String>,
}

impl TraceCarrier {
    /// An empty carrier.
    pub fn new() -> Self {
        Self::default()
    }

    /// A carrier holding `cx`, written by the W3C Trace Context and Baggage
    /// propagators.
    pub fn from_context(cx: &opentelemetry::Context) -> Self {
        use opentelemetry::propagation::TextMapPropagator;
        let mut carrier = Self::new();
        opentelemetry_sdk::propagation::TraceContextPropagator::new()
            .inject_context(cx, &mut carrier);
        opentelemetry_sdk::propagation::BaggagePropagator::new().inject_context(cx, &mut carrier);
        carrier
    }

    /// A carrier holding the current `tracing` span's OpenTelemetry context
    /// (or [`opentelemetry::Context::current`] without an OpenTelemetry
    /// layer).
    pub fn from_current() -> Self {
        use opentelemetry::trace::TraceContextExt;
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        let cx = tracing::Span::current().context();
        if cx.span().span_context().is_valid() {
            Self::from_context(&cx)
        } else {
            Self::from_context(&opentelemetry::Context::current())
        }
    }

    /// Whether no field is set.
    pub fn is_empty(&self) -> bool {
        self.traceparent.is_none() && self.tracestate.is_none() && self.baggage.is_none()
    }

    fn field_mut(&mut self, key: &str) -> Option<&mut Option<String>> {
        if key.eq_ignore_ascii_case(TRACEPARENT) {
            Some(&mut self.traceparent)
        } else if key.eq_ignore_ascii_case(TRACESTATE) {
            Some(&mut self.tracestate)
        } else if key.eq_ignore_ascii_case(BAGGAGE) {
            Some(&mut self.baggage)
        } else {
            None
        }
    }
}

impl Injector for TraceCarrier {
    fn set(&mut self, key: &str, value: String) {
        if let Some(field) = self.field_mut(key) {
            *field = Some(value);
        }
    }
}

impl Extractor for TraceCarrier {
    fn get(&self, key: &str) -> Option<&str> {
        let field = if key.eq_ignore_ascii_case(TRACEPARENT) {
            &self.traceparent
        } else if key.eq_ignore_ascii_case(TRACESTATE) {
            &self.tracestate
        } else if key.eq_ignore_ascii_case(BAGGAGE) {
            &self.baggage
        } else {
            return None;
        };
        field.as_deref()
    }

    fn keys(&self) -> Vec<&str> {
        let mut keys = Vec::with_capacity(3);
        if self.traceparent.is_some() {
            keys.push(TRACEPARENT);
        }
        if self.tracestate.is_some() {
            keys.push(TRACESTATE);
        }
        if self.baggage.is_some() {
            keys.push(BAGGAGE);
        }
        keys
    }
}
