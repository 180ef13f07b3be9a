use std::fmt;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use bytes::Bytes;
use futures::future::BoxFuture;
use opentelemetry::KeyValue;
use tower_layer::Layer;
use tower_service::Service;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::key::KeyInput;
use super::record::encode;
use super::{KvFallback, WriteFailure};
use crate::carrier::find_header;
use crate::publish::PublishMessage;
use crate::trace_carrier::TraceCarrier;
use crate::w3c::{BAGGAGE, TRACEPARENT, TRACESTATE};
use std::sync::atomic::Ordering;

/// A [`Layer`] that writes each message's trace carrier to the fallback KV
/// bucket before the message is sent.
///
/// Usually added through
/// [`TracePropagationLayer::fallback`](crate::TracePropagationLayer::fallback),
/// which puts it *inside* the propagation layer, so it sees the injected
/// headers and runs inside the PRODUCER span.
///
/// # Examples
///
/// ```no_run
/// use nats_otel::{FallbackKey, JetStreamPublisher, KvFallback, Publish, TracePropagationLayer};
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
/// found in the request headers to KV, then calls the inner service.
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
    type Future = BoxFuture<'static, Result<S::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(FallbackError::Publish)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let carrier = carrier_of(&request);
        let key = self.fallback.key.derive(&KeyInput::new(
            request.subject(),
            request.headers(),
            request.payload(),
        ));
        // The ready service is the one to call; leave a fresh clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let fallback = Arc::clone(&self.fallback);
        let span = Span::current();
        Box::pin(async move {
            match key {
                Err(error) => {
                    // Not a failure (the message may simply have no key), but
                    // never silent: consumers cannot recover this one.
                    span.add_event(
                        "nats_otel.fallback_skipped",
                        vec![KeyValue::new("reason", error.to_string())],
                    );
                    tracing::warn!(
                        target: "nats_otel",
                        parent: &span,
                        "{error}; no KV fallback record written for this message"
                    );
                }
                Ok(key) if carrier.traceparent.is_some() => {
                    let written = fallback
                        .store
                        .put(&key, Bytes::from(encode(&carrier)))
                        .await;
                    match written {
                        Ok(_) => {
                            fallback.stats.writes.fetch_add(1, Ordering::Relaxed);
                            fallback.metrics.kv("write", true);
                        }
                        Err(error) => {
                            fallback
                                .stats
                                .write_failures
                                .fetch_add(1, Ordering::Relaxed);
                            fallback.metrics.kv("write", false);
                            let error = KvWriteError {
                                bucket: fallback.store.name.clone(),
                                key,
                                message: error.to_string(),
                            };
                            if fallback.on_write_failure == WriteFailure::Required {
                                return Err(FallbackError::KvWrite(error));
                            }
                            span.add_event(
                                "nats_otel.fallback_write_failed",
                                vec![KeyValue::new("error", error.to_string())],
                            );
                            tracing::warn!(
                                target: "nats_otel",
                                parent: &span,
                                "{error}; publishing anyway (best effort)"
                            );
                        }
                    }
                }
                // Nothing to recover later: no trace context was injected.
                Ok(_) => {}
            }
            inner.call(request).await.map_err(FallbackError::Publish)
        })
    }
}

fn carrier_of<R: PublishMessage>(request: &R) -> TraceCarrier {
    let field = |name| {
        request
            .headers()
            .and_then(|h| find_header(h, name))
            .map(|(_, v)| v.to_owned())
    };
    TraceCarrier {
        traceparent: field(TRACEPARENT),
        tracestate: field(TRACESTATE).filter(|s| !s.is_empty()),
        baggage: field(BAGGAGE),
    }
}

/// The error of a publish service with the KV fallback.
#[derive(Debug)]
pub enum FallbackError<E> {
    /// The KV write failed under [`WriteFailure::Required`]; nothing was
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
