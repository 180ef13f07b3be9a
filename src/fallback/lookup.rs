use std::sync::atomic::Ordering;

use opentelemetry::trace::TraceContextExt;
use opentelemetry::Context;

use super::record::decode_record;
use super::KvFallback;
use crate::extraction::{context_from_carrier, NoContextReason};

/// Looks `key` up in the fallback bucket, bounded by the lookup timeout.
pub(crate) async fn lookup(fallback: KvFallback, key: String) -> Result<Context, NoContextReason> {
    fallback.stats.reads.fetch_add(1, Ordering::Relaxed);
    let result = lookup_inner(&fallback, key).await;
    fallback.metrics.kv("read", result.is_ok());
    if result.is_err() {
        fallback.stats.read_failures.fetch_add(1, Ordering::Relaxed);
    }
    result
}

async fn lookup_inner(fallback: &KvFallback, key: String) -> Result<Context, NoContextReason> {
    let timeout = fallback.lookup_timeout;
    let entry = match tokio::time::timeout(timeout, fallback.store.get(key.clone())).await {
        Err(_) => return Err(NoContextReason::KvTimeout { key, timeout }),
        Ok(Err(error)) => {
            return Err(NoContextReason::KvError {
                key,
                error: error.to_string(),
            })
        }
        Ok(Ok(None)) => return Err(NoContextReason::KvNotFound { key }),
        Ok(Ok(Some(entry))) => entry,
    };
    let carrier = decode_record(&entry).map_err(|error| NoContextReason::KvInvalidRecord {
        key: key.clone(),
        error,
    })?;
    let cx = context_from_carrier(&carrier, "kv traceparent")?;
    debug_assert!(cx.span().span_context().is_valid());
    Ok(cx)
}
