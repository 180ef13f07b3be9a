//! Throughput against a real nats-server, each figure side by side with the raw
//! async-nats way of doing the same thing, in one run.
//!
//! ```text
//! cargo xtask install-server            # once: the pinned nats-server under target/
//! cargo bench --features kv --bench throughput
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
//! | `NATS_OTEL_BENCH_KV_MESSAGES` | 5000 | KV write-through, per run |
//! | `NATS_OTEL_BENCH_WINDOW` | 256 | JetStream acks in flight (KV: a quarter of it) |
//! | `NATS_OTEL_BENCH_RSS_MESSAGES` | 1000000 | messages consumed for the RSS check |
//! | `NATS_OTEL_BENCH_PAYLOAD` | 128 | payload bytes |
//! | `NATS_OTEL_BENCH_STORAGE` | `file` | storage of the benchmark's streams and KV bucket, `file` (JetStream's default) or `memory` |
//! | `NATS_OTEL_BENCH_WORKERS` | 0 | worker threads of the client's runtime; 0 runs everything, the client's connection task included, on one thread (every nanosecond the layer adds shows); with workers, the connection task runs beside the publishing loop |
//! | `NATS_OTEL_BENCH_ONLY` | (all) | comma-separated subset: `core`, `core_sampled`, `core_tracer`, `core_tracer_sampled`, `core_nospans`, `core_names`, `js`, `js_tracer`, `consume`, `consume_tracer`, `kv`, `rss` |
//!
//! Under `cargo test --benches` (no `--bench` argument) it does nothing.

#[path = "support/sdk.rs"]
mod sdk;

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
    fallback::FallbackKey, propagation::HeaderInjector, publish::JetStreamSender, ContextSource,
    CorePublisher, HeaderNames, JetStreamPublisher, KvFallback, MessageContextExt, Publish,
    TraceContextStreamExt, TracePropagationLayer,
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

struct Settings {
    rounds: usize,
    messages: usize,
    js_messages: usize,
    kv_messages: usize,
    window: usize,
    rss_messages: usize,
    payload: usize,
    storage: stream::StorageType,
    /// Worker threads of the runtime (0: the current thread only).
    workers: usize,
}

fn env(name: &str, default: usize) -> usize {
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
        }
    }
}

/// A tracing dispatch with an OpenTelemetry layer: spans unsampled, or all
/// sampled into a batch processor with a no-op exporter.
fn dispatch(sampled: bool) -> (Dispatch, SdkTracerProvider) {
    let provider = sdk::provider(sampled);
    (sdk::dispatch(&provider), provider)
}

/// What the layer writes by default: `traceparent` under both names
/// (`HeaderNames::Both`).
fn raw_headers(extra: Option<(&str, &str)>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("traceparent", TRACEPARENT);
    headers.insert("Traceparent", TRACEPARENT);
    if let Some((name, value)) = extra {
        headers.insert(name, value);
    }
    headers
}

/// One row of the table.
struct Row {
    name: &'static str,
    ours: Vec<f64>,
    raw: Vec<f64>,
    ratios: Vec<f64>,
    target: &'static str,
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Runs `ours` and `raw` alternately for `rounds` rounds; each returns the
/// time it took for `count` messages.
async fn pair<A, FA, B, FB>(
    name: &'static str,
    target: &'static str,
    rounds: usize,
    count: usize,
    mut ours: A,
    mut raw: B,
) -> Result<Row>
where
    A: FnMut() -> FA,
    FA: Future<Output = Result<Duration>>,
    B: FnMut() -> FB,
    FB: Future<Output = Result<Duration>>,
{
    // One unmeasured run of each to warm up connections, streams and caches.
    ours().await?;
    raw().await?;
    let rate = |d: Duration| count as f64 / d.as_secs_f64();
    let mut row = Row {
        name,
        ours: Vec::new(),
        raw: Vec::new(),
        ratios: Vec::new(),
        target,
    };
    for round in 0..rounds {
        let (o, r) = if round % 2 == 0 {
            let o = ours().await?;
            (o, raw().await?)
        } else {
            let r = raw().await?;
            (ours().await?, r)
        };
        row.ours.push(rate(o));
        row.raw.push(rate(r));
        row.ratios.push(rate(o) / rate(r));
    }
    eprintln!(
        "{name}: ours {:.0} msg/s, raw {:.0} msg/s, ratio {:.3}",
        median(&row.ours),
        median(&row.raw),
        median(&row.ratios)
    );
    Ok(row)
}

/// Runs `f` on `rt` with `dispatch` as the default subscriber.
fn with_dispatch<T>(
    dispatch: &Dispatch,
    rt: &tokio::runtime::Runtime,
    f: impl Future<Output = T>,
) -> T {
    tracing::dispatcher::with_default(dispatch, || rt.block_on(f))
}

/// How the layer is set up for a core publish row.
#[derive(Clone)]
enum Producer {
    /// A PRODUCER span per message, as a `tracing` span (the default).
    Spans,
    /// A PRODUCER span per message, made with this OpenTelemetry tracer
    /// (`TracePropagationLayer::tracer`).
    TracerSpans(SdkTracer),
    /// `producer_spans(false)`: the caller's context is injected as is
    /// (given explicitly with `Publish::context`), under these names.
    NoSpans(HeaderNames),
}

impl Producer {
    fn layer(&self) -> TracePropagationLayer {
        match self {
            Producer::Spans => TracePropagationLayer::new(),
            Producer::TracerSpans(tracer) => TracePropagationLayer::new().tracer(tracer.clone()),
            Producer::NoSpans(names) => TracePropagationLayer::new()
                .producer_spans(false)
                .header_names(*names),
        }
    }
}

/// The header block the layer writes for one message under `names`, in
/// bytes as it travels (`NATS/1.0\r\n`, `name: value\r\n` per header, a
/// closing `\r\n`), with a context carrying `tracestate` and a two-member
/// `baggage` when `full`.
fn header_bytes(names: HeaderNames, full: bool) -> usize {
    use opentelemetry::baggage::BaggageExt;
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
    let state = if full {
        "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE".parse().unwrap()
    } else {
        TraceState::NONE
    };
    let mut cx = opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
        TraceId::from(0x0af7651916cd43dd8448eb211c80319c),
        SpanId::from(0xb7ad6b7169203331),
        TraceFlags::SAMPLED,
        true,
        state,
    ));
    if full {
        cx = cx.with_baggage([
            opentelemetry::KeyValue::new("user", "alice"),
            opentelemetry::KeyValue::new("tenant", "acme"),
        ]);
    }
    let mut headers = HeaderMap::new();
    HeaderInjector::new(&mut headers)
        .header_names(names)
        .inject_context(&cx);
    let fields: usize = headers
        .iter()
        .flat_map(|(name, values)| {
            let name: &str = name.as_ref();
            values
                .iter()
                .map(move |v| name.len() + 2 + v.as_str().len() + 2)
        })
        .sum();
    "NATS/1.0\r\n".len() + fields + 2
}

async fn core_publish(
    client: &async_nats::Client,
    barrier: &tokio::sync::Mutex<Barrier>,
    s: &Settings,
    payload: &Bytes,
    producer: Producer,
    baseline: Option<Producer>,
    (name, target): (&'static str, &'static str),
) -> Result<Row> {
    let subject = Subject::from("bench.core");
    let headers = raw_headers(None);
    let n = s.messages;
    // The caller's context, for `Producer::NoSpans`: what a traced request
    // handler would hold.
    let parent = opentelemetry::Context::new().with_remote_span_context(
        opentelemetry::trace::SpanContext::new(
            opentelemetry::trace::TraceId::from(0x0af7651916cd43dd8448eb211c80319c),
            opentelemetry::trace::SpanId::from(0xb7ad6b7169203331),
            opentelemetry::trace::TraceFlags::default(),
            false,
            opentelemetry::trace::TraceState::NONE,
        ),
    );
    let through_layer = |producer: &Producer| {
        let mut svc = producer.layer().layer(CorePublisher::new(client.clone()));
        let no_spans = matches!(producer, Producer::NoSpans(_));
        let (subject, parent) = (&subject, &parent);
        async move {
            let start = Instant::now();
            for _ in 0..n {
                let mut publish = Publish::new(subject.clone(), payload.clone());
                if no_spans {
                    publish = publish.context(parent.clone());
                }
                svc.ready().await?.call(publish).await?;
            }
            barrier.lock().await.wait(client).await?;
            Ok(start.elapsed())
        }
    };
    pair(
        name,
        target,
        s.rounds,
        n,
        || through_layer(&producer),
        || async {
            if let Some(baseline) = &baseline {
                return through_layer(baseline).await;
            }
            let start = Instant::now();
            for _ in 0..n {
                client
                    .publish_with_headers(subject.clone(), headers.clone(), payload.clone())
                    .await?;
            }
            barrier.lock().await.wait(client).await?;
            Ok(start.elapsed())
        },
    )
    .await
}

/// JetStream acks in flight, at most `window` of them: pushing one more
/// first awaits the oldest.
struct AckWindow {
    acks: VecDeque<PublishAckFuture>,
    window: usize,
}

impl AckWindow {
    fn new(window: usize) -> Self {
        Self {
            acks: VecDeque::with_capacity(window),
            window,
        }
    }

    async fn push(&mut self, ack: PublishAckFuture) -> Result<()> {
        self.acks.push_back(ack);
        if self.acks.len() >= self.window {
            if let Some(oldest) = self.acks.pop_front() {
                oldest.await?;
            }
        }
        Ok(())
    }

    /// Awaits every ack still in flight.
    async fn drain(self) -> Result<()> {
        for ack in self.acks {
            ack.await?;
        }
        Ok(())
    }
}

async fn jetstream_publish(
    js: &jetstream::Context,
    s: &Settings,
    payload: &Bytes,
    tracer: Option<SdkTracer>,
    name: &'static str,
) -> Result<Row> {
    let subject = Subject::from("bench.js");
    let headers = raw_headers(None);
    let (n, window) = (s.js_messages, s.window);
    pair(
        name,
        ">= 0.95",
        s.rounds,
        n,
        || async {
            let mut layer = TracePropagationLayer::new();
            if let Some(tracer) = &tracer {
                layer = layer.tracer(tracer.clone());
            }
            let mut svc = layer.layer(JetStreamSender::new(js.clone()));
            let mut acks = AckWindow::new(window);
            let start = Instant::now();
            for _ in 0..n {
                let ack = svc
                    .ready()
                    .await?
                    .call(Publish::new(subject.clone(), payload.clone()))
                    .await?;
                acks.push(ack).await?;
            }
            acks.drain().await?;
            Ok(start.elapsed())
        },
        || async {
            let mut acks = AckWindow::new(window);
            let start = Instant::now();
            for _ in 0..n {
                let ack = js
                    .publish_with_headers(subject.clone(), headers.clone(), payload.clone())
                    .await?;
                acks.push(ack).await?;
            }
            acks.drain().await?;
            Ok(start.elapsed())
        },
    )
    .await
}

/// A server round trip between two connections.
///
/// `Client::flush` only writes the client's buffer to the socket; it does
/// not wait for the server. Once a sentinel published by a connection comes
/// back on the barrier subscription (on the consumer connection), the server
/// has processed everything that connection sent before it, subscriptions
/// included, and has delivered earlier messages to the consumer
/// connection's subscriptions, in order.
struct Barrier {
    subject: Subject,
    subscription: async_nats::Subscriber,
    seq: u64,
}

impl Barrier {
    async fn new(consumer: &async_nats::Client) -> Result<tokio::sync::Mutex<Self>> {
        let subject = Subject::from("bench.barrier");
        let subscription = consumer.subscribe(subject.clone()).await?;
        let mut barrier = Self {
            subject,
            subscription,
            seq: 0,
        };
        // Sent by the same connection after its SUB: ordered at the server.
        barrier.wait(consumer).await?;
        Ok(tokio::sync::Mutex::new(barrier))
    }

    /// Returns once everything `from` sent so far has been processed by the
    /// server.
    async fn wait(&mut self, from: &async_nats::Client) -> Result<()> {
        self.seq += 1;
        let sentinel = self.seq.to_string();
        from.publish(self.subject.clone(), sentinel.clone().into())
            .await?;
        from.flush().await?;
        loop {
            let message = next(&mut self.subscription).await?;
            if message.payload == sentinel.as_bytes() {
                return Ok(());
            }
        }
    }
}

/// Publishes `count` messages with a traceparent to `subject` and waits
/// until the consumer's client has them all buffered.
async fn fill(
    publisher: &async_nats::Client,
    barrier: &tokio::sync::Mutex<Barrier>,
    subject: &Subject,
    count: usize,
    payload: &Bytes,
) -> Result<()> {
    let headers = raw_headers(None);
    for _ in 0..count {
        publisher
            .publish_with_headers(subject.clone(), headers.clone(), payload.clone())
            .await?;
    }
    barrier.lock().await.wait(publisher).await
}

/// The next item, or an error after 10 s: a lost message must fail the
/// benchmark, not hang it.
async fn next<S: futures::Stream + Unpin>(stream: &mut S) -> Result<S::Item> {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .map_err(|_| "no message for 10 s (lost?)")?
        .ok_or_else(|| "the subscription ended".into())
}

/// Messages per chunk: published, buffered, then consumed (timed).
const CHUNK: usize = 5_000;

async fn consume(
    publisher: &async_nats::Client,
    consumer: &async_nats::Client,
    barrier: &tokio::sync::Mutex<Barrier>,
    s: &Settings,
    payload: &Bytes,
    tracer: Option<SdkTracer>,
    name: &'static str,
) -> Result<Row> {
    let subject = Subject::from("bench.consume");
    let n = s.messages;
    pair(
        name,
        ">= 0.95",
        s.rounds,
        n,
        || async {
            let mut messages = consumer
                .subscribe(subject.clone())
                .await?
                .with_trace_context();
            if let Some(tracer) = &tracer {
                messages = messages.tracer(tracer.clone());
            }
            barrier.lock().await.wait(consumer).await?;
            let mut elapsed = Duration::ZERO;
            let mut left = n;
            while left > 0 {
                let chunk = left.min(CHUNK);
                fill(publisher, barrier, &subject, chunk, payload).await?;
                let start = Instant::now();
                for _ in 0..chunk {
                    let (message, cx) = next(&mut messages).await?;
                    std::hint::black_box((&message, &cx));
                }
                elapsed += start.elapsed();
                left -= chunk;
            }
            Ok(elapsed)
        },
        || async {
            let propagator = TraceContextPropagator::new();
            let mut messages = consumer.subscribe(subject.clone()).await?;
            barrier.lock().await.wait(consumer).await?;
            let mut elapsed = Duration::ZERO;
            let mut left = n;
            while left > 0 {
                let chunk = left.min(CHUNK);
                fill(publisher, barrier, &subject, chunk, payload).await?;
                let start = Instant::now();
                for _ in 0..chunk {
                    let message = next(&mut messages).await?;
                    // The hand-written way: extract with the SDK, start a
                    // CONSUMER span under the remote parent, made the same
                    // way as ours (a `tracing` span, or with the tracer).
                    match &tracer {
                        None => {
                            let span = sdk::hand_written_tracing_span(&propagator, &message);
                            std::hint::black_box((&message, &span));
                        }
                        Some(tracer) => {
                            let cx = sdk::hand_written_tracer_span(&propagator, tracer, &message);
                            std::hint::black_box((&message, &cx));
                        }
                    }
                }
                elapsed += start.elapsed();
                left -= chunk;
            }
            Ok(elapsed)
        },
    )
    .await
}

async fn kv_write_through(
    js: &jetstream::Context,
    s: &Settings,
    payload: &Bytes,
) -> Result<(Row, u64, usize)> {
    // The bucket on the same storage as the stream it is compared with, so
    // that both writes cost the same (the 0.5 floor).
    let store = match s.storage {
        stream::StorageType::File => KvFallback::open_bucket(js, "bench_carriers").await?,
        stream::StorageType::Memory => {
            js.create_key_value(async_nats::jetstream::kv::Config {
                bucket: "bench_carriers".into(),
                history: 1,
                max_age: nats_otel::fallback::DEFAULT_MAX_AGE,
                storage: stream::StorageType::Memory,
                ..Default::default()
            })
            .await?
        }
    };
    let fallback = KvFallback::new(store, FallbackKey::header("Job-Id"));
    let subject = Subject::from("bench.kv");
    let (n, window) = (s.kv_messages, (s.window / 4).max(1));
    let row = pair(
        "KV fallback write-through vs plain JetStream publish (unsampled)",
        ">= 0.45",
        s.rounds,
        n,
        || async {
            let mut svc = TracePropagationLayer::new()
                .fallback(fallback.clone())
                .layer(JetStreamPublisher::new(js.clone()));
            let mut in_flight = FuturesUnordered::new();
            let start = Instant::now();
            for i in 0..n {
                let publish = Publish::new(subject.clone(), payload.clone())
                    .header("Job-Id", &format!("job-{i}"))?;
                in_flight.push(svc.ready().await?.call(publish));
                if in_flight.len() >= window {
                    in_flight.next().await.ok_or("no future")??;
                }
            }
            while let Some(done) = in_flight.next().await {
                done?;
            }
            Ok(start.elapsed())
        },
        || async {
            let mut in_flight = FuturesUnordered::new();
            let start = Instant::now();
            for i in 0..n {
                let headers = raw_headers(Some(("Job-Id", &format!("job-{i}"))));
                let js = js.clone();
                let (subject, payload) = (subject.clone(), payload.clone());
                in_flight.push(async move {
                    js.publish_with_headers(subject, headers, payload)
                        .await?
                        .await
                });
                if in_flight.len() >= window {
                    in_flight.next().await.ok_or("no future")??;
                }
            }
            while let Some(done) = in_flight.next().await {
                done?;
            }
            Ok(start.elapsed())
        },
    )
    .await?;

    // Consume what was written through the layer, headers intact, with the
    // fallback configured: it must never be read.
    let stream = js.get_stream("BENCH_KV").await?;
    let pull = stream
        .create_consumer(consumer::pull::Config {
            ack_policy: consumer::AckPolicy::None,
            filter_subject: "bench.kv".into(),
            ..Default::default()
        })
        .await?;
    let total = stream.cached_info().state.messages as usize;
    let mut messages = pull
        .messages()
        .await?
        .with_trace_context()
        .fallback(fallback.clone());
    let mut from_headers = 0;
    for _ in 0..total {
        let (_, cx) = next(&mut messages).await??;
        if cx.extraction().map(|r| r.source()) == Some(ContextSource::Headers) {
            from_headers += 1;
        }
    }
    let reads = fallback.stats().reads;
    Ok((row, reads, from_headers))
}

fn vm_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Publishes and consumes `count` messages through `messages`, by chunks.
async fn drain<S>(
    messages: &mut S,
    publisher: &async_nats::Client,
    barrier: &tokio::sync::Mutex<Barrier>,
    subject: &Subject,
    count: usize,
    payload: &Bytes,
) -> Result<()>
where
    S: futures::Stream<Item = (async_nats::Message, opentelemetry::Context)> + Unpin,
{
    let mut left = count;
    while left > 0 {
        let chunk = left.min(CHUNK);
        fill(publisher, barrier, subject, chunk, payload).await?;
        for _ in 0..chunk {
            let (message, cx) = next(messages).await?;
            std::hint::black_box((&message, &cx));
        }
        left -= chunk;
    }
    Ok(())
}

/// RSS before and after consuming `count` messages through the adapter.
async fn rss(
    publisher: &async_nats::Client,
    consumer: &async_nats::Client,
    barrier: &tokio::sync::Mutex<Barrier>,
    count: usize,
    payload: &Bytes,
) -> Result<(u64, u64, Duration)> {
    let subject = Subject::from("bench.rss");
    let mut messages = consumer
        .subscribe(subject.clone())
        .await?
        .with_trace_context();
    barrier.lock().await.wait(consumer).await?;
    // Warm up: allocator pools, channel buffers, span machinery.
    drain(
        &mut messages,
        publisher,
        barrier,
        &subject,
        5 * CHUNK,
        payload,
    )
    .await?;
    let before = vm_rss_kib().ok_or("no VmRSS in /proc/self/status")?;
    let start = Instant::now();
    drain(&mut messages, publisher, barrier, &subject, count, payload).await?;
    let took = start.elapsed();
    let after = vm_rss_kib().ok_or("no VmRSS in /proc/self/status")?;
    Ok((before, after, took))
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
            "throughput: skipped (run it with `cargo bench --features kv --bench throughput`)"
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
    let core_rows = [
        (
            "core",
            &unsampled,
            Producer::Spans,
            "core publish (spans unsampled)",
            ">= 0.95",
        ),
        (
            "core_sampled",
            &sampled,
            Producer::Spans,
            "core publish (spans sampled, batch exporter to a no-op exporter)",
            ">= 0.80",
        ),
        (
            "core_tracer",
            &unsampled,
            Producer::TracerSpans(unsampled_provider.tracer("nats-otel")),
            "core publish, `.tracer(...)` (spans unsampled)",
            ">= 0.95",
        ),
        (
            "core_tracer_sampled",
            &sampled,
            Producer::TracerSpans(sampled_provider.tracer("nats-otel")),
            "core publish, `.tracer(...)` (spans sampled, batch exporter to a no-op exporter)",
            ">= 0.80",
        ),
        (
            "core_nospans",
            &unsampled,
            Producer::NoSpans(HeaderNames::Both),
            "core publish, producer_spans(false): inject the caller's context only",
            "(floor of the layer)",
        ),
    ];
    for (key, dispatch, producer, name, target) in core_rows {
        if run(key) {
            let row = core_publish(
                &publisher,
                &barrier,
                &s,
                &payload,
                producer,
                None,
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
            Some(Producer::NoSpans(HeaderNames::Lowercase)),
            (
                "core publish, producer_spans(false): HeaderNames::Both (default) vs Lowercase (the raw column)",
                "(cost of the default names)",
            ),
        );
        rows.push(with_dispatch(&unsampled, &rt, row)?);
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
            "consume: adapter vs raw subscriber + manual extraction (unsampled)",
        ),
        (
            "consume_tracer",
            tracer(),
            "consume, `.tracer(...)`: adapter vs raw subscriber + manual extraction (unsampled)",
        ),
    ];
    for (key, tracer, name) in consume_rows {
        if run(key) {
            let row = consume(&publisher, &consumer, &barrier, &s, &payload, tracer, name);
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
