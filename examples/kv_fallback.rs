//! # kv_fallback: the trace survives a relay that drops every header
//!
//! A relay (a bridge, a connector, a legacy service) republishes `in.orders.<id>` to
//! `out.orders.<id>` with the payload only: `traceparent` is lost on the way. The same
//! `KvFallback` policy on both sides recovers it: the publisher's layer also writes the
//! carrier to a KV bucket under a key both sides can derive from what survives (here the
//! order id, subject token 2), and the consumer, finding no headers, reads it back. The
//! record says so: source `kv`, reason "no headers".
//!
//! Run it against a JetStream-enabled server (`nats-server -js`; KV needs JetStream):
//!
//! ```text
//! NATS_URL=nats://127.0.0.1:4222 cargo run --features kv --example kv_fallback
//! ```

use futures::StreamExt;
use nats_otel::{
    fallback::FallbackKey, fallback::WritePolicy, ContextSource, CorePublisher, KvFallback,
    MessageContextExt, Publish, TraceContextStreamExt, TracePropagationLayer,
};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tower::{Layer, Service, ServiceExt};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let provider = SdkTracerProvider::builder().build();
    let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer("kv-example"));
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(otel))?;

    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let client = async_nats::connect(&url).await?;
    let js = async_nats::jetstream::new(client.clone());

    // One policy for both sides: the bucket (created with a 24 h TTL if missing) and the key.
    // `Required`: the message is sent only once the record is stored (the default,
    // `BestEffort`, sends both at once and rarely lets the message win).
    let fallback = KvFallback::open(&js, "trace_carriers", FallbackKey::subject_token(2))
        .await?
        .on_write_failure(WritePolicy::Required);

    // The lossy relay: payload only, headers dropped.
    let mut inbound = client.subscribe("in.orders.*").await?;
    let relay = client.clone();
    tokio::spawn(async move {
        while let Some(message) = inbound.next().await {
            let subject = message.subject.replacen("in.", "out.", 1);
            let _ = relay.publish(subject, message.payload).await;
        }
    });

    // Consume side: the adapter reads KV only when the headers give no context.
    let mut orders = client
        .subscribe("out.orders.*")
        .await?
        .with_trace_context()
        .fallback(fallback.clone());

    // Publish side: the layer writes the carrier to KV, then publishes with headers.
    let mut publisher = TracePropagationLayer::new()
        .fallback(fallback.clone())
        .layer(CorePublisher::new(client.clone()));
    let request = tracing::info_span!("POST /orders");
    let published_in = request.context().span().span_context().trace_id();
    async {
        publisher
            .ready()
            .await?
            .call(Publish::new("in.orders.42", "2 apples"))
            .await
    }
    .instrument(request)
    .await?;
    println!("published in.orders.42 in trace {published_in}");

    let (message, cx) = orders.next().await.ok_or("subscription closed")?;
    let record = cx.extraction().ok_or("the adapter always records")?;
    let span = cx.handler_span(tracing::info_span!("handle_order"))?;
    let continued = span.context().span().span_context().trace_id();
    println!(
        "received {} with headers: {}",
        message.subject,
        message.headers.is_some()
    );
    println!("continued trace {continued}");
    println!(
        "context source: {}, why not from headers: {}",
        record.source(),
        record
            .reason()
            .map_or("-".into(), |reason| reason.to_string())
    );
    let stats = fallback.stats();
    println!("kv writes={} reads={}", stats.writes, stats.reads);
    provider.shutdown()?;

    if record.source() != ContextSource::Kv || continued != published_in {
        return Err("the context was not recovered from KV".into());
    }
    Ok(())
}
