//! What the layer and the consumer adapter cost per message, without a
//! server: the layer in front of a service that does nothing, and the
//! extractor on an in-memory message, each next to the hand-written way.
//!
//! ```text
//! cargo bench --bench per_message
//! ```
//!
//! Groups:
//! - `publish`: one call of the layer (headers built and injected, span
//!   started and ended) in each span set-up; `hand_written` builds the
//!   headers with the SDK propagator and makes no span.
//! - `consume`: one message through `ContextExtractor::extract` (context
//!   extracted, `process` span started and ended); `hand_written_*` extract
//!   with the SDK propagator and start the same span by hand.
//!
//! "unsampled" is a provider with `Sampler::AlwaysOff`; "sampled" is
//! `AlwaysOn` with a batch processor and an exporter that drops everything.

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::hint::black_box;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use async_nats::HeaderMap;
use criterion::{criterion_group, criterion_main, Criterion};
use futures::FutureExt;
use nats_otel::{ContextExtractor, MessageMeta, Publish, TracePropagationLayer};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{
    SpanBuilder, SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, SpanData, SpanExporter,
};
use tower::{Layer, Service};
use tracing::Dispatch;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

#[derive(Debug)]
struct NoopExporter;

impl SpanExporter for NoopExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        drop(batch);
        Ok(())
    }
}

fn provider(sampled: bool) -> SdkTracerProvider {
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

fn dispatch(provider: &SdkTracerProvider) -> Dispatch {
    Dispatch::new(
        tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("bench")))
            .with(tracing_subscriber::filter::LevelFilter::INFO),
    )
}

/// A publish service that does nothing: what is left is the layer.
#[derive(Clone)]
struct Discard;

impl Service<Publish> for Discard {
    type Response = usize;
    type Error = Infallible;
    type Future = Ready<Result<usize, Infallible>>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, publish: Publish) -> Self::Future {
        ready(Ok(publish.header_map().map_or(0, |h| h.iter().count())))
    }
}

struct PlainInjector<'a>(&'a mut HeaderMap);

impl Injector for PlainInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

struct PlainExtractor<'a>(&'a HeaderMap);

impl Extractor for PlainExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_ref()).collect()
    }
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

fn publish(c: &mut Criterion) {
    let (unsampled, sampled) = (provider(false), provider(true));
    let mut g = c.benchmark_group("publish");
    let call = |layer: TracePropagationLayer, d: Dispatch| {
        let mut svc = layer.layer(Discard);
        move || {
            tracing::dispatcher::with_default(&d, || {
                let publish = Publish::new("bench.core", "payload");
                black_box(svc.call(publish).now_or_never())
            })
        }
    };
    let mut f = call(TracePropagationLayer::new(), dispatch(&unsampled));
    g.bench_function("tracing_span_unsampled", |b| b.iter(&mut f));
    let mut f = call(TracePropagationLayer::new(), dispatch(&sampled));
    g.bench_function("tracing_span_sampled", |b| b.iter(&mut f));
    let mut f = call(
        TracePropagationLayer::new().tracer(unsampled.tracer("nats-otel")),
        dispatch(&unsampled),
    );
    g.bench_function("tracer_unsampled", |b| b.iter(&mut f));
    let mut f = call(
        TracePropagationLayer::new().tracer(sampled.tracer("nats-otel")),
        dispatch(&sampled),
    );
    g.bench_function("tracer_sampled", |b| b.iter(&mut f));
    let mut f = call(
        TracePropagationLayer::new().producer_spans(false),
        dispatch(&unsampled),
    );
    g.bench_function("no_span", |b| b.iter(&mut f));
    let sdk = TraceContextPropagator::new();
    let cx = Context::new().with_remote_span_context(SpanContext::new(
        TraceId::from(0x0af7651916cd43dd8448eb211c80319c),
        SpanId::from(0xb7ad6b7169203331),
        TraceFlags::SAMPLED,
        false,
        TraceState::NONE,
    ));
    g.bench_function("hand_written_no_span", |b| {
        b.iter(|| {
            let mut headers = HeaderMap::new();
            sdk.inject_context(&cx, &mut PlainInjector(&mut headers));
            black_box(headers)
        })
    });
    g.finish();
}

fn message() -> async_nats::Message {
    let mut headers = HeaderMap::new();
    headers.insert("traceparent", TRACEPARENT);
    async_nats::Message {
        subject: "bench.consume".into(),
        reply: None,
        payload: vec![b'x'; 128].into(),
        headers: Some(headers),
        status: None,
        description: None,
        length: 0,
    }
}

/// The hand-written CONSUMER span with a tracer.
fn tracer_span(tracer: &SdkTracer, message: &async_nats::Message, parent: Context) -> Context {
    let span = tracer.build_with_context(
        SpanBuilder::from_name(format!("process {}", message.subject))
            .with_kind(SpanKind::Consumer)
            .with_attributes([
                KeyValue::new("messaging.system", "nats"),
                KeyValue::new("messaging.destination.name", message.subject.to_string()),
            ]),
        &parent,
    );
    parent.with_span(span)
}

fn consume(c: &mut Criterion) {
    let (unsampled, sampled) = (provider(false), provider(true));
    let message = message();
    let meta = MessageMeta::of(&message);
    let sdk = TraceContextPropagator::new();
    let mut g = c.benchmark_group("consume");
    for (name, provider) in [("unsampled", &unsampled), ("sampled", &sampled)] {
        let d = dispatch(provider);
        let extractor = ContextExtractor::new();
        g.bench_function(format!("tracing_span_{name}"), |b| {
            b.iter(|| tracing::dispatcher::with_default(&d, || black_box(extractor.extract(&meta))))
        });
        let extractor = ContextExtractor::new().tracer(provider.tracer("nats-otel"));
        g.bench_function(format!("tracer_{name}"), |b| {
            b.iter(|| tracing::dispatcher::with_default(&d, || black_box(extractor.extract(&meta))))
        });
        g.bench_function(format!("hand_written_tracing_span_{name}"), |b| {
            b.iter(|| {
                tracing::dispatcher::with_default(&d, || {
                    let remote = sdk.extract(&PlainExtractor(message.headers.as_ref().unwrap()));
                    let span = tracing::info_span!(
                        "process",
                        otel.name = format!("process {}", message.subject),
                        otel.kind = "consumer",
                        messaging.system = "nats",
                        messaging.destination.name = message.subject.as_str(),
                    );
                    let _ = span.set_parent(remote);
                    black_box(span.context())
                })
            })
        });
        let tracer = provider.tracer("hand-written");
        g.bench_function(format!("hand_written_tracer_{name}"), |b| {
            b.iter(|| {
                let remote = sdk.extract(&PlainExtractor(message.headers.as_ref().unwrap()));
                black_box(tracer_span(&tracer, &message, remote))
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = publish, consume
}
criterion_main!(benches);
