//! Messaging semantic conventions on a real server: settlement spans, the
//! batch receive span with links, redelivery, filters and header capture.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, AckKind};
use futures::StreamExt;
use nats_otel::{
    consume::ContextExtractor, consume::NoContextReason, consume::Parenting, ContextSource,
    JetStreamPublisher, MessageContextExt, Publish, SettleExt, SubjectFilter,
    TraceContextStreamExt, TracePropagationLayer,
};
use opentelemetry::trace::SpanKind;
use opentelemetry::Value;
use tower::{Layer, Service, ServiceExt};
use tracing::Instrument;

use crate::support::nats::*;
use crate::support::server::NatsServer;
use crate::support::telemetry::*;

async fn setup(
    server: &NatsServer,
    ack_wait: Duration,
) -> (jetstream::Context, jetstream::consumer::PullConsumer) {
    let js = jetstream(server).await;
    let stream = jobs_stream(&js).await;
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("worker".into()),
            ack_wait,
            ..Default::default()
        })
        .await
        .unwrap();
    (js, consumer)
}

async fn publish_in_span(js: &jetstream::Context, span_name: &'static str, subject: &str) {
    let mut publisher = TracePropagationLayer::new().layer(JetStreamPublisher::new(js.clone()));
    let span = tracing::info_span!("api", otel.name = span_name);
    crate::support::nats::publish_in_span(
        &mut publisher,
        span,
        Publish::new(subject.to_owned(), "{}"),
    )
    .await;
}

#[tokio::test]
async fn settle_outcomes_are_client_spans_under_the_process_span() {
    let telemetry = Telemetry::install();
    let server = NatsServer::start();
    let (js, consumer) = setup(&server, Duration::from_secs(30)).await;
    for subject in ["jobs.a", "jobs.b", "jobs.c"] {
        publish_in_span(&js, "api", subject).await;
    }
    let mut messages = consumer.messages().await.unwrap().with_trace_context();
    for kind in [
        AckKind::Ack,
        AckKind::Nak(Some(Duration::from_secs(60))),
        AckKind::Term,
    ] {
        let (message, cx) = messages.next().await.unwrap().unwrap();
        message.settle(kind, &cx).await.unwrap();
        drop(cx);
    }
    drop(messages);

    for (operation, subject) in [("ack", "jobs.a"), ("nak", "jobs.b"), ("term", "jobs.c")] {
        let settle = telemetry.span(&format!("{operation} {subject}"));
        let process = telemetry.span(&format!("process {subject}"));
        let publish = telemetry.span(&format!("publish {subject}"));
        assert_kind(&settle, SpanKind::Client);
        assert_child_of(&settle, &process);
        assert_child_of(&process, &publish);
        assert_within(&settle, &process);
        assert_attribute(&settle, "messaging.operation.type", "settle");
        assert_attribute(&settle, "messaging.operation.name", operation);
        assert_attribute(&settle, "messaging.system", "nats");
        assert_attribute(&settle, "messaging.destination.name", subject);
        assert_eq!(
            settle.instrumentation_scope.name(),
            "nats-otel-tests",
            "without `.tracer(...)`, a `tracing` span"
        );
    }
}

/// With `tracing` spans and configured templates, a settlement is named by
/// the adapter's templates, like its `process` span.
#[tokio::test]
async fn settle_spans_are_named_by_the_adapters_templates() {
    let telemetry = Telemetry::install();
    let server = NatsServer::start();
    let (js, consumer) = setup(&server, Duration::from_secs(30)).await;
    publish_in_span(&js, "api", "jobs.a").await;
    let mut messages = consumer
        .messages()
        .await
        .unwrap()
        .with_trace_context()
        .subject_templates(nats_otel::subject::SubjectTemplates::new(["jobs.*"]).unwrap());
    let (message, cx) = messages.next().await.unwrap().unwrap();
    message.settle(AckKind::Ack, &cx).await.unwrap();
    drop((message, cx, messages));

    let settle = telemetry.span("ack jobs.*");
    let process = telemetry.span("process jobs.*");
    assert_child_of(&settle, &process);
    assert_attribute(&settle, "messaging.destination.name", "jobs.a");
    assert_attribute(&settle, "messaging.destination.template", "jobs.*");
}

#[tokio::test]
async fn fetch_batch_receive_span_links_every_creation_context() {
    let telemetry = Telemetry::install();
    let server = NatsServer::start();
    let (js, consumer) = setup(&server, Duration::from_secs(30)).await;
    for subject in ["jobs.1", "jobs.2", "jobs.3"] {
        publish_in_span(&js, "api", subject).await;
    }
    let mut batch = consumer
        .fetch()
        .max_messages(3)
        .messages()
        .await
        .unwrap()
        .with_trace_context()
        .receive_span(true);
    let mut seen = 0;
    while let Some(item) = batch.next().await {
        let (message, cx) = item.unwrap();
        message.ack().await.unwrap();
        drop(cx);
        seen += 1;
    }
    drop(batch);
    assert_eq!(seen, 3);

    let receive = telemetry.span("receive JOBS");
    assert_kind(&receive, SpanKind::Client);
    assert_receive_links(&telemetry, &receive, &["jobs.1", "jobs.2", "jobs.3"]);
}

async fn redeliver_once(redelivery: Option<Parenting>) -> Telemetry {
    let telemetry = Telemetry::install();
    let server = NatsServer::start();
    let (js, consumer) = setup(&server, Duration::from_secs(30)).await;
    publish_in_span(&js, "api", "jobs.retry").await;
    let mut extractor = ContextExtractor::new();
    if let Some(r) = redelivery {
        extractor = extractor.parenting(r);
    }
    let mut messages = nats_otel::ContextExtractingConsumer::with_extractor(
        consumer.messages().await.unwrap(),
        extractor,
    );
    let (first, cx) = messages.next().await.unwrap().unwrap();
    assert_eq!(first.info().unwrap().delivered, 1);
    first.settle(AckKind::Nak(None), &cx).await.unwrap();
    drop(cx);
    let (second, cx) = messages.next().await.unwrap().unwrap();
    assert_eq!(second.info().unwrap().delivered, 2);
    assert_eq!(cx.extraction().unwrap().source(), ContextSource::Headers);
    second.settle(AckKind::Ack, &cx).await.unwrap();
    drop(cx);
    telemetry
}

#[tokio::test]
async fn redelivery_same_trace_by_default() {
    let telemetry = redeliver_once(None).await;
    let publish = telemetry.span("publish jobs.retry");
    let processes = telemetry.spans_named("process jobs.retry");
    assert_eq!(processes.len(), 2);
    for process in &processes {
        assert_child_of(process, &publish);
        // Parent and link both, as the messaging conventions ask.
        assert!(
            process
                .links
                .iter()
                .any(|l| l.span_context.span_id() == span_id(&publish)),
            "the process span does not link the creation context"
        );
    }
    let delivered: Vec<_> = processes
        .iter()
        .map(|p| attribute(p, "messaging.nats.delivered"))
        .collect();
    assert!(delivered.contains(&Some(Value::I64(2))), "{delivered:?}");
}

#[tokio::test]
async fn redelivery_new_trace_with_link_when_configured() {
    let telemetry = redeliver_once(Some(Parenting::NewTraceOnRedelivery)).await;
    let publish = telemetry.span("publish jobs.retry");
    let processes = telemetry.spans_named("process jobs.retry");
    assert_eq!(processes.len(), 2);
    let first = processes
        .iter()
        .find(|p| attribute(p, "messaging.nats.delivered") == Some(Value::I64(1)))
        .unwrap();
    let second = processes
        .iter()
        .find(|p| attribute(p, "messaging.nats.delivered") == Some(Value::I64(2)))
        .unwrap();
    assert_child_of(first, &publish);
    assert_ne!(
        trace_id(second),
        trace_id(&publish),
        "retry piled under the original trace"
    );
    assert_eq!(second.parent_span_id, opentelemetry::trace::SpanId::INVALID);
    assert!(
        second
            .links
            .iter()
            .any(|l| l.span_context.span_id() == span_id(&publish)
                && l.span_context.trace_id() == trace_id(&publish)),
        "retry does not link the creation context"
    );
    // The ack of the retry lives in the retry's trace.
    let acks = telemetry.spans_named("ack jobs.retry");
    assert_eq!(acks.len(), 1);
    assert_child_of(&acks[0], second);
}

#[tokio::test]
async fn filters_names_and_captured_headers() {
    let telemetry = Telemetry::install();
    let server = NatsServer::start();
    let client = connect(&server).await;
    let mut subscriber = client
        .subscribe("orders.>")
        .await
        .unwrap()
        .with_trace_context();
    let extractor_skip = SubjectFilter::new(["orders.internal.>"]);
    let mut publisher = TracePropagationLayer::new()
        .span_name(|_| "publish orders".into())
        .capture_headers(["Order-Id"])
        .skip_subjects(SubjectFilter::new(["orders.internal.>"]))
        .layer(nats_otel::CorePublisher::new(client.clone()));
    let api = tracing::info_span!("api");
    async {
        for subject in ["orders.new", "orders.internal.audit"] {
            publisher
                .ready()
                .await
                .unwrap()
                .call(
                    Publish::new(subject, "{}")
                        .header("order-id", "o-17")
                        .unwrap(),
                )
                .await
                .unwrap();
        }
    }
    .instrument(api)
    .await;
    client.flush().await.unwrap();

    // A second adapter configuration over the same stream of messages.
    let extractor = ContextExtractor::new()
        .span_name(|_| "process orders".into())
        .capture_headers(["ORDER-ID"])
        .skip_subjects(extractor_skip);
    let (first, _) = subscriber.next().await.unwrap();
    let cx = extractor.extract(&nats_otel::consume::MessageMeta::of(&first));
    assert_eq!(cx.extraction().unwrap().source(), ContextSource::Headers);
    drop(cx);
    let (second, _) = subscriber.next().await.unwrap();
    assert_eq!(second.subject.as_str(), "orders.internal.audit");
    assert!(
        second
            .headers
            .as_ref()
            .is_none_or(|h| h.get("traceparent").is_none()),
        "a skipped subject got a traceparent"
    );
    let cx = extractor.extract(&nats_otel::consume::MessageMeta::of(&second));
    assert_eq!(
        cx.extraction().unwrap().reason(),
        Some(&NoContextReason::SkippedByFilter)
    );
    drop(cx);

    let publishes = telemetry.spans_named("publish orders");
    assert_eq!(
        publishes.len(),
        1,
        "the skipped subject got a producer span"
    );
    assert_attribute(&publishes[0], "messaging.nats.header.order-id", "o-17");
    let process = telemetry.span("process orders");
    assert_attribute(&process, "messaging.nats.header.order-id", "o-17");
    assert_child_of(&process, &publishes[0]);
}

/// With `tracing` spans the attributes a sampler may look at are span
/// fields, and the rest are set on the OpenTelemetry span once it records:
/// a recorded span must still carry every one of them.
#[tokio::test]
async fn recorded_tracing_spans_carry_every_messaging_attribute() {
    let telemetry = Telemetry::install();
    let server = NatsServer::start();
    let (js, consumer) = setup(&server, Duration::from_secs(30)).await;
    let mut publisher = TracePropagationLayer::new().layer(JetStreamPublisher::new(js.clone()));
    crate::support::nats::publish_in_span(
        &mut publisher,
        tracing::info_span!("api"),
        Publish::new("jobs.attrs", "12345678")
            .header("Nats-Msg-Id", "job-42")
            .unwrap(),
    )
    .await;
    let mut messages = consumer.messages().await.unwrap().with_trace_context();
    let (message, cx) = messages.next().await.unwrap().unwrap();
    message.ack().await.unwrap();
    drop(cx);
    drop(messages);

    let publish = telemetry.span("publish jobs.attrs");
    let process = telemetry.span("process jobs.attrs");
    assert_child_of(&process, &publish);
    for span in [&publish, &process] {
        assert_attribute(span, "messaging.system", "nats");
        assert_attribute(span, "messaging.destination.name", "jobs.attrs");
        assert_attribute(span, "messaging.message.body.size", 8i64);
    }
    assert_kind(&publish, SpanKind::Producer);
    assert_attribute(&publish, "messaging.operation.type", "send");
    assert_attribute(&publish, "messaging.operation.name", "publish");
    assert_attribute(&publish, "messaging.message.id", "job-42");

    assert_kind(&process, SpanKind::Consumer);
    assert_attribute(&process, "messaging.operation.type", "process");
    assert_attribute(&process, "messaging.operation.name", "process");
    assert_attribute(&process, "nats_otel.context.source", "headers");
    assert_eq!(attribute(&process, "nats_otel.context.reason"), None);
    assert_attribute(&process, "messaging.consumer.group.name", "worker");
    assert_attribute(
        &process,
        "messaging.destination.subscription.name",
        "worker",
    );
    assert_attribute(&process, "messaging.nats.stream", "JOBS");
    assert_attribute(&process, "messaging.nats.stream.sequence", 1i64);
    assert_attribute(&process, "messaging.nats.delivered", 1i64);
}
