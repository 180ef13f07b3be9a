//! Settlement spans: `ack`, `nak`, `term` and `in_progress` on consumed
//! JetStream messages as CLIENT spans, children of the message's context.
//!
//! Settlement is its own network call with its own outcome, so it is a span
//! (semantic conventions: operation type `settle`, span kind CLIENT) rather
//! than an event on the `process` span: a failed or slow ack shows up with
//! its own duration and error, under the `process` span that it settles.

use std::future::Future;

use async_nats::jetstream::{AckKind, Message};
use opentelemetry::trace::Status;
use opentelemetry::Context;
use opentelemetry_semantic_conventions::attribute as semconv;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::publish::record_error_type;

/// The semantic-conventions operation name of a settlement.
fn operation_name(kind: &AckKind) -> &'static str {
    match kind {
        AckKind::Ack => "ack",
        AckKind::Nak(_) => "nak",
        AckKind::Progress => "in_progress",
        AckKind::Next => "ack_next",
        AckKind::Term => "term",
    }
}

/// Settles a consumed JetStream message inside a CLIENT span.
///
/// # Examples
///
/// ```no_run
/// use async_nats::jetstream::AckKind;
/// use futures::StreamExt;
/// use nats_otel::{SettleExt, TraceContextStreamExt};
///
/// # async fn run(consumer: async_nats::jetstream::consumer::PullConsumer) -> Result<(), async_nats::Error> {
/// let mut messages = consumer.messages().await?.with_trace_context();
/// while let Some(item) = messages.next().await {
///     let (message, cx) = item?;
///     // ... handle it ...
///     message.settle(AckKind::Ack, &cx).await?;
/// }
/// # Ok(())
/// # }
/// ```
pub trait SettleExt {
    /// Sends `kind` (ack, nak, term, in progress) for this message inside a
    /// CLIENT span `{ack|nak|term|in_progress} {subject}` whose parent is
    /// `cx` (usually the context the consumer adapter yielded). An error is
    /// recorded on the span and returned.
    fn settle(
        &self,
        kind: AckKind,
        cx: &Context,
    ) -> impl Future<Output = Result<(), async_nats::Error>> + Send;
}

impl SettleExt for Message {
    fn settle(
        &self,
        kind: AckKind,
        cx: &Context,
    ) -> impl Future<Output = Result<(), async_nats::Error>> + Send {
        let operation = operation_name(&kind);
        let subject = self.subject.as_str();
        let span = tracing::info_span!(
            target: "nats_otel",
            parent: None,
            "settle",
            otel.name = format!("{operation} {subject}"),
            otel.kind = "client",
        );
        let _ = span.set_parent(cx.clone());
        span.set_attribute(semconv::MESSAGING_SYSTEM, "nats");
        span.set_attribute(semconv::MESSAGING_DESTINATION_NAME, subject.to_owned());
        span.set_attribute(semconv::MESSAGING_OPERATION_TYPE, "settle");
        span.set_attribute(semconv::MESSAGING_OPERATION_NAME, operation);
        let recorder = span.clone();
        async move {
            let result = self.ack_with(kind).await;
            if let Err(error) = &result {
                record_error_type(&recorder, "async_nats::Error");
                recorder.set_status(Status::error(error.to_string()));
            }
            result
        }
        .instrument(span)
    }
}
