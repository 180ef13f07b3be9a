use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use opentelemetry::trace::TraceContextExt;
use opentelemetry::{Context, KeyValue};
use tracing::Span;
use tracing_opentelemetry::{OpenTelemetrySpanExt, SetParentError};

use opentelemetry_semantic_conventions::attribute as semconv;

use super::warn;
use crate::attr;
use crate::propagation::MessageMeta;
use crate::propagation::{ContextSource, ExtractionRecord};
use crate::subject::{Destination, SubjectTemplates};
use crate::telemetry::SpanTracer;
use crate::telemetry::{captured_headers, SpanNameFn};
use crate::telemetry::{InContext, Operation, OperationType, Parent, SpanName};
use crate::telemetry::{MessagingAttributes, Metrics};

/// What the adapter stores in a yielded [`Context`]: the extraction record
/// and, with `tracing` spans, the CONSUMER `process` span (which ends when
/// the last clone of that context is dropped). One entry, so the context is
/// extended once per message.
#[derive(Debug)]
struct Consumed {
    record: ExtractionRecord,
    span: Option<Span>,
    /// The tracer and templates that made and named the `process` span:
    /// settle spans under this context are named with the same templates,
    /// and made with the same tracer when [`tracer_span`](Self::tracer_span).
    /// Shared: one reference count per message; `None` when settlement's
    /// fallbacks (`tracing` spans, the default templates) are the same.
    #[cfg_attr(not(feature = "jetstream"), allow(dead_code))]
    setup: Option<Arc<SpanSetup>>,
    /// Whether the `process` span was made by the tracer (not a `tracing`
    /// span, not an empty one).
    #[cfg_attr(not(feature = "jetstream"), allow(dead_code))]
    tracer_span: bool,
    /// Records `messaging.process.duration` when the context is dropped.
    timer: Option<ProcessTimer>,
}

/// How the adapter makes and names its spans: the tracer, and the subject
/// templates.
#[derive(Debug, Clone, Default)]
pub(crate) struct SpanSetup {
    pub(crate) tracer: SpanTracer,
    pub(crate) templates: SubjectTemplates,
}

/// The `process` operation's clock: from delivery until the yielded
/// context's last clone is dropped.
#[derive(Debug)]
struct ProcessTimer {
    metrics: Metrics,
    start: Instant,
    attributes: MessagingAttributes,
}

impl Drop for ProcessTimer {
    fn drop(&mut self) {
        self.metrics.processed(self.start, &self.attributes);
    }
}

/// Counts a delivered message and starts its `process` clock.
fn delivered(
    meta: &MessageMeta<'_>,
    destination: &Destination<'_>,
    options: &ProcessOptions,
) -> Option<ProcessTimer> {
    if !options.metrics.enabled() {
        return None;
    }
    let consumer = meta.jetstream.as_ref().map(|js| js.consumer);
    let attributes = MessagingAttributes::new(
        "process",
        "process",
        meta.subject,
        destination.template.as_deref(),
        destination.temporary,
    )
    .consumer(consumer);
    options.metrics.consumed(&attributes);
    Some(ProcessTimer {
        metrics: options.metrics.clone(),
        start: Instant::now(),
        attributes,
    })
}

impl Consumed {
    fn record(record: ExtractionRecord) -> Self {
        Self {
            record,
            span: None,
            setup: None,
            tracer_span: false,
            timer: None,
        }
    }
}

/// A context holding only `record`: no `process` span.
pub(crate) fn with_record(cx: Context, record: ExtractionRecord) -> Context {
    cx.with_value(Consumed::record(record))
}

/// The OpenTelemetry tracer that made the `process` span in `cx`; `None`
/// for `tracing` spans and contexts the adapter did not yield.
#[cfg(feature = "jetstream")]
pub(crate) fn process_tracer(cx: &Context) -> Option<&SpanTracer> {
    cx.get::<Consumed>()
        .filter(|c| c.tracer_span)
        .and_then(|c| c.setup.as_deref())
        .map(|setup| &setup.tracer)
}

/// The metrics and attributes of the message consumed in `cx`, to record
/// its settlement.
#[cfg(feature = "jetstream")]
pub(crate) fn process_metrics(cx: &Context) -> Option<(&Metrics, &MessagingAttributes)> {
    cx.get::<Consumed>()
        .and_then(|c| c.timer.as_ref())
        .map(|t| (&t.metrics, &t.attributes))
}

/// The subject templates that named the `process` span in `cx`.
#[cfg(feature = "jetstream")]
pub(crate) fn process_templates(cx: &Context) -> Option<&SubjectTemplates> {
    cx.get::<Consumed>()
        .and_then(|c| c.setup.as_deref())
        .map(|setup| &setup.templates)
}

/// How the `process` span relates to the message's creation context (the
/// producer's span): as its child, or as the root of a new trace that links
/// to it.
///
/// The `process` span links to the creation context in every case, as the
/// messaging conventions ask; this policy decides only whether it is also
/// the parent.
///
/// The default is [`ChildOfCreation`](Self::ChildOfCreation), whatever the
/// context's source: the point of this crate, and of its KV and payload
/// fallbacks, is that the worker's spans land in the producer's trace, and
/// most backends show a linked trace as a separate one. Choose a
/// `NewTrace…` policy when contexts can be old (a job replayed from a
/// stream days later, a record read back from storage) and you would rather
/// not grow a trace long after it ended, as NATS.Net does for contexts read
/// back from storage.
///
/// # Examples
///
/// ```
/// use nats_otel::{consume::ContextExtractor, consume::Parenting};
///
/// let extractor = ContextExtractor::new().parenting(Parenting::NewTraceWhenReplayed);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Parenting {
    /// Every delivery is a child of the creation context (the default):
    /// retries and recovered contexts appear under the original trace.
    #[default]
    ChildOfCreation,
    /// A redelivered JetStream message (delivered count > 1) starts a new
    /// trace linked to the creation context, so retries do not pile up
    /// under the original parent.
    NewTraceOnRedelivery,
    /// A new trace linked to the creation context when that context is
    /// stale or replayed: read back from the KV fallback or the payload
    /// carrier, or the message is a redelivery. Contexts from headers on a
    /// first delivery stay children.
    NewTraceWhenReplayed,
}

/// Consumer-side span options.
#[derive(Clone, Default)]
pub(crate) struct ProcessOptions {
    pub(crate) span_name: Option<SpanNameFn>,
    pub(crate) disabled: bool,
    pub(crate) capture_headers: Arc<[String]>,
    pub(crate) parenting: Parenting,
    pub(crate) metrics: Metrics,
    pub(crate) setup: Arc<SpanSetup>,
    pub(crate) warnings: warn::NoContextWarnings,
}

impl fmt::Debug for ProcessOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessOptions")
            .field("custom_span_name", &self.span_name.is_some())
            .field("process_spans", &!self.disabled)
            .field("capture_headers", &self.capture_headers)
            .field("parenting", &self.parenting)
            .field("templates", &self.setup.templates)
            .field("tracer", &self.setup.tracer)
            .finish()
    }
}

/// Starts the CONSUMER `process {template}` span as a child of `remote` and
/// returns the context the handler's spans should be children of.
pub(crate) fn process_context(
    meta: &MessageMeta<'_>,
    remote: Context,
    record: ExtractionRecord,
    options: &ProcessOptions,
) -> Context {
    options.metrics.extracted(&record);
    let subject = meta.subject;
    let destination = options.setup.templates.resolve(subject);
    let timer = delivered(meta, &destination, options);
    if options.disabled {
        if let Some(reason) = record
            .reason()
            .filter(|_| record.source() == ContextSource::None)
        {
            options.warnings.warn(subject, reason);
        }
        let mut consumed = Consumed::record(record);
        consumed.timer = timer;
        return remote.with_value(consumed);
    }
    let span_name = match &options.span_name {
        Some(f) => SpanName::Given(f(subject).into()),
        None => SpanName::Joined("process", destination.span_destination(subject)),
    };
    let redelivered = meta.jetstream.as_ref().is_some_and(|js| js.delivered > 1);
    let new_trace = match options.parenting {
        Parenting::ChildOfCreation => false,
        Parenting::NewTraceOnRedelivery => redelivered,
        Parenting::NewTraceWhenReplayed => {
            redelivered || matches!(record.source(), ContextSource::Kv | ContextSource::Payload)
        }
    };
    let parent = if !remote.span().span_context().is_valid() {
        Parent::Context(remote)
    } else if new_trace {
        Parent::Root(Some(&remote))
    } else {
        Parent::Linked(remote)
    };
    let operation = Operation {
        kind: OperationType::Process,
        name: "process",
        destination: Some(subject),
        template: destination.template.as_deref(),
        temporary: destination.temporary,
        span_name,
    };
    let (cx, span) = operation.start_in_context(&options.setup.tracer, parent, || {
        recorded_attributes(meta, &record, options)
    });

    if record.source() == ContextSource::None {
        if let Some(reason) = record.reason() {
            let _entered = match &span {
                InContext::Tracing(span) => Some(span.enter()),
                _ => None,
            };
            options.warnings.warn(subject, reason);
        }
    }
    let (span, tracer_span) = match span {
        InContext::Tracing(span) => (Some(span), false),
        // Settle spans under this context are made with the same tracer.
        InContext::Tracer => (None, true),
        InContext::Empty => (None, false),
    };
    // Settlement falls back to `tracing` spans and the default templates:
    // the setup is kept (a reference count per message) only when it says
    // otherwise.
    let setup =
        (tracer_span || !options.setup.templates.is_default()).then(|| Arc::clone(&options.setup));
    cx.with_value(Consumed {
        record,
        span,
        setup,
        tracer_span,
        timer,
    })
}

/// The `process` span's attributes that are set only on a recorded span:
/// where the context came from, the body size, the JetStream delivery and
/// the captured headers.
fn recorded_attributes(
    meta: &MessageMeta<'_>,
    record: &ExtractionRecord,
    options: &ProcessOptions,
) -> Vec<KeyValue> {
    let mut attributes = Vec::with_capacity(9 + options.capture_headers.len());
    attributes.push(KeyValue::new(
        attr::CONTEXT_SOURCE,
        record.source().as_str(),
    ));
    if let Some(reason) = record.reason() {
        attributes.push(KeyValue::new(attr::CONTEXT_REASON, reason.as_str()));
    }
    attributes.push(KeyValue::new(
        semconv::MESSAGING_MESSAGE_BODY_SIZE,
        meta.payload.len() as i64,
    ));
    if let Some(js) = &meta.jetstream {
        attributes.extend([
            KeyValue::new(
                semconv::MESSAGING_CONSUMER_GROUP_NAME,
                js.consumer.to_owned(),
            ),
            KeyValue::new(
                semconv::MESSAGING_DESTINATION_SUBSCRIPTION_NAME,
                js.consumer.to_owned(),
            ),
            KeyValue::new(attr::NATS_STREAM, js.stream.to_owned()),
            KeyValue::new(attr::NATS_STREAM_SEQUENCE, js.stream_sequence as i64),
            KeyValue::new(attr::NATS_DELIVERED, js.delivered),
        ]);
    }
    attributes.extend(captured_headers(meta.headers, &options.capture_headers));
    attributes
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
    /// directly. `None` when the span was made with an OpenTelemetry tracer
    /// ([`ContextExtractor::tracer`](super::ContextExtractor::tracer)); it
    /// is then `cx.span()`.
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
        self.get::<Consumed>().map(|c| &c.record)
    }

    fn process_span(&self) -> Option<&Span> {
        self.get::<Consumed>().and_then(|c| c.span.as_ref())
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
