//! Reading an event: JSON in, [`TraceEvent`] or [`InvalidEvent`] out, never
//! a panic.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::time::SystemTime;

use serde::de::value::MapAccessDeserializer;
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::event::{
    ConnectionKind, Egress, Ingress, InvalidEvent, JetStreamStore, ServerInfo, ServiceImport,
    StreamExport, SubjectMapping, TraceEntry, TraceEvent, TraceRequest,
};
use super::time::parse_rfc3339;

/// The largest event [`parse_event`] accepts, in bytes (events carry every
/// header of the traced message).
pub const MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;

/// Longest excerpt of input quoted in an [`InvalidEvent`].
const EXCERPT: usize = 120;

/// Parses one event as nats-server publishes it to the trace destination.
///
/// Unknown fields are ignored and unknown entry types kept as
/// [`TraceEntry::Unknown`]; anything else that is off is an
/// [`InvalidEvent`]. Never panics.
///
/// # Examples
///
/// ```
/// use nats_otel::hops::{parse_event, TraceEntry};
///
/// let json = br#"{"server":{"name":"n1","id":"NAB","ver":"2.15.1"},
///   "request":{"header":{"traceparent":["00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"]},"msgsize":96},
///   "events":[{"type":"in","ts":"2026-12-02T01:14:30.206793816Z","kind":0,"cid":5,"acc":"$G","subj":"jobs.1"}]}"#;
/// let event = parse_event(json)?;
/// assert_eq!(event.server.name, "n1");
/// assert!(matches!(event.entries[0], TraceEntry::Ingress(_)));
/// assert!(event.span_context()?.is_sampled());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn parse_event(bytes: &[u8]) -> Result<TraceEvent, InvalidEvent> {
    if bytes.len() > MAX_EVENT_BYTES {
        return Err(InvalidEvent::TooLarge { len: bytes.len() });
    }
    let raw: Top = serde_json::from_slice(bytes).map_err(|e| {
        let message = excerpt(&e.to_string());
        if e.is_data() {
            InvalidEvent::WrongShape { message }
        } else {
            InvalidEvent::NotJson { message }
        }
    })?;
    let raw = raw.0.ok_or_else(|| InvalidEvent::WrongShape {
        message: "null, expected an object".to_owned(),
    })?;
    let server = raw.server.ok_or(InvalidEvent::MissingServer)?;
    if server.name.is_empty() && server.id.is_empty() {
        return Err(InvalidEvent::MissingServer);
    }
    let time = match server.time.as_deref() {
        None => None,
        Some(t) => Some(timestamp(t, || "server.time".to_owned())?),
    };
    let server = ServerInfo {
        name: if server.name.is_empty() {
            server.id.clone()
        } else {
            server.name
        },
        id: server.id,
        host: server.host,
        version: server.ver,
        cluster: server.cluster.filter(|c| !c.is_empty()),
        domain: server.domain.filter(|d| !d.is_empty()),
        time,
    };
    let request = raw.request.unwrap_or_default();
    let request = TraceRequest {
        headers: request.header.unwrap_or_default(),
        msg_size: request.msgsize,
    };
    let entries = raw
        .events
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(index, value)| entry(index, value))
        .collect::<Result<Vec<_>, _>>()?;
    if !entries.iter().any(|e| matches!(e, TraceEntry::Ingress(_))) {
        return Err(InvalidEvent::NoIngress);
    }
    Ok(TraceEvent {
        server,
        request,
        hops: raw.hops,
        entries,
    })
}

fn excerpt(s: &str) -> String {
    if s.len() <= EXCERPT {
        return s.to_owned();
    }
    let mut end = EXCERPT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn timestamp(value: &str, field: impl FnOnce() -> String) -> Result<SystemTime, InvalidEvent> {
    parse_rfc3339(value).ok_or_else(|| InvalidEvent::BadTimestamp {
        field: field(),
        value: excerpt(value),
    })
}

fn entry(index: usize, value: Value) -> Result<TraceEntry, InvalidEvent> {
    let Some(entry_type) = value.get("type").and_then(Value::as_str).map(str::to_owned) else {
        return Err(InvalidEvent::BadEntry {
            index,
            entry_type: String::new(),
            message: "not an object with a string `type`".to_owned(),
        });
    };
    let ts = |v: &Value| -> Result<SystemTime, InvalidEvent> {
        let field = || format!("events[{index}].ts");
        match v.get("ts").and_then(Value::as_str) {
            Some(t) => timestamp(t, field),
            None => Err(InvalidEvent::BadTimestamp {
                field: field(),
                value: String::new(),
            }),
        }
    };
    let fields = |value: Value| -> Result<Raw, InvalidEvent> {
        serde_json::from_value(value).map_err(|e| InvalidEvent::BadEntry {
            index,
            entry_type: entry_type.clone(),
            message: excerpt(&e.to_string()),
        })
    };
    let timestamp = ts(&value);
    Ok(match entry_type.as_str() {
        "in" => {
            let timestamp = timestamp?;
            let r = fields(value)?;
            TraceEntry::Ingress(Ingress {
                timestamp,
                kind: ConnectionKind::from_code(r.kind),
                cid: r.cid,
                name: r.name,
                account: r.acc.unwrap_or_default(),
                subject: r.subj,
                error: r.error,
            })
        }
        "sm" => {
            let timestamp = timestamp?;
            let r = fields(value)?;
            TraceEntry::SubjectMapping(SubjectMapping {
                timestamp,
                mapped_to: r.to,
            })
        }
        "si" => {
            let timestamp = timestamp?;
            let r = fields(value)?;
            TraceEntry::ServiceImport(ServiceImport {
                timestamp,
                account: r.acc.unwrap_or_default(),
                from: r.from,
                to: r.to,
            })
        }
        "se" => {
            let timestamp = timestamp?;
            let r = fields(value)?;
            TraceEntry::StreamExport(StreamExport {
                timestamp,
                account: r.acc.unwrap_or_default(),
                to: r.to,
            })
        }
        "js" => {
            let timestamp = timestamp?;
            let r = fields(value)?;
            TraceEntry::JetStream(JetStreamStore {
                timestamp,
                stream: r.stream,
                subject: r.subject,
                no_interest: r.nointerest,
                error: r.error,
            })
        }
        "eg" => {
            let timestamp = timestamp?;
            let r = fields(value)?;
            TraceEntry::Egress(Egress {
                timestamp,
                kind: ConnectionKind::from_code(r.kind),
                cid: r.cid,
                name: r.name,
                hop: r.hop,
                account: r.acc,
                subscription: r.sub,
                queue: r.queue,
                error: r.error,
            })
        }
        _ => TraceEntry::Unknown {
            entry_type,
            timestamp: timestamp.ok(),
        },
    })
}

/// The whole document: an event object (or `null`).
#[derive(Deserialize)]
#[serde(transparent)]
struct Top(#[serde(deserialize_with = "object")] Option<RawEvent>);

/// `MsgTraceEvent` on the wire; every part optional so that what is missing
/// can be named.
#[derive(Deserialize)]
struct RawEvent {
    #[serde(default, deserialize_with = "object")]
    server: Option<RawServer>,
    #[serde(default, deserialize_with = "object")]
    request: Option<RawRequest>,
    #[serde(default)]
    hops: u64,
    #[serde(default)]
    events: Option<Vec<Value>>,
}

#[derive(Deserialize)]
struct RawServer {
    #[serde(default)]
    name: String,
    #[serde(default)]
    host: String,
    #[serde(default)]
    id: String,
    #[serde(default)]
    cluster: Option<String>,
    #[serde(default)]
    domain: Option<String>,
    #[serde(default)]
    ver: String,
    #[serde(default)]
    time: Option<String>,
}

#[derive(Deserialize, Default)]
struct RawRequest {
    #[serde(default)]
    header: Option<BTreeMap<String, Vec<String>>>,
    #[serde(default)]
    msgsize: u64,
}

/// The union of every known entry's fields (`MsgTraceIngress`, …,
/// `MsgTraceEgress`), each optional or defaulted as Go's `omitempty` makes
/// it.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Raw {
    kind: i64,
    cid: u64,
    name: Option<String>,
    hop: Option<String>,
    acc: Option<String>,
    subj: String,
    sub: Option<String>,
    queue: Option<String>,
    error: Option<String>,
    to: String,
    from: String,
    stream: String,
    subject: Option<String>,
    nointerest: bool,
}

/// Deserializes `T` from a JSON object only (`null` gives `None`): serde's
/// derive would also read a struct from an array, which an event never is.
fn object<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct ObjectVisitor<T>(PhantomData<T>);

    impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
        type Value = Option<T>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an object")
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            T::deserialize(MapAccessDeserializer::new(map)).map(Some)
        }
    }

    deserializer.deserialize_any(ObjectVisitor(PhantomData))
}
