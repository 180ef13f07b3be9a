//! `nats-otel doctor`: publish a probe with a known trace context, consume
//! it, and name the first step that breaks propagation.

use std::fmt::Write as _;
use std::future::poll_fn;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, consumer::DeliverPolicy};
use async_nats::HeaderMap;
use clap::Args;
use futures::{Stream, StreamExt};
use nats_otel::{
    ContextSource, CorePublisher, ExtractionRecord, FallbackKey, JetStreamPublisher, KvFallback,
    MessageContextExt, Publish, TraceContextStreamExt, TracePropagationLayer, WriteFailure,
};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::Context;
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};
use serde_json::{json, Value};
use tower::{Layer, Service};

use crate::analysis::{
    describe_record, extracted_trace_id, readers_missing, record_json, subject_matches,
    HeaderAnalysis,
};
use crate::{parse_seconds, Failure, ServerArgs, EXIT_BROKEN, EXIT_HEALTHY};

/// The header that marks the probe; it shows whether non-trace headers
/// survive the path.
const PROBE_HEADER: &str = "Nats-Otel-Probe";
/// The payload field holding the probe id.
const PROBE_FIELD: &str = "nats_otel_doctor";
/// The token used for wildcards when deriving a subject from a stream.
const PROBE_TOKEN: &str = "nats_otel_doctor";

#[derive(Debug, Args)]
pub(crate) struct DoctorArgs {
    #[command(flatten)]
    server: ServerArgs,

    /// Subject to publish the probe to [default: a unique
    /// _nats_otel.doctor.<id>, or with --stream a subject the stream
    /// captures].
    #[arg(long, value_name = "SUBJECT")]
    subject: Option<String>,

    /// Subject the probe is expected to arrive on, after your relay, bridge
    /// or republisher [default: the publish subject].
    #[arg(long, value_name = "SUBJECT")]
    listen: Option<String>,

    /// Also consume the probe from this JetStream stream, through a
    /// temporary consumer filtered on the listen subject. When the stream
    /// captures the publish subject, the probe is published with JetStream
    /// (and its ack checked).
    #[arg(long, value_name = "STREAM")]
    stream: Option<String>,

    /// Use the KV fallback through this bucket (created if missing): the
    /// carrier is written on publish and looked up when headers are lost.
    #[arg(long, value_name = "BUCKET")]
    kv_bucket: Option<String>,

    /// How long to wait for the probe on each path, in seconds.
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse_seconds)]
    timeout: Duration,

    /// Leave the probe in the stream instead of deleting it.
    #[arg(long)]
    keep: bool,

    /// Print the report as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Ok,
    Warn,
    Fail,
    Skip,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Warn => "warn",
            Self::Fail => "fail",
            Self::Skip => "skip",
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Warn => "WARN",
            Self::Fail => "FAIL",
            Self::Skip => "skip",
        }
    }
}

/// Why a step failed or warned.
#[derive(Debug, Clone)]
struct Cause {
    code: &'static str,
    text: String,
    fix: String,
}

impl Cause {
    fn new(code: &'static str, text: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            code,
            text: text.into(),
            fix: fix.into(),
        }
    }
}

#[derive(Debug, Clone)]
struct Step {
    name: &'static str,
    path: Option<&'static str>,
    status: Status,
    summary: String,
    cause: Option<Cause>,
    data: Value,
}

impl Step {
    fn new(
        name: &'static str,
        path: Option<&'static str>,
        status: Status,
        summary: String,
    ) -> Self {
        Self {
            name,
            path,
            status,
            summary,
            cause: None,
            data: Value::Null,
        }
    }

    fn cause(mut self, cause: Cause) -> Self {
        self.cause = Some(cause);
        self
    }

    fn data(mut self, data: Value) -> Self {
        self.data = data;
        self
    }

    fn label(&self) -> String {
        match self.path {
            Some(path) => format!("{} [{path}]", self.name),
            None => self.name.to_owned(),
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "step": self.name,
            "path": self.path,
            "status": self.status.as_str(),
            "summary": self.summary,
            "cause": self.cause.as_ref().map(|c| c.code),
            "cause_text": self.cause.as_ref().map(|c| c.text.clone()),
            "fix": self.cause.as_ref().map(|c| c.fix.clone()),
            "data": self.data,
        })
    }
}

/// The probe's known context.
#[derive(Debug, Clone)]
struct Probe {
    trace_id: TraceId,
    span_id: SpanId,
}

impl Probe {
    fn new() -> Self {
        let ids = RandomIdGenerator::default();
        Self {
            trace_id: ids.new_trace_id(),
            span_id: ids.new_span_id(),
        }
    }

    fn id(&self) -> String {
        self.trace_id.to_string()
    }

    fn context(&self) -> Context {
        Context::new().with_remote_span_context(SpanContext::new(
            self.trace_id,
            self.span_id,
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        ))
    }

    fn payload(&self) -> String {
        json!({
            PROBE_FIELD: self.id(),
            "note": "probe published by nats-otel doctor; safe to ignore",
        })
        .to_string()
    }
}

/// The probe id in a payload, if it is a probe.
fn probe_id(payload: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(payload).ok()?;
    value.get(PROBE_FIELD)?.as_str().map(str::to_owned)
}

/// What one consumption path saw.
struct Arrival {
    subject: String,
    headers: Option<HeaderMap>,
    record: Option<ExtractionRecord>,
    trace_id: Option<TraceId>,
    elapsed: Duration,
    stream_sequence: Option<u64>,
}

/// Records the headers each request carries when it reaches the leaf
/// service, i.e. what the layer injected.
#[derive(Clone)]
struct Capture<S> {
    inner: S,
    seen: Arc<Mutex<Option<HeaderMap>>>,
}

impl<S: Service<Publish>> Service<Publish> for Capture<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Publish) -> Self::Future {
        *self.seen.lock().expect("capture lock") = request.header_map().cloned();
        self.inner.call(request)
    }
}

/// What a leaf service's response says about where the probe went.
trait Outcome {
    fn describe(&self, subject: &str) -> (String, Option<u64>);
}

impl Outcome for () {
    fn describe(&self, subject: &str) -> (String, Option<u64>) {
        (format!("core publish to {subject}"), None)
    }
}

impl Outcome for async_nats::jetstream::publish::PublishAck {
    fn describe(&self, subject: &str) -> (String, Option<u64>) {
        (
            format!(
                "JetStream publish to {subject}: stored in stream {} as sequence {}",
                self.stream, self.sequence
            ),
            Some(self.sequence),
        )
    }
}

/// Publishes `request` through the layer (and the KV fallback when given)
/// over `leaf`; returns the injected headers and the outcome.
async fn publish_through<S>(
    leaf: S,
    fallback: Option<KvFallback>,
    request: Publish,
) -> (Option<HeaderMap>, Result<(String, Option<u64>), String>)
where
    S: Service<Publish> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Display,
    S::Response: Outcome,
{
    let subject = request.subject().to_string();
    let seen = Arc::new(Mutex::new(None));
    let capture = Capture {
        inner: leaf,
        seen: seen.clone(),
    };
    let result = match fallback {
        Some(fallback) => {
            let mut service = TracePropagationLayer::new()
                .fallback(fallback)
                .layer(capture);
            call(&mut service, request).await
        }
        None => {
            let mut service = TracePropagationLayer::new().layer(capture);
            call(&mut service, request).await
        }
    };
    let headers = seen.lock().expect("capture lock").take();
    (headers, result.map(|r| r.describe(&subject)))
}

async fn call<S>(service: &mut S, request: Publish) -> Result<S::Response, String>
where
    S: Service<Publish>,
    S::Error: std::fmt::Display,
{
    poll_fn(|cx| service.poll_ready(cx))
        .await
        .map_err(|e| e.to_string())?;
    service.call(request).await.map_err(|e| e.to_string())
}

/// Waits for the probe on `messages`, skipping other traffic.
async fn wait_for_probe<S, M>(
    messages: &mut S,
    id: &str,
    started: Instant,
    deadline: tokio::time::Instant,
    seq: impl Fn(&M) -> Option<u64>,
) -> (Option<Arrival>, usize)
where
    S: Stream<Item = Option<(M, Context)>> + Unpin,
    M: std::ops::Deref<Target = async_nats::Message>,
{
    let mut others = 0;
    loop {
        match tokio::time::timeout_at(deadline, messages.next()).await {
            Err(_) | Ok(None) => return (None, others),
            Ok(Some(None)) => others += 1,
            Ok(Some(Some((message, cx)))) => {
                if probe_id(&message.payload).as_deref() != Some(id) {
                    others += 1;
                    continue;
                }
                let arrival = Arrival {
                    subject: message.subject.to_string(),
                    headers: message.headers.clone(),
                    record: cx.extraction().cloned(),
                    trace_id: extracted_trace_id(&cx),
                    elapsed: started.elapsed(),
                    stream_sequence: seq(&message),
                };
                return (Some(arrival), others);
            }
        }
    }
}

/// A core message wrapper so both paths share [`wait_for_probe`].
struct Core(async_nats::Message);

impl std::ops::Deref for Core {
    type Target = async_nats::Message;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

pub(crate) async fn run(args: DoctorArgs) -> Result<u8, Failure> {
    let url = args.server.url();
    let probe = Probe::new();
    let mut report = Report::new(&url, &probe);
    let client = match args.server.connect().await {
        Ok(client) => client,
        // nats-server 2.2+ with `no_header_support` refuses clients that
        // need headers (as async-nats does) at connect time.
        Err(Failure(error)) if error.contains("requires headers support") => {
            let finding = nats_otel::Finding::ServerWithoutHeaders {
                server: url.clone(),
            };
            report.push(
                Step::new(
                    "server",
                    None,
                    Status::Fail,
                    format!("the server refused the connection: {error}"),
                )
                .cause(Cause::new(
                    "server_without_headers",
                    format!("{finding} (no_header_support is set)"),
                    finding.fix(),
                )),
            );
            return Ok(report.finish(args.json));
        }
        Err(failure) => return Err(failure),
    };

    // 1. Server.
    let info = client.server_info();
    report.server = json!({
        "url": url,
        "name": info.server_name,
        "version": info.version,
        "headers": info.headers,
    });
    if !info.headers {
        let finding = nats_otel::Finding::ServerWithoutHeaders {
            server: format!("nats-server {}", info.version),
        };
        report.push(
            Step::new(
                "server",
                None,
                Status::Fail,
                format!("nats-server {} does not support headers", info.version),
            )
            .cause(Cause::new(
                "server_without_headers",
                finding.to_string(),
                finding.fix(),
            )),
        );
        return Ok(report.finish(args.json));
    }
    report.push(Step::new(
        "server",
        None,
        Status::Ok,
        format!("nats-server {} at {url} supports headers", info.version),
    ));

    // Subjects and the stream.
    let jetstream = jetstream::new(client.clone());
    let mut stream = match &args.stream {
        Some(name) => Some(
            jetstream
                .get_stream(name)
                .await
                .map_err(|e| Failure(format!("stream {name}: {e}")))?,
        ),
        None => None,
    };
    let stream_subjects = match stream.as_mut() {
        Some(stream) => stream
            .info()
            .await
            .map_err(|e| Failure(format!("stream info: {e}")))?
            .config
            .subjects
            .clone(),
        None => Vec::new(),
    };
    let subject = match (&args.subject, &args.stream) {
        (Some(subject), _) => subject.clone(),
        (None, None) => format!("_nats_otel.doctor.{}", &probe.id()[..16]),
        (None, Some(name)) => {
            let pattern = stream_subjects.first().ok_or_else(|| {
                Failure(format!(
                    "stream {name} has no subjects of its own; name one with --subject"
                ))
            })?;
            concrete_subject(pattern)
        }
    };
    let listen = args.listen.clone().unwrap_or_else(|| subject.clone());
    let via_jetstream = stream_subjects.iter().any(|p| subject_matches(p, &subject));
    report.probe["subject"] = json!(subject);
    report.probe["listen"] = json!(listen);
    report.probe["stream"] = json!(args.stream);

    let fallback = match &args.kv_bucket {
        Some(bucket) => {
            let store = KvFallback::open_bucket(&jetstream, bucket)
                .await
                .map_err(|e| Failure(format!("KV bucket {bucket}: {e}")))?;
            let key =
                FallbackKey::from_fn("the doctor's probe id", |input| probe_id(input.payload));
            Some(
                KvFallback::new(store, key)
                    .on_write_failure(WriteFailure::Required)
                    .lookup_timeout(Duration::from_secs(2)),
            )
        }
        None => None,
    };

    // 2. Consumers first, so they see the probe.
    let mut core = client
        .subscribe(listen.clone())
        .await
        .map_err(|e| Failure(format!("subscribe to {listen}: {e}")))?
        .map(|m| Some(Core(m)))
        .with_trace_context_opt(fallback.clone());
    let mut js_consumer = None;
    if let Some(stream) = &stream {
        let consumer: jetstream::consumer::PullConsumer = stream
            .create_consumer(pull::Config {
                description: Some("nats-otel doctor probe (temporary)".to_owned()),
                deliver_policy: DeliverPolicy::New,
                ack_policy: jetstream::consumer::AckPolicy::None,
                filter_subject: listen.clone(),
                inactive_threshold: Duration::from_secs(60),
                ..Default::default()
            })
            .await
            .map_err(|e| {
                Failure(format!(
                    "cannot create a temporary consumer on stream {} filtered on {listen}: {e}",
                    args.stream.as_deref().unwrap_or_default()
                ))
            })?;
        js_consumer = Some(consumer);
    }
    let js_consumer_name = js_consumer.as_mut().map(|c| c.cached_info().name.clone());
    let mut js_messages = match &js_consumer {
        Some(consumer) => Some(
            consumer
                .messages()
                .await
                .map_err(|e| Failure(format!("consume from stream: {e}")))?
                .map(|m| m.ok().map(JsMessage))
                .with_trace_context_opt(fallback.clone()),
        ),
        None => None,
    };
    crate::round_trip(&client).await;

    // 3. Inject and publish.
    let request = Publish::new(subject.clone(), probe.payload())
        .header(PROBE_HEADER, &probe.id())
        .expect("valid probe header")
        .context(probe.context());
    let started = Instant::now();
    let (injected, published) = if via_jetstream {
        publish_through(
            JetStreamPublisher::new(jetstream.clone()),
            fallback.clone(),
            request,
        )
        .await
    } else {
        publish_through(
            CorePublisher::new(client.clone()),
            fallback.clone(),
            request,
        )
        .await
    };
    let injected_analysis = HeaderAnalysis::of(injected.as_ref());
    report.push(inject_step(
        &probe,
        &injected_analysis,
        fallback.as_ref(),
        &subject,
    ));
    let published_seq = match published {
        Ok((summary, seq)) => {
            report.push(Step::new("publish", None, Status::Ok, summary));
            seq
        }
        Err(error) => {
            report.push(
                Step::new(
                    "publish",
                    None,
                    Status::Fail,
                    format!("publishing to {subject} failed: {error}"),
                )
                .cause(Cause::new(
                    "publish_failed",
                    format!("the probe could not be published to {subject}: {error}"),
                    "check the publish permissions of this user, and that a stream captures the \
                     subject when publishing with JetStream",
                )),
            );
            return Ok(report.finish(args.json));
        }
    };
    let _ = client.flush().await;

    // 4. Consume on each path.
    let deadline = tokio::time::Instant::now() + args.timeout;
    let (arrival, others) =
        wait_for_probe(&mut core, &probe.id(), started, deadline, |_| None).await;
    let ctx = PathContext {
        probe: &probe,
        injected: &injected_analysis,
        subject: &subject,
        listen: &listen,
        timeout: args.timeout,
        stream: None,
    };
    report.extend(evaluate_path("core", &ctx, arrival, others));

    if let Some(mut messages) = js_messages.take() {
        let deadline = tokio::time::Instant::now() + args.timeout;
        let (arrival, others) = wait_for_probe(
            &mut messages,
            &probe.id(),
            started,
            deadline,
            |m: &JsMessage| m.0.info().ok().map(|i| i.stream_sequence),
        )
        .await;
        let consumed_seq = arrival.as_ref().and_then(|a| a.stream_sequence);
        let ctx = PathContext {
            stream: args.stream.as_deref(),
            ..ctx
        };
        report.extend(evaluate_path("jetstream", &ctx, arrival, others));

        // Clean up: the consumer, and the probe unless kept.
        drop(messages);
        if let Some(stream) = &stream {
            if let Some(name) = &js_consumer_name {
                let _ = stream.delete_consumer(name).await;
            }
            if !args.keep {
                for seq in [published_seq, consumed_seq].into_iter().flatten() {
                    let _ = stream.delete_message(seq).await;
                }
            }
        }
    } else if let (Some(stream), Some(seq), false) = (&stream, published_seq, args.keep) {
        let _ = stream.delete_message(seq).await;
    }

    Ok(report.finish(args.json))
}

/// A JetStream message wrapper so both paths share [`wait_for_probe`].
struct JsMessage(jetstream::Message);

impl std::ops::Deref for JsMessage {
    type Target = async_nats::Message;
    fn deref(&self) -> &Self::Target {
        &self.0.message
    }
}

impl nats_otel::ConsumerItem for Core {
    type WithContext = (Core, Context);
    fn meta(&self) -> Option<nats_otel::MessageMeta<'_>> {
        Some(nats_otel::MessageMeta::of(&self.0))
    }
    fn attach(self, cx: Context) -> Self::WithContext {
        (self, cx)
    }
}

impl nats_otel::ConsumerItem for JsMessage {
    type WithContext = (JsMessage, Context);
    fn meta(&self) -> Option<nats_otel::MessageMeta<'_>> {
        nats_otel::ConsumerItem::meta(&self.0)
    }
    fn attach(self, cx: Context) -> Self::WithContext {
        (self, cx)
    }
}

/// Wraps a stream of optional messages with the consumer adapter, with the
/// KV fallback when configured; yields `Option<(message, context)>`.
trait WithTraceContextOpt: Stream + Sized {
    fn with_trace_context_opt<M>(
        self,
        fallback: Option<KvFallback>,
    ) -> futures::stream::BoxStream<'static, Option<(M, Context)>>
    where
        Self: Stream<Item = Option<M>> + Send + 'static,
        M: nats_otel::ConsumerItem<WithContext = (M, Context)> + Send + 'static;
}

impl<S: Stream> WithTraceContextOpt for S {
    fn with_trace_context_opt<M>(
        self,
        fallback: Option<KvFallback>,
    ) -> futures::stream::BoxStream<'static, Option<(M, Context)>>
    where
        Self: Stream<Item = Option<M>> + Send + 'static,
        M: nats_otel::ConsumerItem<WithContext = (M, Context)> + Send + 'static,
    {
        let ok = self.map(|m| m.ok_or(()));
        match fallback {
            Some(fallback) => ok
                .with_trace_context()
                .fallback(fallback)
                .map(Result::ok)
                .boxed(),
            None => ok.with_trace_context().map(Result::ok).boxed(),
        }
    }
}

/// A subject the stream pattern captures, with wildcards filled in.
fn concrete_subject(pattern: &str) -> String {
    pattern
        .split('.')
        .map(|token| match token {
            "*" | ">" => PROBE_TOKEN,
            other => other,
        })
        .collect::<Vec<_>>()
        .join(".")
}

fn inject_step(
    probe: &Probe,
    injected: &HeaderAnalysis,
    fallback: Option<&KvFallback>,
    subject: &str,
) -> Step {
    let data = json!({
        "headers": injected.headers_json(),
        "kv_bucket": fallback.map(|f| f.store().name.clone()),
    });
    let kv = fallback
        .map(|f| format!("; carrier also written to KV bucket {}", f.store().name))
        .unwrap_or_default();
    match &injected.traceparent {
        Some(tp) if tp.trace_id() == Some(probe.id().as_str()) => Step::new(
            "inject",
            None,
            Status::Ok,
            format!("{}: {}{kv}", tp.header, tp.value),
        )
        .data(data),
        other => {
            let what = match other {
                Some(tp) => format!("the layer wrote {}: {}", tp.header, tp.value),
                None => "the layer wrote no traceparent".to_owned(),
            };
            Step::new("inject", None, Status::Fail, what.clone())
                .cause(Cause::new(
                    "not_injected",
                    format!(
                        "{what} for the probe's trace {} on {subject}",
                        probe.trace_id
                    ),
                    "this is a nats-otel bug if TracePropagationLayer was used; please report it",
                ))
                .data(data)
        }
    }
}

#[derive(Clone, Copy)]
struct PathContext<'a> {
    probe: &'a Probe,
    injected: &'a HeaderAnalysis,
    subject: &'a str,
    listen: &'a str,
    timeout: Duration,
    stream: Option<&'a str>,
}

fn evaluate_path(
    path: &'static str,
    ctx: &PathContext<'_>,
    arrival: Option<Arrival>,
    others: usize,
) -> Vec<Step> {
    let Some(arrival) = arrival else {
        let via = match ctx.stream {
            Some(stream) => format!(" through stream {stream}"),
            None => String::new(),
        };
        let hop = if ctx.subject == ctx.listen {
            format!("the subject {}", ctx.subject)
        } else {
            format!("{} to {}", ctx.subject, ctx.listen)
        };
        let mut text = format!(
            "the probe did not arrive on {}{via} within {:?}",
            ctx.listen, ctx.timeout
        );
        if others > 0 {
            let _ = write!(text, " ({others} other messages did)");
        }
        let fix = match ctx.stream {
            Some(stream) => format!(
                "check that whatever moves {hop} is running, that stream {stream} captures {}, \
                 and the permissions; or raise --timeout",
                ctx.listen
            ),
            None => format!(
                "check that whatever moves {hop} is running and the subscribe/publish \
                 permissions; or raise --timeout"
            ),
        };
        return vec![
            Step::new("transit", Some(path), Status::Fail, text.clone())
                .cause(Cause::new("not_delivered", text, fix))
                .data(json!({ "arrived": false, "other_messages": others })),
            Step::new(
                "extract",
                Some(path),
                Status::Skip,
                "nothing arrived".to_owned(),
            ),
            Step::new(
                "trace",
                Some(path),
                Status::Skip,
                "nothing arrived".to_owned(),
            ),
        ];
    };

    let seen = HeaderAnalysis::of(arrival.headers.as_ref());
    let mut transit = transit_step(path, ctx, &arrival, &seen);
    let record = arrival.record.as_ref();
    let expected = ctx.probe.trace_id;

    let extract = match record.map(|r| r.source()) {
        Some(ContextSource::Headers) => {
            let how = match record.and_then(|r| r.header_name()) {
                Some(name) => format!("from headers (header {name}, matched ignoring case)"),
                None => "from headers (traceparent)".to_owned(),
            };
            Step::new("extract", Some(path), Status::Ok, how)
        }
        Some(ContextSource::Kv) | Some(ContextSource::Payload) => {
            let source = record.map(|r| r.source().as_str()).unwrap_or_default();
            let why = record
                .and_then(|r| r.reason())
                .map(|r| r.to_string())
                .unwrap_or_default();
            let text =
                format!("the headers gave no context ({why}); the {source} fallback recovered it");
            Step::new(
                "extract",
                Some(path),
                Status::Warn,
                format!("from the {source} fallback"),
            )
            .cause(Cause::new(
                "kv_recovered",
                text,
                "consumers with the KV fallback keep the trace; fix the transit step so \
                 the others do too",
            ))
        }
        _ => {
            let reason = record
                .and_then(|r| r.reason())
                .map(|r| format!("{}: {r}", r.as_str()))
                .unwrap_or_else(|| "no record".to_owned());
            let fallback = record
                .and_then(|r| r.fallback_reason())
                .map(|r| format!("; fallback: {r}"))
                .unwrap_or_default();
            Step::new(
                "extract",
                Some(path),
                Status::Fail,
                format!("no context: {}", describe_record(record)),
            )
            .cause(Cause::new(
                "not_extracted",
                format!("the consumer found no context ({reason}{fallback})"),
                "see the transit step; nats-otel consumers explain the reason in \
                 ExtractionRecord::reason()",
            ))
        }
    }
    .data(record_json(record));

    let trace = match arrival.trace_id {
        Some(id) if id == expected => Step::new(
            "trace",
            Some(path),
            Status::Ok,
            format!("consumer continues trace {id}"),
        ),
        Some(id) => {
            let text = format!(
                "the consumer's context is trace {id}, not the probe's {expected}: a hop \
                 started a new trace"
            );
            Step::new("trace", Some(path), Status::Fail, text.clone()).cause(Cause::new(
                "different_trace",
                text,
                "see the transit step",
            ))
        }
        None => {
            let text =
                format!("the consumer would start a new trace instead of continuing {expected}");
            Step::new("trace", Some(path), Status::Fail, text.clone()).cause(Cause::new(
                "new_trace",
                text,
                "see the transit and extract steps",
            ))
        }
    };

    // Lost headers that a fallback made up for are a warning, not a break.
    if transit.status == Status::Fail && trace.status == Status::Ok {
        transit.status = Status::Warn;
        if let Some(cause) = transit.cause.as_mut() {
            cause
                .text
                .push_str("; the KV fallback recovered the context");
        }
    }
    vec![transit, extract, trace]
}

fn transit_step(
    path: &'static str,
    ctx: &PathContext<'_>,
    arrival: &Arrival,
    seen: &HeaderAnalysis,
) -> Step {
    let probe = ctx.probe;
    let sent_names = ctx.injected.names().join(", ");
    let arrived_names = seen.names();
    let where_ = match arrival.stream_sequence {
        Some(seq) => format!(
            "{} (stream {} sequence {seq})",
            arrival.subject,
            ctx.stream.unwrap_or_default()
        ),
        None => arrival.subject.clone(),
    };
    let headers_text = if seen.pairs.is_empty() {
        "no headers".to_owned()
    } else {
        let list: Vec<String> = seen.pairs.iter().map(|(n, v)| format!("{n}={v}")).collect();
        format!("headers {}", list.join(", "))
    };
    let summary = format!(
        "arrived on {where_} after {} ms with {headers_text}",
        arrival.elapsed.as_millis()
    );
    let data = json!({
        "arrived": true,
        "subject": arrival.subject,
        "stream_sequence": arrival.stream_sequence,
        "elapsed_ms": arrival.elapsed.as_millis() as u64,
        "headers": seen.headers_json(),
        "header_names": arrived_names,
        "traceparent": seen.traceparent.as_ref().map(|t| t.to_json()),
        "misplaced": seen.misplaced_json(),
    });
    let hop = format!("between {} and {}", ctx.subject, ctx.listen);
    let step = |status, cause: Option<Cause>| {
        let mut s = Step::new("transit", Some(path), status, summary.clone()).data(data.clone());
        s.cause = cause;
        s
    };

    let Some(tp) = &seen.traceparent else {
        if seen.pairs.is_empty() {
            return step(
                Status::Fail,
                Some(Cause::new(
                    "headers_stripped",
                    format!(
                        "headers stripped in transit: the probe left with headers ({sent_names}) \
                         and arrived with none. Something {hop} republishes only the payload: a \
                         relay or bridge that copies subject and data but not headers, a \
                         connector, or a client or server without header support"
                    ),
                    "make that hop forward the headers (async-nats: publish_with_headers with \
                     the incoming message's headers); or enable the KV fallback \
                     (TracePropagationLayer::fallback and .fallback(...) on the consumer), or \
                     embed a TraceCarrier in the payload",
                )),
            );
        }
        if let Some(m) = seen.misplaced.first() {
            let same = if m.trace_id().as_deref() == Some(probe.id().as_str()) {
                " and carries the probe's trace id"
            } else {
                ""
            };
            return step(
                Status::Fail,
                Some(Cause::new(
                    "header_renamed",
                    format!(
                        "header renamed in transit: no traceparent arrived, but a \
                         traceparent-shaped value arrived under the unexpected header {:?}{same}. \
                         Something {hop} renamed traceparent to {}",
                        m.header, m.header
                    ),
                    format!(
                        "make that hop keep the W3C name traceparent; if the rename is \
                         deliberate, read {} with a custom propagator \
                         (ContextExtractor::propagator)",
                        m.header
                    ),
                )),
            );
        }
        return step(
            Status::Fail,
            Some(Cause::new(
                "traceparent_dropped",
                format!(
                    "traceparent dropped in transit: other headers arrived ({}) but no \
                     traceparent in any casing. Something {hop} rebuilt the headers: it keeps \
                     only some, or it consumed and republished without injecting (a no-op \
                     global propagator in that service, or publishing outside any span)",
                    arrived_names.join(", ")
                ),
                "in that hop, forward all headers, or extract the incoming context and publish \
                 inside it through TracePropagationLayer; for other instrumentation call \
                 opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new())",
            )),
        );
    };

    if let Some(problem) = tp.problem {
        let sent = ctx
            .injected
            .traceparent
            .as_ref()
            .map(|t| t.value.clone())
            .unwrap_or_default();
        return step(
            Status::Fail,
            Some(Cause::new(
                "malformed_traceparent",
                format!(
                    "malformed value in transit: {} arrived as {:?} ({problem}); the probe sent \
                     {sent:?}. Something {hop} rewrote the value",
                    tp.header, tp.value
                ),
                "make that hop forward the value unchanged; W3C requires \
                 00-<32 lowercase hex>-<16 lowercase hex>-<2 hex>",
            )),
        );
    }

    let arrived_trace = tp.trace_id().unwrap_or_default();
    if arrived_trace != probe.id() {
        return step(
            Status::Fail,
            Some(Cause::new(
                "trace_replaced",
                format!(
                    "trace replaced in transit: a valid traceparent arrived for trace \
                     {arrived_trace}, not the probe's {}. Something {hop} consumed the probe \
                     and republished it in a new trace instead of continuing the incoming one",
                    probe.trace_id
                ),
                "in that hop, extract the incoming context (with_trace_context / \
                 ContextExtractor) and publish inside cx.handler_span(...), so the new message \
                 continues the trace",
            )),
        );
    }

    let sent_names = ctx.injected.traceparent_names();
    let arrived_names = seen.traceparent_names();
    if sent_names != arrived_names {
        let missing = readers_missing(&arrived_names);
        let who = match &missing {
            Some(readers) => format!(
                "nats-otel matches any casing, so the trace holds for its consumers, but {readers} \
                 start a new trace"
            ),
            None => "every common reader still finds it".to_owned(),
        };
        return step(
            if missing.is_some() {
                Status::Warn
            } else {
                Status::Ok
            },
            Some(Cause::new(
                "header_recased",
                format!(
                    "header re-cased in transit: traceparent left as {} and arrived as {} \
                     (nats-server 2.11.0 to 2.12.11 rewrite Traceparent to traceparent; other \
                     hops rebuild names). {who}",
                    sent_names.join(" + "),
                    arrived_names.join(" + "),
                ),
                "make that hop keep header names (nats-server 2.12.12 or 2.14 and later keep \
                 them); publish with HeaderNames::Both (the default) so that Go and W3C-exact \
                 readers each find their name; or read headers case-insensitively \
                 (nats_otel::HeaderExtractor)",
            )),
        );
    }

    let sent_span = ctx.injected.traceparent.as_ref().and_then(|t| t.span_id());
    if tp.span_id() != sent_span {
        let mut s = step(Status::Ok, None);
        s.summary
            .push_str("; a hop continued the trace (its own span is the parent now)");
        return s;
    }
    step(Status::Ok, None)
}

/// The doctor's findings so far.
struct Report {
    server: Value,
    probe: Value,
    steps: Vec<Step>,
}

impl Report {
    fn new(url: &str, probe: &Probe) -> Self {
        Self {
            server: json!({ "url": url }),
            probe: json!({
                "trace_id": probe.trace_id.to_string(),
                "span_id": probe.span_id.to_string(),
            }),
            steps: Vec::new(),
        }
    }

    fn push(&mut self, step: Step) {
        self.steps.push(step);
    }

    fn extend(&mut self, steps: Vec<Step>) {
        self.steps.extend(steps);
    }

    /// Prints the report and returns the exit code.
    fn finish(self, json: bool) -> u8 {
        let broken = self.steps.iter().find(|s| s.status == Status::Fail);
        let warnings: Vec<&Step> = self
            .steps
            .iter()
            .filter(|s| s.status == Status::Warn)
            .collect();
        if json {
            let verdict = match broken {
                Some(step) => json!({
                    "status": "broken",
                    "step": step.name,
                    "path": step.path,
                    "cause": step.cause.as_ref().map(|c| c.code),
                    "message": step.cause.as_ref().map(|c| c.text.clone()),
                    "fix": step.cause.as_ref().map(|c| c.fix.clone()),
                }),
                None => json!({ "status": "healthy" }),
            };
            let out = json!({
                "healthy": broken.is_none(),
                "server": self.server,
                "probe": self.probe,
                "steps": self.steps.iter().map(Step::to_json).collect::<Vec<_>>(),
                "verdict": verdict,
                "warnings": warnings.iter().map(|s| json!({
                    "step": s.name,
                    "path": s.path,
                    "cause": s.cause.as_ref().map(|c| c.code),
                    "message": s.cause.as_ref().map(|c| c.text.clone()),
                    "fix": s.cause.as_ref().map(|c| c.fix.clone()),
                })).collect::<Vec<_>>(),
            });
            println!(
                "{}",
                serde_json::to_string_pretty(&out).expect("JSON report")
            );
        } else {
            print!("{}", self.text(broken, &warnings));
        }
        if broken.is_some() {
            EXIT_BROKEN
        } else {
            EXIT_HEALTHY
        }
    }

    fn text(&self, broken: Option<&Step>, warnings: &[&Step]) -> String {
        let mut out = String::new();
        let s = |v: &Value, k: &str| v[k].as_str().unwrap_or("-").to_owned();
        let _ = writeln!(out, "nats-otel doctor");
        let _ = writeln!(out, "  server  {}", s(&self.server, "url"));
        let _ = write!(out, "  probe   trace {}", s(&self.probe, "trace_id"));
        if self.probe.get("subject").is_some() {
            let _ = write!(
                out,
                ", published to {}, expected on {}",
                s(&self.probe, "subject"),
                s(&self.probe, "listen")
            );
            if let Some(stream) = self.probe["stream"].as_str() {
                let _ = write!(out, " and in stream {stream}");
            }
        }
        let _ = writeln!(out);
        let _ = writeln!(out);
        for step in &self.steps {
            let _ = writeln!(
                out,
                "{:<5} {:<19} {}",
                step.status.tag(),
                step.label(),
                step.summary
            );
        }
        let _ = writeln!(out);
        match broken {
            Some(step) => {
                let _ = writeln!(out, "verdict: BROKEN at {}", step.label());
                if let Some(cause) = &step.cause {
                    let _ = writeln!(out, "  cause: {}", cause.text);
                    let _ = writeln!(out, "  fix:   {}", cause.fix);
                }
            }
            None => {
                let _ = writeln!(
                    out,
                    "verdict: HEALTHY: the consumer continues the probe's trace"
                );
            }
        }
        for step in warnings {
            if let Some(cause) = &step.cause {
                let _ = writeln!(out, "warning at {}: {}", step.label(), cause.text);
                let _ = writeln!(out, "  fix:   {}", cause.fix);
            }
        }
        out
    }
}
