//! What the benchmarks share: the hand-written carriers (the way an
//! application would use the SDK's propagators without this crate) and the
//! SDK set-ups for "unsampled" and "sampled".
#![allow(dead_code)]

use async_nats::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanBuilder, SpanKind, TraceContextExt, Tracer, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, SpanData, SpanExporter,
};
use tracing::Dispatch;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

/// The hand-written injector: `HeaderMap::insert` with the SDK's strings.
pub struct PlainInjector<'a>(pub &'a mut HeaderMap);

impl Injector for PlainInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value);
    }
}

/// The hand-written extractor: exact-match `HeaderMap::get`.
pub struct PlainExtractor<'a>(pub Option<&'a HeaderMap>);

impl Extractor for PlainExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0?.get(key).map(|v| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .map(|h| h.iter().map(|(k, _)| k.as_ref()).collect())
            .unwrap_or_default()
    }
}

/// Drops every span.
#[derive(Debug)]
pub struct NoopExporter;

impl SpanExporter for NoopExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        drop(batch);
        Ok(())
    }
}

/// Unsampled: `Sampler::AlwaysOff`. Sampled: `AlwaysOn` into a batch
/// processor with an exporter that drops everything.
pub fn provider(sampled: bool) -> SdkTracerProvider {
    if sampled {
        SdkTracerProvider::builder()
            .with_sampler(Sampler::AlwaysOn)
            .with_span_processor(BatchSpanProcessor::builder(NoopExporter).build())
            .build()
    } else {
        SdkTracerProvider::builder()
            .with_sampler(Sampler::AlwaysOff)
            .build()
    }
}

/// A `tracing` dispatch whose OpenTelemetry layer exports through `provider`.
pub fn dispatch(provider: &SdkTracerProvider) -> Dispatch {
    Dispatch::new(
        tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("bench")))
            .with(tracing_subscriber::filter::LevelFilter::INFO),
    )
}

/// What a hand-written consumer links its span to: nothing, or the
/// creation context (the producer's span), as the messaging conventions
/// require of a `process` span and as the adapter does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Linked {
    /// No link: the four required attributes and the parent only.
    None,
    /// A link to the creation context, which is also the parent.
    Creation,
}

/// The hand-written consumer side with a `tracing` span: extract with the
/// SDK, start a CONSUMER span with the attributes the messaging conventions
/// require (the ones the adapter gives every span), make the remote context
/// its parent, link it to that context when `link` says so, and take the
/// span's OpenTelemetry context — what the adapter yields, and what a
/// handler needs for its own spans to be children (it starts the
/// OpenTelemetry span, which otherwise waits until the span closes).
pub fn hand_written_tracing_span(
    propagator: &TraceContextPropagator,
    message: &async_nats::Message,
    link: Linked,
) -> (tracing::Span, Context) {
    let remote = propagator.extract(&PlainExtractor(message.headers.as_ref()));
    let span = tracing::info_span!(
        "process",
        otel.name = format!("process {}", message.subject),
        otel.kind = "consumer",
        messaging.system = "nats",
        messaging.destination.name = message.subject.as_str(),
        messaging.operation.type = "process",
        messaging.operation.name = "process",
    );
    if link == Linked::Creation {
        span.add_link(remote.span().span_context().clone());
    }
    let _ = span.set_parent(remote);
    let cx = span.context();
    (span, cx)
}

/// The hand-written consumer side with a span from `tracer`: extract with
/// the SDK, start a CONSUMER span (the same required attributes, and the
/// link when `link` says so) under the remote context; returns the context
/// a handler would run in.
pub fn hand_written_tracer_span(
    propagator: &TraceContextPropagator,
    tracer: &SdkTracer,
    message: &async_nats::Message,
    link: Linked,
) -> Context {
    let remote = propagator.extract(&PlainExtractor(message.headers.as_ref()));
    let mut builder = SpanBuilder::from_name(format!("process {}", message.subject))
        .with_kind(SpanKind::Consumer)
        .with_attributes([
            KeyValue::new("messaging.system", "nats"),
            KeyValue::new("messaging.destination.name", message.subject.to_string()),
            KeyValue::new("messaging.operation.type", "process"),
            KeyValue::new("messaging.operation.name", "process"),
        ]);
    if link == Linked::Creation {
        builder = builder.with_links(vec![opentelemetry::trace::Link::with_context(
            remote.span().span_context().clone(),
        )]);
    }
    let span = tracer.build_with_context(builder, &remote);
    remote.with_span(span)
}
