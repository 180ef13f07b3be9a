use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use async_nats::jetstream::context::{PublishAckFuture, PublishError};
use async_nats::jetstream::publish::PublishAck;
use futures::future::BoxFuture;
use tower_service::Service;

use super::request::Publish;

/// A [`Service`] that publishes a [`Publish`] to JetStream and resolves to
/// the stream's [`PublishAck`] (the ack is awaited).
///
/// Errors reach the caller as async-nats returns them, e.g. `NoResponders`
/// or `StreamNotFound`-like errors when no stream captures the subject.
/// To pipeline acks instead, use [`JetStreamSender`].
///
/// # Examples
///
/// ```no_run
/// use nats_otel::{JetStreamPublisher, Publish};
/// use tower::{Service, ServiceExt};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let client = async_nats::connect("nats://127.0.0.1:4222").await?;
/// let mut publisher = JetStreamPublisher::new(async_nats::jetstream::new(client));
/// let ack = publisher.ready().await?.call(Publish::new("jobs.new", "{}")).await?;
/// assert!(ack.sequence > 0);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct JetStreamPublisher {
    context: Arc<async_nats::jetstream::Context>,
}

impl JetStreamPublisher {
    /// Publishes through the JetStream `context`.
    pub fn new(context: async_nats::jetstream::Context) -> Self {
        Self {
            context: Arc::new(context),
        }
    }

    /// The JetStream context.
    pub fn get_ref(&self) -> &async_nats::jetstream::Context {
        &self.context
    }

    /// Unwraps the JetStream context.
    pub fn into_inner(self) -> async_nats::jetstream::Context {
        Arc::unwrap_or_clone(self.context)
    }
}

impl Service<Publish> for JetStreamPublisher {
    type Response = PublishAck;
    type Error = PublishError;
    type Future = BoxFuture<'static, Result<PublishAck, PublishError>>;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Publish) -> Self::Future {
        let context = Arc::clone(&self.context);
        let parts = request.into_parts();
        Box::pin(async move {
            context
                .publish_with_headers(parts.subject, parts.headers, parts.payload)
                .await?
                .await
        })
    }
}

/// A [`Service`] that publishes a [`Publish`] to JetStream and resolves as
/// soon as the message is sent, to the [`PublishAckFuture`], so that many
/// acks can be in flight at once.
///
/// Behind the layer, the PRODUCER span then ends at send time; await the
/// returned ack future yourself to learn the outcome.
///
/// # Examples
///
/// ```no_run
/// use nats_otel::{publish::JetStreamSender, Publish};
/// use tower::{Service, ServiceExt};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let client = async_nats::connect("nats://127.0.0.1:4222").await?;
/// let mut sender = JetStreamSender::new(async_nats::jetstream::new(client));
/// let mut acks = Vec::new();
/// for i in 0..100 {
///     acks.push(sender.ready().await?.call(Publish::new("jobs.new", format!("{i}"))).await?);
/// }
/// for ack in acks {
///     ack.await?;
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct JetStreamSender {
    context: Arc<async_nats::jetstream::Context>,
}

impl JetStreamSender {
    /// Publishes through the JetStream `context`.
    pub fn new(context: async_nats::jetstream::Context) -> Self {
        Self {
            context: Arc::new(context),
        }
    }

    /// The JetStream context.
    pub fn get_ref(&self) -> &async_nats::jetstream::Context {
        &self.context
    }

    /// Unwraps the JetStream context.
    pub fn into_inner(self) -> async_nats::jetstream::Context {
        Arc::unwrap_or_clone(self.context)
    }
}

impl Service<Publish> for JetStreamSender {
    type Response = PublishAckFuture;
    type Error = PublishError;
    type Future = BoxFuture<'static, Result<PublishAckFuture, PublishError>>;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Publish) -> Self::Future {
        let context = Arc::clone(&self.context);
        let parts = request.into_parts();
        Box::pin(async move {
            context
                .publish_with_headers(parts.subject, parts.headers, parts.payload)
                .await
        })
    }
}
