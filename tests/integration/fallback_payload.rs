//! The trace carrier inside the job document: recovers the context when the
//! message has no headers; when it has, the headers win and the
//! disagreement is noted. Needs no KV, so it runs without the `kv` feature.

use nats_otel::{
    consume::MessageMeta, consume::NoContextReason, ContextSource, CorePublisher,
    MessageContextExt, Publish, TraceCarrier, TraceContextStreamExt, TracePropagationLayer,
};
use opentelemetry::trace::TraceContextExt;
use serde::{Deserialize, Serialize};
use tower::Layer;
use tracing::Instrument;

use crate::support::nats::*;
use crate::support::server::NatsServer;
use crate::support::telemetry::*;

/// The job document the worker already reads, with the carrier flattened
/// into it.
#[derive(Debug, Serialize, Deserialize)]
struct Job {
    id: String,
    #[serde(flatten)]
    trace: TraceCarrier,
}

fn job_carrier(meta: &MessageMeta<'_>) -> Option<TraceCarrier> {
    serde_json::from_slice::<Job>(meta.payload)
        .ok()
        .map(|job| job.trace)
}

#[tokio::test]
async fn payload_carrier_restores_the_api_parent_without_headers() {
    let telemetry = Telemetry::install();
    let server = NatsServer::start();
    let client = connect(&server).await;
    let mut jobs = client
        .subscribe("jobs.payload")
        .await
        .unwrap()
        .with_trace_context()
        .payload_carrier(job_carrier);
    client.flush().await.unwrap();

    let api = tracing::info_span!("api");
    let document = async {
        let job = Job {
            id: "7".into(),
            trace: TraceCarrier::from_current(),
        };
        assert!(job.trace.traceparent.is_some(), "{job:?}");
        let document = serde_json::to_vec(&job).unwrap();
        // A plain publish: no headers at all.
        client
            .publish("jobs.payload", document.clone().into())
            .await
            .unwrap();
        document
    }
    .instrument(api)
    .await;
    let doc: serde_json::Value = serde_json::from_slice(&document).unwrap();
    assert!(doc["traceparent"].is_string(), "flattened: {doc}");

    let (message, cx) = next(&mut jobs).await;
    assert!(message.headers.is_none());
    let record = cx.extraction().unwrap().clone();
    assert_eq!(record.source(), ContextSource::Payload, "{record}");
    assert_eq!(record.reason(), Some(&NoContextReason::NoHeaders));
    assert!(record.notes().is_empty(), "{:?}", record.notes());
    drop(cx);

    let api = telemetry.span("api");
    let process = telemetry.span("process jobs.payload");
    assert_child_of(&process, &api);
    assert_attribute(&process, "nats_otel.context.source", "payload");
    // The record names the span the payload carrier held: the api span.
    let remote = record.remote_span_context().expect("remote span context");
    assert_eq!(remote.span_id(), span_id(&api));
    assert_eq!(remote.trace_id(), trace_id(&api));
}

#[tokio::test]
async fn headers_win_over_a_disagreeing_payload_carrier_and_it_is_noted() {
    let telemetry = Telemetry::install();
    let server = NatsServer::start();
    let client = connect(&server).await;
    let mut jobs = client
        .subscribe("jobs.both")
        .await
        .unwrap()
        .with_trace_context()
        .payload_carrier(job_carrier);
    client.flush().await.unwrap();

    // A carrier from some other trace ends up in the document.
    let stale = async { TraceCarrier::from_current() }
        .instrument(tracing::info_span!("other"))
        .await;
    let job = Job {
        id: "8".into(),
        trace: stale,
    };
    let mut publisher = TracePropagationLayer::new().layer(CorePublisher::new(client.clone()));
    publish_in_span(
        &mut publisher,
        tracing::info_span!("api"),
        Publish::new("jobs.both", serde_json::to_vec(&job).unwrap()),
    )
    .await;

    let (message, cx) = next(&mut jobs).await;
    assert!(message.headers.is_some());
    let record = cx.extraction().unwrap().clone();
    assert_eq!(record.source(), ContextSource::Headers, "{record}");
    assert_eq!(record.reason(), None);
    let other = telemetry.span("other");
    assert!(
        record
            .notes()
            .iter()
            .any(|n| n.contains("disagree") && n.contains(&trace_id(&other).to_string())),
        "notes: {:?}",
        record.notes()
    );
    assert_eq!(cx.span().span_context().trace_id(), {
        let api = telemetry.span("api");
        trace_id(&api)
    });
    drop(cx);

    let producer = telemetry.span("publish jobs.both");
    let process = telemetry.span("process jobs.both");
    assert_child_of(&process, &producer);
    assert_ne!(trace_id(&process), trace_id(&other));
}
