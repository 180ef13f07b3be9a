//! JetStream: `fetch()` and `batch()` pull consumers through the adapter,
//! and publish errors through the layer, against a real server.

use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::{self};
use futures::{Stream, StreamExt};
use nats_otel::{
    ContextSource, JetStreamPublisher, MessageContextExt, Publish, TraceContextStreamExt,
    TracePropagationLayer,
};
use opentelemetry::trace::{SpanKind, Status};
use opentelemetry::Context;
use tower::{Layer, Service, ServiceExt};
use tracing::Instrument;

use crate::support::nats::*;
use crate::support::server::NatsServer;
use crate::support::telemetry::*;

const SUBJECTS: [&str; 3] = ["orders.0", "orders.1", "orders.2"];

/// A JetStream context with stream `ORDERS` on `orders.>` and a durable
/// pull consumer `worker`.
async fn orders(server: &NatsServer) -> (jetstream::Context, PullConsumer) {
    let js = jetstream(server).await;
    let stream = create_stream(&js, "ORDERS", "orders.>").await;
    let consumer = durable_consumer(&stream, "worker").await;
    (js, consumer)
}

/// Publishes one message per subject through the layer, each from its own
/// `api {i}` span (so each starts its own trace).
async fn publish_from_separate_requests(js: &jetstream::Context) {
    let mut publisher = TracePropagationLayer::new().layer(JetStreamPublisher::new(js.clone()));
    for (i, subject) in SUBJECTS.iter().enumerate() {
        let api = tracing::info_span!("api", otel.name = format!("api {i}"));
        let ack = publish_in_span(
            &mut publisher,
            api,
            Publish::new(*subject, format!("order {i}")),
        )
        .await;
        assert_eq!(ack.stream, "ORDERS");
    }
}

/// Handles every message of a `fetch()`/`batch()` stream inside a handler
/// span and acks it; returns the payloads in arrival order.
async fn handle_all<S>(messages: S) -> Vec<String>
where
    S: Stream<Item = Result<(jetstream::Message, Context), async_nats::Error>>,
{
    let mut messages = std::pin::pin!(messages);
    let mut payloads = Vec::new();
    while let Some(item) = tokio::time::timeout(WAIT, messages.next())
        .await
        .expect("the pull stream neither yielded nor ended in time")
    {
        let (message, cx) = item.unwrap();
        let record = cx.extraction().unwrap();
        assert_eq!(record.source(), ContextSource::Headers, "{record}");
        let handler = cx
            .handler_span(tracing::info_span!(
                "handler",
                otel.name = format!("handle {}", message.subject)
            ))
            .unwrap();
        async {
            message.ack().await.unwrap();
        }
        .instrument(handler)
        .await;
        payloads.push(String::from_utf8_lossy(&message.payload).into_owned());
    }
    payloads
}

/// Each message's spans hang under its own publish span, in its own trace.
fn assert_one_trace_per_request(telemetry: &Telemetry) {
    let mut traces = Vec::new();
    for (i, subject) in SUBJECTS.iter().enumerate() {
        let api = telemetry.span(&format!("api {i}"));
        let publish = telemetry.span(&format!("publish {subject}"));
        let process = telemetry.span(&format!("process {subject}"));
        let handler = telemetry.span(&format!("handle {subject}"));
        assert_root(&api);
        assert_child_of(&publish, &api);
        assert_kind(&publish, SpanKind::Producer);
        assert_child_of(&process, &publish);
        assert_kind(&process, SpanKind::Consumer);
        assert_child_of(&handler, &process);
        assert_within(&handler, &process);
        assert_attribute(&process, "messaging.nats.stream", "ORDERS");
        assert_attribute(&process, "messaging.consumer.group.name", "worker");
        traces.push(trace_id(&api));
    }
    let distinct: std::collections::HashSet<_> = traces.iter().collect();
    assert_eq!(
        distinct.len(),
        SUBJECTS.len(),
        "each request has its own trace"
    );
}

/// Handles every message of `messages` with [`handle_all`]: none is lost,
/// and each lands in the trace of the request that published it.
async fn assert_handled_each_in_its_own_trace<S>(telemetry: &Telemetry, messages: S)
where
    S: Stream<Item = Result<(jetstream::Message, Context), async_nats::Error>>,
{
    let payloads = handle_all(messages).await;
    assert_eq!(
        payloads,
        ["order 0", "order 1", "order 2"],
        "no message lost"
    );

    assert_one_trace_per_request(telemetry);
}

#[tokio::test]
async fn jetstream_fetch_gives_each_message_its_own_publishers_trace() {
    let telemetry = Telemetry::install();
    let server = NatsServer::start();
    let (js, consumer) = orders(&server).await;
    publish_from_separate_requests(&js).await;

    let messages = consumer
        .fetch()
        .max_messages(SUBJECTS.len())
        .messages()
        .await
        .unwrap()
        .with_trace_context();
    assert_handled_each_in_its_own_trace(&telemetry, messages).await;
}

#[tokio::test]
async fn jetstream_batch_gives_each_message_its_own_publishers_trace() {
    let telemetry = Telemetry::install();
    let server = NatsServer::start();
    let (js, consumer) = orders(&server).await;
    publish_from_separate_requests(&js).await;

    let messages = consumer
        .batch()
        .max_messages(SUBJECTS.len())
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .unwrap()
        .with_trace_context();
    assert_handled_each_in_its_own_trace(&telemetry, messages).await;
}

#[tokio::test]
async fn jetstream_publish_without_stream_returns_the_error_and_marks_the_span() {
    let telemetry = Telemetry::install();
    let server = NatsServer::start();
    let js = jetstream(&server).await;

    // The same publish without the layer, for comparison.
    let bare = JetStreamPublisher::new(js.clone())
        .oneshot(Publish::new("nowhere.job", "job"))
        .await
        .expect_err("no stream captures nowhere.job");

    let mut publisher = TracePropagationLayer::new().layer(JetStreamPublisher::new(js.clone()));
    let api = tracing::info_span!("api");
    let err = async {
        publisher
            .ready()
            .await
            .unwrap()
            .call(Publish::new("nowhere.job", "job"))
            .await
            .expect_err("no stream captures nowhere.job")
    }
    .instrument(api)
    .await;
    assert_eq!(
        err.to_string(),
        bare.to_string(),
        "the message is unchanged"
    );
    let err = err
        .into_publish_error()
        .expect("the inner service's error, not a KV write's");
    assert_eq!(err.kind(), PublishErrorKind::StreamNotFound, "{err}");
    assert_eq!(err.kind(), bare.kind());
    assert_eq!(err.to_string(), bare.to_string(), "the error is unchanged");

    let api = telemetry.span("api");
    let send = telemetry.span("publish nowhere.job");
    assert_child_of(&send, &api);
    match &send.status {
        Status::Error { description } => assert_eq!(description.as_ref(), err.to_string()),
        other => panic!("send span status {other:?}, expected Error"),
    }
    let error_type = attribute(&send, "error.type").expect("send span has error.type");
    assert!(
        !error_type.as_str().is_empty(),
        "error.type is empty: {error_type:?}"
    );
}
