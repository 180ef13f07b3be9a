use std::fmt;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::Tracer;
use tower_layer::Layer;

use super::service::TracePropagation;
use crate::propagation::HeaderNames;
use crate::propagation::PropagatorChoice;
use crate::subject::{SubjectFilter, SubjectTemplates};
use crate::telemetry::Metrics;
use crate::telemetry::SpanNameFn;
use crate::telemetry::SpanTracer;

/// A [`Layer`] that traces every publish: it starts a PRODUCER span and
/// injects its context into the message headers.
///
/// Wraps any [`tower::Service`] whose request implements
/// [`PublishMessage`](super::PublishMessage): the crate's
/// [`CorePublisher`](crate::CorePublisher),
/// [`Requester`](super::Requester),
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
///
/// Runnable without a server — the layer in front of a service that
/// returns the headers it was handed:
///
/// ```
/// use std::convert::Infallible;
///
/// use nats_otel::{Publish, TracePropagationLayer};
/// use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
/// use tower::{service_fn, Layer, Service, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let mut publisher = TracePropagationLayer::new().layer(service_fn(|publish: Publish| async move {
///     Ok::<_, Infallible>(publish.header_map().cloned().unwrap_or_default())
/// }));
///
/// // The caller's context (usually the current `tracing` span's).
/// let parent = opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
///     TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap(),
///     SpanId::from_hex("b7ad6b7169203331").unwrap(),
///     TraceFlags::SAMPLED,
///     true,
///     TraceState::default(),
/// ));
/// let headers = publisher
///     .ready()
///     .await
///     .unwrap()
///     .call(Publish::new("jobs.resize", "{}").context(parent))
///     .await
///     .unwrap();
///
/// // No OpenTelemetry layer is installed here, so the parent itself is
/// // injected; with one, it is the PRODUCER span's id.
/// assert_eq!(
///     headers.get("traceparent").unwrap().as_str(),
///     "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
/// );
/// # }
/// ```
#[derive(Clone, Default)]
pub struct TracePropagationLayer {
    pub(crate) propagator: PropagatorChoice,
    pub(crate) span_name: Option<SpanNameFn>,
    pub(crate) spans_disabled: bool,
    /// Whether a publish under an unsampled parent still gets a span.
    pub(crate) unsampled_spans: bool,
    pub(crate) skip: SubjectFilter,
    pub(crate) templates: SubjectTemplates,
    pub(crate) capture_headers: Arc<[String]>,
    pub(crate) metrics: Metrics,
    pub(crate) tracer: SpanTracer,
    pub(crate) instrument_inner: bool,
    pub(crate) header_names: HeaderNames,
    /// Whether this layer has warned of a publish without a valid context.
    pub(crate) warned_no_context: Arc<AtomicBool>,
    #[cfg(feature = "kv")]
    pub(crate) fallback: Option<Arc<crate::fallback::KvFallback>>,
    /// The bridge's settings and the share of sampled traces to trace in
    /// the servers.
    #[cfg(feature = "hops")]
    pub(crate) server_hops: Option<(crate::hops::HopsSettings, f64)>,
}

impl fmt::Debug for TracePropagationLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TracePropagationLayer")
            .field("propagator", &self.propagator)
            .field("custom_span_name", &self.span_name.is_some())
            .field("producer_spans", &!self.spans_disabled)
            .field("unsampled_producer_spans", &self.unsampled_spans)
            .field("skip", &self.skip)
            .field("templates", &self.templates)
            .field("capture_headers", &self.capture_headers)
            .field("tracer", &self.tracer)
            .field("instrument_inner", &self.instrument_inner)
            .field("header_names", &self.header_names)
            .field("kv_fallback", &self.kv_fallback_bucket())
            .field("server_hops", &self.server_hops_dest())
            .finish()
    }
}

impl TracePropagationLayer {
    /// A layer with the default propagator.
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

    /// The names the trace headers are written under.
    ///
    /// By default, [`HeaderNames::Both`](crate::HeaderNames::Both): every
    /// field twice, as `traceparent` (read by OpenTelemetry for Python,
    /// JavaScript, Java, .NET and Rust) and as `Traceparent` (read by
    /// OpenTelemetry Go's `HeaderCarrier`), so that consumers in every
    /// language continue the trace with no configuration. That costs about
    /// 70 bytes per message (more with `tracestate` and `baggage`); choose
    /// [`HeaderNames::Lowercase`](crate::HeaderNames::Lowercase) when no Go
    /// consumer reads your messages.
    ///
    /// # Examples
    ///
    /// ```
    /// use nats_otel::{HeaderNames, TracePropagationLayer};
    ///
    /// // Only Rust, Python and JavaScript consumers: the W3C names alone.
    /// let layer = TracePropagationLayer::new().header_names(HeaderNames::Lowercase);
    /// ```
    pub fn header_names(mut self, names: HeaderNames) -> Self {
        self.header_names = names;
        self
    }

    /// Names the PRODUCER span from the subject, overriding
    /// [`subject_templates`](Self::subject_templates) for the name (the
    /// `messaging.destination.template` attribute stays).
    ///
    /// By default, `publish {template}` (see `subject_templates`).
    ///
    /// # Examples
    ///
    /// ```
    /// let layer = nats_otel::TracePropagationLayer::new().span_name(|_subject| "publish jobs".into());
    /// ```
    pub fn span_name<F>(mut self, f: F) -> Self
    where
        F: Fn(&str) -> String + Send + Sync + 'static,
    {
        self.span_name = Some(Arc::new(f));
        self
    }

    /// Whether to start a PRODUCER span per message. Without it, the
    /// current context is injected as it is.
    ///
    /// By default, `true`.
    pub fn producer_spans(mut self, enabled: bool) -> Self {
        self.spans_disabled = !enabled;
        self
    }

    /// Whether a publish whose parent context is valid but **not sampled**
    /// still starts a PRODUCER span.
    ///
    /// By default, `false`: such a publish makes no span at all. It injects
    /// a `traceparent` with the parent's trace id, a new random span id and
    /// the unsampled flag (and the parent's `tracestate` and baggage) — what
    /// the span would have carried — at about the cost of
    /// [`producer_spans(false)`](Self::producer_spans). With a parent-based
    /// sampler (the SDK's default, `ParentBased(AlwaysOn)`, and any
    /// `ParentBased(..)` whose "parent not sampled" choices are `AlwaysOff`,
    /// their default) nothing exported changes: that span would not have
    /// been sampled either. What does change:
    ///
    /// - a sampler that may sample a child of an unsampled parent (not
    ///   parent-based, or `ParentBased` with a different
    ///   `remote_parent_not_sampled` / `local_parent_not_sampled`) gets no
    ///   span to sample: turn this on;
    /// - with `tracing` spans, no `publish` span exists in `tracing` either,
    ///   so log lines emitted during the publish (and inner layers' spans
    ///   with [`instrument_inner`](Self::instrument_inner)) are not inside
    ///   one;
    /// - span processors see no unsampled span start and end.
    ///
    /// A publish without a valid parent, or under a sampled one, is not
    /// affected.
    ///
    /// # Examples
    ///
    /// ```
    /// // A custom sampler that samples some children of unsampled parents.
    /// let layer = nats_otel::TracePropagationLayer::new().unsampled_producer_spans(true);
    /// # let _ = layer;
    /// ```
    pub fn unsampled_producer_spans(mut self, enabled: bool) -> Self {
        self.unsampled_spans = enabled;
        self
    }

    /// Makes the PRODUCER spans with this OpenTelemetry tracer instead of
    /// as `tracing` spans.
    ///
    /// A `tracing` span goes through the subscriber's registry and the
    /// tracing-opentelemetry layer, which costs microseconds per message
    /// even when the span is not sampled; a span made with the tracer
    /// directly costs a fraction of that, and an unsampled one almost
    /// nothing (see the README's performance table). The parent is the
    /// request's explicit context, else the current OpenTelemetry context,
    /// which tracing-opentelemetry keeps in step with the entered `tracing`
    /// span (a context attached by hand wins).
    ///
    /// What differs from `tracing` spans: the spans do not appear in
    /// `tracing` output (logs) and carry none of the attributes
    /// tracing-opentelemetry adds (`code.*`, `thread.*`, timings); the
    /// inner service cannot be run inside the span
    /// ([`instrument_inner`](Self::instrument_inner) has no effect), so
    /// spans made by layers below this one stay its siblings. As with `tracing` spans,
    /// the sampler sees the attributes the messaging conventions mark for
    /// sampling (system, destination, operation), the rest being set only on
    /// recorded spans.
    /// A tracer that makes an empty span (its provider shut down) leaves the
    /// caller's context to be injected as it is.
    ///
    /// Pass the tracer of the provider your tracing-opentelemetry layer
    /// uses, or `opentelemetry::global::tracer("nats-otel")` when that
    /// provider is installed globally.
    ///
    /// By default, PRODUCER spans are `tracing` spans.
    ///
    /// # Examples
    ///
    /// ```
    /// use nats_otel::TracePropagationLayer;
    /// use opentelemetry::trace::TracerProvider as _;
    /// use opentelemetry_sdk::trace::SdkTracerProvider;
    ///
    /// let provider = SdkTracerProvider::builder().build();
    /// let layer = TracePropagationLayer::new().tracer(provider.tracer("nats-otel"));
    /// ```
    pub fn tracer<T>(mut self, tracer: T) -> Self
    where
        T: Tracer + Send + Sync + 'static,
        T::Span: Send + Sync + 'static,
    {
        self.tracer = SpanTracer::new(tracer);
        self
    }

    /// Calls the inner service, and polls its future, inside the PRODUCER
    /// `tracing` span, so that `tracing` events and spans of layers below
    /// this one are its children (the inner future is not dropped inside
    /// it).
    ///
    /// The crate's publishers do nothing that needs the span entered, and
    /// entering one costs about 0.25 µs each time with tracing-opentelemetry
    /// 0.34, which makes the span's OpenTelemetry context current on every
    /// enter; a call and one poll make two per message. Turn it on when
    /// your own layers below this one log or trace.
    ///
    /// By default, the span is not entered. Has no effect with
    /// [`tracer`](Self::tracer) or without PRODUCER spans.
    ///
    /// # Examples
    ///
    /// ```
    /// use nats_otel::TracePropagationLayer;
    ///
    /// let layer = TracePropagationLayer::new().instrument_inner(true);
    /// ```
    pub fn instrument_inner(mut self, enabled: bool) -> Self {
        self.instrument_inner = enabled;
        self
    }

    /// Records the crate's metrics with `provider`'s instruments (meter
    /// `nats-otel`), the KV fallback's writes included.
    ///
    /// By default, the global meter provider's, taken when the layer is
    /// built: set the global provider first.
    ///
    /// # Examples
    ///
    /// ```
    /// use nats_otel::TracePropagationLayer;
    /// use opentelemetry_sdk::metrics::SdkMeterProvider;
    ///
    /// let provider = SdkMeterProvider::builder().build();
    /// let layer = TracePropagationLayer::new().meter_provider(&provider);
    /// ```
    pub fn meter_provider<P>(mut self, provider: &P) -> Self
    where
        P: opentelemetry::metrics::MeterProvider + ?Sized,
    {
        self.metrics = Metrics::from_provider(provider);
        self
    }

    /// The subject templates that name PRODUCER spans `publish {template}`
    /// and fill `messaging.destination.template`, so that a subject carrying
    /// an id (`jobs.job-Pug48o…`) does not make a span name per message. The
    /// full subject stays in `messaging.destination.name`. An inbox subject
    /// (`_INBOX.…`) is a temporary destination: the span is named `publish`.
    ///
    /// By default, no patterns: tokens that look generated (NUIDs, UUIDs,
    /// ULIDs, long numbers, prefixed ids such as `job-<nuid>`) become `*`;
    /// see [`SubjectTemplates`] for the exact rule.
    ///
    /// # Examples
    ///
    /// ```
    /// use nats_otel::{subject::SubjectTemplates, TracePropagationLayer};
    ///
    /// // `publish orders.*.created`, whatever the order id looks like.
    /// let layer = TracePropagationLayer::new()
    ///     .subject_templates(SubjectTemplates::new(["orders.*.created"])?);
    /// # Ok::<(), nats_otel::subject::InvalidSubjectPattern>(())
    /// ```
    pub fn subject_templates(mut self, templates: SubjectTemplates) -> Self {
        self.templates = templates;
        self
    }

    /// Leaves messages to matching subjects untraced: no span, nothing
    /// injected.
    ///
    /// By default, nothing is skipped.
    ///
    /// # Examples
    ///
    /// ```
    /// use nats_otel::{SubjectFilter, TracePropagationLayer};
    ///
    /// let layer = TracePropagationLayer::new().skip_subjects(SubjectFilter::new(["_INBOX.>"]));
    /// ```
    pub fn skip_subjects(mut self, filter: SubjectFilter) -> Self {
        self.skip = filter;
        self
    }

    /// Records these headers (any casing) on the PRODUCER span as
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
        self.capture_headers = names.into_iter().map(Into::into).collect();
        self
    }

    /// Also writes each message's trace carrier to a KV bucket as it is
    /// sent, so consumers can recover the context when headers are lost in
    /// transit; see [`KvFallback`](crate::fallback::KvFallback).
    ///
    /// The layer, the service and its error type stay the same: with
    /// [`WritePolicy::Required`](crate::fallback::WritePolicy::Required) a
    /// failed write is returned as
    /// [`Error::KvWrite`](super::Error::KvWrite) and nothing is published;
    /// with [`WritePolicy::BestEffort`](crate::fallback::WritePolicy::BestEffort)
    /// (the default) the put is sent just before the message, both acks are
    /// awaited together, and a failed write becomes an event on the
    /// PRODUCER span and a WARN. A message without a key or a context is
    /// published without a record, which is recorded the same way.
    ///
    /// By default, no fallback is written.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use nats_otel::{fallback::FallbackKey, JetStreamPublisher, KvFallback, Publish, TracePropagationLayer};
    /// use tower::{Layer, Service, ServiceExt};
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let client = async_nats::connect("nats://127.0.0.1:4222").await?;
    /// let js = async_nats::jetstream::new(client);
    /// let fallback = KvFallback::new(
    ///     KvFallback::open_bucket(&js, "trace_carriers").await?,
    ///     FallbackKey::subject_token(1),
    /// );
    /// let mut publisher = TracePropagationLayer::new()
    ///     .fallback(fallback)
    ///     .layer(JetStreamPublisher::new(js));
    /// publisher.ready().await?.call(Publish::new("jobs.42", "{}")).await?;
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "kv")]
    #[cfg_attr(docsrs, doc(cfg(feature = "kv")))]
    pub fn fallback(mut self, fallback: crate::fallback::KvFallback) -> Self {
        self.fallback = Some(Arc::new(fallback));
        self
    }

    /// Asks the NATS servers each sampled message crosses to report it
    /// (nats-server message tracing): adds `Nats-Trace-Dest` with the
    /// subject of a running [`ServerHops`](crate::hops::ServerHops) bridge,
    /// which turns those reports into one span per server between the
    /// PRODUCER span and the consumer's `process` span.
    ///
    /// Only messages whose PRODUCER span is sampled get the header, and of
    /// those the share `ratio` (0.0 to 1.0, decided by trace id as the ratio
    /// sampler does); never unsampled ones. While the bridge is not running
    /// — stopped, or disabled because the server's version rewrites trace
    /// headers under message tracing (2.11.0 to 2.12.11) — nothing is
    /// added; the bridge recorded why (a WARN, and
    /// [`ServerHops::disabled_reason`](crate::hops::ServerHops::disabled_reason)).
    ///
    /// Cost: each server the message crosses publishes one event (a few
    /// hundred bytes, the message's headers but not its payload) to the
    /// bridge's subject; keep `ratio` low on busy subjects.
    ///
    /// By default, messages are not traced in the servers.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use nats_otel::{hops::ServerHops, CorePublisher, TracePropagationLayer};
    /// use opentelemetry::trace::TracerProvider as _;
    /// use tower::Layer;
    ///
    /// # async fn run(provider: opentelemetry_sdk::trace::SdkTracerProvider) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let client = async_nats::connect("nats://127.0.0.1:4222").await?;
    /// let hops = ServerHops::spawn(client.clone(), "nats_otel.hops", provider.tracer("nats-otel")).await?;
    /// // A tenth of the sampled traces show their path through the servers.
    /// let publisher = TracePropagationLayer::new()
    ///     .server_hops(hops.publish_settings(), 0.1)
    ///     .layer(CorePublisher::new(client));
    /// # let _ = publisher;
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "hops")]
    #[cfg_attr(docsrs, doc(cfg(feature = "hops")))]
    pub fn server_hops(mut self, settings: crate::hops::HopsSettings, ratio: f64) -> Self {
        let ratio = if ratio.is_nan() {
            0.0
        } else {
            ratio.clamp(0.0, 1.0)
        };
        self.server_hops = Some((settings, ratio));
        self
    }

    fn server_hops_dest(&self) -> Option<&str> {
        #[cfg(feature = "hops")]
        if let Some((settings, _)) = &self.server_hops {
            return Some(settings.dest());
        }
        None
    }

    fn kv_fallback_bucket(&self) -> Option<&str> {
        #[cfg(feature = "kv")]
        if let Some(fallback) = &self.fallback {
            return Some(&fallback.store.name);
        }
        None
    }
}

impl<S> Layer<S> for TracePropagationLayer {
    type Service = TracePropagation<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TracePropagation::new(inner, self.clone())
    }
}
