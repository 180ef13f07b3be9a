use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use opentelemetry::KeyValue;
use pin_project_lite::pin_project;

use super::error::{Error, KvWriteError};
use std::time::Instant;

use crate::telemetry::{MessagingAttributes, MessagingSpan, Metrics};

/// The KV fallback's put of one message's carrier.
pub(crate) type PutFuture = BoxFuture<'static, Result<(), KvWriteError>>;

/// What the response future still has to do about the KV fallback.
pub(crate) enum Write {
    /// No fallback, or nothing to write.
    None,
    /// A required write that failed before it was sent.
    #[cfg_attr(not(feature = "kv"), allow(dead_code))]
    Failed(Box<KvWriteError>),
    /// A required write: the publish is polled only once it is acked.
    #[cfg_attr(not(feature = "kv"), allow(dead_code))]
    Before(PutFuture),
    /// A best-effort write: polled ahead of the publish, so it is sent
    /// first; the future completes once both are done.
    #[cfg_attr(not(feature = "kv"), allow(dead_code))]
    Alongside(PutFuture),
    /// The future has completed.
    Done,
}

pin_project! {
    /// Response future of [`TracePropagation`](super::TracePropagation).
    ///
    /// Polls the KV fallback's put, when there is one, then the inner
    /// service's future (inside the PRODUCER span with
    /// [`instrument_inner`](crate::TracePropagationLayer::instrument_inner)),
    /// and ends the span when both are done (for JetStream, after the ack).
    /// An error is recorded on the span and returned as
    /// [`Error::Publish`], unchanged inside; a failed
    /// [`Required`](crate::fallback::WritePolicy::Required) write as
    /// [`Error::KvWrite`], the inner future never polled.
    ///
    /// It is [`Send`] when the inner future is, and completes once: polled
    /// again, it stays pending.
    pub struct ResponseFuture<F: Future> {
        #[pin]
        inner: F,
        span: Option<MessagingSpan>,
        entered: bool,
        write: Write,
        published: Option<F::Output>,
        // Boxed: only with metrics on, and it keeps the future small.
        measured: Option<Box<Measured>>,
    }
}

/// What the conventional metrics record of one publish.
struct Measured {
    metrics: Metrics,
    start: Instant,
    attributes: MessagingAttributes,
}

impl<F: Future> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let write = match &self.write {
            Write::None => "none",
            Write::Failed(_) => "failed",
            Write::Before(_) => "before the publish",
            Write::Alongside(_) => "alongside the publish",
            Write::Done => "done",
        };
        f.debug_struct("ResponseFuture")
            .field("span", &self.span)
            .field("entered", &self.entered)
            .field("kv_write", &write)
            .finish_non_exhaustive()
    }
}

impl<F: Future> ResponseFuture<F> {
    pub(crate) fn new(inner: F, span: MessagingSpan) -> Self {
        Self::with_all(inner, span, false, Write::None, None)
    }

    /// The future with everything set at once (builder methods would move
    /// the whole future once each, which shows per message). `entered`:
    /// the `tracing` PRODUCER span is entered around each poll of the
    /// inner future; `write`: the KV fallback's write, driven along with
    /// the publish; `measured`: the metrics, start and attributes the
    /// publish is recorded with when it completes (`None` when metrics are
    /// off).
    #[inline]
    pub(crate) fn with_all(
        inner: F,
        span: MessagingSpan,
        entered: bool,
        write: Write,
        measured: Option<(&Metrics, Instant, MessagingAttributes)>,
    ) -> Self {
        Self {
            inner,
            span: Some(span),
            entered,
            write,
            published: None,
            measured: measured.map(|(metrics, start, attributes)| {
                Box::new(Measured {
                    metrics: metrics.clone(),
                    start,
                    attributes,
                })
            }),
        }
    }

    /// Drives the KV fallback's `write` along with the publish.
    #[cfg(test)]
    pub(crate) fn with_write(mut self, write: Write) -> Self {
        self.write = write;
        self
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: fmt::Display,
{
    type Output = Result<T, Error<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        // The KV write first: its first poll sends it, ahead of the message.
        match this.write {
            Write::None => {}
            Write::Done => return Poll::Pending,
            Write::Failed(_) => {
                let Write::Failed(error) = std::mem::replace(this.write, Write::Done) else {
                    unreachable!("matched above")
                };
                return Poll::Ready(Err(finish_kv_failure(this.span, *error)));
            }
            Write::Before(put) => match put.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(())) => *this.write = Write::None,
                Poll::Ready(Err(error)) => {
                    *this.write = Write::Done;
                    return Poll::Ready(Err(finish_kv_failure(this.span, error)));
                }
            },
            Write::Alongside(put) => {
                if let Poll::Ready(written) = put.as_mut().poll(cx) {
                    *this.write = Write::None;
                    if let (Err(error), Some(span)) = (written, this.span.as_mut()) {
                        best_effort_failure(span, &error);
                    }
                }
            }
        }
        // The publish's output: kept from an earlier poll (while a
        // best-effort write was still pending), or polled now.
        let output = match this.published.take() {
            Some(output) => output,
            None => {
                let polled = if *this.entered {
                    let _entered = this
                        .span
                        .as_ref()
                        .and_then(MessagingSpan::tracing_span)
                        .map(tracing::Span::enter);
                    this.inner.as_mut().poll(cx)
                } else {
                    this.inner.as_mut().poll(cx)
                };
                match polled {
                    Poll::Ready(output) => output,
                    Poll::Pending => return Poll::Pending,
                }
            }
        };
        if matches!(this.write, Write::Alongside(_)) {
            *this.published = Some(output);
            return Poll::Pending;
        }
        *this.write = Write::Done;
        let error_type = output.as_ref().err().map(|_| error_type::<E>());
        if let Some(measured) = this.measured.take() {
            let Measured {
                metrics,
                start,
                attributes,
            } = *measured;
            metrics.sent(start, &attributes, error_type.as_deref());
        }
        match this.span.take() {
            None | Some(MessagingSpan::None) => {}
            Some(mut span) => {
                if let (Err(error), Some(error_type)) = (&output, error_type) {
                    span.record_error(error_type, error);
                }
                span.end();
            }
        }
        Poll::Ready(output.map_err(Error::Publish))
    }
}

/// Records a failed best-effort write on the PRODUCER span (without
/// PRODUCER spans, only the WARN, inside the current span).
pub(crate) fn best_effort_failure(span: &mut MessagingSpan, error: &KvWriteError) {
    span.add_event(
        "nats_otel.fallback_write_failed",
        vec![KeyValue::new("error", error.to_string())],
    );
    span.warn(
        None,
        format_args!("{error}; published anyway (best effort)"),
    );
}

/// Ends the span of a publish stopped by a failed required KV write.
fn finish_kv_failure<E>(span: &mut Option<MessagingSpan>, error: KvWriteError) -> Error<E> {
    if let Some(mut span) = span.take() {
        span.record_error("KvWriteError", &error);
        span.end();
    }
    Error::KvWrite(error)
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
    use std::sync::{Arc, Mutex};
    use std::task::Waker;

    use super::*;

    type Log = Arc<Mutex<Vec<&'static str>>>;

    /// A future that logs `name` when polled and is ready from poll
    /// `ready_at` on (1-based).
    fn step<T: Send + 'static>(
        log: &Log,
        name: &'static str,
        ready_at: usize,
        output: T,
    ) -> BoxFuture<'static, T> {
        let log = Arc::clone(log);
        let mut output = Some(output);
        let mut polls = 0;
        Box::pin(std::future::poll_fn(move |_| {
            polls += 1;
            log.lock().map(|mut l| l.push(name)).ok();
            match output.take() {
                Some(out) if polls >= ready_at => Poll::Ready(out),
                out => {
                    output = out;
                    Poll::Pending
                }
            }
        }))
    }

    fn poll_once<F: Future + Unpin>(future: &mut F) -> Poll<F::Output> {
        Pin::new(future).poll(&mut Context::from_waker(Waker::noop()))
    }

    fn send<T: Send>(_: &T) {}

    fn failed_write() -> KvWriteError {
        KvWriteError {
            bucket: "b".into(),
            key: "k".into(),
            message: "no stream".into(),
        }
    }

    #[test]
    fn best_effort_sends_the_put_first_and_waits_for_both() {
        let log = Log::default();
        // The publish is done at once, the put on its second poll.
        let mut future = ResponseFuture::new(
            step(&log, "publish", 1, Ok::<_, String>(7)),
            MessagingSpan::None,
        )
        .with_write(Write::Alongside(step(&log, "put", 2, Ok(()))));
        send(&future);
        assert!(poll_once(&mut future).is_pending());
        assert_eq!(*log.lock().unwrap(), ["put", "publish"]);
        assert!(matches!(poll_once(&mut future), Poll::Ready(Ok(7))));
        // Not polled again once done, and never ready twice.
        assert!(poll_once(&mut future).is_pending());
        assert_eq!(*log.lock().unwrap(), ["put", "publish", "put"]);
    }

    #[test]
    fn best_effort_put_failure_does_not_fail_the_publish() {
        let log = Log::default();
        let mut future = ResponseFuture::new(
            step(
                &log,
                "publish",
                2,
                Err::<u8, _>("publish failed".to_owned()),
            ),
            MessagingSpan::None,
        )
        .with_write(Write::Alongside(step(&log, "put", 1, Err(failed_write()))));
        assert!(poll_once(&mut future).is_pending());
        match poll_once(&mut future) {
            Poll::Ready(Err(Error::Publish(e))) => assert_eq!(e, "publish failed"),
            other => panic!("expected the publish error, got {other:?}"),
        }
        assert_eq!(*log.lock().unwrap(), ["put", "publish", "publish"]);
    }

    #[test]
    fn a_required_write_holds_the_publish_until_it_is_acked() {
        let log = Log::default();
        let mut future = ResponseFuture::new(
            step(&log, "publish", 1, Ok::<_, String>(7)),
            MessagingSpan::None,
        )
        .with_write(Write::Before(step(&log, "put", 2, Ok(()))));
        assert!(poll_once(&mut future).is_pending());
        assert_eq!(*log.lock().unwrap(), ["put"]);
        assert!(matches!(poll_once(&mut future), Poll::Ready(Ok(7))));
        assert_eq!(*log.lock().unwrap(), ["put", "put", "publish"]);
    }

    #[test]
    fn a_failed_required_write_never_polls_the_publish() {
        for write in [
            Write::Failed(Box::new(failed_write())),
            Write::Before(Box::pin(std::future::ready(Err(failed_write())))),
        ] {
            let log = Log::default();
            let mut future = ResponseFuture::new(
                step(&log, "publish", 1, Ok::<_, String>(7)),
                MessagingSpan::None,
            )
            .with_write(write);
            assert!(matches!(
                poll_once(&mut future),
                Poll::Ready(Err(Error::KvWrite(e))) if e.key() == "k"
            ));
            assert!(poll_once(&mut future).is_pending());
            assert!(log.lock().unwrap().is_empty(), "the publish was polled");
        }
    }

    #[test]
    fn error_type_is_short() {
        assert_eq!(
            super::error_type::<async_nats::error::Error<async_nats::client::PublishErrorKind>>(),
            "Error<PublishErrorKind>"
        );
    }
}
