//! The worker role: consumes jobs with `.with_trace_context()`, runs each in a `handle_job`
//! span under the message's context, acks, publishes the result and prints one JSON line.

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use async_nats::Client;
use futures::StreamExt as _;
use nats_otel::propagation::HeaderExtractor;
use nats_otel::{ExtractionRecord, KvFallback, MessageContextExt, Publish, TraceContextStreamExt};
use opentelemetry::trace::{SpanId, TraceContextExt as _, TraceId};
use opentelemetry::Context;
use serde::Serialize;
use tokio::sync::mpsc;
use tower::ServiceExt as _;
use tracing::{info_span, Instrument as _, Span};

use crate::job::{check_job_id, result_subject, Job, JobResult, CONSUMER, STREAM};
use crate::nats::{ensure_job_stream, job_consumer, result_publisher, ResultPublisher};
use crate::telemetry::trace_id_of;
use crate::BoxError;
use nats_otel::hops::HopsSettings;

/// What the worker reports for each finished job (printed as one JSON line).
#[derive(Debug, Clone)]
pub(crate) struct JobDone {
    pub(crate) job_id: String,
    status: String,
    pub(crate) trace_id: TraceId,
    /// The remote parent: the span id in the message's `traceparent`.
    parent_span_id: Option<SpanId>,
    /// The direct parent of `handle_job`: the CONSUMER `process` span.
    process_span_id: SpanId,
    record: Option<ExtractionRecord>,
}

impl JobDone {
    fn json_line(&self) -> String {
        /// The line's fields, in this order.
        #[derive(Serialize)]
        struct Line<'a> {
            event: &'static str,
            job_id: &'a str,
            status: &'a str,
            trace_id: String,
            parent_span_id: Option<String>,
            process_span_id: String,
            context_source: Option<&'static str>,
            reason: Option<&'static str>,
            reason_detail: Option<String>,
            fallback_reason: Option<&'static str>,
        }
        let record = self.record.as_ref();
        let reason = record.and_then(ExtractionRecord::reason);
        let line = Line {
            event: "job_done",
            job_id: &self.job_id,
            status: &self.status,
            trace_id: self.trace_id.to_string(),
            parent_span_id: self.parent_span_id.map(|id| id.to_string()),
            process_span_id: self.process_span_id.to_string(),
            context_source: record.map(|r| r.source().as_str()),
            reason: reason.map(|r| r.as_str()),
            reason_detail: reason.map(|r| r.to_string()),
            fallback_reason: record
                .and_then(ExtractionRecord::fallback_reason)
                .map(|r| r.as_str()),
        };
        serde_json::to_string(&line).unwrap_or_default()
    }
}

/// Consumes jobs until `shutdown` resolves; each finished job is printed and, when `done`
/// is given, also sent there. With `fallback`, a job whose headers give no context gets it
/// from KV.
pub(crate) async fn run(
    client: Client,
    fallback: Option<KvFallback>,
    done: Option<mpsc::UnboundedSender<JobDone>>,
    hops: Option<HopsSettings>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), BoxError> {
    let js = jetstream::new(client.clone());
    let stream = ensure_job_stream(&js).await?;
    let consumer = job_consumer(&stream).await?;
    let results = result_publisher(client, hops);

    let mut jobs = consumer
        .messages()
        .await
        .map_err(|e| format!("cannot start consuming from {STREAM}/{CONSUMER}: {e}"))?
        .with_trace_context();
    if let Some(fallback) = &fallback {
        jobs = jobs.fallback(fallback.clone());
    }
    tracing::info!(
        "worker consuming {STREAM}/{CONSUMER} (KV fallback {})",
        if fallback.is_some() { "on" } else { "off" }
    );
    tokio::pin!(shutdown);
    loop {
        let item = tokio::select! {
            () = &mut shutdown => return Ok(()),
            item = jobs.next() => item,
        };
        let (message, cx) = match item {
            Some(Ok(pair)) => pair,
            Some(Err(error)) => {
                tracing::warn!("consumer {CONSUMER}: {error}");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            None => return Err(format!("the consumer {CONSUMER} stopped delivering").into()),
        };
        let finished = handle_message(message, cx, results.clone()).await;
        // The handler's spans and the `process` span have ended by now.
        println!("{}", finished.json_line());
        if let Some(done) = &done {
            let _ = done.send(finished);
        }
    }
}

/// Runs one job in a `handle_job` span that continues the message's trace.
async fn handle_message(
    message: jetstream::Message,
    cx: Context,
    results: ResultPublisher,
) -> JobDone {
    // Create the span, make it a child of the message's context, then instrument.
    let span = info_span!("handle_job", job_id = tracing::field::Empty);
    let span = cx.handler_span(span).unwrap_or_else(|error| {
        tracing::warn!("handle_job starts a new trace: {error}");
        error.into_span()
    });
    let trace_id = trace_id_of(&span);
    let result = process_job(&message, trace_id, results)
        .instrument(span)
        .await;

    let record = cx.extraction().cloned();
    JobDone {
        // The producer's span the context continues, whichever source it came from.
        parent_span_id: record
            .as_ref()
            .and_then(|r| r.remote_span_context())
            .map(|sc| sc.span_id()),
        process_span_id: cx.span().span_context().span_id(),
        job_id: result.job_id,
        status: result.status,
        trace_id,
        record,
    }
    // `cx` drops here, ending the `process` span.
}

/// The work: decode, resize, ack, publish the result.
async fn process_job(
    message: &jetstream::Message,
    trace_id: TraceId,
    results: ResultPublisher,
) -> JobResult {
    let decoded = info_span!("decode").in_scope(|| serde_json::from_slice::<Job>(&message.payload));
    // The Job-Id header names the job even when the payload cannot be decoded.
    let job_id = message
        .headers
        .as_ref()
        .and_then(|headers| HeaderExtractor::new(headers).find("Job-Id"))
        .map(|(_, id)| id.to_owned())
        .or_else(|| decoded.as_ref().ok().map(|job| job.job_id.clone()))
        .unwrap_or_else(|| "unknown".to_owned());
    Span::current().record("job_id", job_id.as_str());

    let (kind, status, output, error) = match decoded {
        Ok(job) => {
            let output = resize(&job.input)
                .instrument(info_span!("resize", input = %job.input))
                .await;
            (AckKind::Ack, "done", Some(output), None)
        }
        Err(error) => {
            // A payload that cannot be decoded will never succeed: do not redeliver it.
            tracing::warn!("undecodable job: {error}");
            let error = format!("undecodable job: {error}");
            (AckKind::Term, "failed", None, Some(error))
        }
    };
    if let Err(error) = message.ack_with(kind).await {
        tracing::warn!("ack failed: {error}");
    }
    let result = JobResult {
        job_id,
        status: status.into(),
        output,
        error,
        trace_id: trace_id.to_string(),
    };
    publish_result(results, &result).await;
    result
}

/// Publishes `result` on `results.<job_id>`, where the API waits for it.
async fn publish_result(results: ResultPublisher, result: &JobResult) {
    if let Err(error) = check_job_id(&result.job_id) {
        tracing::warn!("result not published: {error}");
        return;
    }
    let sent = match serde_json::to_vec(result) {
        Ok(payload) => {
            let publish = Publish::new(result_subject(&result.job_id), payload);
            results.oneshot(publish).await.map_err(BoxError::from)
        }
        Err(error) => Err(error.into()),
    };
    if let Err(error) = sent {
        tracing::warn!("publishing the result: {error}");
    }
}

/// Stand-in for real work.
async fn resize(input: &str) -> String {
    tokio::time::sleep(Duration::from_millis(15)).await;
    format!("{input}@256x256")
}
