//! Settlement spans: `ack`, `nak`, `term` and `in_progress` on consumed
//! JetStream messages as CLIENT spans, children of the message's context.
//!
//! Settlement is its own network call with its own outcome, so it is a span
//! (semantic conventions: operation type `settle`, span kind CLIENT) rather
//! than an event on the `process` span: a failed or slow ack shows up with
//! its own duration and error, under the `process` span that it settles.

use std::future::Future;
use std::time::Instant;

use async_nats::jetstream::{AckKind, Message};
use opentelemetry::Context;
use tracing::Instrument;

use crate::consume::span::{process_metrics, process_templates, process_tracer};
use crate::subject::SubjectTemplates;
use crate::telemetry::SpanTracer;
use crate::telemetry::{MessagingSpan, Operation, OperationType, Parent, SpanName};

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
    ///
    /// When the adapter made the `process` span with an OpenTelemetry
    /// tracer ([`tracer`](crate::ContextExtractingConsumer::tracer)), the
    /// settlement span is made with the same tracer; otherwise it is a
    /// `tracing` span.
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
        // Made by the tracer that made the `process` span in the context
        // (`.tracer(...)` on the adapter), else a `tracing` span.
        let name = operation_name(&kind);
        let subject = self.subject.as_str();
        let default_templates;
        let templates = match process_templates(cx) {
            Some(templates) => templates,
            None => {
                default_templates = SubjectTemplates::default();
                &default_templates
            }
        };
        let destination = templates.resolve(subject);
        let operation = Operation {
            kind: OperationType::Settle,
            name,
            destination: Some(subject),
            template: destination.template.as_deref(),
            temporary: destination.temporary,
            span_name: SpanName::Joined(name, destination.span_destination(subject)),
        };
        let tracer = process_tracer(cx).unwrap_or(&SpanTracer::Tracing);
        let measured = process_metrics(cx).map(|(metrics, attributes)| {
            (metrics.clone(), attributes.with_operation(name, "settle"))
        });
        let start = Instant::now();
        let mut span: MessagingSpan = operation.start(tracer, Parent::Context(cx.clone()));
        async move {
            let result = match span.tracing_span().cloned() {
                Some(tracing_span) => self.ack_with(kind).instrument(tracing_span).await,
                None => self.ack_with(kind).await,
            };
            if let Err(error) = &result {
                span.record_error(ERROR_TYPE, error);
            }
            span.end();
            if let Some((metrics, attributes)) = measured {
                let error = result.as_ref().err().map(|_| ERROR_TYPE);
                metrics.operation(start, &attributes, error);
            }
            result
        }
    }
}

/// The `error.type` of a failed settlement.
const ERROR_TYPE: &str = "async_nats::Error";
