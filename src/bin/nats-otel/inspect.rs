//! `nats-otel inspect`: tail messages without acknowledging them and print,
//! per message, what its headers say about its trace context.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, consumer::DeliverPolicy};
use clap::{ArgGroup, Args};
use futures::stream::BoxStream;
use futures::StreamExt;
use nats_otel::consume::{ConsumerItem, ContextExtractor, MessageMeta};
use nats_otel::fallback::FallbackKey;
use nats_otel::{ContextSource, KvFallback, MessageContextExt};
use serde_json::json;

use crate::analysis::{describe_record, extracted_trace_id, record_json, HeaderAnalysis};
use crate::{parse_seconds, Failure, ServerArgs, EXIT_BROKEN, EXIT_HEALTHY};

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("source").required(true).args(["subject", "stream"])))]
pub(crate) struct InspectArgs {
    #[command(flatten)]
    server: ServerArgs,

    /// Tail this core NATS subject (wildcards allowed).
    #[arg(long, value_name = "SUBJECT")]
    subject: Option<String>,

    /// Read this JetStream stream, through an ordered consumer that
    /// acknowledges nothing. By default only new messages.
    #[arg(long, value_name = "STREAM")]
    stream: Option<String>,

    /// With --stream: read what this consumer reads (its filter subject),
    /// starting after its ack floor, i.e. the messages it has not
    /// acknowledged yet. The consumer itself is not touched.
    #[arg(long, value_name = "CONSUMER", requires = "stream")]
    consumer: Option<String>,

    /// With --stream: start from the stream's first message.
    #[arg(long, requires = "stream")]
    all: bool,

    /// Only messages on subjects matching this filter (with --stream).
    #[arg(
        long,
        value_name = "SUBJECT",
        requires = "stream",
        conflicts_with = "consumer"
    )]
    filter: Option<String>,

    /// Stop after this many messages.
    #[arg(long, short = 'n', value_name = "N")]
    count: Option<u64>,

    /// Stop when no message arrived for this many seconds.
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    timeout: Option<Duration>,

    /// Also look the carrier up in this KV fallback bucket when the headers
    /// give no context (needs --kv-key).
    #[arg(long, value_name = "BUCKET", requires = "kv_key")]
    kv_bucket: Option<String>,

    /// How the publisher derives fallback keys: header:NAME, subject or
    /// token:N (0-based subject token).
    #[arg(long, value_name = "RULE", requires = "kv_bucket", value_parser = parse_key_rule)]
    kv_key: Option<KeyRule>,

    /// Print one JSON object per message (JSON lines).
    #[arg(long)]
    pub(crate) json: bool,
}

/// A parsed `--kv-key` rule.
#[derive(Debug, Clone)]
pub(crate) enum KeyRule {
    Header(String),
    Subject,
    Token(usize),
}

impl KeyRule {
    fn key(&self) -> FallbackKey {
        match self {
            Self::Header(name) => FallbackKey::header(name.clone()),
            Self::Subject => FallbackKey::subject(),
            Self::Token(i) => FallbackKey::subject_token(*i),
        }
    }
}

fn parse_key_rule(value: &str) -> Result<KeyRule, String> {
    if value == "subject" {
        return Ok(KeyRule::Subject);
    }
    if let Some(name) = value.strip_prefix("header:").filter(|n| !n.is_empty()) {
        return Ok(KeyRule::Header(name.to_owned()));
    }
    if let Some(index) = value.strip_prefix("token:") {
        return index
            .parse()
            .map(KeyRule::Token)
            .map_err(|_| format!("{index:?} is not a token index"));
    }
    Err(format!(
        "{value:?}: expected header:NAME, subject or token:N"
    ))
}

/// One consumed message, core or JetStream.
enum Item {
    Core(async_nats::Message),
    Js(Box<jetstream::Message>),
}

impl Item {
    fn meta(&self) -> MessageMeta<'_> {
        match self {
            Self::Core(m) => MessageMeta::of(m),
            Self::Js(m) => ConsumerItem::meta(m.as_ref()).expect("a message has metadata"),
        }
    }
}

#[derive(Default)]
struct Tally {
    seen: u64,
    without_context: u64,
}

pub(crate) async fn run(args: InspectArgs) -> Result<u8, Failure> {
    let client = args.server.connect().await?;
    let jetstream = jetstream::new(client.clone());

    let mut extractor = ContextExtractor::new();
    if let (Some(bucket), Some(rule)) = (&args.kv_bucket, &args.kv_key) {
        let store = jetstream
            .get_key_value(bucket)
            .await
            .map_err(|e| Failure(format!("KV bucket {bucket}: {e}")))?;
        extractor = extractor.fallback(KvFallback::new(store, rule.key()));
    }

    let (mut messages, what): (BoxStream<'static, Result<Item, String>>, String) =
        match (&args.subject, &args.stream) {
            (Some(subject), _) => {
                let subscriber = client
                    .subscribe(subject.clone())
                    .await
                    .map_err(|e| Failure(format!("subscribe to {subject}: {e}")))?;
                crate::round_trip(&client).await;
                (
                    subscriber.map(|m| Ok(Item::Core(m))).boxed(),
                    format!("listening on subject {subject}"),
                )
            }
            (None, Some(name)) => open_stream(&jetstream, name, &args).await?,
            (None, None) => unreachable!("clap requires --subject or --stream"),
        };
    eprintln!("nats-otel inspect: {what}");

    let mut tally = Tally::default();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        if args.count.is_some_and(|n| tally.seen >= n) {
            break;
        }
        let next = async {
            match args.timeout {
                Some(idle) => tokio::time::timeout(idle, messages.next())
                    .await
                    .unwrap_or(None),
                None => messages.next().await,
            }
        };
        let item = tokio::select! {
            item = next => item,
            _ = &mut ctrl_c => None,
        };
        let Some(item) = item else {
            break;
        };
        let item = item.map_err(Failure)?;
        let meta = item.meta();
        let cx = extractor.extract_or_lookup(&meta).await;
        let record = cx.extraction();
        if record.is_none_or(|r| r.source() == ContextSource::None) {
            tally.without_context += 1;
        }
        tally.seen += 1;
        let analysis = HeaderAnalysis::of(meta.headers);
        let trace_id = extracted_trace_id(&cx).map(|t| t.to_string());
        let seq = meta.jetstream.map(|j| j.stream_sequence);
        if args.json {
            println!(
                "{}",
                json!({
                    "subject": meta.subject,
                    "stream": meta.jetstream.map(|j| j.stream),
                    "stream_sequence": seq,
                    "header_names": analysis.names(),
                    "headers": analysis.headers_json(),
                    "traceparent": analysis.traceparent.as_ref().map(|t| t.to_json()),
                    "misplaced": analysis.misplaced_json(),
                    "trace_id": trace_id,
                    "context": record_json(record),
                })
            );
        } else {
            println!("{}", line(&meta, &analysis, trace_id.as_deref(), record));
        }
    }
    eprintln!(
        "nats-otel inspect: {} messages, {} without trace context",
        tally.seen, tally.without_context
    );
    Ok(if tally.without_context > 0 {
        EXIT_BROKEN
    } else {
        EXIT_HEALTHY
    })
}

/// One human-readable line per message.
fn line(
    meta: &MessageMeta<'_>,
    analysis: &HeaderAnalysis,
    trace_id: Option<&str>,
    record: Option<&nats_otel::ExtractionRecord>,
) -> String {
    let mut out = meta.subject.to_owned();
    if let Some(js) = &meta.jetstream {
        out.push_str(&format!("  seq={}", js.stream_sequence));
    }
    let names = analysis.names();
    out.push_str(&format!(
        "  headers={}",
        if names.is_empty() {
            "-".to_owned()
        } else {
            names.join(",")
        }
    ));
    let traceparent = match &analysis.traceparent {
        None => "missing".to_owned(),
        Some(tp) => {
            let validity = match tp.problem {
                None => "valid".to_owned(),
                Some(problem) => format!("invalid:{}", problem.as_str()),
            };
            if tp.recased() {
                format!("{validity}(as {})", tp.header)
            } else {
                validity
            }
        }
    };
    out.push_str(&format!("  traceparent={traceparent}"));
    for m in &analysis.misplaced {
        out.push_str(&format!("  misplaced={}", m.header));
    }
    out.push_str(&format!("  trace_id={}", trace_id.unwrap_or("-")));
    out.push_str(&format!("  context={}", describe_record(record)));
    if let Some(record) = record.filter(|r| r.source() != ContextSource::Headers) {
        if let Some(reason) = record.reason() {
            out.push_str(&format!("  why=\"{reason}\""));
        }
        if let Some(reason) = record.fallback_reason() {
            out.push_str(&format!("  fallback=\"{reason}\""));
        }
    }
    out
}

async fn open_stream(
    jetstream: &jetstream::Context,
    name: &str,
    args: &InspectArgs,
) -> Result<(BoxStream<'static, Result<Item, String>>, String), Failure> {
    let stream = jetstream
        .get_stream(name)
        .await
        .map_err(|e| Failure(format!("stream {name}: {e}")))?;
    let (filter, start, from) = match &args.consumer {
        Some(consumer) => {
            let info = stream
                .consumer_info(consumer)
                .await
                .map_err(|e| Failure(format!("consumer {consumer} of stream {name}: {e}")))?;
            let after = info.ack_floor.stream_sequence;
            let policy = if args.all {
                DeliverPolicy::All
            } else {
                DeliverPolicy::ByStartSequence {
                    start_sequence: after + 1,
                }
            };
            let from = if args.all {
                "from the first message".to_owned()
            } else {
                format!("after consumer {consumer}'s ack floor (sequence {after})")
            };
            (info.config.filter_subject.clone(), policy, from)
        }
        None => {
            let filter = args.filter.clone().unwrap_or_default();
            if args.all {
                (
                    filter,
                    DeliverPolicy::All,
                    "from the first message".to_owned(),
                )
            } else {
                (filter, DeliverPolicy::New, "new messages only".to_owned())
            }
        }
    };
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: filter.clone(),
            deliver_policy: start,
            ..Default::default()
        })
        .await
        .map_err(|e| Failure(format!("cannot create an ordered consumer on {name}: {e}")))?;
    let messages = consumer
        .messages()
        .await
        .map_err(|e| Failure(format!("read stream {name}: {e}")))?;
    let filter_text = if filter.is_empty() {
        String::new()
    } else {
        format!(" filtered on {filter}")
    };
    Ok((
        messages
            .map(|m| {
                m.map(|m| Item::Js(Box::new(m)))
                    .map_err(|e| format!("reading the stream: {e}"))
            })
            .boxed(),
        format!("reading stream {name}{filter_text}, {from}, without acknowledging"),
    ))
}
