use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context as TaskContext, Poll};

use futures::future::BoxFuture;
use opentelemetry::trace::TraceContextExt;

use futures::Stream;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::Context;
use pin_project_lite::pin_project;

use super::item::{ConsumerItem, MessageMeta};
use super::span::process_context;
use crate::extraction::{
    context_from_carrier, extract_headers, ContextSource, ExtractionRecord, NoContextReason,
};
use crate::propagator::PropagatorChoice;
use crate::trace_carrier::TraceCarrier;

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
#[derive(Clone, Default)]
pub struct ContextExtractor {
    propagator: PropagatorChoice,
    payload_carrier: Option<Arc<PayloadCarrierFn>>,
    #[cfg(feature = "kv")]
    fallback: Option<crate::KvFallback>,
}

type PayloadCarrierFn = dyn Fn(&MessageMeta<'_>) -> Option<TraceCarrier> + Send + Sync;

impl fmt::Debug for ContextExtractor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("ContextExtractor");
        d.field("propagator", &self.propagator)
            .field("payload_carrier", &self.payload_carrier.is_some());
        #[cfg(feature = "kv")]
        d.field("fallback", &self.fallback);
        d.finish()
    }
}

/// The outcome of the synchronous part of extraction.
pub(crate) enum Step {
    Done(Context, ExtractionRecord),
    /// Only built with the `kv` feature.
    #[cfg_attr(not(feature = "kv"), allow(dead_code))]
    Lookup(BoxFuture<'static, (Context, ExtractionRecord)>),
}

impl ContextExtractor {
    /// An extractor with the default propagator and no fallback.
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

    /// Reads a [`TraceCarrier`] embedded in the message (usually its job
    /// document) when the headers give no valid context; the source is then
    /// [`Payload`](crate::ContextSource::Payload). When the headers do give
    /// one and the payload carrier names a different trace, the headers win
    /// and the mismatch is noted in the record.
    ///
    /// By default, no payload carrier is read.
    ///
    /// # Examples
    ///
    /// ```
    /// use nats_otel::{ContextExtractor, TraceCarrier};
    ///
    /// #[derive(serde::Deserialize)]
    /// struct Job {
    ///     #[serde(flatten)]
    ///     trace: TraceCarrier,
    /// }
    ///
    /// let extractor = ContextExtractor::new().payload_carrier(|meta| {
    ///     serde_json::from_slice::<Job>(meta.payload).ok().map(|job| job.trace)
    /// });
    /// ```
    pub fn payload_carrier<F>(mut self, f: F) -> Self
    where
        F: Fn(&MessageMeta<'_>) -> Option<TraceCarrier> + Send + Sync + 'static,
    {
        self.payload_carrier = Some(Arc::new(f));
        self
    }

    /// Looks the carrier up in the KV fallback bucket when the headers (and
    /// the payload carrier, if configured) give no valid context.
    ///
    /// A lookup is made only on such a miss, so intact headers cost no KV
    /// read. The stream adapter keeps message order: while a lookup is
    /// pending it yields nothing else, and a lookup waits at most the
    /// policy's lookup timeout; a message whose lookup fails or times out is
    /// still yielded, with the reason recorded.
    ///
    /// By default, there is no KV fallback.
    #[cfg(feature = "kv")]
    #[cfg_attr(docsrs, doc(cfg(feature = "kv")))]
    pub fn fallback(mut self, fallback: crate::KvFallback) -> Self {
        self.fallback = Some(fallback);
        self
    }

    /// Extracts the context from headers (and the payload carrier, if
    /// configured), starts the CONSUMER `process` span under it and returns
    /// a context holding that span and the
    /// [`ExtractionRecord`](crate::ExtractionRecord).
    ///
    /// This never reads KV; use [`extract_or_lookup`](Self::extract_or_lookup)
    /// for that. The `process` span ends when the last clone of the returned
    /// context is dropped.
    pub fn extract(&self, meta: &MessageMeta<'_>) -> Context {
        let (cx, record) = self.headers_then_payload(meta);
        process_context(meta, cx, record)
    }

    /// Like [`extract`](Self::extract), but also looks the carrier up in
    /// the KV fallback when one is configured and needed.
    pub async fn extract_or_lookup(&self, meta: &MessageMeta<'_>) -> Context {
        let (cx, record) = match self.begin(meta) {
            Step::Done(cx, record) => (cx, record),
            Step::Lookup(lookup) => lookup.await,
        };
        process_context(meta, cx, record)
    }

    fn headers_then_payload(&self, meta: &MessageMeta<'_>) -> (Context, ExtractionRecord) {
        let (cx, mut record) = extract_headers(&self.propagator, meta.headers);
        let Some(read_carrier) = &self.payload_carrier else {
            return (cx, record);
        };
        let carrier = read_carrier(meta);
        if record.source() == ContextSource::Headers {
            if let Some(Ok(payload_cx)) =
                carrier.map(|c| context_from_carrier(&c, "payload traceparent"))
            {
                let (h, p) = (cx.span().span_context().clone(), payload_cx.span());
                if h.trace_id() != p.span_context().trace_id()
                    || h.span_id() != p.span_context().span_id()
                {
                    record.push_note(format!(
                        "headers and payload carrier disagree (payload has trace {} span {}); \
                         headers win",
                        p.span_context().trace_id(),
                        p.span_context().span_id()
                    ));
                }
            }
            return (cx, record);
        }
        match carrier.map(|c| context_from_carrier(&c, "payload traceparent")) {
            Some(Ok(payload_cx)) => (payload_cx, record.recovered(ContextSource::Payload)),
            Some(Err(reason)) => (cx, record.fallback_missed(reason)),
            None => (
                cx,
                record.fallback_missed(NoContextReason::NoPayloadCarrier),
            ),
        }
    }

    pub(crate) fn begin(&self, meta: &MessageMeta<'_>) -> Step {
        let (cx, record) = self.headers_then_payload(meta);
        #[cfg(feature = "kv")]
        if record.source() == ContextSource::None {
            if let Some(fallback) = &self.fallback {
                let key = fallback.key.derive(&crate::fallback::KeyInput::new(
                    meta.subject,
                    meta.headers,
                    meta.payload,
                ));
                match key {
                    Err(error) => {
                        return Step::Done(
                            cx,
                            record.fallback_missed(NoContextReason::FallbackKey(error)),
                        )
                    }
                    Ok(key) => {
                        let fallback = fallback.clone();
                        return Step::Lookup(Box::pin(async move {
                            match crate::fallback::lookup(fallback, key).await {
                                Ok(kv_cx) => (kv_cx, record.recovered(ContextSource::Kv)),
                                Err(reason) => (cx, record.fallback_missed(reason)),
                            }
                        }));
                    }
                }
            }
        }
        Step::Done(cx, record)
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
    pub struct ContextExtractingConsumer<S>
    where
        S: Stream,
    {
        #[pin]
        inner: S,
        extractor: ContextExtractor,
        pending: Option<Pending<S::Item>>,
    }
}

/// A message waiting for its KV lookup.
struct Pending<T> {
    item: T,
    lookup: BoxFuture<'static, (Context, ExtractionRecord)>,
}

impl<S: Stream + fmt::Debug> fmt::Debug for ContextExtractingConsumer<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContextExtractingConsumer")
            .field("inner", &self.inner)
            .field("extractor", &self.extractor)
            .field("lookup_pending", &self.pending.is_some())
            .finish()
    }
}

impl<S: Stream> ContextExtractingConsumer<S> {
    /// Wraps `inner` with the default [`ContextExtractor`].
    pub fn new(inner: S) -> Self {
        Self::with_extractor(inner, ContextExtractor::new())
    }

    /// Wraps `inner` with a configured [`ContextExtractor`].
    pub fn with_extractor(inner: S, extractor: ContextExtractor) -> Self {
        Self {
            inner,
            extractor,
            pending: None,
        }
    }

    /// Uses `propagator` instead of the default choice.
    pub fn propagator<P>(mut self, propagator: P) -> Self
    where
        P: TextMapPropagator + Send + Sync + 'static,
    {
        self.extractor = self.extractor.propagator(propagator);
        self
    }

    /// Reads a [`TraceCarrier`] embedded in the payload when headers give no
    /// context; see [`ContextExtractor::payload_carrier`].
    pub fn payload_carrier<F>(mut self, f: F) -> Self
    where
        F: Fn(&MessageMeta<'_>) -> Option<TraceCarrier> + Send + Sync + 'static,
    {
        self.extractor = self.extractor.payload_carrier(f);
        self
    }

    /// Looks the carrier up in KV when headers give no context; see
    /// [`ContextExtractor::fallback`].
    #[cfg(feature = "kv")]
    #[cfg_attr(docsrs, doc(cfg(feature = "kv")))]
    pub fn fallback(mut self, fallback: crate::KvFallback) -> Self {
        self.extractor = self.extractor.fallback(fallback);
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
        let mut this = self.project();
        if let Some(pending) = this.pending.as_mut() {
            let (remote, record) = ready!(pending.lookup.as_mut().poll(cx));
            let item = this.pending.take().expect("pending checked above").item;
            return Poll::Ready(Some(finish(item, remote, record)));
        }
        let Some(item) = ready!(this.inner.as_mut().poll_next(cx)) else {
            return Poll::Ready(None);
        };
        let mut lookup = match item.meta() {
            None => return Poll::Ready(Some(item.attach(Context::new()))),
            Some(meta) => match this.extractor.begin(&meta) {
                Step::Done(remote, record) => {
                    let process_cx = process_context(&meta, remote, record);
                    return Poll::Ready(Some(item.attach(process_cx)));
                }
                Step::Lookup(lookup) => lookup,
            },
        };
        // Poll once right away: a fast lookup yields in this call.
        if let Poll::Ready((remote, record)) = lookup.as_mut().poll(cx) {
            return Poll::Ready(Some(finish(item, remote, record)));
        }
        *this.pending = Some(Pending { item, lookup });
        Poll::Pending
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let pending = usize::from(self.pending.is_some());
        let (low, high) = self.inner.size_hint();
        (
            low.saturating_add(pending),
            high.and_then(|h| h.checked_add(pending)),
        )
    }
}

fn finish<T: ConsumerItem>(item: T, remote: Context, record: ExtractionRecord) -> T::WithContext {
    let cx = match item.meta() {
        Some(meta) => process_context(&meta, remote, record),
        None => Context::new(),
    };
    item.attach(cx)
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
