//! The global text-map propagator left as OpenTelemetry's default no-op.
//!
//! Nothing in this test binary may call
//! `opentelemetry::global::set_text_map_propagator` (see `main.rs`; tests
//! that do live in `tests/global_propagator/`).

use std::time::Duration;

use futures::StreamExt;
use nats_otel::{
    propagation::global_propagator_is_noop, ContextSource, MessageContextExt, TracePropagationLayer,
};
use opentelemetry::baggage::BaggageExt;
use opentelemetry::StringValue;
use tracing::Instrument;

use crate::support::nats::*;
use crate::support::server::NatsServer;
use crate::support::telemetry::*;

#[tokio::test]
async fn noop_global_propagator_still_propagates_publish_to_consume() {
    assert!(
        global_propagator_is_noop(),
        "this binary must leave the global propagator alone"
    );
    let telemetry = Telemetry::install();
    let server = NatsServer::start();
    let client = connect(&server).await;
    let mut jobs = traced_subscription(&client, "jobs.noop").await;

    publish_from_api(TracePropagationLayer::new(), &client, "jobs.noop").await;

    let (message, cx) = tokio::time::timeout(Duration::from_secs(10), jobs.next())
        .await
        .expect("no message within 10 s")
        .unwrap();
    assert_eq!(&message.payload[..], b"job");
    let headers = message.headers.as_ref().expect("headers were injected");
    assert!(headers.get("traceparent").is_some(), "{headers:?}");
    assert_eq!(
        headers.get("baggage").map(|v| v.as_str()),
        Some("tenant=acme"),
        "the W3C fallback includes baggage"
    );
    let record = cx.extraction().unwrap();
    assert_eq!(record.source(), ContextSource::Headers, "{record}");
    assert_eq!(cx.baggage().get("tenant"), Some(&StringValue::from("acme")));
    let handler = cx.handler_span(tracing::info_span!("handler")).unwrap();
    async {}.instrument(handler).await;
    drop(cx);

    let api = telemetry.span("api");
    let publish = telemetry.span("publish jobs.noop");
    let process = telemetry.span("process jobs.noop");
    let handler = telemetry.span("handler");
    assert_child_of(&publish, &api);
    assert_child_of(&process, &publish);
    assert_child_of(&handler, &process);
    assert!(
        global_propagator_is_noop(),
        "the crate never sets the global propagator"
    );
}
