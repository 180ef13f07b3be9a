//! # jetstream_worker: handler spans and settlement on a JetStream pull consumer
//!
//! A worker reads a durable pull consumer through `.with_trace_context()`. Each message
//! comes with the Context of a CONSUMER `process` span (a child of the publisher's span);
//! `cx.handler_span(..)` makes the handler's span its child, and `message.settle(kind, &cx)`
//! acks (or terms) inside a CLIENT span of the same trace. To have something to consume, it
//! first publishes three orders through `TracePropagationLayer` + `JetStreamPublisher`,
//! each from its own request span; the last one is invalid and gets `term`.
//!
//! Run it against a JetStream-enabled server (`nats-server -js`):
//!
//! ```text
//! NATS_URL=nats://127.0.0.1:4222 cargo run --example jetstream_worker
//! ```

use async_nats::jetstream::{self, consumer::pull, AckKind};
use futures::StreamExt;
use nats_otel::{
    JetStreamPublisher, MessageContextExt, Publish, SettleExt, TraceContextStreamExt,
    TracePropagationLayer,
};
use opentelemetry::trace::{TraceContextExt, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tower::{Layer, Service, ServiceExt};
use tracing::{info_span, Instrument, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    // Spans get real trace ids; add your exporter to the provider to see them elsewhere.
    let provider = SdkTracerProvider::builder().build();
    let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer("worker-example"));
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(otel))?;

    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let client = async_nats::connect(&url).await?;
    let js = jetstream::new(client.clone());
    let stream = js
        .get_or_create_stream(jetstream::stream::Config {
            name: "ORDERS".into(),
            subjects: vec!["orders.>".into()],
            ..Default::default()
        })
        .await?;
    let consumer = stream
        .get_or_create_consumer(
            "order-worker",
            pull::Config {
                durable_name: Some("order-worker".into()),
                ..Default::default()
            },
        )
        .await?;

    // The publisher, for the example's sake: three orders, each from a request span.
    let mut publisher = TracePropagationLayer::new().layer(JetStreamPublisher::new(js.clone()));
    for quantity in ["2", "5", "many"] {
        let request = info_span!("POST /orders");
        let trace_id = trace_id_of(&request);
        let order = Publish::new("orders.new", quantity);
        let ack = async { publisher.ready().await?.call(order).await }
            .instrument(request)
            .await?;
        println!(
            "published order {quantity:?} seq={} trace={trace_id}",
            ack.sequence
        );
    }

    // The worker.
    let mut orders = consumer.messages().await?.with_trace_context().take(3);
    while let Some(item) = orders.next().await {
        let (message, cx) = item?;
        let span = cx.handler_span(info_span!("handle_order"))?;
        let trace_id = trace_id_of(&span);
        let outcome = handle_order(&message.payload).instrument(span).await;
        let kind = match &outcome {
            Ok(()) => AckKind::Ack,
            Err(_) => AckKind::Term, // invalid for good: do not redeliver
        };
        message.settle(kind, &cx).await?;
        let source = cx
            .extraction()
            .map_or("-", |record| record.source().as_str());
        let seq = message.info()?.stream_sequence;
        println!("handled   seq={seq} trace={trace_id} context={source} outcome={outcome:?}");
    }
    client.flush().await?; // acks are buffered like any publish: send them before exiting
    provider.shutdown()?;
    Ok(())
}

/// The work, in the `handle_order` span (its child spans land in the same trace).
async fn handle_order(payload: &[u8]) -> Result<(), String> {
    let text = std::str::from_utf8(payload).map_err(|e| e.to_string())?;
    let quantity: u32 = text.parse().map_err(|_| format!("bad quantity {text:?}"))?;
    tokio::time::sleep(std::time::Duration::from_millis(5 * u64::from(quantity)))
        .instrument(info_span!("pack"))
        .await;
    Ok(())
}

fn trace_id_of(span: &Span) -> TraceId {
    span.context().span().span_context().trace_id()
}
