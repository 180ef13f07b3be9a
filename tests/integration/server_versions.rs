//! The nats-server version matrix.
//!
//! `cargo xtask test` runs every integration test twice: against the pinned
//! server (2.15.1) and, with `NATS_SERVER_BIN` pointing at it, against the
//! oldest supported one (2.10.26). These tests pin down the range itself:
//! the server under test must be inside it, and both ends of the matrix are
//! exercised explicitly (layer → JetStream → adapter, one trace) whatever
//! `NATS_SERVER_BIN` says, so a plain `cargo test` covers both too once
//! `cargo xtask install-server --version 2.10.26` has run.
//!
//! A test that needs a newer server than 2.10 must say so with
//! [`require_server`] (it fails, naming the feature, instead of failing
//! obscurely) and be listed in `NEEDS_NEWER_SERVER` in `xtask/src/main.rs`
//! by its path in the test binary (`server_versions::<name>`), which the
//! 2.10.26 run skips. Today no test needs one.

use std::time::Duration;

use async_nats::HeaderMap;
use futures::StreamExt;
use nats_otel::{
    ContextSource, JetStreamPublisher, MessageContextExt, Publish, TraceContextStreamExt,
    TracePropagationLayer,
};
use tower::{Layer, Service, ServiceExt};
use tracing::Instrument;

use crate::support::nats::*;
use crate::support::server::{
    binary_for_version, NatsServer, OLDEST_SERVER, PINNED_SERVER, SUPPORTED_BELOW, SUPPORTED_MIN,
};
use crate::support::telemetry::*;
use crate::support::versions::parse_version;

/// Fails, naming `feature`, unless `server` is at least `min`.
///
/// For tests that need a newer server than the oldest supported one; list
/// them in `NEEDS_NEWER_SERVER` in `xtask/src/main.rs` too.
#[track_caller]
fn require_server(server: &NatsServer, min: &str, feature: &str) {
    let version = server.version();
    assert!(
        parse_version(&version) >= parse_version(min),
        "this test needs nats-server >= {min} ({feature}) but runs against {version}; \
         `cargo xtask test` skips it in the nats-server {OLDEST_SERVER} run"
    );
}

#[test]
fn server_under_test_is_a_supported_version() {
    let server = NatsServer::start();
    let version = server.version();
    let parsed = parse_version(&version);
    assert!(
        parsed >= SUPPORTED_MIN && parsed < SUPPORTED_BELOW,
        "nats-server {version} ({}) is outside the supported range >= 2.10.0, < 2.16.0",
        server.binary().display()
    );
    require_server(&server, "2.10.0", "headers, JetStream, KV direct get");
}

/// One JetStream round trip through the layer and the adapter against the
/// given server binary: the consumer continues the producer's trace, and
/// header names keep their casing.
async fn round_trip_on(version: &str) {
    let telemetry = Telemetry::install();
    let server = NatsServer::builder()
        .binary(binary_for_version(version))
        .start();
    assert_eq!(server.version(), version, "the binary reports its version");

    let (_client, js) = connect_jetstream(&server).await;
    let stream = create_stream(&js, "MATRIX", "matrix.>").await;
    let consumer = durable_consumer(&stream, "matrix").await;

    let mut publisher = TracePropagationLayer::new().layer(JetStreamPublisher::new(js.clone()));
    async {
        publisher
            .ready()
            .await
            .unwrap()
            .call(Publish::new("matrix.layer", "1"))
            .await
            .unwrap()
    }
    .instrument(tracing::info_span!("api"))
    .await;

    // Go's casing, written by a plain client.
    let mut go = HeaderMap::new();
    go.insert(
        "Traceparent",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    );
    js.publish_with_headers("matrix.go", go, "2".into())
        .await
        .unwrap()
        .await
        .unwrap();

    let mut messages = consumer.messages().await.unwrap().with_trace_context();
    let (first, cx) = next(&mut messages).await;
    assert_eq!(cx.extraction().unwrap().source(), ContextSource::Headers);
    first.ack().await.unwrap();
    drop(cx);
    let (second, cx) = next(&mut messages).await;
    assert!(
        second
            .headers
            .as_ref()
            .unwrap()
            .get("Traceparent")
            .is_some(),
        "nats-server {version} kept the header name's casing"
    );
    let record = cx.extraction().unwrap();
    assert_eq!(record.source(), ContextSource::Headers, "{record}");
    assert_eq!(record.header_name(), Some("Traceparent"));
    second.ack().await.unwrap();
    drop(cx);

    let send = telemetry.span("publish matrix.layer");
    let process = telemetry.span("process matrix.layer");
    assert_child_of(&send, &telemetry.span("api"));
    assert_child_of(&process, &send);
}

async fn next<S, T, E>(messages: &mut S) -> T
where
    S: futures::Stream<Item = Result<T, E>> + Unpin,
    E: std::fmt::Debug,
{
    tokio::time::timeout(Duration::from_secs(10), messages.next())
        .await
        .expect("message within 10 s")
        .expect("stream open")
        .expect("no error")
}

#[tokio::test]
async fn oldest_supported_server_round_trip() {
    round_trip_on(OLDEST_SERVER).await;
}

#[tokio::test]
async fn pinned_server_round_trip() {
    round_trip_on(PINNED_SERVER).await;
}
