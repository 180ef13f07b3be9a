//! Spans made with an OpenTelemetry tracer (`.tracer(...)` on the layer and
//! the adapter) instead of as `tracing` spans: the same trees, parents,
//! attributes and error handling, against a real server; spans checked
//! through the in-memory exporter.

use async_nats::HeaderMap;
use futures::StreamExt;
use nats_otel::publish::PublishMessage as _;
use nats_otel::{
    consume::ContextExtractor, consume::MessageMeta, consume::Parenting, publish::Requester,
    ContextExtractingConsumer, ContextSource, CorePublisher, JetStreamPublisher, MessageContextExt,
    Publish, TraceContextStreamExt, TracePropagationLayer,
};
use opentelemetry::global::BoxedTracer;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt};
use opentelemetry_sdk::trace::Sampler;
use tower::{Layer, Service, ServiceExt};
use tracing::Instrument;

use crate::support::nats::*;
use crate::support::server::NatsServer;
use crate::support::telemetry::*;

#[tokio::test]
async fn core_chain_api_publish_process_handler_with_a_tracer() {
    let telemetry = Telemetry::install();
    let server = NatsServer::start();
    let client = connect(&server).await;
    let mut jobs = client
        .subscribe("jobs.otel")
        .await
        .unwrap()
        .with_trace_context()
        .tracer(telemetry.tracer());
    client.flush().await.unwrap();

    let mut publisher = TracePropagationLayer::new()
        .tracer(telemetry.tracer())
        .capture_headers(["Job-Kind"])
        .layer(CorePublisher::new(client.clone()));
    let api = tracing::info_span!("api");
    let publish_request = Publish::new("jobs.otel", "{\"id\":1}")
        .header("Job-Kind", "resize")
        .unwrap();
    publish_in_span(&mut publisher, api, publish_request).await;

    let (message, cx) = next(&mut jobs).await;
    assert_eq!(&message.payload[..], b"{\"id\":1}");
    assert_eq!(
        cx.extraction().map(|r| r.source()),
        Some(ContextSource::Headers)
    );
    assert!(
        cx.process_span().is_none(),
        "no tracing span when a tracer makes the process span"
    );
    assert!(
        cx.span().is_recording(),
        "the process span is in the context"
    );
    handle(cx).await;

    let Chain {
        publish, process, ..
    } = telemetry.chain("jobs.otel");
    assert_eq!(publish.instrumentation_scope.name(), "nats-otel");
    for (span, operation) in [(&publish, "send"), (&process, "process")] {
        assert_attribute(span, "messaging.system", "nats");
        assert_attribute(span, "messaging.destination.name", "jobs.otel");
        assert_attribute(span, "messaging.operation.type", operation);
        assert_attribute(span, "messaging.message.body.size", 8i64);
    }
    assert_attribute(&publish, "messaging.nats.header.job-kind", "resize");
    assert_attribute(&process, "nats_otel.context.source", "headers");
}

#[tokio::test]
async fn explicit_context_is_the_parent_with_a_tracer() {
    let telemetry = Telemetry::install();
    let server = NatsServer::start();
    let client = connect(&server).await;
    let mut jobs = traced_subscription(&client, "jobs.explicit").await;

    let api = tracing::info_span!("api");
    let api_cx = {
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        api.context()
    };
    // Published outside any span: only the explicit context says who the
    // parent is.
    let mut publisher = TracePropagationLayer::new()
        .tracer(telemetry.tracer())
        .layer(CorePublisher::new(client.clone()));
    publish(
        &mut publisher,
        Publish::new("jobs.explicit", "x").context(api_cx),
    )
    .await;
    drop(api);

    let (_message, cx) = next(&mut jobs).await;
    drop(cx);
    let api = telemetry.span("api");
    let publish = telemetry.span("publish jobs.explicit");
    assert_child_of(&publish, &api);
    assert_child_of(&telemetry.span("process jobs.explicit"), &publish);
}

#[tokio::test]
async fn jetstream_publish_error_marks_the_producer_span_with_a_tracer() {
    let telemetry = Telemetry::install();
    let server = NatsServer::start();
    let js = jetstream(&server).await;
    let mut publisher = TracePropagationLayer::new()
        .tracer(telemetry.tracer())
        .layer(JetStreamPublisher::new(js));

    // No stream listens on this subject.
    let error = publisher
        .ready()
        .await
        .unwrap()
        .call(Publish::new("nowhere.otel", "x"))
        .await
        .expect_err("no stream: the publish must fail");
    let publish = telemetry.span("publish nowhere.otel");
    assert!(
        matches!(&publish.status, Status::Error { description } if description.contains(&error.to_string())),
        "status {:?} should carry {error}",
        publish.status
    );
    assert!(attribute(&publish, "error.type").is_some());
}

#[tokio::test]
async fn jetstream_chain_and_redelivery_link_with_a_tracer() {
    let telemetry = Telemetry::install();
    let server = NatsServer::start();
    let js = jetstream(&server).await;
    let stream = jobs_stream(&js).await;
    let consumer = durable_consumer(&stream, "worker").await;
    let mut publisher = TracePropagationLayer::new()
        .tracer(telemetry.tracer())
        .layer(JetStreamPublisher::new(js.clone()));
    publish_in_span(
        &mut publisher,
        tracing::info_span!("api"),
        Publish::new("jobs.redo", "x"),
    )
    .await;

    let extractor = ContextExtractor::new()
        .tracer(telemetry.tracer())
        .parenting(Parenting::NewTraceOnRedelivery);
    let mut messages =
        ContextExtractingConsumer::with_extractor(consumer.messages().await.unwrap(), extractor);
    // First delivery: nak it so it comes again.
    let (message, cx) = next(&mut messages).await.unwrap();
    drop(cx);
    message
        .ack_with(async_nats::jetstream::AckKind::Nak(None))
        .await
        .unwrap();
    let (message, cx) = next(&mut messages).await.unwrap();
    assert_eq!(message.info().unwrap().delivered, 2);
    drop(cx);
    message.ack().await.unwrap();

    let api = telemetry.span("api");
    let publish = telemetry.span("publish jobs.redo");
    assert_child_of(&publish, &api);
    let processes = telemetry.spans_named("process jobs.redo");
    assert_eq!(processes.len(), 2, "one process span per delivery");
    let first = processes
        .iter()
        .find(|s| attribute(s, "messaging.nats.delivered") == Some(1i64.into()))
        .expect("first delivery span");
    let second = processes
        .iter()
        .find(|s| attribute(s, "messaging.nats.delivered") == Some(2i64.into()))
        .expect("second delivery span");
    assert_child_of(first, &publish);
    assert_attribute(first, "messaging.nats.stream", "JOBS");
    assert_root(second);
    assert_ne!(
        trace_id(second),
        trace_id(&api),
        "a new trace for the retry"
    );
    assert_eq!(second.links.len(), 1);
    assert_eq!(
        second.links.links[0].span_context.span_id(),
        span_id(&publish),
        "the retry links to the creation context"
    );
}

#[tokio::test]
async fn missing_context_is_recorded_on_the_process_span_with_a_tracer() {
    let telemetry = Telemetry::install();
    let meta_message = async_nats::Message {
        subject: "jobs.bare".into(),
        reply: None,
        payload: "{}".into(),
        headers: Some(HeaderMap::new()),
        status: None,
        description: None,
        length: 0,
    };
    let cx = ContextExtractor::new()
        .tracer(telemetry.tracer())
        .extract(&MessageMeta::of(&meta_message));
    let record = cx.extraction().unwrap().clone();
    assert_eq!(record.source(), ContextSource::None);
    drop(cx);
    let process = telemetry.span("process jobs.bare");
    assert_root(&process);
    assert_attribute(&process, "nats_otel.context.source", "none");
    assert_attribute(
        &process,
        "nats_otel.context.reason",
        record.reason().unwrap().as_str(),
    );
}

/// With spans unsampled the trace still crosses NATS: the consumer gets the
/// producer's trace id, and nothing is exported.
#[tokio::test]
async fn unsampled_spans_still_carry_the_trace_id_with_a_tracer() {
    let telemetry = Telemetry::install_sampled(Sampler::AlwaysOff);
    let server = NatsServer::start();
    let client = connect(&server).await;
    let mut raw = client.subscribe("jobs.unsampled").await.unwrap();
    client.flush().await.unwrap();
    let mut publisher = TracePropagationLayer::new()
        .tracer(telemetry.tracer())
        .layer(CorePublisher::new(client.clone()));
    publish(&mut publisher, Publish::new("jobs.unsampled", "x")).await;

    let message = next(&mut raw).await;
    let traceparent = message
        .headers
        .as_ref()
        .and_then(|h| h.get("traceparent"))
        .expect("a traceparent even when unsampled")
        .to_string();
    assert!(traceparent.ends_with("-00"), "not sampled: {traceparent}");
    let cx = ContextExtractor::new()
        .tracer(telemetry.tracer())
        .extract(&MessageMeta::of(&message));
    let trace_id = cx.span().span_context().trace_id().to_string();
    assert_eq!(&traceparent[3..35], trace_id, "same trace on both sides");
    assert!(!cx.span().is_recording());
    drop(cx);
    assert!(
        telemetry.spans().is_empty(),
        "nothing sampled, nothing exported"
    );
}

/// Request/reply with spans from a tracer behind `BoxedTracer` (what
/// `opentelemetry::global::tracer` returns): the responder joins the
/// requester's trace and the request span covers the round trip.
#[tokio::test]
async fn request_reply_with_a_boxed_tracer() {
    let telemetry = Telemetry::install();
    let server = NatsServer::start();
    let client = connect(&server).await;
    let boxed = || BoxedTracer::new(Box::new(telemetry.tracer()));

    let mut requests = client
        .subscribe("svc.boxed")
        .await
        .unwrap()
        .with_trace_context()
        .tracer(boxed());
    client.flush().await.unwrap();
    let responder_client = client.clone();
    let responder = tokio::spawn(async move {
        let (request, cx) = next(&mut requests).await;
        let reply = request.reply.clone().expect("a reply subject");
        let span = cx.handler_span(tracing::info_span!("responder")).unwrap();
        async move {
            responder_client
                .publish(reply, "pong".into())
                .await
                .unwrap();
            responder_client.flush().await.unwrap();
        }
        .instrument(span)
        .await;
        drop(cx);
    });

    let mut requester = TracePropagationLayer::new()
        .tracer(boxed())
        .layer(Requester::new(client.clone()));
    let reply = publish_in_span(
        &mut requester,
        tracing::info_span!("api"),
        Publish::new("svc.boxed", "ping"),
    )
    .await;
    assert_eq!(&reply.payload[..], b"pong");
    tokio::time::timeout(WAIT, responder)
        .await
        .expect("responder finished")
        .unwrap();

    let api = telemetry.span("api");
    let request = telemetry.span("publish svc.boxed");
    let process = telemetry.span("process svc.boxed");
    let responder = telemetry.span("responder");
    assert_child_of(&request, &api);
    assert_kind(&request, SpanKind::Producer);
    assert_child_of(&process, &request);
    assert_child_of(&responder, &process);
    assert_within(&responder, &process);
    assert!(request.end_time >= responder.end_time);
}

/// The header a publish through `publisher` carries, read by a plain
/// subscriber on the same connection.
async fn traceparent_sent<S>(
    client: &async_nats::Client,
    publisher: &mut S,
    publish: Publish,
) -> String
where
    S: tower::Service<Publish>,
    S::Error: std::fmt::Debug,
{
    let mut raw = client
        .subscribe(publish.subject().to_owned())
        .await
        .unwrap();
    client.flush().await.unwrap();
    crate::support::nats::publish(publisher, publish).await;
    let message = next(&mut raw).await;
    message
        .headers
        .as_ref()
        .and_then(|h| h.get("traceparent"))
        .expect("a traceparent")
        .to_string()
}

/// Through a propagator given explicitly (the generic path, not the W3C
/// fast path), the PRODUCER span made with the tracer is what is injected.
#[tokio::test]
async fn custom_propagator_injects_the_tracer_span() {
    let telemetry = Telemetry::install();
    let server = NatsServer::start();
    let client = connect(&server).await;
    let mut publisher = TracePropagationLayer::new()
        .tracer(telemetry.tracer())
        .propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new())
        .layer(CorePublisher::new(client.clone()));
    let sent = traceparent_sent(&client, &mut publisher, Publish::new("jobs.custom", "x")).await;
    let publish = telemetry.span("publish jobs.custom");
    assert_eq!(
        sent,
        format!("00-{}-{}-01", trace_id(&publish), span_id(&publish))
    );
}

/// A caller's own `traceparent` is kept; the PRODUCER span is still made.
#[tokio::test]
async fn caller_traceparent_is_kept_with_a_tracer() {
    let telemetry = Telemetry::install();
    let server = NatsServer::start();
    let client = connect(&server).await;
    let mut publisher = TracePropagationLayer::new()
        .tracer(telemetry.tracer())
        .layer(CorePublisher::new(client.clone()));
    let own = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let request = Publish::new("jobs.own", "x")
        .header("Traceparent", own)
        .unwrap();
    let sent = {
        let mut raw = client.subscribe("jobs.own").await.unwrap();
        client.flush().await.unwrap();
        crate::support::nats::publish(&mut publisher, request).await;
        let message = next(&mut raw).await;
        let headers = message.headers.expect("headers");
        assert!(headers.get("traceparent").is_none(), "nothing added");
        headers.get("Traceparent").unwrap().to_string()
    };
    assert_eq!(sent, own);
    telemetry.span("publish jobs.own");
}

/// A tracer whose provider was shut down makes empty spans: the caller's
/// context is injected as it is, and the consumer hands the extracted
/// context to the handler, so the trace still crosses NATS.
#[tokio::test]
async fn a_shut_down_tracer_still_propagates_the_callers_context() {
    let _telemetry = Telemetry::install();
    let server = NatsServer::start();
    let client = connect(&server).await;
    let gone = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let tracer = {
        use opentelemetry::trace::TracerProvider as _;
        gone.tracer("gone")
    };
    gone.shutdown().unwrap();
    let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let parent_cx = {
        use opentelemetry::propagation::TextMapPropagator as _;
        let mut carrier = std::collections::HashMap::new();
        carrier.insert("traceparent".to_string(), parent.to_string());
        opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(&carrier)
    };
    let mut publisher = TracePropagationLayer::new()
        .tracer(tracer.clone())
        .layer(CorePublisher::new(client.clone()));
    let mut raw = client.subscribe("jobs.gone").await.unwrap();
    client.flush().await.unwrap();
    crate::support::nats::publish(
        &mut publisher,
        Publish::new("jobs.gone", "x").context(parent_cx),
    )
    .await;
    let message = next(&mut raw).await;
    assert_eq!(
        message
            .headers
            .as_ref()
            .unwrap()
            .get("traceparent")
            .unwrap()
            .as_str(),
        parent
    );
    let cx = ContextExtractor::new()
        .tracer(tracer)
        .extract(&MessageMeta::of(&message));
    assert_eq!(
        cx.span().span_context().span_id().to_string(),
        "b7ad6b7169203331",
        "the handler runs under the extracted context"
    );
}

/// Settlement spans under a context whose `process` span came from a tracer
/// are made with that tracer too: CLIENT spans, children of the `process`
/// span, in the tracer's instrumentation scope.
#[tokio::test]
async fn settle_spans_come_from_the_adapters_tracer() {
    use nats_otel::SettleExt;

    let telemetry = Telemetry::install();
    let server = NatsServer::start();
    let consumer = published_jobs(&server, &["jobs.settle.a", "jobs.settle.b"]).await;
    let mut messages = consumer
        .messages()
        .await
        .unwrap()
        .with_trace_context()
        .tracer(telemetry.tracer());
    for kind in [
        async_nats::jetstream::AckKind::Ack,
        async_nats::jetstream::AckKind::Term,
    ] {
        let (message, cx) = next(&mut messages).await.unwrap();
        message.settle(kind, &cx).await.unwrap();
    }
    drop(messages);

    for (operation, subject) in [("ack", "jobs.settle.a"), ("term", "jobs.settle.b")] {
        let settle = telemetry.span(&format!("{operation} {subject}"));
        let process = telemetry.span(&format!("process {subject}"));
        let publish = telemetry.span(&format!("publish {subject}"));
        assert_eq!(
            settle.instrumentation_scope.name(),
            "nats-otel",
            "made with the adapter's tracer, not through tracing"
        );
        assert_eq!(process.instrumentation_scope.name(), "nats-otel");
        assert_kind(&settle, SpanKind::Client);
        assert_child_of(&settle, &process);
        assert_child_of(&process, &publish);
        assert_within(&settle, &process);
        assert_attribute(&settle, "messaging.system", "nats");
        assert_attribute(&settle, "messaging.destination.name", subject);
        assert_attribute(&settle, "messaging.operation.type", "settle");
        assert_attribute(&settle, "messaging.operation.name", operation);
        assert_eq!(settle.status, Status::Unset);
    }
}

/// A message type of one's own, whose details leave out the JetStream ones
/// (as `MessageMeta::of` does), still gets settle spans from the adapter's
/// tracer, named with its templates.
#[tokio::test]
async fn settle_spans_follow_the_adapter_for_messages_without_jetstream_details() {
    use nats_otel::consume::ConsumerItem;
    use nats_otel::subject::SubjectTemplates;
    use nats_otel::SettleExt;

    struct Job(async_nats::jetstream::Message);

    impl ConsumerItem for Job {
        type WithContext = (Job, opentelemetry::Context);
        fn meta(&self) -> Option<MessageMeta<'_>> {
            Some(MessageMeta::of(&self.0.message))
        }
        fn attach(self, cx: opentelemetry::Context) -> Self::WithContext {
            (self, cx)
        }
    }

    let telemetry = Telemetry::install();
    let server = NatsServer::start();
    let consumer = published_jobs(&server, &["jobs.own"]).await;
    let mut messages = consumer
        .messages()
        .await
        .unwrap()
        .map(|item| item.map(Job))
        .with_trace_context()
        .tracer(telemetry.tracer())
        .subject_templates(SubjectTemplates::new(["jobs.*"]).unwrap());
    let (job, cx) = next(&mut messages).await.unwrap();
    job.0
        .settle(async_nats::jetstream::AckKind::Ack, &cx)
        .await
        .unwrap();
    // The `process` span ends with the last clone of its context.
    drop((job, cx, messages));

    let settle = telemetry.span("ack jobs.*");
    let process = telemetry.span("process jobs.*");
    assert_eq!(
        settle.instrumentation_scope.name(),
        "nats-otel",
        "made with the adapter's tracer, not through tracing"
    );
    assert_child_of(&settle, &process);
    assert_attribute(&settle, "messaging.destination.name", "jobs.own");
}

/// The batch `receive` span is made with the adapter's tracer too: a CLIENT
/// root named after the stream, linked to every message's creation context.
#[tokio::test]
async fn receive_span_comes_from_the_adapters_tracer() {
    let telemetry = Telemetry::install();
    let server = NatsServer::start();
    let subjects = ["jobs.batch.1", "jobs.batch.2", "jobs.batch.3"];
    let consumer = published_jobs(&server, &subjects).await;
    let mut batch = consumer
        .fetch()
        .max_messages(3)
        .messages()
        .await
        .unwrap()
        .with_trace_context()
        .tracer(telemetry.tracer())
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
    assert_eq!(receive.instrumentation_scope.name(), "nats-otel");
    assert_kind(&receive, SpanKind::Client);
    assert_root(&receive);
    assert_attribute(&receive, "messaging.system", "nats");
    assert_attribute(&receive, "messaging.operation.type", "receive");
    assert_attribute(&receive, "messaging.operation.name", "receive");
    assert_attribute(&receive, "messaging.destination.name", "JOBS");
    assert_receive_links(&telemetry, &receive, &subjects);
}

/// A parent context that was not sampled (what most requests carry with
/// 1-10 % sampling).
fn unsampled_parent() -> opentelemetry::Context {
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
    opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
        TraceId::from(0x0af7651916cd43dd8448eb211c80319c),
        SpanId::from(0xb7ad6b7169203331),
        TraceFlags::default(),
        true,
        TraceState::from_key_value([("vendor", "v1")]).unwrap(),
    ))
}

/// Under an unsampled parent the layer makes no span (by default), but the
/// message still carries the trace: the parent's trace id and tracestate, a
/// new span id, the unsampled flag. With `unsampled_producer_spans(true)`, a
/// sampler that samples children of unsampled parents gets its span. Both
/// with a tracer and with `tracing` spans.
#[tokio::test]
async fn unsampled_parent_makes_no_span_but_carries_the_trace() {
    // Not parent-based: it would sample a child of an unsampled parent.
    let telemetry = Telemetry::install_sampled(Sampler::AlwaysOn);
    let server = NatsServer::start();
    let client = connect(&server).await;
    let parent = unsampled_parent();
    let parent_trace = "0af7651916cd43dd8448eb211c80319c";

    let layers = [
        (
            "tracer",
            TracePropagationLayer::new().tracer(telemetry.tracer()),
        ),
        ("tracing", TracePropagationLayer::new()),
    ];
    let mut span_ids = Vec::new();
    for (how, layer) in layers {
        for unsampled_spans in [false, true] {
            let mut publisher = layer
                .clone()
                .unsampled_producer_spans(unsampled_spans)
                .layer(CorePublisher::new(client.clone()));
            let subject = format!("jobs.unsampled.{how}.{unsampled_spans}");
            let message = {
                let mut raw = client.subscribe(subject.clone()).await.unwrap();
                client.flush().await.unwrap();
                let publish = Publish::new(subject.clone(), "x").context(parent.clone());
                crate::support::nats::publish(&mut publisher, publish).await;
                next(&mut raw).await
            };
            let headers = message.headers.as_ref().expect("headers");
            let traceparent = headers.get("traceparent").expect("traceparent").as_str();
            let parts: Vec<&str> = traceparent.split('-').collect();
            assert_eq!(parts[1], parent_trace, "{how}: the parent's trace");
            assert_ne!(parts[2], "b7ad6b7169203331", "{how}: a span id of its own");
            assert_ne!(parts[2], "0000000000000000", "{how}: a valid span id");
            assert_eq!(
                headers.get("Traceparent").map(|v| v.as_str()),
                Some(traceparent),
                "{how}: under both names"
            );
            assert_eq!(
                headers.get("tracestate").map(|v| v.as_str()),
                Some("vendor=v1"),
                "{how}: the parent's tracestate"
            );
            let producer: Vec<_> = telemetry
                .spans()
                .into_iter()
                .filter(|s| s.span_kind == SpanKind::Producer && s.name.contains(how))
                .collect();
            if unsampled_spans {
                assert_eq!(parts[3], "01", "{how}: AlwaysOn sampled the span");
                assert_eq!(producer.len(), 1, "{how}: the span was made");
                assert_eq!(
                    producer[0].span_context.span_id().to_string(),
                    parts[2],
                    "{how}: the span is what was injected"
                );
                assert_eq!(
                    producer[0].parent_span_id.to_string(),
                    "b7ad6b7169203331",
                    "{how}: under the unsampled parent"
                );
            } else {
                assert_eq!(parts[3], "00", "{how}: not sampled");
                assert!(producer.is_empty(), "{how}: no span made: {producer:?}");
            }
            span_ids.push(parts[2].to_owned());
        }
    }
    span_ids.sort();
    span_ids.dedup();
    assert_eq!(span_ids.len(), 4, "a new span id per message");
}
