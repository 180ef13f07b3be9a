use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use async_nats::{Client, Message, PublishError, RequestError};
use futures::future::BoxFuture;
use tower_service::Service;

use super::request::Publish;

/// A [`Service`] that publishes a [`Publish`] on core NATS.
///
/// The response is `()` once the message is handed to the client; core NATS
/// gives no delivery guarantee. A reply subject, when set, is sent along.
///
/// # Examples
///
/// ```no_run
/// use nats_otel::{CorePublisher, Publish};
/// use tower::{Service, ServiceExt};
///
/// # async fn run() -> Result<(), async_nats::PublishError> {
/// let client = async_nats::connect("nats://127.0.0.1:4222").await.unwrap();
/// let mut publisher = CorePublisher::new(client);
/// publisher.ready().await?.call(Publish::new("events", "hello")).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct CorePublisher {
    client: Arc<Client>,
}

impl CorePublisher {
    /// Publishes through `client`.
    pub fn new(client: Client) -> Self {
        Self {
            client: Arc::new(client),
        }
    }

    /// The client.
    pub fn get_ref(&self) -> &Client {
        &self.client
    }

    /// Unwraps the client.
    pub fn into_inner(self) -> Client {
        Arc::unwrap_or_clone(self.client)
    }
}

impl Service<Publish> for CorePublisher {
    type Response = ();
    type Error = PublishError;
    type Future = BoxFuture<'static, Result<(), PublishError>>;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Publish) -> Self::Future {
        let client = Arc::clone(&self.client);
        let Publish {
            subject,
            payload,
            headers,
            reply,
            context: _,
        } = request;
        let headers = headers.unwrap_or_default();
        // One future per case, each boxed at its own size: the common one
        // (no reply subject) is the smaller.
        match reply {
            Some(reply) => Box::pin(async move {
                client
                    .publish_with_reply_and_headers(subject, reply, headers, payload)
                    .await
            }),
            None => {
                Box::pin(
                    async move { client.publish_with_headers(subject, headers, payload).await },
                )
            }
        }
    }
}

/// A [`Service`] that sends a [`Publish`] as a request and resolves to the
/// reply [`Message`].
///
/// Uses the client's request timeout. With nobody listening on the subject
/// the error's kind is `NoResponders`. A reply subject set on the request is
/// ignored: the client manages the inbox.
///
/// # Examples
///
/// ```no_run
/// use nats_otel::{Publish, publish::Requester, TracePropagationLayer};
/// use tower::{Layer, Service, ServiceExt};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let client = async_nats::connect("nats://127.0.0.1:4222").await?;
/// let mut requester = TracePropagationLayer::new().layer(Requester::new(client));
/// let reply = requester.ready().await?.call(Publish::new("time.now", "")).await?;
/// println!("{:?}", reply.payload);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Requester {
    client: Arc<Client>,
}

impl Requester {
    /// Sends requests through `client`.
    pub fn new(client: Client) -> Self {
        Self {
            client: Arc::new(client),
        }
    }

    /// The client.
    pub fn get_ref(&self) -> &Client {
        &self.client
    }

    /// Unwraps the client.
    pub fn into_inner(self) -> Client {
        Arc::unwrap_or_clone(self.client)
    }
}

impl Service<Publish> for Requester {
    type Response = Message;
    type Error = RequestError;
    type Future = BoxFuture<'static, Result<Message, RequestError>>;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Publish) -> Self::Future {
        let client = Arc::clone(&self.client);
        let parts = request.into_parts();
        Box::pin(async move {
            client
                .request_with_headers(parts.subject, parts.headers, parts.payload)
                .await
        })
    }
}
