//! The layer reports, once, publishes made without a valid trace context
//! (no OpenTelemetry layer in the subscriber, no span): the most common way
//! a trace silently ends at the publisher. "Once" is per layer, and the
//! warning goes to the test thread's own subscriber, so other tests of the
//! binary publishing without a context change nothing here.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures::StreamExt;
use nats_otel::{
    ContextSource, CorePublisher, MessageContextExt, Publish, TraceContextStreamExt,
    TracePropagationLayer,
};
use tower::Layer;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};

use crate::support::nats::*;
use crate::support::server::NatsServer;

/// Counts WARN events from `nats_otel` whose message mentions a missing
/// trace context at publish time.
struct CountWarnings(Arc<AtomicUsize>);

struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for CountWarnings {
    fn on_event(&self, event: &tracing::Event<'_>, _cx: LayerContext<'_, S>) {
        let meta = event.metadata();
        if meta.target() == "nats_otel" && *meta.level() == tracing::Level::WARN {
            let mut message = Message(String::new());
            event.record(&mut message);
            if message.0.contains("without a valid trace context") {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

#[tokio::test]
async fn publish_without_valid_context_warns_once_and_sends_no_traceparent() {
    let warnings = Arc::new(AtomicUsize::new(0));
    let subscriber = tracing_subscriber::registry().with(CountWarnings(warnings.clone()));
    let _guard = tracing::subscriber::set_default(subscriber);

    let server = NatsServer::start();
    let client = connect(&server).await;
    let mut messages = client.subscribe("jobs").await.unwrap().with_trace_context();
    let mut publisher = TracePropagationLayer::new().layer(CorePublisher::new(client.clone()));
    for i in 0..3 {
        publish(&mut publisher, Publish::new("jobs", format!("{i}"))).await;
    }
    client.flush().await.unwrap();

    for _ in 0..3 {
        let (message, cx) = messages.next().await.unwrap();
        assert!(
            message
                .headers
                .as_ref()
                .is_none_or(|h| h.get("traceparent").is_none()),
            "an invalid context must not be sent as a traceparent"
        );
        assert_eq!(cx.extraction().unwrap().source(), ContextSource::None);
    }
    assert_eq!(
        warnings.load(Ordering::SeqCst),
        1,
        "expected exactly one WARN for three publishes without a valid context"
    );
}
