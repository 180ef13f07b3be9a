//! Metric values through the SDK's in-memory exporter: one count per
//! extraction source and reason, with the meter provider handed to the
//! layer and the adapter.

use std::collections::HashMap;

use async_nats::HeaderMap;
use futures::StreamExt;
use nats_otel::{
    fallback::FallbackKey, KvFallback, MessageContextExt, Publish, TraceCarrier,
    TraceContextStreamExt, TracePropagationLayer,
};
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use tower::Layer;
use tracing::Instrument;

use crate::support::nats::*;
use crate::support::server::NatsServer;
use crate::support::telemetry::Telemetry;

const VALID: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// Sums of a u64 counter by its sorted attribute list.
fn counter(
    provider: &SdkMeterProvider,
    exporter: &InMemoryMetricExporter,
    name: &str,
) -> HashMap<Vec<(String, String)>, u64> {
    provider.force_flush().unwrap();
    let mut out = HashMap::new();
    for resource in exporter.get_finished_metrics().unwrap() {
        for scope in resource.scope_metrics() {
            for metric in scope.metrics().filter(|m| m.name() == name) {
                if let AggregatedMetrics::U64(MetricData::Sum(sum)) = metric.data() {
                    for point in sum.data_points() {
                        let mut attrs: Vec<(String, String)> = point
                            .attributes()
                            .map(|kv| (kv.key.to_string(), kv.value.to_string()))
                            .collect();
                        attrs.sort();
                        // Cumulative temporality: the latest export wins.
                        out.insert(attrs, point.value());
                    }
                }
            }
        }
    }
    out
}

fn key(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    v.sort();
    v
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Job {
    id: String,
    #[serde(flatten)]
    trace: TraceCarrier,
}

#[tokio::test]
async fn extraction_counts_by_source_and_reason() {
    let exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(exporter.clone()).build())
        .build();
    let _telemetry = Telemetry::install();

    let server = NatsServer::start();
    let client = connect(&server).await;
    let js = async_nats::jetstream::new(client.clone());
    let bucket = KvFallback::open_bucket(&js, "carriers").await.unwrap();
    let fallback = KvFallback::new(bucket, FallbackKey::subject_token(1));

    let mut messages = client
        .subscribe("jobs.>")
        .await
        .unwrap()
        .with_trace_context()
        .meter_provider(&provider)
        .payload_carrier(|meta| {
            serde_json::from_slice::<Job>(meta.payload)
                .ok()
                .map(|j| j.trace)
        })
        .fallback(fallback.clone());

    // 2 × headers, through the layer (which also writes the KV record).
    let mut publisher = TracePropagationLayer::new()
        .fallback(fallback.clone())
        .meter_provider(&provider)
        .layer(nats_otel::CorePublisher::new(client.clone()));
    async {
        for id in ["h1", "h2"] {
            publish(&mut publisher, Publish::new(format!("jobs.{id}"), "{}")).await;
        }
    }
    .instrument(tracing::info_span!("api"))
    .await;
    // 1 × kv: a record exists for "h1", the message arrives without headers.
    client.publish("jobs.h1", "{}".into()).await.unwrap();
    // 1 × payload: a job document with a carrier, no headers.
    let job = Job {
        id: "p1".into(),
        trace: TraceCarrier {
            traceparent: Some(VALID.into()),
            ..Default::default()
        },
    };
    client
        .publish("jobs.p1", serde_json::to_vec(&job).unwrap().into())
        .await
        .unwrap();
    // 2 × none/no_headers (nothing in KV under these keys).
    client.publish("jobs.n1", "{}".into()).await.unwrap();
    client.publish("jobs.n2", "{}".into()).await.unwrap();
    // 1 × none/malformed_traceparent.
    let mut headers = HeaderMap::new();
    headers.insert("traceparent", VALID.to_uppercase().as_str());
    client
        .publish_with_headers("jobs.m1", headers, "{}".into())
        .await
        .unwrap();
    client.flush().await.unwrap();

    let mut sources = Vec::new();
    for _ in 0..7 {
        let (_, cx) = messages.next().await.unwrap();
        sources.push(cx.extraction().unwrap().source().as_str());
    }
    assert_eq!(
        sources,
        ["headers", "headers", "kv", "payload", "none", "none", "none"]
    );

    let extracted = counter(&provider, &exporter, "nats_otel.extract.messages");
    assert_eq!(extracted.get(&key(&[("source", "headers")])), Some(&2));
    assert_eq!(
        extracted.get(&key(&[("source", "kv"), ("reason", "no_headers")])),
        Some(&1)
    );
    assert_eq!(
        extracted.get(&key(&[("source", "payload"), ("reason", "no_headers")])),
        Some(&1)
    );
    assert_eq!(
        extracted.get(&key(&[("source", "none"), ("reason", "no_headers")])),
        Some(&2)
    );
    assert_eq!(
        extracted.get(&key(&[
            ("source", "none"),
            ("reason", "malformed_traceparent")
        ])),
        Some(&1)
    );
    let injected = counter(&provider, &exporter, "nats_otel.inject.messages");
    assert_eq!(injected.get(&key(&[("outcome", "injected")])), Some(&2));
    let kv = counter(&provider, &exporter, "nats_otel.fallback.kv.operations");
    assert_eq!(
        kv.get(&key(&[("operation", "write"), ("outcome", "ok")])),
        Some(&2)
    );
    assert_eq!(
        kv.get(&key(&[("operation", "read"), ("outcome", "ok")])),
        Some(&1)
    );
    assert_eq!(
        kv.get(&key(&[("operation", "read"), ("outcome", "error")])),
        Some(&3)
    );
}
