//! One span per server visited, made from that server's trace event.

use std::time::SystemTime;

use opentelemetry::trace::{
    Event, Span, SpanBuilder, SpanContext, SpanKind, Status, TraceContextExt, Tracer,
};
use opentelemetry::{Array, Context, KeyValue, StringValue, Value};

use super::event::{ConnectionKind, TraceEntry, TraceEvent};

/// At most this many span events per span (one per entry); a message fanned
/// out to thousands of subscribers would otherwise make a huge span.
pub(super) const MAX_SPAN_EVENTS: usize = 128;
/// At most this many next-hop server names on a span.
const MAX_NEXT_HOPS: usize = 32;
/// String attribute values are cut to this many bytes (at a character
/// boundary).
pub(super) const MAX_VALUE_LEN: usize = 256;

// Span attributes.
const SERVER_NAME: &str = "nats.server.name";
const SERVER_ID: &str = "nats.server.id";
const SERVER_VERSION: &str = "nats.server.version";
const SERVER_CLUSTER: &str = "nats.server.cluster";
const SERVER_DOMAIN: &str = "nats.server.domain";
const SERVER_NEXT_HOPS: &str = "nats.server.next_hops";
const MESSAGING_SYSTEM: &str = "messaging.system";
const DESTINATION: &str = "messaging.destination.name";
const ENVELOPE_SIZE: &str = "messaging.message.envelope.size";
const TRACE_HOP: &str = "nats.trace.hop";
const TRACE_HOPS: &str = "nats.trace.hops";
const ENTRIES_DROPPED: &str = "nats.trace.entries_dropped";
// Span-event attributes.
const CONNECTION_KIND: &str = "nats.connection.kind";
const CONNECTION_ID: &str = "nats.connection.id";
const CONNECTION_NAME: &str = "nats.connection.name";
const ACCOUNT: &str = "nats.account";
const PREVIOUS_HOP_SERVER: &str = "nats.previous_hop.server";
const NEXT_HOP_SERVER: &str = "nats.next_hop.server";
const NEXT_HOP_ID: &str = "nats.next_hop.id";
const SUBSCRIPTION: &str = "nats.subscription";
const QUEUE: &str = "nats.queue";
const MAPPED_TO: &str = "nats.subject.mapped_to";
const IMPORT_FROM: &str = "nats.service_import.from";
const IMPORT_TO: &str = "nats.service_import.to";
const EXPORT_TO: &str = "nats.stream_export.to";
const STREAM: &str = "nats.stream";
const STORED_SUBJECT: &str = "nats.stream.subject";
const NO_INTEREST: &str = "nats.stream.no_interest";
const ENTRY_TYPE: &str = "nats.trace.entry_type";
const ERROR_MESSAGE: &str = "error.message";

/// Makes (and ends) the span of one server's event, child of `parent`,
/// the message's PRODUCER span.
pub(super) fn record_span<T: Tracer>(tracer: &T, event: &TraceEvent, parent: SpanContext) {
    let times = event.entries.iter().filter_map(TraceEntry::timestamp);
    let start = times
        .clone()
        .min()
        .or(event.server.time)
        .unwrap_or_else(SystemTime::now);
    let end = times.max().unwrap_or(start).max(start);

    let server = &event.server;
    let mut attributes = Vec::with_capacity(12);
    attributes.push(KeyValue::new(MESSAGING_SYSTEM, "nats"));
    attributes.push(KeyValue::new(SERVER_NAME, text(&server.name)));
    attributes.push(KeyValue::new(SERVER_ID, text(&server.id)));
    attributes.push(KeyValue::new(SERVER_VERSION, text(&server.version)));
    if let Some(cluster) = &server.cluster {
        attributes.push(KeyValue::new(SERVER_CLUSTER, text(cluster)));
    }
    if let Some(domain) = &server.domain {
        attributes.push(KeyValue::new(SERVER_DOMAIN, text(domain)));
    }
    if let Some(ingress) = event.ingress() {
        attributes.push(KeyValue::new(DESTINATION, text(&ingress.subject)));
    }
    if event.request.msg_size > 0 {
        attributes.push(KeyValue::new(ENVELOPE_SIZE, int(event.request.msg_size)));
    }
    if let Some(hop) = event.hop() {
        attributes.push(KeyValue::new(TRACE_HOP, text(hop)));
    }
    if event.hops > 0 {
        attributes.push(KeyValue::new(TRACE_HOPS, int(event.hops)));
    }

    let mut events = Vec::with_capacity(event.entries.len().min(MAX_SPAN_EVENTS));
    let mut next_hops: Vec<StringValue> = Vec::new();
    let mut status = Status::Unset;
    for entry in &event.entries {
        match entry {
            TraceEntry::Egress(e) if e.kind.is_server_link() && next_hops.len() < MAX_NEXT_HOPS => {
                if let Some(name) = &e.name {
                    next_hops.push(text(name).into());
                }
            }
            TraceEntry::Ingress(e) if e.error.is_some() => status = failed("ingress", &e.error),
            TraceEntry::JetStream(e) if e.error.is_some() => status = failed("jetstream", &e.error),
            _ => {}
        }
        if events.len() < MAX_SPAN_EVENTS {
            events.push(span_event(entry, start));
        }
    }
    if !next_hops.is_empty() {
        attributes.push(KeyValue::new(
            SERVER_NEXT_HOPS,
            Value::Array(Array::String(next_hops)),
        ));
    }
    let dropped = event.entries.len() - events.len();
    if dropped > 0 {
        attributes.push(KeyValue::new(ENTRIES_DROPPED, int(dropped as u64)));
    }

    let parent = Context::new().with_remote_span_context(parent);
    let mut span = SpanBuilder::from_name(format!("nats-server {}", text(&server.name)))
        .with_kind(SpanKind::Internal)
        .with_start_time(start)
        .with_attributes(attributes)
        .with_events(events)
        .start_with_context(tracer, &parent);
    if !matches!(status, Status::Unset) {
        span.set_status(status);
    }
    span.end_with_timestamp(end);
}

fn failed(what: &str, error: &Option<String>) -> Status {
    Status::error(format!("{what}: {}", text(error.as_deref().unwrap_or(""))))
}

/// One entry as a span event, at its own time (`fallback` when it has none).
fn span_event(entry: &TraceEntry, fallback: SystemTime) -> Event {
    let mut attrs = Vec::with_capacity(6);
    let name: &'static str = match entry {
        TraceEntry::Ingress(e) => {
            connection(&mut attrs, e.kind, e.cid, e.name.as_deref());
            if e.kind.is_server_link() {
                if let Some(name) = &e.name {
                    attrs.push(KeyValue::new(PREVIOUS_HOP_SERVER, text(name)));
                }
            }
            attrs.push(KeyValue::new(ACCOUNT, text(&e.account)));
            attrs.push(KeyValue::new(DESTINATION, text(&e.subject)));
            error(&mut attrs, &e.error);
            "ingress"
        }
        TraceEntry::SubjectMapping(e) => {
            attrs.push(KeyValue::new(MAPPED_TO, text(&e.mapped_to)));
            "subject_mapping"
        }
        TraceEntry::ServiceImport(e) => {
            attrs.push(KeyValue::new(ACCOUNT, text(&e.account)));
            attrs.push(KeyValue::new(IMPORT_FROM, text(&e.from)));
            attrs.push(KeyValue::new(IMPORT_TO, text(&e.to)));
            "service_import"
        }
        TraceEntry::StreamExport(e) => {
            attrs.push(KeyValue::new(ACCOUNT, text(&e.account)));
            attrs.push(KeyValue::new(EXPORT_TO, text(&e.to)));
            "stream_export"
        }
        TraceEntry::JetStream(e) => {
            attrs.push(KeyValue::new(STREAM, text(&e.stream)));
            if let Some(subject) = &e.subject {
                attrs.push(KeyValue::new(STORED_SUBJECT, text(subject)));
            }
            if e.no_interest {
                attrs.push(KeyValue::new(NO_INTEREST, true));
            }
            error(&mut attrs, &e.error);
            "jetstream_store"
        }
        TraceEntry::Egress(e) => {
            connection(&mut attrs, e.kind, e.cid, e.name.as_deref());
            if e.kind.is_server_link() {
                if let Some(name) = &e.name {
                    attrs.push(KeyValue::new(NEXT_HOP_SERVER, text(name)));
                }
                if let Some(hop) = &e.hop {
                    attrs.push(KeyValue::new(NEXT_HOP_ID, text(hop)));
                }
            }
            for (key, value) in [
                (ACCOUNT, &e.account),
                (SUBSCRIPTION, &e.subscription),
                (QUEUE, &e.queue),
            ] {
                if let Some(value) = value {
                    attrs.push(KeyValue::new(key, text(value)));
                }
            }
            error(&mut attrs, &e.error);
            "egress"
        }
        TraceEntry::Unknown { entry_type, .. } => {
            attrs.push(KeyValue::new(ENTRY_TYPE, text(entry_type)));
            "unknown"
        }
    };
    Event::new(name, entry.timestamp().unwrap_or(fallback), attrs, 0)
}

fn connection(attrs: &mut Vec<KeyValue>, kind: ConnectionKind, cid: u64, name: Option<&str>) {
    attrs.push(KeyValue::new(CONNECTION_KIND, kind.as_str()));
    attrs.push(KeyValue::new(CONNECTION_ID, int(cid)));
    if let Some(name) = name {
        attrs.push(KeyValue::new(CONNECTION_NAME, text(name)));
    }
}

fn error(attrs: &mut Vec<KeyValue>, error: &Option<String>) {
    if let Some(error) = error {
        attrs.push(KeyValue::new(ERROR_MESSAGE, text(error)));
    }
}

/// An `i64` attribute value (saturating).
fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// `s` cut to [`MAX_VALUE_LEN`] bytes at a character boundary.
pub(super) fn text(s: &str) -> String {
    if s.len() <= MAX_VALUE_LEN {
        return s.to_owned();
    }
    let mut end = MAX_VALUE_LEN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}
