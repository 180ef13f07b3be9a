//! The API role: `POST /jobs` continues the caller's trace, publishes the job to JetStream
//! through the tracing layer and answers with the worker's result.

use std::future::Future;
use std::net::SocketAddr;

use async_nats::jetstream::{self, publish::PublishAck};
use async_nats::Client;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use futures::StreamExt as _;
use nats_otel::Publish;
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry_http::HeaderExtractor;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use serde_json::{json, Value};
use tower::ServiceExt as _;
use tracing::{info_span, Instrument as _, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::job::{parse_job_request, result_subject, Job, JOB_SUBJECT, RESULT_TIMEOUT};
use crate::nats::{ensure_job_stream, job_publisher, JobPublisher, JobPublishing};
use crate::telemetry::trace_id_of;
use crate::BoxError;

#[derive(Clone)]
struct Api {
    client: Client,
    jobs: JobPublisher,
}

/// Serves `POST /jobs` on `listen` until `shutdown` resolves.
pub(crate) async fn serve(
    client: Client,
    listen: SocketAddr,
    publishing: JobPublishing,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), BoxError> {
    let listener = bind(listen).await?;
    run(client, listener, publishing, shutdown).await
}

pub(crate) async fn bind(listen: SocketAddr) -> Result<tokio::net::TcpListener, BoxError> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    tracing::info!("API listening on http://{}", listener.local_addr()?);
    Ok(listener)
}

pub(crate) async fn run(
    client: Client,
    listener: tokio::net::TcpListener,
    publishing: JobPublishing,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), BoxError> {
    let js = jetstream::new(client.clone());
    ensure_job_stream(&js).await?;
    if publishing.strip_headers {
        tracing::info!("--strip-headers: job messages reach {JOB_SUBJECT} without headers");
    }
    let api = Api {
        client,
        jobs: job_publisher(js, publishing),
    };
    let app = Router::new()
        .route("/jobs", post(submit_job))
        .with_state(api);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

type ApiResponse = (StatusCode, Json<Value>);

/// `POST /jobs`: continues the caller's trace, publishes the job, waits for its result.
async fn submit_job(State(api): State<Api>, headers: HeaderMap, body: Bytes) -> ApiResponse {
    let span = info_span!(
        "POST /jobs",
        otel.kind = "server",
        http.request.method = "POST",
        http.route = "/jobs",
        job_id = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
    );
    // The parent must be set before the span is entered or its context read.
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(&headers));
    if let Err(error) = span.set_parent(parent) {
        tracing::warn!("request span keeps a new trace: {error}");
    }
    let (status, body) = api.submit(body).instrument(span.clone()).await;
    span.record("http.response.status_code", status.as_u16());
    (status, body)
}

impl Api {
    async fn submit(&self, body: Bytes) -> ApiResponse {
        let trace_id = trace_id_of(&Span::current()).to_string();
        let error = |status: StatusCode, message: String| {
            if status.is_server_error() {
                tracing::warn!("POST /jobs: {message}");
            }
            let body = json!({ "error": message, "trace_id": trace_id });
            (status, Json(body))
        };

        let job = match parse_job_request(&body) {
            Ok(job) => job,
            Err(message) => return error(StatusCode::BAD_REQUEST, message),
        };
        Span::current().record("job_id", job.job_id.as_str());

        // Subscribe first, so that a fast worker's result cannot be missed.
        let mut results = match self.client.subscribe(result_subject(&job.job_id)).await {
            Ok(subscriber) => subscriber,
            Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, format!("subscribe: {e}")),
        };
        match self.publish(&job).await {
            Ok(ack) if ack.duplicate => {
                let message = format!("job_id {:?} was already submitted", job.job_id);
                return error(StatusCode::CONFLICT, message);
            }
            Ok(_) => {}
            Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, format!("publish: {e}")),
        }

        let message = match tokio::time::timeout(RESULT_TIMEOUT, results.next()).await {
            Ok(Some(message)) => message,
            Ok(None) => return error(StatusCode::SERVICE_UNAVAILABLE, "NATS closed".into()),
            Err(_) => {
                let message = format!("no result for {} within {RESULT_TIMEOUT:?}", job.job_id);
                return error(StatusCode::GATEWAY_TIMEOUT, message);
            }
        };
        match serde_json::from_slice::<Value>(&message.payload) {
            Ok(result) => (
                StatusCode::OK,
                Json(json!({ "job_id": job.job_id, "trace_id": trace_id, "result": result })),
            ),
            Err(e) => error(StatusCode::BAD_GATEWAY, format!("worker result: {e}")),
        }
    }

    /// Publishes `job` to JetStream through the tracing layer and waits for the ack.
    async fn publish(&self, job: &Job) -> Result<PublishAck, BoxError> {
        let message = Publish::new(JOB_SUBJECT, serde_json::to_vec(job)?)
            .header("Job-Id", &job.job_id)?
            .header("Nats-Msg-Id", &job.job_id)?;
        self.jobs.clone().oneshot(message).await
    }
}
