//! Server hops rows: core publish through the layer with sampled spans,
//! `server_hops(...)` on (a running `ServerHops` bridge) vs off.
//!
//! Both sides publish through `TracePropagationLayer::new()` under the
//! sampled dispatch (the `core_sampled` set-up); the hops-on side adds
//! `.server_hops(bridge.publish_settings(), ratio)`. The bridge runs for the
//! whole row, on its own client connection and as a task of the benchmark's
//! runtime (with 0 workers: on the publishing thread), making its spans with
//! a tracer of its own sampled provider (`AlwaysOn`, batch processor, no-op
//! exporter: the same kind the sampled rows use).
//!
//! nats-server publishes trace events through its internal send queue, not
//! in line with the traced message, so the barrier alone does not say the
//! events are out. Each timed run (on both sides) therefore ends with the
//! publish loop, the barrier, then waiting for the bridge to catch up:
//! every event for the run's traced messages has reached the bridge's
//! connection (counted by its `in_messages`), then a sentinel published
//! behind them onto the destination has gone through the bridge (it counts
//! as a malformed event). The bridge's work is inside the hops-on time, and
//! no backlog spills into the next (hops-off) run.

use super::*;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use nats_otel::hops::{ServerHops, TRACE_DEST_HEADER};

/// The subject the server publishes its trace events to.
const DEST: &str = "bench.hops.events";
/// How long to wait for the server's events to reach the bridge before
/// giving up on them (they are then reported as not delivered).
const EVENTS_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for one sentinel before sending another (the first may
/// have been dropped by a full subscription channel).
const SENTINEL_TIMEOUT: Duration = Duration::from_secs(2);

/// The bridge's side of a row: what it has received, and how many of the
/// messages it got are the benchmark's sentinels.
struct Bridge {
    hops: ServerHops,
    client: async_nats::Client,
    sentinels: Cell<u64>,
    /// Events given up on (never reached the bridge's connection), and the
    /// runs that waited `EVENTS_TIMEOUT` for them.
    missing: Cell<u64>,
    timeouts: Cell<u64>,
    /// `Event::SlowConsumer` reports on the bridge's connection (async-nats
    /// sends one per message it drops, when its event channel has room).
    slow_consumer: Arc<AtomicU64>,
}

impl Bridge {
    fn in_messages(&self) -> u64 {
        self.client.statistics().in_messages.load(Ordering::Relaxed)
    }

    /// Returns once the events of the `traced` messages published so far
    /// have reached the bridge's connection and the bridge has handled them
    /// (or async-nats has dropped them).
    async fn catch_up(&self, publisher: &async_nats::Client, traced: u64) -> Result<()> {
        let deadline = Instant::now() + EVENTS_TIMEOUT;
        loop {
            let expected = traced - self.missing.get() + self.sentinels.get();
            let arrived = self.in_messages();
            if arrived >= expected {
                break;
            }
            if Instant::now() > deadline {
                // Not waited for again in later runs.
                self.missing.set(self.missing.get() + (expected - arrived));
                self.timeouts.set(self.timeouts.get() + 1);
                eprintln!(
                    "hops: {} of {traced} trace events reached the bridge after {EVENTS_TIMEOUT:?}; going on without the rest",
                    arrived.saturating_sub(self.sentinels.get())
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // Everything the bridge will get is in its subscription channel (or
        // dropped): a sentinel published now arrives behind it.
        self.sentinel(publisher).await
    }

    /// Publishes a sentinel onto the destination from `from` and returns
    /// once the bridge has handled it (sending another when one is lost).
    async fn sentinel(&self, from: &async_nats::Client) -> Result<()> {
        loop {
            let seen = self.hops.stats().malformed;
            from.publish(DEST, Bytes::from_static(b"nats-otel bench sentinel"))
                .await?;
            from.flush().await?;
            self.sentinels.set(self.sentinels.get() + 1);
            let deadline = Instant::now() + SENTINEL_TIMEOUT;
            while Instant::now() < deadline {
                if self.hops.stats().malformed > seen {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            eprintln!(
                "hops: sentinel not seen by the bridge after {SENTINEL_TIMEOUT:?}; sending another"
            );
        }
    }
}

/// The row "core publish, sampled, server hops on vs off" at `ratio`, and
/// the lines reporting the bridge's stats; `None` for the row when the
/// server's version is not safe for message tracing (the bridge stays
/// disabled).
pub(crate) async fn core_hops(
    publisher: &async_nats::Client,
    barrier: &tokio::sync::Mutex<Barrier>,
    server: &server::NatsServer,
    s: &Settings,
    payload: &Bytes,
    ratio: f64,
    (name, target): (&'static str, &'static str),
) -> Result<(Option<Row>, Vec<String>)> {
    let log_start = server.log().len();
    let slow_before = slow_consumers(server);
    let provider = sdk::provider(true);
    let slow_consumer = Arc::new(AtomicU64::new(0));
    let client = {
        let slow_consumer = Arc::clone(&slow_consumer);
        async_nats::ConnectOptions::new()
            .name("nats-otel bench: server hops bridge")
            .event_callback(move |event| {
                let slow_consumer = Arc::clone(&slow_consumer);
                async move {
                    match event {
                        async_nats::Event::SlowConsumer(_) => {
                            slow_consumer.fetch_add(1, Ordering::Relaxed);
                        }
                        other => eprintln!("hops bridge connection event: {other}"),
                    }
                }
            })
            .connect(server.url())
            .await?
    };
    let hops = ServerHops::spawn(client.clone(), DEST, provider.tracer("nats-server")).await?;
    if let Some(reason) = hops.disabled_reason() {
        let line = format!("{name}: skipped, the bridge is disabled: {reason}");
        eprintln!("{line}");
        let _ = provider.shutdown();
        return Ok((None, vec![line]));
    }
    let settings = hops.publish_settings();
    let bridge = Bridge {
        hops,
        client,
        sentinels: Cell::new(0),
        missing: Cell::new(0),
        timeouts: Cell::new(0),
        slow_consumer,
    };
    // `ServerHops::spawn` confirms its SUB with `Client::flush`, which only
    // writes it to the socket: the server may not have the subscription yet,
    // and would send the first events to nobody. A sentinel published by the
    // bridge's own connection, behind its SUB, comes back once it has.
    bridge.sentinel(&bridge.client).await?;

    let subject = Subject::from("bench.core");
    let n = s.messages;
    // Messages that left the layer with `Nats-Trace-Dest`, counted between
    // the layer and `CorePublisher` (a header lookup on both sides).
    let traced = Rc::new(Cell::new(0u64));
    let runs = Cell::new(0u64);
    // Per side, the time spent waiting for the bridge after the barrier
    // (the first: the warm-up run).
    let waits: [RefCell<Vec<f64>>; 2] = Default::default();
    let through_layer = |on: bool| {
        let mut layer = TracePropagationLayer::new();
        if on {
            layer = layer.server_hops(settings.clone(), ratio);
            runs.set(runs.get() + 1);
        }
        let count = Rc::clone(&traced);
        let inner = CorePublisher::new(publisher.clone()).map_request(move |p: Publish| {
            if p.header_map()
                .is_some_and(|h| h.get(TRACE_DEST_HEADER).is_some())
            {
                count.set(count.get() + 1);
            }
            p
        });
        let mut svc = layer.layer(inner);
        let (subject, traced, bridge, waits) = (&subject, &traced, &bridge, &waits);
        async move {
            let start = Instant::now();
            for _ in 0..n {
                svc.ready()
                    .await?
                    .call(Publish::new(subject.clone(), payload.clone()))
                    .await?;
            }
            barrier.lock().await.wait(publisher).await?;
            let published = start.elapsed();
            bridge.catch_up(publisher, traced.get()).await?;
            let took = start.elapsed();
            waits[usize::from(on)]
                .borrow_mut()
                .push((took - published).as_secs_f64() * 1e3);
            Ok(took)
        }
    };
    let row = pair(
        name,
        target,
        s.rounds,
        n,
        || through_layer(true),
        || through_layer(false),
    )
    .await?;

    let stats = bridge.hops.stats();
    let sentinels = bridge.sentinels.get();
    let traced = traced.get();
    let published = runs.get() * n as u64;
    // The sentinels are the bridge's malformed events; what is left are the
    // server's trace events.
    let delivered = bridge.in_messages().saturating_sub(sentinels);
    let received = stats.events_received.saturating_sub(stats.malformed);
    let lost = delivered.saturating_sub(received);
    let rounds = |v: &[f64], precision: usize| {
        v.iter()
            .map(|x| format!("{x:.precision$}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut lines = vec![
        format!(
            "{name}: per round (in run order), hops on [{}] msg/s, off [{}] msg/s, ratios [{}]",
            rounds(&row.ours, 0),
            rounds(&row.raw, 0),
            rounds(&row.ratios, 3)
        ),
        format!(
            "  {traced} of {published} hops-on messages carried Nats-Trace-Dest ({} runs of {n}, the warm-up included; ratio {ratio})",
            runs.get()
        ),
        format!(
            "  bridge: {received} trace events received for {traced} traced messages (one server: one event per message; {delivered} reached its connection, {} not delivered by the server), {} spans made, {} events without a span (no traceparent {}, invalid {}, unsampled {}), {} unknown entries; {} malformed, all of them the benchmark's {sentinels} sentinels",
            traced.saturating_sub(delivered),
            stats.spans_made,
            stats.no_traceparent + stats.invalid_traceparent + stats.unsampled,
            stats.no_traceparent,
            stats.invalid_traceparent,
            stats.unsampled,
            stats.unknown_entries,
            stats.malformed,
        ),
    ];
    lines.push(if lost > 0 {
        format!(
            "  events dropped by async-nats (the bridge's subscription channel was full: slow consumer): {lost} of {delivered} ({:.1} %), {} SlowConsumer reports",
            100.0 * lost as f64 / delivered.max(1) as f64,
            bridge.slow_consumer.load(Ordering::Relaxed)
        )
    } else {
        format!(
            "  events dropped by async-nats (slow consumer): none ({} SlowConsumer reports)",
            bridge.slow_consumer.load(Ordering::Relaxed)
        )
    });
    lines.push(format!(
        "  waiting for the bridge after the barrier (inside the timed runs): median {:.1} ms with hops on, {:.1} ms off; {} runs gave up on missing events after {EVENTS_TIMEOUT:?} (their times include the wait)",
        median(&waits[1].borrow()[1..]),
        median(&waits[0].borrow()[1..]),
        bridge.timeouts.get()
    ));
    // What the server says: slow consumers it cut off, warnings.
    let log = server.log();
    let notices: Vec<&str> = log
        .get(log_start..)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("[WRN]") || l.contains("[ERR]") || l.contains("Slow Consumer"))
        .collect();
    lines.push(format!(
        "  server: {} slow consumers (varz, during the row), {} warnings/errors in its log{}",
        slow_consumers(server).saturating_sub(slow_before),
        notices.len(),
        match notices.first() {
            Some(first) => format!(", the first: {first}"),
            None => String::new(),
        }
    ));
    bridge.hops.shutdown().await;
    let _ = provider.shutdown();
    Ok((Some(row), lines))
}

/// The server's slow-consumer count (`/varz`), 0 when unavailable.
fn slow_consumers(server: &server::NatsServer) -> u64 {
    server
        .monitor_json("/varz")
        .ok()
        .and_then(|v| v.get("slow_consumers").and_then(|n| n.as_u64()))
        .unwrap_or(0)
}
