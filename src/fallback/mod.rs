//! The KV fallback: recover the trace context when headers are lost in
//! transit.
//!
//! Headers do not always survive: a bridge republishes only the payload, a
//! connector drops unknown headers, a legacy publisher never set them. With
//! a [`KvFallback`] configured on both sides:
//!
//! - **publish:** [`TracePropagationLayer::fallback`](crate::TracePropagationLayer::fallback)
//!   writes the carrier (`traceparent`, `tracestate`, `baggage`) as a small
//!   versioned JSON document to a KV bucket under a key derived from the
//!   message ([`FallbackKey`]). With [`WritePolicy::Required`] the record
//!   is stored (its put acked) *before* the message is sent, so a consumer
//!   can never see the message before its record. With
//!   [`WritePolicy::BestEffort`] (the default) the put is sent first and
//!   the message right after it, without waiting for the put's ack; the
//!   publish completes when both are acked. The record is normally stored
//!   first, but the bucket and the message's stream are stored
//!   independently, so this is not guaranteed;
//! - **consume:** when the headers give no valid context, the consumer
//!   adapter looks the key up (bounded by a timeout) and, if found, the
//!   context's source is [`Kv`](crate::ContextSource::Kv). With intact
//!   headers, KV is never read. The adapter reads ahead while lookups are
//!   in flight and, with [`KvFallback::batch_reads`] (on with
//!   [`KvFallback::open`]), reads the keys of the messages it holds in one
//!   request.
//!
//! Cost: one extra JetStream write (a KV put, acked) per published message,
//! in the same round trip as the publish's own ack with
//! [`WritePolicy::BestEffort`], in the round trip before it with
//! [`WritePolicy::Required`]; one KV read per message that arrives without
//! usable headers (one request per window of such messages with batched
//! reads). Failure modes: a failed write is recorded on the PRODUCER span
//! and logged
//! ([`WritePolicy::BestEffort`], the default) or fails the publish before
//! anything is sent ([`WritePolicy::Required`]); a failed or slow lookup
//! costs at most the lookup timeout for that message, which is then yielded
//! as a new root with the reason recorded — never lost.
//!
//! # Examples
//!
//! The same policy on both sides; the key comes from the subject's second
//! token, which survives a relay that drops headers:
//!
//! ```no_run
//! use nats_otel::fallback::FallbackKey;
//! use nats_otel::{KvFallback, TraceContextStreamExt, TracePropagationLayer};
//!
//! # async fn run(js: async_nats::jetstream::Context, consumer: async_nats::jetstream::consumer::PullConsumer) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let fallback = KvFallback::open(&js, "trace_carriers", FallbackKey::subject_token(1)).await?;
//!
//! let publish_layer = TracePropagationLayer::new().fallback(fallback.clone());
//! let jobs = consumer.messages().await?.with_trace_context().fallback(fallback);
//! # let _ = (publish_layer, jobs);
//! # Ok(())
//! # }
//! ```

mod batch;
mod key;
mod lookup;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};

pub use crate::propagation::kv_record::RecordError;
pub use crate::propagation::record::{KeyError, MAX_ENCODED_KEY_LEN};
pub use key::FallbackKey;
// For the fuzz targets (fuzz/), not part of the documented API.
#[doc(hidden)]
pub use crate::propagation::kv_record::decode_record;
pub(crate) use batch::lookup_many;
#[doc(hidden)]
pub use key::{decode_key, encode_key};
pub(crate) use lookup::lookup;

/// The default lifetime of a record in a bucket created by
/// [`KvFallback::open_bucket`]: 24 hours.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(24 * 60 * 60);

/// The default bound on one consumer-side KV lookup: 250 ms.
pub const DEFAULT_LOOKUP_TIMEOUT: Duration = Duration::from_millis(250);

/// What happens when the publish-side KV write fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WritePolicy {
    /// The publish proceeds; the failure is recorded as an event on the
    /// PRODUCER span, a WARN, [`FallbackStats`] and the metric. The default.
    ///
    /// Since the put's outcome cannot stop the publish, the message is sent
    /// right after the put, without waiting for the put's ack: the publish
    /// completes once both are acked. The record is not guaranteed to be
    /// stored before the message.
    #[default]
    BestEffort,
    /// The publish fails with [`Error::KvWrite`](crate::publish::Error::KvWrite) before anything is
    /// sent.
    ///
    /// The message is sent only once the put is acked, so the record is
    /// always stored before the message; a publish takes one more round
    /// trip than with [`BestEffort`](Self::BestEffort).
    Required,
}

/// The KV fallback policy, shared by the publish layer and the consumer
/// adapter. Off unless configured.
///
/// # Examples
///
/// ```no_run
/// use nats_otel::{fallback::FallbackKey, KvFallback, TracePropagationLayer, TraceContextStreamExt};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let client = async_nats::connect("nats://127.0.0.1:4222").await?;
/// let js = async_nats::jetstream::new(client);
/// let fallback = KvFallback::open(&js, "trace_carriers", FallbackKey::header("Job-Id")).await?;
///
/// // Publish side:
/// let layer = TracePropagationLayer::new().fallback(fallback.clone());
/// // Consume side:
/// # let consumer: async_nats::jetstream::consumer::PullConsumer = todo!();
/// let messages = consumer.messages().await?.with_trace_context().fallback(fallback);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct KvFallback {
    pub(crate) store: kv::Store,
    pub(crate) key: FallbackKey,
    pub(crate) on_write_failure: WritePolicy,
    pub(crate) lookup_timeout: Duration,
    /// For batched reads; `None` reads one key per request.
    pub(crate) jetstream: Option<jetstream::Context>,
    pub(crate) stats: Arc<Stats>,
}

impl fmt::Debug for KvFallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KvFallback")
            .field("bucket", &self.store.name)
            .field("key", &self.key)
            .field("on_write_failure", &self.on_write_failure)
            .field("lookup_timeout", &self.lookup_timeout)
            .field("batch_reads", &self.jetstream.is_some())
            .field("stats", &self.stats())
            .finish()
    }
}

impl KvFallback {
    /// A fallback to `store`, keyed by `key`.
    ///
    /// By default, write failures are [`WritePolicy::BestEffort`] and
    /// lookups time out after [`DEFAULT_LOOKUP_TIMEOUT`].
    pub fn new(store: kv::Store, key: FallbackKey) -> Self {
        Self {
            store,
            key,
            on_write_failure: WritePolicy::default(),
            lookup_timeout: DEFAULT_LOOKUP_TIMEOUT,
            jetstream: None,
            stats: Arc::default(),
        }
    }

    /// Opens (or creates, as [`open_bucket`](Self::open_bucket) does) the
    /// bucket `name` and returns a fallback to it keyed by `key`, with
    /// [`batch_reads`](Self::batch_reads) on through `jetstream`.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use nats_otel::{fallback::FallbackKey, KvFallback};
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let client = async_nats::connect("nats://127.0.0.1:4222").await?;
    /// let js = async_nats::jetstream::new(client);
    /// let fallback = KvFallback::open(&js, "trace_carriers", FallbackKey::header("Job-Id")).await?;
    /// # let _ = fallback;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn open(
        jetstream: &jetstream::Context,
        name: &str,
        key: FallbackKey,
    ) -> Result<Self, BucketError> {
        let store = Self::open_bucket(jetstream, name).await?;
        Ok(Self::new(store, key).batch_reads(jetstream.clone()))
    }

    /// Reads the keys of all messages waiting in a consumer adapter's
    /// look-ahead window in one request (a multi-last direct get), through
    /// `jetstream`: the JetStream context the bucket was opened with.
    ///
    /// By default, each key is read with its own direct get (the reads of
    /// a window still overlap). Batched reads need nats-server 2.11 or later
    /// and a bucket with direct gets allowed (as buckets are by default); on
    /// an older server, or when a batch fails, the keys are read one by one
    /// with the same timeout and failure reasons, so turning this on never
    /// changes an outcome, only the number of round trips. A single lookup
    /// ([`ContextExtractor::extract_or_lookup`](crate::consume::ContextExtractor::extract_or_lookup))
    /// is one read either way.
    pub fn batch_reads(mut self, jetstream: jetstream::Context) -> Self {
        self.jetstream = Some(jetstream);
        self
    }

    /// Sets what a failed publish-side write does.
    pub fn on_write_failure(mut self, policy: WritePolicy) -> Self {
        self.on_write_failure = policy;
        self
    }

    /// Bounds each consumer-side lookup.
    ///
    /// By default, [`DEFAULT_LOOKUP_TIMEOUT`].
    pub fn lookup_timeout(mut self, timeout: Duration) -> Self {
        self.lookup_timeout = timeout;
        self
    }

    /// The bucket.
    pub fn store(&self) -> &kv::Store {
        &self.store
    }

    /// The key rule.
    pub fn key(&self) -> &FallbackKey {
        &self.key
    }

    /// Counts of KV operations made through this policy (shared by its
    /// clones).
    pub fn stats(&self) -> FallbackStats {
        FallbackStats {
            writes: self.stats.writes.load(Ordering::Relaxed),
            write_failures: self.stats.write_failures.load(Ordering::Relaxed),
            reads: self.stats.reads.load(Ordering::Relaxed),
            read_failures: self.stats.read_failures.load(Ordering::Relaxed),
        }
    }

    /// Binds the bucket `name`, creating it with a TTL of
    /// [`DEFAULT_MAX_AGE`] if it does not exist.
    pub async fn open_bucket(
        jetstream: &jetstream::Context,
        name: &str,
    ) -> Result<kv::Store, BucketError> {
        Self::open_bucket_with_max_age(jetstream, name, DEFAULT_MAX_AGE).await
    }

    /// Binds the bucket `name`, creating it with records expiring after
    /// `max_age` if it does not exist. An existing bucket keeps its own
    /// settings.
    pub async fn open_bucket_with_max_age(
        jetstream: &jetstream::Context,
        name: &str,
        max_age: Duration,
    ) -> Result<kv::Store, BucketError> {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(BucketError::InvalidName(name.to_owned()));
        }
        if let Ok(store) = jetstream.get_key_value(name).await {
            return Ok(store);
        }
        let created = jetstream
            .create_key_value(kv::Config {
                bucket: name.to_owned(),
                description: "nats-otel trace carrier fallback".to_owned(),
                history: 1,
                max_age,
                ..Default::default()
            })
            .await;
        match created {
            Ok(store) => Ok(store),
            // Another process may have created it meanwhile.
            Err(create) => jetstream
                .get_key_value(name)
                .await
                .map_err(|_| BucketError::Create(create.to_string())),
        }
    }
}

/// Counts of KV operations made through a [`KvFallback`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct FallbackStats {
    /// Records written (publish side).
    pub writes: u64,
    /// Writes that failed.
    pub write_failures: u64,
    /// Lookups made (consume side; only on a header miss).
    pub reads: u64,
    /// Lookups that failed, timed out or found nothing valid.
    pub read_failures: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) writes: AtomicU64,
    pub(crate) write_failures: AtomicU64,
    pub(crate) reads: AtomicU64,
    pub(crate) read_failures: AtomicU64,
    /// Whether the server was found not to answer batched reads.
    pub(crate) batch_unsupported: AtomicBool,
}

/// The fallback bucket could not be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BucketError {
    /// Bucket names are `[a-zA-Z0-9_-]+`.
    InvalidName(String),
    /// The bucket did not exist and could not be created.
    Create(String),
}

impl fmt::Display for BucketError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidName(name) => write!(
                f,
                "invalid KV bucket name {name:?}: use letters, digits, '-' and '_'"
            ),
            Self::Create(e) => write!(f, "could not create the fallback KV bucket: {e}"),
        }
    }
}

impl std::error::Error for BucketError {}
