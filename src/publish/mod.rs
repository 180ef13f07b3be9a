//! The publish side: a [`tower`] layer that starts a PRODUCER span and
//! injects its context into the outgoing message headers.
//!
//! - [`TracePropagationLayer`] / [`TracePropagation`] / [`ResponseFuture`]:
//!   the middleware, with its [`Error`] (the inner service's error, or the
//!   KV fallback's required write, [`KvWriteError`]).
//! - [`Publish`] and the [`PublishMessage`] trait: what the middleware traces.
//! - Leaf services: [`CorePublisher`], [`Requester`] and, with the
//!   `jetstream` feature, [`JetStreamPublisher`] and [`JetStreamSender`].
//!
//! # Examples
//!
//! The layer in front of a service that hands back the headers it was
//! given (runnable without a server):
//!
//! ```
//! use std::convert::Infallible;
//!
//! use nats_otel::{Publish, TracePropagationLayer};
//! use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
//! use tower::{service_fn, Layer, Service, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let mut publisher = TracePropagationLayer::new().layer(service_fn(|publish: Publish| async move {
//!     Ok::<_, Infallible>(publish.header_map().cloned().unwrap_or_default())
//! }));
//! let request = opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
//!     TraceId::from(0x0af7651916cd43dd8448eb211c80319c),
//!     SpanId::from(0xb7ad6b7169203331),
//!     TraceFlags::SAMPLED,
//!     true,
//!     TraceState::NONE,
//! ));
//! let headers = publisher
//!     .ready()
//!     .await
//!     .unwrap()
//!     .call(Publish::new("jobs.resize", "{}").context(request))
//!     .await
//!     .unwrap();
//! // Both names by default: W3C readers and Go's HeaderCarrier each find theirs.
//! assert!(headers.get("traceparent").is_some());
//! assert!(headers.get("Traceparent").is_some());
//! # }
//! ```

mod client;
mod error;
#[cfg(feature = "kv")]
mod fallback;
mod future;
#[cfg(feature = "jetstream")]
mod jetstream;
mod layer;
mod request;
mod service;

pub use client::{CorePublisher, Requester};
pub use error::{Error, InvalidHeader, KvWriteError};
pub use future::ResponseFuture;
#[cfg(feature = "jetstream")]
#[cfg_attr(docsrs, doc(cfg(feature = "jetstream")))]
pub use jetstream::{JetStreamPublisher, JetStreamSender};
pub use layer::TracePropagationLayer;
pub use request::{Publish, PublishMessage, PublishParts};
pub use service::TracePropagation;
