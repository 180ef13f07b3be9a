//! # publish: one trace across a core NATS publish
//!
//! The publisher wraps `CorePublisher` in `TracePropagationLayer`, which starts a PRODUCER
//! span and writes `traceparent` into the message headers. The subscriber wraps its
//! subscription with `.with_trace_context()`, which reads it back: the handler span is in the
//! publisher's trace. An in-memory exporter stands in for your real one (OTLP, Jaeger ...),
//! so the example can print the spans it recorded.
//!
//! Run it against any nats-server (`nats-server`, JetStream not needed):
//!
//! ```text
//! NATS_URL=nats://127.0.0.1:4222 cargo run --example publish
//! ```

use futures::StreamExt;
use nats_otel::{
    CorePublisher, MessageContextExt, Publish, TraceContextStreamExt, TracePropagationLayer,
};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tower::{Layer, Service, ServiceExt};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    // `tracing` spans become OpenTelemetry spans through the tracing-opentelemetry layer.
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer("publish-example"));
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(otel))?;

    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let client = async_nats::connect(&url).await?;

    // Consume side: subscribe (before publishing) and wrap the subscription.
    let mut greetings = client.subscribe("greetings").await?.with_trace_context();

    // Publish side: inside your traced request, publish through the layer.
    let mut publisher = TracePropagationLayer::new().layer(CorePublisher::new(client.clone()));
    let request = tracing::info_span!("handle_request");
    let published_in = request.context().span().span_context().trace_id();
    async {
        let message = Publish::new("greetings", "hello").header("Greeting-Id", "1")?;
        publisher.ready().await?.call(message).await?;
        Ok::<_, Error>(())
    }
    .instrument(request)
    .await?;
    println!("published in trace {published_in}");

    // Each message comes with the Context the handler runs in: a CONSUMER `process` span
    // whose parent is the publisher's PRODUCER span.
    let (message, cx) = greetings.next().await.ok_or("subscription closed")?;
    let record = cx.extraction().ok_or("the adapter always records")?;
    let handler = cx.handler_span(tracing::info_span!("handle_greeting"))?;
    let continued = handler.context().span().span_context().trace_id();
    async {
        let text = String::from_utf8_lossy(&message.payload);
        println!("received {text:?} on {}", message.subject);
    }
    .instrument(handler)
    .await;
    println!(
        "continued trace    {continued} (context from {}, same trace: {})",
        record.source(),
        continued == published_in
    );
    drop(cx); // ends the `process` span

    // What an exporter would have sent: one trace, from the request to the handler.
    provider.force_flush()?;
    let mut spans = exporter.get_finished_spans()?;
    spans.sort_by_key(|span| span.start_time);
    for span in &spans {
        println!(
            "  {:<17} {:<9} trace={} span={} parent={}",
            span.name,
            format!("{:?}", span.span_kind),
            span.span_context.trace_id(),
            span.span_context.span_id(),
            span.parent_span_id,
        );
    }
    provider.shutdown()?;
    if continued != published_in {
        return Err("the consumer did not continue the publisher's trace".into());
    }
    Ok(())
}
