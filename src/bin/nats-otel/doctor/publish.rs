//! Publishing the probe through the propagation layer (and the KV fallback
//! when configured), recording the headers the layer injected.

use std::future::poll_fn;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};

use async_nats::HeaderMap;
use nats_otel::publish::PublishMessage as _;
use nats_otel::{KvFallback, Publish, TracePropagationLayer};
use tower::{Layer, Service};

/// Records the headers each request carries when it reaches the leaf
/// service, i.e. what the layer injected.
#[derive(Clone)]
struct Capture<S> {
    inner: S,
    seen: Arc<Mutex<Option<HeaderMap>>>,
}

impl<S: Service<Publish>> Service<Publish> for Capture<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Publish) -> Self::Future {
        *self.seen.lock().expect("capture lock") = request.header_map().cloned();
        self.inner.call(request)
    }
}

/// What a leaf service's response says about where the probe went.
pub(super) trait Outcome {
    fn describe(&self, subject: &str) -> (String, Option<u64>);
}

impl Outcome for () {
    fn describe(&self, subject: &str) -> (String, Option<u64>) {
        (format!("core publish to {subject}"), None)
    }
}

impl Outcome for async_nats::jetstream::publish::PublishAck {
    fn describe(&self, subject: &str) -> (String, Option<u64>) {
        (
            format!(
                "JetStream publish to {subject}: stored in stream {} as sequence {}",
                self.stream, self.sequence
            ),
            Some(self.sequence),
        )
    }
}

/// Publishes `request` through the layer (and the KV fallback when given)
/// over `leaf`; returns the injected headers and the outcome.
pub(super) async fn publish_through<S>(
    leaf: S,
    fallback: Option<KvFallback>,
    request: Publish,
) -> (Option<HeaderMap>, Result<(String, Option<u64>), String>)
where
    S: Service<Publish> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Display,
    S::Response: Outcome,
{
    let subject = request.subject().to_string();
    let seen = Arc::new(Mutex::new(None));
    let capture = Capture {
        inner: leaf,
        seen: seen.clone(),
    };
    let result = match fallback {
        Some(fallback) => {
            let mut service = TracePropagationLayer::new()
                .fallback(fallback)
                .layer(capture);
            call(&mut service, request).await
        }
        None => {
            let mut service = TracePropagationLayer::new().layer(capture);
            call(&mut service, request).await
        }
    };
    let headers = seen.lock().expect("capture lock").take();
    (headers, result.map(|r| r.describe(&subject)))
}

async fn call<S>(service: &mut S, request: Publish) -> Result<S::Response, String>
where
    S: Service<Publish>,
    S::Error: std::fmt::Display,
{
    poll_fn(|cx| service.poll_ready(cx))
        .await
        .map_err(|e| e.to_string())?;
    service.call(request).await.map_err(|e| e.to_string())
}
