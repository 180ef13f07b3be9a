//! Topologies users outgrow one server with, on loopback against real
//! servers: a leafnode (hub + leaf) and a gateway (two clusters joined by
//! gateways), producer on one side, consumer on the other, core NATS and
//! JetStream.
//!
//! Each test publishes [`N`] messages through the layer, each inside its own
//! root `api` span (so each has its own trace), consumes them through the
//! adapter on the other side, and asserts: consumed == published (nothing
//! lost, nothing twice), and per message, paired by payload (`msg-<i>`),
//! that the consumer's `process` span is in that message's trace and is the
//! child of its PRODUCER `publish` span, with the context taken from the
//! headers.
//!
//! The servers come from `support::server` (`leafnode_pair`,
//! `gateway_pair`, `gateway_pair_jetstream`); `wait_interest_propagated`
//! makes sure the consumer side's subscriptions (or stream) are known on
//! the producer side before anything is published.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Debug;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use nats_otel::{ContextSource, CorePublisher, MessageContextExt, Publish, TracePropagationLayer};
use opentelemetry::trace::{SpanId, SpanKind, TraceContextExt, TraceId};
use opentelemetry::Context;
use tower::{Layer, Service};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::support::nats::*;
use crate::support::server::{self, NatsServer};
use crate::support::telemetry::*;

/// Messages per direction.
const N: usize = 20;
/// How long interest gets to cross the link after the consumer subscribed.
const INTEREST_TIMEOUT: Duration = Duration::from_secs(10);
/// After the N-th message, how long to watch for an unexpected extra one.
const QUIET: Duration = Duration::from_millis(200);

/// What the consumer saw of one message.
struct Consumed {
    /// The `process` span (the yielded context's span).
    process: SpanId,
    source: ContextSource,
    /// The extraction record, for failure messages.
    record: String,
}

/// Publishes `msg-0`..`msg-{N-1}` on `subject` through `publisher`, each
/// from its own root span `api msg-<i>`. Returns payload → that span's
/// trace id. A failed publish (or, for JetStream, a failed ack) fails the
/// test.
async fn publish_n<S>(publisher: &mut S, subject: &str) -> BTreeMap<String, TraceId>
where
    S: Service<Publish>,
    S::Error: Debug,
{
    let mut published = BTreeMap::new();
    for i in 0..N {
        let payload = format!("msg-{i}");
        let api = tracing::info_span!(parent: None, "api", otel.name = format!("api {payload}"));
        let trace = api.context().span().span_context().trace_id();
        assert_ne!(trace, TraceId::INVALID, "the api span has a trace");
        publish_in_span(
            publisher,
            api,
            Publish::new(subject.to_owned(), payload.clone()),
        )
        .await;
        published.insert(payload, trace);
    }
    published
}

/// Takes (payload, context) items from `messages` until [`N`] arrived
/// (failing the test after [`WAIT`] in all), then watches [`QUIET`] longer
/// for an extra one. Each context is dropped once recorded, which ends its
/// `process` span.
async fn consume_n<M>(messages: &mut M) -> BTreeMap<String, Consumed>
where
    M: Stream<Item = (String, Context)> + Unpin,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut consumed = BTreeMap::new();
    while consumed.len() < N {
        let Ok(item) = tokio::time::timeout_at(deadline, messages.next()).await else {
            panic!(
                "consumed {} of {N} within {WAIT:?}: {:?}",
                consumed.len(),
                consumed.keys().collect::<Vec<_>>()
            );
        };
        let (payload, cx) = item.expect("the consumer's stream ended");
        let record = cx.extraction().expect("the adapter stores a record");
        let seen = Consumed {
            process: cx.span().span_context().span_id(),
            source: record.source(),
            record: record.to_string(),
        };
        drop(cx);
        assert!(
            consumed.insert(payload.clone(), seen).is_none(),
            "{payload} consumed twice"
        );
    }
    if let Ok(Some((payload, _cx))) = tokio::time::timeout(QUIET, messages.next()).await {
        panic!("an extra message after all {N}: {payload}");
    }
    consumed
}

/// Asserts that each published message was consumed once, and that its
/// `process` span continues its trace: `api` → PRODUCER `publish {subject}`
/// → CONSUMER `process {subject}` (remote parent), context from the headers.
/// With `stream`, the process spans name that JetStream stream.
#[track_caller]
fn assert_each_message_continues_its_trace(
    telemetry: &Telemetry,
    subject: &str,
    published: &BTreeMap<String, TraceId>,
    consumed: &BTreeMap<String, Consumed>,
    stream: Option<&str>,
) {
    assert_eq!(published.len(), N, "published");
    assert_eq!(
        consumed.keys().collect::<Vec<_>>(),
        published.keys().collect::<Vec<_>>(),
        "consumed == published"
    );
    let distinct: HashSet<_> = published.values().collect();
    assert_eq!(distinct.len(), N, "each message has its own trace");

    let spans = telemetry.spans();
    let publish_name = format!("publish {subject}");
    let process_name = format!("process {subject}");
    for (payload, &trace) in published {
        let seen = &consumed[payload];
        assert_eq!(
            seen.source,
            ContextSource::Headers,
            "{payload}: {}",
            seen.record
        );
        let api_name = format!("api {payload}");
        let api: Vec<_> = spans.iter().filter(|s| s.name == api_name).collect();
        assert_eq!(api.len(), 1, "one span {api_name:?}");
        let producer: Vec<_> = spans
            .iter()
            .filter(|s| s.name == publish_name && trace_id(s) == trace)
            .collect();
        assert_eq!(
            producer.len(),
            1,
            "{payload}: one {publish_name:?} span in its trace {trace}"
        );
        let producer = producer[0];
        assert_kind(producer, SpanKind::Producer);
        assert_child_of(producer, api[0]);
        let process = spans
            .iter()
            .find(|s| span_id(s) == seen.process)
            .unwrap_or_else(|| panic!("{payload}: its process span was not exported"));
        assert_eq!(process.name, process_name, "{payload}");
        assert_kind(process, SpanKind::Consumer);
        assert_eq!(trace_id(process), trace, "{payload}: same trace id");
        assert_child_of(process, producer);
        assert!(process.parent_span_is_remote, "{payload}");
        if let Some(stream) = stream {
            assert_attribute(process, "messaging.nats.stream", stream.to_owned());
        }
    }
}

/// Publishes [`N`] messages on `subject` through `publisher`, consumes them
/// from `messages` and asserts each kept its trace (see
/// [`assert_each_message_continues_its_trace`]). Starts from no spans.
async fn publish_consume_compare<P, M>(
    telemetry: &Telemetry,
    label: &str,
    publisher: &mut P,
    messages: &mut M,
    subject: &str,
    stream: Option<&str>,
) where
    P: Service<Publish>,
    P::Error: Debug,
    M: Stream<Item = (String, Context)> + Unpin,
{
    telemetry.reset();
    let start = Instant::now();
    let published = publish_n(publisher, subject).await;
    let publish_time = start.elapsed();
    let consumed = consume_n(messages).await;
    assert_each_message_continues_its_trace(telemetry, subject, &published, &consumed, stream);
    eprintln!(
        "{label}: {} published in {publish_time:?}, {} consumed and checked after {:?}",
        published.len(),
        consumed.len(),
        start.elapsed()
    );
}

/// Core NATS from a client of `producer` to a traced subscription on a
/// client of `consumer`, once the subscription is known on `producer`.
async fn core_direction(
    telemetry: &Telemetry,
    label: &str,
    producer: &NatsServer,
    consumer: &NatsServer,
    subject: &str,
) {
    let consumer_client = connect(consumer).await;
    let mut messages = traced_subscription(&consumer_client, subject)
        .await
        .map(|(message, cx)| (String::from_utf8_lossy(&message.payload).into_owned(), cx));
    server::wait_interest_propagated(producer, consumer, INTEREST_TIMEOUT).unwrap();

    let producer_client = connect(producer).await;
    let mut publisher = TracePropagationLayer::new().layer(CorePublisher::new(producer_client));
    publish_consume_compare(
        telemetry,
        label,
        &mut publisher,
        &mut messages,
        subject,
        None,
    )
    .await;
}

#[tokio::test]
async fn leafnode_core_keeps_each_trace_leaf_to_hub_and_hub_to_leaf() {
    let telemetry = Telemetry::install();
    let start = Instant::now();
    let (hub, leaf) = server::leafnode_pair();
    eprintln!("leafnode pair up in {:?}", start.elapsed());

    core_direction(&telemetry, "leaf -> hub", &leaf, &hub, "topo.leaf.up").await;
    core_direction(&telemetry, "hub -> leaf", &hub, &leaf, "topo.leaf.down").await;
}

#[tokio::test]
async fn gateway_core_keeps_each_trace_b_to_a_and_a_to_b() {
    let telemetry = Telemetry::install();
    let start = Instant::now();
    let (a, b) = server::gateway_pair();
    eprintln!("gateway pair up in {:?}", start.elapsed());

    core_direction(&telemetry, "B -> A", &b, &a, "topo.gw.to_a").await;
    core_direction(&telemetry, "A -> B", &a, &b, "topo.gw.to_b").await;
}

#[cfg(feature = "jetstream")]
mod jetstream {
    use super::*;

    use async_nats::jetstream::consumer::PullConsumer;
    use async_nats::jetstream::stream;
    use nats_otel::{JetStreamPublisher, TraceContextStreamExt};

    /// Publishes through the layer over a [`JetStreamPublisher`] (acks
    /// awaited) on a client of `producer`, into `stream` whose `consumer` is
    /// pulled through the adapter on the stream's side; each message is
    /// acked once recorded.
    async fn jetstream_direction(
        telemetry: &Telemetry,
        label: &str,
        producer: &NatsServer,
        consumer: &PullConsumer,
        stream: &str,
        subject: &str,
    ) {
        let js = jetstream(producer).await;
        let mut publisher = TracePropagationLayer::new().layer(JetStreamPublisher::new(js));
        let messages = consumer
            .messages()
            .await
            .unwrap()
            .with_trace_context()
            .then(|item| async move {
                let (message, cx) = item.expect("a pulled message");
                message.ack().await.expect("ack");
                (String::from_utf8_lossy(&message.payload).into_owned(), cx)
            });
        let mut messages = std::pin::pin!(messages);
        publish_consume_compare(
            telemetry,
            label,
            &mut publisher,
            &mut messages,
            subject,
            Some(stream),
        )
        .await;
    }

    /// Nothing left pending or unacknowledged on `consumer`.
    async fn assert_drained(consumer: &PullConsumer) {
        let info = consumer.clone().info().await.unwrap().clone();
        assert_eq!(info.num_pending, 0, "{info:?}");
        assert_eq!(info.num_ack_pending, 0, "{info:?}");
    }

    #[tokio::test]
    async fn leafnode_jetstream_publish_on_the_leaf_into_a_hub_stream_keeps_each_trace() {
        let telemetry = Telemetry::install();
        let start = Instant::now();
        let (hub, leaf) = server::leafnode_pair();
        eprintln!("leafnode pair up in {:?}", start.elapsed());

        let hub_js = jetstream(&hub).await;
        let stream = create_stream(&hub_js, "TOPO_LEAF", "topo.leaf.js.>").await;
        let consumer = durable_consumer(&stream, "worker").await;
        // The stream's subjects are hub interest: known on the leaf once a
        // later probe crosses.
        server::wait_interest_propagated(&leaf, &hub, INTEREST_TIMEOUT).unwrap();

        jetstream_direction(
            &telemetry,
            "JetStream leaf -> hub stream",
            &leaf,
            &consumer,
            "TOPO_LEAF",
            "topo.leaf.js.jobs",
        )
        .await;
        assert_drained(&consumer).await;
    }

    #[tokio::test]
    async fn gateway_jetstream_publish_in_b_into_a_stream_in_a_keeps_each_trace() {
        let telemetry = Telemetry::install();
        let start = Instant::now();
        let (a, b) = server::gateway_pair_jetstream();
        eprintln!(
            "gateway pair with JetStream up (meta leader elected) in {:?}",
            start.elapsed()
        );

        let a_js = jetstream(&a).await;
        let mut stream = a_js
            .create_stream(stream::Config {
                name: "TOPO_GW".into(),
                subjects: vec!["topo.gw.js.>".into()],
                placement: Some(stream::Placement {
                    cluster: Some("A".into()),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap();
        let cluster = stream.info().await.unwrap().cluster.clone();
        assert_eq!(
            cluster.as_ref().and_then(|c| c.name.as_deref()),
            Some("A"),
            "the stream lives in cluster A: {cluster:?}"
        );
        let consumer = durable_consumer(&stream, "worker").await;
        server::wait_interest_propagated(&b, &a, INTEREST_TIMEOUT).unwrap();

        jetstream_direction(
            &telemetry,
            "JetStream B -> stream in A",
            &b,
            &consumer,
            "TOPO_GW",
            "topo.gw.js.jobs",
        )
        .await;
        assert_drained(&consumer).await;
    }
}
