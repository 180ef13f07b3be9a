use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context as TaskContext, Poll};

use opentelemetry::trace::TraceContextExt;
use opentelemetry::{Context, KeyValue};
use tower_service::Service;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::future::ResponseFuture;
use super::layer::TracePropagationLayer;
use super::request::PublishMessage;
use crate::carrier::{find_header, HeaderInjector};
use crate::consume::span::capture_headers;
use crate::w3c::TRACEPARENT;
use opentelemetry_semantic_conventions::attribute as semconv;

/// The NATS header JetStream uses for de-duplication; recorded as the
/// message id.
const NATS_MSG_ID: &str = "Nats-Msg-Id";

/// A publish service wrapped by [`TracePropagationLayer`].
///
/// For each request it:
/// 1. picks the parent context: the request's explicit
///    [`parent_context`](PublishMessage::parent_context), else the current
///    `tracing` span's OpenTelemetry context, else [`Context::current`];
/// 2. starts a PRODUCER span `publish {subject}` as its child;
/// 3. injects the PRODUCER span's context into the headers — unless the
///    caller already set a `traceparent` (in any casing), which is kept;
/// 4. calls the inner service inside the span and ends the span when the
///    inner future completes, marking it as an error if it failed.
///
/// # Examples
///
/// ```no_run
/// # #[cfg(feature = "jetstream")]
/// # mod example {
/// use nats_otel::{JetStreamPublisher, Publish, TracePropagation, TracePropagationLayer};
/// use tower::{Layer, Service, ServiceExt};
///
/// # pub async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let client = async_nats::connect("nats://127.0.0.1:4222").await?;
/// let jetstream = async_nats::jetstream::new(client);
/// let mut publisher: TracePropagation<JetStreamPublisher> =
///     TracePropagationLayer::new().layer(JetStreamPublisher::new(jetstream));
///
/// let ack = publisher
///     .ready()
///     .await?
///     .call(Publish::new("jobs.resize", "{\"id\":7}"))
///     .await?;
/// println!("stored as sequence {}", ack.sequence);
/// # Ok(())
/// # }
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct TracePropagation<S> {
    inner: S,
    layer: TracePropagationLayer,
}

impl<S> TracePropagation<S> {
    /// Wraps `inner` with the layer's configuration.
    pub fn new(inner: S, layer: TracePropagationLayer) -> Self {
        Self { inner, layer }
    }

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

impl<S, R> Service<R> for TracePropagation<S>
where
    S: Service<R>,
    S::Error: std::fmt::Display,
    R: PublishMessage,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: R) -> Self::Future {
        let layer = &self.layer;
        if !layer.skip.is_empty() && layer.skip.matches(request.subject()) {
            layer.metrics.skipped("publish");
            return ResponseFuture::new(self.inner.call(request), Span::none());
        }
        let span = if layer.spans_disabled {
            Span::none()
        } else {
            producer_span(&request, layer)
        };
        let explicit = request.parent_context().cloned();
        if let Some(parent) = &explicit {
            // Without an OpenTelemetry layer this fails; the explicit context
            // is then injected directly below.
            let _ = span.set_parent(parent.clone());
        }

        let caller_set_traceparent = request
            .headers()
            .is_some_and(|h| find_header(h, TRACEPARENT).is_some());
        if caller_set_traceparent {
            layer.metrics.injected("kept_caller_context");
        } else {
            let cx = context_to_inject(&span, explicit);
            if cx.span().span_context().is_valid() {
                layer.metrics.injected("injected");
            } else {
                layer.metrics.injected("no_context");
                warn_invalid_context_once(request.subject());
            }
            let skipped = {
                let mut injector = HeaderInjector::new(request.headers_mut());
                self.layer.propagator.inject(&cx, &mut injector);
                injector.into_skipped()
            };
            for skip in skipped {
                span.add_event(
                    "nats_otel.inject_skipped",
                    vec![KeyValue::new("reason", skip.to_string())],
                );
                tracing::warn!(
                    target: "nats_otel",
                    parent: &span,
                    subject = request.subject(),
                    "trace header limited or not injected: {skip}"
                );
            }
        }

        let future = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        ResponseFuture::new(future, span)
    }
}

fn producer_span<R: PublishMessage>(request: &R, layer: &TracePropagationLayer) -> Span {
    let subject = request.subject();
    let name = match &layer.span_name {
        Some(f) => f(subject),
        None => format!("publish {subject}"),
    };
    let span = tracing::info_span!(
        target: "nats_otel",
        "publish",
        otel.name = name,
        otel.kind = "producer",
    );
    span.set_attribute(semconv::MESSAGING_SYSTEM, "nats");
    span.set_attribute(semconv::MESSAGING_DESTINATION_NAME, subject.to_owned());
    span.set_attribute(semconv::MESSAGING_OPERATION_TYPE, "send");
    span.set_attribute(semconv::MESSAGING_OPERATION_NAME, "publish");
    span.set_attribute(
        semconv::MESSAGING_MESSAGE_BODY_SIZE,
        request.payload_len() as i64,
    );
    if let Some((_, id)) = request.headers().and_then(|h| find_header(h, NATS_MSG_ID)) {
        span.set_attribute(semconv::MESSAGING_MESSAGE_ID, id.to_owned());
    }
    capture_headers(&span, request.headers(), &layer.capture_headers);
    span
}

/// The PRODUCER span's context when the OpenTelemetry layer made it valid;
/// otherwise the explicit, current-span or current OpenTelemetry context, so
/// that propagation works even without a `tracing` OpenTelemetry layer.
fn context_to_inject(span: &Span, explicit: Option<Context>) -> Context {
    let cx = span.context();
    if cx.span().span_context().is_valid() {
        return cx;
    }
    if let Some(explicit) = explicit {
        return explicit;
    }
    let current = Span::current().context();
    if current.span().span_context().is_valid() {
        current
    } else {
        Context::current()
    }
}

fn warn_invalid_context_once(subject: &str) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            target: "nats_otel",
            subject,
            "publishing without a valid trace context, so no traceparent is sent: is an \
             OpenTelemetry layer (tracing_opentelemetry::layer()) installed in the tracing \
             subscriber, and is the publish made inside a span? (reported once)"
        );
    }
}
