//! The broker in the trace: with `.server_hops(..)` on the publisher and a
//! `ServerHops` bridge running, every server a sampled message crosses
//! becomes a `nats-server …` span between the PRODUCER span and the
//! consumer's `process` span, on one server, a 3-node cluster, a leafnode
//! and a gateway. Unsampled messages never carry `Nats-Trace-Dest`.

use std::time::Duration;

use nats_otel::hops::ServerHops;
use nats_otel::{
    CorePublisher, JetStreamPublisher, Publish, TraceContextStreamExt, TracePropagationLayer,
};
use opentelemetry::trace::{SpanKind, TraceId};
use opentelemetry_sdk::trace::{Sampler, SpanData};
use tower::Layer;
use tracing::Instrument;

use crate::support::nats::*;
use crate::support::server::{self, NatsServer};
use crate::support::telemetry::Telemetry;
use crate::support::wait;

const MESSAGES: usize = 3;
const DEST: &str = "nats_otel.hops.test";
const WAIT: Duration = Duration::from_secs(10);

fn hop_spans(spans: &[SpanData], trace: TraceId) -> Vec<SpanData> {
    let mut hops: Vec<SpanData> = spans
        .iter()
        .filter(|s| s.span_context.trace_id() == trace && s.name.starts_with("nats-server"))
        .cloned()
        .collect();
    hops.sort_by_key(|s| s.start_time);
    hops
}

/// Publishes `MESSAGES` messages on `producer` (through the layer with the
/// bridge's settings), consumes them on `consumer`, and checks each trace:
/// PRODUCER → one hop span per server, in path order (`path`: the servers'
/// names, first to last) → `process`, one trace id throughout.
async fn assert_hops(producer: &NatsServer, consumer: &NatsServer, path: &[&str], jetstream: bool) {
    let telemetry = Telemetry::install();
    let publisher_client = connect(producer).await;
    let consumer_client = connect(consumer).await;
    let bridge = ServerHops::spawn(publisher_client.clone(), DEST, telemetry.tracer())
        .await
        .unwrap();
    assert!(bridge.is_running(), "{:?}", bridge.disabled_reason());

    let mut jobs = consumer_client
        .subscribe("hops.jobs.>")
        .await
        .unwrap()
        .with_trace_context();
    consumer_client.flush().await.unwrap();
    if producer.port() != consumer.port() {
        // The consumer's interest, and the bridge's, known across the link.
        server::wait_interest_propagated(producer, consumer, WAIT).unwrap();
        server::wait_interest_propagated(consumer, producer, WAIT).unwrap();
    }
    let layer = TracePropagationLayer::new().server_hops(bridge.publish_settings(), 1.0);
    if jetstream {
        let js = async_nats::jetstream::new(publisher_client.clone());
        create_stream(&js, "HOPS", "hops.jobs.>").await;
        let mut publisher = layer.layer(JetStreamPublisher::new(js));
        for i in 0..MESSAGES {
            publish(&mut publisher, Publish::new(format!("hops.jobs.{i}"), "{}"))
                .instrument(tracing::info_span!("api"))
                .await;
        }
    } else {
        let mut publisher = layer.layer(CorePublisher::new(publisher_client.clone()));
        for i in 0..MESSAGES {
            publish(&mut publisher, Publish::new(format!("hops.jobs.{i}"), "{}"))
                .instrument(tracing::info_span!("api"))
                .await;
        }
        publisher_client.flush().await.unwrap();
    }
    for _ in 0..MESSAGES {
        let (message, cx) = next(&mut jobs).await;
        let headers = message.headers.expect("headers");
        assert_eq!(
            headers.get("Nats-Trace-Dest").map(|v| v.as_str()),
            Some(DEST),
            "a sampled message asks the servers to report it"
        );
        drop(cx);
    }

    let expected = MESSAGES * path.len();
    let telemetry = &telemetry;
    wait::until("a hop span per server per message", WAIT, || async move {
        telemetry
            .spans()
            .iter()
            .filter(|s| s.name.starts_with("nats-server"))
            .count()
            >= expected
    })
    .await;

    let spans = telemetry.spans();
    for i in 0..MESSAGES {
        let find = |name: String| {
            spans
                .iter()
                .find(|s| s.name == name.as_str())
                .unwrap_or_else(|| panic!("no span {name}"))
                .clone()
        };
        let producer_span = find(format!("publish hops.jobs.{i}"));
        assert_eq!(producer_span.span_kind, SpanKind::Producer);
        let trace = producer_span.span_context.trace_id();
        let process = find(format!("process hops.jobs.{i}"));
        assert_eq!(process.span_context.trace_id(), trace);
        assert_eq!(process.parent_span_id, producer_span.span_context.span_id());

        let hops = hop_spans(&spans, trace);
        let names: Vec<&str> = hops.iter().map(|s| s.name.as_ref()).collect();
        let expected: Vec<String> = path.iter().map(|n| format!("nats-server {n}")).collect();
        assert_eq!(names, expected, "message {i}: hop spans in path order");
        for hop in &hops {
            assert_eq!(
                hop.parent_span_id,
                producer_span.span_context.span_id(),
                "{}",
                hop.name
            );
            assert!(
                hop.start_time >= producer_span.start_time,
                "{} starts before the publish",
                hop.name
            );
            assert!(
                hop.end_time <= process.end_time,
                "{} ends after the process span",
                hop.name
            );
        }
    }
    assert_eq!(bridge.stats().dropped(), 0, "{:?}", bridge.stats());
}

#[tokio::test]
async fn one_server_with_jetstream() {
    let server = NatsServer::builder().server_name("solo").start();
    assert_hops(&server, &server, &["solo"], true).await;
}

#[tokio::test]
async fn three_node_cluster_route_hops() {
    let nodes = server::cluster(3);
    let (first, last) = (&nodes[0], &nodes[2]);
    let names = [first.server_name().unwrap(), last.server_name().unwrap()];
    assert_hops(first, last, &names, false).await;
}

#[tokio::test]
async fn leafnode_hop() {
    let (hub, leaf) = server::leafnode_pair();
    let names = [leaf.server_name().unwrap(), hub.server_name().unwrap()];
    assert_hops(&leaf, &hub, &names, false).await;
}

#[tokio::test]
async fn gateway_hop() {
    let (a, b) = server::gateway_pair();
    let names = [b.server_name().unwrap(), a.server_name().unwrap()];
    assert_hops(&b, &a, &names, false).await;
}

/// Unsampled messages never ask the servers for events.
#[tokio::test]
async fn unsampled_messages_carry_no_trace_dest() {
    let telemetry = Telemetry::install_sampled(Sampler::AlwaysOff);
    let server = NatsServer::start();
    let client = connect(&server).await;
    let bridge = ServerHops::spawn(client.clone(), DEST, telemetry.tracer())
        .await
        .unwrap();
    let mut jobs = client.subscribe("hops.jobs.>").await.unwrap();
    client.flush().await.unwrap();
    let mut publisher = TracePropagationLayer::new()
        .server_hops(bridge.publish_settings(), 1.0)
        .layer(CorePublisher::new(client.clone()));
    for i in 0..MESSAGES {
        publish(&mut publisher, Publish::new(format!("hops.jobs.{i}"), "{}"))
            .instrument(tracing::info_span!("api"))
            .await;
    }
    for _ in 0..MESSAGES {
        let message = next(&mut jobs).await;
        let headers = message.headers.expect("trace headers");
        assert!(headers.get("traceparent").is_some());
        assert!(
            headers.get("Nats-Trace-Dest").is_none(),
            "unsampled, yet traced in the servers"
        );
    }
    assert_eq!(bridge.stats().events_received, 0);
}

/// On a server that rewrites trace headers under message tracing (2.11.0 to
/// 2.12.11), the bridge stays off with the reason, `diagnose_client` says
/// so, no message asks for trace events, and every trace still holds.
#[tokio::test]
async fn off_with_a_reason_on_a_server_that_rewrites_trace_headers() {
    let version = server::MINOR_LINE_SERVERS
        .iter()
        .find(|v| server::rewrites_traceparent(v))
        .expect("a pinned version from 2.11.0 to 2.12.11");
    let server = NatsServer::builder()
        .binary(server::binary_for_version(version))
        .start();
    let telemetry = Telemetry::install();
    let client = connect(&server).await;
    let bridge = ServerHops::spawn(client.clone(), DEST, telemetry.tracer())
        .await
        .unwrap();
    assert!(!bridge.is_running());
    let reason = bridge.disabled_reason().expect("the recorded reason");
    assert_eq!(reason.as_str(), "rewrites_trace_headers", "{reason}");
    assert_eq!(reason.version(), *version);
    let findings = nats_otel::diagnose::diagnose_client(&client).await;
    assert!(
        findings
            .iter()
            .any(|f| f.as_str() == "server_rewrites_trace_headers"),
        "{findings:?}"
    );

    let mut jobs = client
        .subscribe("hops.jobs.>")
        .await
        .unwrap()
        .with_trace_context();
    client.flush().await.unwrap();
    let mut publisher = TracePropagationLayer::new()
        .server_hops(bridge.publish_settings(), 1.0)
        .layer(CorePublisher::new(client.clone()));
    for i in 0..MESSAGES {
        publish(&mut publisher, Publish::new(format!("hops.jobs.{i}"), "{}"))
            .instrument(tracing::info_span!("api"))
            .await;
    }
    for _ in 0..MESSAGES {
        let (message, cx) = next(&mut jobs).await;
        let headers = message.headers.expect("trace headers");
        assert!(
            headers.get("Nats-Trace-Dest").is_none(),
            "traced on {version}"
        );
        drop(cx);
    }
    let spans = telemetry.spans();
    for i in 0..MESSAGES {
        let by_name = |name: String| spans.iter().find(|s| s.name == name.as_str()).unwrap();
        let producer = by_name(format!("publish hops.jobs.{i}"));
        let process = by_name(format!("process hops.jobs.{i}"));
        assert_eq!(process.parent_span_id, producer.span_context.span_id());
        assert_eq!(
            process.span_context.trace_id(),
            producer.span_context.trace_id()
        );
    }
    assert!(!spans.iter().any(|s| s.name.starts_with("nats-server")));
}
