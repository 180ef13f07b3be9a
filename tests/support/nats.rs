//! Client-side setup shared by the integration tests: connecting, JetStream
//! streams and consumers, traced subscriptions and publishing inside a span.

use std::fmt::Debug;
use std::time::Duration;

#[cfg(feature = "jetstream")]
use async_nats::jetstream::{self, consumer::pull, consumer::PullConsumer, stream};
use async_nats::{Client, Subscriber};
use futures::{Stream, StreamExt};
use nats_otel::{
    ContextExtractingConsumer, CorePublisher, Publish, TraceContextStreamExt, TracePropagationLayer,
};
use opentelemetry::baggage::BaggageExt;
use opentelemetry::KeyValue;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tower::{Layer, Service, ServiceExt};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::server::NatsServer;

/// How long a test waits for a message before calling it lost.
pub const WAIT: Duration = Duration::from_secs(10);

/// A client connected to `server`.
pub async fn connect(server: &NatsServer) -> Client {
    async_nats::connect(server.url()).await.unwrap()
}

#[cfg(feature = "jetstream")]
/// A JetStream context on a fresh client connected to `server`.
pub async fn jetstream(server: &NatsServer) -> jetstream::Context {
    jetstream::new(connect(server).await)
}

#[cfg(feature = "jetstream")]
/// A client connected to `server` and a JetStream context on it.
pub async fn connect_jetstream(server: &NatsServer) -> (Client, jetstream::Context) {
    let client = connect(server).await;
    let js = jetstream::new(client.clone());
    (client, js)
}

#[cfg(feature = "jetstream")]
/// Creates stream `name` capturing `subjects`.
pub async fn create_stream(js: &jetstream::Context, name: &str, subjects: &str) -> stream::Stream {
    js.create_stream(stream::Config {
        name: name.into(),
        subjects: vec![subjects.into()],
        ..Default::default()
    })
    .await
    .unwrap()
}

#[cfg(feature = "jetstream")]
/// The `JOBS` stream on `jobs.>`.
pub async fn jobs_stream(js: &jetstream::Context) -> stream::Stream {
    create_stream(js, "JOBS", "jobs.>").await
}

#[cfg(feature = "jetstream")]
/// A fresh durable pull consumer `name` on `stream`: it starts from the
/// first message.
pub async fn durable_consumer(stream: &stream::Stream, name: &str) -> PullConsumer {
    stream
        .create_consumer(pull::Config {
            durable_name: Some(name.into()),
            ..Default::default()
        })
        .await
        .unwrap()
}

#[cfg(feature = "jetstream")]
/// Publishes one message to each of `subjects` through a default
/// propagation layer, each inside an `api` span, into a fresh `JOBS` stream,
/// and returns the durable consumer `worker` that reads them.
pub async fn published_jobs(server: &NatsServer, subjects: &[&str]) -> PullConsumer {
    let js = jetstream(server).await;
    let stream = jobs_stream(&js).await;
    let consumer = durable_consumer(&stream, "worker").await;
    let mut publisher = TracePropagationLayer::new().layer(nats_otel::JetStreamPublisher::new(js));
    for subject in subjects {
        publish_in_span(
            &mut publisher,
            tracing::info_span!("api"),
            Publish::new(subject.to_string(), "x"),
        )
        .await;
    }
    consumer
}

/// Waits until the server has processed everything `client` sent before
/// (its SUBs included), failing the test after [`WAIT`].
///
/// `Client::flush` is not enough: in async-nats 0.51 it only writes the
/// client's buffer to the socket, so a publish from another connection (or
/// process) right after it can still find no interest and be dropped. The
/// server handles one connection's protocol in order, so a message to a
/// fresh inbox, subscribed and published on this same connection, comes
/// back only once everything before it was processed.
pub async fn server_round_trip(client: &Client) {
    let inbox = client.new_inbox();
    let mut echo = client.subscribe(inbox.clone()).await.unwrap();
    client.publish(inbox, "".into()).await.unwrap();
    tokio::time::timeout(WAIT, echo.next())
        .await
        .expect("no round trip through the server within 10 s")
        .expect("the round-trip subscription ended");
}

/// Subscribes to `subject` through the trace-context adapter and waits for
/// a [`server_round_trip`], so the subscription is in place on the server
/// before anything is published, from any connection.
pub async fn traced_subscription(
    client: &Client,
    subject: &str,
) -> ContextExtractingConsumer<Subscriber> {
    let subscription = client
        .subscribe(subject.to_owned())
        .await
        .unwrap()
        .with_trace_context();
    server_round_trip(client).await;
    subscription
}

/// Calls `publisher` with `publish` once it is ready, failing the test on an
/// error.
pub async fn publish<S>(publisher: &mut S, publish: Publish) -> S::Response
where
    S: Service<Publish>,
    S::Error: Debug,
{
    publisher
        .ready()
        .await
        .unwrap()
        .call(publish)
        .await
        .unwrap()
}

/// [`publish`] inside `span`, failing the test on an error; the span is
/// closed when this returns.
pub async fn publish_in_span<S>(
    publisher: &mut S,
    span: tracing::Span,
    publish: Publish,
) -> S::Response
where
    S: Service<Publish>,
    S::Error: Debug,
{
    self::publish(publisher, publish).instrument(span).await
}

/// Publishes each of `messages` through `publisher`, in order.
// Only the `cli_*` tests publish batches this way.
#[cfg_attr(not(feature = "cli"), allow(dead_code))]
pub async fn publish_each<S>(publisher: &mut S, messages: impl IntoIterator<Item = Publish>)
where
    S: Service<Publish>,
    S::Error: Debug,
{
    for message in messages {
        publish(publisher, message).await;
    }
}

/// Publishes `subject` through `layer` from an `api` span whose context
/// carries baggage `tenant=acme`.
pub async fn publish_from_api(layer: TracePropagationLayer, client: &Client, subject: &str) {
    let mut publisher = layer.layer(CorePublisher::new(client.clone()));
    let api = tracing::info_span!("api");
    let api_cx = api
        .context()
        .with_baggage([KeyValue::new("tenant", "acme")]);
    publish_in_span(
        &mut publisher,
        api,
        Publish::new(subject.to_owned(), "job").context(api_cx),
    )
    .await;
}

/// The next item of `stream`, failing the test when none comes within
/// [`WAIT`] or the stream ends.
pub async fn next<S: Stream + Unpin>(stream: &mut S) -> S::Item {
    tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("no message within 10 s: lost?")
        .expect("the stream ended")
}

/// A NATS protocol peer that announces `"headers": false`, like servers
/// before 2.2, and answers PING; enough for a client to connect and flush.
// `cli_doctor` and `diagnose` (tests/global_propagator/) use it.
#[cfg_attr(not(feature = "cli"), allow(dead_code))]
pub async fn headerless_server() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                let info = format!(
                    "INFO {{\"server_id\":\"OLD\",\"server_name\":\"old\",\"version\":\"2.1.9\",\
                     \"go\":\"go1.14\",\"host\":\"127.0.0.1\",\"port\":{port},\"headers\":false,\
                     \"max_payload\":1048576,\"proto\":1}}\r\n"
                );
                if write.write_all(info.as_bytes()).await.is_err() {
                    return;
                }
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if line.starts_with("PING") && write.write_all(b"PONG\r\n").await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (format!("nats://127.0.0.1:{port}"), task)
}
