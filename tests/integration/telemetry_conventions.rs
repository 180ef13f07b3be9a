//! What an OpenTelemetry backend sees on default settings: the four metrics
//! of the messaging conventions with their attributes, and span names that
//! do not carry per-message ids. Through the SDK's in-memory exporters.

use std::collections::{BTreeSet, HashMap};

use nats_otel::{
    CorePublisher, JetStreamPublisher, Publish, SettleExt, TraceContextStreamExt,
    TracePropagationLayer,
};
use opentelemetry::trace::SpanKind;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use tower::Layer;
use tracing::Instrument;

use crate::support::nats::*;
use crate::support::server::NatsServer;
use crate::support::telemetry::Telemetry;

const N: usize = 10;

/// Attribute sets of one metric's data points, with each point's count (a
/// counter's sum, a histogram's count) and, for histograms, its sum.
type Points = Vec<(HashMap<String, String>, u64, f64)>;

fn meter() -> (SdkMeterProvider, InMemoryMetricExporter) {
    let exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(exporter.clone()).build())
        .build();
    (provider, exporter)
}

/// The latest export of metric `name`.
fn points(provider: &SdkMeterProvider, exporter: &InMemoryMetricExporter, name: &str) -> Points {
    provider.force_flush().unwrap();
    let mut out = Vec::new();
    let exported = exporter.get_finished_metrics().unwrap();
    let Some(latest) = exported.last() else {
        return out;
    };
    for scope in latest.scope_metrics() {
        for metric in scope.metrics().filter(|m| m.name() == name) {
            let attrs = |kvs: &mut dyn Iterator<Item = &opentelemetry::KeyValue>| {
                kvs.map(|kv| (kv.key.to_string(), kv.value.to_string()))
                    .collect::<HashMap<_, _>>()
            };
            match metric.data() {
                AggregatedMetrics::U64(MetricData::Sum(sum)) => {
                    for p in sum.data_points() {
                        out.push((attrs(&mut p.attributes()), p.value(), 0.0));
                    }
                }
                AggregatedMetrics::F64(MetricData::Histogram(h)) => {
                    for p in h.data_points() {
                        out.push((attrs(&mut p.attributes()), p.count(), p.sum()));
                    }
                }
                other => panic!("{name}: unexpected data {other:?}"),
            }
        }
    }
    out
}

/// A filter on a point's attributes: `key` is `value`.
fn is(key: &'static str, value: &'static str) -> impl Fn(&HashMap<String, String>) -> bool {
    move |a| a.get(key).map(String::as_str) == Some(value)
}

fn total(points: &Points, filter: impl Fn(&HashMap<String, String>) -> bool) -> u64 {
    points
        .iter()
        .filter(|(a, ..)| filter(a))
        .map(|(_, n, _)| n)
        .sum()
}

/// The ids the jobs carry: NUIDs, as a client's inbox has.
fn job_ids(client: &async_nats::Client) -> Vec<String> {
    (0..N)
        .map(|_| {
            let inbox = client.new_inbox();
            format!("job-{}", inbox.rsplit('.').next().unwrap())
        })
        .collect()
}

/// Checks the attributes every point of every conventional metric must have
/// and must not have: no job id anywhere.
fn assert_low_cardinality(points: &Points, ids: &[String], metric: &str) {
    assert!(!points.is_empty(), "{metric}: no data");
    for (attributes, ..) in points {
        assert_eq!(
            attributes.get("messaging.system").map(String::as_str),
            Some("nats"),
            "{metric}: {attributes:?}"
        );
        assert!(
            attributes.contains_key("messaging.operation.name"),
            "{metric}: {attributes:?}"
        );
        for value in attributes.values() {
            assert!(
                !ids.iter().any(|id| value.contains(id.as_str())),
                "{metric}: a job id in an attribute: {attributes:?}"
            );
        }
    }
}

fn names_of(telemetry: &Telemetry, kind: SpanKind) -> BTreeSet<String> {
    telemetry
        .spans()
        .into_iter()
        .filter(|s| s.span_kind == kind)
        .map(|s| s.name.to_string())
        .collect()
}

#[tokio::test]
async fn core_nats_standard_metrics_and_one_span_name_per_destination() {
    let telemetry = Telemetry::install();
    let (provider, exporter) = meter();
    let server = NatsServer::start();
    let client = connect(&server).await;
    let ids = job_ids(&client);

    let mut jobs = client
        .subscribe("jobs.>")
        .await
        .unwrap()
        .with_trace_context()
        .meter_provider(&provider);
    client.flush().await.unwrap();
    let mut publisher = TracePropagationLayer::new()
        .meter_provider(&provider)
        .layer(CorePublisher::new(client.clone()));
    async {
        for id in &ids {
            publish(&mut publisher, Publish::new(format!("jobs.{id}"), "{}")).await;
        }
    }
    .instrument(tracing::info_span!("api"))
    .await;
    for _ in 0..N {
        let (_message, cx) = next(&mut jobs).await;
        drop(cx); // ends the `process` span and its duration
    }

    let sent = points(&provider, &exporter, "messaging.client.sent.messages");
    assert_low_cardinality(&sent, &ids, "sent");
    assert_eq!(
        total(&sent, is("messaging.operation.name", "publish")),
        N as u64
    );
    assert_eq!(
        total(&sent, is("messaging.destination.template", "jobs.*")),
        N as u64
    );
    assert_eq!(
        total(&sent, |a| a.contains_key("messaging.destination.name")),
        0
    );
    assert_eq!(total(&sent, |a| a.contains_key("error.type")), 0);

    let consumed = points(&provider, &exporter, "messaging.client.consumed.messages");
    assert_low_cardinality(&consumed, &ids, "consumed");
    assert_eq!(
        total(&consumed, is("messaging.destination.template", "jobs.*")),
        N as u64
    );

    let operation = points(&provider, &exporter, "messaging.client.operation.duration");
    assert_low_cardinality(&operation, &ids, "operation.duration");
    assert_eq!(
        total(&operation, is("messaging.operation.type", "send")),
        N as u64
    );
    assert!(
        operation.iter().all(|(_, _, sum)| *sum > 0.0),
        "{operation:?}"
    );

    let process = points(&provider, &exporter, "messaging.process.duration");
    assert_low_cardinality(&process, &ids, "process.duration");
    assert_eq!(
        total(&process, is("messaging.operation.type", "process")),
        N as u64
    );
    assert!(process.iter().all(|(_, _, sum)| *sum > 0.0), "{process:?}");

    // One PRODUCER and one CONSUMER span name for N subjects; the subject
    // itself stays on the span.
    assert_eq!(
        names_of(&telemetry, SpanKind::Producer),
        BTreeSet::from(["publish jobs.*".to_owned()])
    );
    assert_eq!(
        names_of(&telemetry, SpanKind::Consumer),
        BTreeSet::from(["process jobs.*".to_owned()])
    );
    let destinations: BTreeSet<String> = telemetry
        .spans()
        .iter()
        .filter(|s| s.span_kind == SpanKind::Producer)
        .filter_map(|s| {
            s.attributes
                .iter()
                .find(|kv| kv.key.as_str() == "messaging.destination.name")
                .map(|kv| kv.value.to_string())
        })
        .collect();
    assert_eq!(
        destinations.len(),
        N,
        "each PRODUCER span keeps its subject"
    );
}

#[tokio::test]
async fn jetstream_standard_metrics_with_the_consumer_and_settlements() {
    let telemetry = Telemetry::install();
    let (provider, exporter) = meter();
    let server = NatsServer::start();
    let (client, js) = connect_jetstream(&server).await;
    let stream = create_stream(&js, "JOBS", "jobs.*").await;
    let ids = job_ids(&client);

    let mut publisher = TracePropagationLayer::new()
        .meter_provider(&provider)
        .layer(JetStreamPublisher::new(js.clone()));
    async {
        for id in &ids {
            publish(&mut publisher, Publish::new(format!("jobs.{id}"), "{}")).await;
        }
    }
    .instrument(tracing::info_span!("api"))
    .await;
    let consumer = durable_consumer(&stream, "worker").await;
    let mut jobs = consumer
        .messages()
        .await
        .unwrap()
        .with_trace_context()
        .meter_provider(&provider);
    for _ in 0..N {
        let (message, cx) = next(&mut jobs).await.unwrap();
        message
            .settle(async_nats::jetstream::AckKind::Ack, &cx)
            .await
            .unwrap();
    }

    let sent = points(&provider, &exporter, "messaging.client.sent.messages");
    assert_low_cardinality(&sent, &ids, "sent");
    assert_eq!(
        total(&sent, is("messaging.destination.template", "jobs.*")),
        N as u64
    );

    let consumed = points(&provider, &exporter, "messaging.client.consumed.messages");
    assert_low_cardinality(&consumed, &ids, "consumed");
    assert_eq!(
        total(&consumed, is("messaging.consumer.group.name", "worker")),
        N as u64
    );
    assert_eq!(
        total(
            &consumed,
            is("messaging.destination.subscription.name", "worker")
        ),
        N as u64
    );

    let operation = points(&provider, &exporter, "messaging.client.operation.duration");
    assert_low_cardinality(&operation, &ids, "operation.duration");
    // The publish (ending at the ack) and the settlement of each message.
    assert_eq!(
        total(&operation, is("messaging.operation.type", "send")),
        N as u64
    );
    assert_eq!(
        total(&operation, is("messaging.operation.name", "ack")),
        N as u64
    );
    assert_eq!(
        total(&operation, is("messaging.operation.type", "settle")),
        N as u64
    );
    assert!(
        operation.iter().all(|(_, _, sum)| *sum > 0.0),
        "{operation:?}"
    );

    let process = points(&provider, &exporter, "messaging.process.duration");
    assert_low_cardinality(&process, &ids, "process.duration");
    assert_eq!(
        total(&process, is("messaging.consumer.group.name", "worker")),
        N as u64
    );

    assert_eq!(
        names_of(&telemetry, SpanKind::Producer),
        BTreeSet::from(["publish jobs.*".to_owned()])
    );
    assert_eq!(
        names_of(&telemetry, SpanKind::Consumer),
        BTreeSet::from(["process jobs.*".to_owned()])
    );
    let settle: BTreeSet<String> = names_of(&telemetry, SpanKind::Client);
    assert_eq!(settle, BTreeSet::from(["ack jobs.*".to_owned()]));
}

/// A job whose trace carrier travels in its document.
#[derive(serde::Serialize, serde::Deserialize)]
struct Job {
    #[serde(flatten)]
    trace: nats_otel::TraceCarrier,
}

/// With `Parenting::NewTraceWhenReplayed`, a context read back from the
/// payload starts a new trace linked to the producer, while one from the
/// headers stays its child; by default both are children. Either way the
/// `process` span links to the creation context.
#[tokio::test]
async fn replayed_contexts_link_instead_of_parenting_when_asked() {
    use nats_otel::consume::Parenting;
    use nats_otel::{ContextSource, MessageContextExt};

    for parenting in [None, Some(Parenting::NewTraceWhenReplayed)] {
        let telemetry = Telemetry::install();
        let server = NatsServer::start();
        let client = connect(&server).await;
        let mut jobs = client
            .subscribe("jobs.>")
            .await
            .unwrap()
            .with_trace_context()
            .payload_carrier(|meta| {
                serde_json::from_slice::<Job>(meta.payload)
                    .ok()
                    .map(|j| j.trace)
            });
        if let Some(parenting) = parenting {
            jobs = jobs.parenting(parenting);
        }
        client.flush().await.unwrap();

        // From the headers, through the layer.
        let mut publisher = TracePropagationLayer::new().layer(CorePublisher::new(client.clone()));
        async { publish(&mut publisher, Publish::new("jobs.fresh", "{}")).await }
            .instrument(tracing::info_span!("api"))
            .await;
        // From the payload only: the carrier of an `old` span, no headers.
        let old = tracing::info_span!("old");
        let carrier = {
            let _entered = old.enter();
            nats_otel::TraceCarrier::from_context(&opentelemetry::Context::current())
        };
        drop(old);
        let job = serde_json::to_vec(&Job { trace: carrier }).unwrap();
        client.publish("jobs.replayed", job.into()).await.unwrap();

        for expected in [ContextSource::Headers, ContextSource::Payload] {
            let (_, cx) = next(&mut jobs).await;
            assert_eq!(cx.extraction().unwrap().source(), expected);
        }

        let spans = telemetry.spans();
        let by_name = |name: &str| spans.iter().find(|s| s.name == name).unwrap().clone();
        let producer = by_name("publish jobs.fresh");
        let old = by_name("old");
        let fresh = by_name("process jobs.fresh");
        let replayed = by_name("process jobs.replayed");
        let links = |s: &opentelemetry_sdk::trace::SpanData| -> Vec<_> {
            s.links.iter().map(|l| l.span_context.span_id()).collect()
        };
        assert_eq!(
            fresh.parent_span_id,
            producer.span_context.span_id(),
            "{parenting:?}"
        );
        assert_eq!(
            links(&fresh),
            [producer.span_context.span_id()],
            "{parenting:?}"
        );
        assert_eq!(
            links(&replayed),
            [old.span_context.span_id()],
            "{parenting:?}"
        );
        if parenting.is_some() {
            assert_eq!(
                replayed.parent_span_id,
                opentelemetry::trace::SpanId::INVALID
            );
            assert_ne!(
                replayed.span_context.trace_id(),
                old.span_context.trace_id()
            );
        } else {
            assert_eq!(replayed.parent_span_id, old.span_context.span_id());
            assert_eq!(
                replayed.span_context.trace_id(),
                old.span_context.trace_id()
            );
        }
    }
}
