//! `nats-otel doctor --hops`, run as a binary against a real leafnode pair:
//! the probe is published on the leaf and expected on the hub
//! (`--listen-server`), and the servers' message-trace events show its path
//! and where its trace headers were lost.
//!
//! Message tracing is used only with nats-server 2.12.12 or later. Against
//! an older server (the oldest-server run of `cargo xtask test`) these
//! tests check instead that `--hops` is skipped with the reason and the
//! plain doctor runs.

use async_nats::Client;
use futures::StreamExt;
use nats_otel::hops::message_tracing_safe;
use serde_json::Value;

use crate::cli_doctor::{nats_otel, Run};
use crate::support::nats::*;
use crate::support::server::{self, NatsServer};

/// `nats-otel doctor --hops`, publishing `subject` on `publish_on` and
/// expecting the probe on `listen` on `listen_on`.
async fn doctor_hops(
    publish_on: &NatsServer,
    listen_on: &NatsServer,
    subject: &str,
    listen: &str,
    extra: &[&str],
) -> Run {
    let (server, listen_server) = (publish_on.url(), listen_on.url());
    let args = [
        &[
            "doctor",
            "--server",
            &server,
            "--listen-server",
            &listen_server,
            "--subject",
            subject,
            "--listen",
            listen,
            "--hops",
        ][..],
        extra,
    ]
    .concat();
    nats_otel(&args).await
}

/// A relay on `client`: every message on `ingress.<x>` is republished to
/// `jobs.<x>`, with its headers when `keep_headers`, else payload only.
async fn relay(client: &Client, keep_headers: bool) -> tokio::task::JoinHandle<()> {
    let mut messages = client.subscribe("ingress.>").await.unwrap();
    server_round_trip(client).await;
    let client = client.clone();
    tokio::spawn(async move {
        while let Some(message) = messages.next().await {
            let to = message.subject.replacen("ingress.", "jobs.", 1);
            match (keep_headers, message.headers) {
                (true, Some(headers)) => client
                    .publish_with_headers(to, headers, message.payload)
                    .await
                    .unwrap(),
                _ => client.publish(to, message.payload).await.unwrap(),
            }
        }
    })
}

fn step<'a>(report: &'a Value, name: &str, path: Option<&str>) -> &'a Value {
    report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == name && s["path"].as_str() == path)
        .unwrap_or_else(|| panic!("no step {name} {path:?} in {report:#}"))
}

/// The servers of the path, in order.
fn path_servers(hops: &Value) -> Vec<&str> {
    hops["data"]["path"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["server"]["name"].as_str().unwrap())
        .collect()
}

/// Whether the doctor traces on `server`; when it does not, asserts that
/// the report says why and that the probe went without `Nats-Trace-Dest`.
#[track_caller]
fn traced(server: &NatsServer, report: &Value) -> bool {
    let hops = step(report, "hops", None);
    if message_tracing_safe(&server.version()).is_ok() {
        return true;
    }
    assert_eq!(hops["status"], "skip", "{hops:#}");
    assert_eq!(hops["data"]["version"], server.version());
    assert!(hops["summary"]
        .as_str()
        .unwrap()
        .ends_with("the probe was sent without Nats-Trace-Dest"));
    let injected = step(report, "inject", None)["data"]["headers"].to_string();
    assert!(!injected.contains("Nats-Trace-Dest"), "{injected}");
    false
}

#[tokio::test]
async fn relay_on_the_leaf_dropping_headers_is_named_by_server_connection_and_subscription() {
    let (hub, leaf) = server::leafnode_pair();
    let relay_client = connect(&leaf).await;
    let relay_cid = relay_client.server_info().client_id;
    let _relay = relay(&relay_client, false).await;

    let run = doctor_hops(&leaf, &hub, "ingress.orders", "jobs.orders", &["--json"]).await;
    assert_eq!(run.code, 1, "a broken path");
    let report = run.json();
    assert_eq!(report["server"]["listen"]["name"], "hub");
    // The probe crossed the relay and the leafnode: the plain steps see it
    // arrive without headers either way.
    assert_eq!(
        step(&report, "transit", Some("core"))["cause"],
        "headers_stripped"
    );
    if !traced(&leaf, &report) {
        assert_eq!(report["verdict"]["step"], "transit");
        return;
    }
    let expected = format!(
        "the probe left server leaf to client connection {relay_cid} (subscription ingress.>) \
         with its trace headers and reached the consumer without them: the client behind that \
         subscription republished it without headers (a relay)"
    );
    assert_eq!(report["verdict"]["step"], "hops");
    assert_eq!(report["verdict"]["cause"], "lost_at_client");
    assert_eq!(report["verdict"]["message"], expected.as_str());
    let hops = step(&report, "hops", None);
    assert_eq!(hops["status"], "fail");
    // The relay dropped Nats-Trace-Dest with the other headers: only the
    // leaf reported.
    assert_eq!(path_servers(hops), ["leaf"]);
    let leaf_hop = &hops["data"]["path"][0];
    assert_eq!(leaf_hop["via"], "publish");
    assert_eq!(leaf_hop["ingress"]["subject"], "ingress.orders");
    assert_eq!(leaf_hop["headers"][0]["family"], "traceparent");
    assert_eq!(leaf_hop["headers"][0]["state"], "as_sent");
    let egress = &leaf_hop["egress"][0];
    assert_eq!(
        (&egress["kind"], &egress["cid"], &egress["subscription"]),
        (
            &Value::from("client"),
            &Value::from(relay_cid),
            &Value::from("ingress.>")
        )
    );
    let consumer = &hops["data"]["consumer"];
    assert_eq!(consumer["server"], "hub");
    assert_eq!(consumer["headers"][0]["state"], "missing");

    let run = doctor_hops(&leaf, &hub, "ingress.orders", "jobs.orders", &[]).await;
    assert_eq!(run.code, 1);
    for line in [
        "FAIL  hops ",
        "verdict: BROKEN at hops",
        "  1. leaf (nats-server ",
        "(the doctor), subject ingress.orders",
        "headers  traceparent as sent (Traceparent + traceparent)",
        &format!("out      client connection {relay_cid} (subscription ingress.>)"),
        "  consumer on jobs.orders (client connection ",
        "traceparent MISSING (sent as Traceparent + traceparent)",
        &format!("  cause: {expected}"),
    ] {
        assert!(run.stdout.contains(line), "missing {line:?}");
    }
}

#[tokio::test]
async fn intact_headers_through_the_leafnode_list_both_servers_and_are_ok() {
    let (hub, leaf) = server::leafnode_pair();

    // Published on the leaf, consumed on the hub.
    let run = doctor_hops(&leaf, &hub, "jobs.direct", "jobs.direct", &["--json"]).await;
    assert_eq!(run.code, 0, "a healthy path");
    let report = run.json();
    assert_eq!(report["healthy"], true);
    if !traced(&leaf, &report) {
        return;
    }
    assert!(report["warnings"].as_array().unwrap().is_empty());
    let hops = step(&report, "hops", None);
    assert_eq!(hops["status"], "ok");
    assert_eq!(path_servers(hops), ["leaf", "hub"]);
    let hub_hop = &hops["data"]["path"][1];
    assert_eq!(hub_hop["via"], "link");
    assert_eq!(hub_hop["hop"], "1");
    assert_eq!(hub_hop["ingress"]["kind"], "leafnode");
    assert_eq!(hub_hop["ingress"]["name"], "leaf");
    assert_eq!(hub_hop["headers"][0]["state"], "as_sent");
    assert_eq!(hub_hop["egress"][0]["consumer"], true);
    assert_eq!(hops["data"]["consumer"]["headers"][0]["state"], "as_sent");
    assert!(hops["summary"]
        .as_str()
        .unwrap()
        .ends_with("leaf → hub → consumer, trace headers intact"));

    let run = doctor_hops(&leaf, &hub, "jobs.direct", "jobs.direct", &[]).await;
    assert_eq!(run.code, 0);
    for line in [
        "ok    hops ",
        "  1. leaf (nats-server ",
        "out      leafnode connection ",
        "    2. hub (nats-server ",
        "hop 1, over the leafnode from leaf",
        "(subscription jobs.direct) [the consumer]",
        "verdict: HEALTHY",
    ] {
        assert!(run.stdout.contains(line), "missing {line:?}");
    }

    // Through a relay on the leaf that keeps the headers (Nats-Trace-Dest
    // included): its republish is traced too.
    let relay_client = connect(&leaf).await;
    let relay_cid = relay_client.server_info().client_id;
    let _relay = relay(&relay_client, true).await;
    let run = doctor_hops(&leaf, &hub, "ingress.kept", "jobs.kept", &["--json"]).await;
    assert_eq!(run.code, 0);
    let report = run.json();
    let hops = step(&report, "hops", None);
    assert_eq!(hops["status"], "ok");
    assert_eq!(path_servers(hops), ["leaf", "leaf", "hub"]);
    assert_eq!(hops["data"]["path"][1]["via"], "republish");
    assert_eq!(hops["data"]["path"][1]["ingress"]["cid"], relay_cid);
    assert!(hops["summary"].as_str().unwrap().ends_with(&format!(
        "leaf → client connection {relay_cid} → leaf → hub → consumer, trace headers intact"
    )));
}

/// On a server that rewrites trace headers while message tracing is on
/// (2.11.0 to 2.12.11), `--hops` sends no Nats-Trace-Dest, says why, and
/// the plain doctor runs.
#[tokio::test]
async fn hops_are_skipped_with_the_reason_on_a_server_that_rewrites_trace_headers() {
    let version = server::MINOR_LINE_SERVERS
        .iter()
        .find(|v| server::rewrites_traceparent(v))
        .expect("a pinned version from 2.11.0 to 2.12.11");
    let server = NatsServer::builder()
        .binary(server::binary_for_version(version))
        .start();
    let url = server.url();
    let run = nats_otel(&["doctor", "--server", &url, "--hops", "--json"]).await;
    // The server re-cases Traceparent (a warning): healthy otherwise.
    assert_eq!(run.code, 0);
    let report = run.json();
    assert!(!traced(&server, &report));
    let hops = step(&report, "hops", None);
    assert_eq!(hops["data"]["reason"], "rewrites_trace_headers");
    assert_eq!(step(&report, "trace", Some("core"))["status"], "ok");

    let run = nats_otel(&["doctor", "--server", &url, "--hops"]).await;
    let expected = format!(
        "skip  hops                not traced: nats-server {version} rewrites trace headers \
         while message tracing is active"
    );
    assert!(run.stdout.contains(&expected), "missing {expected:?}");
    assert!(!run.stdout.contains("server hops (message trace"));
}
