use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;

use crate::telemetry::MessagingSpan;

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
        span: Option<MessagingSpan>,
        entered: bool,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, span: MessagingSpan) -> Self {
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
                Some(span) if *this.entered => span.tracing_span().map(tracing::Span::enter),
                _ => None,
            };
            ready!(this.inner.poll(cx))
        };
        if let Some(mut span) = this.span.take() {
            if let Err(error) = &output {
                span.record_error(error_type::<E>(), error);
            }
            span.end();
        }
        Poll::Ready(output)
    }
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
