use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use opentelemetry::trace::Status;
use pin_project_lite::pin_project;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

pin_project! {
    /// Response future of [`TracePropagation`](crate::TracePropagation).
    ///
    /// Polls the inner service's future inside the PRODUCER span and ends the
    /// span when it completes (for JetStream, after the ack). An error is
    /// recorded on the span and returned unchanged.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        span: Option<Span>,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, span: Span) -> Self {
        Self {
            inner,
            span: Some(span),
        }
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
            let _entered = this.span.as_ref().map(Span::enter);
            ready!(this.inner.poll(cx))
        };
        if let Some(span) = this.span.take() {
            if let Err(error) = &output {
                record_error(&span, error);
            }
        }
        Poll::Ready(output)
    }
}

pub(crate) fn record_error<E: std::fmt::Display>(span: &Span, error: &E) {
    record_error_type(span, &error_type::<E>());
    span.set_status(Status::error(error.to_string()));
}

pub(crate) fn record_error_type(span: &Span, error_type: &str) {
    span.set_attribute(
        opentelemetry_semantic_conventions::attribute::ERROR_TYPE,
        error_type.to_owned(),
    );
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
