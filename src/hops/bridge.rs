//! [`ServerHops`]: the subscription that turns trace events into spans,
//! and the [`HopsSettings`] the publish side consults.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use async_nats::header::{HeaderName, HeaderValue};
use async_nats::{HeaderMap, Subscriber};
use futures::StreamExt;
use opentelemetry::trace::{SpanContext, Tracer};

use super::event::{TraceEntry, TraceparentError, TRACE_DEST_HEADER};
use super::parse::parse_event;
use super::span::record_span;
use super::version::{message_tracing_safe, UnsafeVersion};

/// Longest trace destination subject accepted, in bytes.
const MAX_DEST_LEN: usize = 256;

/// Why [`ServerHops::spawn`] failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum HopsError {
    /// The destination is not a subject a server can publish events to:
    /// empty, longer than 256 bytes, not printable ASCII, an empty token or
    /// a wildcard.
    InvalidDestination {
        /// The destination given (at most 64 characters).
        dest: String,
    },
    /// Not called inside a Tokio runtime: there is nowhere to run the task.
    NoRuntime,
    /// Subscribing to the destination failed.
    Subscribe(async_nats::SubscribeError),
    /// The server did not confirm the subscription: a message sent to the
    /// client itself after subscribing did not come back in time.
    NotConfirmed {
        /// What failed.
        reason: String,
    },
}

impl fmt::Display for HopsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidDestination { dest } => write!(
                f,
                "{dest:?} is not a valid trace destination (a literal subject of printable \
                 ASCII, no wildcards, at most {MAX_DEST_LEN} bytes)"
            ),
            Self::NoRuntime => f.write_str("ServerHops::spawn must run inside a Tokio runtime"),
            Self::Subscribe(e) => write!(f, "subscribing to the trace destination failed: {e}"),
            Self::NotConfirmed { reason } => {
                write!(f, "confirming the trace subscription failed: {reason}")
            }
        }
    }
}

impl std::error::Error for HopsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Subscribe(e) => Some(e),
            _ => None,
        }
    }
}

/// What the bridge has seen so far (a snapshot; see [`ServerHops::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HopsStats {
    /// Trace events received on the destination.
    pub events_received: u64,
    /// Spans made (one per event that had a sampled parent).
    pub spans_made: u64,
    /// Events dropped: not a readable event ([`InvalidEvent`](super::InvalidEvent)).
    pub malformed: u64,
    /// Events dropped: the message had no `traceparent`.
    pub no_traceparent: u64,
    /// Events dropped: the message's `traceparent` was malformed or ambiguous.
    pub invalid_traceparent: u64,
    /// Events dropped: the message's trace was not sampled.
    pub unsampled: u64,
    /// Entries of a type this crate does not know (in events that made a
    /// span or were dropped for their parent; shown as `unknown` span events).
    pub unknown_entries: u64,
}

impl HopsStats {
    /// Events that made no span, whatever the reason.
    pub fn dropped(&self) -> u64 {
        self.malformed + self.no_traceparent + self.invalid_traceparent + self.unsampled
    }
}

#[derive(Debug, Default)]
struct Counters {
    events_received: AtomicU64,
    spans_made: AtomicU64,
    malformed: AtomicU64,
    no_traceparent: AtomicU64,
    invalid_traceparent: AtomicU64,
    unsampled: AtomicU64,
    unknown_entries: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> HopsStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        HopsStats {
            events_received: get(&self.events_received),
            spans_made: get(&self.spans_made),
            malformed: get(&self.malformed),
            no_traceparent: get(&self.no_traceparent),
            invalid_traceparent: get(&self.invalid_traceparent),
            unsampled: get(&self.unsampled),
            unknown_entries: get(&self.unknown_entries),
        }
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// The cheap, shared view of a [`ServerHops`] the publish side consults:
/// whether to turn message tracing on for a message, and the subject to
/// send its events to.
///
/// Cloning is one reference-count increment; [`is_enabled`](Self::is_enabled)
/// is one atomic load. The flag turns off, for good, when the bridge is shut
/// down or dropped, when its subscription ends, or from the start when the
/// server version is not safe ([`disabled_reason`](Self::disabled_reason)):
/// publishers must not add `Nats-Trace-Dest` when nobody turns the events
/// into spans, since every server crossed then publishes an event for
/// nothing.
///
/// A publish layer calls [`apply`](Self::apply) on each outgoing message's
/// headers with the PRODUCER span's context: the header is added only when
/// the bridge runs and the span is sampled (events of unsampled traces would
/// be dropped anyway).
#[derive(Clone)]
pub struct HopsSettings {
    inner: Arc<Settings>,
}

struct Settings {
    dest: String,
    dest_value: HeaderValue,
    enabled: AtomicBool,
    reason: Option<UnsafeVersion>,
}

impl fmt::Debug for HopsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HopsSettings")
            .field("dest", &self.inner.dest)
            .field("enabled", &self.is_enabled())
            .field("reason", &self.inner.reason)
            .finish()
    }
}

impl HopsSettings {
    fn new(dest: String, dest_value: HeaderValue, reason: Option<UnsafeVersion>) -> Self {
        Self {
            inner: Arc::new(Settings {
                dest,
                dest_value,
                enabled: AtomicBool::new(reason.is_none()),
                reason,
            }),
        }
    }

    /// The subject the servers publish their events to: the
    /// `Nats-Trace-Dest` value.
    pub fn dest(&self) -> &str {
        &self.inner.dest
    }

    /// Whether publishers should turn message tracing on now.
    pub fn is_enabled(&self) -> bool {
        self.inner.enabled.load(Ordering::Acquire)
    }

    /// Why the bridge never started: the server version is not safe for
    /// message tracing.
    pub fn disabled_reason(&self) -> Option<&UnsafeVersion> {
        self.inner.reason.as_ref()
    }

    /// Adds `Nats-Trace-Dest: {dest}` to `headers` when the bridge is
    /// enabled and `producer` (the PRODUCER span of the message) is valid
    /// and sampled, and the headers do not carry a `Nats-Trace-Dest`
    /// already. Returns whether it added the header.
    pub fn apply(&self, headers: &mut HeaderMap, producer: &SpanContext) -> bool {
        if !self.is_enabled() || !producer.is_valid() || !producer.is_sampled() {
            return false;
        }
        if headers.get(TRACE_DEST_HEADER).is_some() {
            return false;
        }
        headers.insert(
            HeaderName::from_static(TRACE_DEST_HEADER),
            self.inner.dest_value.clone(),
        );
        true
    }

    #[cfg(test)]
    pub(super) fn new_for_test(dest: &str, reason: Option<UnsafeVersion>) -> Self {
        let value = valid_dest(dest).expect("valid destination");
        Self::new(dest.to_owned(), value, reason)
    }

    pub(super) fn turn_off(&self) {
        self.inner.enabled.store(false, Ordering::Release);
    }
}

/// Turns the nats-server message-trace events of traced messages into
/// spans of those messages' traces: one span per server visited.
///
/// Spawn it once per process on a client in the publishers' account, with
/// the subject the publishers' messages name in `Nats-Trace-Dest` (see
/// [`publish_settings`](Self::publish_settings)). It runs as its own task on
/// its own subscription; it never slows publishers. Dropping it, or
/// [`shutdown`](Self::shutdown), stops the task and turns the publish
/// settings off.
#[derive(Debug)]
#[must_use = "dropping a ServerHops stops it"]
pub struct ServerHops {
    settings: HopsSettings,
    counters: Arc<Counters>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl ServerHops {
    /// Subscribes to `dest` on `client` and starts the task that makes the
    /// spans with `tracer`.
    ///
    /// When the connected server's version is not safe for message tracing
    /// ([`message_tracing_safe`](super::message_tracing_safe)), returns a
    /// disabled bridge — no subscription, publish settings off,
    /// [`disabled_reason`](Self::disabled_reason) set — and logs a warning
    /// (target `nats_otel`). An empty version (the client has not connected
    /// yet, e.g. with `retry_on_initial_connect`) counts as unsafe.
    ///
    /// # Errors
    ///
    /// [`HopsError::InvalidDestination`] for a destination that is not a
    /// literal subject, [`HopsError::NoRuntime`] outside a Tokio runtime,
    /// [`HopsError::Subscribe`] / [`HopsError::NotConfirmed`] when the subscription
    /// fails.
    pub async fn spawn<T>(
        client: async_nats::Client,
        dest: impl Into<String>,
        tracer: T,
    ) -> Result<Self, HopsError>
    where
        T: Tracer + Send + Sync + 'static,
    {
        let dest = dest.into();
        let dest_value = valid_dest(&dest).ok_or_else(|| HopsError::InvalidDestination {
            dest: dest.chars().take(64).collect(),
        })?;
        let version = client.server_info().version;
        if let Err(reason) = message_tracing_safe(&version) {
            tracing::warn!(
                target: "nats_otel",
                server_version = %reason.version(),
                reason = reason.as_str(),
                dest = %dest,
                "server hops disabled, message tracing stays off: {reason}"
            );
            return Ok(Self {
                settings: HopsSettings::new(dest, dest_value, Some(reason)),
                counters: Arc::default(),
                task: None,
            });
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| HopsError::NoRuntime)?;
        let subscriber = client
            .subscribe(dest.clone())
            .await
            .map_err(HopsError::Subscribe)?;
        confirm(&client).await?;
        let settings = HopsSettings::new(dest, dest_value, None);
        let counters = Arc::<Counters>::default();
        let bridge = Bridge {
            tracer,
            counters: Arc::clone(&counters),
        };
        let task = runtime.spawn(run(client, subscriber, bridge, settings.clone()));
        Ok(Self {
            settings,
            counters,
            task: Some(task),
        })
    }

    /// What the bridge has seen so far.
    pub fn stats(&self) -> HopsStats {
        self.counters.snapshot()
    }

    /// Why the bridge is disabled, when the server version is not safe for
    /// message tracing.
    pub fn disabled_reason(&self) -> Option<&UnsafeVersion> {
        self.settings.disabled_reason()
    }

    /// Whether the task is running (not disabled, not shut down, the
    /// subscription not ended).
    pub fn is_running(&self) -> bool {
        self.task.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// The shared handle the publish side consults; see [`HopsSettings`].
    pub fn publish_settings(&self) -> HopsSettings {
        self.settings.clone()
    }

    /// Turns the publish settings off, stops the task and waits for it to
    /// end. Events not yet processed are dropped.
    pub async fn shutdown(mut self) {
        self.settings.turn_off();
        if let Some(task) = self.task.take() {
            task.abort();
            // Cancelled (or finished): either way it is over.
            let _ = task.await;
        }
    }
}

impl Drop for ServerHops {
    fn drop(&mut self) {
        self.settings.turn_off();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// How long [`confirm`] waits for its echo.
const CONFIRM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Waits until the server has processed the client's subscriptions so far:
/// `flush` only writes them to the socket, so events published right after
/// it could still reach no one. A message the client sends itself comes
/// back only after the server has handled everything sent before it.
async fn confirm(client: &async_nats::Client) -> Result<(), HopsError> {
    let failed = |reason: String| HopsError::NotConfirmed { reason };
    let inbox = client.new_inbox();
    let mut echo = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| failed(e.to_string()))?;
    client
        .publish(inbox, bytes::Bytes::new())
        .await
        .map_err(|e| failed(e.to_string()))?;
    match tokio::time::timeout(CONFIRM_TIMEOUT, echo.next()).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(failed("the connection closed".into())),
        Err(_) => Err(failed(format!("no echo within {CONFIRM_TIMEOUT:?}"))),
    }
}

/// A literal subject as a header value, or `None`.
pub(super) fn valid_dest(dest: &str) -> Option<HeaderValue> {
    let printable = dest.bytes().all(|b| b.is_ascii_graphic());
    let literal = dest
        .split('.')
        .all(|token| !token.is_empty() && token != "*" && token != ">");
    if dest.is_empty() || dest.len() > MAX_DEST_LEN || !printable || !literal {
        return None;
    }
    dest.parse().ok()
}

/// The task: one event at a time, as they come. It keeps a handle of the
/// client so the connection lives as long as the bridge does.
async fn run<T: Tracer>(
    client: async_nats::Client,
    mut subscriber: Subscriber,
    bridge: Bridge<T>,
    settings: HopsSettings,
) {
    let _client = client;
    while let Some(message) = subscriber.next().await {
        bridge.handle(&message.payload);
    }
    settings.turn_off();
    tracing::warn!(
        target: "nats_otel",
        dest = %settings.dest(),
        "server hops subscription ended (connection closed?); message tracing turned off"
    );
}

/// What became of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Handled {
    Span,
    Malformed,
    NoTraceparent,
    InvalidTraceparent,
    Unsampled,
}

/// Event in, span out: the part of the task that does not wait.
pub(super) struct Bridge<T> {
    tracer: T,
    counters: Arc<Counters>,
}

impl<T: Tracer> Bridge<T> {
    #[cfg(test)]
    pub(super) fn new(tracer: T) -> Self {
        Self {
            tracer,
            counters: Arc::default(),
        }
    }

    #[cfg(test)]
    pub(super) fn stats(&self) -> HopsStats {
        self.counters.snapshot()
    }

    /// Parses one event and, when its message has a sampled parent, makes
    /// its span. Never panics.
    pub(super) fn handle(&self, payload: &[u8]) -> Handled {
        let c = &*self.counters;
        bump(&c.events_received);
        let event = match parse_event(payload) {
            Ok(event) => event,
            Err(e) => {
                bump(&c.malformed);
                tracing::debug!(target: "nats_otel", reason = e.as_str(), "trace event dropped: {e}");
                return Handled::Malformed;
            }
        };
        let unknown = event
            .entries
            .iter()
            .filter(|e| matches!(e, TraceEntry::Unknown { .. }))
            .count();
        if unknown > 0 {
            c.unknown_entries
                .fetch_add(unknown as u64, Ordering::Relaxed);
        }
        let parent = match event.span_context() {
            Ok(parent) if parent.is_sampled() => parent,
            Ok(_) => {
                bump(&c.unsampled);
                return Handled::Unsampled;
            }
            Err(TraceparentError::Missing) => {
                bump(&c.no_traceparent);
                return Handled::NoTraceparent;
            }
            Err(e) => {
                bump(&c.invalid_traceparent);
                tracing::debug!(target: "nats_otel", server = %event.server.name, "trace event dropped: {e}");
                return Handled::InvalidTraceparent;
            }
        };
        record_span(&self.tracer, &event, parent);
        bump(&c.spans_made);
        Handled::Span
    }
}
