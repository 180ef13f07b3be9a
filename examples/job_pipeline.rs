//! # job_pipeline: one trace from an HTTP request, through JetStream, to a worker
//!
//! The crate's seed system, end to end:
//!
//! ```text
//!  client ──POST /jobs + traceparent──▶ API ──JetStream JOBS (jobs.resize)──▶ worker
//!    ▲                                   │  waits on results.<job_id>           │
//!    └─────────── JSON result ◀──────────┴────────── core NATS ◀────────────────┘
//!
//!  KV fallback:  API ──put carrier──▶ KV job_trace_carriers ◀──get, if no headers── worker
//! ```
//!
//! - **API** (`--role api`): `POST /jobs` with a JSON body `{"input": "..."}` (optionally
//!   `"job_id"`; the API assigns one otherwise). The request span continues the caller's
//!   trace from its W3C `traceparent` HTTP header. The job is published through
//!   [`TracePropagationLayer`] + [`JetStreamPublisher`] to the stream `JOBS` (subjects
//!   `jobs.>`) with headers `Job-Id` and `Nats-Msg-Id` (the job id, so a resubmitted id is
//!   rejected as a duplicate with 409). The API subscribes to `results.<job_id>` *before*
//!   publishing and answers with the worker's result and the request's trace id, or 504
//!   after 10 s. With the KV fallback (`--fallback kv`, the default) the layer is
//!   `TracePropagationLayer::new().fallback(..)`: it also writes each job's trace carrier to
//!   the KV bucket `job_trace_carriers` before the job is sent (see below).
//! - **Worker** (`--role worker`): a durable pull consumer `worker` read with
//!   `messages().await?.with_trace_context()` (plus `.fallback(..)` with the KV fallback, which
//!   looks the carrier up only when a message's headers give no context). Each job runs in a
//!   `handle_job` span made a child of the message's context with
//!   [`MessageContextExt::handler_span`], does its work in `decode` and `resize` child spans,
//!   acks, publishes the result to `results.<job_id>` and prints one JSON line on stdout (see
//!   below).
//! - **All** (`--role all`, the default): API and worker in one process, plus a client that
//!   submits `--jobs N` jobs to the API over HTTP, each from its own root span whose
//!   `traceparent` travels in the HTTP header. It then prints the trace tree of the first job
//!   from an in-memory exporter and ends with `trace_ids_match=<true|false> jobs=<N>`; `true`
//!   means every worker `handle_job` span is in the same trace as the client span that
//!   submitted the job. The exit code is non-zero when it is `false`.
//!
//! ## Run it
//!
//! Everything in one process, against a private nats-server:
//!
//! ```text
//! cargo run --features kv --example job_pipeline -- --role all --jobs 5
//! ```
//!
//! (The example needs the crate's `kv` feature; `cargo xtask demo` passes `--all-features`.)
//!
//! As separate processes against one JetStream-enabled server (`nats-server -js`; or start
//! `--role api` without `NATS_URL`: it starts a private server and prints its URL):
//!
//! ```text
//! export NATS_URL=nats://127.0.0.1:4222
//! cargo run --features kv --example job_pipeline -- --role worker &
//! cargo run --features kv --example job_pipeline -- --role api --listen 127.0.0.1:8080 &
//! curl -s -X POST 127.0.0.1:8080/jobs -H 'content-type: application/json' \
//!   -H 'traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01' \
//!   -d '{"input": "cat.png"}'
//! ```
//!
//! The worker's line for that job carries `"trace_id":"4bf92f3577b34da6a3ce929d0e0e4736"`.
//!
//! ## Options and environment
//!
//! - `--role all|api|worker` (default `all`), `--jobs N` (role `all`, default 5; with 0 it
//!   serves until Ctrl-C), `--listen ADDR` (default `127.0.0.1:0` in role `all`,
//!   `127.0.0.1:8080` otherwise).
//! - `--fallback kv|none` (default `kv`): whether the API writes, and the worker reads, the
//!   KV fallback. Give both sides the same value.
//! - `--strip-headers` (roles `all` and `api`, default off): drop every header of the job
//!   message after the tracing layer, as a relay that forwards only the payload would. See
//!   "Lost headers" below.
//! - `NATS_URL`: the server (or comma-separated servers) to use. Credentials in the URL
//!   (`nats://user:pass@host:4222`, `nats://token@host:4222`) are passed on explicitly, as
//!   async-nats 0.51 parses them but does not send them. Unset: a private nats-server is
//!   started through the test harness
//!   (`tests/support/server.rs`), which finds the binary through `NATS_SERVER_BIN`,
//!   `target/nats-server/<version>/bin/nats-server` or `PATH`.
//! - `OTEL_EXPORTER_OTLP_ENDPOINT` (e.g. `http://127.0.0.1:4318`): also export spans over
//!   OTLP/HTTP (protobuf, plain `http://` only; see [`otlp`]).
//! - `RUST_LOG`: log filter for stderr (default `warn,job_pipeline=info`).
//!
//! ## The worker's stdout line
//!
//! One JSON object per finished job:
//!
//! ```text
//! {"event":"job_done","job_id":"..","status":"done","trace_id":"..","parent_span_id":"..",
//!  "process_span_id":"..","context_source":"headers","reason":null,"reason_detail":null,
//!  "fallback_reason":null}
//! ```
//!
//! - `trace_id`: the trace of the worker's `handle_job` span.
//! - `parent_span_id`: the *remote* parent, i.e. the span id in the `traceparent` the message
//!   carried (or, with `"context_source":"kv"`, the one in its KV record): the API's PRODUCER
//!   span `publish jobs.resize`. `null` when there was no usable context.
//! - `process_span_id`: the direct parent of `handle_job`, the crate's CONSUMER `process`
//!   span (itself a child of `parent_span_id`).
//! - `context_source` and `reason`: from the [`ExtractionRecord`] (`cx.extraction()`):
//!   where the context came from (`headers`, `none`, ...), and why there was none as a
//!   short code such as `no_headers` (`null` when the headers gave one); `reason_detail` is
//!   the reason's full sentence. With `"context_source":"kv"` the context was recovered from
//!   the KV fallback and `reason` says why the headers could not give it.
//! - `fallback_reason`: why the KV fallback gave no context either, as a short code such as
//!   `kv_not_found` (`null` when it was not needed, succeeded, or is off).
//!
//! A message published without a `traceparent` (e.g. with the `nats` CLI) still runs, as a
//! new trace, with `"context_source":"none"` and the reason.
//!
//! ## Lost headers and the KV fallback
//!
//! Headers do not always survive the trip: a bridge or relay may republish only the payload.
//! `--strip-headers` models that with a small tower service, `StripHeaders`, placed
//! *between* the tracing layer (and its KV fallback) and [`JetStreamPublisher`]: the job
//! reaches `jobs.resize` with no headers at all — no `traceparent`, no `Job-Id`, and no
//! `Nats-Msg-Id`, so JetStream's duplicate check is lost as well. The KV record is written by
//! the fallback layer *before* the inner service runs, from the headers the tracing layer just
//! injected, so it is unaffected, exactly as with a relay further down the line.
//!
//! The KV key must survive the same loss, so it is not a header: it is the `job_id` field of
//! the job's JSON payload (`{"job_id":"..","input":".."}`), read identically on both sides.
//!
//! ```text
//! cargo run --features kv --example job_pipeline -- --strip-headers
//!   # worker lines: "context_source":"kv","reason":"no_headers"; ends trace_ids_match=true
//! cargo run --features kv --example job_pipeline -- --strip-headers --fallback none
//!   # worker lines: "context_source":"none","reason":"no_headers"; trace_ids_match=false, exit 1
//! ```
//!
//! Role `all` also prints the fallback's counters (`kv_fallback writes=.. reads=..`) before
//! the verdict: with intact headers the worker makes no KV read at all.

#[path = "../tests/support/server.rs"]
mod server;

use std::collections::{HashMap, HashSet};
use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, AckKind};
use async_nats::{Client, ServerAddr};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use futures::StreamExt;
use nats_otel::fallback::{decode_record, KvFallbackService};
use nats_otel::{
    ContextSource, CorePublisher, ExtractionRecord, FallbackKey, HeaderExtractor,
    JetStreamPublisher, KeyInput, KvFallback, MessageContextExt, Publish, TraceContextStreamExt,
    TracePropagation, TracePropagationLayer,
};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{SpanId, SpanKind, TraceContextExt, TraceId, TracerProvider as _};
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use opentelemetry_sdk::Resource;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tower::{Layer, Service, ServiceExt};
use tracing::{info_span, Instrument, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::{EnvFilter, Layer as _};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The stream holding the jobs, and the subjects it captures.
const STREAM: &str = "JOBS";
const STREAM_SUBJECTS: &str = "jobs.>";
/// Where the API publishes jobs.
const JOB_SUBJECT: &str = "jobs.resize";
/// The worker's durable pull consumer.
const CONSUMER: &str = "worker";
/// Prefix of the core NATS subject a job's result is published on.
const RESULTS_PREFIX: &str = "results.";
/// How long the API waits for the worker's result.
const RESULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The KV bucket of the trace carrier fallback.
const FALLBACK_BUCKET: &str = "job_trace_carriers";

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("job_pipeline: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("job_pipeline: error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the chosen role; `Ok(false)` when role `all` found a trace id mismatch.
async fn run(args: Args) -> Result<bool, BoxError> {
    let telemetry = Telemetry::install(args.role)?;
    // Keep `_server` alive until the end: dropping it stops the private nats-server.
    let (client, _server) = connect_nats(args.role).await?;
    let fallback = match args.fallback {
        FallbackMode::Kv => Some(kv_fallback(&jetstream::new(client.clone())).await?),
        FallbackMode::None => None,
    };
    let publishing = JobPublishing {
        fallback: fallback.clone(),
        strip_headers: args.strip_headers,
    };

    let outcome = match args.role {
        Role::Api => serve_api(client, args.listen, publishing, ctrl_c())
            .await
            .map(|()| true),
        Role::Worker => run_worker(client, fallback, None, ctrl_c())
            .await
            .map(|()| true),
        Role::All => run_all(client, args.listen, args.jobs, publishing, &telemetry).await,
    };
    telemetry.shutdown();
    outcome
}

// ---------------------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------------------

const USAGE: &str = "\
usage: job_pipeline [--role all|api|worker] [--jobs N] [--listen ADDR]
                    [--fallback kv|none] [--strip-headers]

  --role           all (default): API + worker + a demo client in one process
                   api: the HTTP API only; worker: the JetStream worker only
  --jobs           jobs the demo client submits in role all
                   (default 5; 0 = serve until Ctrl-C)
  --listen         API address (default 127.0.0.1:0 in role all, 127.0.0.1:8080 otherwise)
  --fallback       kv (default): keep the trace carrier in the KV bucket job_trace_carriers
                   too, for messages that lose their headers; none: headers only
  --strip-headers  roles all and api: drop the job message's headers after the tracing
                   layer, as a relay forwarding only the payload would (default off)

environment: NATS_URL (else a private nats-server is started),
             OTEL_EXPORTER_OTLP_ENDPOINT (also export spans over OTLP/HTTP), RUST_LOG";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    All,
    Api,
    Worker,
}

/// Whether the trace carrier is also kept in KV, for messages that lose their headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FallbackMode {
    Kv,
    None,
}

#[derive(Debug)]
struct Args {
    role: Role,
    jobs: usize,
    listen: SocketAddr,
    fallback: FallbackMode,
    strip_headers: bool,
}

/// Parses `--name value` and `--name=value` options; `Ok(None)` for `--help`.
fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut role = Role::All;
    let mut jobs = 5;
    let mut listen = None;
    let mut fallback = FallbackMode::Kv;
    let mut strip_headers = false;
    while let Some(arg) = args.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) => (name.to_owned(), Some(value.to_owned())),
            None => (arg, None),
        };
        if name == "-h" || name == "--help" {
            return Ok(None);
        }
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match name.as_str() {
            "--role" => {
                role = match value()?.as_str() {
                    "all" => Role::All,
                    "api" => Role::Api,
                    "worker" => Role::Worker,
                    other => return Err(format!("unknown role {other:?}")),
                }
            }
            "--jobs" => {
                let v = value()?;
                jobs = v
                    .parse()
                    .map_err(|_| format!("--jobs: not a count: {v:?}"))?;
            }
            "--listen" => {
                let v = value()?;
                listen = Some(
                    v.parse()
                        .map_err(|_| format!("--listen: not an address: {v:?}"))?,
                );
            }
            "--fallback" => {
                fallback = match value()?.as_str() {
                    "kv" => FallbackMode::Kv,
                    "none" => FallbackMode::None,
                    other => return Err(format!("--fallback: {other:?} is not kv or none")),
                }
            }
            "--strip-headers" => {
                if inline.is_some() {
                    return Err("--strip-headers takes no value".into());
                }
                strip_headers = true;
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if strip_headers && role == Role::Worker {
        return Err("--strip-headers applies to the publishing side: roles all and api".into());
    }
    let listen = listen.unwrap_or_else(|| match role {
        Role::All => SocketAddr::from(([127, 0, 0, 1], 0)),
        Role::Api | Role::Worker => SocketAddr::from(([127, 0, 0, 1], 8080)),
    });
    Ok(Some(Args {
        role,
        jobs,
        listen,
        fallback,
        strip_headers,
    }))
}

/// Resolves on Ctrl-C (or never, if the signal handler cannot be installed).
async fn ctrl_c() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
    eprintln!("job_pipeline: Ctrl-C, shutting down");
}

// ---------------------------------------------------------------------------------------
// Telemetry: tracing + tracing-opentelemetry + the OpenTelemetry SDK
// ---------------------------------------------------------------------------------------

/// The tracer provider, plus the in-memory exporter that role `all` reads the tree from.
struct Telemetry {
    provider: SdkTracerProvider,
    memory: Option<InMemorySpanExporter>,
}

impl Telemetry {
    /// Installs the global `tracing` subscriber: an OpenTelemetry layer (INFO spans and up)
    /// and a log layer on stderr (stdout is kept for the worker's JSON lines).
    fn install(role: Role) -> Result<Self, BoxError> {
        let service = match role {
            Role::All => "job-pipeline",
            Role::Api => "job-pipeline-api",
            Role::Worker => "job-pipeline-worker",
        };
        let mut builder = SdkTracerProvider::builder()
            .with_resource(Resource::builder().with_service_name(service).build());
        let memory = (role == Role::All).then(InMemorySpanExporter::default);
        if let Some(memory) = &memory {
            builder = builder.with_simple_exporter(memory.clone());
        }
        if let Some(exporter) = otlp::exporter_from_env()? {
            builder = builder.with_batch_exporter(exporter);
        }
        let provider = builder.build();

        let logs = EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| EnvFilter::new("warn,job_pipeline=info"));
        let subscriber = tracing_subscriber::registry()
            .with(
                tracing_opentelemetry::layer()
                    .with_tracer(provider.tracer("job_pipeline"))
                    .with_filter(tracing_subscriber::filter::LevelFilter::INFO),
            )
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_filter(logs),
            );
        tracing::subscriber::set_global_default(subscriber)?;
        Ok(Self { provider, memory })
    }

    /// Every span finished so far (role `all` only).
    fn finished_spans(&self) -> Vec<SpanData> {
        let _ = self.provider.force_flush();
        self.memory
            .as_ref()
            .and_then(|memory| memory.get_finished_spans().ok())
            .unwrap_or_default()
    }

    /// Flushes and stops the exporters (the OTLP batch, if any).
    fn shutdown(self) {
        if let Err(error) = self.provider.shutdown() {
            tracing::warn!("shutting down the tracer provider: {error}");
        }
    }
}

/// The trace id of a span (all zeros without an OpenTelemetry layer).
fn trace_id_of(span: &Span) -> TraceId {
    span.context().span().span_context().trace_id()
}

/// Reads W3C fields from HTTP headers.
struct HttpHeaders<'a>(&'a HeaderMap);

impl Extractor for HttpHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|name| name.as_str()).collect()
    }
}

// ---------------------------------------------------------------------------------------
// NATS: connection, stream, consumer, publishers
// ---------------------------------------------------------------------------------------

/// Connects to `NATS_URL`, or starts a private nats-server when it is unset. The returned
/// server (if any) must outlive the client.
async fn connect_nats(role: Role) -> Result<(Client, Option<server::NatsServer>), BoxError> {
    let (url, server) = match std::env::var("NATS_URL").ok().filter(|url| !url.is_empty()) {
        Some(url) => (url, None),
        None => {
            let server = tokio::task::spawn_blocking(server::NatsServer::try_start)
                .await?
                .map_err(|e| format!("NATS_URL is unset and no private nats-server: {e}"))?;
            let url = server.url();
            if role != Role::All {
                eprintln!(
                    "job_pipeline: NATS_URL is unset; started a private nats-server. \
                     Point the other role at it with NATS_URL={url}"
                );
            }
            (url, Some(server))
        }
    };
    let servers = url
        .split(',')
        .map(|one| one.trim().parse::<ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("invalid NATS_URL {}: {e}", redact_credentials(&url)))?;
    let client = connect_options(&servers, role)
        .connect(servers)
        .await
        .map_err(|e| {
            format!(
                "cannot connect to NATS at {}: {e} (is a server running there? check NATS_URL)",
                redact_credentials(&url)
            )
        })?;
    Ok((client, server))
}

/// Connection options, with the credentials of a `nats://user:pass@host` or
/// `nats://token@host` URL: async-nats 0.51 parses but does not send them by itself.
fn connect_options(servers: &[ServerAddr], role: Role) -> async_nats::ConnectOptions {
    let options = async_nats::ConnectOptions::new()
        .name(format!("job_pipeline-{role:?}").to_lowercase())
        .connection_timeout(Duration::from_secs(5));
    let Some(server) = servers.iter().find(|server| server.has_user_pass()) else {
        return options;
    };
    let user = percent_decode(server.username().unwrap_or_default());
    match server.password() {
        Some(password) => options.user_and_password(user, percent_decode(password)),
        None => options.token(user),
    }
}

/// Decodes `%XX` escapes of a URL's user or password part.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes
            .get(i + 1..i + 3)
            .filter(|hex| hex.iter().all(u8::is_ascii_hexdigit))
            .and_then(|hex| u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok());
        match (bytes[i], escaped) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `nats://user:pass@host:4222` → `nats://***@host:4222`, for error messages.
fn redact_credentials(urls: &str) -> String {
    urls.split(',')
        .map(|url| match (url.find("://"), url.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}***{}", &url[..scheme + 3], &url[at..])
            }
            (None, Some(at)) => format!("***{}", &url[at..]),
            _ => url.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Creates the `JOBS` stream on `jobs.>`, or finds it.
async fn ensure_job_stream(js: &jetstream::Context) -> Result<jetstream::stream::Stream, BoxError> {
    js.get_or_create_stream(jetstream::stream::Config {
        name: STREAM.into(),
        subjects: vec![STREAM_SUBJECTS.into()],
        ..Default::default()
    })
    .await
    .map_err(|e| format!("cannot create or find the JetStream stream {STREAM}: {e}").into())
}

/// The worker's durable pull consumer on the `JOBS` stream.
async fn job_consumer(
    stream: &jetstream::stream::Stream,
) -> Result<jetstream::consumer::Consumer<pull::Config>, BoxError> {
    stream
        .get_or_create_consumer(
            CONSUMER,
            pull::Config {
                durable_name: Some(CONSUMER.into()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| format!("cannot create or find the consumer {CONSUMER}: {e}").into())
}

/// The KV fallback shared by the API and the worker: the bucket `job_trace_carriers`, keyed
/// by the `job_id` in the job's JSON payload. Not by a header: when a relay drops the
/// headers, a header-derived key is gone too.
async fn kv_fallback(js: &jetstream::Context) -> Result<KvFallback, BoxError> {
    let bucket = KvFallback::open_bucket(js, FALLBACK_BUCKET)
        .await
        .map_err(|e| format!("cannot open the KV bucket {FALLBACK_BUCKET}: {e}"))?;
    let key = FallbackKey::from_fn("payload job_id", |input: &KeyInput<'_>| {
        let job: Value = serde_json::from_slice(input.payload).ok()?;
        job.get("job_id")?.as_str().map(str::to_owned)
    });
    Ok(KvFallback::new(bucket, key))
}

/// How the API publishes jobs.
#[derive(Debug, Clone)]
struct JobPublishing {
    /// Also write each job's trace carrier to KV (`--fallback kv`).
    fallback: Option<KvFallback>,
    /// Drop the headers on the way to JetStream (`--strip-headers`).
    strip_headers: bool,
}

/// What the tracing layer wraps: JetStream, behind the header-dropping relay stand-in.
type JobSender = StripHeaders<JetStreamPublisher>;

/// Publishes jobs to JetStream: a PRODUCER span per publish, `traceparent` injected and,
/// with the KV fallback, the carrier written to KV before the job is sent.
#[derive(Clone)]
enum JobPublisher {
    WithFallback(TracePropagation<KvFallbackService<JobSender>>),
    HeadersOnly(TracePropagation<JobSender>),
}

fn job_publisher(js: jetstream::Context, publishing: JobPublishing) -> JobPublisher {
    let sender = StripHeaders::new(JetStreamPublisher::new(js), publishing.strip_headers);
    match publishing.fallback {
        Some(fallback) => JobPublisher::WithFallback(
            TracePropagationLayer::new()
                .fallback(fallback)
                .layer(sender),
        ),
        None => JobPublisher::HeadersOnly(TracePropagationLayer::new().layer(sender)),
    }
}

impl JobPublisher {
    /// Publishes `message` and waits for the JetStream ack.
    async fn publish(&self, message: Publish) -> Result<jetstream::publish::PublishAck, BoxError> {
        match self.clone() {
            // `FallbackError::Publish` is JetStream's error; `KvWrite` only comes with
            // `WriteFailure::Required` (here a failed write is logged and the job still sent).
            Self::WithFallback(mut service) => Ok(service.ready().await?.call(message).await?),
            Self::HeadersOnly(mut service) => Ok(service.ready().await?.call(message).await?),
        }
    }
}

/// A stand-in for a relay that forwards only the payload: when enabled, it sends each
/// message on with no headers at all. Placed under the tracing layer, it drops what the
/// layer injected, after the KV fallback has written its record from those headers.
#[derive(Debug, Clone)]
struct StripHeaders<S> {
    inner: S,
    enabled: bool,
}

impl<S> StripHeaders<S> {
    fn new(inner: S, enabled: bool) -> Self {
        Self { inner, enabled }
    }
}

impl<S: Service<Publish>> Service<Publish> for StripHeaders<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, message: Publish) -> Self::Future {
        if !self.enabled {
            return self.inner.call(message);
        }
        let parts = message.into_parts();
        let mut stripped = Publish::new(parts.subject, parts.payload);
        if let Some(reply) = parts.reply {
            stripped = stripped.reply(reply);
        }
        self.inner.call(stripped)
    }
}

/// Publishes results on core NATS, traced the same way.
type ResultPublisher = TracePropagation<CorePublisher>;

fn result_publisher(client: Client) -> ResultPublisher {
    TracePropagationLayer::new().layer(CorePublisher::new(client))
}

fn result_subject(job_id: &str) -> String {
    format!("{RESULTS_PREFIX}{job_id}")
}

// ---------------------------------------------------------------------------------------
// The job and its result, as they travel
// ---------------------------------------------------------------------------------------

/// A job: the message payload on `jobs.resize`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Job {
    job_id: String,
    input: String,
}

/// What `POST /jobs` accepts.
#[derive(Debug, Deserialize)]
struct JobRequest {
    job_id: Option<String>,
    input: String,
}

/// What the worker publishes on `results.<job_id>`.
#[derive(Debug, Serialize, Deserialize)]
struct JobResult {
    job_id: String,
    status: String,
    output: Option<String>,
    error: Option<String>,
    /// The worker's `handle_job` trace id.
    trace_id: String,
}

/// Job ids end up in a subject token and a header: keep them to `[A-Za-z0-9_-]{1,64}`.
fn check_job_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "job_id {id:?} must be 1 to 64 characters from A-Z a-z 0-9 - _"
        ))
    }
}

fn parse_job_request(body: &[u8]) -> Result<Job, String> {
    let request: JobRequest =
        serde_json::from_slice(body).map_err(|e| format!("invalid job JSON: {e}"))?;
    let job_id = match request.job_id {
        Some(id) => {
            check_job_id(&id)?;
            id
        }
        None => format!("job-{}", nuid::next()),
    };
    Ok(Job {
        job_id,
        input: request.input,
    })
}

// ---------------------------------------------------------------------------------------
// API role
// ---------------------------------------------------------------------------------------

#[derive(Clone)]
struct Api {
    client: Client,
    jobs: JobPublisher,
}

/// Serves `POST /jobs` on `listen` until `shutdown` resolves.
async fn serve_api(
    client: Client,
    listen: SocketAddr,
    publishing: JobPublishing,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), BoxError> {
    let listener = bind_api(listen).await?;
    run_api(client, listener, publishing, shutdown).await
}

async fn bind_api(listen: SocketAddr) -> Result<tokio::net::TcpListener, BoxError> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    tracing::info!("API listening on http://{}", listener.local_addr()?);
    Ok(listener)
}

async fn run_api(
    client: Client,
    listener: tokio::net::TcpListener,
    publishing: JobPublishing,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
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
    let parent = TraceContextPropagator::new().extract(&HttpHeaders(&headers));
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
            (
                status,
                Json(json!({ "error": message, "trace_id": trace_id })),
            )
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
    async fn publish(&self, job: &Job) -> Result<jetstream::publish::PublishAck, BoxError> {
        let message = Publish::new(JOB_SUBJECT, serde_json::to_vec(job)?)
            .header("Job-Id", &job.job_id)?
            .header("Nats-Msg-Id", &job.job_id)?;
        self.jobs.publish(message).await
    }
}

// ---------------------------------------------------------------------------------------
// Worker role
// ---------------------------------------------------------------------------------------

/// What the worker reports for each finished job (printed as one JSON line).
#[derive(Debug, Clone)]
struct JobDone {
    job_id: String,
    status: String,
    trace_id: TraceId,
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
        let reason = self.record.as_ref().and_then(ExtractionRecord::reason);
        let fallback_reason = self
            .record
            .as_ref()
            .and_then(ExtractionRecord::fallback_reason);
        let line = Line {
            event: "job_done",
            job_id: &self.job_id,
            status: &self.status,
            trace_id: self.trace_id.to_string(),
            parent_span_id: self.parent_span_id.map(|id| id.to_string()),
            process_span_id: self.process_span_id.to_string(),
            context_source: self.record.as_ref().map(|r| r.source().as_str()),
            reason: reason.map(|r| r.as_str()),
            reason_detail: reason.map(|r| r.to_string()),
            fallback_reason: fallback_reason.map(|r| r.as_str()),
        };
        serde_json::to_string(&line).unwrap_or_default()
    }
}

/// Consumes jobs until `shutdown` resolves; each finished job is printed and, when `done`
/// is given, also sent there. With `fallback`, a job whose headers give no context gets it
/// from KV.
async fn run_worker(
    client: Client,
    fallback: Option<KvFallback>,
    done: Option<mpsc::UnboundedSender<JobDone>>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), BoxError> {
    let js = jetstream::new(client.clone());
    let stream = ensure_job_stream(&js).await?;
    let consumer = job_consumer(&stream).await?;
    let results = result_publisher(client);

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
        let finished = handle_message(message, cx, results.clone(), fallback.as_ref()).await;
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
    fallback: Option<&KvFallback>,
) -> JobDone {
    // Create the span, make it a child of the message's context, then instrument.
    let span = info_span!("handle_job", job_id = tracing::field::Empty);
    let span = match cx.handler_span(span) {
        Ok(span) => span,
        Err(error) => {
            tracing::warn!("handle_job starts a new trace: {error}");
            error.into_span()
        }
    };
    let trace_id = trace_id_of(&span);
    let result = process_job(&message, trace_id, results)
        .instrument(span)
        .await;

    let record = cx.extraction().cloned();
    JobDone {
        parent_span_id: remote_parent_span_id(&message, record.as_ref(), fallback).await,
        process_span_id: cx.span().span_context().span_id(),
        job_id: result.job_id,
        status: result.status,
        trace_id,
        record,
    }
    // `cx` drops here, ending the `process` span.
}

/// The span id of the `traceparent` the message's context came from: its headers, or its
/// KV fallback record (read again here, for the report only).
async fn remote_parent_span_id(
    message: &jetstream::Message,
    record: Option<&ExtractionRecord>,
    fallback: Option<&KvFallback>,
) -> Option<SpanId> {
    let propagator = TraceContextPropagator::new();
    let remote = match record?.source() {
        ContextSource::Headers => {
            let headers = message.headers.as_ref()?;
            propagator.extract(&HeaderExtractor::new(headers))
        }
        ContextSource::Kv => {
            let fallback = fallback?;
            let input = KeyInput::new(
                message.subject.as_str(),
                message.headers.as_ref(),
                &message.payload,
            );
            let key = fallback.key().derive(&input).ok()?;
            let entry = fallback.store().get(key).await.ok()??;
            let carrier = decode_record(&entry).ok()?;
            propagator.extract(&carrier)
        }
        _ => return None,
    };
    let span_context = remote.span().span_context().clone();
    span_context.is_valid().then(|| span_context.span_id())
}

/// The work: decode, resize, ack, publish the result.
async fn process_job(
    message: &jetstream::Message,
    trace_id: TraceId,
    mut results: ResultPublisher,
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

    let result = match decoded {
        Ok(job) => {
            let output = resize(&job.input)
                .instrument(info_span!("resize", input = %job.input))
                .await;
            ack(message, AckKind::Ack).await;
            JobResult {
                job_id,
                status: "done".into(),
                output: Some(output),
                error: None,
                trace_id: trace_id.to_string(),
            }
        }
        Err(error) => {
            // A payload that cannot be decoded will never succeed: do not redeliver it.
            tracing::warn!("undecodable job: {error}");
            ack(message, AckKind::Term).await;
            JobResult {
                job_id,
                status: "failed".into(),
                output: None,
                error: Some(format!("undecodable job: {error}")),
                trace_id: trace_id.to_string(),
            }
        }
    };
    publish_result(&mut results, &result).await;
    result
}

/// Publishes `result` on `results.<job_id>`, where the API waits for it.
async fn publish_result(results: &mut ResultPublisher, result: &JobResult) {
    if let Err(error) = check_job_id(&result.job_id) {
        tracing::warn!("result not published: {error}");
        return;
    }
    let sent = match serde_json::to_vec(result) {
        Ok(payload) => {
            let publish = Publish::new(result_subject(&result.job_id), payload);
            match results.ready().await {
                Ok(service) => service.call(publish).await.map_err(BoxError::from),
                Err(error) => Err(error.into()),
            }
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

async fn ack(message: &jetstream::Message, kind: AckKind) {
    if let Err(error) = message.ack_with(kind).await {
        tracing::warn!("ack failed: {error}");
    }
}

// ---------------------------------------------------------------------------------------
// Role all: API + worker + a demo client, then the check
// ---------------------------------------------------------------------------------------

/// One job as the demo client saw it.
struct Submitted {
    input: String,
    client_trace_id: TraceId,
    /// The job id from the API's answer; `None` when the request failed.
    job_id: Option<String>,
}

async fn run_all(
    client: Client,
    listen: SocketAddr,
    jobs: usize,
    publishing: JobPublishing,
    telemetry: &Telemetry,
) -> Result<bool, BoxError> {
    let fallback = publishing.fallback.clone();
    let listener = bind_api(listen).await?;
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
        (
            "API",
            run_api(api_client, listener, publishing, stopped).await,
        )
    });
    let worker_fallback = fallback.clone();
    tasks.spawn(async move {
        let stopped = async {
            let _ = worker_stopped.await;
        };
        let done = Some(done_tx);
        (
            "worker",
            run_worker(client, worker_fallback, done, stopped).await,
        )
    });

    let outcome = tokio::select! {
        () = ctrl_c() => if jobs == 0 { Ok(true) } else { Err("interrupted".into()) },
        result = demo(api_addr, jobs, &mut done_rx, fallback.as_ref(), telemetry),
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
/// the KV fallback's counters and the verdict line. `Ok(true)` when every job stayed in its
/// client's trace.
async fn demo(
    api: SocketAddr,
    jobs: usize,
    done: &mut mpsc::UnboundedReceiver<JobDone>,
    fallback: Option<&KvFallback>,
    telemetry: &Telemetry,
) -> Result<bool, BoxError> {
    let mut submitted = Vec::with_capacity(jobs);
    for i in 1..=jobs {
        submitted.push(submit_demo_job(api, format!("photo-{i}.png")).await);
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
        println!();
        print_trace_tree(&telemetry.finished_spans(), first.client_trace_id);
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
async fn submit_demo_job(api: SocketAddr, input: String) -> Submitted {
    let span = info_span!(parent: None, "submit job", otel.kind = "client", input = %input);
    let client_trace_id = trace_id_of(&span);
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    let headers: Vec<(String, String)> = carrier
        .into_iter()
        .chain([("Content-Type".to_owned(), "application/json".to_owned())])
        .collect();
    let body = json!({ "input": input }).to_string().into_bytes();

    let response = tokio::task::spawn_blocking(move || {
        http1::post(
            &api.to_string(),
            "/jobs",
            &headers,
            &body,
            RESULT_TIMEOUT * 2,
        )
    })
    .instrument(span)
    .await;
    let job_id = match response {
        Ok(Ok((200, body))) => serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v.get("job_id")?.as_str().map(str::to_owned)),
        Ok(Ok((status, body))) => {
            let body = String::from_utf8_lossy(&body);
            tracing::warn!("POST /jobs for {input}: HTTP {status}: {body}");
            None
        }
        Ok(Err(error)) => {
            tracing::warn!("POST /jobs for {input}: {error}");
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

/// Prints the spans of one trace as an indented tree: name, kind, duration, and whether
/// the parent was remote (the context crossed HTTP or NATS to get there).
fn print_trace_tree(spans: &[SpanData], trace_id: TraceId) {
    let spans: Vec<&SpanData> = spans
        .iter()
        .filter(|span| span.span_context.trace_id() == trace_id)
        .collect();
    println!("trace {trace_id} ({} spans):", spans.len());
    let ids: HashSet<SpanId> = spans.iter().map(|s| s.span_context.span_id()).collect();
    let mut roots: Vec<&SpanData> = spans
        .iter()
        .copied()
        .filter(|span| !ids.contains(&span.parent_span_id))
        .collect();
    roots.sort_by_key(|span| span.start_time);
    for root in roots {
        print_span(root, &spans, 1);
    }
}

fn print_span(span: &SpanData, spans: &[&SpanData], depth: usize) {
    let duration = span
        .end_time
        .duration_since(span.start_time)
        .unwrap_or_default();
    let kind = match span.span_kind {
        SpanKind::Client => "client",
        SpanKind::Server => "server",
        SpanKind::Producer => "producer",
        SpanKind::Consumer => "consumer",
        SpanKind::Internal => "internal",
    };
    println!(
        "{:indent$}{} [{kind}] {:.2} ms{}",
        "",
        span.name,
        duration.as_secs_f64() * 1000.0,
        if span.parent_span_is_remote {
            "  (remote parent)"
        } else {
            ""
        },
        indent = depth * 2,
    );
    let mut children: Vec<&SpanData> = spans
        .iter()
        .copied()
        .filter(|child| child.parent_span_id == span.span_context.span_id())
        .collect();
    children.sort_by_key(|child| child.start_time);
    for child in children {
        print_span(child, spans, depth + 1);
    }
}

// ---------------------------------------------------------------------------------------
// A minimal HTTP client, for the demo client and the OTLP exporter
// ---------------------------------------------------------------------------------------

/// A deliberately small, blocking HTTP client: one `POST` per connection over HTTP/1.0,
/// plain `http://` only. HTTP/1.0 makes the server close the connection after a response
/// with no chunked encoding, so reading to the end is all the parsing needed. It keeps an
/// HTTP client crate (and TLS) out of this example's build.
mod http1 {
    use std::io::{self, Read, Write};
    use std::net::{TcpStream, ToSocketAddrs};
    use std::time::Duration;

    /// Sends `body` to `http://{authority}{path}`; returns the status code and body.
    pub fn post(
        authority: &str,
        path: &str,
        headers: &[(String, String)],
        body: &[u8],
        timeout: Duration,
    ) -> io::Result<(u16, Vec<u8>)> {
        let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
        let addr = authority
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| invalid("the host name resolved to no address"))?;
        let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;

        let mut head = format!(
            "POST {path} HTTP/1.0\r\nHost: {authority}\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (name, value) in headers {
            if name.contains(['\r', '\n', ':']) || value.contains(['\r', '\n']) {
                return Err(invalid("header with a line break or colon in its name"));
            }
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes())?;
        stream.write_all(body)?;

        let mut response = Vec::new();
        stream.read_to_end(&mut response)?;
        let end = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| invalid("response without a header/body separator"))?;
        let status = std::str::from_utf8(&response[..end])
            .ok()
            .and_then(|head| head.split_whitespace().nth(1)?.parse().ok())
            .ok_or_else(|| invalid("response without a status code"))?;
        Ok((status, response.split_off(end + 4)))
    }
}

// ---------------------------------------------------------------------------------------
// OTLP export
// ---------------------------------------------------------------------------------------

/// OTLP/HTTP (protobuf) export when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, e.g. to `http://127.0.0.1:4318`.
///
/// The exporter runs in the SDK's batch processor thread, outside the tokio runtime, so it
/// gets the blocking [`http1`] client above (through `opentelemetry_http::HttpClient`)
/// rather than an async one. That client speaks plain `http://` only: send to a local
/// collector.
mod otlp {
    use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
    use opentelemetry_otlp::{SpanExporter, WithExportConfig as _, WithHttpConfig};
    use std::time::Duration;

    use super::BoxError;

    const ENDPOINT_VARS: [&str; 2] = [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ];

    pub(super) fn exporter_from_env() -> Result<Option<SpanExporter>, BoxError> {
        let Some((var, endpoint)) = ENDPOINT_VARS.iter().find_map(|var| {
            let value = std::env::var(var).ok().filter(|v| !v.is_empty())?;
            Some((var, value))
        }) else {
            return Ok(None);
        };
        if !endpoint.starts_with("http://") {
            return Err(format!(
                "{var}={endpoint}: this example's OTLP client speaks plain http:// only"
            )
            .into());
        }
        let exporter = SpanExporter::builder()
            .with_http()
            .with_http_client(PlainHttp)
            .with_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| format!("{var}={endpoint}: cannot build the OTLP exporter: {e}"))?;
        eprintln!("job_pipeline: exporting spans over OTLP/HTTP to {endpoint}");
        Ok(Some(exporter))
    }

    /// [`super::http1`] as an OpenTelemetry HTTP client.
    #[derive(Debug)]
    struct PlainHttp;

    #[async_trait::async_trait]
    impl HttpClient for PlainHttp {
        async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
            let uri = request.uri();
            if uri.scheme_str() != Some("http") {
                return Err(format!("{uri}: only http:// is supported").into());
            }
            let host = uri.host().ok_or_else(|| format!("{uri}: no host"))?;
            let authority = format!("{host}:{}", uri.port_u16().unwrap_or(80));
            let path = uri.path_and_query().map_or("/", |p| p.as_str());
            let headers: Vec<(String, String)> = request
                .headers()
                .iter()
                .filter_map(|(name, value)| {
                    Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
                })
                .collect();
            let (status, body) = super::http1::post(
                &authority,
                path,
                &headers,
                request.body(),
                Duration::from_secs(10),
            )?;
            Ok(Response::builder().status(status).body(Bytes::from(body))?)
        }
    }
}
