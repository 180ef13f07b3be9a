//! Throughput against a real nats-server, each figure side by side with the raw
//! async-nats way of doing the same thing, in one run.
//!
//! ```text
//! cargo xtask install-server            # once: the pinned nats-server under target/
//! cargo bench --features kv,hops --bench throughput
//! ```
//!
//! The benchmark starts its own nats-server (see the `nats-server-harness` crate in `harness/`
//! for how the binary is found; `NATS_SERVER_BIN` overrides it). Each pair runs alternately (A
//! then B, then B then A, ...) for `ROUNDS` rounds; the table shows the median rate of each side
//! and the median of the per-round ratios. Settings (environment variables):
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `NATS_OTEL_BENCH_ROUNDS` | 11 | rounds per pair |
//! | `NATS_OTEL_BENCH_MESSAGES` | 100000 | core publish and consume, per run |
//! | `NATS_OTEL_BENCH_JS_MESSAGES` | 50000 | JetStream publish, per run |
//! | `NATS_OTEL_BENCH_KV_MESSAGES` | 5000 | KV write-through, per run; also the messages of the `stripped` rows (published once, all consumed per run) |
//! | `NATS_OTEL_BENCH_WINDOW` | 256 | JetStream acks in flight (KV: a quarter of it) |
//! | `NATS_OTEL_BENCH_RSS_MESSAGES` | 1000000 | messages consumed for the RSS check |
//! | `NATS_OTEL_BENCH_PAYLOAD` | 128 | payload bytes |
//! | `NATS_OTEL_BENCH_STORAGE` | `file` | storage of the benchmark's streams and KV bucket, `file` (JetStream's default) or `memory` |
//! | `NATS_OTEL_BENCH_WORKERS` | 0 | worker threads of the client's runtime; 0 runs everything, the client's connection task included, on one thread (every nanosecond the layer adds shows); with workers, the connection task runs beside the publishing loop |
//! | `NATS_OTEL_BENCH_PIN` | (off) | `CLIENT/SERVER` CPU lists, e.g. `0/1`: pins the benchmark (client) and nats-server to separate CPUs with `taskset` (Linux, util-linux), which takes most of the run-to-run drift of a shared machine out of the ratios |
//! | `NATS_OTEL_BENCH_STRIPPED_PROBE` | (off) | `1`: after the `stripped` rows, print where a stripped consume's time goes: raw `kv.get` rates by lookups in flight, batched direct gets (`multi_last`), the adapter by `kv_lookahead` (single runs, not paired) |
//! | `NATS_OTEL_BENCH_ONLY` | (all) | comma-separated subset: `core`, `core_sampled`, `core_tracer`, `core_tracer_sampled`, `core_nospans`, `core_w3c`, `core_nospans_w3c` (`core` and `core_nospans` with `.propagator(W3cPropagator::new())`), `core_hand_written`, `core_hand_written_sampled`, `core_names`, `js`, `js_tracer`, `consume`, `consume_tracer` (against hand-written code that links its span to the creation context, as the conventions require and the adapter does), `consume_no_link`, `consume_tracer_no_link` (the same without the link), `kv`, `stripped` (consume with the KV fallback, headers stripped vs intact: `messages()`, `fetch()`, `messages()` with `kv_lookahead(1)`), `hops` (core publish with sampled spans, `server_hops(bridge.publish_settings(), ratio)` with a running `ServerHops` bridge on its own connection vs no server hops, at ratio 1.0 and 0.1, then the bridge's stats; `NATS_OTEL_BENCH_MESSAGES` per run), `rss` |
//!
//! Under `cargo test --benches` (no `--bench` argument) it does nothing.

#[path = "../support/sdk.rs"]
mod sdk;

mod consume;
mod harness;
mod hops;
mod kv;
mod publish;
mod stripped;

use consume::*;
use harness::*;
use hops::*;
use kv::*;
use publish::*;
use stripped::*;

use std::collections::VecDeque;
use std::future::Future;
use std::time::{Duration, Instant};

use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::{self, consumer, stream};
use async_nats::{HeaderMap, Subject};
use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use nats_otel::{
    fallback::FallbackKey,
    propagation::{HeaderInjector, W3cPropagator},
    publish::JetStreamSender,
    ContextSource, CorePublisher, HeaderNames, JetStreamPublisher, KvFallback, MessageContextExt,
    Publish, TraceContextStreamExt, TracePropagationLayer,
};
use nats_server_harness as server;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use tower::{Layer, Service, ServiceExt};
use tracing::Dispatch;

type Error = Box<dyn std::error::Error + Send + Sync>;
type Result<T, E = Error> = std::result::Result<T, E>;

/// A traceparent of the length the layer writes, for the raw side.
const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";

pub(crate) struct Settings {
    pub(crate) rounds: usize,
    pub(crate) messages: usize,
    pub(crate) js_messages: usize,
    pub(crate) kv_messages: usize,
    pub(crate) window: usize,
    pub(crate) rss_messages: usize,
    pub(crate) payload: usize,
    pub(crate) storage: stream::StorageType,
    /// Worker threads of the runtime (0: the current thread only).
    pub(crate) workers: usize,
    /// The CPUs the benchmark and nats-server are pinned to, if any.
    pub(crate) pin: Option<(String, String)>,
}

pub(crate) fn env(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

impl Settings {
    fn from_env() -> Self {
        Self {
            rounds: env("NATS_OTEL_BENCH_ROUNDS", 11).max(1),
            messages: env("NATS_OTEL_BENCH_MESSAGES", 100_000).max(1),
            js_messages: env("NATS_OTEL_BENCH_JS_MESSAGES", 50_000).max(1),
            kv_messages: env("NATS_OTEL_BENCH_KV_MESSAGES", 5_000).max(1),
            window: env("NATS_OTEL_BENCH_WINDOW", 256).max(1),
            rss_messages: env("NATS_OTEL_BENCH_RSS_MESSAGES", 1_000_000),
            payload: env("NATS_OTEL_BENCH_PAYLOAD", 128),
            storage: match std::env::var("NATS_OTEL_BENCH_STORAGE").as_deref() {
                Ok("memory") => stream::StorageType::Memory,
                Ok("file") | Err(_) => stream::StorageType::File,
                Ok(other) => panic!("NATS_OTEL_BENCH_STORAGE={other:?}: use file or memory"),
            },
            workers: env("NATS_OTEL_BENCH_WORKERS", 0),
            pin: std::env::var("NATS_OTEL_BENCH_PIN")
                .ok()
                .map(|v| match v.split_once('/') {
                    Some((client, server)) if !client.is_empty() && !server.is_empty() => {
                        (client.to_owned(), server.to_owned())
                    }
                    _ => panic!("NATS_OTEL_BENCH_PIN={v:?}: use CLIENT/SERVER CPU lists, e.g. 0/1"),
                }),
        }
    }
}

/// Pins every thread of process `pid` (and those it starts later) to the
/// CPUs in `cpus`, with `taskset` (util-linux).
fn pin(pid: u32, cpus: &str, what: &str) -> Result<()> {
    let status = std::process::Command::new("taskset")
        .args(["--all-tasks", "--cpu-list", "--pid", cpus, &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .map_err(|e| {
            format!(
                "NATS_OTEL_BENCH_PIN: cannot run taskset ({e}); install util-linux, or unset it"
            )
        })?;
    if !status.success() {
        return Err(
            format!("NATS_OTEL_BENCH_PIN: taskset could not pin {what} to CPUs {cpus}").into(),
        );
    }
    Ok(())
}

fn print_table(rows: &[Row], s: &Settings) {
    println!();
    println!(
        "| scenario | nats_otel (msg/s, median) | raw async-nats (msg/s, median) | ratio (median of {} paired rounds) | target |",
        s.rounds
    );
    println!("|---|---:|---:|---:|---|");
    for row in rows {
        println!(
            "| {} | {:.0} | {:.0} | {:.3} | {} |",
            row.name,
            median(&row.ours),
            median(&row.raw),
            median(&row.ratios),
            row.target
        );
    }
}

fn main() -> Result<()> {
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "throughput: skipped (run it with `cargo bench --features kv,hops --bench throughput`)"
        );
        return Ok(());
    }
    let s = Settings::from_env();
    // A generous write deadline: the benchmark's single-threaded client can
    // be descheduled on a busy 2-core machine, and the default (10 s on
    // 2.15, 2 s on older servers) would cut it off as a slow consumer.
    let server = server::NatsServer::builder()
        .config("write_deadline: \"60s\"\nmax_pending: 268435456\n")
        .wait_healthy(true)
        .start();
    if let Some((client, server_cpus)) = &s.pin {
        let server_pid = server.pid().ok_or("nats-server has no pid")?;
        pin(server_pid, server_cpus, "nats-server")?;
        pin(std::process::id(), client, "the benchmark")?;
        eprintln!("pinned: benchmark to CPUs {client}, nats-server to CPUs {server_cpus}");
    }
    eprintln!(
        "nats-server {} at {}; rounds {}, messages {}, JetStream {}, KV {}, window {}, payload {} B, streams on {:?}, runtime workers {}",
        server.version(),
        server.url(),
        s.rounds,
        s.messages,
        s.js_messages,
        s.kv_messages,
        s.window,
        s.payload,
        s.storage,
        s.workers
    );
    // The benchmark's loops run on this thread (`block_on`); with workers,
    // the client's connection task runs beside them on a worker thread.
    let rt = match s.workers {
        0 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(n);
            builder
        }
    }
    .enable_all()
    .build()?;
    let (unsampled, unsampled_provider) = dispatch(false);
    let (sampled, sampled_provider) = dispatch(true);
    let payload = Bytes::from(vec![b'x'; s.payload]);

    let (publisher, consumer, js) = rt.block_on(async {
        let publisher = async_nats::connect(server.url()).await?;
        let consumer = async_nats::ConnectOptions::new()
            .subscription_capacity(2 * CHUNK + 1024)
            .event_callback(|event| async move {
                eprintln!("consumer connection event: {event}");
            })
            .connect(server.url())
            .await?;
        let js = jetstream::new(publisher.clone());
        for (name, subject) in [("BENCH_JS", "bench.js"), ("BENCH_KV", "bench.kv")] {
            js.create_stream(stream::Config {
                name: name.into(),
                subjects: vec![subject.into()],
                storage: s.storage,
                max_messages: 200_000,
                ..Default::default()
            })
            .await?;
        }
        Result::<_>::Ok((publisher, consumer, js))
    })?;
    let barrier = rt.block_on(Barrier::new(&consumer))?;

    let only = std::env::var("NATS_OTEL_BENCH_ONLY").unwrap_or_default();
    let run = |key: &str| only.is_empty() || only.split(',').any(|k| k.trim() == key);
    let mut rows = Vec::new();
    let tracer = || Some(unsampled_provider.tracer("nats-otel"));
    // Every core row publishes in a caller's context (a request handler's),
    // sampled or not; the raw column sends the same header bytes.
    let core_rows = [
        (
            "core",
            &unsampled,
            Producer::Spans,
            false,
            Baseline::Raw,
            "core publish, `tracing` spans, caller's context not sampled (no span is made)",
            ">= 0.80",
        ),
        (
            "core_sampled",
            &sampled,
            Producer::Spans,
            true,
            Baseline::Raw,
            "core publish, `tracing` spans, sampled (batch exporter to a no-op exporter)",
            "(cost of a sampled span)",
        ),
        (
            "core_tracer",
            &unsampled,
            Producer::TracerSpans(unsampled_provider.tracer("nats-otel")),
            false,
            Baseline::Raw,
            "core publish, `.tracer(...)`, caller's context not sampled (no span is made)",
            ">= 0.80",
        ),
        (
            "core_tracer_sampled",
            &sampled,
            Producer::TracerSpans(sampled_provider.tracer("nats-otel")),
            true,
            Baseline::Raw,
            "core publish, `.tracer(...)`, sampled (batch exporter to a no-op exporter)",
            "(cost of a sampled span)",
        ),
        (
            "core_nospans",
            &unsampled,
            Producer::NoSpans(HeaderNames::Both),
            false,
            Baseline::Raw,
            "core publish, producer_spans(false): inject the caller's context only",
            ">= 0.85",
        ),
        (
            "core_w3c",
            &unsampled,
            Producer::W3c(Box::new(Producer::Spans)),
            false,
            Baseline::Raw,
            "core publish, `tracing` spans, caller's context not sampled, `.propagator(W3cPropagator::new())` (the global propagator not read)",
            "(informational)",
        ),
        (
            "core_nospans_w3c",
            &unsampled,
            Producer::W3c(Box::new(Producer::NoSpans(HeaderNames::Both))),
            false,
            Baseline::Raw,
            "core publish, producer_spans(false), `.propagator(W3cPropagator::new())` (the global propagator not read)",
            "(informational)",
        ),
        (
            "core_hand_written",
            &unsampled,
            Producer::Spans,
            false,
            Baseline::HandWritten,
            "core publish, `tracing` spans, caller's context not sampled: the layer vs hand-written (`tracing` span, SDK propagator into a `HeaderMap`, `publish_with_headers`) in the raw column",
            ">= 1.5",
        ),
        (
            "core_hand_written_sampled",
            &sampled,
            Producer::Spans,
            true,
            Baseline::HandWritten,
            "core publish, `tracing` spans, sampled: the layer vs hand-written in the raw column",
            "(informational)",
        ),
    ];
    for (key, dispatch, producer, sampled, baseline, name, target) in core_rows {
        if run(key) {
            let row = core_publish(
                &publisher,
                &barrier,
                &s,
                &payload,
                producer,
                baseline,
                caller_context(sampled),
                (name, target),
            );
            rows.push(with_dispatch(dispatch, &rt, row)?);
        }
    }
    if run("core_names") {
        // The cost of the default header names: the same layer, writing
        // both names vs the lowercase ones alone, side by side.
        let row = core_publish(
            &publisher,
            &barrier,
            &s,
            &payload,
            Producer::NoSpans(HeaderNames::Both),
            Baseline::Layer(Producer::NoSpans(HeaderNames::Lowercase)),
            caller_context(false),
            (
                "core publish, producer_spans(false): HeaderNames::Both (default) vs Lowercase (the raw column)",
                "(cost of the default names)",
            ),
        );
        rows.push(with_dispatch(&unsampled, &rt, row)?);
    }
    let mut hops_lines = Vec::new();
    if run("hops") {
        let hops_rows = [
            (
                1.0,
                "core publish, spans sampled: server hops on (ratio 1.0, `ServerHops` bridge running) vs off (the raw column)",
            ),
            (
                0.1,
                "core publish, spans sampled: server hops on (ratio 0.1, `ServerHops` bridge running) vs off (the raw column)",
            ),
        ];
        for (ratio, name) in hops_rows {
            let (row, lines) = with_dispatch(
                &sampled,
                &rt,
                core_hops(
                    &publisher,
                    &barrier,
                    &server,
                    &s,
                    &payload,
                    ratio,
                    (name, "(cost of server hops)"),
                ),
            )?;
            rows.extend(row);
            hops_lines.extend(lines);
        }
    }
    let js_rows = [
        ("js", None, "JetStream publish, acks pipelined (unsampled)"),
        (
            "js_tracer",
            tracer(),
            "JetStream publish, `.tracer(...)`, acks pipelined (unsampled)",
        ),
    ];
    for (key, tracer, name) in js_rows {
        if run(key) {
            let row = jetstream_publish(&js, &s, &payload, tracer, name);
            rows.push(with_dispatch(&unsampled, &rt, row)?);
        }
    }
    let consume_rows = [
        (
            "consume",
            None,
            sdk::Linked::Creation,
            "consume: adapter vs raw subscriber + manual extraction and a span linked to its parent (unsampled)",
            ">= 0.95",
        ),
        (
            "consume_tracer",
            tracer(),
            sdk::Linked::Creation,
            "consume, `.tracer(...)`: adapter vs raw subscriber + manual extraction and a span linked to its parent (unsampled)",
            ">= 0.95",
        ),
        (
            "consume_no_link",
            None,
            sdk::Linked::None,
            "consume: adapter vs raw subscriber + manual extraction and a span without the link (unsampled)",
            "(informational)",
        ),
        (
            "consume_tracer_no_link",
            tracer(),
            sdk::Linked::None,
            "consume, `.tracer(...)`: adapter vs raw subscriber + manual extraction and a span without the link (unsampled)",
            "(informational)",
        ),
    ];
    for (key, tracer, link, name, target) in consume_rows {
        if run(key) {
            let row = consume(
                &publisher,
                &consumer,
                &barrier,
                &s,
                &payload,
                (tracer, link),
                (name, target),
            );
            rows.push(with_dispatch(&unsampled, &rt, row)?);
        }
    }
    let kv = if run("kv") {
        let (row, reads, from_headers) =
            with_dispatch(&unsampled, &rt, kv_write_through(&js, &s, &payload))?;
        rows.push(row);
        Some((reads, from_headers))
    } else {
        None
    };
    let stripped_lines = if run("stripped") {
        let (stripped_rows, lines) = with_dispatch(
            &unsampled,
            &rt,
            stripped_headers(&js, &consumer, &s, &payload),
        )?;
        rows.extend(stripped_rows);
        lines
    } else {
        Vec::new()
    };
    let rss = if s.rss_messages > 0 && run("rss") {
        Some(with_dispatch(
            &unsampled,
            &rt,
            rss(&publisher, &consumer, &barrier, s.rss_messages, &payload),
        )?)
    } else {
        None
    };

    print_table(&rows, &s);
    println!();
    for (what, full) in [
        ("traceparent only", false),
        ("with tracestate and a two-member baggage", true),
    ] {
        println!(
            "Header block per message, {what}: {} bytes with HeaderNames::Lowercase, {} with HeaderNames::Both (default), {} with HeaderNames::Canonical",
            header_bytes(HeaderNames::Lowercase, full),
            header_bytes(HeaderNames::Both, full),
            header_bytes(HeaderNames::Canonical, full),
        );
    }
    if let Some((kv_reads, from_headers)) = kv {
        println!(
            "KV reads while consuming {from_headers} messages with intact headers (fallback configured): {kv_reads} (target: 0)"
        );
    }
    for line in &stripped_lines {
        println!("{line}");
    }
    for line in &hops_lines {
        println!("{line}");
    }
    if let Some((before, after, took)) = rss {
        let growth = after as i64 - before as i64;
        println!(
            "RSS consuming {} messages through the adapter: {:.1} MiB before, {:.1} MiB after, growth {:.2} MiB in {:.1} s (target: < 5 MiB)",
            s.rss_messages,
            before as f64 / 1024.0,
            after as f64 / 1024.0,
            growth as f64 / 1024.0,
            took.as_secs_f64()
        );
    }
    let _ = sampled_provider.shutdown();
    let _ = unsampled_provider.shutdown();
    Ok(())
}
