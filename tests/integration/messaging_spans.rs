//! What a sampler sees when the crate starts a messaging span: the four
//! attributes the messaging conventions mark for sampling
//! (`messaging.system`, `messaging.destination.name`,
//! `messaging.operation.type`, `messaging.operation.name`) and the span
//! kind, for `tracing` spans and spans from a tracer alike; attributes set
//! only on recorded spans (body size, the extraction record) come later.
//! No server: the layer in front of a service that does nothing, the
//! extractor and the stream adapter over in-memory messages.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use async_nats::HeaderMap;
use futures::StreamExt;
use nats_otel::consume::{ContextExtractor, MessageMeta};
use nats_otel::{Publish, TraceContextStreamExt, TracePropagationLayer};
use opentelemetry::trace::{Link, SpanKind, TraceId, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{
    SamplingDecision, SamplingResult, SdkTracer, SdkTracerProvider, ShouldSample,
};
use tower::{service_fn, Layer, Service, ServiceExt};
use tracing_subscriber::layer::SubscriberExt;

const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// One span as the sampler was asked about it.
#[derive(Clone, Debug)]
struct Seen {
    name: String,
    kind: SpanKind,
    attributes: Vec<KeyValue>,
}

impl Seen {
    fn get(&self, key: &str) -> Option<String> {
        self.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.to_string())
    }
}

/// A sampler that samples everything and remembers what it was shown.
#[derive(Clone, Debug, Default)]
struct Recorder(Arc<Mutex<Vec<Seen>>>);

impl ShouldSample for Recorder {
    fn should_sample(
        &self,
        _parent: Option<&Context>,
        _trace_id: TraceId,
        name: &str,
        kind: &SpanKind,
        attributes: &[KeyValue],
        _links: &[Link],
    ) -> SamplingResult {
        self.0.lock().unwrap().push(Seen {
            name: name.to_owned(),
            kind: kind.clone(),
            attributes: attributes.to_vec(),
        });
        SamplingResult {
            decision: SamplingDecision::RecordAndSample,
            attributes: Vec::new(),
            trace_state: Default::default(),
        }
    }
}

impl Recorder {
    fn seen(&self, name: &str) -> Seen {
        let seen = self.0.lock().unwrap();
        let matching: Vec<&Seen> = seen.iter().filter(|s| s.name == name).collect();
        assert_eq!(
            matching.len(),
            1,
            "expected the sampler to see one span named {name:?}, saw {:?}",
            seen.iter().map(|s| &s.name).collect::<Vec<_>>()
        );
        matching[0].clone()
    }
}

fn provider() -> (Recorder, SdkTracerProvider, SdkTracer) {
    let recorder = Recorder::default();
    let provider = SdkTracerProvider::builder()
        .with_sampler(recorder.clone())
        .build();
    let tracer = provider.tracer("nats-otel");
    (recorder, provider, tracer)
}

fn assert_sampling_attributes(seen: &Seen, destination: Option<&str>, operation: (&str, &str)) {
    assert_eq!(
        seen.get("messaging.system").as_deref(),
        Some("nats"),
        "{seen:?}"
    );
    assert_eq!(
        seen.get("messaging.destination.name").as_deref(),
        destination,
        "{seen:?}"
    );
    assert_eq!(
        seen.get("messaging.operation.type").as_deref(),
        Some(operation.0),
        "{seen:?}"
    );
    assert_eq!(
        seen.get("messaging.operation.name").as_deref(),
        Some(operation.1),
        "{seen:?}"
    );
}

fn message(subject: &str) -> async_nats::Message {
    let mut headers = HeaderMap::new();
    headers.insert("traceparent", TRACEPARENT);
    async_nats::Message {
        subject: subject.into(),
        reply: None,
        payload: "{}".into(),
        headers: Some(headers),
        status: None,
        description: None,
        length: 0,
    }
}

/// Publishes, processes one message and consumes a one-message batch with
/// a `receive` span, with `tracer` when given, else with `tracing` spans.
async fn publish_process_receive(tracer: Option<SdkTracer>) {
    let mut layer = TracePropagationLayer::new();
    let mut extractor = ContextExtractor::new();
    if let Some(tracer) = &tracer {
        layer = layer.tracer(tracer.clone());
        extractor = extractor.tracer(tracer.clone());
    }
    let mut publisher = layer.layer(service_fn(|_: Publish| async { Ok::<_, Infallible>(()) }));
    publisher
        .ready()
        .await
        .unwrap()
        .call(Publish::new("jobs.sampled", "{\"id\":1}"))
        .await
        .unwrap();

    let processed = message("jobs.processed");
    drop(extractor.extract(&MessageMeta::of(&processed)));

    let mut batch = futures::stream::iter([message("jobs.batch")]).with_trace_context();
    if let Some(tracer) = tracer {
        batch = batch.tracer(tracer);
    }
    let yielded: Vec<_> = batch.receive_span(true).collect().await;
    assert_eq!(yielded.len(), 1);
}

/// The PRODUCER and `process` spans reach the sampler with the four
/// sampling attributes and their kind, and without the attributes set only
/// on recorded spans.
fn assert_publish_and_process_seen(recorder: &Recorder) {
    let publish = recorder.seen("publish jobs.sampled");
    assert_eq!(publish.kind, SpanKind::Producer);
    assert_sampling_attributes(&publish, Some("jobs.sampled"), ("send", "publish"));
    assert_eq!(publish.get("messaging.message.body.size"), None);

    let process = recorder.seen("process jobs.processed");
    assert_eq!(process.kind, SpanKind::Consumer);
    assert_sampling_attributes(&process, Some("jobs.processed"), ("process", "process"));
    assert_eq!(process.get("nats_otel.context.source"), None);
}

#[tokio::test]
async fn the_sampler_sees_the_messaging_attributes_of_tracer_spans() {
    let (recorder, _provider, tracer) = provider();
    publish_process_receive(Some(tracer)).await;

    assert_publish_and_process_seen(&recorder);

    // A root started before the first message: no destination yet.
    let receive = recorder.seen("receive");
    assert_eq!(receive.kind, SpanKind::Client);
    assert_sampling_attributes(&receive, None, ("receive", "receive"));
}

#[tokio::test]
async fn the_sampler_sees_the_messaging_attributes_of_tracing_spans() {
    let (recorder, _provider, tracer) = provider();
    let subscriber =
        tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(tracer));
    let _guard = tracing::subscriber::set_default(subscriber);
    publish_process_receive(None).await;

    assert_publish_and_process_seen(&recorder);

    // Never entered, so built when it closes: named, and with its
    // destination, by then.
    let receive = recorder.seen("receive jobs.batch");
    assert_eq!(receive.kind, SpanKind::Client);
    assert_sampling_attributes(&receive, Some("jobs.batch"), ("receive", "receive"));
}
