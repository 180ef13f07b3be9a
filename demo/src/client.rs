//! Role `all`: the API and the worker as tasks, a demo client submitting jobs over HTTP, then
//! the check that every job stayed in its client's trace.

use std::collections::HashMap;
use std::net::SocketAddr;

use async_nats::Client;
use nats_otel::KvFallback;
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::TraceId;
use opentelemetry_http::HeaderInjector;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tracing::{info_span, Instrument as _};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::job::RESULT_TIMEOUT;
use crate::nats::JobPublishing;
use crate::telemetry::{trace_id_of, Telemetry};
use crate::worker::JobDone;
use crate::{api, tree, worker, BoxError};

/// One job as the demo client saw it.
struct Submitted {
    input: String,
    client_trace_id: TraceId,
    /// The job id from the API's answer; `None` when the request failed.
    job_id: Option<String>,
}

/// Runs the API and the worker, submits `jobs` jobs (with 0: serves until Ctrl-C) and
/// prints the verdict. `Ok(true)` when every job stayed in its client's trace.
pub(crate) async fn run_all(
    client: Client,
    listen: SocketAddr,
    jobs: usize,
    publishing: JobPublishing,
    telemetry: &Telemetry,
) -> Result<bool, BoxError> {
    let fallback = publishing.fallback.clone();
    let hops = publishing.hops.clone();
    let expect_hops = hops.as_ref().is_some_and(|h| h.is_enabled());
    let listener = api::bind(listen).await?;
    let api_addr = listener.local_addr()?;
    let (stop_api, api_stopped) = oneshot::channel::<()>();
    let (stop_worker, worker_stopped) = oneshot::channel::<()>();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();

    // The API and the worker run as tasks; the demo client runs here.
    let mut tasks = tokio::task::JoinSet::new();
    let api_client = client.clone();
    tasks.spawn(async move {
        let stopped = async {
            let _ = api_stopped.await;
        };
        let outcome = api::run(api_client, listener, publishing, stopped).await;
        ("API", outcome)
    });
    let worker_fallback = fallback.clone();
    tasks.spawn(async move {
        let stopped = async {
            let _ = worker_stopped.await;
        };
        let outcome = worker::run(client, worker_fallback, Some(done_tx), hops, stopped).await;
        ("worker", outcome)
    });

    let outcome = tokio::select! {
        () = crate::ctrl_c() => if jobs == 0 { Ok(true) } else { Err("interrupted".into()) },
        result = submit_and_check(api_addr, jobs, &mut done_rx, fallback.as_ref(), telemetry, expect_hops),
            if jobs > 0 => result,
        Some(joined) = tasks.join_next() => Err(match joined {
            Ok((name, Ok(()))) => format!("the {name} stopped unexpectedly"),
            Ok((name, Err(error))) => format!("the {name} failed: {error}"),
            Err(error) => format!("a task failed: {error}"),
        }
        .into()),
    };

    let _ = stop_api.send(());
    let _ = stop_worker.send(());
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((_, Ok(()))) => {}
            Ok((name, Err(error))) => tracing::warn!("the {name} failed: {error}"),
            Err(error) => tracing::warn!("a task failed: {error}"),
        }
    }
    outcome
}

/// Submits `jobs` jobs, collects the worker's reports, prints the first job's trace tree,
/// the KV fallback's counters and the verdict line.
async fn submit_and_check(
    api: SocketAddr,
    jobs: usize,
    done: &mut mpsc::UnboundedReceiver<JobDone>,
    fallback: Option<&KvFallback>,
    telemetry: &Telemetry,
    expect_hops: bool,
) -> Result<bool, BoxError> {
    let http = reqwest::Client::builder()
        .timeout(RESULT_TIMEOUT * 2)
        .build()?;
    let mut submitted = Vec::with_capacity(jobs);
    for i in 1..=jobs {
        submitted.push(submit(&http, api, format!("photo-{i}.png")).await);
    }

    // The API answered once the worker published the result; its report follows shortly.
    let mut reports: HashMap<String, JobDone> = HashMap::new();
    let deadline = tokio::time::Instant::now() + RESULT_TIMEOUT;
    while submitted
        .iter()
        .filter_map(|s| s.job_id.as_deref())
        .any(|id| !reports.contains_key(id))
    {
        match tokio::time::timeout_at(deadline, done.recv()).await {
            Ok(Some(report)) => {
                reports.insert(report.job_id.clone(), report);
            }
            Ok(None) | Err(_) => break,
        }
    }

    println!();
    let mut all_match = true;
    for job in &submitted {
        let report = job.job_id.as_deref().and_then(|id| reports.get(id));
        let matched = report.is_some_and(|r| r.trace_id == job.client_trace_id);
        all_match &= matched;
        println!(
            "{} {:<12} job_id={} client_trace_id={} worker_trace_id={}",
            if matched { "ok      " } else { "MISMATCH" },
            job.input,
            job.job_id.as_deref().unwrap_or("-"),
            job.client_trace_id,
            report.map_or_else(|| "-".to_owned(), |r| r.trace_id.to_string()),
        );
    }
    if let Some(first) = submitted.first() {
        if expect_hops {
            // The servers' reports arrive on their own: wait (bounded) for the job's and the
            // result's.
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
            while hop_spans(telemetry, first.client_trace_id) < 2
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
        println!();
        tree::print_trace_tree(&telemetry.finished_spans(), first.client_trace_id);
    }
    match fallback.map(KvFallback::stats) {
        Some(stats) => println!(
            "kv_fallback writes={} write_failures={} reads={} read_failures={}",
            stats.writes, stats.write_failures, stats.reads, stats.read_failures
        ),
        None => println!("kv_fallback off"),
    }
    println!("trace_ids_match={all_match} jobs={jobs}");
    Ok(all_match)
}

/// Submits one job from its own root span, sending that span's `traceparent` over HTTP.
async fn submit(http: &reqwest::Client, api: SocketAddr, input: String) -> Submitted {
    let span = info_span!(parent: None, "submit job", otel.kind = "client", input = %input);
    let client_trace_id = trace_id_of(&span);
    let mut headers = reqwest::header::HeaderMap::new();
    TraceContextPropagator::new()
        .inject_context(&span.context(), &mut HeaderInjector(&mut headers));

    let response = async {
        let response = http
            .post(format!("http://{api}/jobs"))
            .headers(headers)
            .json(&json!({ "input": input }))
            .send()
            .await?;
        let status = response.status();
        Ok::<_, reqwest::Error>((status, response.bytes().await?))
    }
    .instrument(span)
    .await;
    let job_id = match response {
        Ok((status, body)) if status.is_success() => serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v.get("job_id")?.as_str().map(str::to_owned)),
        Ok((status, body)) => {
            let body = String::from_utf8_lossy(&body);
            tracing::warn!("POST /jobs for {input}: HTTP {status}: {body}");
            None
        }
        Err(error) => {
            tracing::warn!("POST /jobs for {input}: {error}");
            None
        }
    };
    Submitted {
        input,
        client_trace_id,
        job_id,
    }
}

/// How many `nats-server …` spans trace `trace_id` has so far.
fn hop_spans(telemetry: &Telemetry, trace_id: opentelemetry::trace::TraceId) -> usize {
    telemetry
        .finished_spans()
        .iter()
        .filter(|s| s.span_context.trace_id() == trace_id && s.name.starts_with("nats-server"))
        .count()
}
