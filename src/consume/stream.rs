use std::pin::Pin;
use std::task::{ready, Context as TaskContext, Poll};

use futures::Stream;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::Context;
use pin_project_lite::pin_project;

use super::item::ConsumerItem;
use super::span::process_context;
use crate::extraction::extract_headers;
use crate::propagator::PropagatorChoice;

/// Turns a consumed message into the [`Context`] its handler should run in.
///
/// Used by [`ContextExtractingConsumer`] for every item; use it directly
/// when messages do not come from a stream (e.g. a service handler).
///
/// # Examples
///
/// ```
/// use async_nats::HeaderMap;
/// use nats_otel::{ContextExtractor, ContextSource, MessageContextExt, MessageMeta};
///
/// let mut headers = HeaderMap::new();
/// headers.insert("Traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
/// let message = async_nats::Message {
///     subject: "jobs.new".into(),
///     reply: None,
///     payload: "{}".into(),
///     headers: Some(headers),
///     status: None,
///     description: None,
///     length: 0,
/// };
///
/// let cx = ContextExtractor::new().extract(&MessageMeta::of(&message));
/// assert_eq!(cx.extraction().unwrap().source(), ContextSource::Headers);
/// ```
#[derive(Debug, Clone, Default)]
pub struct ContextExtractor {
    propagator: PropagatorChoice,
}

impl ContextExtractor {
    /// An extractor with the default propagator.
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

    /// Extracts the remote context from the message headers, starts the
    /// CONSUMER `process` span under it and returns a context holding that
    /// span and the [`ExtractionRecord`](crate::ExtractionRecord).
    ///
    /// The `process` span ends when the last clone of the returned context
    /// is dropped.
    pub fn extract(&self, meta: &super::item::MessageMeta<'_>) -> Context {
        let (remote, record) = extract_headers(&self.propagator, meta.headers);
        process_context(meta, remote, record)
    }

    fn attach<T: ConsumerItem>(&self, item: T) -> T::WithContext {
        let cx = match item.meta() {
            Some(meta) => self.extract(&meta),
            None => Context::new(),
        };
        item.attach(cx)
    }
}

pin_project! {
    /// A [`Stream`] adapter that pairs each consumed message with the
    /// [`Context`] its handler's spans should be children of.
    ///
    /// Works over core subscriptions (`Stream<Item = Message>` →
    /// `(Message, Context)`), JetStream pull consumers' `messages()`,
    /// `fetch()` and `batch()` streams (`Result<jetstream::Message, E>` →
    /// `Result<(jetstream::Message, Context), E>`), and any stream of
    /// [`ConsumerItem`]s. Errors pass through unchanged.
    ///
    /// For each message it extracts the remote context from the headers (any
    /// header-name casing), starts a CONSUMER `process {subject}` span as its
    /// child and yields a context holding that span and an
    /// [`ExtractionRecord`](crate::ExtractionRecord). A message without usable
    /// context is still yielded, as a new root, with the reason recorded and a
    /// rate-limited WARN.
    ///
    /// **When the process span ends:** when the last clone of the yielded
    /// context is dropped. Handler spans made children with
    /// [`MessageContextExt::handler_span`](crate::MessageContextExt::handler_span)
    /// hold a clone until they close, so the process span always covers them.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use futures::StreamExt;
    /// use nats_otel::{MessageContextExt, TraceContextStreamExt};
    /// use tracing::Instrument;
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let client = async_nats::connect("nats://127.0.0.1:4222").await?;
    /// let jetstream = async_nats::jetstream::new(client);
    /// let consumer: async_nats::jetstream::consumer::PullConsumer = jetstream
    ///     .get_consumer_from_stream("worker", "JOBS")
    ///     .await?;
    ///
    /// let mut messages = consumer.messages().await?.with_trace_context();
    /// while let Some(item) = messages.next().await {
    ///     let (message, cx) = item?;
    ///     let span = cx.handler_span(tracing::info_span!("handle_job"))?;
    ///     async {
    ///         // ... do the work; spans here belong to the publisher's trace
    ///         message.ack().await
    ///     }
    ///     .instrument(span)
    ///     .await?;
    /// }
    /// # Ok(())
    /// # }
    /// ```
    #[derive(Debug)]
    pub struct ContextExtractingConsumer<S> {
        #[pin]
        inner: S,
        extractor: ContextExtractor,
    }
}

impl<S> ContextExtractingConsumer<S> {
    /// Wraps `inner` with the default [`ContextExtractor`].
    pub fn new(inner: S) -> Self {
        Self::with_extractor(inner, ContextExtractor::new())
    }

    /// Wraps `inner` with a configured [`ContextExtractor`].
    pub fn with_extractor(inner: S, extractor: ContextExtractor) -> Self {
        Self { inner, extractor }
    }

    /// Uses `propagator` instead of the default choice.
    pub fn propagator<P>(mut self, propagator: P) -> Self
    where
        P: TextMapPropagator + Send + Sync + 'static,
    {
        self.extractor = self.extractor.propagator(propagator);
        self
    }

    /// The inner stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner stream, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner stream, pinned.
    pub fn get_pin_mut(self: Pin<&mut Self>) -> Pin<&mut S> {
        self.project().inner
    }

    /// Unwraps the inner stream.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S> Stream for ContextExtractingConsumer<S>
where
    S: Stream,
    S::Item: ConsumerItem,
{
    type Item = <S::Item as ConsumerItem>::WithContext;

    fn poll_next(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let this = self.project();
        let item = ready!(this.inner.poll_next(cx));
        Poll::Ready(item.map(|item| this.extractor.attach(item)))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

/// Adds [`with_trace_context`](Self::with_trace_context) to consumer
/// streams.
///
/// # Examples
///
/// ```no_run
/// use futures::StreamExt;
/// use nats_otel::TraceContextStreamExt;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let client = async_nats::connect("nats://127.0.0.1:4222").await?;
/// let mut events = client.subscribe("events").await?.with_trace_context();
/// if let Some((message, cx)) = events.next().await {
///     println!("{} in {:?}", message.subject, cx);
/// }
/// # Ok(())
/// # }
/// ```
pub trait TraceContextStreamExt: Stream + Sized {
    /// Pairs each message with its trace context; see
    /// [`ContextExtractingConsumer`].
    fn with_trace_context(self) -> ContextExtractingConsumer<Self> {
        ContextExtractingConsumer::new(self)
    }
}

impl<S> TraceContextStreamExt for S
where
    S: Stream,
    S::Item: ConsumerItem,
{
}
