//! Counters through the OpenTelemetry metrics API.
//!
//! Instruments come from the meter provider given to a layer, extractor or
//! fallback policy with `meter_provider(..)`, else from the global one
//! (meter `nats-otel`) at the moment it is built: set your global meter
//! provider before building them. Names:
//!
//! | instrument | attributes | counts |
//! |---|---|---|
//! | `nats_otel.inject.messages` | `outcome` = `injected`, `kept_caller_context`, `no_context` | messages through the publish layer |
//! | `nats_otel.extract.messages` | `source` = `headers`, `kv`, `payload`, `none`; `reason` (when not headers) | messages through the consumer adapter |
//! | `nats_otel.filter.skipped` | `side` = `publish`, `consume` | messages left untraced by a subject filter |
//! | `nats_otel.fallback.kv.operations` | `operation` = `read`, `write`; `outcome` = `ok`, `error` | KV fallback reads and writes |

use opentelemetry::metrics::{Counter, Meter, MeterProvider};
use opentelemetry::{global, KeyValue};

use crate::propagation::ExtractionRecord;

#[derive(Clone, Debug)]
pub(crate) struct Metrics {
    injected: Counter<u64>,
    extracted: Counter<u64>,
    skipped: Counter<u64>,
    kv: Counter<u64>,
}

impl Default for Metrics {
    /// The instruments of the global meter provider.
    fn default() -> Self {
        Self::new(&global::meter(METER))
    }
}

/// The meter's name (its instrumentation scope).
const METER: &str = "nats-otel";

impl Metrics {
    /// The instruments of `provider`.
    pub(crate) fn from_provider<P: MeterProvider + ?Sized>(provider: &P) -> Self {
        Self::new(&provider.meter(METER))
    }

    fn new(meter: &Meter) -> Self {
        Self {
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
        }
    }

    pub(crate) fn injected(&self, outcome: &'static str) {
        self.injected.add(1, &[KeyValue::new("outcome", outcome)]);
    }

    pub(crate) fn extracted(&self, record: &ExtractionRecord) {
        let source = KeyValue::new("source", record.source().as_str());
        match record.reason() {
            Some(reason) => self
                .extracted
                .add(1, &[source, KeyValue::new("reason", reason.as_str())]),
            None => self.extracted.add(1, &[source]),
        }
    }

    pub(crate) fn skipped(&self, side: &'static str) {
        self.skipped.add(1, &[KeyValue::new("side", side)]);
    }

    #[cfg_attr(not(feature = "kv"), allow(dead_code))]
    pub(crate) fn kv(&self, operation: &'static str, ok: bool) {
        self.kv.add(
            1,
            &[
                KeyValue::new("operation", operation),
                KeyValue::new("outcome", if ok { "ok" } else { "error" }),
            ],
        );
    }
}
