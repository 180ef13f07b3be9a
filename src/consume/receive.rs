//! The adapter's optional CLIENT `receive` span over a whole batch.

use std::time::Instant;

use opentelemetry::trace::TraceContextExt;
use opentelemetry::{Context, KeyValue};
use opentelemetry_semantic_conventions::attribute as semconv;

use crate::propagation::MessageMeta;
use crate::subject::SubjectTemplates;
use crate::telemetry::{MessagingAttributes, Metrics, SpanTracer};
use crate::telemetry::{MessagingSpan, Operation, OperationType, Parent, SpanName};

/// The optional CLIENT `receive` span over a whole batch.
pub(crate) struct ReceiveSpan {
    /// Started when the adapter is first polled.
    span: Option<MessagingSpan>,
    named: bool,
    messages: i64,
    /// When the span started, and the operation's metric attributes (known
    /// with the first message).
    start: Option<Instant>,
    attributes: Option<MessagingAttributes>,
}

impl ReceiveSpan {
    pub(crate) fn new() -> Self {
        Self {
            span: None,
            named: false,
            messages: 0,
            start: None,
            attributes: None,
        }
    }

    /// Starts the span (a root) the first time the adapter is polled; its
    /// destination is known with the first message.
    pub(crate) fn start_once(&mut self, tracer: &SpanTracer) {
        self.start.get_or_insert_with(Instant::now);
        self.span.get_or_insert_with(|| {
            let operation = Operation {
                kind: OperationType::Receive,
                name: "receive",
                destination: None,
                template: None,
                temporary: false,
                span_name: SpanName::Given("receive".into()),
            };
            operation.start(tracer, Parent::Root(None))
        });
    }

    /// Links the message's creation context and names the span after the
    /// first message's stream (or subject's template).
    pub(crate) fn link(
        &mut self,
        meta: &MessageMeta<'_>,
        remote: &Context,
        templates: &SubjectTemplates,
    ) {
        self.messages += 1;
        let Some(span) = self.span.as_mut() else {
            return;
        };
        if !self.named {
            self.named = true;
            // A stream's name is low-cardinality; a subject may not be.
            let destination = templates.resolve(meta.subject);
            self.attributes = Some(match meta.jetstream {
                Some(js) => MessagingAttributes::new("receive", "receive", js.stream, None, false)
                    .consumer(Some(js.consumer)),
                None => MessagingAttributes::new(
                    "receive",
                    "receive",
                    meta.subject,
                    destination.template.as_deref(),
                    destination.temporary,
                ),
            });
            let name = match meta.jetstream {
                Some(js) => {
                    let mut name = String::with_capacity(8 + js.stream.len());
                    name.push_str("receive ");
                    name.push_str(js.stream);
                    span.set_attribute(KeyValue::new(
                        semconv::MESSAGING_DESTINATION_NAME,
                        js.stream.to_owned(),
                    ));
                    name
                }
                None => {
                    span.set_attribute(KeyValue::new(
                        semconv::MESSAGING_DESTINATION_NAME,
                        meta.subject.to_owned(),
                    ));
                    if let Some(template) = &destination.template {
                        span.set_attribute(KeyValue::new(
                            semconv::MESSAGING_DESTINATION_TEMPLATE,
                            template.to_string(),
                        ));
                    }
                    destination.span_name("receive", meta.subject)
                }
            };
            span.update_name(name);
        }
        span.add_link(remote.span().span_context());
    }

    pub(crate) fn end(self, metrics: &Metrics) {
        if let (Some(start), Some(attributes)) = (self.start, &self.attributes) {
            metrics.operation(start, attributes, None);
        }
        if let Some(mut span) = self.span {
            span.set_attribute(KeyValue::new(
                semconv::MESSAGING_BATCH_MESSAGE_COUNT,
                self.messages,
            ));
            span.end();
        }
    }
}
