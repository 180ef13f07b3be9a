use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use opentelemetry::global::BoxedSpan;
use opentelemetry::trace::{Span as OtelSpan, SpanContext, Status};
use opentelemetry::KeyValue;
use pin_project_lite::pin_project;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The PRODUCER span of one publish, however it was made.
#[derive(Debug)]
pub(crate) enum ProducerSpan {
    /// No span: producer spans are off, or the subject is skipped.
    None,
    /// A `tracing` span (the default).
    Tracing(Span),
    /// A span made with the SDK's tracer; boxed, so that the response
    /// future stays small (it is moved on every poll and await).
    Sdk(Box<opentelemetry_sdk::trace::Span>),
    /// A span made with any other OpenTelemetry tracer.
    Boxed(BoxedSpan),
}

impl ProducerSpan {
    /// The span's context when it was made with an OpenTelemetry tracer.
    pub(crate) fn otel_span_context(&self) -> Option<&SpanContext> {
        match self {
            Self::None | Self::Tracing(_) => None,
            Self::Sdk(span) => Some(span.span_context()),
            Self::Boxed(span) => Some(span.span_context()),
        }
    }

    pub(crate) fn add_event(&mut self, name: &'static str, attributes: Vec<KeyValue>) {
        match self {
            Self::None => {}
            Self::Tracing(span) => span.add_event(name, attributes),
            Self::Sdk(span) => span.add_event(name, attributes),
            Self::Boxed(span) => span.add_event(name, attributes),
        }
    }

    fn record_error<E: std::fmt::Display>(&mut self, error: &E) {
        fn otel<S: OtelSpan, E: std::fmt::Display>(span: &mut S, error: &E) {
            span.set_attribute(KeyValue::new(
                opentelemetry_semantic_conventions::attribute::ERROR_TYPE,
                error_type::<E>(),
            ));
            span.set_status(Status::error(error.to_string()));
        }
        match self {
            Self::None => {}
            Self::Tracing(span) => record_error(span, error),
            Self::Sdk(span) => otel(span.as_mut(), error),
            Self::Boxed(span) => otel(span, error),
        }
    }

    fn end(self) {
        match self {
            Self::None | Self::Tracing(_) => {}
            Self::Sdk(mut span) => span.end(),
            Self::Boxed(mut span) => span.end(),
        }
    }
}

pin_project! {
    /// Response future of [`TracePropagation`].
    ///
    /// Polls the inner service's future (inside the PRODUCER span with
    /// [`instrument_inner`](crate::TracePropagationLayer::instrument_inner))
    /// and ends the span when it completes (for JetStream, after the ack).
    /// An error is recorded on the span and returned unchanged.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        span: Option<ProducerSpan>,
        entered: bool,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, span: ProducerSpan) -> Self {
        Self {
            inner,
            span: Some(span),
            entered: false,
        }
    }

    /// Enters a `tracing` PRODUCER span around each poll of the inner
    /// future.
    pub(crate) fn entered_on_poll(mut self, entered: bool) -> Self {
        self.entered = entered;
        self
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let output = {
            let _entered = match this.span {
                Some(ProducerSpan::Tracing(span)) if *this.entered => Some(span.enter()),
                _ => None,
            };
            ready!(this.inner.poll(cx))
        };
        if let Some(mut span) = this.span.take() {
            if let Err(error) = &output {
                span.record_error(error);
            }
            span.end();
        }
        Poll::Ready(output)
    }
}

pub(crate) fn record_error<E: std::fmt::Display>(span: &Span, error: &E) {
    crate::telemetry::record_error_type(span, &error_type::<E>());
    span.set_status(Status::error(error.to_string()));
}

/// The error's type name without module paths, e.g.
/// `Error<PublishErrorKind>`: low-cardinality, as `error.type` should be.
fn error_type<E>() -> String {
    let full = std::any::type_name::<E>();
    let mut out = String::with_capacity(full.len());
    let mut segment = String::new();
    for c in full.chars() {
        match c {
            ':' => segment.clear(),
            '<' | '>' | ',' | ' ' | '(' | ')' | '&' => {
                out.push_str(&segment);
                segment.clear();
                out.push(c);
            }
            _ => segment.push(c),
        }
    }
    out.push_str(&segment);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn error_type_is_short() {
        assert_eq!(
            super::error_type::<async_nats::error::Error<async_nats::client::PublishErrorKind>>(),
            "Error<PublishErrorKind>"
        );
    }
}
