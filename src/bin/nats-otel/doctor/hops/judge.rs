//! The verdict on a path: where along the traced servers (or right after
//! them) the probe's trace headers were lost, changed or re-cased.

use std::collections::HashSet;

use nats_otel::hops::{message_tracing_safe, UnsafeVersion};

use super::consumer;
use super::path::{traceparent, Carried, Hop, Path, Via};
use super::show;
use super::HopsInput;
use crate::doctor::evaluate::Status;

/// One thing the path shows.
#[derive(Debug, Clone)]
pub(in crate::doctor) struct Finding {
    pub(in crate::doctor) status: Status,
    pub(in crate::doctor) code: &'static str,
    /// A few words for the step's summary line.
    pub(in crate::doctor) short: String,
    pub(in crate::doctor) text: String,
    pub(in crate::doctor) fix: String,
}

impl Finding {
    pub(super) fn new(
        status: Status,
        code: &'static str,
        short: String,
        text: String,
        fix: &str,
    ) -> Self {
        Self {
            status,
            code,
            short,
            text,
            fix: fix.to_owned(),
        }
    }
}

/// Codes of findings where the headers were lost or replaced, which a
/// fallback can make up for.
const LOSSES: [&str; 7] = [
    "lost_at_publish",
    "lost_between_servers",
    "lost_at_client",
    "lost_at_delivery",
    "lost_after_untraced_hop",
    "lost_untraced",
    "value_changed",
];

pub(super) const FIX_RELAY: &str =
    "make that client forward the headers of what it republishes (async-nats: \
     publish_with_headers with the incoming message's headers), or extract the incoming context \
     and publish inside it through TracePropagationLayer; if it cannot change, use the KV \
     fallback (--kv-bucket) or a payload carrier";

/// Everything the path shows, the main finding (most severe) first.
pub(super) fn judge(path: &Path<'_>, input: &HopsInput<'_>) -> Vec<Finding> {
    if path.hops.is_empty() {
        return vec![no_events(input)];
    }
    let mut out = Vec::new();
    for hop in &path.hops {
        if let Some(error) = &hop.ingress.error {
            out.push(Finding::new(
                Status::Fail,
                "rejected_at_server",
                format!("rejected by {}", show::server(hop.event)),
                format!(
                    "server {} rejected the probe from {}: {error}",
                    show::server_full(hop.event),
                    show::ingress(hop.ingress)
                ),
                "check the publish permissions and limits on that server",
            ));
        }
    }
    out.extend((0..path.hops.len()).filter_map(|i| hop_change(path, i)));
    out.extend(consumer::consumer(path, input));
    let mut versions = HashSet::new();
    for hop in &path.hops {
        let s = &hop.event.server;
        if let Err(e @ UnsafeVersion::RewritesTraceHeaders { .. }) =
            message_tracing_safe(&s.version)
        {
            if versions.insert(s.id.clone()) {
                out.push(Finding::new(
                    Status::Warn,
                    "server_rewrites_trace_headers",
                    format!("{} runs nats-server {}", s.name, s.version),
                    format!("server {}: {e}", s.name),
                    "upgrade that server to nats-server 2.12.12+ or 2.14+",
                ));
            }
        }
    }
    for (parent, eg) in &path.missing {
        let from = path.hops[*parent].event;
        out.push(Finding::new(
            Status::Warn,
            "incomplete_trace",
            format!("no event after {}", show::server(from)),
            format!(
                "server {} forwarded the probe over {} ({}), but the server there sent no \
                 trace event within {:?}: it runs a nats-server before 2.11 (no message \
                 tracing), or its event could not reach {}",
                show::server(from),
                show::link(eg.kind),
                show::egress(eg),
                input.window,
                input.dest
            ),
            "raise --hops-window; check that server's version and that the doctor's \
             subscription to the trace subject crosses to it",
        ));
    }
    if path.hops.first().is_some_and(|h| h.via != Via::Publish) {
        out.push(Finding::new(
            Status::Warn,
            "incomplete_trace",
            "no event from the first server".to_owned(),
            format!(
                "server {}, where the probe was published, sent no trace event within {:?}: \
                 the path starts at the servers that did",
                input.publisher.server_name, input.window
            ),
            "raise --hops-window",
        ));
    }
    for hop in path.orphans() {
        out.push(Finding::new(
            Status::Warn,
            "incomplete_trace",
            format!("no event before {}", show::server(hop.event)),
            format!(
                "server {} got the probe over {} ({}), but that server sent no trace event \
                 within {:?}",
                show::server(hop.event),
                show::link(hop.ingress.kind),
                show::ingress(hop.ingress),
                input.window
            ),
            "raise --hops-window; check that server's version",
        ));
    }
    if input.recovered {
        for f in out.iter_mut() {
            if f.status == Status::Fail && LOSSES.contains(&f.code) {
                f.status = Status::Warn;
                f.text.push_str("; the KV fallback recovered the context");
            }
        }
    }
    if !out
        .iter()
        .any(|f| matches!(f.status, Status::Fail | Status::Warn))
    {
        out.insert(0, intact(path, input));
    }
    out.sort_by_key(|f| match f.status {
        Status::Fail => 0,
        Status::Warn => 1,
        _ => 2,
    });
    out
}

fn no_events(input: &HopsInput<'_>) -> Finding {
    let invalid = match input.invalid.first() {
        Some(first) => format!(" ({} unreadable: {first})", input.invalid.len()),
        None => String::new(),
    };
    Finding::new(
        Status::Warn,
        "no_trace_events",
        "no trace events".to_owned(),
        format!(
            "no server sent a readable message-trace event to {} within {:?}{invalid}: the \
             probe's path through the servers is unknown",
            input.dest, input.window
        ),
        "check that the doctor may subscribe to that subject (it is an inbox), that the \
         servers run nats-server 2.11+, and that the account allows tracing; or raise \
         --hops-window",
    )
}

fn intact(path: &Path<'_>, input: &HopsInput<'_>) -> Finding {
    let (route, tail) = match path.delivery(input.consumer) {
        Some((h, _)) => {
            let mut names = vec![show::server(path.hops[h].event).to_owned()];
            let mut at = h;
            loop {
                match path.hops[at].via {
                    Via::Link { parent, .. } => at = parent,
                    Via::Republish { parent, egress } => {
                        names.push(format!("client connection {}", egress.cid));
                        at = parent;
                    }
                    Via::Publish | Via::Unlinked => break,
                }
                names.push(show::server(path.hops[at].event).to_owned());
            }
            names.reverse();
            (names.join(" → "), String::new())
        }
        None => (
            show::chain(path),
            "; the last leg to the consumer was not traced (Nats-Trace-Dest was not forwarded)"
                .to_owned(),
        ),
    };
    Finding::new(
        Status::Ok,
        "intact",
        format!("{route} → consumer, trace headers intact"),
        format!("the trace headers crossed every traced hop as sent: {route} → consumer{tail}"),
        "",
    )
}

/// What the server of hop `i` (or the client that republished to it) did
/// to the headers its predecessor had.
fn hop_change(path: &Path<'_>, i: usize) -> Option<Finding> {
    let hop = &path.hops[i];
    let tp = traceparent(&hop.headers);
    let parent = match hop.via {
        Via::Link { parent, .. } | Via::Republish { parent, .. } => Some(&path.hops[parent]),
        Via::Publish | Via::Unlinked => None,
    };
    if parent.is_some_and(|p| !p.kept()) {
        return None; // reported where it was lost
    }
    let at = show::server(hop.event);
    let full = show::server_full(hop.event);
    match (tp.state, hop.via) {
        (Carried::Missing, Via::Publish) => Some(Finding::new(
            Status::Fail,
            "lost_at_publish",
            format!("no trace headers at {at}"),
            format!(
                "the probe arrived at its first server {full} without trace headers, though \
                 the doctor sent {}",
                show::names(&tp.sent)
            ),
            "check for a proxy between the doctor and the server",
        )),
        (Carried::Missing, Via::Link { egress, .. }) => {
            let from = show::server(parent?.event);
            Some(Finding::new(
                Status::Fail,
                "lost_between_servers",
                format!("lost between {from} and {at}"),
                format!(
                    "the probe arrived at server {full} over {} from {from} without trace \
                     headers: {from} had them at its ingress and forwarded the probe on {}",
                    show::link(egress.kind),
                    show::egress(egress)
                ),
                "headers cross routes, gateways and leafnodes unchanged between nats-servers \
                 2.2+: check what sits between the two servers (a proxy, or a server without \
                 header support)",
            ))
        }
        (Carried::Missing, Via::Republish { egress, .. }) => Some(Finding::new(
            Status::Fail,
            "lost_at_client",
            format!("lost at client connection {} on {at}", egress.cid),
            format!(
                "the probe left server {at} to {} with its trace headers, and that client \
                 republished it to {} without them (it kept Nats-Trace-Dest, so the \
                 republish was traced)",
                show::egress(egress),
                hop.ingress.subject
            ),
            FIX_RELAY,
        )),
        (Carried::Missing, Via::Unlinked) => Some(Finding::new(
            Status::Fail,
            "lost_at_client",
            format!("lost at {} on {at}", show::ingress(hop.ingress)),
            format!(
                "a copy of the probe published by {} to {} on server {at} has no trace headers \
                 (it kept Nats-Trace-Dest; it came from another connection than the one that \
                 received the probe)",
                show::ingress(hop.ingress),
                hop.ingress.subject
            ),
            FIX_RELAY,
        )),
        (Carried::Changed, Via::Republish { egress, .. }) => {
            let seen = tp.seen.first().map(|(_, v)| v.as_str()).unwrap_or_default();
            let sent = tp.sent.first().map(|(_, v)| v.as_str()).unwrap_or_default();
            (trace_id(seen) != trace_id(sent)).then(|| {
                Finding::new(
                    Status::Fail,
                    "trace_replaced",
                    format!("new trace at client connection {} on {at}", egress.cid),
                    format!(
                        "{} republished the probe to {} in a new trace: traceparent {seen:?}, \
                         the probe sent {sent:?}",
                        show::egress(egress),
                        hop.ingress.subject
                    ),
                    "in that client, extract the incoming context and publish inside it",
                )
            })
        }
        (Carried::Changed, _) => Some(Finding::new(
            Status::Fail,
            "value_changed",
            format!("traceparent changed at {at}"),
            format!(
                "at server {full}'s ingress traceparent is {:?}; the probe sent {:?}",
                tp.seen.first().map(|(_, v)| v.as_str()).unwrap_or_default(),
                tp.sent.first().map(|(_, v)| v.as_str()).unwrap_or_default()
            ),
            "find what rewrites the value before that server",
        )),
        (Carried::Recased, _) => {
            let before = match parent {
                Some(p) => traceparent(&p.headers).seen.clone(),
                None => tp.sent.clone(),
            };
            (show::names(&before) != show::names(&tp.seen)).then(|| recased(hop, &before))
        }
        _ => None,
    }
}

fn recased(hop: &Hop<'_>, before: &[(String, String)]) -> Finding {
    let tp = traceparent(&hop.headers);
    let version = &hop.event.server.version;
    let why = match (hop.via, message_tracing_safe(version)) {
        (Via::Republish { egress, .. }, _) => {
            format!("the client behind {} re-cased it", show::egress(egress))
        }
        (_, Err(UnsafeVersion::RewritesTraceHeaders { .. })) => format!(
            "nats-server {version} rewrites Traceparent to traceparent on inbound messages \
             (2.11.0 to 2.12.11)"
        ),
        _ => "the hop before it re-cased it".to_owned(),
    };
    Finding::new(
        Status::Warn,
        "header_recased_at_server",
        format!("traceparent re-cased at {}", show::server(hop.event)),
        format!(
            "at server {}'s ingress traceparent arrived as {}, where it was {} before: {why}",
            show::server_full(hop.event),
            show::names(&tp.seen),
            show::names(before)
        ),
        "upgrade nats-server to 2.12.12+ or 2.14+ (they keep header names); publish with \
         HeaderNames::Both so that Go and W3C-exact readers each find their name",
    )
}

fn trace_id(traceparent: &str) -> Option<&str> {
    traceparent.trim().split('-').nth(1)
}
