//! Which propagator injects and extracts when the global one is set, and
//! when a custom one is passed to both sides.
//!
//! Every test here sets the global text-map propagator it needs (mostly
//! W3C Trace Context alone, no baggage) and holds it
//! (`crate::set_propagator`).

use nats_otel::propagation::W3cPropagator;
use nats_otel::{
    consume::NoContextReason, propagation::global_propagator_is_noop, ContextExtractingConsumer,
    ContextSource, MessageContextExt, TraceContextStreamExt, TracePropagationLayer,
};
use opentelemetry::baggage::BaggageExt;
use opentelemetry::propagation::text_map_propagator::FieldIter;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tokio::sync::MutexGuard;

use crate::set_propagator;
use crate::support::nats::*;
use crate::support::server::NatsServer;
use crate::support::telemetry::*;

/// Makes W3C Trace Context alone the global propagator for the test.
async fn set_global_trace_context() -> MutexGuard<'static, ()> {
    let guard = set_propagator(TraceContextPropagator::new()).await;
    assert!(!global_propagator_is_noop());
    guard
}

/// A traced subscription to `subject` that injects and extracts with
/// `propagator` rather than the default choice.
async fn subscribe_with<P>(
    client: &async_nats::Client,
    subject: &str,
    propagator: P,
) -> ContextExtractingConsumer<async_nats::Subscriber>
where
    P: TextMapPropagator + Send + Sync + 'static,
{
    client
        .subscribe(subject.to_owned())
        .await
        .unwrap()
        .with_trace_context()
        .propagator(propagator)
}

/// The api span, the `publish {subject}` span under it, and the
/// `process {subject}` span under that: one trace from end to end.
fn assert_one_trace(telemetry: &Telemetry, subject: &str) {
    let api = telemetry.span("api");
    let publish = telemetry.span(&format!("publish {subject}"));
    let process = telemetry.span(&format!("process {subject}"));
    assert_child_of(&publish, &api);
    assert_child_of(&process, &publish);
}

#[tokio::test]
async fn global_trace_context_propagator_is_used_when_set() {
    let _global = set_global_trace_context().await;
    let telemetry = Telemetry::install();
    let server = NatsServer::start();
    let client = connect(&server).await;
    let mut jobs = traced_subscription(&client, "jobs.global").await;

    publish_from_api(TracePropagationLayer::new(), &client, "jobs.global").await;

    let (message, cx) = next(&mut jobs).await;
    assert_eq!(&message.payload[..], b"job");
    let headers = message.headers.as_ref().expect("headers were injected");
    assert!(headers.get("traceparent").is_some(), "{headers:?}");
    assert!(
        headers.get("baggage").is_none(),
        "the global Trace Context propagator writes no baggage, the W3C fallback would: {headers:?}"
    );
    let record = cx.extraction().unwrap();
    assert_eq!(record.source(), ContextSource::Headers, "{record}");
    assert_eq!(cx.baggage().len(), 0);
    drop(cx);

    assert_one_trace(&telemetry, "jobs.global");
}

#[tokio::test]
async fn w3c_propagator_as_the_global_carries_trace_and_baggage_across() {
    let _global = set_propagator(W3cPropagator::new()).await;
    assert!(!global_propagator_is_noop());
    let telemetry = Telemetry::install();
    let server = NatsServer::start();
    let client = connect(&server).await;
    let mut jobs = traced_subscription(&client, "jobs.w3c").await;

    publish_from_api(TracePropagationLayer::new(), &client, "jobs.w3c").await;

    let (message, cx) = next(&mut jobs).await;
    let headers = message.headers.as_ref().expect("headers were injected");
    assert!(headers.get("traceparent").is_some(), "{headers:?}");
    assert_eq!(
        headers.get("baggage").map(|v| v.as_str()),
        Some("tenant=acme"),
        "{headers:?}"
    );
    let record = cx.extraction().unwrap();
    assert_eq!(record.source(), ContextSource::Headers, "{record}");
    assert_eq!(
        cx.baggage().get("tenant").map(|v| v.to_string()),
        Some("acme".to_owned())
    );
    drop(cx);

    assert_one_trace(&telemetry, "jobs.w3c");
}

#[tokio::test]
async fn w3c_propagator_given_to_both_sides_wins_over_the_global() {
    // The global writes and reads other names: only the explicit choice
    // can carry the trace and the baggage here.
    let _global = set_propagator(RenamedTraceContext::new()).await;
    let telemetry = Telemetry::install();
    let server = NatsServer::start();
    let client = connect(&server).await;
    let mut jobs = subscribe_with(&client, "jobs.w3c_given", W3cPropagator::new()).await;

    publish_from_api(
        TracePropagationLayer::new().propagator(W3cPropagator::new()),
        &client,
        "jobs.w3c_given",
    )
    .await;

    let (message, cx) = next(&mut jobs).await;
    let headers = message.headers.as_ref().expect("headers were injected");
    assert!(headers.get("traceparent").is_some(), "{headers:?}");
    assert!(headers.get("x-parent").is_none(), "{headers:?}");
    assert!(headers.get("baggage").is_some(), "{headers:?}");
    let record = cx.extraction().unwrap();
    assert_eq!(record.source(), ContextSource::Headers, "{record}");
    assert_eq!(cx.baggage().len(), 1);
    drop(cx);

    let publish = telemetry.span("publish jobs.w3c_given");
    let process = telemetry.span("process jobs.w3c_given");
    assert_child_of(&process, &publish);
}

#[tokio::test]
async fn w3c_propagator_given_to_the_adapter_reads_with_the_fast_path() {
    // A `tracestate` of 33 members is dropped either way, but only the
    // crate's own decoding (its fast path) can note it on the record: a
    // propagator called through the `TextMapPropagator` trait returns a
    // context and nothing else. So this tells which path
    // `.propagator(W3cPropagator::new())` takes, while the global writes
    // and reads other names.
    let _global = set_propagator(RenamedTraceContext::new()).await;
    let _telemetry = Telemetry::install();
    let server = NatsServer::start();
    let client = connect(&server).await;
    let mut jobs = subscribe_with(&client, "jobs.w3c_fast", W3cPropagator::new()).await;
    let tracestate: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        "traceparent",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    );
    headers.insert("tracestate", tracestate.join(",").as_str());
    client
        .publish_with_headers("jobs.w3c_fast", headers, "job".into())
        .await
        .unwrap();

    let (_, cx) = next(&mut jobs).await;
    let record = cx.extraction().unwrap();
    assert_eq!(record.source(), ContextSource::Headers, "{record}");
    assert!(
        record.notes().iter().any(|n| n.contains("tracestate")),
        "the fast path notes the dropped tracestate: {record}"
    );
}

/// W3C Trace Context under other header names: `x-parent` and `x-state`.
#[derive(Debug)]
struct RenamedTraceContext {
    inner: TraceContextPropagator,
    fields: [String; 2],
}

impl RenamedTraceContext {
    fn new() -> Self {
        Self {
            inner: TraceContextPropagator::new(),
            fields: ["x-parent".into(), "x-state".into()],
        }
    }
}

fn renamed(key: &str) -> &str {
    match key {
        "traceparent" => "x-parent",
        "tracestate" => "x-state",
        other => other,
    }
}

struct RenamingInjector<'a>(&'a mut dyn Injector);

impl Injector for RenamingInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.set(renamed(key), value);
    }
}

struct RenamingExtractor<'a>(&'a dyn Extractor);

impl Extractor for RenamingExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(renamed(key))
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys()
    }
}

impl TextMapPropagator for RenamedTraceContext {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        self.inner
            .inject_context(cx, &mut RenamingInjector(injector));
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        self.inner
            .extract_with_context(cx, &RenamingExtractor(extractor))
    }

    fn fields(&self) -> FieldIter<'_> {
        FieldIter::new(&self.fields)
    }
}

#[tokio::test]
async fn custom_propagator_on_both_sides_wins_over_the_global() {
    let _global = set_global_trace_context().await;
    let telemetry = Telemetry::install();
    let server = NatsServer::start();
    let client = connect(&server).await;
    let mut custom = subscribe_with(&client, "jobs.custom", RenamedTraceContext::new()).await;
    // A second consumer of the same message, with the default choice.
    let mut default = traced_subscription(&client, "jobs.custom").await;

    publish_from_api(
        TracePropagationLayer::new().propagator(RenamedTraceContext::new()),
        &client,
        "jobs.custom",
    )
    .await;

    let (message, cx) = next(&mut custom).await;
    assert_eq!(&message.payload[..], b"job");
    let headers = message.headers.as_ref().expect("headers were injected");
    assert!(headers.get("x-parent").is_some(), "{headers:?}");
    assert!(
        headers.get("traceparent").is_none(),
        "the custom propagator replaced the global one: {headers:?}"
    );
    let record = cx.extraction().unwrap();
    assert_eq!(record.source(), ContextSource::Headers, "{record}");
    drop(cx);

    let (_, cx) = next(&mut default).await;
    let record = cx.extraction().unwrap();
    assert_eq!(record.source(), ContextSource::None);
    assert!(
        matches!(
            record.reason(),
            Some(NoContextReason::MissingTraceparent { .. })
        ),
        "{record}"
    );
    drop(cx);

    let api = telemetry.span("api");
    let publish = telemetry.span("publish jobs.custom");
    let processes = telemetry.spans_named("process jobs.custom");
    assert_eq!(processes.len(), 2);
    assert_child_of(&publish, &api);
    let (extracted, fresh): (Vec<_>, Vec<_>) = processes
        .iter()
        .partition(|p| p.parent_span_id == span_id(&publish));
    assert_eq!(
        extracted.len(),
        1,
        "the custom consumer continued the trace"
    );
    assert_child_of(extracted[0], &publish);
    assert_root(fresh[0]);
}
