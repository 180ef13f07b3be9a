//! Metrics through the OpenTelemetry metrics API: the four the messaging
//! conventions define, and the crate's own counters of where every context
//! came from.
//!
//! Instruments come from the meter provider given to a layer, extractor or
//! adapter with `meter_provider(..)`, else from the global one (meter
//! `nats-otel`) at the moment it is built: set your global meter provider
//! before building them.
//!
//! With OpenTelemetry's no-op meter provider (the global one until an
//! application sets its own), nothing is measured: no clock is read and no
//! attribute is built per message. Given with `meter_provider(..)` it is
//! recognised by its type; as the global provider (a trait object), by its
//! size: it is the one provider without state.
//!
//! | instrument | kind, unit | attributes | measures |
//! |---|---|---|---|
//! | `messaging.client.sent.messages` | counter, `{message}` | [standard](MessagingAttributes) | messages the publish layer sent (acked or failed) |
//! | `messaging.client.consumed.messages` | counter, `{message}` | standard | messages the consumer adapter delivered |
//! | `messaging.client.operation.duration` | histogram, `s` | standard | a publish (to the JetStream ack), a batch's `receive`, a settlement |
//! | `messaging.process.duration` | histogram, `s` | standard | a `process` span: from delivery until the yielded context is dropped |
//! | `nats_otel.inject.messages` | counter | `outcome` = `injected`, `kept_caller_context`, `no_context` | messages through the publish layer |
//! | `nats_otel.extract.messages` | counter | `source` = `headers`, `kv`, `payload`, `none`; `reason` (when not headers) | messages through the consumer adapter |
//! | `nats_otel.filter.skipped` | counter | `side` = `publish`, `consume` | messages left untraced by a subject filter |
//! | `nats_otel.fallback.kv.operations` | counter | `operation` = `read`, `write`; `outcome` = `ok`, `error` | KV fallback reads and writes |

use std::sync::Arc;
use std::time::Instant;

use opentelemetry::metrics::{Counter, Histogram, Meter, MeterProvider, NoopMeterProvider};
use opentelemetry::{global, KeyValue};
use opentelemetry_semantic_conventions::{attribute as semconv, metric as names};

use crate::propagation::ExtractionRecord;

/// The meter's name (its instrumentation scope).
const METER: &str = "nats-otel";

/// The bucket boundaries the messaging conventions advise for durations,
/// in seconds.
const DURATION_BOUNDARIES: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// The crate's instruments, or none when the meter provider records
/// nothing; cloning shares them.
#[derive(Clone, Debug)]
pub(crate) struct Metrics(Option<Arc<Instruments>>);

#[derive(Debug)]
struct Instruments {
    injected: Counter<u64>,
    extracted: Counter<u64>,
    skipped: Counter<u64>,
    kv: Counter<u64>,
    sent: Counter<u64>,
    consumed: Counter<u64>,
    operation_duration: Histogram<f64>,
    process_duration: Histogram<f64>,
}

impl Default for Metrics {
    /// The instruments of the global meter provider.
    fn default() -> Self {
        let global = global::meter_provider();
        // A trait object: OpenTelemetry's no-op provider is recognised as
        // the one provider without state (one that records has somewhere
        // to send to).
        if std::mem::size_of_val(&*global) == 0 {
            return Self(None);
        }
        Self::new(&global.meter(METER))
    }
}

/// The attributes of the four conventional metrics, low-cardinality by
/// construction: `messaging.system`, `messaging.operation.name` and
/// `.type`, the destination (`messaging.destination.name` only when the
/// subject has no template and is not an inbox, else
/// `messaging.destination.template`), for JetStream consumers
/// `messaging.consumer.group.name` and
/// `messaging.destination.subscription.name` (the consumer's name), and
/// `error.type` on failure.
#[derive(Debug, Clone)]
pub(crate) struct MessagingAttributes {
    attributes: Vec<KeyValue>,
}

impl MessagingAttributes {
    /// The attributes of `operation` (`publish`, `receive`, `process`,
    /// `ack`…) of type `operation_type` on `subject`, whose template (if
    /// any) is `template`.
    pub(crate) fn new(
        operation: &'static str,
        operation_type: &'static str,
        subject: &str,
        template: Option<&str>,
        temporary: bool,
    ) -> Self {
        let mut attributes = Vec::with_capacity(6);
        attributes.extend([
            KeyValue::new(semconv::MESSAGING_SYSTEM, "nats"),
            KeyValue::new(semconv::MESSAGING_OPERATION_NAME, operation),
            KeyValue::new(semconv::MESSAGING_OPERATION_TYPE, operation_type),
        ]);
        match template {
            Some(template) => attributes.push(KeyValue::new(
                semconv::MESSAGING_DESTINATION_TEMPLATE,
                template.to_owned(),
            )),
            None if !temporary => attributes.push(KeyValue::new(
                semconv::MESSAGING_DESTINATION_NAME,
                subject.to_owned(),
            )),
            None => {}
        }
        Self { attributes }
    }

    /// Adds the JetStream consumer as consumer group and subscription.
    pub(crate) fn consumer(mut self, consumer: Option<&str>) -> Self {
        if let Some(consumer) = consumer {
            self.attributes.extend([
                KeyValue::new(semconv::MESSAGING_CONSUMER_GROUP_NAME, consumer.to_owned()),
                KeyValue::new(
                    semconv::MESSAGING_DESTINATION_SUBSCRIPTION_NAME,
                    consumer.to_owned(),
                ),
            ]);
        }
        self
    }

    /// The same attributes for another operation (a settlement of a
    /// consumed message).
    #[cfg_attr(not(feature = "jetstream"), allow(dead_code))]
    pub(crate) fn with_operation(
        &self,
        operation: &'static str,
        operation_type: &'static str,
    ) -> Self {
        let mut attributes = self.attributes.clone();
        for attribute in &mut attributes {
            if attribute.key.as_str() == semconv::MESSAGING_OPERATION_NAME {
                attribute.value = operation.into();
            } else if attribute.key.as_str() == semconv::MESSAGING_OPERATION_TYPE {
                attribute.value = operation_type.into();
            }
        }
        Self { attributes }
    }

    /// With `error.type` when `error` is given.
    fn with_error(&self, error: Option<&str>) -> std::borrow::Cow<'_, [KeyValue]> {
        match error {
            None => self.attributes.as_slice().into(),
            Some(error) => {
                let mut attributes = self.attributes.clone();
                attributes.push(KeyValue::new(semconv::ERROR_TYPE, error.to_owned()));
                attributes.into()
            }
        }
    }
}

impl Metrics {
    /// The instruments of `provider`.
    pub(crate) fn from_provider<P: MeterProvider + ?Sized>(provider: &P) -> Self {
        // Given explicitly: off only for OpenTelemetry's no-op provider
        // itself.
        if std::any::type_name::<P>() == std::any::type_name::<NoopMeterProvider>() {
            return Self(None);
        }
        Self::new(&provider.meter(METER))
    }

    /// Whether anything is recorded: when not, callers skip reading the
    /// clock and building attributes.
    pub(crate) fn enabled(&self) -> bool {
        self.0.is_some()
    }

    fn new(meter: &Meter) -> Self {
        let duration = |name: &'static str, description: &'static str| {
            meter
                .f64_histogram(name)
                .with_unit("s")
                .with_description(description)
                .with_boundaries(DURATION_BOUNDARIES.to_vec())
                .build()
        };
        Self(Some(Arc::new(Instruments {
            injected: meter
                .u64_counter("nats_otel.inject.messages")
                .with_description("Messages through the publish layer, by outcome")
                .build(),
            extracted: meter
                .u64_counter("nats_otel.extract.messages")
                .with_description("Consumed messages, by trace context source and reason")
                .build(),
            skipped: meter
                .u64_counter("nats_otel.filter.skipped")
                .with_description("Messages left untraced by a subject filter")
                .build(),
            kv: meter
                .u64_counter("nats_otel.fallback.kv.operations")
                .with_description("KV fallback reads and writes, by outcome")
                .build(),
            sent: meter
                .u64_counter(names::MESSAGING_CLIENT_SENT_MESSAGES)
                .with_unit("{message}")
                .with_description("Number of messages producer attempted to send to the broker.")
                .build(),
            consumed: meter
                .u64_counter(names::MESSAGING_CLIENT_CONSUMED_MESSAGES)
                .with_unit("{message}")
                .with_description("Number of messages that were delivered to the application.")
                .build(),
            operation_duration: duration(
                names::MESSAGING_CLIENT_OPERATION_DURATION,
                "Duration of messaging operation initiated by a producer or consumer client.",
            ),
            process_duration: duration(
                names::MESSAGING_PROCESS_DURATION,
                "Duration of processing operation.",
            ),
        })))
    }

    pub(crate) fn injected(&self, outcome: &'static str) {
        let Some(i) = &self.0 else { return };
        i.injected.add(1, &[KeyValue::new("outcome", outcome)]);
    }

    pub(crate) fn extracted(&self, record: &ExtractionRecord) {
        let Some(i) = &self.0 else { return };
        let source = KeyValue::new("source", record.source().as_str());
        match record.reason() {
            Some(reason) => i
                .extracted
                .add(1, &[source, KeyValue::new("reason", reason.as_str())]),
            None => i.extracted.add(1, &[source]),
        }
    }

    pub(crate) fn skipped(&self, side: &'static str) {
        let Some(i) = &self.0 else { return };
        i.skipped.add(1, &[KeyValue::new("side", side)]);
    }

    #[cfg_attr(not(feature = "kv"), allow(dead_code))]
    pub(crate) fn kv(&self, operation: &'static str, ok: bool) {
        let Some(i) = &self.0 else { return };
        i.kv.add(
            1,
            &[
                KeyValue::new("operation", operation),
                KeyValue::new("outcome", if ok { "ok" } else { "error" }),
            ],
        );
    }

    /// A publish that completed (or failed, with `error.type`) after
    /// starting at `start`: one sent message and its duration.
    pub(crate) fn sent(
        &self,
        start: Instant,
        attributes: &MessagingAttributes,
        error: Option<&str>,
    ) {
        let Some(i) = &self.0 else { return };
        let attributes = attributes.with_error(error);
        i.sent.add(1, &attributes);
        i.operation_duration
            .record(start.elapsed().as_secs_f64(), &attributes);
    }

    /// One message delivered to the application.
    pub(crate) fn consumed(&self, attributes: &MessagingAttributes) {
        let Some(i) = &self.0 else { return };
        i.consumed.add(1, &attributes.attributes);
    }

    /// A client operation other than a publish (a batch's receive, a
    /// settlement) that started at `start`.
    #[cfg_attr(not(feature = "jetstream"), allow(dead_code))]
    pub(crate) fn operation(
        &self,
        start: Instant,
        attributes: &MessagingAttributes,
        error: Option<&str>,
    ) {
        let Some(i) = &self.0 else { return };
        i.operation_duration
            .record(start.elapsed().as_secs_f64(), &attributes.with_error(error));
    }

    /// A `process` operation that started at `start` and ends now.
    pub(crate) fn processed(&self, start: Instant, attributes: &MessagingAttributes) {
        let Some(i) = &self.0 else { return };
        i.process_duration
            .record(start.elapsed().as_secs_f64(), &attributes.attributes);
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};

    use super::*;

    #[test]
    fn the_noop_provider_turns_measuring_off() {
        assert!(!Metrics::from_provider(&NoopMeterProvider::new()).enabled());
        // The global provider, until an application sets one.
        assert!(!Metrics::default().enabled());
        let exporter = InMemoryMetricExporter::default();
        let provider = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(exporter.clone()).build())
            .build();
        let metrics = Metrics::from_provider(&provider);
        assert!(metrics.enabled());
        // A stateless provider of the application's own, given explicitly,
        // is trusted to record.
        #[derive(Debug)]
        struct Forwarding;
        impl MeterProvider for Forwarding {
            fn meter_with_scope(&self, scope: opentelemetry::InstrumentationScope) -> Meter {
                NoopMeterProvider::new().meter_with_scope(scope)
            }
        }
        assert!(Metrics::from_provider(&Forwarding).enabled());
        metrics.injected("injected");
        provider.force_flush().unwrap();
        assert!(!exporter.get_finished_metrics().unwrap().is_empty());
        // A disabled set records nothing and does not panic.
        Metrics::from_provider(&NoopMeterProvider::new()).injected("injected");
    }
}
