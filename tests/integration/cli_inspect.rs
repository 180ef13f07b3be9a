//! `nats-otel inspect`, run as a binary against a real server: one line per
//! message for a valid W3C context, Go's `Traceparent` casing, and no
//! context at all.

use std::process::Stdio;
use std::time::Duration;

use async_nats::jetstream::consumer::pull;
use async_nats::HeaderMap;
use futures::StreamExt;
use nats_otel::{CorePublisher, JetStreamPublisher, Publish, TracePropagationLayer};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::Context;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tower::Layer;

use crate::support::nats::*;
use crate::support::server::NatsServer;

const BIN: &str = env!("CARGO_BIN_EXE_nats-otel");

const VALID_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const GO_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const GO_TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

fn context(trace: &str) -> Context {
    Context::new().with_remote_span_context(SpanContext::new(
        TraceId::from_hex(trace).unwrap(),
        SpanId::from_hex("00f067aa0ba902b7").unwrap(),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    ))
}

/// The three kinds of message: injected by the layer (lowercase W3C), a
/// Go producer's `Traceparent`, and no headers at all.
fn three_kinds(prefix: &str) -> [Publish; 3] {
    let mut go = HeaderMap::new();
    go.insert("Traceparent", GO_TRACEPARENT);
    go.insert("Job-Id", "2");
    [
        Publish::new(format!("{prefix}.valid"), "1").context(context(VALID_TRACE)),
        Publish::new(format!("{prefix}.go"), "2").with_headers(go),
        Publish::new(format!("{prefix}.none"), "3"),
    ]
}

async fn run(args: &[&str]) -> (i32, String, String) {
    let output = tokio::process::Command::new(BIN)
        .args(args)
        .output()
        .await
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    );
    eprintln!("$ nats-otel {}\n{stdout}{stderr}", args.join(" "));
    (output.status.code().unwrap(), stdout, stderr)
}

/// `nats-otel inspect` on stream `stream`: `how` picks the messages
/// (`--all`, `--consumer <name>`), `count` of them within 5 s, then `extra`.
async fn inspect_stream(
    url: &str,
    stream: &str,
    how: &[&str],
    count: &str,
    extra: &[&str],
) -> (i32, String, String) {
    let args = [
        &["inspect", "--server", url, "--stream", stream][..],
        how,
        &["--count", count, "--timeout", "5"],
        extra,
    ]
    .concat();
    run(&args).await
}

#[track_caller]
fn assert_three_kinds_text(lines: &[&str], prefix: &str, seq: bool) {
    assert_eq!(lines.len(), 3, "{lines:#?}");
    let (valid, go, none) = (lines[0], lines[1], lines[2]);

    assert!(valid.starts_with(&format!("{prefix}.valid  ")), "{valid}");
    // The layer writes traceparent under both names by default (and
    // tracestate when there is one).
    assert!(
        valid.contains("  headers=Traceparent,traceparent  "),
        "{valid}"
    );
    assert!(valid.contains("  traceparent=valid  "), "{valid}");
    assert!(
        valid.contains(&format!("trace_id={VALID_TRACE}")),
        "{valid}"
    );
    assert!(valid.ends_with("context=headers"), "{valid}");

    assert!(go.starts_with(&format!("{prefix}.go  ")), "{go}");
    assert!(go.contains("Traceparent"), "{go}");
    assert!(go.contains("traceparent=valid(as Traceparent)"), "{go}");
    assert!(go.contains(&format!("trace_id={GO_TRACE}")), "{go}");
    assert!(go.ends_with("context=headers(as Traceparent)"), "{go}");

    assert!(none.starts_with(&format!("{prefix}.none  ")), "{none}");
    assert!(none.contains("headers=-"), "{none}");
    assert!(none.contains("traceparent=missing"), "{none}");
    assert!(none.contains("trace_id=-"), "{none}");
    assert!(none.contains("context=none(no_headers)"), "{none}");
    assert!(none.contains("why=\"no headers: "), "{none}");

    if seq {
        for (i, line) in lines.iter().enumerate() {
            assert!(line.contains(&format!("  seq={}  ", i + 1)), "{line}");
        }
    }
}

#[track_caller]
fn assert_three_kinds_json(lines: &[&str], prefix: &str) {
    let json: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(json.len(), 3);
    let (valid, go, none) = (&json[0], &json[1], &json[2]);

    assert_eq!(valid["subject"], format!("{prefix}.valid"));
    assert_eq!(valid["traceparent"]["header"], "traceparent");
    assert_eq!(valid["traceparent"]["valid"], true);
    assert_eq!(valid["trace_id"], VALID_TRACE);
    assert_eq!(valid["context"]["source"], "headers");
    assert_eq!(valid["context"]["header_name"], Value::Null);

    assert_eq!(go["subject"], format!("{prefix}.go"));
    assert_eq!(go["traceparent"]["header"], "Traceparent");
    assert_eq!(go["traceparent"]["value"], GO_TRACEPARENT);
    assert_eq!(go["traceparent"]["valid"], true);
    assert_eq!(go["trace_id"], GO_TRACE);
    assert_eq!(go["context"]["source"], "headers");
    assert_eq!(go["context"]["header_name"], "Traceparent");
    let mut names: Vec<&str> = go["header_names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["Job-Id", "Traceparent"]);

    assert_eq!(none["subject"], format!("{prefix}.none"));
    assert_eq!(none["header_names"], serde_json::json!([]));
    assert_eq!(none["traceparent"], Value::Null);
    assert_eq!(none["trace_id"], Value::Null);
    assert_eq!(none["context"]["source"], "none");
    assert_eq!(none["context"]["reason"], "no_headers");
}

#[tokio::test]
async fn stream_messages_of_three_kinds() {
    let server = NatsServer::start();
    let js = jetstream(&server).await;
    create_stream(&js, "INSPECT", "insp.>").await;
    let mut publisher = TracePropagationLayer::new().layer(JetStreamPublisher::new(js.clone()));
    publish_each(&mut publisher, three_kinds("insp")).await;

    let url = server.url();
    let (code, stdout, stderr) = inspect_stream(&url, "INSPECT", &["--all"], "3", &[]).await;
    assert_eq!(code, 1, "one message would start a new trace");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_three_kinds_text(&lines, "insp", true);
    assert!(stderr.contains("3 messages, 1 without trace context"));

    let (code, stdout, _) = inspect_stream(&url, "INSPECT", &["--all"], "3", &["--json"]).await;
    assert_eq!(code, 1);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_three_kinds_json(&lines, "insp");

    // Nothing was acknowledged or left behind.
    let mut stream = js.get_stream("INSPECT").await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 3);
}

#[tokio::test]
async fn subject_messages_of_three_kinds() {
    let server = NatsServer::start();
    let client = connect(&server).await;
    let url = server.url();

    for json in [false, true] {
        let mut args = vec![
            "inspect",
            "--server",
            &url,
            "--subject",
            "live.>",
            "--count",
            "3",
            "--timeout",
            "10",
        ];
        if json {
            args.push("--json");
        }
        let mut child = tokio::process::Command::new(BIN)
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        // Publish once it is listening.
        let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        let ready = tokio::time::timeout(Duration::from_secs(10), stderr.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(ready, "nats-otel inspect: listening on subject live.>");

        let mut publisher = TracePropagationLayer::new().layer(CorePublisher::new(client.clone()));
        publish_each(&mut publisher, three_kinds("live")).await;
        client.flush().await.unwrap();

        let mut stdout = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .await
            .unwrap();
        let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .unwrap()
            .unwrap();
        eprintln!("{stdout}");
        assert_eq!(status.code(), Some(1));
        let lines: Vec<&str> = stdout.lines().collect();
        if json {
            assert_three_kinds_json(&lines, "live");
        } else {
            assert_three_kinds_text(&lines, "live", false);
        }
    }
}

#[tokio::test]
async fn consumer_shows_its_unacknowledged_messages_without_acking_them() {
    let server = NatsServer::start();
    let js = jetstream(&server).await;
    let stream = create_stream(&js, "WORK", "work.>").await;
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("worker".into()),
            filter_subject: "work.>".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut publisher = TracePropagationLayer::new().layer(JetStreamPublisher::new(js.clone()));
    publish(
        &mut publisher,
        Publish::new("work.done", "0").context(context(VALID_TRACE)),
    )
    .await;
    publish_each(&mut publisher, three_kinds("work")).await;
    // The worker handles the first message.
    let mut batch = consumer.fetch().max_messages(1).messages().await.unwrap();
    batch
        .next()
        .await
        .unwrap()
        .unwrap()
        .double_ack()
        .await
        .unwrap();

    let url = server.url();
    let (code, stdout, stderr) =
        inspect_stream(&url, "WORK", &["--consumer", "worker"], "3", &[]).await;
    assert_eq!(code, 1);
    assert!(stderr.contains("after consumer worker's ack floor (sequence 1)"));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[0].starts_with("work.valid  seq=2  "));
    assert!(lines[2].starts_with("work.none  seq=4  "));

    let mut consumer = stream.get_consumer::<pull::Config>("worker").await.unwrap();
    let info = consumer.info().await.unwrap();
    assert_eq!(info.ack_floor.stream_sequence, 1);
    assert_eq!(info.num_pending, 3, "the worker still has the three to do");
}

#[tokio::test]
async fn traceparent_under_another_name_is_marked_misplaced() {
    let server = NatsServer::start();
    let (_client, js) = connect_jetstream(&server).await;
    create_stream(&js, "ODD", "odd.>").await;
    let mut headers = HeaderMap::new();
    headers.insert("X-Trace-Context", GO_TRACEPARENT);
    js.publish_with_headers("odd.renamed", headers, "x".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let mut headers = HeaderMap::new();
    headers.insert(
        "traceparent",
        "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01",
    );
    js.publish_with_headers("odd.upper", headers, "x".into())
        .await
        .unwrap()
        .await
        .unwrap();

    let url = server.url();
    let (code, stdout, _) = inspect_stream(&url, "ODD", &["--all"], "2", &[]).await;
    assert_eq!(code, 1);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].contains("traceparent=missing  misplaced=X-Trace-Context"));
    assert!(lines[0].contains("context=none(no_traceparent)"));
    assert!(lines[1].contains("traceparent=invalid:uppercase_hex"));
    assert!(lines[1].contains("context=none(malformed_traceparent)"));
}

#[tokio::test]
async fn usage_errors_exit_2() {
    let (code, _, stderr) = run(&["inspect"]).await;
    assert_eq!(code, 2);
    assert!(stderr.contains("--subject"));
    let (code, _, _) = run(&["inspect", "--subject", "a", "--stream", "B"]).await;
    assert_eq!(code, 2);
    let (code, _, _) = run(&["inspect", "--subject", "a", "--consumer", "c"]).await;
    assert_eq!(code, 2);
}

#[tokio::test]
async fn kv_fallback_is_reported_as_the_source() {
    use nats_otel::{fallback::FallbackKey, KvFallback};

    let server = NatsServer::start();
    let js = jetstream(&server).await;
    create_stream(&js, "KVX", "kvx.>").await;
    let store = KvFallback::open_bucket(&js, "carriers").await.unwrap();
    let fallback = KvFallback::new(store, FallbackKey::subject());
    // A publisher whose transport drops every header; the carrier still
    // reaches the bucket.
    let sender = js.clone();
    let headerless = tower::service_fn(move |request: Publish| {
        let js = sender.clone();
        async move {
            let parts = request.into_parts();
            js.publish(parts.subject, parts.payload).await?.await?;
            Ok::<(), async_nats::jetstream::context::PublishError>(())
        }
    });
    let mut publisher = TracePropagationLayer::new()
        .fallback(fallback)
        .layer(headerless);
    publish(
        &mut publisher,
        Publish::new("kvx.job-7", "x").context(context(VALID_TRACE)),
    )
    .await;

    let url = server.url();
    let (code, stdout, _) = inspect_stream(
        &url,
        "KVX",
        &["--all"],
        "1",
        &["--kv-bucket", "carriers", "--kv-key", "subject"],
    )
    .await;
    assert_eq!(code, 0, "the context is recovered");
    let line = stdout.lines().next().unwrap();
    assert!(line.contains("headers=-  traceparent=missing"), "{line}");
    assert!(line.contains(&format!("trace_id={VALID_TRACE}")), "{line}");
    assert!(line.contains("context=kv(headers: no_headers)"), "{line}");
}
