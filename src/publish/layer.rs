use opentelemetry::propagation::TextMapPropagator;
use tower_layer::Layer;

use super::service::TracePropagation;
use crate::propagator::PropagatorChoice;

/// A [`Layer`] that traces every publish: it starts a PRODUCER span and
/// injects its context into the message headers.
///
/// Wraps any [`tower::Service`] whose request implements
/// [`PublishMessage`](crate::PublishMessage): the crate's
/// [`CorePublisher`](crate::CorePublisher),
/// [`Requester`](crate::Requester),
/// [`JetStreamPublisher`](crate::JetStreamPublisher), or your own.
///
/// # Examples
///
/// ```no_run
/// use nats_otel::{CorePublisher, Publish, TracePropagationLayer};
/// use tower::{Service, ServiceBuilder, ServiceExt};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let client = async_nats::connect("nats://127.0.0.1:4222").await?;
/// let mut publisher = ServiceBuilder::new()
///     .layer(TracePropagationLayer::new())
///     .service(CorePublisher::new(client));
///
/// publisher
///     .ready()
///     .await?
///     .call(Publish::new("jobs.resize", "{\"id\":7}"))
///     .await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct TracePropagationLayer {
    pub(crate) propagator: PropagatorChoice,
}

impl TracePropagationLayer {
    /// A layer with the default propagator.
    ///
    /// By default, the global propagator is used when one has been set, and
    /// W3C Trace Context + Baggage when the global is still the no-op.
    pub fn new() -> Self {
        Self::default()
    }

    /// Uses `propagator` instead of the default choice.
    pub fn propagator<P>(mut self, propagator: P) -> Self
    where
        P: TextMapPropagator + Send + Sync + 'static,
    {
        self.propagator = PropagatorChoice::custom(propagator);
        self
    }

    /// Also writes each message's trace carrier to a KV bucket before it is
    /// sent, so consumers can recover the context when headers are lost in
    /// transit; see [`KvFallback`](crate::KvFallback).
    ///
    /// The returned layer stacks a [`KvFallbackLayer`](crate::KvFallbackLayer)
    /// inside this one; the service's error becomes
    /// [`FallbackError`](crate::FallbackError).
    ///
    /// By default, no fallback is written.
    #[cfg(feature = "kv")]
    #[cfg_attr(docsrs, doc(cfg(feature = "kv")))]
    pub fn fallback(
        self,
        fallback: crate::KvFallback,
    ) -> tower_layer::Stack<crate::KvFallbackLayer, TracePropagationLayer> {
        tower_layer::Stack::new(crate::KvFallbackLayer::new(fallback), self)
    }
}

impl<S> Layer<S> for TracePropagationLayer {
    type Service = TracePropagation<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TracePropagation::new(inner, self.clone())
    }
}
