//! Server hops: what each nats-server did with a traced message, as spans
//! of the message's own trace.
//!
//! nats-server 2.11+ traces a message that carries the header
//! `Nats-Trace-Dest: <subject>` (ADR-41): every server the message crosses
//! publishes one JSON event to that subject — the connection it came in on,
//! subject mappings, service imports and stream exports, the JetStream
//! store, every connection it went out on, errors. [`ServerHops`]
//! subscribes to the subject and turns each event into one span named
//! `nats-server {server name}`, child of the message's PRODUCER span (read
//! from the `traceparent` the event repeats), so a trace shows
//! `publish → nats-server a → nats-server c → process`:
//!
//! - **span**: from the server's first entry to its last, kind `INTERNAL`;
//!   attributes `messaging.system` (`nats`), `nats.server.name`,
//!   `nats.server.id`, `nats.server.version`, `nats.server.cluster` and
//!   `nats.server.domain` (when set), `messaging.destination.name` (the
//!   subject it arrived on), `messaging.message.envelope.size` (headers +
//!   payload), `nats.trace.hop` (this server's hop id, when forwarded to
//!   it), `nats.trace.hops` and `nats.server.next_hops` (the servers it
//!   forwarded to); status error when the server or JetStream refused the
//!   message.
//! - **span events**, one per entry at its own time: `ingress`,
//!   `subject_mapping`, `service_import`, `stream_export`,
//!   `jetstream_store`, `egress` (and `unknown` for entry types of newer
//!   servers), with `nats.connection.kind` (`client`, `route`, `gateway`,
//!   `leafnode`, …), `nats.connection.id`, `nats.connection.name`,
//!   `nats.account`, `nats.subscription`, `nats.queue`, `nats.stream`,
//!   `nats.next_hop.server` / `nats.next_hop.id` (egress to a route,
//!   gateway or leafnode), `nats.previous_hop.server`, `error.message`, ….
//!   At most 128 per span; the rest are counted in
//!   `nats.trace.entries_dropped`. String values are cut to 256 bytes.
//!
//! Every server span is a child of the PRODUCER span, not of the server
//! before it: events arrive in any order (or not at all), and nesting them
//! would mean holding events back. The `nats.trace.hop` of a server equals
//! the `nats.next_hop.id` on the egress of the server before it.
//!
//! **Why `INTERNAL`.** The semantic conventions define no span for a broker.
//! `SERVER` means handling a remote request; the spans are made in the
//! bridge's process, under its resource, so a `SERVER` span would show the
//! bridge's service as receiving the publisher's requests in service graphs
//! and request metrics. `CONSUMER` would count the server as a consumer of
//! the message. `INTERNAL` annotates the trace without claiming either; the
//! server is named by the span name and the `nats.server.*` attributes. (To
//! see the servers as their own service, give the bridge a tracer from a
//! provider whose resource says `service.name = nats-server`.)
//!
//! # Cost
//!
//! Each traced message makes every server it crosses build and publish one
//! extra message (a few hundred bytes plus the message's headers) and the
//! bridge parse it. Turn tracing on only for sampled messages
//! ([`HopsSettings::apply`] does), and keep the sampling ratio in mind on
//! busy subjects. The bridge processes events as they arrive on its own
//! task and subscription: no buffering beyond the client's subscription
//! channel (async-nats drops what overflows it, reported as a slow
//! consumer), and publishers never wait for it.
//!
//! # Servers
//!
//! nats-server 2.11.0 up to and including 2.12.11 rewrite trace headers
//! while message tracing is active (`Traceparent` re-cased to `traceparent`
//! on every inbound message, the first letter overwritten — `Xraceparent` —
//! on stored messages), which breaks the consumer side of the trace;
//! servers before 2.11 have no message tracing. Use 2.12.12+ or 2.14+.
//! [`ServerHops::spawn`] checks the connected server with
//! [`message_tracing_safe`] and stays disabled (with a warning and
//! [`ServerHops::disabled_reason`]) otherwise. It sees one server only: in
//! clusters, superclusters and leafnode setups, every server must be safe.
//!
//! # Security
//!
//! Events carry the traced message's headers — every one of them, not only
//! the trace headers — and never its payload. Whoever can subscribe to the
//! destination subject sees those headers, and the server, account and
//! connection names: restrict the subject with subscribe permissions. The
//! events are published in the account the message was published in (or,
//! for accounts that set `msg_trace` for `traceparent`-only messages, that
//! account's destination), so the bridge's client must be in that account.
//! A message that crosses accounts is traced there only when the export
//! (service) or import (stream) sets `allow_trace`.
//!
//! # Examples
//!
//! ```no_run
//! use nats_otel::hops::ServerHops;
//! use opentelemetry::trace::TracerProvider as _;
//! use opentelemetry_sdk::trace::SdkTracerProvider;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let provider = SdkTracerProvider::builder().build();
//! let client = async_nats::connect("nats://127.0.0.1:4222").await?;
//!
//! let hops = ServerHops::spawn(client.clone(), "_traces.api-1", provider.tracer("nats-server")).await?;
//! if let Some(reason) = hops.disabled_reason() {
//!     eprintln!("no server spans: {reason}");
//! }
//!
//! // The publish side: add `Nats-Trace-Dest` to sampled messages.
//! let settings = hops.publish_settings();
//! let mut headers = async_nats::HeaderMap::new();
//! # let producer = opentelemetry::trace::SpanContext::empty_context();
//! settings.apply(&mut headers, &producer);
//!
//! // …
//! println!("{:?}", hops.stats());
//! hops.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod bridge;
mod event;
mod parse;
mod span;
mod time;
mod version;

pub use bridge::{HopsError, HopsSettings, HopsStats, ServerHops};
pub use event::{
    ConnectionKind, Egress, Ingress, InvalidEvent, JetStreamStore, ServerInfo, ServiceImport,
    StreamExport, SubjectMapping, TraceEntry, TraceEvent, TraceRequest, TraceparentError,
    TRACE_DEST_HEADER, TRACE_HOP_HEADER, TRACE_ORIGIN_ACCOUNT_HEADER,
};
pub use parse::{parse_event, MAX_EVENT_BYTES};
pub use version::{message_tracing_safe, UnsafeVersion};

#[cfg(test)]
mod tests;
