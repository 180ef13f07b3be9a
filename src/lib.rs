//! OpenTelemetry trace context that survives NATS.
//!
//! A service publishes a job inside a traced request; a worker consumes it.
//! Without care, the worker starts a new root trace and nobody is told why:
//! the propagator was a no-op, the span context was invalid, a header was
//! re-cased or dropped in transit. This crate makes the worker's spans
//! children of the publisher's, and says where every context came from.
//!
//! - **Publish:** [`TracePropagationLayer`], a [`tower`] layer around any
//!   publish service ([`CorePublisher`], [`Requester`](publish::Requester),
//!   `JetStreamPublisher`, or your own), starts a PRODUCER span and injects W3C `traceparent`,
//!   `tracestate` and `baggage` into the message headers.
//! - **Consume:** [`ContextExtractingConsumer`] (via
//!   [`TraceContextStreamExt::with_trace_context`]) wraps a subscription or a
//!   JetStream pull consumer and yields `(message, Context)`, where the
//!   context holds a CONSUMER `process` span whose parent is the publisher's.
//! - **When headers get lost:** with the `kv` feature, a `KvFallback`
//!   stores the carrier in a NATS KV bucket too; a [`TraceCarrier`] embeds it
//!   in job data. Consumers recover the context from either.
//! - **Never silent:** every yielded context carries an [`ExtractionRecord`]
//!   with its [`ContextSource`] and, when there is none, a
//!   [`NoContextReason`](consume::NoContextReason) a person can act on.
//!
//! # Modules
//!
//! The root re-exports the everyday items; the rest lives with its concern.
//! Data flows [`publish`] → [`propagation`] → wire → [`propagation`] →
//! [`consume`], with the fallback and diagnostics on the side:
//!
//! - [`publish`]: the layer, its service and future, the leaf publish
//!   services, the KV write layer.
//! - [`consume`]: the stream adapter, the one-message extractor, the
//!   extraction record, handler spans and settlement spans.
//! - [`propagation`]: the one W3C codec and its carriers — header
//!   injector and extractor, header names, [`TraceCarrier`], the KV record.
//! - `fallback` (feature `kv`): the KV fallback policy, keys and bucket.
//! - `hops` (feature `hops`): nats-server message-trace events turned into
//!   one span per server a message crossed.
//! - [`subject`]: subject filters and the templates that keep span names
//!   low-cardinality.
//! - [`diagnose`](mod@diagnose): the start-up self-check.
//! - [`attr`]: the `messaging.nats.*` attribute names.
//!
//! # Examples
//!
//! ```no_run
//! use futures::StreamExt;
//! use nats_otel::{CorePublisher, MessageContextExt, Publish, TraceContextStreamExt, TracePropagationLayer};
//! use tower::{Layer, Service, ServiceExt};
//! use tracing::Instrument;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let client = async_nats::connect("nats://127.0.0.1:4222").await?;
//!
//! // Worker side.
//! let mut jobs = client.subscribe("jobs").await?.with_trace_context();
//!
//! // API side: inside a traced request.
//! let mut publisher = TracePropagationLayer::new().layer(CorePublisher::new(client.clone()));
//! publisher.ready().await?.call(Publish::new("jobs", "{\"id\":1}")).await?;
//!
//! let (message, cx) = jobs.next().await.unwrap();
//! let span = cx.handler_span(tracing::info_span!("handle_job"))?;
//! async { /* work */ }.instrument(span).await;
//! # Ok(())
//! # }
//! ```
//!
//! # Features
//!
//! - `jetstream` (default): `JetStreamPublisher`, `JetStreamSender` and
//!   JetStream message support in the consumer adapter.
//! - `kv`: the KV fallback for the trace carrier.
//! - `hops`: nats-server message-trace events as spans (`hops::ServerHops`).
//! - `cli`: the `nats-otel` binary (`doctor`, `inspect`).
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(unsafe_code, unreachable_pub)]
#![warn(missing_docs, missing_debug_implementations)]

pub mod attr;
pub mod consume;
pub mod diagnose;
#[cfg(feature = "kv")]
#[cfg_attr(docsrs, doc(cfg(feature = "kv")))]
pub mod fallback;
#[cfg(feature = "hops")]
#[cfg_attr(docsrs, doc(cfg(feature = "hops")))]
pub mod hops;
pub mod propagation;
pub mod publish;
pub mod subject;
mod telemetry;

// The everyday items; everything else lives in its module.
#[cfg(feature = "jetstream")]
pub use consume::SettleExt;
pub use consume::{
    ContextExtractingConsumer, ContextSource, ExtractionRecord, MessageContextExt,
    TraceContextStreamExt,
};
pub use diagnose::diagnose;
#[cfg(feature = "kv")]
pub use fallback::KvFallback;
pub use propagation::{HeaderNames, TraceCarrier};
#[cfg(feature = "jetstream")]
pub use publish::JetStreamPublisher;
pub use publish::{CorePublisher, Publish, TracePropagationLayer};
pub use subject::SubjectFilter;

/// The README's code, compiled as doc tests so it cannot drift from the API.
#[cfg(all(doctest, feature = "kv"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
