//! OpenTelemetry trace context that survives NATS.
//!
//! A service publishes a job inside a traced request; a worker consumes it.
//! Without care, the worker starts a new root trace and nobody is told why:
//! the propagator was a no-op, the span context was invalid, a header was
//! re-cased or dropped in transit. This crate makes the worker's spans
//! children of the publisher's, and says where every context came from.
//!
//! - **Publish:** [`TracePropagationLayer`], a [`tower`] layer around any
//!   publish service ([`CorePublisher`], [`Requester`], `JetStreamPublisher`,
//!   or your own), starts a PRODUCER span and injects W3C `traceparent`,
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
//!   [`NoContextReason`] a person can act on.
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
pub mod propagation;
pub mod publish;
mod subject;
mod telemetry;

pub use consume::{
    ConsumerItem, ContextExtractingConsumer, ContextExtractor, ContextSource, ExtractionRecord,
    HandlerSpanError, JetStreamMeta, MessageContextExt, MessageMeta, NoContextReason, Redelivery,
    TraceContextStreamExt,
};
#[cfg(feature = "jetstream")]
pub use consume::SettleExt;
pub use diagnose::{diagnose, diagnose_client, Finding};
#[cfg(feature = "kv")]
pub use fallback::{FallbackKey, KeyInput, KvFallback, WriteFailure};
pub use propagation::{
    check_traceparent, global_propagator_is_noop, HeaderExtractor, HeaderInjector, HeaderNames,
    InjectSkip, TraceCarrier, TraceparentProblem, BAGGAGE, TRACEPARENT, TRACESTATE,
};
#[cfg(feature = "kv")]
pub use publish::{FallbackError, KvFallbackLayer, KvFallbackService, KvWriteError};
pub use publish::{
    CorePublisher, InvalidHeader, Publish, PublishMessage, PublishParts, Requester,
    ResponseFuture, TracePropagation, TracePropagationLayer,
};
#[cfg(feature = "jetstream")]
pub use publish::{JetStreamPublisher, JetStreamSender};
pub use subject::SubjectFilter;

/// The README's code, compiled as doc tests so it cannot drift from the API.
#[cfg(all(doctest, feature = "kv"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
