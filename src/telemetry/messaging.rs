//! The one messaging span: PRODUCER `publish`, CONSUMER `process`, CLIENT
//! `receive` and `settle`, whichever way it is made.
//!
//! Every span starts with the attributes the messaging conventions mark
//! for sampling (`messaging.system`, `messaging.destination.name`,
//! `messaging.operation.type` and `.name`), so that a sampler sees them:
//! [`Operation::sampling_attributes`] builds them for tracer spans, and
//! [`tracing_span`] declares the same four as fields of the `tracing`
//! span. Whatever else a caller records is set after the start, and only on
//! a span that records ([`Operation::start_with`],
//! [`Operation::start_in_context`]).

use std::fmt::Display;

use opentelemetry::global::BoxedSpan;
use opentelemetry::trace::{
    Link, Span as _, SpanBuilder, SpanContext, SpanKind, Status, TraceContextExt, Tracer,
};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_sdk::trace::Span as SdkSpan;
use opentelemetry_semantic_conventions::attribute as semconv;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::span::SpanName;
use super::tracer::{caller_context, SpanTracer};

/// `messaging.system` of every span.
const MESSAGING_SYSTEM: &str = "nats";

/// The kinds of operation the crate traces; each has its `tracing` span
/// name, span kind and `messaging.operation.type`.
#[derive(Clone, Copy, Debug)]
pub(crate) enum OperationType {
    /// A PRODUCER `publish` span (operation type `send`).
    Send,
    /// A CONSUMER `process` span.
    Process,
    /// A CLIENT `receive` span over a batch.
    Receive,
    /// A CLIENT `settle` span (ack, nak, term, in progress).
    #[cfg_attr(not(feature = "jetstream"), allow(dead_code))]
    Settle,
}

impl OperationType {
    fn as_str(self) -> &'static str {
        match self {
            Self::Send => "send",
            Self::Process => "process",
            Self::Receive => "receive",
            Self::Settle => "settle",
        }
    }

    fn span_kind(self) -> SpanKind {
        match self {
            Self::Send => SpanKind::Producer,
            Self::Process => SpanKind::Consumer,
            Self::Receive | Self::Settle => SpanKind::Client,
        }
    }

    /// `otel.kind` of the `tracing` span.
    fn otel_kind(self) -> &'static str {
        match self {
            Self::Send => "producer",
            Self::Process => "consumer",
            Self::Receive | Self::Settle => "client",
        }
    }
}

/// One messaging operation, as a span describes it.
#[derive(Debug)]
pub(crate) struct Operation<'a> {
    pub(crate) kind: OperationType,
    /// `messaging.operation.name`: `publish`, `process`, `receive`, `ack`…
    pub(crate) name: &'static str,
    /// `messaging.destination.name`, when known at the start.
    pub(crate) destination: Option<&'a str>,
    /// `messaging.destination.template`, when one is known.
    pub(crate) template: Option<&'a str>,
    /// `messaging.destination.temporary` (an inbox).
    pub(crate) temporary: bool,
    /// The span's name (`otel.name` of a `tracing` span).
    pub(crate) span_name: SpanName<'a>,
}

/// Where a span starts.
#[derive(Debug)]
pub(crate) enum Parent<'a> {
    /// Under the caller: a `tracing` span nests under the entered span. The
    /// OpenTelemetry parent is the given context, else the caller's
    /// (tracing-opentelemetry's choice, or [`caller_context`] for a tracer
    /// span).
    Caller(Option<Context>),
    /// This context only: a `tracing` span is a root in `tracing`'s tree,
    /// so that it neither keeps the caller's span open nor nests under it.
    Context(Context),
    /// As [`Context`](Self::Context), and linked to the context's span too
    /// (a `process` span to the message's creation context).
    Linked(Context),
    /// A new trace, linked to this context's span if given.
    Root(Option<&'a Context>),
}

/// A messaging span, however it was made. A `tracing` span ends when its
/// last handle is dropped, a tracer span at [`end`](Self::end).
#[derive(Debug)]
pub(crate) enum MessagingSpan {
    /// No span.
    None,
    /// A `tracing` span (the default tracer).
    Tracing(tracing::Span),
    /// A span of the SDK's tracer, called without dynamic dispatch; boxed,
    /// so that the futures holding it stay small (they are moved).
    Sdk(Box<SdkSpan>),
    /// A span of any other OpenTelemetry tracer.
    Boxed(BoxedSpan),
}

/// Where [`Operation::start_in_context`] left the span.
#[derive(Debug)]
pub(crate) enum InContext {
    /// A `tracing` span, in the context when it has a valid one; it ends
    /// when this handle is dropped, so keep it.
    Tracing(tracing::Span),
    /// A tracer span, in the context; it ends with the context's last clone.
    Tracer,
    /// The tracer made an empty span (its provider shut down, suppressed
    /// telemetry): the context is the parent's.
    Empty,
}

impl Operation<'_> {
    /// Starts the span with the sampling-relevant attributes.
    #[inline(always)]
    pub(crate) fn start(self, tracer: &SpanTracer, parent: Parent<'_>) -> MessagingSpan {
        let recorded = None::<fn() -> Vec<KeyValue>>;
        match tracer {
            SpanTracer::Tracing => MessagingSpan::Tracing(self.start_tracing(parent).0),
            SpanTracer::Sdk(tracer) => {
                MessagingSpan::Sdk(Box::new(self.build(tracer, parent, recorded).0))
            }
            SpanTracer::Boxed(tracer) => {
                MessagingSpan::Boxed(self.build(tracer.as_ref(), parent, recorded).0)
            }
        }
    }

    /// Starts the span, sets `recorded()` on it if it records, and returns
    /// it with the context that continues from it: a `tracing` span's own
    /// OpenTelemetry context when it has a valid one, else the parent's. A
    /// tracer span is not in that context: inject its
    /// [`span_context`](MessagingSpan::span_context) over it.
    #[inline(always)]
    pub(crate) fn start_with(
        self,
        tracer: &SpanTracer,
        parent: Parent<'_>,
        recorded: impl FnOnce() -> Vec<KeyValue>,
    ) -> (MessagingSpan, Context) {
        match tracer {
            SpanTracer::Tracing => {
                let (span, cx) = self.start_tracing_with(parent, recorded);
                (MessagingSpan::Tracing(span), cx)
            }
            SpanTracer::Sdk(tracer) => {
                let (span, cx) = self.build(tracer, parent, Some(recorded));
                (MessagingSpan::Sdk(Box::new(span)), cx)
            }
            SpanTracer::Boxed(tracer) => {
                let (span, cx) = self.build(tracer.as_ref(), parent, Some(recorded));
                (MessagingSpan::Boxed(span), cx)
            }
        }
    }

    /// Like [`start_with`](Self::start_with), but puts a tracer span into
    /// the returned context (unboxed: the context boxes it itself), where
    /// it ends with the context's last clone.
    #[inline(always)]
    pub(crate) fn start_in_context(
        self,
        tracer: &SpanTracer,
        parent: Parent<'_>,
        recorded: impl FnOnce() -> Vec<KeyValue>,
    ) -> (Context, InContext) {
        fn put<T: opentelemetry::trace::Span + Send + Sync + 'static>(
            (span, cx): (T, Context),
        ) -> (Context, InContext) {
            if span.span_context().is_valid() {
                (cx.with_span(span), InContext::Tracer)
            } else {
                (cx, InContext::Empty)
            }
        }
        match tracer {
            SpanTracer::Tracing => {
                let (span, cx) = self.start_tracing_with(parent, recorded);
                (cx, InContext::Tracing(span))
            }
            SpanTracer::Sdk(tracer) => put(self.build(tracer, parent, Some(recorded))),
            SpanTracer::Boxed(tracer) => put(self.build(tracer.as_ref(), parent, Some(recorded))),
        }
    }

    /// The `tracing` span with `recorded()` set if it records, and the
    /// context that continues from it: its own, when valid (reading it
    /// starts the span), else the parent's.
    #[inline(always)]
    fn start_tracing_with(
        self,
        parent: Parent<'_>,
        recorded: impl FnOnce() -> Vec<KeyValue>,
    ) -> (tracing::Span, Context) {
        let (span, fallback) = self.start_tracing(parent);
        let cx = span.context();
        if cx.span().span_context().is_valid() {
            if cx.span().is_recording() {
                cx.span().set_attributes(recorded());
            }
            return (span, cx);
        }
        // No OpenTelemetry layer, or the span is filtered out: the parent
        // goes on as it is, so that propagation works without one.
        (span, fallback.unwrap_or_else(caller_context))
    }

    /// The `tracing` span, and the context to fall back on if it has no
    /// valid one (`None`: the caller's, [`caller_context`]).
    #[inline(always)]
    fn start_tracing(self, parent: Parent<'_>) -> (tracing::Span, Option<Context>) {
        let span = tracing_span(&self, !matches!(parent, Parent::Caller(_)));
        let fallback = match parent {
            Parent::Caller(Some(cx)) | Parent::Context(cx) => {
                // Fails without an OpenTelemetry layer; the parent is then
                // handed on as it is.
                let _ = span.set_parent(cx.clone());
                Some(cx)
            }
            Parent::Linked(cx) => {
                let _ = span.set_parent(cx.clone());
                span.add_link(cx.span().span_context().clone());
                Some(cx)
            }
            Parent::Caller(None) => None,
            Parent::Root(link) => {
                if let Some(link) = link {
                    span.add_link(link.span().span_context().clone());
                }
                Some(Context::new())
            }
        };
        (span, fallback)
    }

    /// A span made with an OpenTelemetry tracer, `recorded()` set on it if
    /// given and the span records, and its parent context.
    #[inline(always)]
    fn build<T: Tracer>(
        self,
        tracer: &T,
        parent: Parent<'_>,
        recorded: Option<impl FnOnce() -> Vec<KeyValue>>,
    ) -> (T::Span, Context) {
        let link = |cx: &Context| Some(vec![Link::with_context(cx.span().span_context().clone())]);
        let (cx, links) = match parent {
            Parent::Caller(explicit) => (explicit.unwrap_or_else(caller_context), None),
            Parent::Context(cx) => (cx, None),
            Parent::Linked(cx) => {
                let links = link(&cx);
                (cx, links)
            }
            Parent::Root(linked) => (Context::new(), linked.and_then(link)),
        };
        let attributes = self.sampling_attributes();
        let mut builder =
            SpanBuilder::from_name(self.span_name.into_cow()).with_kind(self.kind.span_kind());
        builder.attributes = Some(attributes);
        builder.links = links;
        let mut span = tracer.build_with_context(builder, &cx);
        if let Some(recorded) = recorded.filter(|_| span.is_recording()) {
            span.set_attributes(recorded());
        }
        (span, cx)
    }

    /// The attributes a sampler sees, for a tracer span; [`tracing_span`]
    /// declares the same as fields.
    fn sampling_attributes(&self) -> Vec<KeyValue> {
        let system = KeyValue::new(semconv::MESSAGING_SYSTEM, MESSAGING_SYSTEM);
        let operation_type = KeyValue::new(semconv::MESSAGING_OPERATION_TYPE, self.kind.as_str());
        let operation_name = KeyValue::new(semconv::MESSAGING_OPERATION_NAME, self.name);
        let mut attributes = Vec::with_capacity(6);
        attributes.push(system);
        if let Some(destination) = self.destination {
            attributes.push(KeyValue::new(
                semconv::MESSAGING_DESTINATION_NAME,
                destination.to_owned(),
            ));
        }
        attributes.extend([operation_type, operation_name]);
        if let Some(template) = self.template {
            attributes.push(KeyValue::new(
                semconv::MESSAGING_DESTINATION_TEMPLATE,
                template.to_owned(),
            ));
        }
        if self.temporary {
            attributes.push(KeyValue::new(
                semconv::MESSAGING_DESTINATION_TEMPORARY,
                true,
            ));
        }
        attributes
    }
}

/// The `tracing` span of `op`: target `nats_otel`, the name `tracing`
/// shows, `otel.name` and `otel.kind`, and the sampling-relevant attributes
/// as fields (a destination not known yet is left out). `root` makes it a
/// root in `tracing`'s tree rather than a child of the entered span.
#[inline(always)]
fn tracing_span(op: &Operation<'_>, root: bool) -> tracing::Span {
    // `tracing` wants a literal name per call site: one expansion per
    // operation and parent, all with the same fields.
    macro_rules! span {
        ($name:literal $(, $parent:ident: $value:expr)?) => {
            tracing::info_span!(
                target: "nats_otel",
                $($parent: $value,)?
                $name,
                // Formatted once, by tracing-opentelemetry: no name
                // string is made here for it to copy.
                otel.name = format_args!("{}", op.span_name),
                otel.kind = op.kind.otel_kind(),
                { semconv::MESSAGING_SYSTEM } = MESSAGING_SYSTEM,
                { semconv::MESSAGING_DESTINATION_NAME } = op.destination,
                { semconv::MESSAGING_OPERATION_TYPE } = op.kind.as_str(),
                { semconv::MESSAGING_OPERATION_NAME } = op.name,
                { semconv::MESSAGING_DESTINATION_TEMPLATE } = op.template,
                { semconv::MESSAGING_DESTINATION_TEMPORARY } = op.temporary.then_some(true),
            )
        };
    }
    macro_rules! spans {
        ($($kind:ident => $name:literal),*) => {
            match (op.kind, root) {
                $(
                    (OperationType::$kind, false) => span!($name),
                    (OperationType::$kind, true) => span!($name, parent: None),
                )*
            }
        };
    }
    spans!(Send => "publish", Process => "process", Receive => "receive", Settle => "settle")
}

impl MessagingSpan {
    /// The `tracing` span, to enter or instrument with.
    pub(crate) fn tracing_span(&self) -> Option<&tracing::Span> {
        match self {
            Self::Tracing(span) => Some(span),
            _ => None,
        }
    }

    /// A tracer span's own span context; `None` for a `tracing` span (its
    /// context is the one [`Operation::start_with`] returned) and no span.
    pub(crate) fn span_context(&self) -> Option<&SpanContext> {
        match self {
            Self::None | Self::Tracing(_) => None,
            Self::Sdk(span) => Some(span.span_context()),
            Self::Boxed(span) => Some(span.span_context()),
        }
    }

    /// Sets `attribute`, whether or not the span records.
    pub(crate) fn set_attribute(&mut self, attribute: KeyValue) {
        match self {
            Self::None => {}
            Self::Tracing(span) => span.set_attribute(attribute.key, attribute.value),
            Self::Sdk(span) => span.set_attribute(attribute),
            Self::Boxed(span) => span.set_attribute(attribute),
        }
    }

    pub(crate) fn add_event(&mut self, name: &'static str, attributes: Vec<KeyValue>) {
        match self {
            Self::None => {}
            Self::Tracing(span) => span.add_event(name, attributes),
            Self::Sdk(span) => span.add_event(name, attributes),
            Self::Boxed(span) => span.add_event(name, attributes),
        }
    }

    /// A WARN (target `nats_otel`) inside the span when it is a `tracing`
    /// span, else inside the current one.
    pub(crate) fn warn(&self, subject: Option<&str>, message: std::fmt::Arguments<'_>) {
        match self.tracing_span() {
            Some(span) => tracing::warn!(target: "nats_otel", parent: span, subject, "{message}"),
            None => tracing::warn!(target: "nats_otel", subject, "{message}"),
        }
    }

    /// Links `link`, if it is valid.
    pub(crate) fn add_link(&mut self, link: &SpanContext) {
        if !link.is_valid() {
            return;
        }
        match self {
            Self::None => {}
            Self::Tracing(span) => span.add_link(link.clone()),
            Self::Sdk(span) => span.add_link(link.clone(), Vec::new()),
            Self::Boxed(span) => span.add_link(link.clone(), Vec::new()),
        }
    }

    pub(crate) fn update_name(&mut self, name: String) {
        match self {
            Self::None => {}
            Self::Tracing(span) => {
                span.record("otel.name", name.as_str());
            }
            Self::Sdk(span) => span.update_name(name),
            Self::Boxed(span) => span.update_name(name),
        }
    }

    /// Marks the span failed: `error.type` and an error status.
    pub(crate) fn record_error(&mut self, error_type: impl Into<Value>, error: &impl Display) {
        let status = Status::error(error.to_string());
        match self {
            Self::None => {}
            Self::Tracing(span) => {
                span.set_attribute(semconv::ERROR_TYPE, error_type);
                span.set_status(status);
            }
            Self::Sdk(span) => {
                span.set_attribute(KeyValue::new(semconv::ERROR_TYPE, error_type));
                span.set_status(status);
            }
            Self::Boxed(span) => {
                span.set_attribute(KeyValue::new(semconv::ERROR_TYPE, error_type));
                span.set_status(status);
            }
        }
    }

    /// Ends a tracer span; a `tracing` span ends here if this was its last
    /// handle.
    pub(crate) fn end(self) {
        match self {
            Self::None | Self::Tracing(_) => {}
            Self::Sdk(mut span) => span.end(),
            Self::Boxed(mut span) => span.end(),
        }
    }
}
