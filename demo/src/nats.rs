//! NATS: the connection (or a private server), the stream, the consumer, the KV fallback and
//! the traced publishers.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, publish::PublishAck};
use async_nats::{Client, ServerAddr};
use nats_otel::hops::{HopsSettings, ServerHops};
use nats_otel::{
    consume::MessageMeta, fallback::FallbackKey, publish::TracePropagation, CorePublisher,
    JetStreamPublisher, KvFallback, Publish, TracePropagationLayer,
};
use nats_server_harness::NatsServer;
use percent_encoding::percent_decode_str;
use serde_json::Value;
use tower::util::BoxCloneSyncService;
use tower::{Layer as _, ServiceExt as _};

use crate::job::{CONSUMER, STREAM, STREAM_SUBJECTS};
use crate::{BoxError, Role};

/// The KV bucket of the trace carrier fallback.
const FALLBACK_BUCKET: &str = "job_trace_carriers";

/// Connects to `NATS_URL`, or starts a private nats-server when it is unset. The returned
/// server (if any) must outlive the client.
pub(crate) async fn connect(role: Role) -> Result<(Client, Option<NatsServer>), BoxError> {
    let (url, server) = match std::env::var("NATS_URL").ok().filter(|url| !url.is_empty()) {
        Some(url) => (url, None),
        None => {
            let server = tokio::task::spawn_blocking(|| {
                NatsServer::builder().server_name("demo-nats").try_start()
            })
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
    // Error messages show servers without their credentials.
    let servers = url
        .split(',')
        .map(|one| one.trim().parse::<ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("invalid NATS_URL (credentials not shown): {e}"))?;
    let shown: Vec<String> = servers
        .iter()
        .map(|s| format!("{}://{}:{}", s.scheme(), s.host(), s.port()))
        .collect();
    let client = connect_options(&servers, role)
        .connect(servers)
        .await
        .map_err(|e| {
            format!(
                "cannot connect to NATS at {}: {e} (is a server running there? check NATS_URL)",
                shown.join(",")
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
    // The URL keeps them percent-encoded.
    let decode = |text: &str| percent_decode_str(text).decode_utf8_lossy().into_owned();
    let user = decode(server.username().unwrap_or_default());
    match server.password() {
        Some(password) => options.user_and_password(user, decode(password)),
        None => options.token(user),
    }
}

/// Creates the `JOBS` stream on `jobs.>`, or finds it.
pub(crate) async fn ensure_job_stream(
    js: &jetstream::Context,
) -> Result<jetstream::stream::Stream, BoxError> {
    js.get_or_create_stream(jetstream::stream::Config {
        name: STREAM.into(),
        subjects: vec![STREAM_SUBJECTS.into()],
        ..Default::default()
    })
    .await
    .map_err(|e| format!("cannot create or find the JetStream stream {STREAM}: {e}").into())
}

/// The worker's durable pull consumer on the `JOBS` stream.
pub(crate) async fn job_consumer(
    stream: &jetstream::stream::Stream,
) -> Result<jetstream::consumer::Consumer<pull::Config>, BoxError> {
    let config = pull::Config {
        durable_name: Some(CONSUMER.into()),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ..Default::default()
    };
    stream
        .get_or_create_consumer(CONSUMER, config)
        .await
        .map_err(|e| format!("cannot create or find the consumer {CONSUMER}: {e}").into())
}

/// The KV fallback shared by the API and the worker: the bucket `job_trace_carriers`, keyed
/// by the `job_id` in the job's JSON payload. Not by a header: when a relay drops the
/// headers, a header-derived key is gone too.
pub(crate) async fn kv_fallback(js: &jetstream::Context) -> Result<KvFallback, BoxError> {
    let bucket = KvFallback::open_bucket(js, FALLBACK_BUCKET)
        .await
        .map_err(|e| format!("cannot open the KV bucket {FALLBACK_BUCKET}: {e}"))?;
    let key = FallbackKey::from_fn("payload job_id", |input: &MessageMeta<'_>| {
        let job: Value = serde_json::from_slice(input.payload).ok()?;
        job.get("job_id")?.as_str().map(str::to_owned)
    });
    Ok(KvFallback::new(bucket, key).batch_reads(js.clone()))
}

/// How the API publishes jobs.
#[derive(Debug, Clone)]
pub(crate) struct JobPublishing {
    /// Also write each job's trace carrier to KV (`--fallback kv`).
    pub(crate) fallback: Option<KvFallback>,
    /// Drop the headers on the way to JetStream (`--strip-headers`).
    pub(crate) strip_headers: bool,
    /// Ask the servers to report each job's path (`--server-hops`).
    pub(crate) hops: Option<HopsSettings>,
}

/// Publishes jobs to JetStream and waits for the ack: a PRODUCER span per publish,
/// `traceparent` injected and, with the KV fallback, the carrier written to KV before the
/// job is sent.
pub(crate) type JobPublisher = BoxCloneSyncService<Publish, PublishAck, BoxError>;

pub(crate) fn job_publisher(js: jetstream::Context, publishing: JobPublishing) -> JobPublisher {
    // Below the tracing layer (and its KV write): a stand-in for a relay that forwards only
    // the payload.
    let relay: fn(Publish) -> Publish = if publishing.strip_headers {
        strip_headers
    } else {
        std::convert::identity
    };
    let sender = JetStreamPublisher::new(js).map_request(relay);
    let mut layer = TracePropagationLayer::new();
    if let Some(hops) = publishing.hops {
        layer = layer.server_hops(hops, 1.0);
    }
    // `Error::KvWrite` only comes with `WritePolicy::Required`: here a failed write is
    // logged and the job still sent.
    if let Some(fallback) = publishing.fallback {
        layer = layer.fallback(fallback);
    }
    BoxCloneSyncService::new(layer.layer(sender).map_err(BoxError::from))
}

/// The message with its subject, payload and reply subject only.
fn strip_headers(message: Publish) -> Publish {
    let parts = message.into_parts();
    let stripped = Publish::new(parts.subject, parts.payload);
    match parts.reply {
        Some(reply) => stripped.reply(reply),
        None => stripped,
    }
}

/// Publishes results on core NATS, traced the same way.
pub(crate) type ResultPublisher = TracePropagation<CorePublisher>;

pub(crate) fn result_publisher(client: Client, hops: Option<HopsSettings>) -> ResultPublisher {
    let mut layer = TracePropagationLayer::new();
    if let Some(hops) = hops {
        layer = layer.server_hops(hops, 1.0);
    }
    layer.layer(CorePublisher::new(client))
}

/// Starts the bridge that turns the servers' message-trace events into spans
/// (`--server-hops`); on a server that cannot trace safely it stays off and says why.
pub(crate) async fn server_hops(
    client: &Client,
    tracer: opentelemetry_sdk::trace::SdkTracer,
) -> Result<ServerHops, BoxError> {
    let hops = ServerHops::spawn(client.clone(), "job_pipeline.hops", tracer).await?;
    match hops.disabled_reason() {
        Some(reason) => tracing::warn!("server hops off: {reason}"),
        None => tracing::info!("server hops on: the servers report each job's path"),
    }
    Ok(hops)
}
