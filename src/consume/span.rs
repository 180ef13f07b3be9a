use std::fmt;
use std::sync::Arc;

use async_nats::HeaderMap;
use opentelemetry::trace::TraceContextExt;
use opentelemetry::Context;
use tracing::Span;
use tracing_opentelemetry::{OpenTelemetrySpanExt, SetParentError};

use opentelemetry_semantic_conventions::attribute as semconv;

use super::item::MessageMeta;
use super::warn;
use crate::attr;
use crate::carrier::find_header;
use crate::extraction::{ContextSource, ExtractionRecord};
use crate::metrics::Metrics;

/// Holds the CONSUMER `process` span inside the yielded [`Context`]; the
/// span ends when the last clone of that context is dropped.
#[derive(Debug)]
struct ProcessSpan(Span);

/// Names a span from the message subject.
pub(crate) type SpanNameFn = Arc<dyn Fn(&str) -> String + Send + Sync>;

/// How the `process` span of a redelivered JetStream message (delivered
/// count > 1) relates to the message's creation context.
///
/// # Examples
///
/// ```
/// use nats_otel::{ContextExtractor, Redelivery};
///
/// let extractor = ContextExtractor::new().redelivery(Redelivery::NewTraceWithLink);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Redelivery {
    /// Every delivery is a child of the creation context (the default):
    /// retries appear under the original trace.
    #[default]
    SameTrace,
    /// A redelivery starts a new trace whose `process` span links to the
    /// creation context, so retries do not pile up under the original
    /// parent.
    NewTraceWithLink,
}

/// Consumer-side span options.
#[derive(Clone, Default)]
pub(crate) struct ProcessOptions {
    pub(crate) span_name: Option<SpanNameFn>,
    pub(crate) disabled: bool,
    pub(crate) capture_headers: Arc<[String]>,
    pub(crate) redelivery: Redelivery,
    pub(crate) metrics: Metrics,
}

impl fmt::Debug for ProcessOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessOptions")
            .field("custom_span_name", &self.span_name.is_some())
            .field("process_spans", &!self.disabled)
            .field("capture_headers", &self.capture_headers)
            .field("redelivery", &self.redelivery)
            .finish()
    }
}

/// Starts the CONSUMER `process {subject}` span as a child of `remote` and
/// returns the context the handler's spans should be children of.
pub(crate) fn process_context(
    meta: &MessageMeta<'_>,
    remote: Context,
    record: ExtractionRecord,
    options: &ProcessOptions,
) -> Context {
    options.metrics.extracted(&record);
    let subject = meta.subject;
    if options.disabled {
        if let Some(reason) = record
            .reason()
            .filter(|_| record.source() == ContextSource::None)
        {
            warn::no_context(subject, reason);
        }
        return remote.with_value(record);
    }
    let name = match &options.span_name {
        Some(f) => f(subject),
        None => format!("process {subject}"),
    };
    let span = tracing::info_span!(
        target: "nats_otel",
        parent: None,
        "process",
        otel.name = name,
        otel.kind = "consumer",
        nats_otel.context.source = record.source().as_str(),
        nats_otel.context.reason = tracing::field::Empty,
    );
    if let Some(reason) = record.reason() {
        span.record("nats_otel.context.reason", reason.as_str());
    }
    span.set_attribute(semconv::MESSAGING_SYSTEM, "nats");
    span.set_attribute(semconv::MESSAGING_DESTINATION_NAME, subject.to_owned());
    span.set_attribute(semconv::MESSAGING_OPERATION_TYPE, "process");
    span.set_attribute(semconv::MESSAGING_OPERATION_NAME, "process");
    span.set_attribute(
        semconv::MESSAGING_MESSAGE_BODY_SIZE,
        meta.payload.len() as i64,
    );
    let mut redelivered = false;
    if let Some(js) = &meta.jetstream {
        span.set_attribute(
            semconv::MESSAGING_CONSUMER_GROUP_NAME,
            js.consumer.to_owned(),
        );
        span.set_attribute(
            semconv::MESSAGING_DESTINATION_SUBSCRIPTION_NAME,
            js.consumer.to_owned(),
        );
        span.set_attribute(attr::NATS_STREAM, js.stream.to_owned());
        span.set_attribute(attr::NATS_STREAM_SEQUENCE, js.stream_sequence as i64);
        span.set_attribute(attr::NATS_DELIVERED, js.delivered);
        redelivered = js.delivered > 1;
    }
    capture_headers(&span, meta.headers, &options.capture_headers);

    // The parent must be set before anything starts the span.
    let remote_span = remote.span().span_context().clone();
    if redelivered && options.redelivery == Redelivery::NewTraceWithLink && remote_span.is_valid() {
        let _ = span.set_parent(Context::new());
        span.add_link(remote_span);
    } else {
        let _ = span.set_parent(remote.clone());
    }
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

/// Records the allow-listed headers as `messaging.nats.header.<name>`.
pub(crate) fn capture_headers(span: &Span, headers: Option<&HeaderMap>, names: &[String]) {
    let Some(headers) = headers else {
        return;
    };
    for name in names {
        if let Some((_, value)) = find_header(headers, name) {
            span.set_attribute(
                format!("{}{}", attr::NATS_HEADER_PREFIX, name.to_ascii_lowercase()),
                value.to_owned(),
            );
        }
    }
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
