//! The publish side of the KV fallback: [`KvFallbackLayer`] writes each
//! message's trace carrier to the fallback bucket as it is sent.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use bytes::Bytes;
use futures::future::{BoxFuture, Fuse, FutureExt, IntoFuture, TryFuture, TryFutureExt};
use opentelemetry::KeyValue;
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::request::PublishMessage;
use crate::fallback::{KvFallback, WritePolicy};
use crate::propagation::{encode_record as encode, find_header, CarrierRef};
use crate::propagation::{BAGGAGE, TRACEPARENT, TRACESTATE};

/// A [`Layer`] that writes each message's trace carrier to the fallback KV
/// bucket along with the message.
///
/// The put is sent before the message. With
/// [`WritePolicy::Required`](crate::fallback::WritePolicy::Required) the message is sent only once the put is
/// acked; with [`WritePolicy::BestEffort`](crate::fallback::WritePolicy::BestEffort) (the default) right after the
/// put, both acks being awaited together (see [`WritePolicy`](crate::fallback::WritePolicy)).
///
/// Usually added through
/// [`TracePropagationLayer::fallback`](crate::TracePropagationLayer::fallback),
/// which puts it *inside* the propagation layer, so it sees the injected
/// headers and runs inside the PRODUCER span (when it is a `tracing` span,
/// which that method has the layer enter, see
/// [`instrument_inner`](crate::TracePropagationLayer::instrument_inner);
/// with [`tracer`](crate::TracePropagationLayer::tracer), inside the
/// caller's span). Stacked by hand below a
/// [`TracePropagationLayer`](crate::TracePropagationLayer), it runs inside
/// the PRODUCER span only if that layer has `.instrument_inner(true)`;
/// otherwise what it records about a skipped or failed write goes to the
/// caller's span.
///
/// # Examples
///
/// ```no_run
/// use nats_otel::{fallback::FallbackKey, JetStreamPublisher, KvFallback, Publish, TracePropagationLayer};
/// use tower::{Layer, Service, ServiceExt};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let client = async_nats::connect("nats://127.0.0.1:4222").await?;
/// let js = async_nats::jetstream::new(client);
/// let fallback = KvFallback::new(
///     KvFallback::open_bucket(&js, "trace_carriers").await?,
///     FallbackKey::subject_token(1),
/// );
/// let mut publisher = TracePropagationLayer::new()
///     .fallback(fallback)
///     .layer(JetStreamPublisher::new(js));
/// publisher.ready().await?.call(Publish::new("jobs.42", "{}")).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct KvFallbackLayer {
    fallback: Arc<KvFallback>,
}

impl KvFallbackLayer {
    /// A layer writing through `fallback`.
    pub fn new(fallback: KvFallback) -> Self {
        Self {
            fallback: Arc::new(fallback),
        }
    }
}

impl<S> Layer<S> for KvFallbackLayer {
    type Service = KvFallbackService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        KvFallbackService {
            inner,
            fallback: Arc::clone(&self.fallback),
        }
    }
}

/// A publish service wrapped by [`KvFallbackLayer`]: writes the carrier
/// found in the request headers to KV and calls the inner service, after
/// the put's ack ([`WritePolicy::Required`](crate::fallback::WritePolicy::Required)) or right after sending the
/// put ([`WritePolicy::BestEffort`](crate::fallback::WritePolicy::BestEffort)).
#[derive(Debug, Clone)]
pub struct KvFallbackService<S> {
    inner: S,
    // Shared, so a publish costs a reference count, not a copy of the
    // bucket handle.
    fallback: Arc<KvFallback>,
}

impl<S> KvFallbackService<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, R> Service<R> for KvFallbackService<S>
where
    S: Service<R> + Clone + Send + 'static,
    S::Future: Send,
    R: PublishMessage + Send + 'static,
{
    type Response = S::Response;
    type Error = FallbackError<S::Error>;
    type Future = KvFallbackFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(FallbackError::Publish)
    }

    fn call(&mut self, request: R) -> Self::Future {
        // Everything read from the request is read now, before it moves
        // into the inner call: the key, and the record encoded straight
        // from the header values (no copy of the carrier).
        let key = self
            .fallback
            .key
            .derive(&crate::propagation::MessageMeta::new(
                request.subject(),
                request.headers(),
                request.payload(),
            ));
        let record = match &key {
            Ok(_) => carrier_of(&request).map(encode),
            Err(_) => None,
        };
        // The ready service is the one to call; leave a fresh clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        // Events go to the span current now and while the future is polled:
        // the PRODUCER span, which the propagation layer enters around both
        // when stacked by `fallback` (with `.tracer(..)`, or with
        // `instrument_inner(false)`, the caller's span).
        let (key, record) = match (key, record) {
            (Err(error), _) => {
                // Not a failure (the message may simply have no key), but
                // never silent: consumers cannot recover this one.
                let span = Span::current();
                span.add_event(
                    "nats_otel.fallback_skipped",
                    vec![KeyValue::new("reason", error.to_string())],
                );
                tracing::warn!(
                    target: "nats_otel",
                    parent: &span,
                    "{error}; no KV fallback record written for this message"
                );
                return KvFallbackFuture::publish(inner.call(request));
            }
            // Nothing to recover later: no trace context was injected.
            (Ok(_), None) => return KvFallbackFuture::publish(inner.call(request)),
            (Ok(key), Some(Err(error))) => {
                let error = write_failed(&self.fallback, key, error.to_string());
                if self.fallback.on_write_failure == WritePolicy::Required {
                    return KvFallbackFuture::failed(error);
                }
                best_effort_failure(&error);
                return KvFallbackFuture::publish(inner.call(request));
            }
            (Ok(key), Some(Ok(record))) => (key, Bytes::from(record)),
        };
        let fallback = Arc::clone(&self.fallback);
        match fallback.on_write_failure {
            // Nothing may be sent unless the record is stored: the publish
            // starts only once the put is acked.
            WritePolicy::Required => KvFallbackFuture::serial(Box::pin(async move {
                let written = fallback.store.put(key.as_str(), record).await;
                settle(&fallback, key, written).map_err(FallbackError::KvWrite)?;
                inner.call(request).await.map_err(FallbackError::Publish)
            })),
            // The put's outcome cannot stop the publish, so the publish
            // does not wait for its ack: the future sends the put, then the
            // message, and completes once both are acked; one round trip
            // instead of two.
            WritePolicy::BestEffort => {
                let put = Box::pin(async move {
                    let written = fallback.store.put(key.as_str(), record).await;
                    settle(&fallback, key, written)
                });
                KvFallbackFuture::concurrent(put, inner.call(request))
            }
        }
    }
}

type PutFuture = BoxFuture<'static, Result<(), KvWriteError>>;

pin_project! {
    /// Response future of [`KvFallbackService`].
    ///
    /// With [`WritePolicy::BestEffort`](crate::fallback::WritePolicy::BestEffort), it polls the KV put before the
    /// inner service's future, so the put is sent first, and completes once
    /// both have; a failed put is recorded then. It is [`Send`] when the
    /// inner service's future and its output are.
    pub struct KvFallbackFuture<F: TryFuture> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F: TryFuture> {
        // No record to write: the inner future alone.
        Publish { #[pin] publish: F },
        // The put, then the publish (or the put's failure): one future.
        Serial { future: BoxFuture<'static, Result<F::Ok, FallbackError<F::Error>>> },
        // A failed required write, returned on the first poll.
        Failed { error: Option<KvWriteError> },
        // The put and the publish together; each output kept until both
        // are done.
        Concurrent {
            put: Option<PutFuture>,
            #[pin]
            publish: Fuse<IntoFuture<F>>,
            published: Option<Result<F::Ok, F::Error>>,
        },
    }
}

impl<F: TryFuture> KvFallbackFuture<F> {
    fn publish(publish: F) -> Self {
        Self {
            state: State::Publish { publish },
        }
    }

    fn serial(future: BoxFuture<'static, Result<F::Ok, FallbackError<F::Error>>>) -> Self {
        Self {
            state: State::Serial { future },
        }
    }

    fn failed(error: KvWriteError) -> Self {
        Self {
            state: State::Failed { error: Some(error) },
        }
    }

    fn concurrent(put: PutFuture, publish: F) -> Self {
        Self {
            state: State::Concurrent {
                put: Some(put),
                publish: publish.into_future().fuse(),
                published: None,
            },
        }
    }
}

impl<F: TryFuture> fmt::Debug for KvFallbackFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Publish { .. } => "publish",
            State::Serial { .. } => "put, then publish",
            State::Failed { .. } => "failed",
            State::Concurrent { .. } => "put and publish",
        };
        f.debug_struct("KvFallbackFuture")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

impl<F: TryFuture> Future for KvFallbackFuture<F> {
    type Output = Result<F::Ok, FallbackError<F::Error>>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Publish { publish } => publish.try_poll(cx).map_err(FallbackError::Publish),
            StateProj::Serial { future } => future.as_mut().poll(cx),
            StateProj::Failed { error } => match error.take() {
                Some(error) => Poll::Ready(Err(FallbackError::KvWrite(error))),
                // Polled after completion.
                None => Poll::Pending,
            },
            StateProj::Concurrent {
                put,
                publish,
                published,
            } => {
                // The put first: its first poll sends it, ahead of the
                // message.
                if let Some(future) = put {
                    if let Poll::Ready(written) = future.as_mut().poll(cx) {
                        *put = None;
                        if let Err(error) = written {
                            best_effort_failure(&error);
                        }
                    }
                }
                if published.is_none() {
                    if let Poll::Ready(output) = publish.poll(cx) {
                        *published = Some(output);
                    }
                }
                if put.is_some() {
                    return Poll::Pending;
                }
                match published.take() {
                    Some(output) => Poll::Ready(output.map_err(FallbackError::Publish)),
                    // Still publishing, or polled after completion (the
                    // fused publish stays pending).
                    None => Poll::Pending,
                }
            }
        }
    }
}

/// Counts the outcome of a put; a failure becomes a [`KvWriteError`].
fn settle<T, E: fmt::Display>(
    fallback: &KvFallback,
    key: String,
    written: Result<T, E>,
) -> Result<(), KvWriteError> {
    match written {
        Ok(_) => {
            fallback.stats.writes.fetch_add(1, Ordering::Relaxed);
            fallback.metrics.kv("write", true);
            Ok(())
        }
        Err(error) => Err(write_failed(fallback, key, error.to_string())),
    }
}

/// Counts a failed write and describes it.
fn write_failed(fallback: &KvFallback, key: String, message: String) -> KvWriteError {
    fallback
        .stats
        .write_failures
        .fetch_add(1, Ordering::Relaxed);
    fallback.metrics.kv("write", false);
    KvWriteError {
        bucket: fallback.store.name.clone(),
        key,
        message,
    }
}

/// Records a failed best-effort write on the current span (the PRODUCER
/// span when the propagation layer enters it, else the caller's) and as a
/// WARN.
fn best_effort_failure(error: &KvWriteError) {
    let span = Span::current();
    span.add_event(
        "nats_otel.fallback_write_failed",
        vec![KeyValue::new("error", error.to_string())],
    );
    tracing::warn!(
        target: "nats_otel",
        parent: &span,
        "{error}; published anyway (best effort)"
    );
}

/// The carrier in the request headers, borrowed; `None` without a
/// `traceparent`. An empty `tracestate` is left out.
fn carrier_of<R: PublishMessage>(request: &R) -> Option<CarrierRef<'_>> {
    let headers = request.headers()?;
    let field = |name| find_header(headers, name).map(|(_, v)| v);
    Some(CarrierRef {
        traceparent: field(TRACEPARENT)?,
        tracestate: field(TRACESTATE).filter(|s| !s.is_empty()),
        baggage: field(BAGGAGE),
    })
}

/// The error of a publish service with the KV fallback.
#[derive(Debug)]
pub enum FallbackError<E> {
    /// The KV write failed under [`WritePolicy::Required`](crate::fallback::WritePolicy::Required); nothing was
    /// published.
    KvWrite(KvWriteError),
    /// The inner publish service failed; its error, unchanged.
    Publish(E),
}

impl<E> FallbackError<E> {
    /// The inner service's error, if that is what failed.
    pub fn into_publish_error(self) -> Option<E> {
        match self {
            Self::Publish(e) => Some(e),
            Self::KvWrite(_) => None,
        }
    }
}

impl<E: fmt::Display> fmt::Display for FallbackError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::KvWrite(e) => write!(f, "{e}; message not published (fallback required)"),
            Self::Publish(e) => e.fmt(f),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for FallbackError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::KvWrite(e) => Some(e),
            Self::Publish(e) => Some(e),
        }
    }
}

/// The trace carrier could not be written to the fallback bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvWriteError {
    bucket: String,
    key: String,
    message: String,
}

impl KvWriteError {
    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The encoded key.
    pub fn key(&self) -> &str {
        &self.key
    }
}

impl fmt::Display for KvWriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "writing the trace carrier to KV bucket {:?} under key {:?} failed: {}",
            self.bucket, self.key, self.message
        )
    }
}

impl std::error::Error for KvWriteError {}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::task::Waker;

    use super::*;

    /// A future that logs `name` when polled and is ready from poll
    /// `ready_at` on (1-based).
    fn step<T: Send + 'static>(
        log: &Arc<Mutex<Vec<&'static str>>>,
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
        Pin::new(future).poll(&mut TaskContext::from_waker(Waker::noop()))
    }

    fn send<T: Send>(_: &T) {}

    #[test]
    fn best_effort_sends_the_put_first_and_waits_for_both() {
        let log = Arc::new(Mutex::new(Vec::new()));
        // The publish is done at once, the put on its second poll.
        let mut future = KvFallbackFuture::concurrent(
            step(&log, "put", 2, Ok(())),
            step(&log, "publish", 1, Ok::<_, String>(7)),
        );
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
        let log = Arc::new(Mutex::new(Vec::new()));
        let failed = KvWriteError {
            bucket: "b".into(),
            key: "k".into(),
            message: "no stream".into(),
        };
        let mut future = KvFallbackFuture::concurrent(
            step(&log, "put", 1, Err(failed)),
            step(
                &log,
                "publish",
                2,
                Err::<u8, _>("publish failed".to_owned()),
            ),
        );
        assert!(poll_once(&mut future).is_pending());
        match poll_once(&mut future) {
            Poll::Ready(Err(FallbackError::Publish(e))) => assert_eq!(e, "publish failed"),
            other => panic!("expected the publish error, got {other:?}"),
        }
        assert_eq!(*log.lock().unwrap(), ["put", "publish", "publish"]);
    }

    #[test]
    fn a_failed_required_write_is_returned_once() {
        let error = KvWriteError {
            bucket: "b".into(),
            key: "k".into(),
            message: "no stream".into(),
        };
        let mut future = KvFallbackFuture::<BoxFuture<'static, Result<(), String>>>::failed(error);
        assert!(matches!(
            poll_once(&mut future),
            Poll::Ready(Err(FallbackError::KvWrite(e))) if e.key() == "k"
        ));
        assert!(poll_once(&mut future).is_pending());
    }
}
