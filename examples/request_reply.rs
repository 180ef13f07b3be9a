//! # request_reply: one trace across a NATS request and its reply
//!
//! The requester wraps `Requester` in `TracePropagationLayer`: the request carries
//! `traceparent`, and the layer's response is the reply `Message`. The responder wraps its
//! subscription with `.with_trace_context()` and answers from a handler span in the
//! requester's trace.
//!
//! Run it against any nats-server (`nats-server`, JetStream not needed):
//!
//! ```text
//! NATS_URL=nats://127.0.0.1:4222 cargo run --example request_reply
//! ```

use futures::StreamExt;
use nats_otel::{
    publish::Requester, MessageContextExt, Publish, TraceContextStreamExt, TracePropagationLayer,
};
use opentelemetry::trace::{TraceContextExt, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tower::{Layer, Service, ServiceExt};
use tracing::{Instrument, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let provider = SdkTracerProvider::builder().build();
    let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer("request-example"));
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(otel))?;

    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let client = async_nats::connect(&url).await?;

    // The responder: each request comes with the requester's context.
    let mut requests = client.subscribe("quote.price").await?.with_trace_context();
    let responder = client.clone();
    tokio::spawn(async move {
        while let Some((request, cx)) = requests.next().await {
            let Some(reply) = request.reply.clone() else {
                continue;
            };
            let span = cx
                .handler_span(tracing::info_span!("price_quote"))
                .unwrap_or_else(|error| error.into_span());
            let answer = format!(
                "{} EUR, trace {}",
                request.payload.len() * 7,
                trace_id_of(&span)
            );
            let _ = responder
                .publish(reply, answer.into())
                .instrument(span)
                .await;
        }
    });

    // The requester, inside a traced operation.
    let mut requester = TracePropagationLayer::new().layer(Requester::new(client.clone()));
    let operation = tracing::info_span!("checkout");
    let requested_in = trace_id_of(&operation);
    let reply = async {
        let request = Publish::new("quote.price", "basket-17");
        requester.ready().await?.call(request).await
    }
    .instrument(operation)
    .await?;

    println!("requested in trace {requested_in}");
    println!("reply: {}", String::from_utf8_lossy(&reply.payload));
    provider.shutdown()?;
    let answered_in = requested_in.to_string();
    if !String::from_utf8_lossy(&reply.payload).ends_with(&answered_in) {
        return Err("the responder did not continue the requester's trace".into());
    }
    Ok(())
}

fn trace_id_of(span: &Span) -> TraceId {
    span.context().span().span_context().trace_id()
}
