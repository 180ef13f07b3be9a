//! A 3-node JetStream cluster on loopback (routes between the nodes, R3
//! streams): producer through the layer on node 1, consumer through the
//! adapter on node 3, and the stream leader killed (SIGKILL) mid-stream.
//!
//! Each job is published inside its own root span, whose trace id the
//! producer records (job id → trace id) before the first attempt; failed
//! publishes are retried inside the same span with the same `Nats-Msg-Id`,
//! so JetStream de-duplicates a retry whose first attempt was stored but not
//! acknowledged. The consumer acks each message and de-duplicates
//! redeliveries by stream sequence. Asserted: published (acked) == consumed
//! (acked, unique stream sequences), the server shows nothing pending or
//! unacknowledged, and every consumed message's trace id is the one its
//! producer recorded.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{pull, AckPolicy, PullConsumer};
use async_nats::jetstream::{self, publish::PublishAck, stream, AckKind};
use futures::StreamExt;
use nats_otel::{
    ContextSource, JetStreamPublisher, MessageContextExt, Publish, TraceContextStreamExt,
    TracePropagationLayer,
};
use opentelemetry::trace::{TraceContextExt, TraceId};
use tower::{Layer, Service, ServiceExt};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::support::server::{cluster, NatsServer};
use crate::support::telemetry::*;
use crate::support::wait;

/// Jobs per test; the leader is killed once half of them are acknowledged.
const JOBS: u64 = 200;
/// Upper bound on one test's publishing or consuming.
const DEADLINE: Duration = Duration::from_secs(90);

type TraceIds = RefCell<HashMap<u64, TraceId>>;

async fn connect(node: &NatsServer) -> async_nats::Client {
    async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .connect(node.url())
        .await
        .unwrap_or_else(|e| panic!("connect to {}: {e}", node.url()))
}

/// Retries `make` for up to 20 s: right after the cluster forms, the meta
/// leader may still move.
async fn retry<T, E: std::fmt::Display, F: Future<Output = Result<T, E>>>(
    what: &str,
    make: impl FnMut() -> F,
) -> T {
    wait::retry(what, Duration::from_secs(20), make).await
}

async fn r3_stream_and_consumer(
    js_producer: &jetstream::Context,
    js_consumer: &jetstream::Context,
    name: &str,
    subjects: &str,
) -> PullConsumer {
    retry("create the R3 stream", || {
        js_producer.create_stream(stream::Config {
            name: name.into(),
            subjects: vec![subjects.into()],
            num_replicas: 3,
            ..Default::default()
        })
    })
    .await;
    let stream = retry("bind the stream from node 3", || {
        js_consumer.get_stream(name)
    })
    .await;
    retry("create the durable consumer", || {
        stream.create_consumer(pull::Config {
            durable_name: Some("worker".into()),
            ack_policy: AckPolicy::Explicit,
            ack_wait: Duration::from_secs(3),
            ..Default::default()
        })
    })
    .await
}

/// The server name of the leader of stream `name` (e.g. `n2`).
async fn stream_leader(js: &jetstream::Context, name: &str) -> String {
    retry("find the stream leader", || leader_of(js, name)).await
}

async fn leader_of(js: &jetstream::Context, name: &str) -> Result<String, async_nats::Error> {
    let info = js.get_stream(name).await?.get_info().await?;
    info.cluster
        .and_then(|c| c.leader)
        .ok_or_else(|| format!("stream {name} has no leader yet").into())
}

fn node_index(nodes: &[NatsServer], name: &str) -> usize {
    nodes
        .iter()
        .position(|n| n.server_name() == Some(name))
        .unwrap_or_else(|| panic!("no node named {name}"))
}

/// Publishes job `id` inside a root span of its own, recording the span's
/// trace id first; retries a failed publish inside the same span with the
/// same `Nats-Msg-Id` until it is acknowledged. Returns the attempts made.
async fn publish_job<S, E>(
    publisher: &mut S,
    subject_prefix: &str,
    id: u64,
    traces: &TraceIds,
) -> u32
where
    S: Service<Publish, Response = PublishAck, Error = E>,
    E: std::fmt::Display,
{
    let span = tracing::info_span!(parent: None, "job", job = id);
    async {
        let trace = tracing::Span::current()
            .context()
            .span()
            .span_context()
            .trace_id();
        assert_ne!(trace, TraceId::INVALID);
        traces.borrow_mut().insert(id, trace);
        let deadline = Instant::now() + DEADLINE;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let publish = Publish::new(format!("{subject_prefix}.{id}"), id.to_string())
                .header("Nats-Msg-Id", &format!("job-{id}"))
                .unwrap();
            let outcome = match publisher.ready().await {
                Ok(ready) => ready.call(publish).await,
                Err(e) => Err(e),
            };
            match outcome {
                Ok(_ack) => return attempts,
                Err(e) if Instant::now() < deadline => {
                    if attempts == 1 || attempts % 20 == 0 {
                        eprintln!("job {id}: publish attempt {attempts} failed: {e}; retrying");
                    }
                    // Back-off between attempts; the loop ends at `deadline`.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("job {id} never acknowledged: {e}"),
            }
        }
    }
    .instrument(span)
    .await
}

/// Publishes jobs `0..JOBS` on `<subject_prefix>.<id>` with [`publish_job`],
/// setting `half_done` once job `JOBS / 2` is acknowledged. Returns the jobs
/// published and the attempts made.
async fn publish_jobs<S, E>(
    publisher: &mut S,
    subject_prefix: &str,
    traces: &TraceIds,
    half_done: &Cell<bool>,
) -> (u64, u32)
where
    S: Service<Publish, Response = PublishAck, Error = E>,
    E: std::fmt::Display,
{
    let mut published = 0;
    let mut attempts = 0;
    for id in 0..JOBS {
        attempts += publish_job(publisher, subject_prefix, id, traces).await;
        published += 1;
        if id == JOBS / 2 {
            half_done.set(true);
        }
    }
    (published, attempts)
}

/// What the consumer saw.
#[derive(Default, Debug)]
struct Consumed {
    /// Stream sequence → job id, for handled and acked messages.
    by_sequence: BTreeMap<u64, u64>,
    /// Deliveries of a sequence already handled (redeliveries).
    duplicates: u64,
    /// Deliveries whose context could not be recovered and that were
    /// negatively acknowledged for redelivery (KV test only).
    nacked: u64,
    /// Error items from the messages stream.
    stream_errors: u64,
    /// Times the messages stream ended and was re-created.
    recreated: u64,
    /// Trace mismatches: (job, expected, got).
    wrong_trace: Vec<(u64, TraceId, TraceId)>,
    /// Sources other than the expected one: (job, source, record).
    wrong_source: Vec<(u64, String)>,
}

/// Consumes until `expected` distinct stream sequences were handled and the
/// server shows nothing pending or unacknowledged.
///
/// `make_stream` builds the adapter-wrapped `messages()` stream (again when
/// it ends). A message whose source is not `source` is nacked when
/// `nack_other_sources` (its context is checked on redelivery), else recorded
/// as wrong.
async fn consume<S, E, F, Fut>(
    consumer: &PullConsumer,
    mut make_stream: F,
    expected: u64,
    source: ContextSource,
    nack_other_sources: bool,
    traces: &TraceIds,
) -> Consumed
where
    F: FnMut() -> Fut,
    Fut: Future<Output = S>,
    S: futures::Stream<Item = Result<(jetstream::Message, opentelemetry::Context), E>> + Unpin,
    E: std::fmt::Display,
{
    let mut out = Consumed::default();
    let mut messages = make_stream().await;
    let deadline = Instant::now() + DEADLINE;
    loop {
        assert!(
            Instant::now() < deadline,
            "consumed {} of {expected} within {DEADLINE:?}: {out:?}",
            out.by_sequence.len()
        );
        if out.by_sequence.len() as u64 >= expected {
            if let Ok(info) = consumer.get_info().await {
                if info.num_ack_pending == 0 && info.num_pending == 0 {
                    return out;
                }
            }
        }
        let item = match tokio::time::timeout(Duration::from_secs(1), messages.next()).await {
            Err(_idle) => continue,
            Ok(None) => {
                out.recreated += 1;
                messages = make_stream().await;
                continue;
            }
            Ok(Some(Err(e))) => {
                out.stream_errors += 1;
                eprintln!("messages stream error: {e}");
                continue;
            }
            Ok(Some(Ok(item))) => item,
        };
        let (message, cx) = item;
        let info = message.info().expect("JetStream metadata");
        let sequence = info.stream_sequence;
        let job: u64 = std::str::from_utf8(&message.payload)
            .unwrap()
            .parse()
            .unwrap();
        let record = cx.extraction().expect("extraction record").clone();
        if record.source() != source {
            if nack_other_sources {
                out.nacked += 1;
                eprintln!("job {job} (seq {sequence}): {record}; nak for redelivery");
                let _ = message
                    .ack_with(AckKind::Nak(Some(Duration::from_millis(200))))
                    .await;
                continue;
            }
            out.wrong_source.push((job, record.to_string()));
        }
        let got = cx.span().span_context().trace_id();
        let expected_trace = traces.borrow().get(&job).copied();
        match expected_trace {
            Some(t) if t == got => {}
            Some(t) => out.wrong_trace.push((job, t, got)),
            None => panic!("job {job} consumed but never published"),
        }
        drop(cx);
        if out.by_sequence.insert(sequence, job).is_some() {
            out.duplicates += 1;
        }
        // Redelivered if this ack is lost; de-duplicated by sequence above.
        for _ in 0..3 {
            if message.double_ack().await.is_ok() {
                break;
            }
        }
    }
}

/// Kills the node named `leader` once `half_done` is set.
async fn kill_when(half_done: &Cell<bool>, nodes: &RefCell<Vec<NatsServer>>, leader: &str) {
    wait::until("half the jobs acknowledged", DEADLINE, || async move {
        half_done.get()
    })
    .await;
    let mut nodes = nodes.borrow_mut();
    let index = node_index(&nodes, leader);
    eprintln!("killing the stream leader {leader} (node {})", index + 1);
    nodes[index].kill();
}

fn assert_all_consumed(consumed: &Consumed, traces: &TraceIds, published: u64) {
    let traces = traces.borrow();
    assert_eq!(published, JOBS, "every job was acknowledged");
    assert_eq!(
        consumed.by_sequence.len() as u64,
        published,
        "published (acked) == consumed (acked, unique stream sequences): {consumed:?}"
    );
    let mut jobs: Vec<u64> = consumed.by_sequence.values().copied().collect();
    jobs.sort_unstable();
    jobs.dedup();
    assert_eq!(
        jobs,
        (0..JOBS).collect::<Vec<_>>(),
        "each job stored once (Nats-Msg-Id de-duplicated the retries)"
    );
    assert_eq!(traces.len() as u64, JOBS);
    assert!(
        consumed.wrong_trace.is_empty(),
        "{} messages with another trace than their producer's: {:?}",
        consumed.wrong_trace.len(),
        consumed.wrong_trace
    );
    assert!(
        consumed.wrong_source.is_empty(),
        "{} messages with an unexpected context source: {:?}",
        consumed.wrong_source.len(),
        consumed.wrong_source
    );
}

#[tokio::test]
async fn r3_stream_survives_leader_kill_with_every_trace_intact() {
    let telemetry = Telemetry::install();
    let nodes = cluster(3);
    let producer_client = connect(&nodes[0]).await;
    let consumer_client = connect(&nodes[2]).await;
    let js1 = jetstream::new(producer_client);
    let js3 = jetstream::new(consumer_client);
    let consumer = r3_stream_and_consumer(&js1, &js3, "CJOBS", "cjobs.>").await;
    let leader = stream_leader(&js1, "CJOBS").await;

    let traces = TraceIds::default();
    let mut publisher = TracePropagationLayer::new().layer(JetStreamPublisher::new(js1.clone()));

    let nodes = RefCell::new(nodes);
    let half_done = Cell::new(false);
    let producer = publish_jobs(&mut publisher, "cjobs", &traces, &half_done);
    let consumed = consume(
        &consumer,
        || async { consumer.messages().await.unwrap().with_trace_context() },
        JOBS,
        ContextSource::Headers,
        false,
        &traces,
    );
    let killer = kill_when(&half_done, &nodes, &leader);
    let ((published, attempts), consumed, ()) = tokio::join!(producer, consumed, killer);
    eprintln!(
        "killed leader {leader}; {published} jobs in {attempts} publish attempts; consumed: \
         {} unique, {} redelivered, {} stream errors, messages() re-created {} times",
        consumed.by_sequence.len(),
        consumed.duplicates,
        consumed.stream_errors,
        consumed.recreated
    );
    assert_all_consumed(&consumed, &traces, published);

    // The stream moved: a new leader on a surviving node.
    let new_leader = stream_leader(&js3, "CJOBS").await;
    assert_ne!(new_leader, leader, "a new stream leader was elected");

    // The process spans (one per delivery) each sit in their job's trace.
    let traces = traces.borrow();
    let mut checked = 0;
    for process in telemetry.spans() {
        let Some(job) = process.name.strip_prefix("process cjobs.") else {
            continue;
        };
        let job: u64 = job.parse().unwrap();
        assert_eq!(
            Some(&trace_id(&process)),
            traces.get(&job),
            "process span of job {job}"
        );
        checked += 1;
    }
    assert!(checked as u64 >= JOBS, "{checked} process spans");
}

#[cfg(feature = "kv")]
mod kv_fallback {
    use super::*;
    use std::pin::Pin;
    use std::task::{Context as TaskContext, Poll};

    use async_nats::jetstream::kv;
    use async_nats::HeaderMap;
    use nats_otel::{
        fallback::FallbackKey, fallback::WritePolicy, publish::PublishParts, KvFallback,
    };

    /// Stands in for a bridge that forwards only the payload (and the JetStream
    /// message id) into the stream: the trace headers are lost in transit.
    #[derive(Clone)]
    struct HeaderDroppingRelay {
        js: jetstream::Context,
    }

    impl Service<Publish> for HeaderDroppingRelay {
        type Response = PublishAck;
        type Error = async_nats::Error;
        type Future = Pin<Box<dyn Future<Output = Result<PublishAck, async_nats::Error>> + Send>>;

        fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: Publish) -> Self::Future {
            let js = self.js.clone();
            let PublishParts {
                subject,
                payload,
                headers,
                ..
            } = request.into_parts();
            let mut forwarded = HeaderMap::new();
            if let Some(id) = headers.get("Nats-Msg-Id") {
                forwarded.insert("Nats-Msg-Id", id.clone());
            }
            Box::pin(async move {
                Ok(js
                    .publish_with_headers(subject, forwarded, payload)
                    .await?
                    .await?)
            })
        }
    }

    #[tokio::test]
    async fn kv_fallback_at_r3_survives_its_leader_kill_with_headers_stripped() {
        let _telemetry = Telemetry::install();
        let nodes = cluster(3);
        let producer_client = connect(&nodes[0]).await;
        let consumer_client = connect(&nodes[2]).await;
        let js1 = jetstream::new(producer_client);
        let js3 = jetstream::new(consumer_client);
        let consumer = r3_stream_and_consumer(&js1, &js3, "RJOBS", "rjobs.>").await;
        let bucket = retry("create the R3 fallback bucket", || {
            js1.create_key_value(kv::Config {
                bucket: "carriers".into(),
                history: 1,
                max_age: Duration::from_secs(600),
                num_replicas: 3,
                ..Default::default()
            })
        })
        .await;
        let consumer_bucket = retry("bind the bucket from node 3", || {
            js3.get_key_value("carriers")
        })
        .await;
        let kv_leader = stream_leader(&js1, "KV_carriers").await;

        // A lost KV write fails the publish (and is retried), so every stored
        // job has its carrier.
        let fallback = KvFallback::new(bucket, FallbackKey::subject_token(1))
            .on_write_failure(WritePolicy::Required);
        let consumer_fallback = KvFallback::new(consumer_bucket, FallbackKey::subject_token(1))
            .lookup_timeout(Duration::from_secs(5));
        let mut publisher = TracePropagationLayer::new()
            .fallback(fallback.clone())
            .layer(HeaderDroppingRelay { js: js1.clone() });

        let traces = TraceIds::default();
        let nodes = RefCell::new(nodes);
        let half_done = Cell::new(false);
        let producer = publish_jobs(&mut publisher, "rjobs", &traces, &half_done);
        let consumed = consume(
            &consumer,
            || async {
                consumer
                    .messages()
                    .await
                    .unwrap()
                    .with_trace_context()
                    .fallback(consumer_fallback.clone())
            },
            JOBS,
            ContextSource::Kv,
            true,
            &traces,
        );
        let killer = kill_when(&half_done, &nodes, &kv_leader);
        let ((published, attempts), consumed, ()) = tokio::join!(producer, consumed, killer);
        eprintln!(
            "killed KV leader {kv_leader}; {published} jobs in {attempts} publish attempts \
             ({:?} on the producer's fallback); consumed: {} unique, {} redelivered, {} nacked after \
             a failed lookup, {} stream errors, messages() re-created {} times; consumer fallback \
             {:?}",
            fallback.stats(),
            consumed.by_sequence.len(),
            consumed.duplicates,
            consumed.nacked,
            consumed.stream_errors,
            consumed.recreated,
            consumer_fallback.stats()
        );
        assert_all_consumed(&consumed, &traces, published);
        assert!(
            fallback.stats().writes >= JOBS,
            "every job's carrier written: {:?}",
            fallback.stats()
        );
        let new_leader = stream_leader(&js3, "KV_carriers").await;
        assert_ne!(new_leader, kv_leader, "the bucket has a new leader");
    }
}
