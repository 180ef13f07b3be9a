//! `nats-otel`: find out where OpenTelemetry trace context breaks on its way
//! across NATS.
//!
//! - `nats-otel doctor` publishes a probe with a known trace context through
//!   the crate's publish layer, consumes it (core NATS and, with `--stream`,
//!   JetStream) and gives a verdict per step: injected, arrived with which
//!   headers, extracted, same trace; with `--hops`, the servers' message
//!   traces show the probe's path and the hop where its headers were lost.
//! - `nats-otel inspect` tails messages without acknowledging them and
//!   prints, per message, its headers, whether its `traceparent` is valid,
//!   its trace id and where a consumer's context would come from.
//!
//! Exit codes: 0 healthy, 1 broken, 2 usage or connection error.

mod analysis;
mod doctor;
mod inspect;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Exit code: everything checked is healthy.
pub(crate) const EXIT_HEALTHY: u8 = 0;
/// Exit code: trace context is broken somewhere.
pub(crate) const EXIT_BROKEN: u8 = 1;
/// Exit code: bad arguments, or the server or stream could not be used.
pub(crate) const EXIT_ERROR: u8 = 2;

const DEFAULT_SERVER: &str = "nats://127.0.0.1:4222";

#[derive(Debug, Parser)]
#[command(
    name = "nats-otel",
    version,
    about = "Find out where OpenTelemetry trace context breaks on its way across NATS",
    after_help = "Exit codes: 0 healthy, 1 broken, 2 usage or connection error."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Publish a probe with a known trace context, consume it and name the
    /// first step that breaks propagation.
    #[command(after_help = DOCTOR_HELP)]
    Doctor(doctor::DoctorArgs),
    /// Tail messages (without acknowledging them) and print one line per
    /// message: subject, headers, traceparent validity, trace id, and where
    /// the context would come from.
    #[command(after_help = INSPECT_HELP)]
    Inspect(inspect::InspectArgs),
}

const DOCTOR_HELP: &str = "\
Steps: server (headers supported?), inject (traceparent written?), publish, hops (with
--hops: through which servers, and where were the trace headers lost?), then per path
(core, and jetstream with --stream): transit (arrived? with which headers?), extract
(where did the consumer's context come from?), trace (same trace id?).

To check your real path, publish with --subject where your producer side publishes and
consume with --listen where your relay, bridge or republisher delivers:
  nats-otel doctor --subject orders.in --listen orders.out --stream ORDERS

With --hops, the probe also carries Nats-Trace-Dest (nats-server message tracing, used only
with nats-server 2.12.12 or later; with older servers the hops step says why it is
skipped). Every server the probe crosses reports, and the hops step lists the path hop by
hop (server, ingress, the trace headers there compared with what was sent, JetStream
store, egresses) and names the hop where the trace headers were lost, e.g. the client
connection and subscription of a relay. When the consumer is behind a leafnode, gateway
or route, expect the probe there with --listen-server:
  nats-otel doctor --server nats://leaf:4222 --subject ingress.orders \\
    --listen jobs.orders --listen-server nats://hub:4222 --hops

Exit codes: 0 healthy (warnings allowed), 1 broken, 2 usage or connection error.";

const INSPECT_HELP: &str = "\
Examples:
  nats-otel inspect --subject 'jobs.>'
  nats-otel inspect --stream JOBS --consumer worker --count 20 --timeout 2
  nats-otel inspect --stream JOBS --all --json

Exit codes: 0 every inspected message carries a context, 1 at least one would start a
new trace, 2 usage or connection error.";

/// Where to connect; shared by the subcommands.
#[derive(Debug, Clone, Args)]
pub(crate) struct ServerArgs {
    /// NATS server URL [default: $NATS_URL, else nats://127.0.0.1:4222].
    #[arg(long, short = 's', value_name = "URL")]
    pub(crate) server: Option<String>,
}

impl ServerArgs {
    pub(crate) fn url(&self) -> String {
        self.server
            .clone()
            .or_else(|| std::env::var("NATS_URL").ok().filter(|u| !u.is_empty()))
            .unwrap_or_else(|| DEFAULT_SERVER.to_owned())
    }

    /// Connects, failing fast when the server is not there.
    pub(crate) async fn connect(&self) -> Result<async_nats::Client, Failure> {
        let url = self.url();
        async_nats::ConnectOptions::new()
            .name("nats-otel")
            .connection_timeout(Duration::from_secs(5))
            .connect(url.as_str())
            .await
            .map_err(|e| Failure(format!("cannot connect to {url}: {e}")))
    }
}

/// A usage or connection error: exit code 2.
#[derive(Debug)]
pub(crate) struct Failure(pub(crate) String);

/// Waits until the server has processed everything this client sent so
/// far (e.g. a SUB), so other connections' messages reach it from now on.
///
/// `Client::flush` only writes the socket; a request nobody answers comes
/// back as "no responders" only after the server has read what preceded it.
pub(crate) async fn round_trip(client: &async_nats::Client) {
    let _ = client
        .request(client.new_inbox(), bytes::Bytes::new())
        .await;
}

/// Reads a `--timeout` value in seconds (fractions allowed).
pub(crate) fn parse_seconds(value: &str) -> Result<Duration, String> {
    let secs: f64 = value
        .parse()
        .map_err(|_| format!("{value:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{value:?} is not a valid duration"))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let (json, result) = match cli.command {
        Command::Doctor(args) => (args.json, doctor::run(args).await),
        Command::Inspect(args) => (args.json, inspect::run(args).await),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(Failure(message)) => {
            if json {
                println!("{}", serde_json::json!({ "error": message }));
            }
            eprintln!("nats-otel: error: {message}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}
