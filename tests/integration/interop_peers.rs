//! The interop matrix: every peer continues the trace, both directions.
//!
//! Producer Rust → consumer Go / Python / JavaScript, and producer
//! Go / Python / JavaScript → consumer Rust, over core publish-subscribe and
//! over JetStream (publish with ack + durable pull consumer), each cell
//! against a real nats-server with real peers (tests/peers/, installed by
//! `cargo xtask test`). Every message carries `tracestate` and a
//! two-member `baggage`; each cell checks, per message, the same trace id on
//! both sides, that the consumer's parent is the producer's span (the
//! PRODUCER span on the Rust side), and that as many messages were consumed
//! as were published.
//!
//! The Rust side runs on default settings: the Rust → Go cells are the
//! reproduction of a Go worker that started a new root for every message
//! while the crate wrote only `traceparent`.

use std::collections::HashMap;

use async_nats::jetstream::{self, consumer::pull, consumer::PullConsumer};
use futures::Stream;
use nats_otel::{
    ContextSource, CorePublisher, HeaderNames, JetStreamPublisher, MessageContextExt, Publish,
    TraceContextStreamExt, TracePropagationLayer,
};
use opentelemetry::baggage::BaggageExt;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{Context, KeyValue, StringValue};
use serde_json::Value;
use tower::{Layer, Service};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::support::nats::*;
use crate::support::peers::{str_field, Lang, Peer};
use crate::support::server::NatsServer;
use crate::support::telemetry::*;
use crate::support::versions::rewrites_traceparent;

/// Messages per cell.
const COUNT: usize = 20;
const TRACESTATE: &str = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE";
/// Two baggage members, one of them non-ASCII (percent-encoded on the wire).
const BAGGAGE: [(&str, &str); 2] = [("user", "ключ"), ("tenant", "acme")];
/// "ключ" percent-encoded, as it travels.
const KLYUCH_ENCODED: &str = "%D0%BA%D0%BB%D1%8E%D1%87";
/// The baggage a Go producer sends: OpenTelemetry Go 1.1.0 (Debian's)
/// rejects non-ASCII values in `baggage.NewMember` and percent-encodes any
/// value it is given again (fixed in 1.11), so its services send ASCII.
const GO_BAGGAGE: [(&str, &str); 2] = [("user", "klyuch"), ("tenant", "acme")];

/// The baggage the `lang` producer is given.
fn baggage_sent_by(lang: Lang) -> [(&'static str, &'static str); 2] {
    match lang {
        Lang::Go => GO_BAGGAGE,
        _ => BAGGAGE,
    }
}

/// The baggage values the `lang` consumer reports for [`BAGGAGE`]:
/// OpenTelemetry Go 1.1.0 does not percent-decode values, so it hands the
/// application what travelled.
fn baggage_seen_by(lang: Lang) -> [(&'static str, &'static str); 2] {
    match lang {
        Lang::Go => [("user", KLYUCH_ENCODED), ("tenant", "acme")],
        _ => BAGGAGE,
    }
}
const STREAM: &str = "INTEROP";
const DURABLE: &str = "worker";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Core,
    JetStream,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Core => "core",
            Transport::JetStream => "js",
        }
    }
}

/// One cell's server, client, subject and (for JetStream) stream with a
/// durable pull consumer on the subject.
struct Cell {
    server: NatsServer,
    client: async_nats::Client,
    js: jetstream::Context,
    subject: String,
    consumer: Option<PullConsumer>,
}

impl Cell {
    async fn new(from: &str, to: &str, transport: Transport) -> Cell {
        let server = NatsServer::start();
        let (client, js) = connect_jetstream(&server).await;
        let subject = format!("interop.{from}.to.{to}.{}", transport.name());
        let consumer = match transport {
            Transport::Core => None,
            Transport::JetStream => {
                let stream = create_stream(&js, STREAM, "interop.>").await;
                let consumer = stream
                    .create_consumer(pull::Config {
                        durable_name: Some(DURABLE.into()),
                        filter_subject: subject.clone(),
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                Some(consumer)
            }
        };
        Cell {
            server,
            client,
            js,
            subject,
            consumer,
        }
    }

    /// The peer's transport arguments.
    fn peer_args(&self, command: &str) -> Vec<String> {
        let mut args = vec![
            command.to_owned(),
            "--url".into(),
            self.server.url(),
            "--subject".into(),
            self.subject.clone(),
            "--count".into(),
            COUNT.to_string(),
        ];
        if self.consumer.is_some() {
            args.push("--jetstream".into());
            if command == "consume" {
                args.extend(["--stream".into(), STREAM.into()]);
                args.extend(["--durable".into(), DURABLE.into()]);
            }
        }
        args
    }

    /// How many messages the stream holds (JetStream cells).
    async fn stored(&self) -> u64 {
        let mut stream = self.js.get_stream(STREAM).await.unwrap();
        stream.info().await.unwrap().state.messages
    }
}

fn payload(index: usize) -> String {
    format!("msg-{index}")
}

/// A remote sampled parent carrying [`TRACESTATE`] in a new trace: what an
/// incoming request hands the API.
fn request_context() -> Context {
    let sc = SpanContext::new(
        TraceId::from(rand_u128()),
        SpanId::from(rand_u128() as u64 | 1),
        TraceFlags::SAMPLED,
        true,
        TRACESTATE.parse::<TraceState>().unwrap(),
    );
    Context::new().with_remote_span_context(sc)
}

fn baggage_values(baggage: [(&'static str, &'static str); 2]) -> [KeyValue; 2] {
    baggage.map(|(k, v)| KeyValue::new(k, v))
}

fn rand_u128() -> u128 {
    use std::hash::{BuildHasher, Hasher};
    let state = std::collections::hash_map::RandomState::new();
    let mut h = state.build_hasher();
    h.write_u64(0);
    let a = h.finish() as u128;
    let mut h = state.build_hasher();
    h.write_u64(1);
    (a << 64 | h.finish() as u128) | 1
}

/// Rust publishes [`COUNT`] messages through the layer on default settings,
/// each from its own `api` request span; the `lang` peer consumes them and
/// reports, per message, its `process` span's trace and parent.
async fn rust_to_peer(lang: Lang, transport: Transport) {
    let telemetry = Telemetry::install();
    let cell = Cell::new("rust", lang.name(), transport).await;
    let mut peer = Peer::spawn(lang, cell.peer_args("consume"));
    peer.ready().await;

    // Each message's request trace, by index.
    let mut traces = Vec::new();
    match transport {
        Transport::Core => {
            let publisher =
                TracePropagationLayer::new().layer(CorePublisher::new(cell.client.clone()));
            publish_requests(publisher, &cell.subject, &mut traces).await;
            server_round_trip(&cell.client).await;
        }
        Transport::JetStream => {
            let publisher =
                TracePropagationLayer::new().layer(JetStreamPublisher::new(cell.js.clone()));
            publish_requests(publisher, &cell.subject, &mut traces).await;
            assert_eq!(
                cell.stored().await,
                COUNT as u64,
                "every publish was stored"
            );
        }
    }

    let mut consumed = Vec::new();
    for _ in 0..COUNT {
        consumed.push(peer.json().await);
    }
    peer.exits_ok().await;
    assert_eq!(consumed.len(), COUNT, "consumed as many as published");
    if lang == Lang::Go && rewrites_traceparent(&cell.server.version()) {
        assert_server_broke_go(&cell.server, &consumed, &traces);
        return;
    }

    let producers: HashMap<TraceId, _> = telemetry
        .spans_named(&format!("publish {}", cell.subject))
        .into_iter()
        .map(|span| (trace_id(&span), span))
        .collect();
    assert_eq!(
        producers.len(),
        COUNT,
        "one PRODUCER span per message, each in its trace"
    );
    let mut seen = [false; COUNT];
    for doc in &consumed {
        let index = index_of(str_field(doc, "payload"));
        assert!(!seen[index], "message {index} consumed twice: {doc}");
        seen[index] = true;
        let trace = traces[index];
        let producer = &producers[&trace];
        assert_kind(producer, SpanKind::Producer);
        assert_eq!(
            str_field(doc, "trace_id"),
            trace.to_string(),
            "{} continues the trace of message {index}: {doc}",
            lang.name()
        );
        assert_eq!(
            str_field(doc, "parent_span_id"),
            span_id(producer).to_string(),
            "{}'s process span is a child of the PRODUCER span of message {index}: {doc}",
            lang.name()
        );
        assert_eq!(doc["is_remote"], true, "{doc}");
        assert_eq!(doc["sampled"], true, "{doc}");
        assert_eq!(str_field(doc, "tracestate"), TRACESTATE, "{doc}");
        for (key, value) in baggage_seen_by(lang) {
            assert_eq!(doc["baggage"][key], value, "baggage {key}: {doc}");
        }
    }
}

/// On nats-server 2.11.0 to 2.12.11 every `traceparent` arrives under the
/// lowercase name, whatever casing was sent, and OpenTelemetry Go's
/// `HeaderCarrier` reads only `Traceparent`: a Go consumer cannot continue
/// any producer's trace there (README, "Supported nats-server versions").
/// Checked rather than skipped, so that a server or peer that behaves
/// otherwise shows up.
fn assert_server_broke_go(server: &NatsServer, consumed: &[Value], traces: &[TraceId]) {
    for doc in consumed {
        let index = index_of(str_field(doc, "payload"));
        let headers = doc["headers"].as_object().unwrap();
        assert!(
            headers.contains_key("traceparent") && !headers.contains_key("Traceparent"),
            "nats-server {} renames Traceparent to traceparent: {doc}",
            server.version()
        );
        assert_ne!(
            str_field(doc, "trace_id"),
            traces[index].to_string(),
            "{doc}"
        );
        assert_eq!(
            str_field(doc, "parent_span_id"),
            SpanId::INVALID.to_string(),
            "{doc}"
        );
    }
}

/// Publishes [`COUNT`] messages, each inside its own `api` span parented on
/// a fresh [`request_context`]; pushes each message's trace id.
async fn publish_requests<S>(mut publisher: S, subject: &str, traces: &mut Vec<TraceId>)
where
    S: Service<Publish>,
    S::Error: std::fmt::Debug,
{
    for index in 0..COUNT {
        let request = request_context();
        traces.push(request.span().span_context().trace_id());
        let api = tracing::info_span!("api");
        api.set_parent(request.clone()).unwrap();
        let cx = api.context().with_baggage(baggage_values(BAGGAGE));
        publish(
            &mut publisher,
            Publish::new(subject.to_owned(), payload(index)).context(cx),
        )
        .instrument(api)
        .await;
    }
}

fn index_of(payload: &str) -> usize {
    payload
        .strip_prefix("msg-")
        .and_then(|i| i.parse().ok())
        .filter(|&i| i < COUNT)
        .unwrap_or_else(|| panic!("unexpected payload {payload:?}"))
}

/// The `lang` peer publishes [`COUNT`] messages, each in a new trace; Rust
/// consumes them through the adapter on default settings.
async fn peer_to_rust(lang: Lang, transport: Transport) {
    let telemetry = Telemetry::install();
    let cell = Cell::new(lang.name(), "rust", transport).await;
    let mut args = cell.peer_args("produce");
    args.extend(["--tracestate".into(), TRACESTATE.into()]);
    let baggage = baggage_sent_by(lang);
    for (key, value) in baggage {
        args.extend(["--baggage".into(), format!("{key}={value}")]);
    }

    let consumed = match &cell.consumer {
        None => {
            let mut jobs = traced_subscription(&cell.client, &cell.subject).await;
            let produced = produce(lang, args).await;
            let mut consumed = Vec::new();
            for _ in 0..COUNT {
                let (message, cx) = next(&mut jobs).await;
                consumed.push(check_consumed(
                    &message.payload,
                    &message.headers,
                    cx,
                    baggage,
                ));
            }
            (produced, consumed)
        }
        Some(consumer) => {
            let produced = produce(lang, args).await;
            assert_eq!(
                cell.stored().await,
                COUNT as u64,
                "every publish was stored"
            );
            let messages = consumer.messages().await.unwrap().with_trace_context();
            let consumed = consume_jetstream(messages, baggage).await;
            (produced, consumed)
        }
    };
    let (produced, consumed) = consumed;
    assert_eq!(
        consumed.len(),
        produced.len(),
        "consumed as many as published"
    );

    let processes: HashMap<TraceId, _> = telemetry
        .spans_named(&format!("process {}", cell.subject))
        .into_iter()
        .map(|span| (trace_id(&span), span))
        .collect();
    assert_eq!(
        processes.len(),
        COUNT,
        "one process span per message, each in its trace"
    );
    for doc in &produced {
        let index = doc["index"].as_u64().expect("index") as usize;
        let trace = TraceId::from_hex(str_field(doc, "trace_id")).unwrap();
        let parent = SpanId::from_hex(str_field(doc, "span_id")).unwrap();
        let process = processes.get(&trace).unwrap_or_else(|| {
            panic!(
                "message {index}: no process span in the {} peer's trace {trace}: {doc}",
                lang.name()
            )
        });
        assert_kind(process, SpanKind::Consumer);
        assert_eq!(
            process.parent_span_id,
            parent,
            "message {index}: the process span's parent is the {} producer's span",
            lang.name()
        );
        assert!(process.parent_span_is_remote);
        assert_eq!(process.span_context.trace_state().header(), TRACESTATE);
        assert!(
            consumed.contains(&(index, trace)),
            "message {index} was consumed in trace {trace}"
        );
    }
}

/// Runs the producing peer and returns its [`COUNT`] lines.
async fn produce(lang: Lang, args: Vec<String>) -> Vec<Value> {
    let mut peer = Peer::spawn(lang, args);
    let mut produced = Vec::new();
    for _ in 0..COUNT {
        produced.push(peer.json().await);
    }
    peer.exits_ok().await;
    produced
}

/// What every consumed message must hold on the Rust side: the context came
/// from the headers, with the tracestate and both baggage members. Returns
/// the message's index and trace.
fn check_consumed(
    payload: &[u8],
    headers: &Option<async_nats::HeaderMap>,
    cx: Context,
    baggage: [(&'static str, &'static str); 2],
) -> (usize, TraceId) {
    let index = index_of(std::str::from_utf8(payload).unwrap());
    let record = cx.extraction().unwrap();
    assert_eq!(
        record.source(),
        ContextSource::Headers,
        "message {index}: {record} ({headers:?})"
    );
    let sc = cx.span().span_context().clone();
    assert_eq!(sc.trace_state().header(), TRACESTATE, "message {index}");
    for (key, value) in baggage {
        assert_eq!(
            cx.baggage().get(key),
            Some(&StringValue::from(value)),
            "message {index}: baggage {key} ({headers:?})"
        );
    }
    (index, sc.trace_id())
}

/// Consumes [`COUNT`] messages from the adapter, acking each.
async fn consume_jetstream<S, E>(
    messages: S,
    baggage: [(&'static str, &'static str); 2],
) -> Vec<(usize, TraceId)>
where
    S: Stream<Item = Result<(jetstream::Message, Context), E>>,
    E: std::fmt::Debug,
{
    let mut messages = std::pin::pin!(messages);
    let mut consumed = Vec::new();
    for _ in 0..COUNT {
        let (message, cx) = next(&mut messages).await.unwrap();
        consumed.push(check_consumed(
            &message.payload,
            &message.headers,
            cx,
            baggage,
        ));
        message.ack().await.unwrap();
    }
    consumed
}

/// Without Go's canonical names (what the crate wrote before
/// [`HeaderNames::Both`] became the default), OpenTelemetry Go's
/// `HeaderCarrier` finds no `Traceparent` and the Go worker starts a new root
/// for every message: the failure the default exists to prevent.
#[tokio::test]
async fn lowercase_names_alone_leave_go_consumers_without_a_parent() {
    let _telemetry = Telemetry::install();
    let cell = Cell::new("rust-lowercase", "go", Transport::Core).await;
    let mut peer = Peer::spawn(Lang::Go, cell.peer_args("consume"));
    peer.ready().await;
    let publisher = TracePropagationLayer::new()
        .header_names(HeaderNames::Lowercase)
        .layer(CorePublisher::new(cell.client.clone()));
    let mut traces = Vec::new();
    publish_requests(publisher, &cell.subject, &mut traces).await;
    server_round_trip(&cell.client).await;
    for _ in 0..COUNT {
        let doc = peer.json().await;
        let index = index_of(str_field(&doc, "payload"));
        assert_ne!(
            str_field(&doc, "trace_id"),
            traces[index].to_string(),
            "{doc}"
        );
        assert_eq!(
            str_field(&doc, "parent_span_id"),
            SpanId::INVALID.to_string(),
            "{doc}"
        );
        assert!(doc["headers"]["traceparent"].is_string(), "{doc}");
    }
    peer.exits_ok().await;
}

#[tokio::test]
async fn rust_to_go_core() {
    rust_to_peer(Lang::Go, Transport::Core).await;
}

#[tokio::test]
async fn rust_to_go_jetstream() {
    rust_to_peer(Lang::Go, Transport::JetStream).await;
}

#[tokio::test]
async fn rust_to_python_core() {
    rust_to_peer(Lang::Python, Transport::Core).await;
}

#[tokio::test]
async fn rust_to_python_jetstream() {
    rust_to_peer(Lang::Python, Transport::JetStream).await;
}

#[tokio::test]
async fn rust_to_js_core() {
    rust_to_peer(Lang::JavaScript, Transport::Core).await;
}

#[tokio::test]
async fn rust_to_js_jetstream() {
    rust_to_peer(Lang::JavaScript, Transport::JetStream).await;
}

#[tokio::test]
async fn go_to_rust_core() {
    peer_to_rust(Lang::Go, Transport::Core).await;
}

#[tokio::test]
async fn go_to_rust_jetstream() {
    peer_to_rust(Lang::Go, Transport::JetStream).await;
}

#[tokio::test]
async fn python_to_rust_core() {
    peer_to_rust(Lang::Python, Transport::Core).await;
}

#[tokio::test]
async fn python_to_rust_jetstream() {
    peer_to_rust(Lang::Python, Transport::JetStream).await;
}

#[tokio::test]
async fn js_to_rust_core() {
    peer_to_rust(Lang::JavaScript, Transport::Core).await;
}

#[tokio::test]
async fn js_to_rust_jetstream() {
    peer_to_rust(Lang::JavaScript, Transport::JetStream).await;
}
