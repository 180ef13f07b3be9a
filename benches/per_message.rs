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
//!   started and ended) in each span set-up; `*_unsampled_parent` publish
//!   under a parent context that was not sampled (no span is made);
//!   `hand_written` builds the headers with the SDK propagator and makes no
//!   span.
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
use nats_otel::{consume::ContextExtractor, consume::MessageMeta, Publish, TracePropagationLayer};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tower::{Layer, Service};
use tracing::Dispatch;

#[path = "support/sdk.rs"]
mod sdk;

use sdk::{
    dispatch, hand_written_tracer_span, hand_written_tracing_span, provider, Linked, PlainInjector,
};

const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

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

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

fn publish(c: &mut Criterion) {
    let (unsampled, sampled) = (provider(false), provider(true));
    let mut g = c.benchmark_group("publish");
    // A request handler's context that was not sampled (1-10 % sampling:
    // most messages).
    let unsampled_parent = Context::new().with_remote_span_context(SpanContext::new(
        TraceId::from(0x0af7651916cd43dd8448eb211c80319c),
        SpanId::from(0xb7ad6b7169203331),
        TraceFlags::default(),
        false,
        TraceState::NONE,
    ));
    let call_in = |layer: TracePropagationLayer, d: Dispatch, parent: Option<Context>| {
        let mut svc = layer.layer(Discard);
        move || {
            tracing::dispatcher::with_default(&d, || {
                let mut publish = Publish::new("bench.core", "payload");
                if let Some(parent) = &parent {
                    publish = publish.context(parent.clone());
                }
                black_box(svc.call(publish).now_or_never())
            })
        }
    };
    let call = |layer, d| call_in(layer, d, None);
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
    let mut f = call_in(
        TracePropagationLayer::new(),
        dispatch(&unsampled),
        Some(unsampled_parent.clone()),
    );
    g.bench_function("tracing_span_unsampled_parent", |b| b.iter(&mut f));
    let mut f = call_in(
        TracePropagationLayer::new().tracer(unsampled.tracer("nats-otel")),
        dispatch(&unsampled),
        Some(unsampled_parent.clone()),
    );
    g.bench_function("tracer_unsampled_parent", |b| b.iter(&mut f));
    let mut f = call_in(
        TracePropagationLayer::new().producer_spans(false),
        dispatch(&unsampled),
        Some(unsampled_parent.clone()),
    );
    g.bench_function("no_span_parent", |b| b.iter(&mut f));
    // What the throughput benchmark's raw column does per message: the
    // same header block, cloned.
    let mut prebuilt = HeaderMap::new();
    prebuilt.insert("traceparent", TRACEPARENT);
    prebuilt.insert("Traceparent", TRACEPARENT);
    let mut discard = Discard;
    g.bench_function("raw_cloned_headers", |b| {
        b.iter(|| {
            let publish = Publish::new("bench.core", "payload").with_headers(prebuilt.clone());
            black_box(discard.call(publish).now_or_never())
        })
    });
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
        // The hand-written equivalent: the same required attributes, the
        // remote parent, and the link to it the conventions require.
        for (suffix, link) in [("", Linked::Creation), ("_no_link", Linked::None)] {
            g.bench_function(format!("hand_written_tracing_span{suffix}_{name}"), |b| {
                b.iter(|| {
                    tracing::dispatcher::with_default(&d, || {
                        black_box(hand_written_tracing_span(&sdk, &message, link))
                    })
                })
            });
            let tracer = provider.tracer("hand-written");
            g.bench_function(format!("hand_written_tracer{suffix}_{name}"), |b| {
                b.iter(|| black_box(hand_written_tracer_span(&sdk, &tracer, &message, link)))
            });
        }
        if name == "unsampled" {
            // The stream adapter over an in-memory stream against the
            // hand-written equivalent, a message cloned per item on both
            // sides: what the adapter adds to the extractor.
            use futures::StreamExt;
            use nats_otel::TraceContextStreamExt;
            let m = message.clone();
            let mut stream = futures::stream::repeat_with(move || m.clone()).with_trace_context();
            g.bench_function(format!("adapter_tracing_span_{name}"), |b| {
                b.iter(|| {
                    tracing::dispatcher::with_default(&d, || {
                        black_box(stream.next().now_or_never())
                    })
                })
            });
            g.bench_function(format!("hand_written_cloned_tracing_span_{name}"), |b| {
                b.iter(|| {
                    tracing::dispatcher::with_default(&d, || {
                        let m = message.clone();
                        let out = hand_written_tracing_span(&sdk, &m, Linked::Creation);
                        black_box((m, out))
                    })
                })
            });
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = publish, consume
}
criterion_main!(benches);
