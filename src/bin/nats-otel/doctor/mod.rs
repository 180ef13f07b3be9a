//! `nats-otel doctor`: publish a probe with a known trace context, consume
//! it, and name the first step that breaks propagation.
//!
//! This module does the I/O (connecting, publishing the probe through the
//! layer, listening on core NATS and JetStream, the KV fallback);
//! [`publish`] sends the probe through the layer, [`link`] waits for
//! interest across servers (`--listen-server`); [`evaluate`] judges what
//! was seen without a server, [`transit`] names what a hop did to the
//! headers, [`hops`] follows the probe through the servers (`--hops`), and
//! [`render`] prints the report.

mod evaluate;
mod hops;
mod link;
mod publish;
mod render;
mod transit;

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, consumer::DeliverPolicy};
use clap::Args;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use nats_otel::consume::ConsumerItem;
use nats_otel::fallback::{FallbackKey, WritePolicy};
use nats_otel::hops::TRACE_DEST_HEADER;
use nats_otel::{
    ContextSource, CorePublisher, JetStreamPublisher, KvFallback, MessageContextExt, Publish,
    TraceContextStreamExt,
};
use opentelemetry::Context;
use serde_json::json;

use self::evaluate::{
    evaluate_path, inject_step, probe_id, publish_step, server_refused_step, server_step, Arrival,
    PathContext, Probe, Status,
};
use self::publish::publish_through;
use self::render::Report;
use crate::analysis::{extracted_trace_id, subject_matches, HeaderAnalysis};
use crate::{parse_seconds, Failure, ServerArgs};

/// The header that marks the probe; it shows whether non-trace headers
/// survive the path.
const PROBE_HEADER: &str = "Nats-Otel-Probe";
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

    /// Expect the probe on --listen through a connection to this server
    /// (e.g. the other side of a leafnode, gateway or route) instead of
    /// --server; the doctor waits until that subscription is known where
    /// the probe is published. The stream (--stream) is still read through
    /// --server.
    #[arg(long, value_name = "URL")]
    listen_server: Option<String>,

    /// Follow the probe through the servers with nats-server message
    /// tracing (used only with nats-server 2.12.12 or later): it carries
    /// Nats-Trace-Dest, every server it crosses reports, and the doctor
    /// prints the path hop by hop and names the hop where the trace
    /// headers were lost.
    #[arg(long)]
    hops: bool,

    /// With --hops: how long to keep collecting trace events once the
    /// probe arrived (or the wait for it ended), in seconds; stops earlier
    /// once every server the probe was forwarded to has reported.
    #[arg(long, value_name = "SECS", default_value = "1", value_parser = parse_seconds)]
    hops_window: Duration,

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

/// Waits for the probe on `messages`, skipping other traffic; returns what
/// arrived and how many other messages did.
async fn wait_for_probe<S, M>(
    messages: &mut S,
    id: &str,
    started: Instant,
    deadline: tokio::time::Instant,
) -> (Option<Arrival>, usize)
where
    S: Stream<Item = Option<(M, Context)>> + Unpin,
    M: ConsumerItem,
{
    let mut others = 0;
    loop {
        match tokio::time::timeout_at(deadline, messages.next()).await {
            Err(_) | Ok(None) => return (None, others),
            Ok(Some(None)) => others += 1,
            Ok(Some(Some((message, cx)))) => {
                let meta = message.meta();
                let Some(meta) = meta.filter(|m| probe_id(m.payload).as_deref() == Some(id)) else {
                    others += 1;
                    continue;
                };
                let arrival = Arrival {
                    subject: meta.subject.to_owned(),
                    headers: meta.headers.cloned(),
                    record: cx.extraction().cloned(),
                    trace_id: extracted_trace_id(&cx),
                    elapsed: started.elapsed(),
                    stream_sequence: meta.jetstream.map(|j| j.stream_sequence),
                };
                return (Some(arrival), others);
            }
        }
    }
}

/// Wraps a stream of optional messages (`None`: a read error) with the
/// consumer adapter, with the KV fallback when configured.
fn traced<S, M>(
    messages: S,
    fallback: Option<KvFallback>,
) -> BoxStream<'static, Option<(M, Context)>>
where
    S: Stream<Item = Option<M>> + Send + 'static,
    M: ConsumerItem<WithContext = (M, Context)> + Send + 'static,
{
    let ok = messages.map(|m| m.ok_or(()));
    match fallback {
        Some(fallback) => ok
            .with_trace_context()
            .fallback(fallback)
            .map(Result::ok)
            .boxed(),
        None => ok.with_trace_context().map(Result::ok).boxed(),
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

pub(crate) async fn run(args: DoctorArgs) -> Result<u8, Failure> {
    let url = args.server.url();
    let probe = Probe::new();
    let mut report = Report::new(&url, &probe);
    let client = match args.server.connect().await {
        Ok(client) => client,
        // nats-server 2.2+ with `no_header_support` refuses clients that
        // need headers (as async-nats does) at connect time.
        Err(Failure(error)) if error.contains("requires headers support") => {
            report.push(server_refused_step(&url, &error));
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
    report.push(server_step(&url, &info.version, info.headers));
    if !info.headers {
        return Ok(report.finish(args.json));
    }
    // The consumer's connection, and message tracing.
    let listen_url = args.listen_server.clone().unwrap_or_else(|| url.clone());
    let listen_client = match &args.listen_server {
        Some(server) => {
            let server = ServerArgs {
                server: Some(server.clone()),
            };
            let listen_client = server.connect().await?;
            let info = listen_client.server_info();
            report.server["listen"] =
                json!({ "url": listen_url, "name": info.server_name, "version": info.version });
            listen_client
        }
        None => client.clone(),
    };
    let mut servers = vec![(url.as_str(), &client)];
    if args.listen_server.is_some() {
        servers.push((listen_url.as_str(), &listen_client));
    }
    let mut tracer = None;
    if args.hops {
        match hops::start(&servers).await? {
            Ok(t) => tracer = Some(t),
            Err(skipped) => report.push(skipped),
        }
    }
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
                    .on_write_failure(WritePolicy::Required)
                    .lookup_timeout(Duration::from_secs(2)),
            )
        }
        None => None,
    };

    // 2. Consumers first, so they see the probe.
    let subscriber = listen_client
        .subscribe(listen.clone())
        .await
        .map_err(|e| Failure(format!("subscribe to {listen}: {e}")))?;
    let mut core = traced(subscriber.map(Some), fallback.clone());
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
        Some(consumer) => {
            let messages = consumer
                .messages()
                .await
                .map_err(|e| Failure(format!("consume from stream: {e}")))?;
            Some(traced(messages.map(Result::ok), fallback.clone()))
        }
        None => None,
    };
    crate::round_trip(&client).await;
    if args.listen_server.is_some() {
        crate::round_trip(&listen_client).await;
        let known = link::wait_interest(&client, &listen_client, args.timeout).await;
        report.server["listen"]["interest_propagated"] = json!(known);
    }

    // 3. Inject and publish.
    let mut request = Publish::new(subject.clone(), probe.payload())
        .header(PROBE_HEADER, &probe.id())
        .expect("valid probe header")
        .context(probe.context());
    if let Some(tracer) = &tracer {
        request = request
            .header(TRACE_DEST_HEADER, &tracer.dest)
            .expect("an inbox is a valid header value");
    }
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
    let kv_bucket = fallback.as_ref().map(|f| f.store().name.clone());
    report.push(inject_step(
        &probe,
        &injected_analysis,
        kv_bucket.as_deref(),
        &subject,
    ));
    report.push(publish_step(&subject, &published));
    let Ok((_, published_seq)) = published else {
        return Ok(report.finish(args.json));
    };
    let _ = client.flush().await;

    // 4. Consume on each path.
    let deadline = tokio::time::Instant::now() + args.timeout;
    let (arrival, others) = wait_for_probe(&mut core, &probe.id(), started, deadline).await;
    let ctx = PathContext {
        probe: &probe,
        injected: &injected_analysis,
        subject: &subject,
        listen: &listen,
        timeout: args.timeout,
        stream: None,
    };
    let core_steps = evaluate_path("core", &ctx, arrival.as_ref(), others);
    if let Some(tracer) = tracer.take() {
        let received = arrival
            .as_ref()
            .map(|a| HeaderAnalysis::of(a.headers.as_ref()).pairs);
        let from_fallback = arrival
            .as_ref()
            .and_then(|a| a.record.as_ref())
            .is_some_and(|r| r.source() != ContextSource::Headers);
        let (publisher, consumer) = (
            hops::Endpoint::of(&client),
            hops::Endpoint::of(&listen_client),
        );
        let traced = tracer.finish(hops::Outcome {
            publisher: &publisher,
            consumer: &consumer,
            listen: &listen,
            sent: &injected_analysis.pairs,
            received: received.as_deref(),
            recovered: from_fallback && core_steps.last().is_some_and(|s| s.status == Status::Ok),
            window: args.hops_window,
        });
        let traced = traced.await;
        report.push(traced.step);
        report.hops = traced.lines;
    }
    report.extend(core_steps);

    if let Some(mut messages) = js_messages.take() {
        let deadline = tokio::time::Instant::now() + args.timeout;
        let (arrival, others) = wait_for_probe(&mut messages, &probe.id(), started, deadline).await;
        let consumed_seq = arrival.as_ref().and_then(|a| a.stream_sequence);
        let ctx = PathContext {
            stream: args.stream.as_deref(),
            ..ctx
        };
        report.extend(evaluate_path("jetstream", &ctx, arrival.as_ref(), others));

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concrete_subject_fills_wildcards() {
        assert_eq!(concrete_subject("jobs.*"), "jobs.nats_otel_doctor");
        assert_eq!(
            concrete_subject("a.*.b.>"),
            "a.nats_otel_doctor.b.nats_otel_doctor"
        );
        assert_eq!(concrete_subject("orders"), "orders");
    }
}
