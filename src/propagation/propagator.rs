//! Which [`TextMapPropagator`] injects and extracts.
//!
//! OpenTelemetry's global propagator defaults to a no-op that writes nothing
//! and reads nothing — the most common reason a consumer silently starts a
//! new trace. By default this crate uses the global propagator when one has
//! been set, and W3C Trace Context + Baggage when the global is still the
//! no-op. An explicit propagator always wins.

use std::any::TypeId;
use std::fmt;
use std::sync::{Arc, LazyLock};

use opentelemetry::global;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt};
use opentelemetry::Context;

use super::extract::decode_w3c;
use super::headers::HeaderInjector;
use super::w3c::{baggage_value, extract_baggage, traceparent_string, tracestate_value};
use super::w3c::{BAGGAGE, TRACEPARENT, TRACESTATE};

/// The propagator used by the layer and the consumer adapter.
#[derive(Clone, Default)]
pub(crate) enum PropagatorChoice {
    /// The global propagator if set, else W3C Trace Context + Baggage.
    #[default]
    Auto,
    /// [`W3cPropagator`], given by the user: the fast path, without reading
    /// the global.
    W3c,
    /// A propagator given by the user.
    Custom(Arc<dyn TextMapPropagator + Send + Sync>),
}

impl fmt::Debug for PropagatorChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("Auto"),
            Self::W3c => f.write_str("W3c"),
            Self::Custom(p) => {
                let fields: Vec<&str> = p.fields().collect();
                f.debug_tuple("Custom").field(&fields).finish()
            }
        }
    }
}

impl PropagatorChoice {
    /// `propagator`, or the fast path when it is the crate's
    /// [`W3cPropagator`].
    pub(crate) fn custom<P>(propagator: P) -> Self
    where
        P: TextMapPropagator + Send + Sync + 'static,
    {
        if TypeId::of::<P>() == TypeId::of::<W3cPropagator>() {
            return Self::W3c;
        }
        Self::Custom(Arc::new(propagator))
    }

    /// Runs `f` with the propagator this choice resolves to right now:
    /// [`Resolved::W3c`] for [`W3cPropagator`] and for the crate's default
    /// while the global is still the no-op, so that callers can take the
    /// W3C fast path.
    ///
    /// The global is read on every call (one uncontended read lock), so a
    /// propagator set later with `set_text_map_propagator` is noticed at
    /// once.
    pub(crate) fn resolve<R>(&self, f: impl FnOnce(Resolved<'_>) -> R) -> R {
        match self {
            Self::W3c => f(Resolved::W3c),
            Self::Custom(p) => f(Resolved::Generic(p.as_ref())),
            Self::Auto => {
                let mut f = Some(f);
                global::get_text_map_propagator(|global| {
                    // Called exactly once; `None` cannot happen.
                    let Some(f) = f.take() else {
                        unreachable!("get_text_map_propagator calls its closure once")
                    };
                    if is_noop(global) {
                        f(Resolved::W3c)
                    } else {
                        f(Resolved::Generic(global))
                    }
                })
            }
        }
    }

    /// Injects `cx` through `injector`: the W3C fast path for the default,
    /// the propagator's own `inject_context` otherwise.
    pub(crate) fn inject(&self, cx: &Context, injector: &mut HeaderInjector<'_>) {
        self.resolve(|resolved| match resolved {
            Resolved::W3c => injector.inject_w3c(cx),
            Resolved::Generic(p) => p.inject_context(cx, injector),
        })
    }

    /// Injects the span `sc` as a child of `parent` (whose baggage goes
    /// along) without putting the span into a [`Context`] first.
    pub(crate) fn inject_span(
        &self,
        sc: &SpanContext,
        parent: &Context,
        injector: &mut HeaderInjector<'_>,
    ) {
        self.resolve(|resolved| match resolved {
            Resolved::W3c => injector.inject_w3c_span(sc, parent),
            Resolved::Generic(p) => {
                p.inject_context(&parent.with_remote_span_context(sc.clone()), injector)
            }
        })
    }
}

/// What a [`PropagatorChoice`] resolves to.
#[derive(Clone, Copy)]
pub(crate) enum Resolved<'a> {
    /// W3C Trace Context + Baggage, the crate's default: use the fast path.
    W3c,
    /// Any other propagator.
    Generic(&'a dyn TextMapPropagator),
}

/// Whether `propagator` is a no-op: one that declares no fields.
pub(crate) fn is_noop(propagator: &dyn TextMapPropagator) -> bool {
    propagator.fields().next().is_none()
}

/// The fields [`W3cPropagator`] declares.
static W3C_FIELDS: LazyLock<[String; 3]> = LazyLock::new(|| {
    [
        TRACEPARENT.to_owned(),
        TRACESTATE.to_owned(),
        BAGGAGE.to_owned(),
    ]
});

/// W3C Trace Context and W3C Baggage in one propagator, with this crate's
/// codec and limits: the same codec the layer and the consumer adapter use
/// for headers by default.
///
/// It writes and reads what OpenTelemetry's `TraceContextPropagator` and
/// `BaggagePropagator` together do, held to the W3C rules and limits the
/// crate applies to headers (see the [module docs](crate::propagation)):
/// - writing: `traceparent`, and `tracestate` (its first 32 members; left
///   out when empty) for a valid span context; `baggage` with keys and
///   values percent-encoded as the SDK encodes them and `%` and `\` in
///   values too, whole members left out to stay within 180 members and
///   8192 bytes;
/// - reading: a `traceparent` that breaks any W3C rule gives no span
///   context; a `tracestate` of more than 32 members is dropped and one
///   over 512 characters keeps whole members; a `baggage` over 8192 bytes
///   is dropped.
///
/// Use it
/// - on the layer or the consumer adapter (`.propagator(W3cPropagator::new())`):
///   they take their W3C fast path and never read the global propagator
///   (one lock per message less; a propagator set later is then not
///   used);
/// - as the global propagator, so that your other instrumentation (HTTP,
///   gRPC) propagates by the same rules. The layer and the adapter then
///   call it as they call any global propagator (behind the `dyn` they
///   cannot tell it from a wrapper around it); give it to them as well to
///   keep their fast path.
///
/// # Examples
///
/// As the global propagator:
///
/// ```
/// use nats_otel::propagation::W3cPropagator;
///
/// opentelemetry::global::set_text_map_propagator(W3cPropagator::new());
/// assert!(!nats_otel::propagation::global_propagator_is_noop());
/// ```
///
/// Through any carrier:
///
/// ```
/// use std::collections::HashMap;
///
/// use nats_otel::propagation::W3cPropagator;
/// use opentelemetry::propagation::TextMapPropagator;
/// use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
/// use opentelemetry::Context;
///
/// let sent = Context::new().with_remote_span_context(SpanContext::new(
///     TraceId::from(0x0af7651916cd43dd8448eb211c80319c),
///     SpanId::from(0xb7ad6b7169203331),
///     TraceFlags::SAMPLED,
///     true,
///     TraceState::NONE,
/// ));
/// let mut carrier = HashMap::new();
/// W3cPropagator::new().inject_context(&sent, &mut carrier);
/// assert_eq!(
///     carrier["traceparent"],
///     "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
/// );
///
/// let received = W3cPropagator::new().extract(&carrier);
/// assert_eq!(received.span().span_context(), sent.span().span_context());
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct W3cPropagator {
    _private: (),
}

impl W3cPropagator {
    /// The propagator.
    pub fn new() -> Self {
        Self::default()
    }
}

impl TextMapPropagator for W3cPropagator {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        let span = cx.span();
        let sc = span.span_context();
        if sc.is_valid() {
            injector.set(
                TRACEPARENT,
                traceparent_string(sc.trace_id(), sc.span_id(), sc.trace_flags()),
            );
            if let Some((value, _)) = tracestate_value(sc.trace_state()) {
                injector.set(TRACESTATE, value);
            }
        }
        if let Some((value, _)) = baggage_value(cx) {
            injector.set(BAGGAGE, value);
        }
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        let decoded = decode_w3c(
            extractor.get(TRACEPARENT).map(|value| (TRACEPARENT, value)),
            extractor.get(TRACESTATE),
            None,
        );
        let found = decoded.context.span().span_context().clone();
        let cx = if found.is_valid() {
            cx.with_remote_span_context(found)
        } else {
            cx.clone()
        };
        // As the SDK's `BaggagePropagator`: a `baggage` header replaces the
        // baggage (one over the limit is dropped, the context kept as is).
        match extractor.get(BAGGAGE) {
            Some(value) => extract_baggage(cx, value).0,
            None => cx,
        }
    }

    fn fields(&self) -> opentelemetry::propagation::text_map_propagator::FieldIter<'_> {
        opentelemetry::propagation::text_map_propagator::FieldIter::new(W3C_FIELDS.as_slice())
    }
}

/// Whether the global text-map propagator is still OpenTelemetry's default
/// no-op (nothing has called `opentelemetry::global::set_text_map_propagator`).
///
/// This crate does not depend on it — it falls back to W3C Trace Context and
/// Baggage — but other instrumentation in the same process (HTTP clients and
/// servers) does.
///
/// # Examples
///
/// ```
/// opentelemetry::global::set_text_map_propagator(
///     opentelemetry_sdk::propagation::TraceContextPropagator::new(),
/// );
/// assert!(!nats_otel::propagation::global_propagator_is_noop());
/// ```
pub fn global_propagator_is_noop() -> bool {
    global::get_text_map_propagator(is_noop)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use opentelemetry::baggage::BaggageExt;
    use opentelemetry::propagation::{TextMapCompositePropagator, TextMapPropagator};
    use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId};
    use opentelemetry::{Context, KeyValue};
    use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};

    use super::{is_noop, PropagatorChoice, W3cPropagator};

    fn sdk() -> TextMapCompositePropagator {
        TextMapCompositePropagator::new(vec![
            Box::new(TraceContextPropagator::new()),
            Box::new(BaggagePropagator::new()),
        ])
    }

    fn sent() -> Context {
        Context::new()
            .with_remote_span_context(SpanContext::new(
                TraceId::from(0x0af7651916cd43dd8448eb211c80319c),
                SpanId::from(0xb7ad6b7169203331),
                TraceFlags::SAMPLED,
                true,
                "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE".parse().unwrap(),
            ))
            .with_baggage([
                KeyValue::new("user", "alice é"),
                KeyValue::new("tenant", "acme"),
            ])
    }

    fn entries(cx: &Context) -> Vec<(String, String)> {
        let mut entries: Vec<_> = cx
            .baggage()
            .iter()
            .map(|(k, (v, _))| (k.to_string(), v.to_string()))
            .collect();
        entries.sort();
        entries
    }

    #[test]
    fn writes_and_reads_what_the_sdk_pair_does() {
        let mut ours = HashMap::new();
        W3cPropagator::new().inject_context(&sent(), &mut ours);
        let mut theirs = HashMap::new();
        sdk().inject_context(&sent(), &mut theirs);
        assert_eq!(ours["traceparent"], theirs["traceparent"]);
        assert_eq!(ours["tracestate"], theirs["tracestate"]);
        assert_eq!(ours.len(), 3, "{ours:?}");
        // Each reads the other's carrier to the same context.
        for carrier in [&ours, &theirs] {
            let a = W3cPropagator::new().extract(carrier);
            let b = sdk().extract(carrier);
            assert_eq!(a.span().span_context(), b.span().span_context());
            assert_eq!(a.span().span_context(), sent().span().span_context());
            assert_eq!(entries(&a), entries(&b));
            assert_eq!(entries(&a), entries(&sent()));
        }
    }

    #[test]
    fn extraction_keeps_the_base_context_where_nothing_is_found() {
        let base = Context::new().with_baggage([KeyValue::new("kept", "yes")]);
        let cx =
            W3cPropagator::new().extract_with_context(&base, &HashMap::<String, String>::new());
        assert!(!cx.span().span_context().is_valid());
        assert_eq!(entries(&cx), vec![("kept".into(), "yes".into())]);
        // A traceparent that breaks a W3C rule (uppercase hex) gives no
        // span; a baggage header replaces the base's baggage.
        let carrier = HashMap::from([
            (
                "traceparent".to_owned(),
                "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01".to_owned(),
            ),
            ("baggage".to_owned(), "tenant=acme".to_owned()),
        ]);
        let cx = W3cPropagator::new().extract_with_context(&base, &carrier);
        assert!(!cx.span().span_context().is_valid());
        assert_eq!(entries(&cx), vec![("tenant".into(), "acme".into())]);
    }

    #[test]
    fn given_it_takes_the_fast_path_and_the_sdk_pair_does_not() {
        assert!(matches!(
            PropagatorChoice::custom(W3cPropagator::new()),
            PropagatorChoice::W3c
        ));
        assert!(matches!(
            PropagatorChoice::custom(TraceContextPropagator::new()),
            PropagatorChoice::Custom(_)
        ));
        assert!(matches!(
            PropagatorChoice::custom(sdk()),
            PropagatorChoice::Custom(_)
        ));
        // It declares its fields: as the global, it is not taken for the
        // no-op (whose place the crate's default would take).
        assert!(!is_noop(&W3cPropagator::new()));
    }
}
