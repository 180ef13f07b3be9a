//! Interop with a real Python peer: nats-py for NATS and
//! opentelemetry-python's own W3C propagators (`TraceContextTextMapPropagator`
//! + `W3CBaggagePropagator`), run from `tests/peers/peer.py`.
//!
//! The peer runs in the venv that `cargo xtask test` creates under
//! `target/peers-venv` from the pinned `tests/peers/requirements.txt`, and
//! finds through `NATS_OTEL_PEER_PYTHON`. Without it these tests fail (never
//! skip): run them through `cargo xtask test`.

use async_nats::HeaderMap;
use nats_otel::{
    ContextSource, CorePublisher, MessageContextExt, Publish, TraceContextStreamExt,
    TracePropagationLayer,
};
use opentelemetry::baggage::BaggageExt;
use opentelemetry::trace::{SpanId, TraceContextExt, TraceId};
use opentelemetry::{KeyValue, StringValue};
use tower::Layer;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::support::nats::*;
use crate::support::peers::{str_field, Lang, Peer};
use crate::support::server::NatsServer;
use crate::support::telemetry::*;
use crate::support::versions::rewrites_traceparent;

/// "ключ" ("key" in Russian), as opentelemetry-python percent-encodes it.
const KLYUCH: &str = "ключ";
const KLYUCH_ENCODED: &str = "%D0%BA%D0%BB%D1%8E%D1%87";
const TRACESTATE: &str = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE";

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .unwrap_or_else(|| panic!("no header {name:?} as sent: {headers:?}"))
        .as_str()
}

/// A Python producer writes the header names as `casing` would; the Rust
/// consumer, through the adapter, continues its trace with the right parent
/// and decodes tracestate and percent-encoded unicode baggage.
async fn python_producer_to_rust_consumer(casing: &str, names: [&str; 3]) {
    let [traceparent_name, tracestate_name, baggage_name] = names;
    let telemetry = Telemetry::install();
    let server = NatsServer::start();
    // nats-server 2.11.0 to 2.12.11 rename any-case traceparent.
    let traceparent_name = if rewrites_traceparent(&server.version()) {
        "traceparent"
    } else {
        traceparent_name
    };
    let client = connect(&server).await;
    let subject = format!("interop.py.{casing}");
    let mut jobs = client
        .subscribe(subject.clone())
        .await
        .unwrap()
        .with_trace_context();
    server_round_trip(&client).await;

    let user = format!("user={KLYUCH}");
    let mut peer = Peer::spawn(
        Lang::Python,
        [
            "produce",
            "--url",
            &server.url(),
            "--subject",
            &subject,
            "--casing",
            casing,
            "--tracestate",
            TRACESTATE,
            "--baggage",
            &user,
            "--baggage",
            "tenant=acme",
        ],
    );
    let produced = peer.json().await;
    peer.exits_ok().await;
    let python_trace = TraceId::from_hex(str_field(&produced, "trace_id")).unwrap();
    let python_span = SpanId::from_hex(str_field(&produced, "span_id")).unwrap();
    assert_ne!(python_trace, TraceId::INVALID);

    let (message, cx) = next(&mut jobs).await;
    assert_eq!(&message.payload[..], b"msg-0");
    // What travelled: the peer's own propagators, under the peer's names.
    let sent = message.headers.as_ref().expect("headers arrived");
    assert_eq!(
        header(sent, traceparent_name),
        format!("00-{python_trace}-{python_span}-01")
    );
    assert_eq!(header(sent, tracestate_name), TRACESTATE);
    assert!(
        header(sent, baggage_name).contains(&format!("user={KLYUCH_ENCODED}")),
        "opentelemetry-python percent-encodes unicode baggage: {:?}",
        header(sent, baggage_name)
    );

    let record = cx.extraction().unwrap();
    assert_eq!(record.source(), ContextSource::Headers, "{record}");
    assert_eq!(record.reason(), None);
    let expected_name = (traceparent_name != "traceparent").then_some(traceparent_name);
    assert_eq!(record.header_name(), expected_name);
    assert_eq!(cx.baggage().get("user"), Some(&StringValue::from(KLYUCH)));
    assert_eq!(cx.baggage().get("tenant"), Some(&StringValue::from("acme")));
    assert_eq!(cx.span().span_context().trace_state().header(), TRACESTATE);

    let handler = cx.handler_span(tracing::info_span!("handler")).unwrap();
    let in_handler = async {
        let cx = tracing::Span::current().context();
        let baggage = cx.baggage();
        (baggage.get("user").cloned(), baggage.get("tenant").cloned())
    }
    .instrument(handler)
    .await;
    assert_eq!(
        in_handler,
        (
            Some(StringValue::from(KLYUCH)),
            Some(StringValue::from("acme"))
        ),
        "baggage decoded in the handler's context"
    );
    drop(cx);

    let process = telemetry.span(&format!("process {subject}"));
    let handler = telemetry.span("handler");
    assert_eq!(trace_id(&process), python_trace, "same trace as Python");
    assert_eq!(
        process.parent_span_id, python_span,
        "parent is Python's span"
    );
    assert!(process.parent_span_is_remote);
    assert_eq!(process.span_context.trace_state().header(), TRACESTATE);
    assert_child_of(&handler, &process);
}

#[tokio::test]
async fn python_otel_producer_to_rust_consumer_keeps_trace_and_parent() {
    python_producer_to_rust_consumer("otel", ["traceparent", "tracestate", "baggage"]).await;
}

#[tokio::test]
async fn go_cased_producer_tracestate_and_unicode_baggage_reach_the_handler() {
    python_producer_to_rust_consumer("go", ["Traceparent", "Tracestate", "Baggage"]).await;
}

#[tokio::test]
async fn java_lowercase_producer_tracestate_and_unicode_baggage_reach_the_handler() {
    python_producer_to_rust_consumer("lower", ["traceparent", "tracestate", "baggage"]).await;
}

/// The Rust layer publishes inside a traced request; a Python consumer
/// extracting with opentelemetry-python sees the PRODUCER span as its parent,
/// in the same trace, with the baggage decoded.
#[tokio::test]
async fn rust_producer_to_python_consumer_keeps_trace_and_parent() {
    let telemetry = Telemetry::install();
    let server = NatsServer::start();
    let client = connect(&server).await;
    let subject = "interop.rust.to.py";

    let mut peer = Peer::spawn(
        Lang::Python,
        ["consume", "--url", &server.url(), "--subject", subject],
    );
    peer.ready().await;

    let mut publisher = TracePropagationLayer::new().layer(CorePublisher::new(client.clone()));
    let api = tracing::info_span!("api");
    async {
        let cx = tracing::Span::current()
            .context()
            .with_baggage(vec![KeyValue::new("user", KLYUCH)]);
        publish(
            &mut publisher,
            Publish::new(subject, "from rust").context(cx),
        )
        .await;
    }
    .instrument(api.clone())
    .await;
    drop(api);
    server_round_trip(&client).await;

    let consumed = peer.json().await;
    peer.exits_ok().await;

    let send = telemetry.span(&format!("publish {subject}"));
    let api = telemetry.span("api");
    assert_child_of(&send, &api);
    assert_eq!(consumed["payload"], "from rust");
    assert_eq!(
        str_field(&consumed, "trace_id"),
        trace_id(&send).to_string(),
        "Python sees the Rust trace: {consumed}"
    );
    assert_eq!(
        str_field(&consumed, "parent_span_id"),
        span_id(&send).to_string(),
        "Python's parent is the Rust PRODUCER span: {consumed}"
    );
    assert_eq!(consumed["is_remote"], true);
    assert_eq!(consumed["sampled"], true);
    assert_eq!(consumed["baggage"]["user"], KLYUCH, "{consumed}");
    let baggage = str_field(&consumed["headers"], "baggage");
    assert_eq!(baggage, format!("user={KLYUCH_ENCODED}"));
}
