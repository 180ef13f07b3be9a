//! The publish side: a [`tower`] layer that starts a PRODUCER span and
//! injects its context into the outgoing message headers.
//!
//! - [`TracePropagationLayer`] / [`TracePropagation`] / [`ResponseFuture`]:
//!   the middleware.
//! - [`Publish`] and the [`PublishMessage`] trait: what the middleware traces.
//! - Leaf services: [`CorePublisher`], [`Requester`] and, with the
//!   `jetstream` feature, [`JetStreamPublisher`] and [`JetStreamSender`].

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
pub use error::InvalidHeader;
#[cfg(feature = "kv")]
#[cfg_attr(docsrs, doc(cfg(feature = "kv")))]
pub use fallback::{
    FallbackError, KvFallbackFuture, KvFallbackLayer, KvFallbackService, KvWriteError,
};
pub use future::ResponseFuture;
#[cfg(feature = "jetstream")]
#[cfg_attr(docsrs, doc(cfg(feature = "jetstream")))]
pub use jetstream::{JetStreamPublisher, JetStreamSender};
pub use layer::TracePropagationLayer;
pub use request::{Publish, PublishMessage, PublishParts};
pub use service::TracePropagation;
