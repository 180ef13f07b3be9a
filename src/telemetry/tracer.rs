//! Which tracer makes the crate's PRODUCER and CONSUMER spans.
//!
//! By default they are `tracing` spans, which the subscriber's
//! tracing-opentelemetry layer turns into OpenTelemetry spans: nothing to
//! configure, and the spans show up wherever the application's other spans
//! do. Given an OpenTelemetry tracer (`.tracer(...)` on the layer and the
//! consumer adapter), the crate makes its spans with it directly instead,
//! which skips the `tracing` registry and costs a fraction per message —
//! an unsampled span is almost free. The parent is then the current
//! OpenTelemetry context, which tracing-opentelemetry keeps in step with the
//! entered `tracing` span.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use opentelemetry::global::BoxedTracer;
use opentelemetry::trace::{TraceContextExt, Tracer};
use opentelemetry::Context;
use opentelemetry_sdk::trace::SdkTracer;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Where the crate's spans are made.
#[derive(Clone, Default)]
pub(crate) enum SpanTracer {
    /// `tracing` spans, exported by the subscriber's tracing-opentelemetry
    /// layer.
    #[default]
    Tracing,
    /// The SDK's tracer, called without dynamic dispatch: the common case.
    Sdk(SdkTracer),
    /// Any other tracer.
    Boxed(Arc<BoxedTracer>),
}

impl fmt::Debug for SpanTracer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tracing => f.write_str("Tracing"),
            Self::Sdk(_) => f.write_str("Sdk"),
            Self::Boxed(_) => f.write_str("Boxed"),
        }
    }
}

impl SpanTracer {
    pub(crate) fn new<T>(tracer: T) -> Self
    where
        T: Tracer + Send + Sync + 'static,
        T::Span: Send + Sync + 'static,
    {
        let tracer: Box<dyn Any> = Box::new(tracer);
        let tracer = match tracer.downcast::<SdkTracer>() {
            Ok(sdk) => return Self::Sdk(*sdk),
            Err(other) => other,
        };
        // `opentelemetry::global::tracer` hands out a `BoxedTracer`: keep it
        // as it is rather than boxing it twice.
        let tracer = match tracer.downcast::<BoxedTracer>() {
            Ok(boxed) => return Self::Boxed(Arc::from(boxed)),
            Err(other) => other,
        };
        match tracer.downcast::<T>() {
            Ok(tracer) => Self::Boxed(Arc::new(BoxedTracer::new(tracer))),
            Err(_) => unreachable!("the box holds the tracer given, a `T`"),
        }
    }
}

/// The caller's context for a span made with an OpenTelemetry tracer: the
/// current OpenTelemetry context when it has a valid span (the entered
/// `tracing` span's, with tracing-opentelemetry's context activation, or
/// one attached by hand); else the entered `tracing` span's context (for
/// subscribers without context activation); else the current context as it
/// is (it may still carry baggage).
pub(crate) fn caller_context() -> Context {
    let current = Context::current();
    if current.span().span_context().is_valid() {
        return current;
    }
    let span = tracing::Span::current();
    if !span.is_none() {
        let cx = span.context();
        if cx.span().span_context().is_valid() {
            return cx;
        }
    }
    current
}

/// The parent a new `tracing` span gets from tracing-opentelemetry when
/// none is set: the entered `tracing` span's context when it is valid,
/// else the current OpenTelemetry context.
pub(crate) fn tracing_caller_context() -> Context {
    let span = tracing::Span::current();
    if !span.is_none() {
        let cx = span.context();
        if cx.span().span_context().is_valid() {
            return cx;
        }
    }
    Context::current()
}
