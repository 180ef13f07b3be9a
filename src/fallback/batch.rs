//! Batched KV reads: the keys of every message waiting in the consumer
//! adapter's look-ahead window read in one multi-last direct get
//! (`$JS.API.DIRECT.GET.KV_<bucket>` with `{"multi_last": [..]}`, nats-server
//! 2.11 or later), instead of one direct get per key.
//!
//! The reply is a stream of messages on a fresh inbox: one per key that has
//! a record (in stream order, named by its `Nats-Subject` header), then an
//! end-of-batch status (204). A key without a record has no message. Any
//! other answer (an older server, no responders while a leader is elected,
//! an error status) turns the batch into single lookups, each with its own
//! timeout and retries, so a message's outcome and reason are the same as
//! without batching; a server that does not know the request is remembered
//! and not asked again.

use std::sync::atomic::Ordering;

use async_nats::header::{HeaderName, NATS_MARKER_REASON, NATS_SUBJECT};
use async_nats::jetstream;
use bytes::Bytes;
use futures::StreamExt;
use opentelemetry::Context;
use tokio::time::Instant;

use super::lookup::{context_from_record, lookup};
use super::KvFallback;
use crate::propagation::NoContextReason;
use crate::telemetry::Metrics;

/// The most keys in one request: the server answers at most 1024 subjects.
const MAX_KEYS: usize = 1024;

// Read from every reply: made once, not parsed from a string per lookup.
const NUM_PENDING: HeaderName = HeaderName::from_static("Nats-Num-Pending");
const KV_OPERATION: HeaderName = HeaderName::from_static("KV-Operation");

/// The body of a multi-last direct get.
#[derive(serde::Serialize)]
struct MultiLast<'a> {
    multi_last: &'a [&'a str],
}

/// What a batch found, by position in the sorted subjects it asked for:
/// `None` when no message came for it, `Some(None)` for a delete, purge or
/// limit marker, else the record.
type Found = Vec<Option<Option<Bytes>>>;

/// Looks every key up, in one request per [`MAX_KEYS`] when the fallback
/// has a JetStream context for batched reads and the server answers them,
/// else one lookup per key, all at once. Results are in the order of
/// `keys`.
pub(crate) async fn lookup_many(
    fallback: &KvFallback,
    keys: Vec<String>,
    metrics: &Metrics,
) -> Vec<Result<Context, NoContextReason>> {
    let batchable = keys.len() > 1
        && !fallback.stats.batch_unsupported.load(Ordering::Relaxed)
        && fallback.store.stream.cached_info().config.allow_direct;
    let Some(jetstream) = fallback.jetstream.as_ref().filter(|_| batchable) else {
        return singles(fallback, keys, metrics).await;
    };
    let mut results = Vec::with_capacity(keys.len());
    let mut keys = keys.into_iter().peekable();
    while keys.peek().is_some() {
        let chunk: Vec<String> = keys.by_ref().take(MAX_KEYS).collect();
        results.extend(batch(fallback, jetstream, chunk, metrics).await);
    }
    results
}

/// One lookup per key, concurrently.
async fn singles(
    fallback: &KvFallback,
    keys: Vec<String>,
    metrics: &Metrics,
) -> Vec<Result<Context, NoContextReason>> {
    futures::future::join_all(keys.into_iter().map(|key| lookup(fallback, key, metrics))).await
}

/// Why a batched read gave no answer for its keys.
enum BatchFailure {
    /// The server does not know multi-last reads.
    Unsupported,
    /// A transient failure (no responders, a lost connection, an error
    /// status): the keys go to single lookups, which retry.
    Retry,
}

async fn batch(
    fallback: &KvFallback,
    jetstream: &jetstream::Context,
    keys: Vec<String>,
    metrics: &Metrics,
) -> Vec<Result<Context, NoContextReason>> {
    let deadline = Instant::now() + fallback.lookup_timeout;
    let subjects: Vec<String> = keys
        .iter()
        .map(|key| format!("{}{}", fallback.store.prefix, key))
        .collect();
    // Asked once each, in order: a subject's answer is found by binary
    // search, without a map keyed on copies of the subjects.
    let mut asked: Vec<&str> = subjects.iter().map(String::as_str).collect();
    asked.sort_unstable();
    asked.dedup();
    let found = match tokio::time::timeout_at(deadline, request(fallback, jetstream, &asked)).await
    {
        Ok(Ok(found)) => found,
        Ok(Err(BatchFailure::Unsupported)) => {
            (fallback.stats.batch_unsupported).store(true, Ordering::Relaxed);
            return singles(fallback, keys, metrics).await;
        }
        Ok(Err(BatchFailure::Retry)) => return singles(fallback, keys, metrics).await,
        Err(_) => {
            return keys
                .into_iter()
                .map(|key| {
                    let reason = NoContextReason::KvTimeout {
                        key,
                        timeout: fallback.lookup_timeout,
                    };
                    fallback.count_read(metrics, false);
                    Err(reason)
                })
                .collect();
        }
    };
    keys.into_iter()
        .zip(&subjects)
        .map(|(key, subject)| {
            // Two messages of a window may share a key: both read it.
            let answer = asked
                .binary_search(&subject.as_str())
                .ok()
                .and_then(|at| found.get(at))
                .and_then(Option::as_ref);
            let result = match answer {
                Some(Some(record)) => context_from_record(record, key),
                // Deleted or purged: no record, as a single get says.
                Some(None) | None => Err(NoContextReason::KvNotFound { key }),
            };
            fallback.count_read(metrics, result.is_ok());
            result
        })
        .collect()
}

/// Sends one multi-last request for `subjects` (sorted, each once) and
/// collects the answer.
async fn request(
    fallback: &KvFallback,
    jetstream: &jetstream::Context,
    subjects: &[&str],
) -> Result<Found, BatchFailure> {
    debug_assert!(
        subjects.windows(2).all(|w| w[0] < w[1]),
        "sorted, each once"
    );
    let payload = serde_json::to_vec(&MultiLast {
        multi_last: subjects,
    })
    .map_err(|_| BatchFailure::Retry)?;
    let client = jetstream.client();
    let inbox = client.new_inbox();
    let mut replies = client
        .subscribe(inbox.clone())
        .await
        .map_err(|_| BatchFailure::Retry)?;
    let request = async_nats::Request::new()
        .inbox(inbox)
        .payload(payload.into());
    jetstream
        .send_request(
            format!("DIRECT.GET.{}", fallback.store.stream_name),
            request,
        )
        .await
        .map_err(|_| BatchFailure::Retry)?;
    let mut found: Found = vec![None; subjects.len()];
    let mut received = false;
    while let Some(reply) = replies.next().await {
        if let Some(status) = reply.status {
            let pending = reply
                .headers
                .as_ref()
                .and_then(|h| h.get(NUM_PENDING))
                .and_then(|v| v.as_str().parse::<u64>().ok())
                .unwrap_or(0);
            return match status.as_u16() {
                // End of batch, with nothing left behind (a server stopped
                // by its byte limit says how many are pending).
                204 if pending == 0 => Ok(found),
                // Nothing at all under these subjects. Another 404 ("Message
                // Not Found": a record picked, then gone) may follow records
                // already sent: the rest is read one by one.
                404 if reply.description.as_deref() == Some("No Results") => Ok(found),
                // "Empty Request": a server before 2.11 ignored the field.
                408 if !received => Err(BatchFailure::Unsupported),
                _ => Err(BatchFailure::Retry),
            };
        }
        let Some(headers) = reply.headers.as_ref() else {
            return Err(BatchFailure::Retry);
        };
        // A server that answers a single message without the batch headers
        // did not read the request as a batch.
        if headers.get(NUM_PENDING).is_none() {
            return Err(BatchFailure::Unsupported);
        }
        let Some(subject) = headers.get(NATS_SUBJECT) else {
            return Err(BatchFailure::Retry);
        };
        // A delete or purge, or the marker a bucket with limit markers
        // leaves when a record expires: no record, as a single get says.
        let live = !matches!(
            headers.get(KV_OPERATION).map(|v| v.as_str()),
            Some("DEL" | "PURGE")
        ) && headers.get(NATS_MARKER_REASON).is_none();
        received = true;
        // A subject not asked for cannot come; if one did, it is ignored.
        if let Ok(at) = subjects.binary_search(&subject.as_str()) {
            found[at] = Some(live.then(|| reply.payload.clone()));
        }
    }
    // The subscription ended: the connection is closing.
    Err(BatchFailure::Retry)
}
