//! Micro-benchmarks: this crate's W3C fast path next to the hand-written SDK
//! path (`TraceContextPropagator` through a plain exact-match `HeaderMap`
//! carrier), measured in the same run.
//!
//! ```text
//! cargo bench --bench propagation
//! ```
//!
//! Groups (each pairs `nats_otel` with `sdk`):
//! - `inject`: into a fresh `HeaderMap` (the map is dropped in the loop, for both);
//! - `extract_lowercase`: from `traceparent` (what Java, Rust and this crate write);
//! - `extract_go_cased`: from `Traceparent` (what Go's `HeaderCarrier` writes); the SDK
//!   carrier tries the exact name, then Go's casing;
//! - `inject_full` / `extract_full`: with `tracestate` and two baggage members (the SDK side
//!   runs `TraceContextPropagator` + `BaggagePropagator`).
//!
//! After a `cargo bench` run it prints the medians and ratios from Criterion's estimates.

use std::hint::black_box;
use std::time::Duration;

use async_nats::HeaderMap;
use criterion::{criterion_group, Criterion};
use nats_otel::{propagation::HeaderExtractor, propagation::HeaderInjector};
use opentelemetry::baggage::BaggageExt;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};

#[path = "support/sdk.rs"]
mod sdk;

use sdk::{PlainExtractor, PlainInjector};

const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// The hand-written extractor for Go peers: exact name, then Go's casing.
struct GoAwareExtractor<'a>(&'a HeaderMap);

impl Extractor for GoAwareExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        let go = match key {
            "traceparent" => "Traceparent",
            "tracestate" => "Tracestate",
            "baggage" => "Baggage",
            other => other,
        };
        self.0
            .get(key)
            .or_else(|| self.0.get(go))
            .map(|v| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_ref()).collect()
    }
}

fn span_context(trace_state: TraceState) -> SpanContext {
    SpanContext::new(
        TraceId::from(0x0af7651916cd43dd8448eb211c80319c),
        SpanId::from(0xb7ad6b7169203331),
        TraceFlags::SAMPLED,
        false,
        trace_state,
    )
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
}

fn inject(c: &mut Criterion) {
    let cx = Context::new().with_remote_span_context(span_context(TraceState::NONE));
    let sdk = TraceContextPropagator::new();
    let mut group = c.benchmark_group("inject");
    group.bench_function("nats_otel", |b| {
        b.iter(|| {
            let mut headers = HeaderMap::new();
            HeaderInjector::new(&mut headers).inject_context(black_box(&cx));
            headers
        })
    });
    group.bench_function("sdk", |b| {
        b.iter(|| {
            let mut headers = HeaderMap::new();
            sdk.inject_context(black_box(&cx), &mut PlainInjector(&mut headers));
            headers
        })
    });
    group.finish();

    let trace_state =
        TraceState::from_key_value([("congo", "t61rcWkgMzE"), ("rojo", "00f067aa0ba902b7")])
            .expect("valid trace state");
    let cx = Context::new()
        .with_remote_span_context(span_context(trace_state))
        .with_baggage([
            KeyValue::new("user", "é-42"),
            KeyValue::new("tenant", "acme"),
        ]);
    let baggage = BaggagePropagator::new();
    let mut group = c.benchmark_group("inject_full");
    group.bench_function("nats_otel", |b| {
        b.iter(|| {
            let mut headers = HeaderMap::new();
            HeaderInjector::new(&mut headers).inject_context(black_box(&cx));
            headers
        })
    });
    group.bench_function("sdk", |b| {
        b.iter(|| {
            let mut headers = HeaderMap::new();
            let mut injector = PlainInjector(&mut headers);
            sdk.inject_context(black_box(&cx), &mut injector);
            baggage.inject_context(black_box(&cx), &mut injector);
            headers
        })
    });
    group.finish();
}

fn headers(name: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(name, TRACEPARENT);
    headers.insert("Nats-Msg-Id", "job-7");
    headers
}

fn extract(c: &mut Criterion) {
    let sdk = TraceContextPropagator::new();
    for (group, name) in [
        ("extract_lowercase", "traceparent"),
        ("extract_go_cased", "Traceparent"),
    ] {
        let headers = headers(name);
        // Both sides must find the context, or the comparison is meaningless.
        let (ours, _) = HeaderExtractor::new(&headers).extract_context();
        let theirs = sdk.extract(&GoAwareExtractor(&headers));
        assert!(ours.span().span_context().is_valid());
        assert_eq!(
            ours.span().span_context(),
            theirs.span().span_context(),
            "{group}"
        );

        let mut g = c.benchmark_group(group);
        g.bench_function("nats_otel", |b| {
            b.iter(|| HeaderExtractor::new(black_box(&headers)).extract_context())
        });
        if name == "traceparent" {
            g.bench_function("sdk", |b| {
                b.iter(|| sdk.extract(&PlainExtractor(Some(black_box(&headers)))))
            });
        } else {
            g.bench_function("sdk", |b| {
                b.iter(|| sdk.extract(&GoAwareExtractor(black_box(&headers))))
            });
        }
        g.finish();
    }

    let mut headers = headers("traceparent");
    headers.insert("tracestate", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7");
    headers.insert("baggage", "user=%C3%A9-42,tenant=acme");
    let baggage = BaggagePropagator::new();
    // The same context on both sides: span context (trace state included)
    // and every baggage entry with its metadata.
    let (ours, _) = HeaderExtractor::new(&headers).extract_context();
    let carrier = PlainExtractor(Some(&headers));
    let theirs = baggage.extract_with_context(&sdk.extract(&carrier), &carrier);
    assert_eq!(ours.span().span_context(), theirs.span().span_context());
    assert_eq!(ours.span().span_context().trace_state().header().len(), 39);
    let entries = |cx: &Context| {
        let mut entries: Vec<_> = cx
            .baggage()
            .iter()
            .map(|(k, (v, m))| (k.to_string(), v.to_string(), m.as_str().to_owned()))
            .collect();
        entries.sort();
        entries
    };
    assert_eq!(entries(&ours), entries(&theirs));
    assert_eq!(entries(&ours).len(), 2);
    let mut g = c.benchmark_group("extract_full");
    g.bench_function("nats_otel", |b| {
        b.iter(|| HeaderExtractor::new(black_box(&headers)).extract_context())
    });
    g.bench_function("sdk", |b| {
        b.iter(|| {
            let carrier = PlainExtractor(Some(black_box(&headers)));
            let cx = sdk.extract(&carrier);
            baggage.extract_with_context(&cx, &carrier)
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = inject, extract
}

/// Prints each group's medians and the SDK/ours ratio from Criterion's
/// `estimates.json` files of this run.
fn summary() {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("criterion");
    let median = |group: &str, id: &str| -> Option<f64> {
        let path = dir.join(group).join(id).join("new").join("estimates.json");
        let json: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
        json["median"]["point_estimate"].as_f64()
    };
    println!();
    println!("| operation | nats_otel (median) | SDK hand-written (median) | speed-up |");
    println!("|---|---:|---:|---:|");
    for group in [
        "inject",
        "extract_lowercase",
        "extract_go_cased",
        "inject_full",
        "extract_full",
    ] {
        if let (Some(ours), Some(sdk)) = (median(group, "nats_otel"), median(group, "sdk")) {
            println!(
                "| {group} | {ours:.0} ns | {sdk:.0} ns | {:.2}x |",
                sdk / ours
            );
        }
    }
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    // `cargo test --benches` runs each benchmark once, as a smoke test.
    if std::env::args().any(|a| a == "--bench") {
        summary();
    }
}
