//! Consume rows for the KV fallback when headers were stripped in transit:
//! the same messages consumed through the adapter with `.fallback(kv)` from
//! a stream whose copies lost their headers (each context then comes from a
//! KV lookup) and from one whose copies kept them (no lookup), side by side.
//!
//! Setup, once: `n` messages published through
//! `TracePropagationLayer::new().fallback(kv)` to `bench.intact.job-<i>`
//! (headers, and a KV record keyed on subject token 2, `job-<i>`), then the
//! same payloads, without headers, to `bench.stripped.job-<i>`, which key on
//! the same token. Each run consumes all `n` from a fresh ephemeral pull
//! consumer (`AckPolicy::None`, as the KV row's check does; the consumer is
//! created before the clock starts and deleted after it stops) on the
//! consumer's connection.

use super::*;
use std::cell::RefCell;

use async_nats::jetstream::kv;

const BUCKET: &str = "bench_stripped_carriers";
/// Messages per `fetch()` batch.
const FETCH_BATCH: usize = 500;
/// Consecutive empty `fetch()` batches before a run gives up.
const EMPTY_FETCHES: usize = 100;

/// What one side of a row saw, summed over its runs (warm-up included).
#[derive(Default, Clone, Copy)]
pub(crate) struct Tally {
    runs: u64,
    messages: u64,
    reads: u64,
    read_failures: u64,
    from_headers: u64,
    from_kv: u64,
    other: u64,
}

impl Tally {
    fn count(&mut self, cx: &opentelemetry::Context) {
        self.messages += 1;
        match cx.extraction().map(|r| r.source()) {
            Some(ContextSource::Headers) => self.from_headers += 1,
            Some(ContextSource::Kv) => self.from_kv += 1,
            _ => self.other += 1,
        }
    }

    fn add(&mut self, run: &Tally) {
        self.runs += run.runs;
        self.messages += run.messages;
        self.reads += run.reads;
        self.read_failures += run.read_failures;
        self.from_headers += run.from_headers;
        self.from_kv += run.from_kv;
        self.other += run.other;
    }

    fn line(&self, side: &str) -> String {
        let runs = self.runs.max(1);
        format!(
            "{side}: {} KV reads per run ({} failed), contexts from KV {}, from headers {}, other {} (of {} messages in {} runs)",
            self.reads / runs,
            self.read_failures,
            self.from_kv,
            self.from_headers,
            self.other,
            self.messages,
            self.runs
        )
    }
}

#[derive(Clone, Copy)]
enum Pull {
    Messages,
    Fetch(usize),
}

/// One side: the stream, its filter, and its own `KvFallback` (own stats).
struct Side {
    stream: jetstream::stream::Stream,
    filter: &'static str,
    fallback: KvFallback,
    tally: RefCell<Tally>,
}

impl Side {
    fn new(
        stream: &jetstream::stream::Stream,
        filter: &'static str,
        store: &kv::Store,
        js: &jetstream::Context,
    ) -> Self {
        Self {
            stream: stream.clone(),
            filter,
            fallback: KvFallback::new(store.clone(), FallbackKey::subject_token(2))
                .batch_reads(js.clone()),
            tally: RefCell::default(),
        }
    }

    /// Consumes `n` messages through the adapter; the time it took.
    async fn consume(&self, pull: Pull, lookahead: Option<usize>, n: usize) -> Result<Duration> {
        let pull_consumer = self
            .stream
            .create_consumer(consumer::pull::Config {
                ack_policy: consumer::AckPolicy::None,
                filter_subject: self.filter.into(),
                ..Default::default()
            })
            .await?;
        let before = self.fallback.stats();
        let mut tally = Tally::default();
        let start = Instant::now();
        match pull {
            Pull::Messages => {
                let mut messages = pull_consumer
                    .messages()
                    .await?
                    .with_trace_context()
                    .fallback(self.fallback.clone());
                if let Some(window) = lookahead {
                    messages = messages.kv_lookahead(window);
                }
                for _ in 0..n {
                    let (message, cx) = next(&mut messages).await??;
                    tally.count(&cx);
                    std::hint::black_box((&message, &cx));
                }
            }
            Pull::Fetch(batch) => {
                let (mut got, mut empty) = (0, 0);
                while got < n {
                    let mut messages = pull_consumer
                        .fetch()
                        .max_messages(batch.min(n - got))
                        .messages()
                        .await?
                        .with_trace_context()
                        .fallback(self.fallback.clone());
                    if let Some(window) = lookahead {
                        messages = messages.kv_lookahead(window);
                    }
                    let before_batch = got;
                    while let Some(item) = next_or_end(&mut messages).await? {
                        let (message, cx) = item?;
                        tally.count(&cx);
                        std::hint::black_box((&message, &cx));
                        got += 1;
                    }
                    empty = if got == before_batch { empty + 1 } else { 0 };
                    if empty >= EMPTY_FETCHES {
                        return Err(format!("{EMPTY_FETCHES} empty fetches at {got}/{n}").into());
                    }
                }
            }
        }
        let elapsed = start.elapsed();
        let after = self.fallback.stats();
        let name = pull_consumer.cached_info().name.clone();
        self.stream.delete_consumer(&name).await?;
        tally.runs = 1;
        tally.reads = after.reads - before.reads;
        tally.read_failures = after.read_failures - before.read_failures;
        self.tally.borrow_mut().add(&tally);
        Ok(elapsed)
    }
}

/// The next item or the end of a stream that ends (`fetch()`), or an error
/// after 10 s.
async fn next_or_end<S: futures::Stream + Unpin>(stream: &mut S) -> Result<Option<S::Item>> {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .map_err(|_| "no message for 10 s (lost?)".into())
}

/// Publishes the intact copies through the layer (KV records written) and
/// the stripped copies raw, `window` acks in flight.
async fn setup(js: &jetstream::Context, s: &Settings, payload: &Bytes) -> Result<kv::Store> {
    for (name, subject) in [
        ("BENCH_INTACT", "bench.intact.*"),
        ("BENCH_STRIPPED", "bench.stripped.*"),
    ] {
        js.create_stream(stream::Config {
            name: name.into(),
            subjects: vec![subject.into()],
            storage: s.storage,
            ..Default::default()
        })
        .await?;
    }
    let store = match s.storage {
        stream::StorageType::File => KvFallback::open_bucket(js, BUCKET).await?,
        stream::StorageType::Memory => {
            js.create_key_value(kv::Config {
                bucket: BUCKET.into(),
                history: 1,
                max_age: nats_otel::fallback::DEFAULT_MAX_AGE,
                storage: stream::StorageType::Memory,
                ..Default::default()
            })
            .await?
        }
    };
    let fallback = KvFallback::new(store.clone(), FallbackKey::subject_token(2));
    let mut svc = TracePropagationLayer::new()
        .fallback(fallback.clone())
        .layer(JetStreamPublisher::new(js.clone()));
    let (n, window) = (s.kv_messages, s.window);
    let mut in_flight = FuturesUnordered::new();
    for i in 0..n {
        let publish = Publish::new(format!("bench.intact.job-{i}"), payload.clone());
        in_flight.push(svc.ready().await?.call(publish));
        if in_flight.len() >= window {
            in_flight.next().await.ok_or("no future")??;
        }
    }
    while let Some(done) = in_flight.next().await {
        done?;
    }
    let stats = fallback.stats();
    if stats.writes != n as u64 || stats.write_failures != 0 {
        return Err(format!("setup: {stats:?} for {n} messages").into());
    }
    let mut in_flight = FuturesUnordered::new();
    for i in 0..n {
        let publish = js.publish(format!("bench.stripped.job-{i}"), payload.clone());
        in_flight.push(async move { publish.await?.await });
        if in_flight.len() >= window {
            in_flight.next().await.ok_or("no future")??;
        }
    }
    while let Some(done) = in_flight.next().await {
        done?;
    }
    Ok(store)
}

/// The rows (stripped in the nats_otel column, intact in the raw column),
/// and the KV-read lines printed under the table.
pub(crate) async fn stripped_headers(
    js: &jetstream::Context,
    consumer: &async_nats::Client,
    s: &Settings,
    payload: &Bytes,
) -> Result<(Vec<Row>, Vec<String>)> {
    setup(js, s, payload).await?;
    // The consume side on its own connection, as a separate process would.
    let cjs = jetstream::new(consumer.clone());
    let store = cjs.get_key_value(BUCKET).await?;
    let intact_stream = cjs.get_stream("BENCH_INTACT").await?;
    let stripped_stream = cjs.get_stream("BENCH_STRIPPED").await?;
    let n = s.kv_messages;
    let specs = [
        (
            "consume, `messages()`, `.fallback(kv)`: headers stripped (nats_otel column, KV lookups batched by `batch_reads`, kv_lookahead 256 default) vs intact (raw column)",
            ">= 0.5",
            Pull::Messages,
            None,
        ),
        (
            "consume, `fetch()` batches of 500, `.fallback(kv)`: headers stripped (nats_otel column, KV lookups batched by `batch_reads`, kv_lookahead 256 default) vs intact (raw column)",
            ">= 0.5",
            Pull::Fetch(FETCH_BATCH),
            None,
        ),
        (
            "consume, `messages()`, `.fallback(kv)`, `kv_lookahead(1)`: headers stripped (nats_otel column, one lookup at a time) vs intact (raw column)",
            "(what the overlap buys)",
            Pull::Messages,
            Some(1),
        ),
    ];
    let (mut rows, mut lines) = (Vec::new(), Vec::new());
    for (name, target, pull, lookahead) in specs {
        let stripped = Side::new(&stripped_stream, "bench.stripped.*", &store, &cjs);
        let intact = Side::new(&intact_stream, "bench.intact.*", &store, &cjs);
        let row = pair(
            name,
            target,
            s.rounds,
            n,
            || stripped.consume(pull, lookahead, n),
            || intact.consume(pull, lookahead, n),
        )
        .await?;
        let label = match (pull, lookahead) {
            (Pull::Messages, None) => "messages()".to_owned(),
            (Pull::Fetch(batch), None) => format!("fetch({batch})"),
            (Pull::Messages, Some(w)) => format!("messages(), kv_lookahead({w})"),
            (Pull::Fetch(batch), Some(w)) => format!("fetch({batch}), kv_lookahead({w})"),
        };
        let (low, high) = row
            .ratios
            .iter()
            .fold((f64::MAX, f64::MIN), |(l, h), &r| (l.min(r), h.max(r)));
        lines.push(format!(
            "KV fallback consume, {label}: ratio per round {low:.3}..{high:.3}; {}; {} (target: 0 reads)",
            stripped.tally.borrow().line("stripped"),
            intact.tally.borrow().line("intact")
        ));
        rows.push(row);
    }
    if std::env::var("NATS_OTEL_BENCH_STRIPPED_PROBE").as_deref() == Ok("1") {
        lines.extend(probe(consumer, s).await?);
    }
    if let [default, _, one] = &rows[..] {
        lines.push(format!(
            "KV fallback consume, messages(), stripped: kv_lookahead 256 (default) / kv_lookahead(1) = {:.2}x (medians of separate rows, not paired)",
            median(&default.ours) / median(&one.ours)
        ));
    }
    Ok((rows, lines))
}

/// `n` raw `kv.get`s, `window` in flight: the lookup ceiling.
async fn raw_get_rate(store: &kv::Store, n: usize, window: usize) -> Result<f64> {
    let start = Instant::now();
    let mut in_flight = futures::stream::FuturesOrdered::new();
    for i in 0..n {
        in_flight.push_back(store.get(format!("job-{i}")));
        if in_flight.len() >= window {
            in_flight
                .next()
                .await
                .ok_or("no future")??
                .ok_or("missing")?;
        }
    }
    while let Some(done) = in_flight.next().await {
        done?.ok_or("missing")?;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// `n` records read by batched direct gets (`multi_last`, server 2.11+,
/// not in async-nats 0.51's API), `batch` keys per request, one request at
/// a time.
async fn batched_get_rate(client: &async_nats::Client, n: usize, batch: usize) -> Result<f64> {
    let stream = format!("KV_{BUCKET}");
    let start = Instant::now();
    let mut got = 0;
    for first in (0..n).step_by(batch) {
        let subjects: Vec<String> = (first..(first + batch).min(n))
            .map(|i| format!("$KV.{BUCKET}.job-{i}"))
            .collect();
        let request = serde_json::json!({ "multi_last": subjects, "batch": subjects.len() });
        let inbox = client.new_inbox();
        let mut replies = client.subscribe(inbox.clone()).await?;
        client
            .publish_with_reply(
                format!("$JS.API.DIRECT.GET.{stream}"),
                inbox,
                serde_json::to_vec(&request)?.into(),
            )
            .await?;
        loop {
            let reply = next(&mut replies).await?;
            match reply.status {
                None => got += 1,
                Some(status) if status.as_u16() == 204 => break,
                Some(status) => return Err(format!("direct get: {status}").into()),
            }
        }
    }
    if got != n {
        return Err(format!("batched get: {got} of {n}").into());
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Where the time of a stripped consume goes (`NATS_OTEL_BENCH_STRIPPED_PROBE=1`):
/// raw lookups by window, batched reads, the adapter by window.
pub(crate) async fn probe(consumer: &async_nats::Client, s: &Settings) -> Result<Vec<String>> {
    let cjs = jetstream::new(consumer.clone());
    let store = cjs.get_key_value(BUCKET).await?;
    let stripped_stream = cjs.get_stream("BENCH_STRIPPED").await?;
    let n = s.kv_messages;
    let mut lines = Vec::new();
    for window in [1, 8, 32, 128, 512] {
        let rate = raw_get_rate(&store, n, window).await?;
        lines.push(format!(
            "probe: raw kv.get, {window} in flight: {rate:.0}/s"
        ));
    }
    for batch in [32, 256] {
        let rate = batched_get_rate(consumer, n, batch).await?;
        lines.push(format!("probe: batched direct get (multi_last), {batch} keys per request, one request at a time: {rate:.0}/s"));
    }
    for window in [1, 8, 32, 128, 256, 512] {
        let side = Side::new(&stripped_stream, "bench.stripped.*", &store, &cjs);
        let took = side.consume(Pull::Messages, Some(window), n).await?;
        lines.push(format!(
            "probe: adapter, messages(), stripped, kv_lookahead({window}): {:.0} msg/s",
            n as f64 / took.as_secs_f64()
        ));
    }
    Ok(lines)
}
