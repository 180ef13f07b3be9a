//! Words for the things in a path (servers, connections, header checks),
//! the hop-by-hop text listing and its JSON.

use std::fmt::Write as _;

use nats_otel::hops::{ConnectionKind, Egress, Ingress, TraceEntry, TraceEvent};
use serde_json::{json, Value};

use super::path::{Carried, Endpoint, FamilyCheck, Hop, Path, Via};

/// `leaf`.
pub(super) fn server(event: &TraceEvent) -> &str {
    &event.server.name
}

/// `leaf (nats-server 2.15.1, cluster leaf)`.
pub(super) fn server_full(event: &TraceEvent) -> String {
    let s = &event.server;
    let mut out = format!("{} (nats-server {}", s.name, s.version);
    if let Some(cluster) = &s.cluster {
        let _ = write!(out, ", cluster {cluster}");
    }
    if let Some(domain) = &s.domain {
        let _ = write!(out, ", domain {domain}");
    }
    out.push(')');
    out
}

fn quoted_name(name: &Option<String>) -> String {
    match name.as_deref() {
        Some(n) if !n.is_empty() => format!(" {n:?}"),
        _ => String::new(),
    }
}

/// `client connection 7 "relay" (subscription ingress.>, queue q)` or
/// `leafnode connection 5 to hub (hop 1)`.
pub(super) fn egress(eg: &Egress) -> String {
    if eg.kind.is_server_link() {
        let to = eg
            .name
            .as_deref()
            .map(|n| format!(" to {n}"))
            .unwrap_or_default();
        let hop = eg
            .hop
            .as_deref()
            .map(|h| format!(" (hop {h})"))
            .unwrap_or_default();
        return format!("{} connection {}{to}{hop}", eg.kind.as_str(), eg.cid);
    }
    let mut out = format!(
        "{} connection {}{}",
        eg.kind.as_str(),
        eg.cid,
        quoted_name(&eg.name)
    );
    match (&eg.subscription, &eg.queue) {
        (Some(sub), Some(queue)) => {
            let _ = write!(out, " (subscription {sub}, queue {queue})");
        }
        (Some(sub), None) => {
            let _ = write!(out, " (subscription {sub})");
        }
        _ => {}
    }
    if let Some(account) = &eg.account {
        let _ = write!(out, " in account {account}");
    }
    out
}

/// `client connection 6 "nats-otel"` or `leafnode connection 5 from hub`.
pub(super) fn ingress(i: &Ingress) -> String {
    if i.kind.is_server_link() {
        let from = i
            .name
            .as_deref()
            .map(|n| format!(" from {n}"))
            .unwrap_or_default();
        return format!("{} connection {}{from}", i.kind.as_str(), i.cid);
    }
    format!(
        "{} connection {}{}",
        i.kind.as_str(),
        i.cid,
        quoted_name(&i.name)
    )
}

/// `the leafnode`, `a route`, `the gateway`.
pub(super) fn link(kind: ConnectionKind) -> String {
    match kind {
        ConnectionKind::Route => "a route".to_owned(),
        other => format!("the {}", other.as_str()),
    }
}

/// The names a family was seen under, `a + b`, or `none`.
pub(super) fn names(pairs: &[(String, String)]) -> String {
    let mut names: Vec<&str> = pairs.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(" + ")
    }
}

/// One family's check, e.g. `traceparent as sent (Traceparent + traceparent)`.
pub(super) fn family(check: &FamilyCheck) -> Option<String> {
    let f = check.family;
    let first =
        |pairs: &[(String, String)]| pairs.first().map(|(_, v)| v.clone()).unwrap_or_default();
    Some(match check.state {
        Carried::NotSent => return None,
        Carried::AsSent => format!("{f} as sent ({})", names(&check.seen)),
        Carried::Recased => format!(
            "{f} RE-CASED: {} (sent as {})",
            names(&check.seen),
            names(&check.sent)
        ),
        Carried::Changed => format!(
            "{f} CHANGED: {:?} (sent {:?})",
            first(&check.seen),
            first(&check.sent)
        ),
        Carried::Missing => format!("{f} MISSING (sent as {})", names(&check.sent)),
        Carried::Added => format!("{f} added: {:?}", first(&check.seen)),
    })
}

/// The families as one line, or `no trace headers`.
pub(super) fn families(checks: &[FamilyCheck]) -> String {
    let parts: Vec<String> = checks.iter().filter_map(family).collect();
    if parts.is_empty() {
        "no trace headers (none sent)".to_owned()
    } else {
        parts.join("; ")
    }
}

/// The servers in path order, `leaf → hub`.
pub(super) fn chain(path: &Path<'_>) -> String {
    let names: Vec<&str> = path.hops.iter().map(|h| server(h.event)).collect();
    names.join(" → ")
}

fn via(path: &Path<'_>, hop: &Hop<'_>) -> String {
    match hop.via {
        Via::Publish => "published here by the doctor".to_owned(),
        Via::Link { parent, egress } => format!(
            "hop {}, over {} from {}",
            egress.hop.as_deref().unwrap_or("?"),
            link(egress.kind),
            server(path.hops[parent].event)
        ),
        Via::Republish { parent, egress } => format!(
            "republished by client connection {} after {} delivered it",
            egress.cid,
            server(path.hops[parent].event)
        ),
        Via::Unlinked => "not linked to the doctor's publish".to_owned(),
    }
}

/// The hop-by-hop listing.
pub(super) fn lines(
    path: &Path<'_>,
    publisher: &Endpoint,
    consumer: &Endpoint,
    consumer_line: &str,
) -> Vec<String> {
    let mut out = Vec::new();
    for (n, hop) in path.hops.iter().enumerate() {
        let pad = "  ".repeat(hop.depth + 1);
        out.push(format!(
            "{pad}{}. {} — {}",
            n + 1,
            server_full(hop.event),
            via(path, hop)
        ));
        let pad = format!("{pad}     ");
        let who = if hop.via == Via::Publish
            && hop.ingress.kind == ConnectionKind::Client
            && hop.ingress.cid == publisher.client_id
            && hop.event.server.id == publisher.server_id
        {
            " (the doctor)"
        } else {
            ""
        };
        let i = hop.ingress;
        let error = i
            .error
            .as_deref()
            .map(|e| format!(", REJECTED: {e}"))
            .unwrap_or_default();
        out.push(format!(
            "{pad}in       {}{who}, subject {}, account {}{error}",
            ingress(i),
            i.subject,
            i.account
        ));
        out.push(format!("{pad}headers  {}", families(&hop.headers)));
        for entry in &hop.event.entries {
            if let Some(line) = entry_line(hop, entry, consumer) {
                out.push(format!("{pad}{line}"));
            }
        }
    }
    for (parent, eg) in &path.missing {
        out.push(format!(
            "  (no event from the server behind {} of {})",
            egress(eg),
            server(path.hops[*parent].event)
        ));
    }
    out.push(format!("  consumer {consumer_line}"));
    out
}

fn entry_line(hop: &Hop<'_>, entry: &TraceEntry, consumer: &Endpoint) -> Option<String> {
    Some(match entry {
        TraceEntry::Ingress(_) => return None,
        TraceEntry::SubjectMapping(m) => format!("mapped   to {}", m.mapped_to),
        TraceEntry::ServiceImport(s) => {
            format!(
                "import   service {} → {} in account {}",
                s.from, s.to, s.account
            )
        }
        TraceEntry::StreamExport(s) => format!("export   to {} in account {}", s.to, s.account),
        TraceEntry::JetStream(js) => {
            let mut line = format!("stored   stream {}", js.stream);
            if let Some(subject) = &js.subject {
                let _ = write!(line, " (subject {subject})");
            }
            if js.no_interest {
                line.push_str(", no interest");
            }
            if let Some(e) = &js.error {
                let _ = write!(line, ", ERROR: {e}");
            }
            line
        }
        TraceEntry::Egress(eg) => {
            let mut line = format!("out      {}", egress(eg));
            if consumer.receives(hop.event, eg) {
                line.push_str(" [the consumer]");
            }
            if let Some(e) = &eg.error {
                let _ = write!(line, ", NOT DELIVERED: {e}");
            }
            line
        }
        TraceEntry::Unknown { entry_type, .. } => format!("{entry_type:<8} (unknown entry type)"),
        _ => return None,
    })
}

fn pairs_json(pairs: &[(String, String)]) -> Value {
    Value::Array(
        pairs
            .iter()
            .map(|(n, v)| json!({ "name": n, "value": v }))
            .collect(),
    )
}

pub(super) fn checks_json(checks: &[FamilyCheck]) -> Value {
    Value::Array(
        checks
            .iter()
            .filter(|c| c.state != Carried::NotSent)
            .map(|c| {
                json!({
                    "family": c.family,
                    "state": c.state.as_str(),
                    "sent": pairs_json(&c.sent),
                    "seen": pairs_json(&c.seen),
                })
            })
            .collect(),
    )
}

fn egress_json(hop: &Hop<'_>, eg: &Egress, consumer: &Endpoint) -> Value {
    json!({
        "kind": eg.kind.as_str(),
        "cid": eg.cid,
        "name": eg.name,
        "hop": eg.hop,
        "account": eg.account,
        "subscription": eg.subscription,
        "queue": eg.queue,
        "error": eg.error,
        "consumer": consumer.receives(hop.event, eg),
    })
}

/// The path as JSON, one object per hop.
pub(super) fn path_json(path: &Path<'_>, consumer: &Endpoint) -> Value {
    let hops = path.hops.iter().map(|hop| {
        let s = &hop.event.server;
        let (via, parent) = match hop.via {
            Via::Publish => ("publish", None),
            Via::Link { parent, .. } => ("link", Some(parent)),
            Via::Republish { parent, .. } => ("republish", Some(parent)),
            Via::Unlinked => ("unlinked", None),
        };
        let i = hop.ingress;
        let stored: Vec<Value> = hop
            .event
            .entries
            .iter()
            .filter_map(|e| match e {
                TraceEntry::JetStream(js) => Some(json!({
                    "stream": js.stream, "subject": js.subject,
                    "no_interest": js.no_interest, "error": js.error,
                })),
                _ => None,
            })
            .collect();
        json!({
            "server": { "name": s.name, "id": s.id, "version": s.version,
                        "cluster": s.cluster, "domain": s.domain },
            "hop": hop.event.hop(),
            "depth": hop.depth,
            "via": via,
            "parent": parent,
            "ingress": { "kind": i.kind.as_str(), "cid": i.cid, "name": i.name,
                         "account": i.account, "subject": i.subject, "error": i.error },
            "headers": checks_json(&hop.headers),
            "jetstream": stored,
            "egress": hop.egresses().map(|eg| egress_json(hop, eg, consumer)).collect::<Vec<_>>(),
        })
    });
    Value::Array(hops.collect())
}
