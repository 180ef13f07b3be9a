use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::Instant;

use async_nats::HeaderMap;
use opentelemetry::trace::{SpanContext, TraceContextExt, TraceFlags};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};
use tower_service::Service;

use super::error::Error;
use super::future::{ResponseFuture, Write};
use super::layer::TracePropagationLayer;
use super::request::PublishMessage;
use crate::propagation::TRACEPARENT;
use crate::propagation::{find_header, HeaderInjector};
use crate::telemetry::captured_headers;
use crate::telemetry::{caller_context, tracing_caller_context, MessagingAttributes};
use crate::telemetry::{MessagingSpan, Operation, OperationType, Parent, SpanName, SpanTracer};
use opentelemetry_semantic_conventions::attribute as semconv;

/// The NATS header JetStream uses for de-duplication; recorded as the
/// message id.
const NATS_MSG_ID: &str = "Nats-Msg-Id";

/// A publish service wrapped by [`TracePropagationLayer`].
///
/// For each request it:
/// 1. picks the parent context: the request's explicit
///    [`parent_context`](PublishMessage::parent_context), else the current
///    `tracing` span's OpenTelemetry context, else
///    [`Context::current`](opentelemetry::Context::current);
/// 2. starts a PRODUCER span `publish {destination}` as its child, the
///    destination being the subject's template (see
///    [`TracePropagationLayer::subject_templates`]);
/// 3. injects the PRODUCER span's context into the headers — unless the
///    caller already set a `traceparent` (in any casing), which is kept;
/// 4. with [`TracePropagationLayer::fallback`], starts the KV write of the
///    injected carrier;
/// 5. calls the inner service and ends the span when the inner future (and
///    the KV write) completes, marking it as an error if it failed. The
///    inner service is called and polled inside the span only with
///    [`TracePropagationLayer::instrument_inner`].
///
/// With [`TracePropagationLayer::tracer`], step 1 takes the current
/// OpenTelemetry context before the `tracing` span's, the span is made with
/// the tracer, and the inner service is always called and polled outside
/// it.
///
/// # Examples
///
/// ```no_run
/// # #[cfg(feature = "jetstream")]
/// # mod example {
/// use nats_otel::{JetStreamPublisher, Publish, publish::TracePropagation, TracePropagationLayer};
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
    type Error = Error<S::Error>;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Error::Publish)
    }

    fn call(&mut self, mut request: R) -> Self::Future {
        let layer = &self.layer;
        if !layer.skip.is_empty() && layer.skip.matches(request.subject()) {
            layer.metrics.skipped("publish");
            return ResponseFuture::new(self.inner.call(request), MessagingSpan::None);
        }
        // The headers are taken out while the request's own context is read
        // (borrowed, not cloned: no reference count per message) and put
        // back once the trace headers are in.
        let mut headers = std::mem::take(request.headers_mut());
        let caller_set_traceparent = find_header(&headers, TRACEPARENT).is_some();
        let explicit = request.parent_context();
        let subject = request.subject();
        // The parent, read now when an unsampled one means no span: for a
        // `tracing` span, the one tracing-opentelemetry would choose. Held
        // by reference (a caller's context read here lives in `read`), so
        // the no-span path moves no context around.
        let mut read: Option<Context> = None;
        let parent: Option<&Context> = if !layer.spans_disabled && !layer.unsampled_spans {
            Some(match explicit {
                Some(explicit) => explicit,
                None => read.insert(match layer.tracer {
                    SpanTracer::Tracing => tracing_caller_context(),
                    _ => caller_context(),
                }),
            })
        } else {
            None
        };
        let unsampled = parent.and_then(unsampled_child);
        let spans = !layer.spans_disabled && unsampled.is_none();
        // The template names the span and goes on the metrics: resolved
        // only when one of them is due.
        let destination =
            (spans || layer.metrics.enabled()).then(|| layer.templates.resolve(subject));
        let measured = match &destination {
            Some(destination) if layer.metrics.enabled() => {
                let attributes = MessagingAttributes::new(
                    "publish",
                    "send",
                    subject,
                    destination.template.as_deref(),
                    destination.temporary,
                );
                Some((Instant::now(), attributes))
            }
            _ => None,
        };
        // The span, and the context to inject: a `tracing` span's own, or
        // the parent of a tracer span, whose context is injected over it;
        // under an unsampled parent, no span but its would-be context.
        let mut fallback: Option<Context> = None;
        let (mut span, cx): (MessagingSpan, &Context) = match destination.filter(|_| spans) {
            None => (
                MessagingSpan::None,
                match parent.or(explicit) {
                    Some(cx) => cx,
                    None => fallback.insert(caller_context()),
                },
            ),
            Some(destination) => {
                let operation = Operation {
                    kind: OperationType::Send,
                    name: "publish",
                    destination: Some(subject),
                    template: destination.template.as_deref(),
                    temporary: destination.temporary,
                    span_name: match &layer.span_name {
                        Some(f) => SpanName::Given(f(subject).into()),
                        None => SpanName::Joined("publish", destination.span_destination(subject)),
                    },
                };
                // A tracer span's parent was read above (a caller's context
                // read then is moved on, not cloned); a `tracing` span's is
                // tracing-opentelemetry's choice unless explicit.
                let parent = match (&layer.tracer, parent.is_some()) {
                    // tracing-opentelemetry chooses the same parent when
                    // none is given.
                    (SpanTracer::Tracing, true) => Parent::Caller(explicit.cloned()),
                    (_, false) => Parent::Caller(explicit.cloned()),
                    (_, true) => Parent::Caller(read.take().or_else(|| explicit.cloned())),
                };
                let payload_len = request.payload_len();
                let (span, cx) = operation.start_with(&layer.tracer, parent, || {
                    recorded_attributes(&headers, payload_len, layer)
                });
                (span, fallback.insert(cx))
            }
        };

        if caller_set_traceparent {
            layer.metrics.injected("kept_caller_context");
        } else {
            let (valid, skipped) = {
                let mut injector =
                    HeaderInjector::new(&mut headers).header_names(layer.header_names);
                let own = span.span_context().or(unsampled.as_ref());
                let valid = match own.filter(|sc| sc.is_valid()) {
                    Some(sc) => {
                        layer.propagator.inject_span(sc, cx, &mut injector);
                        true
                    }
                    // No span, or the tracer made an empty one (a provider
                    // that was shut down, suppressed telemetry): the
                    // caller's context goes on as it is.
                    None => {
                        layer.propagator.inject(cx, &mut injector);
                        cx.span().span_context().is_valid()
                    }
                };
                (valid, injector.into_skipped())
            };
            if valid {
                layer.metrics.injected("injected");
            } else {
                layer.metrics.injected("no_context");
                warn_invalid_context_once(&layer.warned_no_context, subject);
            }
            for skip in skipped {
                span.add_event(
                    "nats_otel.inject_skipped",
                    vec![KeyValue::new("reason", skip.to_string())],
                );
                span.warn(
                    Some(subject),
                    format_args!("trace header limited or not injected: {skip}"),
                );
            }
        }
        #[cfg(feature = "hops")]
        if let Some((hops, ratio)) = &layer.server_hops {
            let parent = cx.span();
            let producer = span.span_context().unwrap_or_else(|| parent.span_context());
            if within_ratio(producer, *ratio) {
                hops.apply(&mut headers, producer);
            }
        }
        // The contexts read for this message are not kept past it.
        drop((read, fallback));
        *request.headers_mut() = headers;

        #[cfg(feature = "kv")]
        let write = match &layer.fallback {
            Some(fallback) => {
                super::fallback::prepare(fallback, &layer.metrics, &request, &mut span)
            }
            None => Write::None,
        };
        #[cfg(not(feature = "kv"))]
        let write = Write::None;

        let instrument = layer.instrument_inner;
        let future = match span.tracing_span() {
            Some(span) if instrument => {
                let _entered = span.enter();
                self.inner.call(request)
            }
            _ => self.inner.call(request),
        };
        let measured = measured.map(|(start, attributes)| (&layer.metrics, start, attributes));
        ResponseFuture::with_all(future, span, instrument, write, measured)
    }
}

/// When `parent` is valid and not sampled, the span context a PRODUCER
/// span under it would have had: the same trace id and trace state, a new
/// span id, not sampled. `None` when a span is due.
fn unsampled_child(parent: &Context) -> Option<SpanContext> {
    let span = parent.span();
    let sc = span.span_context();
    if !sc.is_valid() || sc.is_sampled() {
        return None;
    }
    Some(SpanContext::new(
        sc.trace_id(),
        RandomIdGenerator::default().new_span_id(),
        TraceFlags::default(),
        false,
        sc.trace_state().clone(),
    ))
}

/// The PRODUCER span's attributes that are set only on a recorded span: the
/// body size, the message id (`Nats-Msg-Id`) and the captured headers,
/// read from the request's `headers` before the trace headers go in.
fn recorded_attributes(
    headers: &HeaderMap,
    payload_len: usize,
    layer: &TracePropagationLayer,
) -> Vec<KeyValue> {
    let mut attributes = Vec::with_capacity(2 + layer.capture_headers.len());
    attributes.push(KeyValue::new(
        semconv::MESSAGING_MESSAGE_BODY_SIZE,
        payload_len as i64,
    ));
    if let Some((_, id)) = find_header(headers, NATS_MSG_ID) {
        attributes.push(KeyValue::new(semconv::MESSAGING_MESSAGE_ID, id.to_owned()));
    }
    attributes.extend(captured_headers(Some(headers), &layer.capture_headers));
    attributes
}

/// Whether the trace falls within `ratio` of all traces, decided by its id
/// as OpenTelemetry's ratio sampler does, so every publisher of a trace
/// decides alike.
#[cfg(feature = "hops")]
fn within_ratio(span_context: &opentelemetry::trace::SpanContext, ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    let bytes = span_context.trace_id().to_bytes();
    let mut low = [0; 8];
    low.copy_from_slice(&bytes[8..]);
    let threshold = (ratio.max(0.0) * (1u64 << 63) as f64) as u64;
    (u64::from_be_bytes(low) >> 1) < threshold
}

/// Once per layer (its clones and services share the flag).
fn warn_invalid_context_once(warned: &AtomicBool, subject: &str) {
    // A plain load first: after the first time, no write per message.
    if !warned.load(Ordering::Relaxed) && !warned.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            target: "nats_otel",
            subject,
            "publishing without a valid trace context, so no traceparent is sent: is an \
             OpenTelemetry layer (tracing_opentelemetry::layer()) installed in the tracing \
             subscriber, and is the publish made inside a span? (reported once)"
        );
    }
}

#[cfg(all(test, feature = "hops"))]
mod tests {
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

    use super::within_ratio;

    fn with_trace(id: u128) -> SpanContext {
        SpanContext::new(
            TraceId::from(id),
            SpanId::from(1),
            TraceFlags::SAMPLED,
            false,
            TraceState::NONE,
        )
    }

    #[test]
    fn ratio_decides_by_trace_id() {
        let ids: Vec<u128> = (1..=2000u128)
            .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835))
            .collect();
        let share = |ratio: f64| {
            ids.iter()
                .filter(|id| within_ratio(&with_trace(**id), ratio))
                .count()
        };
        assert_eq!(share(0.0), 0);
        assert_eq!(share(1.0), ids.len());
        let half = share(0.5);
        assert!((800..1200).contains(&half), "{half} of 2000 at 0.5");
        // The same trace, the same decision.
        assert_eq!(
            within_ratio(&with_trace(ids[7]), 0.3),
            within_ratio(&with_trace(ids[7]), 0.3)
        );
    }
}
