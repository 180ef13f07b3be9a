//! [`TraceCarrier`]: the W3C propagation fields as a serde document, for
//! job data and for the KV fallback record.

use opentelemetry::propagation::{Extractor, Injector};
use serde::{Deserialize, Serialize};

use super::w3c::{
    baggage_value, traceparent_string, tracestate_value, BAGGAGE, TRACEPARENT, TRACESTATE,
};

/// The W3C propagation fields (`traceparent`, `tracestate`, `baggage`) as a
/// small serde document.
///
/// Embed it in the job data your worker already reads — with
/// `#[serde(flatten)]` the three fields sit at the top level of your
/// document — so a trace survives even when message headers do not. Hand
/// it to the consumer with
/// [`ContextExtractor::payload_carrier`](crate::consume::ContextExtractor::payload_carrier)
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

    /// A carrier holding `cx`, written by the same W3C codec as the
    /// headers the layer injects: `tracestate` only when not empty and cut
    /// to 32 list-members, `baggage` only when there is some, within 180
    /// list-members and 8192 bytes, with `%` and `\` in values
    /// percent-encoded as W3C Baggage requires.
    ///
    /// # Examples
    ///
    /// ```
    /// use nats_otel::TraceCarrier;
    /// use opentelemetry::baggage::BaggageExt;
    /// use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
    /// use opentelemetry::{Context, KeyValue};
    ///
    /// let cx = Context::new()
    ///     .with_remote_span_context(SpanContext::new(
    ///         TraceId::from(0x0af7651916cd43dd8448eb211c80319c),
    ///         SpanId::from(0xb7ad6b7169203331),
    ///         TraceFlags::SAMPLED,
    ///         true,
    ///         TraceState::NONE,
    ///     ))
    ///     .with_baggage([KeyValue::new("discount", "100%")]);
    /// let carrier = TraceCarrier::from_context(&cx);
    /// assert_eq!(
    ///     carrier.traceparent.as_deref(),
    ///     Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    /// );
    /// assert_eq!(carrier.tracestate, None);
    /// assert_eq!(carrier.baggage.as_deref(), Some("discount=100%25"));
    /// ```
    pub fn from_context(cx: &opentelemetry::Context) -> Self {
        use opentelemetry::trace::TraceContextExt;
        let mut carrier = Self::new();
        let span = cx.span();
        let sc = span.span_context();
        if sc.is_valid() {
            carrier.traceparent = Some(traceparent_string(
                sc.trace_id(),
                sc.span_id(),
                sc.trace_flags(),
            ));
            carrier.tracestate = tracestate_value(sc.trace_state()).map(|(value, _)| value);
        }
        carrier.baggage = baggage_value(cx).map(|(value, _)| value);
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

#[cfg(test)]
mod tests {
    use async_nats::HeaderMap;
    use opentelemetry::baggage::BaggageExt;
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use opentelemetry::{Context, KeyValue};

    use super::super::extract::context_from_carrier;
    use super::super::headers::{HeaderExtractor, HeaderInjector, HeaderNames};
    use super::*;

    /// A carrier obeys the header path's rules: 40 tracestate members are
    /// cut to 32, a `%` in a baggage value is percent-encoded, and reading
    /// it back gives the context the headers give.
    #[test]
    fn carrier_follows_the_header_rules() {
        let members: Vec<(String, String)> = (0..40)
            .map(|i| (format!("k{i}"), format!("v{i}")))
            .collect();
        let cx = Context::new()
            .with_remote_span_context(SpanContext::new(
                TraceId::from(0x0af7651916cd43dd8448eb211c80319c),
                SpanId::from(0xb7ad6b7169203331),
                TraceFlags::SAMPLED,
                true,
                TraceState::from_key_value(members).unwrap(),
            ))
            .with_baggage([
                KeyValue::new("discount", "100%"),
                KeyValue::new("path", "a\\b"),
            ]);
        let carrier = TraceCarrier::from_context(&cx);
        let mut headers = HeaderMap::new();
        HeaderInjector::new(&mut headers)
            .header_names(HeaderNames::Lowercase)
            .inject_context(&cx);
        let header = |name: &str| headers.get(name).map(|v| v.as_str().to_owned());
        assert_eq!(carrier.traceparent, header(TRACEPARENT));
        assert_eq!(carrier.tracestate, header(TRACESTATE));
        assert_eq!(carrier.baggage, header(BAGGAGE));
        assert_eq!(
            carrier.tracestate.as_deref().unwrap().split(',').count(),
            32
        );
        let mut baggage: Vec<&str> = carrier.baggage.as_deref().unwrap().split(',').collect();
        baggage.sort_unstable();
        assert_eq!(baggage, ["discount=100%25", "path=a%5Cb"]);

        let from_carrier = context_from_carrier(&carrier, "payload traceparent").unwrap();
        let (from_headers, _) = HeaderExtractor::new(&headers).extract_context();
        assert_eq!(
            from_carrier.span().span_context(),
            from_headers.span().span_context()
        );
        assert_eq!(from_carrier.baggage().get("discount"), Some(&"100%".into()));
        assert_eq!(
            from_carrier.baggage().get("path"),
            from_headers.baggage().get("path")
        );
        assert_eq!(from_carrier.baggage().len(), 2);
    }

    /// Reading a carrier holds it to the header path's limits too: a
    /// tracestate over 32 members is discarded, not trusted.
    #[test]
    fn carrier_read_applies_the_limits() {
        let carrier = TraceCarrier {
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            tracestate: Some(
                (0..40)
                    .map(|i| format!("k{i}=v"))
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            baggage: None,
        };
        let cx = context_from_carrier(&carrier, "kv traceparent").unwrap();
        assert!(cx.span().span_context().is_valid());
        assert_eq!(cx.span().span_context().trace_state().header(), "");
        let bad = TraceCarrier {
            traceparent: Some("00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01".into()),
            ..TraceCarrier::default()
        };
        assert!(context_from_carrier(&bad, "kv traceparent").is_err());
    }
}
