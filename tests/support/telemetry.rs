//! Spans through the OpenTelemetry SDK's in-memory exporter, for asserting
//! trace ids and parent chains — never log text.

use opentelemetry::trace::{SpanId, SpanKind, TraceId, TracerProvider as _};
use opentelemetry::Value;
use opentelemetry_sdk::trace::{InMemorySpanExporter, Sampler, SdkTracerProvider, SpanData};
use tracing::subscriber::DefaultGuard;
use tracing_subscriber::layer::SubscriberExt;

/// A `tracing` subscriber with an OpenTelemetry layer exporting to memory,
/// installed as the thread's default for as long as this value lives.
///
/// `#[tokio::test]` runs on a current-thread runtime, so everything the test
/// spawns sees this subscriber.
pub struct Telemetry {
    exporter: InMemorySpanExporter,
    provider: SdkTracerProvider,
    _guard: DefaultGuard,
}

/// A tracer provider exporting every finished span to memory at once.
fn in_memory_provider() -> (InMemorySpanExporter, SdkTracerProvider) {
    in_memory_provider_sampled(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
}

fn in_memory_provider_sampled(sampler: Sampler) -> (InMemorySpanExporter, SdkTracerProvider) {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_sampler(sampler)
        .with_simple_exporter(exporter.clone())
        .build();
    (exporter, provider)
}

/// WARN and above from `tracing`, into the test's captured output.
fn warnings_to_test_output<S>() -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_subscriber::fmt::layer()
        .with_test_writer()
        .with_filter(tracing_subscriber::filter::LevelFilter::WARN)
}

/// Every span `exporter` has, after flushing `provider`.
fn finished_spans(provider: &SdkTracerProvider, exporter: &InMemorySpanExporter) -> Vec<SpanData> {
    provider.force_flush().expect("flush spans");
    exporter.get_finished_spans().expect("finished spans")
}

impl Telemetry {
    pub fn install() -> Self {
        Self::install_sampled(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
    }

    /// Like [`install`](Self::install), with `sampler` in the provider.
    pub fn install_sampled(sampler: Sampler) -> Self {
        let (exporter, provider) = in_memory_provider_sampled(sampler);
        let tracer = provider.tracer("nats-otel-tests");
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(tracer))
            .with(warnings_to_test_output());
        let guard = tracing::subscriber::set_default(subscriber);
        Self {
            exporter,
            provider,
            _guard: guard,
        }
    }

    /// A tracer of the provider the `tracing` layer exports through, for
    /// the layer's and adapter's `.tracer(...)`.
    // Used by JetStream tests only.
    #[cfg_attr(not(feature = "jetstream"), allow(dead_code))]
    pub fn tracer(&self) -> opentelemetry_sdk::trace::SdkTracer {
        self.provider.tracer("nats-otel")
    }

    /// All finished spans, after a flush.
    pub fn spans(&self) -> Vec<SpanData> {
        finished_spans(&self.provider, &self.exporter)
    }

    /// The one finished span named `name`; panics listing the names when
    /// there is not exactly one.
    pub fn span(&self, name: &str) -> SpanData {
        let spans = self.spans();
        let mut matching: Vec<SpanData> =
            spans.iter().filter(|s| s.name == name).cloned().collect();
        assert_eq!(
            matching.len(),
            1,
            "expected one span named {name:?}, finished spans: {:?}",
            spans.iter().map(|s| s.name.to_string()).collect::<Vec<_>>()
        );
        matching.remove(0)
    }

    /// Every finished span named `name`.
    pub fn spans_named(&self, name: &str) -> Vec<SpanData> {
        self.spans()
            .into_iter()
            .filter(|s| s.name == name)
            .collect()
    }

    pub fn reset(&self) {
        self.exporter.reset();
    }
}

use tracing_subscriber::Layer as _;

pub fn trace_id(span: &SpanData) -> TraceId {
    span.span_context.trace_id()
}

pub fn span_id(span: &SpanData) -> SpanId {
    span.span_context.span_id()
}

/// Asserts `child` is a direct child of `parent` in the same trace.
#[track_caller]
pub fn assert_child_of(child: &SpanData, parent: &SpanData) {
    assert_eq!(
        trace_id(child),
        trace_id(parent),
        "{:?} and {:?} are in different traces",
        child.name,
        parent.name
    );
    assert_eq!(
        child.parent_span_id,
        span_id(parent),
        "{:?} is not a child of {:?}",
        child.name,
        parent.name
    );
}

/// Asserts `inner` starts no earlier and ends no later than `outer`.
#[track_caller]
pub fn assert_within(inner: &SpanData, outer: &SpanData) {
    assert!(
        inner.start_time >= outer.start_time && inner.end_time <= outer.end_time,
        "{:?} [{:?}..{:?}] does not lie inside {:?} [{:?}..{:?}]",
        inner.name,
        inner.start_time,
        inner.end_time,
        outer.name,
        outer.start_time,
        outer.end_time
    );
}

pub fn attribute(span: &SpanData, key: &str) -> Option<Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.clone())
}

#[track_caller]
pub fn assert_attribute(span: &SpanData, key: &str, expected: impl Into<Value>) {
    let expected = expected.into();
    assert_eq!(
        attribute(span, key),
        Some(expected.clone()),
        "span {:?} attribute {key}: attributes are {:?}",
        span.name,
        span.attributes
    );
}

#[track_caller]
pub fn assert_kind(span: &SpanData, kind: SpanKind) {
    assert_eq!(span.span_kind, kind, "span {:?} kind", span.name);
}

/// Asserts `span` is the root of a new trace: no parent span.
#[track_caller]
pub fn assert_root(span: &SpanData) {
    assert_eq!(
        span.parent_span_id,
        SpanId::INVALID,
        "{:?} should be a new root but has parent {}",
        span.name,
        span.parent_span_id
    );
}

/// Asserts that the batch `receive` span links exactly the creation
/// (PRODUCER) contexts of the messages sent to `subjects`, and that each
/// message's `process` span keeps its own creation context as its parent.
#[track_caller]
// Used by JetStream tests only.
#[cfg_attr(not(feature = "jetstream"), allow(dead_code))]
pub fn assert_receive_links(telemetry: &Telemetry, receive: &SpanData, subjects: &[&str]) {
    assert_attribute(
        receive,
        "messaging.batch.message_count",
        subjects.len() as i64,
    );
    let linked: Vec<_> = receive
        .links
        .iter()
        .map(|l| (l.span_context.trace_id(), l.span_context.span_id()))
        .collect();
    assert_eq!(linked.len(), subjects.len(), "links: {linked:?}");
    for subject in subjects {
        let publish = telemetry.span(&format!("publish {subject}"));
        let process = telemetry.span(&format!("process {subject}"));
        assert!(
            linked.contains(&(trace_id(&publish), span_id(&publish))),
            "the receive span does not link {subject}'s creation context"
        );
        assert_child_of(&process, &publish);
    }
}

/// The OpenTelemetry SDK with an in-memory exporter, but a `tracing`
/// subscriber WITHOUT the OpenTelemetry layer: for code that uses
/// OpenTelemetry directly (`Context::current()`), not through `tracing`.
///
/// Installed as the thread's default subscriber for as long as it lives.
pub struct OtelWithoutLayer {
    exporter: InMemorySpanExporter,
    provider: SdkTracerProvider,
    _guard: DefaultGuard,
}

impl OtelWithoutLayer {
    pub fn install() -> Self {
        let (exporter, provider) = in_memory_provider();
        // `LevelFilter::TRACE` enables every span, as an application's own
        // subscriber would. Without it the only layer, filtered to WARN, makes
        // this subscriber's level hint WARN, and `tracing`'s process-wide max
        // level (over every live subscriber) disables the crate's INFO spans
        // whenever no other test's subscriber is alive, e.g. when the test
        // runs alone.
        let subscriber = tracing_subscriber::registry()
            .with(warnings_to_test_output())
            .with(tracing_subscriber::filter::LevelFilter::TRACE);
        let guard = tracing::subscriber::set_default(subscriber);
        Self {
            exporter,
            provider,
            _guard: guard,
        }
    }

    /// A tracer of the SDK provider, for starting spans by hand.
    pub fn tracer(&self) -> opentelemetry_sdk::trace::SdkTracer {
        self.provider.tracer("nats-otel-tests")
    }

    /// All finished spans, after a flush.
    pub fn spans(&self) -> Vec<SpanData> {
        finished_spans(&self.provider, &self.exporter)
    }
}

/// Runs a `handler` span (5 ms of work) as a child of a consumed message's
/// context, then drops the context so that the `process` span ends.
pub async fn handle(cx: opentelemetry::Context) {
    use nats_otel::MessageContextExt;
    use tracing::Instrument;

    let handler = cx.handler_span(tracing::info_span!("handler")).unwrap();
    async {
        // Simulated work, so the handler span has a duration.
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    .instrument(handler)
    .await;
    drop(cx);
}

/// The finished spans of one job: `api` → `publish {subject}` →
/// `process {subject}` → `handler`.
pub struct Chain {
    pub api: SpanData,
    pub publish: SpanData,
    pub process: SpanData,
    pub handler: SpanData,
}

impl Telemetry {
    /// The spans of the job published on `subject` from an `api` span and
    /// handled with [`handle`], after asserting what a user checks: one
    /// trace, each span the child of the one before (the process span's
    /// parent remote), the right kinds, and the handler inside the process
    /// span.
    pub fn chain(&self, subject: &str) -> Chain {
        let chain = Chain {
            api: self.span("api"),
            publish: self.span(&format!("publish {subject}")),
            process: self.span(&format!("process {subject}")),
            handler: self.span("handler"),
        };
        assert_root(&chain.api);
        assert_kind(&chain.publish, SpanKind::Producer);
        assert_kind(&chain.process, SpanKind::Consumer);
        assert_child_of(&chain.publish, &chain.api);
        assert_child_of(&chain.process, &chain.publish);
        assert!(chain.process.parent_span_is_remote);
        assert_child_of(&chain.handler, &chain.process);
        assert_within(&chain.handler, &chain.process);
        chain
    }
}
