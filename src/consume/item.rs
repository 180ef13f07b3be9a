use async_nats::Message;

#[cfg(feature = "jetstream")]
use crate::propagation::message::JetStreamMeta;
use crate::propagation::MessageMeta;
use opentelemetry::Context;

/// An item of a consumer stream that the
/// [`ContextExtractingConsumer`](crate::ContextExtractingConsumer) can pair
/// with its trace context.
///
/// Implemented for core [`Message`]s, JetStream messages, and `Result`s of
/// those (errors pass through untouched). Implement it for your own message
/// type to use the adapter on other streams.
///
/// # Examples
///
/// ```
/// use nats_otel::{consume::ConsumerItem, consume::MessageMeta};
/// use opentelemetry::Context;
///
/// struct Job(async_nats::Message);
///
/// impl ConsumerItem for Job {
///     type WithContext = (Job, Context);
///     fn meta(&self) -> Option<MessageMeta<'_>> {
///         Some(MessageMeta::of(&self.0))
///     }
///     fn attach(self, cx: Context) -> Self::WithContext {
///         (self, cx)
///     }
/// }
/// ```
pub trait ConsumerItem: Sized {
    /// What the adapter yields for this item.
    type WithContext;

    /// The message's metadata, or `None` for items that are not messages
    /// (errors), which pass through with an empty context.
    fn meta(&self) -> Option<MessageMeta<'_>>;

    /// Pairs the item with the context its handler's spans should be
    /// children of.
    fn attach(self, cx: Context) -> Self::WithContext;
}

impl ConsumerItem for Message {
    type WithContext = (Message, Context);

    fn meta(&self) -> Option<MessageMeta<'_>> {
        Some(MessageMeta::of(self))
    }

    fn attach(self, cx: Context) -> Self::WithContext {
        (self, cx)
    }
}

#[cfg(feature = "jetstream")]
impl ConsumerItem for async_nats::jetstream::Message {
    type WithContext = (async_nats::jetstream::Message, Context);

    fn meta(&self) -> Option<MessageMeta<'_>> {
        let mut meta = MessageMeta::of(&self.message);
        meta.jetstream = self.info().ok().map(|info| JetStreamMeta {
            stream: info.stream,
            consumer: info.consumer,
            stream_sequence: info.stream_sequence,
            delivered: info.delivered,
        });
        Some(meta)
    }

    fn attach(self, cx: Context) -> Self::WithContext {
        (self, cx)
    }
}

impl<T: ConsumerItem, E> ConsumerItem for Result<T, E> {
    type WithContext = Result<T::WithContext, E>;

    fn meta(&self) -> Option<MessageMeta<'_>> {
        self.as_ref().ok().and_then(T::meta)
    }

    fn attach(self, cx: Context) -> Self::WithContext {
        self.map(|item| item.attach(cx))
    }
}
