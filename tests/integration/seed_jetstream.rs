//! The seed scenario: an API span publishes a job to JetStream through the
//! layer; a worker consumes it through the adapter; one trace, parent chain
//! api → send → process → handler.

use futures::StreamExt;
use nats_otel::{
    ContextSource, JetStreamPublisher, MessageContextExt, Publish, TraceContextStreamExt,
    TracePropagationLayer,
};
use opentelemetry::trace::SpanKind;
use tower::Layer;
use tracing::Instrument;

use crate::support::nats::*;
use crate::support::server::NatsServer;
use crate::support::telemetry::*;

#[tokio::test]
async fn seed_scenario_one_trace_through_jetstream() {
    let telemetry = Telemetry::install();
    let server = NatsServer::start();
    let js = jetstream(&server).await;
    let stream = jobs_stream(&js).await;
    let consumer = durable_consumer(&stream, "worker").await;

    let mut publisher = TracePropagationLayer::new().layer(JetStreamPublisher::new(js.clone()));
    let api = tracing::info_span!("api");
    let ack = publish_in_span(
        &mut publisher,
        api,
        Publish::new("jobs.resize", "{\"id\":1}"),
    )
    .await;
    assert_eq!(ack.stream, "JOBS");

    let mut messages = consumer.messages().await.unwrap().with_trace_context();
    let (message, cx) = messages.next().await.unwrap().unwrap();
    assert_eq!(cx.extraction().unwrap().source(), ContextSource::Headers);
    let handler = cx.handler_span(tracing::info_span!("handler")).unwrap();
    async {
        // Simulated handler work, so the handler span has a duration.
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        message.ack().await.unwrap();
    }
    .instrument(handler)
    .await;
    drop(cx);

    let api = telemetry.span("api");
    let send = telemetry.span("publish jobs.resize");
    let process = telemetry.span("process jobs.resize");
    let handler = telemetry.span("handler");
    assert_kind(&send, SpanKind::Producer);
    assert_kind(&process, SpanKind::Consumer);
    assert_child_of(&send, &api);
    assert_child_of(&process, &send);
    assert_child_of(&handler, &process);
    assert_within(&handler, &process);
    assert_attribute(&process, "messaging.nats.stream", "JOBS");
    assert_attribute(&send, "messaging.system", "nats");
}
