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
//! - **API** (`--role api`, [`api`]): `POST /jobs` with a JSON body `{"input": "..."}`
//!   (optionally `"job_id"`; the API assigns one otherwise). The request span continues the
//!   caller's trace from its W3C `traceparent` HTTP header. The job is published through
//!   `TracePropagationLayer` + `JetStreamPublisher` to the stream `JOBS` (subjects `jobs.>`)
//!   with headers `Job-Id` and `Nats-Msg-Id` (the job id, so a resubmitted id is rejected as a
//!   duplicate with 409). The API subscribes to `results.<job_id>` *before* publishing and
//!   answers with the worker's result and the request's trace id, or 504 after 10 s. With the
//!   KV fallback (`--fallback kv`, the default) the layer is
//!   `TracePropagationLayer::new().fallback(..)`: it also writes each job's trace carrier to
//!   the KV bucket `job_trace_carriers` before the job is sent.
//! - **Worker** (`--role worker`, [`worker`]): a durable pull consumer `worker` read with
//!   `messages().await?.with_trace_context()` (plus `.fallback(..)` with the KV fallback,
//!   which looks the carrier up only when a message's headers give no context). Each job runs
//!   in a `handle_job` span made a child of the message's context with
//!   `MessageContextExt::handler_span`, does its work in `decode` and `resize` child spans,
//!   acks, publishes the result to `results.<job_id>` and prints one JSON line on stdout.
//! - **All** (`--role all`, the default, [`client`]): API and worker in one process, plus a
//!   client that submits `--jobs N` jobs to the API over HTTP, each from its own root span
//!   whose `traceparent` travels in the HTTP header. It then prints the trace tree of the
//!   first job ([`tree`]) and ends with `trace_ids_match=<true|false> jobs=<N>`; `true` means
//!   every worker `handle_job` span is in the same trace as the client span that submitted
//!   the job. The exit code is non-zero when it is `false`.
//!
//! ## Run it
//!
//! ```text
//! cargo xtask demo                                  # = the next line, with the pinned server
//! cargo run -p nats-otel-demo -- --role all --jobs 5
//! ```
//!
//! As separate processes against one JetStream-enabled server (`nats-server -js`; or start
//! `--role api` without `NATS_URL`: it starts a private server and prints its URL):
//!
//! ```text
//! export NATS_URL=nats://127.0.0.1:4222
//! cargo run -p nats-otel-demo -- --role worker &
//! cargo run -p nats-otel-demo -- --role api --listen 127.0.0.1:8080 &
//! curl -s -X POST 127.0.0.1:8080/jobs -H 'content-type: application/json' \
//!   -H 'traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01' \
//!   -d '{"input": "cat.png"}'
//! ```
//!
//! The worker's line for that job carries `"trace_id":"4bf92f3577b34da6a3ce929d0e0e4736"`.
//!
//! ## Environment
//!
//! - `NATS_URL`: the server (or comma-separated servers). Credentials in the URL
//!   (`nats://user:pass@host:4222`, `nats://token@host:4222`) are passed on explicitly, as
//!   async-nats 0.51 parses them but does not send them. Unset: a private nats-server is
//!   started (the workspace's `nats-server-harness` crate), found through `NATS_SERVER_BIN`,
//!   `target/nats-server/<version>/bin/nats-server` or `PATH`.
//! - `OTEL_EXPORTER_OTLP_ENDPOINT` (e.g. `http://127.0.0.1:4318`): also export spans over
//!   OTLP/HTTP (protobuf, plain `http://` only).
//! - `RUST_LOG`: log filter for stderr (default `warn,job_pipeline=info`).
//!
//! ## The worker's stdout line
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
//! - `process_span_id`: the direct parent of `handle_job`, the crate's CONSUMER `process` span.
//! - `context_source`, `reason`, `reason_detail`: from the `ExtractionRecord`: where the
//!   context came from (`headers`, `kv`, `none`) and, when not from the headers, why
//!   (`no_headers` ...). `fallback_reason`: why the KV fallback gave no context either.
//!
//! ## Lost headers and the KV fallback
//!
//! `--strip-headers` drops every header of the job message *below* the tracing layer and its
//! KV fallback, as a relay forwarding only the payload would: the KV record is written from
//! the injected headers first, then the job reaches `jobs.resize` with no headers at all (no
//! `Nats-Msg-Id` either, so JetStream's duplicate check is lost too). The KV key must survive
//! the same loss, so it is the `job_id` field of the job's JSON payload.
//!
//! ```text
//! cargo run -p nats-otel-demo -- --strip-headers
//!   # worker lines: "context_source":"kv","reason":"no_headers"; ends trace_ids_match=true
//! cargo run -p nats-otel-demo -- --strip-headers --fallback none
//!   # worker lines: "context_source":"none","reason":"no_headers"; trace_ids_match=false, exit 1
//! ```
//!
//! Role `all` also prints the fallback's counters (`kv_fallback writes=.. reads=..`) before
//! the verdict: with intact headers the worker makes no KV read at all.

mod api;
mod client;
mod job;
mod nats;
mod telemetry;
mod tree;
mod worker;

use std::net::SocketAddr;
use std::process::ExitCode;

use async_nats::jetstream;
use clap::{Parser, ValueEnum};

use crate::nats::JobPublishing;
use crate::telemetry::Telemetry;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One trace from an HTTP request, through JetStream, to a worker.
///
/// Environment: NATS_URL (else a private nats-server is started),
/// OTEL_EXPORTER_OTLP_ENDPOINT (also export spans over OTLP/HTTP), RUST_LOG.
#[derive(Debug, Parser)]
#[command(name = "job_pipeline", args_override_self = true)]
struct Args {
    /// all: API + worker + a demo client in one process; api: the HTTP API only;
    /// worker: the JetStream worker only.
    #[arg(long, value_enum, default_value_t = Role::All)]
    role: Role,
    /// Jobs the demo client submits in role all (0 = serve until Ctrl-C).
    #[arg(long, default_value_t = 5)]
    jobs: usize,
    /// API address [default: 127.0.0.1:0 in role all, 127.0.0.1:8080 otherwise].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// kv: keep the trace carrier in the KV bucket job_trace_carriers too, for messages that
    /// lose their headers; none: headers only. Give both sides the same value.
    #[arg(long, value_enum, default_value_t = FallbackMode::Kv)]
    fallback: FallbackMode,
    /// Roles all and api: drop the job message's headers after the tracing layer, as a relay
    /// forwarding only the payload would.
    #[arg(long)]
    strip_headers: bool,
    /// Trace each job through the NATS servers too (nats-server message tracing, 2.12.12,
    /// 2.14 or later): one `nats-server …` span per server between `publish` and `process`.
    #[arg(long)]
    server_hops: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Role {
    All,
    Api,
    Worker,
}

/// Whether the trace carrier is also kept in KV, for messages that lose their headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum FallbackMode {
    Kv,
    None,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if args.strip_headers && args.role == Role::Worker {
        use clap::CommandFactory as _;
        Args::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                "--strip-headers applies to the publishing side: roles all and api",
            )
            .exit();
    }
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
    let (client, _server) = nats::connect(args.role).await?;
    let fallback = match args.fallback {
        FallbackMode::Kv => Some(nats::kv_fallback(&jetstream::new(client.clone())).await?),
        FallbackMode::None => None,
    };
    // Keep `_hops` alive until the end: dropping it stops the bridge.
    let _hops = match args.server_hops {
        true => Some(nats::server_hops(&client, telemetry.tracer()).await?),
        false => None,
    };
    let hops = _hops.as_ref().map(|h| h.publish_settings());
    let publishing = JobPublishing {
        fallback: fallback.clone(),
        strip_headers: args.strip_headers,
        hops: hops.clone(),
    };
    let listen = args.listen.unwrap_or_else(|| match args.role {
        Role::All => SocketAddr::from(([127, 0, 0, 1], 0)),
        Role::Api | Role::Worker => SocketAddr::from(([127, 0, 0, 1], 8080)),
    });

    let outcome = match args.role {
        Role::Api => api::serve(client, listen, publishing, ctrl_c())
            .await
            .map(|()| true),
        Role::Worker => worker::run(client, fallback, None, hops, ctrl_c())
            .await
            .map(|()| true),
        Role::All => client::run_all(client, listen, args.jobs, publishing, &telemetry).await,
    };
    telemetry.shutdown();
    outcome
}

/// Resolves on Ctrl-C (or never, if the signal handler cannot be installed).
async fn ctrl_c() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
    eprintln!("job_pipeline: Ctrl-C, shutting down");
}
