//! Settlement spans: `ack`, `nak`, `term` and `in_progress` on consumed
//! JetStream messages as CLIENT spans, children of the message's context.
//!
//! Settlement is its own network call with its own outcome, so it is a span
//! (semantic conventions: operation type `settle`, span kind CLIENT) rather
//! than an event on the `process` span: a failed or slow ack shows up with
//! its own duration and error, under the `process` span that it settles.

use std::future::Future;

use async_nats::jetstream::{AckKind, Message};
use opentelemetry::global::BoxedSpan;
use opentelemetry::trace::{Span as OtelSpan, SpanBuilder, SpanKind, Status, Tracer};
use opentelemetry::{Context, KeyValue};
use opentelemetry_semantic_conventions::attribute as semconv;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::consume::span::process_tracer;
use crate::telemetry::record_error_type;
use crate::telemetry::{operation_span_name, SpanTracer};

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
        let mut span = SettleSpan::start(cx, operation_name(&kind), self.subject.as_str());
        async move {
            let result = match &span {
                SettleSpan::Tracing(tracing_span) => {
                    self.ack_with(kind).instrument(tracing_span.clone()).await
                }
                _ => self.ack_with(kind).await,
            };
            if let Err(error) = &result {
                span.record_error(error);
            }
            span.end();
            result
        }
    }
}

/// The CLIENT settlement span: made by the tracer that made the `process`
/// span in the context (`.tracer(...)` on the adapter), else a `tracing`
/// span.
enum SettleSpan {
    Tracing(tracing::Span),
    Sdk(Box<opentelemetry_sdk::trace::Span>),
    Boxed(BoxedSpan),
}

impl SettleSpan {
    fn start(cx: &Context, operation: &'static str, subject: &str) -> Self {
        let name = operation_span_name(operation, subject);
        match process_tracer(cx) {
            Some(SpanTracer::Sdk(tracer)) => {
                Self::Sdk(Box::new(tracer_span(tracer, name, operation, subject, cx)))
            }
            Some(SpanTracer::Boxed(tracer)) => {
                Self::Boxed(tracer_span(tracer.as_ref(), name, operation, subject, cx))
            }
            Some(SpanTracer::Tracing) | None => {
                let span = tracing::info_span!(
                    target: "nats_otel",
                    parent: None,
                    "settle",
                    otel.name = name,
                    otel.kind = "client",
                    { semconv::MESSAGING_SYSTEM } = "nats",
                    { semconv::MESSAGING_DESTINATION_NAME } = subject,
                    { semconv::MESSAGING_OPERATION_TYPE } = "settle",
                    { semconv::MESSAGING_OPERATION_NAME } = operation,
                );
                let _ = span.set_parent(cx.clone());
                Self::Tracing(span)
            }
        }
    }

    fn record_error(&mut self, error: &async_nats::Error) {
        fn otel<S: OtelSpan>(span: &mut S, error: &async_nats::Error) {
            span.set_attribute(KeyValue::new(semconv::ERROR_TYPE, ERROR_TYPE));
            span.set_status(Status::error(error.to_string()));
        }
        match self {
            Self::Tracing(span) => {
                record_error_type(span, ERROR_TYPE);
                span.set_status(Status::error(error.to_string()));
            }
            Self::Sdk(span) => otel(span.as_mut(), error),
            Self::Boxed(span) => otel(span, error),
        }
    }

    fn end(self) {
        match self {
            // Ends when the last handle is dropped, here.
            Self::Tracing(_) => {}
            Self::Sdk(mut span) => span.end(),
            Self::Boxed(mut span) => span.end(),
        }
    }
}

/// The `error.type` of a failed settlement.
const ERROR_TYPE: &str = "async_nats::Error";

/// A settlement span made with an OpenTelemetry tracer, its attributes (all
/// of them the conventions mark for sampling) given at creation.
fn tracer_span<T: Tracer>(
    tracer: &T,
    name: String,
    operation: &'static str,
    subject: &str,
    parent: &Context,
) -> T::Span {
    tracer.build_with_context(
        SpanBuilder::from_name(name)
            .with_kind(SpanKind::Client)
            .with_attributes([
                KeyValue::new(semconv::MESSAGING_SYSTEM, "nats"),
                KeyValue::new(semconv::MESSAGING_DESTINATION_NAME, subject.to_owned()),
                KeyValue::new(semconv::MESSAGING_OPERATION_TYPE, "settle"),
                KeyValue::new(semconv::MESSAGING_OPERATION_NAME, operation),
            ]),
        parent,
    )
}
