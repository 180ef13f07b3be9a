//! One message-trace event as nats-server publishes it (ADR-41,
//! `server/msgtrace.go`: `MsgTraceEvent`), and what can be wrong with one.

use std::collections::BTreeMap;
use std::fmt;
use std::time::SystemTime;

use opentelemetry::trace::{SpanContext, TraceContextExt};

use super::parse::MAX_EVENT_BYTES;
use crate::propagation::{context_from_carrier, NoContextReason, TraceparentProblem};
use crate::TraceCarrier;

/// The header that turns message tracing on for one message; its value is
/// the subject the servers publish their events to.
pub const TRACE_DEST_HEADER: &str = "Nats-Trace-Dest";
/// The header a server adds when it forwards a traced message over a
/// route, gateway or leafnode: the hop id (`1`, `1.2`, …) of the next server.
pub const TRACE_HOP_HEADER: &str = "Nats-Trace-Hop";
/// The header older servers (2.11, 2.12) add when a traced message crosses
/// accounts; current servers turn tracing off for a message that carries it.
pub const TRACE_ORIGIN_ACCOUNT_HEADER: &str = "Nats-Trace-Origin-Account";
/// One server's report on one traced message: who the server is, the
/// message's headers, and what the server did with it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct TraceEvent {
    /// The server that handled the message.
    pub server: ServerInfo,
    /// The message as it arrived: headers and size.
    pub request: TraceRequest,
    /// How many times this server forwarded the message to another server
    /// (routes, gateways, leafnodes); 0 when it did not.
    pub hops: u64,
    /// What the server did, in the order the server listed it (not always
    /// time order: the JetStream entry is updated after the store).
    pub entries: Vec<TraceEntry>,
}

/// The server that published an event (`ServerInfo` in nats-server).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerInfo {
    /// The server name (`server_name`, or its id when unset).
    pub name: String,
    /// The server's public key id, `N…`.
    pub id: String,
    /// The host the server listens on.
    pub host: String,
    /// The server version, e.g. `2.15.1`.
    pub version: String,
    /// The cluster name, when the server has one (clusters, gateways,
    /// and leafnode servers, which name one after themselves).
    pub cluster: Option<String>,
    /// The JetStream domain, when set.
    pub domain: Option<String>,
    /// When the server sent the event.
    pub time: Option<SystemTime>,
}

/// The traced message as the server received it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TraceRequest {
    /// Every header of the message, names case-preserved, values in order.
    pub headers: BTreeMap<String, Vec<String>>,
    /// Headers plus payload, in bytes. The payload itself is never in an
    /// event.
    pub msg_size: u64,
}

impl TraceRequest {
    /// The first value of a header, its name matched in any casing.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .find_map(|(_, vs)| vs.first())
            .map(String::as_str)
    }

    /// Every `(name as it arrived, value)` of a header, matched in any
    /// casing.
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> {
        self.headers
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
            .flat_map(|(k, vs)| vs.iter().map(move |v| (k.as_str(), v.as_str())))
    }
}

/// The kind of connection a message came in on or went out to (nats-server's
/// `CLIENT`, `ROUTER`, `GATEWAY`, `SYSTEM`, `LEAF`, `JETSTREAM`, `ACCOUNT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConnectionKind {
    /// An application connection (kind 0).
    Client,
    /// A route to another server of the same cluster (kind 1).
    Route,
    /// A gateway to another cluster (kind 2).
    Gateway,
    /// The server's internal system client (kind 3).
    System,
    /// A leafnode connection (kind 4).
    Leafnode,
    /// The internal JetStream client (kind 5).
    JetStream,
    /// An account's internal client (kind 6).
    Account,
    /// A kind this crate does not know.
    Other(i64),
}

impl ConnectionKind {
    /// The kind for nats-server's numeric code.
    pub fn from_code(code: i64) -> Self {
        match code {
            0 => Self::Client,
            1 => Self::Route,
            2 => Self::Gateway,
            3 => Self::System,
            4 => Self::Leafnode,
            5 => Self::JetStream,
            6 => Self::Account,
            other => Self::Other(other),
        }
    }

    /// A short name: `client`, `route`, `gateway`, `system`, `leafnode`,
    /// `jetstream`, `account`, or `unknown`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Route => "route",
            Self::Gateway => "gateway",
            Self::System => "system",
            Self::Leafnode => "leafnode",
            Self::JetStream => "jetstream",
            Self::Account => "account",
            Self::Other(_) => "unknown",
        }
    }

    /// Whether the other end is another server (route, gateway, leafnode).
    pub fn is_server_link(&self) -> bool {
        matches!(self, Self::Route | Self::Gateway | Self::Leafnode)
    }
}

/// The message arrived (entry type `in`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Ingress {
    /// When.
    pub timestamp: SystemTime,
    /// The kind of connection it came in on.
    pub kind: ConnectionKind,
    /// The connection id.
    pub cid: u64,
    /// The remote server's name (route, gateway, leafnode) or the client's
    /// connection name.
    pub name: Option<String>,
    /// The account the message was published in.
    pub account: String,
    /// The subject it was published to.
    pub subject: String,
    /// Why the server rejected it, if it did.
    pub error: Option<String>,
}

/// A subject mapping changed the subject (entry type `sm`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubjectMapping {
    /// When.
    pub timestamp: SystemTime,
    /// The subject after mapping.
    pub mapped_to: String,
}

/// A service import moved the message to another account (entry type `si`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServiceImport {
    /// When.
    pub timestamp: SystemTime,
    /// The account that exports the service.
    pub account: String,
    /// The subject in the importing account.
    pub from: String,
    /// The subject in the exporting account.
    pub to: String,
}

/// A stream export delivered the message into another account (entry type
/// `se`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamExport {
    /// When.
    pub timestamp: SystemTime,
    /// The importing account.
    pub account: String,
    /// The subject in the importing account.
    pub to: String,
}

/// JetStream stored (or refused) the message (entry type `js`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct JetStreamStore {
    /// When (updated after the store, so it may be later than egresses
    /// listed after it).
    pub timestamp: SystemTime,
    /// The stream.
    pub stream: String,
    /// The subject stored under, when the store went through.
    pub subject: Option<String>,
    /// No consumer was interested (interest or work-queue retention).
    pub no_interest: bool,
    /// Why the store failed, if it did.
    pub error: Option<String>,
}

/// The message went out on a connection (entry type `eg`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Egress {
    /// When.
    pub timestamp: SystemTime,
    /// The kind of connection it went out on.
    pub kind: ConnectionKind,
    /// The connection id.
    pub cid: u64,
    /// The remote server's name (route, gateway, leafnode) or the client's
    /// connection name.
    pub name: Option<String>,
    /// The hop id the next server's event carries in its
    /// [`TRACE_HOP_HEADER`] (route, gateway, leafnode only).
    pub hop: Option<String>,
    /// The destination account, when it differs from the ingress account.
    pub account: Option<String>,
    /// The matching subscription's subject (clients only).
    pub subscription: Option<String>,
    /// The subscription's queue group.
    pub queue: Option<String>,
    /// Why it was not delivered, if it was not (e.g. no echo).
    pub error: Option<String>,
}

/// One thing a server did with a traced message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TraceEntry {
    /// `in`.
    Ingress(Ingress),
    /// `sm`.
    SubjectMapping(SubjectMapping),
    /// `si`.
    ServiceImport(ServiceImport),
    /// `se`.
    StreamExport(StreamExport),
    /// `js`.
    JetStream(JetStreamStore),
    /// `eg`.
    Egress(Egress),
    /// An entry type this crate does not know (a newer server), kept so it
    /// can be counted.
    Unknown {
        /// Its `type`.
        entry_type: String,
        /// Its `ts`, when it had a valid one.
        timestamp: Option<SystemTime>,
    },
}

impl TraceEntry {
    /// When it happened (unknown entries may have no time).
    pub fn timestamp(&self) -> Option<SystemTime> {
        Some(match self {
            Self::Ingress(e) => e.timestamp,
            Self::SubjectMapping(e) => e.timestamp,
            Self::ServiceImport(e) => e.timestamp,
            Self::StreamExport(e) => e.timestamp,
            Self::JetStream(e) => e.timestamp,
            Self::Egress(e) => e.timestamp,
            Self::Unknown { timestamp, .. } => return *timestamp,
        })
    }

    /// The entry's `type` on the wire: `in`, `sm`, `si`, `se`, `js`, `eg`,
    /// or an unknown one.
    pub fn entry_type(&self) -> &str {
        match self {
            Self::Ingress(_) => "in",
            Self::SubjectMapping(_) => "sm",
            Self::ServiceImport(_) => "si",
            Self::StreamExport(_) => "se",
            Self::JetStream(_) => "js",
            Self::Egress(_) => "eg",
            Self::Unknown { entry_type, .. } => entry_type,
        }
    }
}

/// Why an event could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidEvent {
    /// Larger than [`MAX_EVENT_BYTES`].
    TooLarge {
        /// Its size in bytes.
        len: usize,
    },
    /// Not JSON (or truncated JSON).
    NotJson {
        /// The parser's message.
        message: String,
    },
    /// JSON, but not shaped like an event: not an object, or a field of the
    /// wrong type.
    WrongShape {
        /// What is wrong.
        message: String,
    },
    /// No `server` object, or one with neither name nor id.
    MissingServer,
    /// No `in` entry: every server event starts with one.
    NoIngress,
    /// An entry of a known type has a field of the wrong type.
    BadEntry {
        /// Its position in `events`.
        index: usize,
        /// Its `type`.
        entry_type: String,
        /// What is wrong.
        message: String,
    },
    /// A timestamp is missing or not RFC 3339 (or before 1970).
    BadTimestamp {
        /// Where: `server.time` or `events[N].ts`.
        field: String,
        /// The value, truncated.
        value: String,
    },
}

impl InvalidEvent {
    /// A short, stable name: `too_large`, `not_json`, `wrong_shape`,
    /// `missing_server`, `no_ingress`, `bad_entry`, `bad_timestamp`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "too_large",
            Self::NotJson { .. } => "not_json",
            Self::WrongShape { .. } => "wrong_shape",
            Self::MissingServer => "missing_server",
            Self::NoIngress => "no_ingress",
            Self::BadEntry { .. } => "bad_entry",
            Self::BadTimestamp { .. } => "bad_timestamp",
        }
    }
}

impl fmt::Display for InvalidEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge { len } => {
                write!(f, "trace event of {len} bytes exceeds {MAX_EVENT_BYTES}")
            }
            Self::NotJson { message } => write!(f, "trace event is not JSON: {message}"),
            Self::WrongShape { message } => write!(f, "trace event has the wrong shape: {message}"),
            Self::MissingServer => f.write_str("trace event has no server name or id"),
            Self::NoIngress => f.write_str("trace event has no ingress (`in`) entry"),
            Self::BadEntry {
                index,
                entry_type,
                message,
            } => write!(f, "trace event entry {index} (`{entry_type}`): {message}"),
            Self::BadTimestamp { field, value } => {
                write!(f, "trace event {field} is not an RFC 3339 time: {value:?}")
            }
        }
    }
}

impl std::error::Error for InvalidEvent {}

/// Why an event gives no parent span context.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TraceparentError {
    /// The message had no `traceparent` header in any casing.
    Missing,
    /// Several `traceparent` values disagree (several values, or several
    /// casings): there is no telling which is the parent.
    Ambiguous,
    /// The `traceparent` breaks a W3C rule.
    Malformed(TraceparentProblem),
}

impl fmt::Display for TraceparentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing => f.write_str("the traced message has no traceparent header"),
            Self::Ambiguous => f.write_str("the traced message has conflicting traceparent values"),
            Self::Malformed(problem) => write!(f, "the traced message's traceparent: {problem}"),
        }
    }
}

impl std::error::Error for TraceparentError {}

impl TraceEvent {
    /// The first ingress entry.
    pub fn ingress(&self) -> Option<&Ingress> {
        self.entries.iter().find_map(|e| match e {
            TraceEntry::Ingress(i) => Some(i),
            _ => None,
        })
    }

    /// This server's hop id (the [`TRACE_HOP_HEADER`] it received), `None`
    /// on the server the message was published to.
    pub fn hop(&self) -> Option<&str> {
        self.request.header(TRACE_HOP_HEADER)
    }

    /// The message's `traceparent` (any header casing) as the remote span
    /// context of the PRODUCER span, decoded by the crate's W3C decoder with
    /// `tracestate` (any casing, several values joined by `,`).
    pub fn span_context(&self) -> Result<SpanContext, TraceparentError> {
        let mut values = self.request.header_values("traceparent");
        let Some((name, first)) = values.next() else {
            return Err(TraceparentError::Missing);
        };
        if values.any(|(_, v)| v != first) {
            return Err(TraceparentError::Ambiguous);
        }
        let tracestate: Vec<&str> = self
            .request
            .header_values("tracestate")
            .map(|(_, v)| v)
            .collect();
        let carrier = TraceCarrier {
            traceparent: Some(first.to_owned()),
            tracestate: (!tracestate.is_empty()).then(|| tracestate.join(",")),
            baggage: None,
        };
        match context_from_carrier(&carrier, name) {
            Ok(cx) => Ok(cx.span().span_context().clone()),
            Err(NoContextReason::MalformedTraceparent { problem, .. }) => {
                Err(TraceparentError::Malformed(problem))
            }
            Err(_) => Err(TraceparentError::Missing),
        }
    }
}
