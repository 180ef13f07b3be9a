//! The publish side of the KV fallback: what
//! [`TracePropagationLayer::fallback`](crate::TracePropagationLayer::fallback)
//! writes, and when.
//!
//! [`prepare`] reads the key and the carrier from the request once the trace
//! headers are injected, and returns the [`Write`] the response future
//! drives: with [`WritePolicy::Required`] the put before the publish, with
//! [`WritePolicy::BestEffort`] alongside it (the put sent first, both acks
//! awaited together: one round trip instead of two).

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use opentelemetry::KeyValue;

use super::error::KvWriteError;
use super::future::{best_effort_failure, Write};
use super::request::PublishMessage;
use crate::fallback::{KvFallback, WritePolicy};
use crate::propagation::{encode_record as encode, find_header, CarrierRef, MessageMeta};
use crate::propagation::{BAGGAGE, TRACEPARENT, TRACESTATE};
use crate::telemetry::{MessagingSpan, Metrics};

/// The KV write for `request`, whose trace headers are injected; what
/// cannot be written is recorded on `span` (an event and a WARN) now.
pub(super) fn prepare<R: PublishMessage>(
    fallback: &Arc<KvFallback>,
    metrics: &Metrics,
    request: &R,
    span: &mut MessagingSpan,
) -> Write {
    // Everything read from the request is read now, before it moves into
    // the inner call: the key, and the record encoded straight from the
    // header values (no copy of the carrier).
    let key = fallback.key.derive(&MessageMeta::new(
        request.subject(),
        request.headers(),
        request.payload(),
    ));
    let key = match key {
        Ok(key) => key,
        Err(error) => {
            // Not a failure (the message may simply have no key), but never
            // silent: consumers cannot recover this one.
            span.add_event(
                "nats_otel.fallback_skipped",
                vec![KeyValue::new("reason", error.to_string())],
            );
            span.warn(
                Some(request.subject()),
                format_args!("{error}; no KV fallback record written for this message"),
            );
            return Write::None;
        }
    };
    let record = match carrier_of(request).map(encode) {
        // Nothing to recover later: no trace context was injected.
        None => return Write::None,
        Some(Ok(record)) => Bytes::from(record),
        Some(Err(error)) => {
            let error = write_failed(fallback, metrics, key, error.to_string());
            if fallback.on_write_failure == WritePolicy::Required {
                return Write::Failed(Box::new(error));
            }
            best_effort_failure(span, &error);
            return Write::None;
        }
    };
    let fallback = Arc::clone(fallback);
    let metrics = metrics.clone();
    let policy = fallback.on_write_failure;
    let put = Box::pin(async move {
        let written = fallback.store.put(key.as_str(), record).await;
        settle(&fallback, &metrics, key, written)
    });
    match policy {
        // Nothing may be sent unless the record is stored.
        WritePolicy::Required => Write::Before(put),
        // The put's outcome cannot stop the publish.
        WritePolicy::BestEffort => Write::Alongside(put),
    }
}

/// Counts the outcome of a put; a failure becomes a [`KvWriteError`].
fn settle<T, E: fmt::Display>(
    fallback: &KvFallback,
    metrics: &Metrics,
    key: String,
    written: Result<T, E>,
) -> Result<(), KvWriteError> {
    match written {
        Ok(_) => {
            fallback.stats.writes.fetch_add(1, Ordering::Relaxed);
            metrics.kv("write", true);
            Ok(())
        }
        Err(error) => Err(write_failed(fallback, metrics, key, error.to_string())),
    }
}

/// Counts a failed write and describes it.
fn write_failed(
    fallback: &KvFallback,
    metrics: &Metrics,
    key: String,
    message: String,
) -> KvWriteError {
    fallback
        .stats
        .write_failures
        .fetch_add(1, Ordering::Relaxed);
    metrics.kv("write", false);
    KvWriteError {
        bucket: fallback.store.name.clone(),
        key,
        message,
    }
}

/// The carrier in the request headers, borrowed; `None` without a
/// `traceparent`. An empty `tracestate` is left out.
fn carrier_of<R: PublishMessage>(request: &R) -> Option<CarrierRef<'_>> {
    let headers = request.headers()?;
    let field = |name| find_header(headers, name).map(|(_, v)| v);
    Some(CarrierRef {
        traceparent: field(TRACEPARENT)?,
        tracestate: field(TRACESTATE).filter(|s| !s.is_empty()),
        baggage: field(BAGGAGE),
    })
}
