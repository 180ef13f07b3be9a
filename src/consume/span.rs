use std::fmt;

use opentelemetry::trace::TraceContextExt;
use opentelemetry::Context;
use tracing::Span;
use tracing_opentelemetry::{OpenTelemetrySpanExt, SetParentError};

use super::item::MessageMeta;
use super::warn;
use crate::extraction::{ContextSource, ExtractionRecord};

/// Holds the CONSUMER `process` span inside the yielded [`Context`]; the
/// span ends when the last clone of that context is dropped.
#[derive(Debug)]
struct ProcessSpan(Span);

/// Starts the CONSUMER `process {subject}` span as a child of `remote` and
/// returns the context the handler's spans should be children of.
pub(crate) fn process_context(
    meta: &MessageMeta<'_>,
    remote: Context,
    record: ExtractionRecord,
) -> Context {
    let subject = meta.subject;
    let span = tracing::info_span!(
        target: "nats_otel",
        parent: None,
        "process",
        otel.name = format!("process {subject}"),
        otel.kind = "consumer",
        messaging.system = "nats",
        messaging.destination.name = subject,
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.message.body.size = meta.payload.len() as u64,
        messaging.consumer.group.name = tracing::field::Empty,
        messaging.destination.subscription.name = tracing::field::Empty,
        messaging.nats.stream = tracing::field::Empty,
        messaging.nats.stream.sequence = tracing::field::Empty,
        messaging.nats.delivered = tracing::field::Empty,
        nats_otel.context.source = record.source().as_str(),
        nats_otel.context.reason = tracing::field::Empty,
    );
    if let Some(js) = &meta.jetstream {
        span.record("messaging.consumer.group.name", js.consumer);
        span.record("messaging.destination.subscription.name", js.consumer);
        span.record("messaging.nats.stream", js.stream);
        span.record("messaging.nats.stream.sequence", js.stream_sequence);
        span.record("messaging.nats.delivered", js.delivered);
    }
    if let Some(reason) = record.reason() {
        span.record("nats_otel.context.reason", reason.as_str());
    }

    // The parent must be set before anything starts the span.
    let _ = span.set_parent(remote.clone());
    let cx = span.context();
    let cx = if cx.span().span_context().is_valid() {
        cx
    } else {
        // No OpenTelemetry layer, or the span is filtered out: hand the
        // remote context to the handler directly.
        remote
    };

    if record.source() == ContextSource::None {
        if let Some(reason) = record.reason() {
            let _entered = span.enter();
            warn::no_context(subject, reason);
        }
    }
    cx.with_value(record).with_value(ProcessSpan(span))
}

/// Reading what the consumer adapter stored in a yielded [`Context`], and
/// starting handler spans under it.
///
/// # Examples
///
/// ```no_run
/// use futures::StreamExt;
/// use nats_otel::{MessageContextExt, TraceContextStreamExt};
/// use tracing::Instrument;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let client = async_nats::connect("nats://127.0.0.1:4222").await?;
/// let mut jobs = client.subscribe("jobs.>").await?.with_trace_context();
/// while let Some((message, cx)) = jobs.next().await {
///     let span = cx.handler_span(tracing::info_span!("handle_job"))?;
///     async {
///         tracing::info!(source = ?cx.extraction().map(|r| r.source()), "working");
///     }
///     .instrument(span)
///     .await;
/// }
/// # Ok(())
/// # }
/// ```
pub trait MessageContextExt {
    /// The extraction record: where the context came from, and why when
    /// nowhere. `None` for contexts the adapter did not yield.
    fn extraction(&self) -> Option<&ExtractionRecord>;

    /// The CONSUMER `process` span, to `.instrument(...)` work with it
    /// directly.
    fn process_span(&self) -> Option<&Span>;

    /// Makes `span` a child of this context and returns it, ready to
    /// `.instrument(...)` or enter.
    ///
    /// Call it on a span that was just created: once a span has been
    /// entered (or its context read), tracing-opentelemetry can no longer
    /// change its parent and this returns
    /// [`HandlerSpanError`] (with the span, so work can go on).
    fn handler_span(&self, span: Span) -> Result<Span, HandlerSpanError>;
}

impl MessageContextExt for Context {
    fn extraction(&self) -> Option<&ExtractionRecord> {
        self.get::<ExtractionRecord>()
    }

    fn process_span(&self) -> Option<&Span> {
        self.get::<ProcessSpan>().map(|p| &p.0)
    }

    fn handler_span(&self, span: Span) -> Result<Span, HandlerSpanError> {
        match span.set_parent(self.clone()) {
            Ok(()) => Ok(span),
            Err(source) => Err(HandlerSpanError { span, source }),
        }
    }
}

/// A handler span could not be made a child of the message's context.
///
/// The most common cause is [`SetParentError::AlreadyStarted`]: the span was
/// entered (e.g. inside an `#[instrument]` body) before its parent was set.
/// Create the span, call
/// [`handler_span`](MessageContextExt::handler_span), then instrument.
#[derive(Debug)]
pub struct HandlerSpanError {
    span: Span,
    source: SetParentError,
}

impl HandlerSpanError {
    /// The span, unchanged (it keeps its own parent).
    pub fn into_span(self) -> Span {
        self.span
    }

    /// Why the parent could not be set.
    pub fn kind(&self) -> &SetParentError {
        &self.source
    }
}

impl fmt::Display for HandlerSpanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.source {
            SetParentError::AlreadyStarted => f.write_str(
                "the handler span was already started (entered, or its context read) before \
                 its parent could be set; create it, call handler_span, then instrument",
            ),
            SetParentError::LayerNotFound => f.write_str(
                "no OpenTelemetry layer in the tracing subscriber: add \
                 tracing_opentelemetry::layer() so spans can have a remote parent",
            ),
            SetParentError::SpanDisabled => f.write_str(
                "the handler span is disabled by the subscriber's filter, so it cannot be \
                 parented",
            ),
        }
    }
}

impl std::error::Error for HandlerSpanError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}
