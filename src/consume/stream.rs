use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use opentelemetry::trace::TraceContextExt;

use futures::Stream;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::Tracer;
use opentelemetry::Context;
use pin_project_lite::pin_project;

use super::item::ConsumerItem;
use super::lookahead::{Lookahead, Outcome, PendingLookup, DEFAULT_WINDOW};
use super::receive::ReceiveSpan;
use super::span::{process_context, with_record, Parenting, ProcessOptions};
use crate::propagation::MessageMeta;
use crate::propagation::PropagatorChoice;
use crate::propagation::TraceCarrier;
use crate::propagation::{
    context_from_carrier, extract_headers, ContextSource, ExtractionRecord, NoContextReason,
};
use crate::subject::{SubjectFilter, SubjectTemplates};
use crate::telemetry::{Metrics, SpanTracer};

/// Turns a consumed message into the [`Context`] its handler should run in.
///
/// Used by [`ContextExtractingConsumer`] for every item; use it directly
/// when messages do not come from a stream (e.g. a service handler).
///
/// # Examples
///
/// ```
/// use async_nats::HeaderMap;
/// use nats_otel::{consume::ContextExtractor, ContextSource, MessageContextExt, consume::MessageMeta};
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
    process: ProcessOptions,
    skip: SubjectFilter,
    payload_carrier: Option<Arc<PayloadCarrierFn>>,
    #[cfg(feature = "kv")]
    fallback: Option<Arc<crate::fallback::KvFallback>>,
}

type PayloadCarrierFn = dyn Fn(&MessageMeta<'_>) -> Option<TraceCarrier> + Send + Sync;

impl fmt::Debug for ContextExtractor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("ContextExtractor");
        d.field("propagator", &self.propagator)
            .field("process", &self.process)
            .field("skip", &self.skip)
            .field("payload_carrier", &self.payload_carrier.is_some());
        #[cfg(feature = "kv")]
        d.field("fallback", &self.fallback);
        d.finish()
    }
}

/// The outcome of the synchronous part of extraction.
// `Done` is the common case and is matched at once: boxing it would cost an
// allocation per message to save stack space for a moment.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Step {
    Done(Context, ExtractionRecord),
    /// The subject matches the skip filter: no extraction, no span.
    Skip,
    /// Only built with the `kv` feature.
    #[cfg_attr(not(feature = "kv"), allow(dead_code))]
    Lookup(PendingLookup),
}

impl ContextExtractor {
    /// An extractor with the default propagator and no fallback.
    ///
    /// By default, the global propagator is used when one has been set, and
    /// W3C Trace Context + Baggage (the crate's fast path) when the global
    /// is still the no-op. The global is read for every message, so one set
    /// later is used from then on. A
    /// [`W3cPropagator`](crate::propagation::W3cPropagator) set as the
    /// global is called like any other global propagator; give it with
    /// [`propagator`](Self::propagator) too to keep the fast path.
    pub fn new() -> Self {
        Self::default()
    }

    /// Uses `propagator` instead of the default choice.
    ///
    /// With [`W3cPropagator`](crate::propagation::W3cPropagator), the
    /// crate's W3C fast path is taken and the global propagator is never
    /// read (one lock less per message).
    pub fn propagator<P>(mut self, propagator: P) -> Self
    where
        P: TextMapPropagator + Send + Sync + 'static,
    {
        self.propagator = PropagatorChoice::custom(propagator);
        self
    }

    /// Names the `process` span from the subject, overriding
    /// [`subject_templates`](Self::subject_templates) for the name (the
    /// `messaging.destination.template` attribute stays).
    ///
    /// By default, `process {template}` (see `subject_templates`).
    ///
    /// # Examples
    ///
    /// ```
    /// let extractor = nats_otel::consume::ContextExtractor::new().span_name(|_subject| "process jobs".into());
    /// ```
    pub fn span_name<F>(mut self, f: F) -> Self
    where
        F: Fn(&str) -> String + Send + Sync + 'static,
    {
        self.process.span_name = Some(Arc::new(f));
        self
    }

    /// The subject templates that name `process`, `receive` and settle
    /// spans (`process jobs.*`) and fill `messaging.destination.template`;
    /// give the subscription's subject or the JetStream consumer's filter
    /// subjects. The full subject stays in `messaging.destination.name`.
    ///
    /// By default, no patterns: tokens that look generated (NUIDs, UUIDs,
    /// ULIDs, long numbers, prefixed ids such as `job-<nuid>`) become `*`;
    /// see [`SubjectTemplates`].
    ///
    /// # Examples
    ///
    /// ```
    /// use nats_otel::{consume::ContextExtractor, subject::SubjectTemplates};
    ///
    /// let extractor = ContextExtractor::new().subject_templates(SubjectTemplates::new(["jobs.*"])?);
    /// # Ok::<(), nats_otel::subject::InvalidSubjectPattern>(())
    /// ```
    pub fn subject_templates(mut self, templates: SubjectTemplates) -> Self {
        Arc::make_mut(&mut self.process.setup).templates = templates;
        self
    }

    /// Whether to start a CONSUMER `process` span per message. Without it,
    /// the yielded context is the extracted remote context itself (still
    /// with its [`ExtractionRecord`](crate::ExtractionRecord)).
    ///
    /// By default, `true`.
    pub fn process_spans(mut self, enabled: bool) -> Self {
        self.process.disabled = !enabled;
        self
    }

    /// Makes the CONSUMER `process` spans with this OpenTelemetry tracer
    /// instead of as `tracing` spans.
    ///
    /// A `tracing` span goes through the subscriber's registry and the
    /// tracing-opentelemetry layer, which costs microseconds per message
    /// even when the span is not sampled; a span made with the tracer
    /// directly costs a fraction of that (see the README's performance
    /// table). Everything else stays: the yielded context holds the span
    /// (it ends when the last clone of the context is dropped), handler
    /// spans made with
    /// [`handler_span`](crate::MessageContextExt::handler_span) are its
    /// children, and the [`ExtractionRecord`](crate::ExtractionRecord) is
    /// recorded on it. [`process_span`](crate::MessageContextExt::process_span)
    /// is then `None`: the span is `cx.span()` (OpenTelemetry's
    /// `TraceContextExt`), and it does not appear in `tracing` output. The
    /// SDK's spans end when dropped, so the span still ends with the last
    /// clone of the context. As with `tracing` spans, the sampler sees the
    /// attributes the messaging conventions mark for sampling; the rest, the
    /// extraction record's included, are set only on recorded spans. The
    /// adapter's batch `receive` span
    /// ([`receive_span`](ContextExtractingConsumer::receive_span)) and the
    /// settlement spans under the yielded context (`SettleExt::settle`,
    /// feature `jetstream`) are made with the same tracer.
    ///
    /// Pass the tracer of the provider your tracing-opentelemetry layer
    /// uses, or `opentelemetry::global::tracer("nats-otel")` when that
    /// provider is installed globally.
    ///
    /// By default, `process` spans are `tracing` spans.
    ///
    /// # Examples
    ///
    /// ```
    /// use nats_otel::consume::ContextExtractor;
    /// use opentelemetry::trace::TracerProvider as _;
    /// use opentelemetry_sdk::trace::SdkTracerProvider;
    ///
    /// let provider = SdkTracerProvider::builder().build();
    /// let extractor = ContextExtractor::new().tracer(provider.tracer("nats-otel"));
    /// ```
    pub fn tracer<T>(mut self, tracer: T) -> Self
    where
        T: Tracer + Send + Sync + 'static,
        T::Span: Send + Sync + 'static,
    {
        Arc::make_mut(&mut self.process.setup).tracer = SpanTracer::new(tracer);
        self
    }

    /// Records the crate's metrics with `provider`'s instruments (meter
    /// `nats-otel`), the KV fallback's reads included.
    ///
    /// By default, the global meter provider's, taken when the extractor is
    /// built: set the global provider first.
    ///
    /// # Examples
    ///
    /// ```
    /// use nats_otel::consume::ContextExtractor;
    /// use opentelemetry_sdk::metrics::SdkMeterProvider;
    ///
    /// let provider = SdkMeterProvider::builder().build();
    /// let extractor = ContextExtractor::new().meter_provider(&provider);
    /// ```
    pub fn meter_provider<P>(mut self, provider: &P) -> Self
    where
        P: opentelemetry::metrics::MeterProvider + ?Sized,
    {
        self.process.metrics = Metrics::from_provider(provider);
        self
    }

    /// Leaves messages on matching subjects untraced: no extraction, no
    /// span; the yielded context is empty but for a record with
    /// [`NoContextReason::SkippedByFilter`].
    ///
    /// By default, nothing is skipped.
    ///
    /// # Examples
    ///
    /// ```
    /// use nats_otel::{consume::ContextExtractor, SubjectFilter};
    ///
    /// let extractor = ContextExtractor::new().skip_subjects(SubjectFilter::new(["_INBOX.>"]));
    /// ```
    pub fn skip_subjects(mut self, filter: SubjectFilter) -> Self {
        self.skip = filter;
        self
    }

    /// Records these headers (any casing) on the `process` span as
    /// `messaging.nats.header.<lowercase name>`, on recorded spans only: they
    /// are set once the span is started, so samplers and `tracing` output
    /// do not see them.
    ///
    /// By default, no header is captured.
    pub fn capture_headers<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.process.capture_headers = names.into_iter().map(Into::into).collect();
        self
    }

    /// Whether the `process` span is a child of the creation context or a
    /// new trace linked to it; see [`Parenting`] for why the default is
    /// what it is.
    ///
    /// By default, [`Parenting::ChildOfCreation`].
    ///
    /// # Examples
    ///
    /// ```
    /// use nats_otel::consume::{ContextExtractor, Parenting};
    ///
    /// // Retries start their own trace, linked to the original.
    /// let extractor = ContextExtractor::new().parenting(Parenting::NewTraceOnRedelivery);
    /// ```
    pub fn parenting(mut self, parenting: Parenting) -> Self {
        self.process.parenting = parenting;
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
    /// use nats_otel::{consume::ContextExtractor, TraceCarrier};
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
    /// read. The stream adapter keeps message order: while the oldest
    /// message waits for its lookup, it reads the next ones, up to its
    /// [look-ahead window](ContextExtractingConsumer::kv_lookahead), and
    /// starts their lookups too, so that lookups overlap instead of costing
    /// a round trip each. A lookup waits at most the policy's lookup
    /// timeout; a message whose lookup fails or times out is still yielded,
    /// with the reason recorded.
    ///
    /// By default, there is no KV fallback.
    #[cfg(feature = "kv")]
    #[cfg_attr(docsrs, doc(cfg(feature = "kv")))]
    pub fn fallback(mut self, fallback: crate::fallback::KvFallback) -> Self {
        self.fallback = Some(Arc::new(fallback));
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
        if self.is_skipped(meta) {
            return skipped_context();
        }
        let (cx, record) = self.headers_then_payload(meta);
        process_context(meta, cx, record, &self.process)
    }

    fn is_skipped(&self, meta: &MessageMeta<'_>) -> bool {
        let skipped = !self.skip.is_empty() && self.skip.matches(meta.subject);
        if skipped {
            self.process.metrics.skipped("consume");
        }
        skipped
    }

    pub(crate) fn finish(
        &self,
        meta: &MessageMeta<'_>,
        remote: Context,
        record: ExtractionRecord,
    ) -> Context {
        process_context(meta, remote, record, &self.process)
    }

    /// Like [`extract`](Self::extract), but also looks the carrier up in
    /// the KV fallback when one is configured and needed.
    pub async fn extract_or_lookup(&self, meta: &MessageMeta<'_>) -> Context {
        let (cx, record) = match self.begin(meta) {
            Step::Done(cx, record) => (cx, record),
            Step::Skip => return skipped_context(),
            Step::Lookup(lookup) => self.lookup(lookup).await,
        };
        process_context(meta, cx, record, &self.process)
    }

    /// One lookup on its own (no window to batch it with).
    async fn lookup(&self, lookup: PendingLookup) -> (Context, ExtractionRecord) {
        #[cfg(feature = "kv")]
        if let Some(fallback) = &self.fallback {
            let metrics = &self.process.metrics;
            let result = crate::fallback::lookup(fallback, lookup.key.clone(), metrics).await;
            return lookup.complete(result);
        }
        // A lookup is only begun with a fallback.
        let missing = NoContextReason::KvNotFound {
            key: lookup.key.clone(),
        };
        lookup.complete(Err(missing))
    }

    /// Starts the lookups queued in `ahead`; `false` when none were.
    fn flush<T>(&self, ahead: Pin<&mut Lookahead<T>>) -> bool {
        #[cfg(feature = "kv")]
        if let Some(fallback) = &self.fallback {
            return ahead.flush(fallback, &self.process.metrics);
        }
        let _ = ahead;
        false
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
            Some(Ok(payload_cx)) => {
                let record = record
                    .recovered(ContextSource::Payload)
                    .with_remote(payload_cx.span().span_context());
                (payload_cx, record)
            }
            Some(Err(reason)) => (cx, record.fallback_missed(reason)),
            None => (
                cx,
                record.fallback_missed(NoContextReason::NoPayloadCarrier),
            ),
        }
    }

    pub(crate) fn begin(&self, meta: &MessageMeta<'_>) -> Step {
        if self.is_skipped(meta) {
            return Step::Skip;
        }
        let (cx, record) = self.headers_then_payload(meta);
        #[cfg(feature = "kv")]
        if record.source() == ContextSource::None {
            if let Some(fallback) = &self.fallback {
                let key = fallback.key.derive(meta);
                match key {
                    Err(error) => {
                        return Step::Done(
                            cx,
                            record.fallback_missed(NoContextReason::FallbackKey(error)),
                        )
                    }
                    Ok(key) => return Step::Lookup(PendingLookup::new(key, cx, record)),
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
    /// header-name casing), starts a CONSUMER `process {template}` span as its
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
    /// # #[cfg(feature = "jetstream")]
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
    ///
    /// Runnable without a server — the adapter over any stream of messages,
    /// here one sent by a Go service (`Traceparent` casing):
    ///
    /// ```
    /// use async_nats::{HeaderMap, Message};
    /// use futures::StreamExt;
    /// use nats_otel::{ContextSource, MessageContextExt, TraceContextStreamExt};
    /// use opentelemetry::trace::TraceContextExt;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let mut headers = HeaderMap::new();
    /// headers.insert("Traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
    /// let message = Message {
    ///     subject: "jobs.resize".into(),
    ///     reply: None,
    ///     payload: "{}".into(),
    ///     headers: Some(headers),
    ///     status: None,
    ///     description: None,
    ///     length: 0,
    /// };
    ///
    /// let mut messages = futures::stream::iter([message]).with_trace_context();
    /// let (message, cx) = messages.next().await.unwrap();
    ///
    /// let record = cx.extraction().unwrap();
    /// assert_eq!(record.source(), ContextSource::Headers);
    /// assert_eq!(record.header_name(), Some("Traceparent"));
    /// assert_eq!(
    ///     cx.span().span_context().trace_id().to_string(),
    ///     "0af7651916cd43dd8448eb211c80319c"
    /// );
    /// # let _ = message;
    /// # }
    /// ```
    pub struct ContextExtractingConsumer<S>
    where
        S: Stream,
    {
        #[pin]
        inner: S,
        extractor: ContextExtractor,
        // Messages read ahead while KV lookups are in flight.
        #[pin]
        ahead: Lookahead<S::Item>,
        inner_done: bool,
        receive: Option<ReceiveSpan>,
    }
}

impl<S: Stream + fmt::Debug> fmt::Debug for ContextExtractingConsumer<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContextExtractingConsumer")
            .field("inner", &self.inner)
            .field("extractor", &self.extractor)
            .field("read_ahead", &self.ahead.len())
            .field("lookahead", &self.ahead.window())
            .field("receive_span", &self.receive.is_some())
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
            ahead: Lookahead::new(DEFAULT_WINDOW),
            inner_done: false,
            receive: None,
        }
    }

    /// Starts a CLIENT `receive {stream}` span when first polled, linked to
    /// every yielded message's creation context, and ends it when the inner
    /// stream ends — for `fetch()` and `batch()` streams, which do end.
    /// Each message's `process` span keeps the creation context as its
    /// parent (semantic conventions' batch receive with links).
    ///
    /// With [`tracer`](Self::tracer), the span is made with that tracer.
    ///
    /// By default, there is no receive span.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use futures::StreamExt;
    /// use nats_otel::TraceContextStreamExt;
    ///
    /// # #[cfg(feature = "jetstream")]
    /// # async fn run(consumer: async_nats::jetstream::consumer::PullConsumer) -> Result<(), async_nats::Error> {
    /// let mut batch = consumer
    ///     .fetch()
    ///     .max_messages(10)
    ///     .messages()
    ///     .await?
    ///     .with_trace_context()
    ///     .receive_span(true);
    /// while let Some(item) = batch.next().await {
    ///     let (message, cx) = item?;
    ///     message.ack().await?;
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn receive_span(mut self, enabled: bool) -> Self {
        self.receive = enabled.then(ReceiveSpan::new);
        self
    }

    /// Uses `propagator` instead of the default choice.
    ///
    /// With [`W3cPropagator`](crate::propagation::W3cPropagator), the
    /// crate's W3C fast path is taken and the global propagator is never
    /// read (one lock less per message).
    pub fn propagator<P>(mut self, propagator: P) -> Self
    where
        P: TextMapPropagator + Send + Sync + 'static,
    {
        self.extractor = self.extractor.propagator(propagator);
        self
    }

    /// Makes the `process` spans with this OpenTelemetry tracer; see
    /// [`ContextExtractor::tracer`].
    pub fn tracer<T>(mut self, tracer: T) -> Self
    where
        T: Tracer + Send + Sync + 'static,
        T::Span: Send + Sync + 'static,
    {
        self.extractor = self.extractor.tracer(tracer);
        self
    }

    /// Whether `process` spans are children of the creation context or new
    /// traces linked to it; see [`ContextExtractor::parenting`].
    pub fn parenting(mut self, parenting: Parenting) -> Self {
        self.extractor = self.extractor.parenting(parenting);
        self
    }

    /// The subject templates that name the spans; see
    /// [`ContextExtractor::subject_templates`].
    pub fn subject_templates(mut self, templates: SubjectTemplates) -> Self {
        self.extractor = self.extractor.subject_templates(templates);
        self
    }

    /// Records the crate's metrics with `provider`'s instruments; see
    /// [`ContextExtractor::meter_provider`].
    pub fn meter_provider<P>(mut self, provider: &P) -> Self
    where
        P: opentelemetry::metrics::MeterProvider + ?Sized,
    {
        self.extractor = self.extractor.meter_provider(provider);
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
    pub fn fallback(mut self, fallback: crate::fallback::KvFallback) -> Self {
        self.extractor = self.extractor.fallback(fallback);
        self
    }

    /// How many messages the adapter may hold while KV lookups are in
    /// flight: while the oldest waits for its lookup, it reads up to this
    /// many and starts their lookups too, and still yields them in arrival
    /// order. The adapter reads ahead only while it is polled and only
    /// behind a pending lookup, so a slow handler never makes it buffer,
    /// and intact headers make it hold nothing. The lookups of the messages
    /// read in one go start together: one request for all their keys with
    /// [`KvFallback::batch_reads`](crate::KvFallback::batch_reads), else one
    /// request per key. `1` makes one lookup at a time. Values below 1
    /// count as 1.
    ///
    /// By default, 256: with batched reads, a larger window means fewer,
    /// larger requests, and 256 keeps a stream whose headers were all
    /// stripped at about half the speed of one with intact headers (the
    /// throughput benchmark's `stripped` rows; 32 gave a third). With large
    /// messages, set it lower: the window is the most the adapter holds
    /// (256 × 1 MiB is 256 MiB).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # #[cfg(feature = "kv")]
    /// # async fn run(
    /// #     consumer: async_nats::jetstream::consumer::PullConsumer,
    /// #     fallback: nats_otel::KvFallback,
    /// # ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// use nats_otel::TraceContextStreamExt;
    ///
    /// // Large messages: hold at most 8 while lookups are in flight.
    /// let messages = consumer
    ///     .messages()
    ///     .await?
    ///     .with_trace_context()
    ///     .fallback(fallback)
    ///     .kv_lookahead(8);
    /// # let _ = messages;
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "kv")]
    #[cfg_attr(docsrs, doc(cfg(feature = "kv")))]
    pub fn kv_lookahead(mut self, window: usize) -> Self {
        // The messages already read ahead, if any, stay.
        self.ahead.set_window(window);
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
        if let Some(receive) = this.receive.as_mut() {
            receive.start_once(&this.extractor.process.setup.tracer);
        }
        loop {
            // Messages read ahead go out first, in arrival order.
            if !this.ahead.is_empty() {
                if let Poll::Ready(Some((item, outcome))) = this.ahead.as_mut().poll_next(cx) {
                    return Poll::Ready(Some(finish(this.extractor, this.receive, item, outcome)));
                }
                // The oldest is still waiting for its lookup: read on, up
                // to the window, so that the next lookups overlap with it.
                if *this.inner_done || !this.ahead.has_room() {
                    if this.extractor.flush(this.ahead.as_mut()) {
                        continue; // polls the new lookups
                    }
                    return Poll::Pending;
                }
            } else if *this.inner_done {
                if let Some(receive) = this.receive.take() {
                    receive.end(&this.extractor.process.metrics);
                }
                return Poll::Ready(None);
            }
            let item = match this.inner.as_mut().poll_next(cx) {
                Poll::Ready(Some(item)) => item,
                Poll::Ready(None) => {
                    *this.inner_done = true;
                    continue;
                }
                // Nothing more ready: the lookups of what was read start.
                Poll::Pending if this.extractor.flush(this.ahead.as_mut()) => continue,
                Poll::Pending => return Poll::Pending,
            };
            // Read once (a JetStream message parses its reply subject for
            // it), and again only if the message waits in the look-ahead.
            let meta = item.meta();
            let step = meta.as_ref().map(|meta| this.extractor.begin(meta));
            let outcome = match step {
                None => Outcome::NoMeta,
                Some(Step::Done(remote, record)) => Outcome::Extracted(remote, record),
                Some(Step::Skip) => Outcome::Skipped,
                Some(Step::Lookup(lookup)) => {
                    this.ahead.as_mut().push_lookup(item, lookup);
                    continue;
                }
            };
            if this.ahead.is_empty() {
                // Nothing ahead of it: out at once, with no queueing.
                let cx = context_of(this.extractor, this.receive, meta.as_ref(), outcome);
                return Poll::Ready(Some(item.attach(cx)));
            }
            this.ahead.as_mut().push_ready(item, outcome);
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let ahead = self.ahead.len();
        if self.inner_done {
            return (ahead, Some(ahead));
        }
        let (low, high) = self.inner.size_hint();
        (
            low.saturating_add(ahead),
            high.and_then(|h| h.checked_add(ahead)),
        )
    }
}

/// The message with its context: the `process` span starts here, as the
/// message leaves the adapter.
fn finish<T: ConsumerItem>(
    extractor: &ContextExtractor,
    receive: &mut Option<ReceiveSpan>,
    item: T,
    outcome: Outcome,
) -> T::WithContext {
    let cx = context_of(extractor, receive, item.meta().as_ref(), outcome);
    item.attach(cx)
}

/// The context a message described by `meta` leaves the adapter with.
fn context_of(
    extractor: &ContextExtractor,
    receive: &mut Option<ReceiveSpan>,
    meta: Option<&MessageMeta<'_>>,
    outcome: Outcome,
) -> Context {
    match (outcome, meta) {
        (Outcome::Extracted(remote, record), Some(meta)) => {
            if let Some(receive) = receive.as_mut() {
                receive.link(meta, &remote, &extractor.process.setup.templates);
            }
            extractor.finish(meta, remote, record)
        }
        (Outcome::Skipped, _) => skipped_context(),
        (Outcome::NoMeta, _) | (_, None) => Context::new(),
    }
}

fn skipped_context() -> Context {
    with_record(
        Context::new(),
        ExtractionRecord::none(NoContextReason::SkippedByFilter),
    )
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
