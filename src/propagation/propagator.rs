//! Which [`TextMapPropagator`] injects and extracts.
//!
//! OpenTelemetry's global propagator defaults to a no-op that writes nothing
//! and reads nothing — the most common reason a consumer silently starts a
//! new trace. By default this crate uses the global propagator when one has
//! been set, and W3C Trace Context + Baggage when the global is still the
//! no-op. An explicit propagator always wins.

use std::fmt;
use std::sync::Arc;

use opentelemetry::global;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, TraceContextExt};
use opentelemetry::Context;

use super::headers::HeaderInjector;

/// The propagator used by the layer and the consumer adapter.
#[derive(Clone, Default)]
pub(crate) enum PropagatorChoice {
    /// The global propagator if set, else W3C Trace Context + Baggage.
    #[default]
    Auto,
    /// A propagator given by the user.
    Custom(Arc<dyn TextMapPropagator + Send + Sync>),
}

impl fmt::Debug for PropagatorChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("Auto"),
            Self::Custom(p) => {
                let fields: Vec<&str> = p.fields().collect();
                f.debug_tuple("Custom").field(&fields).finish()
            }
        }
    }
}

impl PropagatorChoice {
    pub(crate) fn custom<P>(propagator: P) -> Self
    where
        P: TextMapPropagator + Send + Sync + 'static,
    {
        Self::Custom(Arc::new(propagator))
    }

    /// Runs `f` with the propagator this choice resolves to right now:
    /// [`Resolved::W3c`] for the crate's default (the global is still the
    /// no-op), so that callers can take the W3C fast path.
    ///
    /// The global is read on every call (one uncontended read lock), so a
    /// propagator set later with `set_text_map_propagator` is noticed at
    /// once.
    pub(crate) fn resolve<R>(&self, f: impl FnOnce(Resolved<'_>) -> R) -> R {
        match self {
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
