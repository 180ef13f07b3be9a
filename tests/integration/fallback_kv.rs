//! The KV fallback against a real server: a relay drops the headers, the
//! consumer recovers the producer's context from the bucket; intact headers
//! cost no read; awkward ids round-trip; a deleted, slow or expired bucket
//! never loses a message; a failed write fails or records, by policy.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, stream};
use async_nats::Client;
use futures::StreamExt;
use nats_otel::fallback::{BucketError, KeyError};
use nats_otel::{
    consume::MessageMeta, consume::NoContextReason, fallback::FallbackKey, fallback::WritePolicy,
    propagation::TRACEPARENT, publish::Error as PublishError, publish::TracePropagation,
    ContextExtractingConsumer, ContextSource, CorePublisher, KvFallback, MessageContextExt,
    Publish, TraceContextStreamExt, TracePropagationLayer,
};
use opentelemetry::trace::{Status, TraceContextExt, TraceId};
use opentelemetry_sdk::trace::SpanData;
use tower::{Layer, Service, ServiceExt};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::support::nats::*;
use crate::support::server::NatsServer;
use crate::support::telemetry::*;
use crate::support::wait;

const BUCKET: &str = "trace_carriers";

/// A fresh durable pull consumer on `stream`: it starts from the first
/// message.
async fn pull_consumer(stream: &stream::Stream, name: &str) -> pull::Stream {
    durable_consumer(stream, name)
        .await
        .messages()
        .await
        .unwrap()
}

/// Subscribes `client` to `subject` and waits for a [`server_round_trip`],
/// so the subscription is in place before another connection publishes.
async fn subscribed(client: &Client, subject: &str) -> async_nats::Subscriber {
    let subscription = client.subscribe(subject.to_owned()).await.unwrap();
    server_round_trip(client).await;
    subscription
}

/// A KV fallback on [`BUCKET`] in `js`, keyed by the subject's second token.
async fn subject_token_kv(js: &jetstream::Context) -> KvFallback {
    KvFallback::new(
        KvFallback::open_bucket(js, BUCKET).await.unwrap(),
        FallbackKey::subject_token(1),
    )
}

/// A core publisher through the layer, writing carriers to `kv`.
fn kv_publisher(client: &Client, kv: &KvFallback) -> TracePropagation<CorePublisher> {
    TracePropagationLayer::new()
        .fallback(kv.clone())
        .layer(CorePublisher::new(client.clone()))
}

/// The durable `worker` on `stream` through the adapter, falling back to
/// `kv` when a message has no usable headers.
async fn kv_worker(
    stream: &stream::Stream,
    kv: &KvFallback,
) -> ContextExtractingConsumer<pull::Stream> {
    pull_consumer(stream, "worker")
        .await
        .with_trace_context()
        .fallback(kv.clone())
}

/// A relay that forwards every message on `ingress.<rest>` to the JetStream
/// subject `jobs.<rest>` with ONLY its payload: the headers, and the trace
/// context in them, are lost here.
async fn start_relay(client: &Client, js: &jetstream::Context) -> tokio::task::JoinHandle<()> {
    let mut ingress = client.subscribe("ingress.>").await.unwrap();
    client.flush().await.unwrap();
    let js = js.clone();
    tokio::spawn(async move {
        while let Some(message) = ingress.next().await {
            let rest = message.subject.strip_prefix("ingress.").unwrap();
            js.publish(format!("jobs.{rest}"), message.payload)
                .await
                .unwrap()
                .await
                .unwrap();
        }
    })
}

/// A server with the `JOBS` stream, the fallback bucket keyed by the first
/// subject token, and a header-dropping relay from `ingress.>` to `jobs.>`.
struct RelaySetup {
    server: NatsServer,
    client: Client,
    stream: stream::Stream,
    kv: KvFallback,
    _relay: tokio::task::JoinHandle<()>,
}

impl RelaySetup {
    async fn start() -> Self {
        let server = NatsServer::start();
        let (client, js) = connect_jetstream(&server).await;
        let stream = jobs_stream(&js).await;
        let kv = subject_token_kv(&js).await;
        let relay = start_relay(&client, &js).await;
        Self {
            server,
            client,
            stream,
            kv,
            _relay: relay,
        }
    }
}

/// Publishes through `publisher` inside a new `api` span (a new trace) and
/// returns that trace's id.
async fn publish_in_api_span<S>(publisher: &mut S, subject: &str, payload: String) -> TraceId
where
    S: Service<Publish>,
    S::Error: std::fmt::Debug,
{
    let api = tracing::info_span!("api");
    async {
        publish(publisher, Publish::new(subject.to_owned(), payload)).await;
        tracing::Span::current()
            .context()
            .span()
            .span_context()
            .trace_id()
    }
    .instrument(api)
    .await
}

/// Publishes `{}` on `ingress.<name>-0`, `-1` and `-2`, each with
/// [`publish_in_api_span`].
async fn publish_three<S>(publisher: &mut S, name: &str)
where
    S: Service<Publish>,
    S::Error: std::fmt::Debug,
{
    for i in 0..3 {
        publish_in_api_span(publisher, &format!("ingress.{name}-{i}"), "{}".into()).await;
    }
}

/// The one finished span named `name` in trace `trace`.
#[track_caller]
fn span_in_trace(telemetry: &Telemetry, name: &str, trace: TraceId) -> SpanData {
    let mut found: Vec<SpanData> = telemetry
        .spans_named(name)
        .into_iter()
        .filter(|s| trace_id(s) == trace)
        .collect();
    assert_eq!(found.len(), 1, "spans named {name:?} in trace {trace}");
    found.remove(0)
}

fn has_event(span: &SpanData, name: &str) -> bool {
    span.events.iter().any(|e| e.name == name)
}

fn is_kv_reason(reason: Option<&NoContextReason>) -> bool {
    matches!(
        reason,
        Some(
            NoContextReason::KvError { .. }
                | NoContextReason::KvNotFound { .. }
                | NoContextReason::KvTimeout { .. }
                | NoContextReason::KvInvalidRecord { .. }
        )
    )
}

/// The id inside a `{"id": ...}` job document.
fn json_id_key() -> FallbackKey {
    FallbackKey::from_fn("json field id", |input: &MessageMeta<'_>| {
        let doc: serde_json::Value = serde_json::from_slice(input.payload).ok()?;
        doc.get("id")?.as_str().map(str::to_owned)
    })
}

#[tokio::test]
async fn relay_drops_headers_kv_fallback_restores_the_producer_parent() {
    let telemetry = Telemetry::install();
    let RelaySetup {
        server: _server,
        client,
        stream,
        kv,
        ..
    } = RelaySetup::start().await;

    let mut publisher = kv_publisher(&client, &kv);
    let api_trace =
        publish_in_api_span(&mut publisher, "ingress.job-1", r#"{"id":1}"#.into()).await;
    assert_eq!(kv.stats().writes, 1);

    // Policy on: the worker recovers the context from KV.
    let mut worker = kv_worker(&stream, &kv).await;
    let (message, cx) = next(&mut worker).await.unwrap();
    assert_eq!(message.subject.as_str(), "jobs.job-1");
    assert!(
        message
            .headers
            .as_ref()
            .is_none_or(|h| h.get(TRACEPARENT).is_none()),
        "the relay should have dropped the headers: {:?}",
        message.headers
    );
    let kv_record = cx.extraction().unwrap().clone();
    assert_eq!(kv_record.source(), ContextSource::Kv, "{kv_record}");
    assert_eq!(kv_record.reason(), Some(&NoContextReason::NoHeaders));
    assert_eq!(kv_record.fallback_reason(), None);
    assert_eq!(cx.span().span_context().trace_id(), api_trace);
    message.ack().await.unwrap();
    drop(cx);
    assert_eq!(kv.stats().reads, 1);
    assert_eq!(kv.stats().read_failures, 0);

    // Policy off: the same message, another consumer without the fallback.
    let mut plain = pull_consumer(&stream, "plain_worker")
        .await
        .with_trace_context();
    let (message, cx) = next(&mut plain).await.unwrap();
    let record = cx.extraction().unwrap().clone();
    assert_eq!(record.source(), ContextSource::None, "{record}");
    assert_eq!(record.reason(), Some(&NoContextReason::NoHeaders));
    assert_eq!(record.fallback_reason(), None);
    message.ack().await.unwrap();
    drop(cx);
    assert_eq!(
        kv.stats().reads,
        1,
        "a consumer without the policy reads no KV"
    );

    let api = telemetry.span("api");
    let producer = telemetry.span("publish ingress.job-1");
    assert_child_of(&producer, &api);
    let processes = telemetry.spans_named("process jobs.job-1");
    assert_eq!(processes.len(), 2);
    let (with_kv, without): (Vec<_>, Vec<_>) = processes
        .into_iter()
        .partition(|s| attribute(s, "nats_otel.context.source") == Some("kv".into()));
    assert_eq!(with_kv.len(), 1, "one process span has source kv");
    assert_eq!(trace_id(&with_kv[0]), api_trace);
    assert_child_of(&with_kv[0], &producer);
    assert_attribute(&with_kv[0], "nats_otel.context.reason", "no_headers");
    // The record names the producer's span it recovered from KV.
    let remote = kv_record
        .remote_span_context()
        .expect("remote span context");
    assert_eq!(remote.trace_id(), api_trace);
    assert_eq!(remote.span_id(), span_id(&producer));
    assert_eq!(
        record.remote_span_context(),
        None,
        "no context, no remote span"
    );
    assert_root(&without[0]);
    assert_ne!(trace_id(&without[0]), api_trace);
    assert_attribute(&without[0], "nats_otel.context.source", "none");
}

#[tokio::test]
async fn intact_headers_make_no_kv_read() {
    let _telemetry = Telemetry::install();
    let RelaySetup {
        server,
        client,
        stream,
        kv,
        ..
    } = RelaySetup::start().await;
    // An independent count of KV reads: `Store::get` on a bucket with
    // `allow_direct` (what `create_key_value` sets) is a request on
    // `$JS.API.DIRECT.GET.KV_<bucket>.$KV.<bucket>.<key>`.
    let watcher = connect(&server).await;
    let mut direct_gets = subscribed(&watcher, "$JS.API.DIRECT.GET.>").await;

    let mut publisher = kv_publisher(&client, &kv);
    // Straight to the stream: the headers arrive intact.
    publish_in_api_span(&mut publisher, "jobs.intact", "{}".into()).await;
    assert_eq!(kv.stats().writes, 1);

    let mut worker = kv_worker(&stream, &kv).await;
    let (message, cx) = next(&mut worker).await.unwrap();
    assert_eq!(message.subject.as_str(), "jobs.intact");
    assert_eq!(cx.extraction().unwrap().source(), ContextSource::Headers);
    message.ack().await.unwrap();
    drop(cx);

    assert_eq!(kv.stats().reads, 0);
    // Anything the client sent before this flush has reached the server.
    client.flush().await.unwrap();
    watcher.flush().await.unwrap();
    let seen = tokio::time::timeout(Duration::from_millis(300), direct_gets.next()).await;
    assert!(
        seen.is_err(),
        "a KV read was made for a message with intact headers: {:?}",
        seen.unwrap().map(|m| m.subject)
    );

    // Positive control: the same consumer, a message whose headers were
    // dropped; both counters see the read.
    publish_in_api_span(&mut publisher, "ingress.dropped", "{}".into()).await;
    let (message, cx) = next(&mut worker).await.unwrap();
    assert_eq!(message.subject.as_str(), "jobs.dropped");
    assert_eq!(cx.extraction().unwrap().source(), ContextSource::Kv);
    drop(cx);
    assert_eq!(kv.stats().reads, 1);
    let get = next(&mut direct_gets).await;
    assert_eq!(
        get.subject.as_str(),
        format!("$JS.API.DIRECT.GET.KV_{BUCKET}.$KV.{BUCKET}.dropped")
    );
}

#[tokio::test]
async fn awkward_ids_round_trip_through_a_real_bucket_and_an_empty_id_is_explained() {
    let telemetry = Telemetry::install();
    let server = NatsServer::start();
    let (client, js) = connect_jetstream(&server).await;
    let stream = jobs_stream(&js).await;
    let kv = KvFallback::new(
        KvFallback::open_bucket(&js, BUCKET).await.unwrap(),
        json_id_key(),
    );
    let _relay = start_relay(&client, &js).await;

    let long = "a.b".repeat(100);
    assert_eq!(long.chars().count(), 300);
    let ids = ["a..b", "a b", "ключ", "x>y", ".lead", long.as_str()];

    let mut publisher = kv_publisher(&client, &kv);
    let mut traces = Vec::new();
    for id in ids {
        let payload = serde_json::json!({ "id": id }).to_string();
        traces.push(publish_in_api_span(&mut publisher, "ingress.keys", payload).await);
    }
    let empty_trace =
        publish_in_api_span(&mut publisher, "ingress.keys", r#"{"id":""}"#.into()).await;
    assert_eq!(
        kv.stats().writes,
        ids.len() as u64,
        "the empty id is not written"
    );
    assert_eq!(kv.stats().write_failures, 0);

    let mut worker = kv_worker(&stream, &kv).await;
    for (id, trace) in ids.iter().zip(&traces) {
        let (message, cx) = next(&mut worker).await.unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
        assert_eq!(doc["id"].as_str(), Some(*id), "messages arrive in order");
        let record = cx.extraction().unwrap().clone();
        assert_eq!(record.source(), ContextSource::Kv, "id {id:?}: {record}");
        assert_eq!(record.reason(), Some(&NoContextReason::NoHeaders));
        assert_eq!(cx.span().span_context().trace_id(), *trace, "id {id:?}");
        message.ack().await.unwrap();
    }
    let (message, cx) = next(&mut worker).await.unwrap();
    assert_eq!(&message.payload[..], br#"{"id":""}"#, "still yielded");
    let record = cx.extraction().unwrap().clone();
    assert_eq!(record.source(), ContextSource::None);
    assert_eq!(record.reason(), Some(&NoContextReason::NoHeaders));
    assert_eq!(
        record.fallback_reason(),
        Some(&NoContextReason::FallbackKey(KeyError::Empty))
    );
    assert!(record.to_string().contains("empty"), "{record}");
    message.ack().await.unwrap();
    drop(cx);
    assert_eq!(kv.stats().reads, ids.len() as u64, "no read without a key");

    for (id, trace) in ids.iter().zip(&traces) {
        let producer = span_in_trace(&telemetry, "publish ingress.keys", *trace);
        let process = span_in_trace(&telemetry, "process jobs.keys", *trace);
        assert_child_of(&process, &producer);
        assert!(
            !has_event(&producer, "nats_otel.fallback_skipped"),
            "{id:?}"
        );
    }
    let producer = span_in_trace(&telemetry, "publish ingress.keys", empty_trace);
    assert!(has_event(&producer, "nats_otel.fallback_skipped"));
    let process = telemetry
        .spans_named("process jobs.keys")
        .into_iter()
        .find(|s| attribute(s, "nats_otel.context.source") == Some("none".into()))
        .unwrap();
    assert_root(&process);
}

#[tokio::test]
async fn deleted_bucket_every_message_still_yielded_within_the_lookup_timeout() {
    let _telemetry = Telemetry::install();
    let server = NatsServer::start();
    let (client, js) = connect_jetstream(&server).await;
    let stream = jobs_stream(&js).await;
    let timeout = Duration::from_millis(200);
    let kv = subject_token_kv(&js).await.lookup_timeout(timeout);
    let _relay = start_relay(&client, &js).await;

    let mut publisher = kv_publisher(&client, &kv);
    publish_three(&mut publisher, "del").await;
    assert_eq!(kv.stats().writes, 3);
    js.delete_key_value(BUCKET).await.unwrap();

    let mut worker = kv_worker(&stream, &kv).await;
    for i in 0..3 {
        let started = Instant::now();
        let (message, cx) = next(&mut worker).await.unwrap();
        let took = started.elapsed();
        assert_eq!(message.subject.as_str(), format!("jobs.del-{i}"));
        let record = cx.extraction().unwrap().clone();
        assert_eq!(record.source(), ContextSource::None, "{record}");
        assert!(is_kv_reason(record.fallback_reason()), "{record}");
        assert!(
            took < timeout + Duration::from_secs(1),
            "message {i} took {took:?}"
        );
        message.ack().await.unwrap();
    }
    assert_eq!(kv.stats().reads, 3);
    assert_eq!(kv.stats().read_failures, 3);
}

/// The pid of `server`'s process, from the ports file the harness has it
/// write (`nats-server_<pid>.ports` next to its store dir).
fn server_pid(server: &NatsServer) -> u32 {
    let store = server.store_dir();
    let ports = store.parent().unwrap().join("ports");
    let pid = std::fs::read_dir(&ports)
        .unwrap()
        .flatten()
        .find_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            name.strip_suffix(".ports")?
                .rsplit('_')
                .next()?
                .parse::<u32>()
                .ok()
        })
        .expect("a ports file naming the server's pid");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    assert!(
        String::from_utf8_lossy(&cmdline).contains(store.to_str().unwrap()),
        "pid {pid} is not the server with store {}",
        store.display()
    );
    pid
}

fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {signal} {pid}");
}

/// A server process frozen with SIGSTOP until this is dropped (SIGCONT),
/// even when the test fails.
struct Frozen(u32);

impl Frozen {
    fn freeze(server: &NatsServer) -> Self {
        let pid = server_pid(server);
        signal(pid, "-STOP");
        Self(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        signal(self.0, "-CONT");
    }
}

#[tokio::test]
async fn frozen_kv_server_each_message_waits_only_the_lookup_timeout() {
    let _telemetry = Telemetry::install();
    let server = NatsServer::start();
    let (client, js) = connect_jetstream(&server).await;
    let stream = jobs_stream(&js).await;
    // The bucket lives on a second server, which is frozen below.
    let kv_server = NatsServer::start();
    let kv_js = jetstream::new(connect(&kv_server).await);
    let timeout = Duration::from_millis(200);
    let kv = subject_token_kv(&kv_js).await.lookup_timeout(timeout);
    let _relay = start_relay(&client, &js).await;

    let mut publisher = kv_publisher(&client, &kv);
    publish_three(&mut publisher, "slow").await;
    assert_eq!(kv.stats().writes, 3);
    let mut worker = kv_worker(&stream, &kv).await;
    // Wait until the relay has stored all three.
    let js = &js;
    wait::until("the relay forwarded 3 messages", WAIT, || async move {
        let mut jobs = js.get_stream("JOBS").await.unwrap();
        jobs.info().await.unwrap().state.messages >= 3
    })
    .await;
    drop(stream);

    let frozen = Frozen::freeze(&kv_server);
    let all = Instant::now();
    for i in 0..3 {
        let started = Instant::now();
        let (message, cx) = next(&mut worker).await.unwrap();
        let took = started.elapsed();
        assert_eq!(message.subject.as_str(), format!("jobs.slow-{i}"));
        let record = cx.extraction().unwrap().clone();
        assert_eq!(record.source(), ContextSource::None, "{record}");
        assert_eq!(
            record.fallback_reason(),
            Some(&NoContextReason::KvTimeout {
                key: format!("slow-{i}"),
                timeout
            })
        );
        // The first waits out its timeout; the next lookups started
        // meanwhile (look-ahead), each with its own timeout.
        if i == 0 {
            assert!(
                took >= timeout - Duration::from_millis(10),
                "message {i} yielded after {took:?}, before the lookup timed out"
            );
        }
        message.ack().await.unwrap();
    }
    let total = all.elapsed();
    assert!(total < Duration::from_secs(2), "3 messages took {total:?}");
    drop(frozen);
    assert_eq!(kv.stats().reads, 3);
    assert_eq!(kv.stats().read_failures, 3);
}

#[tokio::test]
async fn required_write_failure_publishes_nothing() {
    let telemetry = Telemetry::install();
    let server = NatsServer::start();
    let (client, js) = connect_jetstream(&server).await;
    let store = KvFallback::open_bucket(&js, "doomed").await.unwrap();
    js.delete_key_value("doomed").await.unwrap();
    let kv = KvFallback::new(store, FallbackKey::subject_token(1))
        .on_write_failure(WritePolicy::Required);

    let watcher = connect(&server).await;
    let mut events = subscribed(&watcher, "events.>").await;

    let mut publisher = kv_publisher(&client, &kv);
    let result = async {
        publisher
            .ready()
            .await
            .unwrap()
            .call(Publish::new("events.e1", "{}"))
            .await
    }
    .instrument(tracing::info_span!("api"))
    .await;
    match result {
        Err(PublishError::KvWrite(error)) => {
            assert_eq!(error.bucket(), "doomed");
            assert_eq!(error.key(), "e1");
        }
        other => panic!("expected Error::KvWrite, got {other:?}"),
    }
    client.flush().await.unwrap();
    let seen = tokio::time::timeout(Duration::from_millis(300), events.next()).await;
    assert!(
        seen.is_err(),
        "published despite the failed required write: {:?}",
        seen.unwrap().map(|m| m.subject)
    );
    assert_eq!(kv.stats().writes, 0);
    assert_eq!(kv.stats().write_failures, 1);
    let producer = telemetry.span("publish events.e1");
    assert!(
        matches!(producer.status, Status::Error { .. }),
        "{:?}",
        producer.status
    );
}

#[tokio::test]
async fn best_effort_write_failure_publishes_and_records_an_event() {
    let telemetry = Telemetry::install();
    let server = NatsServer::start();
    let (client, js) = connect_jetstream(&server).await;
    let store = KvFallback::open_bucket(&js, "doomed").await.unwrap();
    js.delete_key_value("doomed").await.unwrap();
    let kv = KvFallback::new(store, FallbackKey::subject_token(1));

    let watcher = connect(&server).await;
    let mut events = subscribed(&watcher, "events.>").await;

    let mut publisher = kv_publisher(&client, &kv);
    publish_in_api_span(&mut publisher, "events.e1", "{}".into()).await;
    let message = next(&mut events).await;
    assert_eq!(message.subject.as_str(), "events.e1");
    assert!(message.headers.unwrap().get(TRACEPARENT).is_some());
    assert_eq!(kv.stats().writes, 0);
    assert_eq!(kv.stats().write_failures, 1);

    let producer = telemetry.span("publish events.e1");
    assert!(
        has_event(&producer, "nats_otel.fallback_write_failed"),
        "events: {:?}",
        producer.events.events
    );
    assert!(!matches!(producer.status, Status::Error { .. }));
}

/// `.fallback(..)` keeps the layer's and the service's types, and means
/// the same before or after any other builder call: a failed best-effort
/// write is an event on the PRODUCER span, whether that span is a `tracing`
/// span (entered or not) or made with a tracer.
#[tokio::test]
async fn fallback_in_any_builder_order_records_on_the_producer_span() {
    let telemetry = Telemetry::install();
    let server = NatsServer::start();
    let (client, js) = connect_jetstream(&server).await;
    let store = KvFallback::open_bucket(&js, "doomed").await.unwrap();
    js.delete_key_value("doomed").await.unwrap();
    let kv = KvFallback::new(store, FallbackKey::subject_token(1));
    let watcher = connect(&server).await;
    let mut events = subscribed(&watcher, "events.>").await;

    let core = || CorePublisher::new(client.clone());
    let layers: Vec<(&str, TracePropagationLayer)> = vec![
        (
            "fallback_first",
            TracePropagationLayer::new()
                .fallback(kv.clone())
                .instrument_inner(false),
        ),
        (
            "fallback_last",
            TracePropagationLayer::new()
                .instrument_inner(false)
                .fallback(kv.clone()),
        ),
        (
            "entered",
            TracePropagationLayer::new()
                .fallback(kv.clone())
                .instrument_inner(true),
        ),
        (
            "tracer_first",
            TracePropagationLayer::new()
                .tracer(telemetry.tracer())
                .fallback(kv.clone()),
        ),
        (
            "tracer_last",
            TracePropagationLayer::new()
                .fallback(kv.clone())
                .tracer(telemetry.tracer()),
        ),
    ];
    let mut publishers: Vec<(&str, TracePropagation<CorePublisher>)> = layers
        .into_iter()
        .map(|(name, layer)| (name, layer.layer(core())))
        .collect();
    // Without the fallback: the same service type.
    publishers.push(("none", TracePropagationLayer::new().layer(core())));

    for (name, publisher) in &mut publishers {
        publish_in_api_span(publisher, &format!("events.{name}"), "{}".into()).await;
        let message = next(&mut events).await;
        assert_eq!(message.subject.as_str(), format!("events.{name}"));
    }
    assert_eq!(
        kv.stats().write_failures,
        5,
        "one failed write per layer with the fallback"
    );
    for (name, _) in &publishers {
        let producer = telemetry.span(&format!("publish events.{name}"));
        assert_eq!(
            has_event(&producer, "nats_otel.fallback_write_failed"),
            *name != "none",
            "{name}: events {:?}",
            producer.events.events
        );
        assert!(!matches!(producer.status, Status::Error { .. }), "{name}");
    }
}

#[tokio::test]
async fn expired_record_reports_kv_not_found() {
    let _telemetry = Telemetry::install();
    let server = NatsServer::start();
    let (client, js) = connect_jetstream(&server).await;
    let stream = jobs_stream(&js).await;
    let max_age = Duration::from_secs(1);
    let store = KvFallback::open_bucket_with_max_age(&js, "short_lived", max_age)
        .await
        .unwrap();
    let bucket_stream = js.get_stream("KV_short_lived").await.unwrap();
    assert_eq!(bucket_stream.cached_info().config.max_age, max_age);
    let kv = KvFallback::new(store, FallbackKey::subject_token(1));
    let _relay = start_relay(&client, &js).await;

    let mut publisher = kv_publisher(&client, &kv);
    publish_in_api_span(&mut publisher, "ingress.stale", "{}".into()).await;
    assert_eq!(kv.stats().writes, 1);
    assert!(kv.store().get("stale").await.unwrap().is_some(), "written");

    let store = kv.store();
    wait::until("the record expired", WAIT, || async move {
        store.get("stale").await.unwrap().is_none()
    })
    .await;
    let mut worker = kv_worker(&stream, &kv).await;
    let (message, cx) = next(&mut worker).await.unwrap();
    assert_eq!(message.subject.as_str(), "jobs.stale");
    let record = cx.extraction().unwrap().clone();
    assert_eq!(record.source(), ContextSource::None, "{record}");
    assert_eq!(
        record.fallback_reason(),
        Some(&NoContextReason::KvNotFound {
            key: "stale".into()
        })
    );
}

#[tokio::test]
async fn invalid_bucket_name_is_refused() {
    let server = NatsServer::start();
    let js = jetstream::new(connect(&server).await);
    for name in ["bad.name", "", "a b", "ключ", "x>"] {
        assert_eq!(
            KvFallback::open_bucket(&js, name).await.unwrap_err(),
            BucketError::InvalidName(name.to_owned()),
        );
    }
    assert!(
        js.get_key_value("bad.name").await.is_err(),
        "nothing created"
    );
    KvFallback::open_bucket(&js, "good_name-1").await.unwrap();
}

#[tokio::test]
async fn publish_without_trace_context_writes_no_record() {
    // The SDK exists but is not wired into `tracing`: no span has a valid
    // context, so the layer injects nothing and there is nothing to store.
    let _otel = OtelWithoutLayer::install();
    let server = NatsServer::start();
    let (client, js) = connect_jetstream(&server).await;
    let kv = subject_token_kv(&js).await;
    let mut events = client.subscribe("events.>").await.unwrap();
    client.flush().await.unwrap();

    let mut publisher = kv_publisher(&client, &kv);
    publish(&mut publisher, Publish::new("events.untraced", "{}")).await;
    let message = next(&mut events).await;
    assert!(message
        .headers
        .as_ref()
        .is_none_or(|h| h.get(TRACEPARENT).is_none()));
    assert_eq!(kv.stats().writes, 0);
    assert_eq!(kv.stats().write_failures, 0);
    assert_eq!(kv.store().get("untraced").await.unwrap(), None);
}

/// The same recovery with spans made by a tracer on both sides: the KV
/// record carries the PRODUCER span made with the tracer, and the worker's
/// `process` span is its child.
#[tokio::test]
async fn relay_drops_headers_kv_fallback_restores_the_parent_with_a_tracer() {
    let telemetry = Telemetry::install();
    let RelaySetup {
        server: _server,
        client,
        stream,
        kv,
        ..
    } = RelaySetup::start().await;

    let mut publisher = TracePropagationLayer::new()
        .tracer(telemetry.tracer())
        .fallback(kv.clone())
        .layer(CorePublisher::new(client.clone()));
    let api_trace = publish_in_api_span(&mut publisher, "ingress.job-7", "{}".into()).await;
    assert_eq!(kv.stats().writes, 1);

    let mut worker = pull_consumer(&stream, "worker")
        .await
        .with_trace_context()
        .tracer(telemetry.tracer())
        .fallback(kv.clone());
    let (message, cx) = next(&mut worker).await.unwrap();
    assert_eq!(cx.extraction().map(|r| r.source()), Some(ContextSource::Kv));
    message.ack().await.unwrap();
    drop(cx);

    let producer = telemetry.span("publish ingress.job-7");
    assert_child_of(&producer, &telemetry.span("api"));
    let process = telemetry.span("process jobs.job-7");
    assert_eq!(trace_id(&process), api_trace);
    assert_child_of(&process, &producer);
    assert_attribute(&process, "nats_otel.context.source", "kv");
}

/// The direct gets on [`BUCKET`] seen so far on `direct_gets`: batched
/// (multi-last) requests and single-key ones.
async fn count_reads(direct_gets: &mut async_nats::Subscriber) -> (usize, usize) {
    let (mut batched, mut single) = (0, 0);
    while let Ok(Some(get)) =
        tokio::time::timeout(Duration::from_millis(200), direct_gets.next()).await
    {
        if get.subject.as_str() == format!("$JS.API.DIRECT.GET.KV_{BUCKET}") {
            let body = std::str::from_utf8(&get.payload).unwrap();
            assert!(body.contains("multi_last"), "{get:?}");
            batched += 1;
        } else {
            single += 1;
        }
    }
    (batched, single)
}

/// Whether `server` answers multi-last direct gets (nats-server 2.11+).
fn answers_batched_reads(client: &Client) -> bool {
    let version = client.server_info().version;
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (2, 11)
}

/// With batched reads on, a window of header-less messages is looked up in
/// a few requests instead of one per message; every message is still
/// yielded in order with its own outcome: recovered (its own producer's
/// trace), no record, or a deleted record. On a server before 2.11 the
/// first batch is refused and every key is read on its own, with the same
/// outcomes.
#[tokio::test]
async fn batched_reads_recover_a_window_in_few_requests_with_per_message_outcomes() {
    const MESSAGES: usize = 60;
    let _telemetry = Telemetry::install();
    let server = NatsServer::start();
    let (client, js) = connect_jetstream(&server).await;
    let stream = jobs_stream(&js).await;
    let kv = KvFallback::open(&js, BUCKET, FallbackKey::subject_token(1))
        .await
        .unwrap();
    let _relay = start_relay(&client, &js).await;
    let watcher = connect(&server).await;
    let mut direct_gets = subscribed(&watcher, "$JS.API.DIRECT.GET.>").await;

    // Every 10th message has no record (published without the layer), the
    // 5th has its record deleted; the rest have one each, in their own
    // trace. A second message on job-2, without a record of its own, shares
    // its key (and the same window).
    let mut publisher = kv_publisher(&client, &kv);
    // (payload, key, the trace its record holds)
    let mut expected = Vec::new();
    for i in 0..MESSAGES {
        let subject = format!("ingress.job-{i}");
        if i % 10 == 9 {
            client
                .publish(subject.clone(), i.to_string().into())
                .await
                .unwrap();
            expected.push((i.to_string(), i, None));
        } else {
            let trace = publish_in_api_span(&mut publisher, &subject, i.to_string()).await;
            expected.push((i.to_string(), i, (i != 5).then_some(trace)));
        }
        if i == 2 {
            client.publish(subject, "again".into()).await.unwrap();
            let trace = expected[2].2;
            expected.push(("again".to_owned(), 2, trace));
        }
    }
    kv.store().delete("job-5").await.unwrap();
    let total = expected.len();
    wait::until("the relay forwarded every message", WAIT, || async {
        stream.get_info().await.unwrap().state.messages == total as u64
    })
    .await;

    let mut worker = kv_worker(&stream, &kv).await;
    for (payload, key, trace) in &expected {
        let (message, cx) = next(&mut worker).await.unwrap();
        assert_eq!(message.payload, payload.as_str(), "arrival order kept");
        let record = cx.extraction().unwrap().clone();
        match trace {
            Some(trace) => {
                assert_eq!(record.source(), ContextSource::Kv, "{payload}: {record}");
                assert_eq!(cx.span().span_context().trace_id(), *trace, "{payload}");
            }
            None => {
                assert_eq!(record.source(), ContextSource::None, "{payload}");
                assert_eq!(
                    record.fallback_reason(),
                    Some(&NoContextReason::KvNotFound {
                        key: format!("job-{key}")
                    }),
                    "{payload}: {record}"
                );
            }
        }
        message.ack().await.unwrap();
    }
    let missing = expected
        .iter()
        .filter(|(_, _, trace)| trace.is_none())
        .count();
    assert_eq!(missing, MESSAGES / 10 + 1);
    assert_eq!(kv.stats().reads, total as u64);
    assert_eq!(kv.stats().read_failures, missing as u64);

    // Count the read requests the server saw.
    client.flush().await.unwrap();
    server_round_trip(&client).await;
    server_round_trip(&watcher).await;
    let (batched, single) = count_reads(&mut direct_gets).await;
    if answers_batched_reads(&client) {
        // A window that held a single message is read with a single get
        // (it can happen once, if the first delivery brings one message).
        assert!(
            single <= 1,
            "{single} keys read on their own, not in a batch"
        );
        assert!(
            (1..=MESSAGES / 4).contains(&batched),
            "{batched} batched requests for {MESSAGES} messages"
        );
    } else {
        // Batches already in flight when the first refusal comes back
        // are refused too; none is sent after it.
        assert!(
            (1..=MESSAGES / 10).contains(&batched),
            "{batched} batched requests refused: the refusal was not remembered"
        );
        assert_eq!(single, total, "every key read on its own");
    }
}

/// A window whose keys have no record at all: the server answers the batch
/// with "no results", and every message is reported as not found without a
/// read of its own (on 2.11+; older servers read each key).
#[tokio::test]
async fn batched_reads_of_keys_without_records_need_no_single_reads() {
    const MESSAGES: usize = 5;
    let _telemetry = Telemetry::install();
    let server = NatsServer::start();
    let (client, js) = connect_jetstream(&server).await;
    let stream = jobs_stream(&js).await;
    let kv = KvFallback::open(&js, BUCKET, FallbackKey::subject_token(1))
        .await
        .unwrap();
    let watcher = connect(&server).await;
    let mut direct_gets = subscribed(&watcher, "$JS.API.DIRECT.GET.>").await;
    for i in 0..MESSAGES {
        js.publish(format!("jobs.none-{i}"), "{}".into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let mut worker = kv_worker(&stream, &kv).await;
    for i in 0..MESSAGES {
        let (message, cx) = next(&mut worker).await.unwrap();
        let record = cx.extraction().unwrap().clone();
        assert_eq!(record.source(), ContextSource::None, "{record}");
        assert_eq!(
            record.fallback_reason(),
            Some(&NoContextReason::KvNotFound {
                key: format!("none-{i}")
            }),
            "{record}"
        );
        message.ack().await.unwrap();
    }
    server_round_trip(&client).await;
    server_round_trip(&watcher).await;
    let (_, single) = count_reads(&mut direct_gets).await;
    if answers_batched_reads(&client) {
        // At most a first window that held one message is read on its own;
        // a "no results" batch taken for a failure would read them all.
        assert!(single <= 1, "{single} single reads");
    } else {
        assert_eq!(single, MESSAGES, "single reads");
    }
    assert_eq!(kv.stats().reads, MESSAGES as u64);
}
