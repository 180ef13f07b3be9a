//! `nats-otel doctor`, run as a binary against a real server, with relays
//! between the publish and the listen subject standing in for the user's
//! real path.

use async_nats::jetstream;
use async_nats::{Client, HeaderMap};
use futures::StreamExt;
use serde_json::Value;

use crate::support::nats::*;
use crate::support::server::NatsServer;

const BIN: &str = env!("CARGO_BIN_EXE_nats-otel");

pub(crate) struct Run {
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Run {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }
}

/// Runs the `nats-otel` binary with `args`, echoing its output for the test log.
pub(crate) async fn nats_otel(args: &[&str]) -> Run {
    let output = tokio::process::Command::new(BIN)
        .args(args)
        .env_remove("NATS_URL")
        .output()
        .await
        .expect("run nats-otel");
    let run = Run {
        code: output.status.code().expect("exit code"),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    };
    eprintln!(
        "$ nats-otel {}\n-- exit {}\n{}{}",
        args.join(" "),
        run.code,
        run.stdout,
        run.stderr
    );
    run
}

/// `nats-otel doctor` on the path from `subject` to `listen` (the relays
/// in between), with `extra` arguments after them.
async fn doctor_path(url: &str, subject: &str, listen: &str, extra: &[&str]) -> Run {
    let args = [
        &[
            "doctor",
            "--server",
            url,
            "--subject",
            subject,
            "--listen",
            listen,
        ][..],
        extra,
    ]
    .concat();
    nats_otel(&args).await
}

/// Republishes every message on `from` to `to`, with the headers `rewrite`
/// returns (`None`: none at all).
async fn relay<F>(client: &Client, from: &str, to: &str, rewrite: F) -> tokio::task::JoinHandle<()>
where
    F: Fn(Option<HeaderMap>) -> Option<HeaderMap> + Send + 'static,
{
    let mut messages = client.subscribe(from.to_owned()).await.unwrap();
    server_round_trip(client).await;
    let client = client.clone();
    let to = to.to_owned();
    tokio::spawn(async move {
        while let Some(message) = messages.next().await {
            match rewrite(message.headers) {
                Some(headers) => client
                    .publish_with_headers(to.clone(), headers, message.payload)
                    .await
                    .unwrap(),
                None => client.publish(to.clone(), message.payload).await.unwrap(),
            }
        }
    })
}

/// The headers with every `traceparent` value, in any casing, moved to
/// `name`.
fn rename_traceparent(headers: Option<HeaderMap>, name: &'static str) -> Option<HeaderMap> {
    let headers = headers?;
    let mut out = HeaderMap::new();
    for (key, values) in headers.iter() {
        let key: &str = key.as_ref();
        let target = if key.eq_ignore_ascii_case("traceparent") {
            name
        } else {
            key
        };
        for value in values {
            out.append(target, value.as_str());
        }
    }
    Some(out)
}

fn step<'a>(report: &'a Value, name: &str, path: Option<&str>) -> &'a Value {
    report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == name && s["path"].as_str() == path)
        .unwrap_or_else(|| panic!("no step {name} {path:?} in {report:#}"))
}

#[tokio::test]
async fn healthy_core_path_exits_0() {
    let server = NatsServer::start();
    let run = nats_otel(&["doctor", "--server", &server.url()]).await;
    assert_eq!(run.code, 0);
    assert!(run.stdout.contains("verdict: HEALTHY"));
    for line in [
        "ok    server",
        "ok    inject",
        "ok    publish",
        "ok    transit [core]",
        "ok    extract [core]",
        "ok    trace [core]",
    ] {
        assert!(run.stdout.contains(line), "missing {line:?}");
    }

    let run = nats_otel(&["doctor", "--server", &server.url(), "--json"]).await;
    assert_eq!(run.code, 0);
    let report = run.json();
    assert_eq!(report["healthy"], true);
    assert_eq!(report["verdict"]["status"], "healthy");
    assert_eq!(report["server"]["headers"], true);
    let trace_id = report["probe"]["trace_id"].as_str().unwrap();
    let transit = step(&report, "transit", Some("core"));
    assert_eq!(transit["data"]["traceparent"]["header"], "traceparent");
    assert_eq!(transit["data"]["traceparent"]["trace_id"], trace_id);
    assert_eq!(
        step(&report, "extract", Some("core"))["data"]["source"],
        "headers"
    );
    assert!(report["warnings"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn healthy_jetstream_path_exits_0_and_removes_the_probe() {
    let server = NatsServer::start();
    let js = jetstream(&server).await;
    jobs_stream(&js).await;

    let run = nats_otel(&[
        "doctor",
        "--server",
        &server.url(),
        "--stream",
        "JOBS",
        "--json",
    ])
    .await;
    assert_eq!(run.code, 0);
    let report = run.json();
    assert_eq!(report["probe"]["subject"], "jobs.nats_otel_doctor");
    assert!(step(&report, "publish", None)["summary"]
        .as_str()
        .unwrap()
        .contains("stored in stream JOBS"));
    for path in ["core", "jetstream"] {
        for name in ["transit", "extract", "trace"] {
            assert_eq!(
                step(&report, name, Some(path))["status"],
                "ok",
                "{name} {path}"
            );
        }
    }
    let mut stream = js.get_stream("JOBS").await.unwrap();
    let info = stream.info().await.unwrap();
    assert_eq!(info.state.messages, 0, "the probe is deleted");
    assert_eq!(
        info.state.consumer_count, 0,
        "the temporary consumer is deleted"
    );
}

#[tokio::test]
async fn relay_stripping_headers_exits_1_and_names_the_transit_step() {
    let server = NatsServer::start();
    let client = connect(&server).await;
    let _relay = relay(&client, "orders.in", "orders.out", |_| None).await;

    let run = doctor_path(&server.url(), "orders.in", "orders.out", &[]).await;
    assert_eq!(run.code, 1);
    assert!(run.stdout.contains("FAIL  transit [core]"));
    assert!(run.stdout.contains("verdict: BROKEN at transit [core]"));
    assert!(run.stdout.contains("headers stripped in transit"));
    assert!(run.stdout.contains("between orders.in and orders.out"));

    let run = doctor_path(&server.url(), "orders.in", "orders.out", &["--json"]).await;
    assert_eq!(run.code, 1);
    let report = run.json();
    assert_eq!(report["healthy"], false);
    assert_eq!(report["verdict"]["step"], "transit");
    assert_eq!(report["verdict"]["path"], "core");
    assert_eq!(report["verdict"]["cause"], "headers_stripped");
    assert_eq!(step(&report, "inject", None)["status"], "ok");
    let transit = step(&report, "transit", Some("core"));
    assert_eq!(transit["data"]["arrived"], true);
    assert_eq!(transit["data"]["headers"], serde_json::json!([]));
    assert_eq!(
        step(&report, "extract", Some("core"))["data"]["reason"],
        "no_headers"
    );
    assert_eq!(step(&report, "trace", Some("core"))["status"], "fail");
}

#[tokio::test]
async fn relay_into_a_stream_stripping_headers_breaks_both_paths() {
    let server = NatsServer::start();
    let client = connect(&server).await;
    create_stream(&jetstream::new(client.clone()), "RELAYED", "relayed.>").await;
    let _relay = relay(&client, "orders.in", "relayed.orders", |_| None).await;
    let run = doctor_path(
        &server.url(),
        "orders.in",
        "relayed.orders",
        &["--stream", "RELAYED", "--json"],
    )
    .await;
    assert_eq!(run.code, 1);
    let report = run.json();
    assert!(step(&report, "publish", None)["summary"]
        .as_str()
        .unwrap()
        .starts_with("core publish"));
    for path in ["core", "jetstream"] {
        let transit = step(&report, "transit", Some(path));
        assert_eq!(transit["status"], "fail");
        assert_eq!(transit["cause"], "headers_stripped");
    }
    assert!(step(&report, "transit", Some("jetstream"))["data"]["stream_sequence"].is_u64());
}

#[tokio::test]
async fn producer_with_go_casing_is_reported_and_still_exits_0() {
    let server = NatsServer::start();
    let client = connect(&server).await;
    let _relay = relay(&client, "go.in", "go.out", |h| {
        rename_traceparent(h, "Traceparent")
    })
    .await;

    let run = doctor_path(&server.url(), "go.in", "go.out", &[]).await;
    assert_eq!(run.code, 0);
    assert!(run.stdout.contains("WARN  transit [core]"));
    assert!(run.stdout.contains("Traceparent=00-"));
    assert!(run.stdout.contains("header re-cased in transit"));
    assert!(run.stdout.contains("verdict: HEALTHY"));

    let run = doctor_path(&server.url(), "go.in", "go.out", &["--json"]).await;
    assert_eq!(run.code, 0);
    let report = run.json();
    assert_eq!(report["healthy"], true);
    let warnings = report["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1);
    assert_eq!(warnings[0]["cause"], "header_recased");
    let transit = step(&report, "transit", Some("core"));
    assert_eq!(transit["data"]["traceparent"]["header"], "Traceparent");
    assert_eq!(
        step(&report, "extract", Some("core"))["data"]["header_name"],
        "Traceparent"
    );
    assert_eq!(step(&report, "trace", Some("core"))["status"], "ok");
}

/// What nats-server 2.11.0 to 2.12.11 do to `Traceparent`: only the
/// lowercase name arrives, which Go's HeaderCarrier does not read.
#[tokio::test]
async fn hop_rewriting_names_to_lowercase_warns_that_go_consumers_miss_it() {
    let server = NatsServer::start();
    let client = connect(&server).await;
    let _relay = relay(&client, "lc.in", "lc.out", |h| {
        rename_traceparent(h, "traceparent")
    })
    .await;
    let run = doctor_path(&server.url(), "lc.in", "lc.out", &["--json"]).await;
    assert_eq!(run.code, 0);
    let report = run.json();
    let transit = step(&report, "transit", Some("core"));
    assert_eq!(transit["status"], "warn");
    assert_eq!(transit["cause"], "header_recased");
    let text = transit["cause_text"].as_str().unwrap();
    assert!(text.contains("Traceparent + traceparent"), "{transit:#}");
    assert!(text.contains("OpenTelemetry Go consumers"), "{transit:#}");
    assert!(!text.contains("opentelemetry-python"), "{transit:#}");
}

#[tokio::test]
async fn traceparent_under_an_unexpected_name_is_detected() {
    let server = NatsServer::start();
    let client = connect(&server).await;
    let _relay = relay(&client, "rn.in", "rn.out", |h| {
        rename_traceparent(h, "X-Trace-Context")
    })
    .await;
    let run = doctor_path(&server.url(), "rn.in", "rn.out", &["--json"]).await;
    assert_eq!(run.code, 1);
    let report = run.json();
    assert_eq!(report["verdict"]["step"], "transit");
    assert_eq!(report["verdict"]["cause"], "header_renamed");
    let message = report["verdict"]["message"].as_str().unwrap();
    assert!(message.contains("\"X-Trace-Context\""), "{message}");
    assert!(
        message.contains("carries the probe's trace id"),
        "{message}"
    );
    let misplaced = &step(&report, "transit", Some("core"))["data"]["misplaced"];
    assert_eq!(misplaced[0]["header"], "X-Trace-Context");
    assert_eq!(misplaced[0]["trace_id"], report["probe"]["trace_id"]);
}

#[tokio::test]
async fn relay_dropping_only_traceparent_and_relay_starting_a_new_trace() {
    let server = NatsServer::start();
    let client = connect(&server).await;
    let _drop = relay(&client, "d.in", "d.out", |h| {
        let h = h?;
        let mut out = HeaderMap::new();
        for (k, vs) in h.iter() {
            let k: &str = k.as_ref();
            if !k.eq_ignore_ascii_case("traceparent") && !k.eq_ignore_ascii_case("tracestate") {
                for v in vs {
                    out.append(k, v.as_str());
                }
            }
        }
        Some(out)
    })
    .await;
    let _new_trace = relay(&client, "n.in", "n.out", |_| {
        let mut out = HeaderMap::new();
        out.insert(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        );
        Some(out)
    })
    .await;

    let url = server.url();
    let run = doctor_path(&url, "d.in", "d.out", &["--json"]).await;
    assert_eq!(run.code, 1);
    assert_eq!(run.json()["verdict"]["cause"], "traceparent_dropped");

    let run = doctor_path(&url, "n.in", "n.out", &["--json"]).await;
    assert_eq!(run.code, 1);
    let report = run.json();
    assert_eq!(report["verdict"]["cause"], "trace_replaced");
    assert!(report["verdict"]["message"]
        .as_str()
        .unwrap()
        .contains("0af7651916cd43dd8448eb211c80319c"));
}

#[tokio::test]
async fn kv_fallback_recovering_stripped_headers_is_a_warning() {
    let server = NatsServer::start();
    let client = connect(&server).await;
    let _relay = relay(&client, "kv.in", "kv.out", |_| None).await;
    let run = doctor_path(
        &server.url(),
        "kv.in",
        "kv.out",
        &["--kv-bucket", "carriers", "--json"],
    )
    .await;
    assert_eq!(run.code, 0);
    let report = run.json();
    assert_eq!(report["healthy"], true);
    let transit = step(&report, "transit", Some("core"));
    assert_eq!(transit["status"], "warn");
    assert_eq!(transit["cause"], "headers_stripped");
    let extract = step(&report, "extract", Some("core"));
    assert_eq!(extract["status"], "warn");
    assert_eq!(extract["cause"], "kv_recovered");
    assert_eq!(extract["data"]["source"], "kv");
    assert_eq!(step(&report, "trace", Some("core"))["status"], "ok");
    let causes: Vec<&str> = report["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["cause"].as_str().unwrap())
        .collect();
    assert_eq!(causes, ["headers_stripped", "kv_recovered"]);
}

#[tokio::test]
async fn probe_that_never_arrives_exits_1() {
    let server = NatsServer::start();
    let run = doctor_path(
        &server.url(),
        "nowhere.in",
        "nowhere.out",
        &["--timeout", "0.5", "--json"],
    )
    .await;
    assert_eq!(run.code, 1);
    let report = run.json();
    assert_eq!(report["verdict"]["cause"], "not_delivered");
    assert_eq!(step(&report, "extract", Some("core"))["status"], "skip");
}

#[tokio::test]
async fn server_without_header_support_exits_1_at_the_server_step() {
    // nats-server with no_header_support refuses header-capable clients.
    let server = NatsServer::builder()
        .config("no_header_support: true\n")
        .wait_healthy(true)
        .start();
    let run = nats_otel(&["doctor", "--server", &server.url(), "--json"]).await;
    assert_eq!(run.code, 1);
    let report = run.json();
    assert_eq!(report["verdict"]["step"], "server");
    assert_eq!(report["verdict"]["cause"], "server_without_headers");

    // A server before 2.2 accepts the client but carries no headers.
    let (url, _peer) = headerless_server().await;
    let run = nats_otel(&["doctor", "--server", &url]).await;
    assert_eq!(run.code, 1);
    assert!(run.stdout.contains("FAIL  server"));
    assert!(run.stdout.contains("does not support headers"));
}

#[tokio::test]
async fn usage_and_connection_errors_exit_2() {
    let run = nats_otel(&["doctor", "--server", "nats://127.0.0.1:1", "--json"]).await;
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("cannot connect to nats://127.0.0.1:1"));
    assert!(run.json()["error"].is_string());

    let run = nats_otel(&["doctor", "--no-such-flag"]).await;
    assert_eq!(run.code, 2);

    let server = NatsServer::start();
    let run = nats_otel(&["doctor", "--server", &server.url(), "--stream", "MISSING"]).await;
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("stream MISSING"));
}
