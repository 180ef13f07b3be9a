use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use opentelemetry::trace::TraceContextExt;
use opentelemetry::Context;

use super::KvFallback;
use crate::propagation::decode_record;
use crate::propagation::{context_from_carrier, NoContextReason};
use crate::telemetry::Metrics;

/// Looks `key` up in the fallback bucket, bounded by the lookup timeout.
pub(crate) async fn lookup(
    fallback: &KvFallback,
    key: String,
    metrics: &Metrics,
) -> Result<Context, NoContextReason> {
    let result = lookup_inner(fallback, key).await;
    fallback.count_read(metrics, result.is_ok());
    result
}

/// Pause between attempts after a failed read (e.g. "no responders" while
/// the bucket's stream elects a new leader).
const RETRY_PAUSE: Duration = Duration::from_millis(25);

async fn lookup_inner(fallback: &KvFallback, key: String) -> Result<Context, NoContextReason> {
    let timeout = fallback.lookup_timeout;
    let deadline = Instant::now() + timeout;
    // A failed read is retried until the deadline: a bucket whose leader is
    // being re-elected answers "no responders" for a moment. The last error
    // is reported when time runs out, so a deleted bucket still says so.
    let mut last_error = None;
    let entry = loop {
        match tokio::time::timeout_at(deadline, fallback.store.get(key.clone())).await {
            Err(_) => {
                return Err(match last_error {
                    Some(error) => NoContextReason::KvError { key, error },
                    None => NoContextReason::KvTimeout { key, timeout },
                })
            }
            Ok(Err(error)) => {
                last_error = Some(error.to_string());
                if Instant::now() + RETRY_PAUSE >= deadline {
                    let error = last_error.unwrap_or_default();
                    return Err(NoContextReason::KvError { key, error });
                }
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            Ok(Ok(None)) => return Err(NoContextReason::KvNotFound { key }),
            Ok(Ok(Some(entry))) => break entry,
        }
    };
    context_from_record(&entry, key)
}

/// The context in a KV record read under `key`.
pub(crate) fn context_from_record(record: &[u8], key: String) -> Result<Context, NoContextReason> {
    let carrier =
        decode_record(record).map_err(|error| NoContextReason::KvInvalidRecord { key, error })?;
    let cx = context_from_carrier(&carrier, "kv traceparent")?;
    debug_assert!(cx.span().span_context().is_valid());
    Ok(cx)
}

impl KvFallback {
    /// Counts one lookup in the stats and the metrics.
    pub(crate) fn count_read(&self, metrics: &Metrics, ok: bool) {
        self.stats.reads.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.stats.read_failures.fetch_add(1, Ordering::Relaxed);
        }
        metrics.kv("read", ok);
    }
}
