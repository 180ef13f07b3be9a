//! The consumer's side of the verdict: what it received against the path,
//! and where the probe went when it never arrived.

use nats_otel::hops::{ConnectionKind, Egress};

use super::judge::{Finding, FIX_RELAY};
use super::path::{check_families, traceparent, Carried, Hop, Path};
use super::show;
use super::HopsInput;
use crate::doctor::evaluate::Status;

/// What the consumer received, against the path.
pub(super) fn consumer(path: &Path<'_>, input: &HopsInput<'_>) -> Option<Finding> {
    let Some(received) = input.received else {
        return Some(not_delivered(path, input));
    };
    let checks = check_families(input.sent, received, false);
    let tp = traceparent(&checks).clone();
    if tp.state != Carried::Missing {
        return None; // re-cased or continued: the transit step says so
    }
    if let Some((h, eg)) = path.delivery(input.consumer) {
        let hop = &path.hops[h];
        return hop.kept().then(|| {
            Finding::new(
                Status::Fail,
                "lost_at_delivery",
                format!("lost on delivery by {}", show::server(hop.event)),
                format!(
                    "server {} had the trace headers at its ingress and delivered the probe to \
                     the consumer ({}), which received none",
                    show::server_full(hop.event),
                    show::egress(eg)
                ),
                "check the consumer's client library: it must support headers",
            )
        });
    }
    let without = if received.is_empty() {
        "without headers".to_owned()
    } else {
        let mut kept: Vec<&str> = received.iter().map(|(n, _)| n.as_str()).collect();
        kept.dedup();
        format!("without its trace headers (it kept {})", kept.join(", "))
    };
    let candidates = relays(path, input);
    Some(match candidates.as_slice() {
        [(hop, eg)] => Finding::new(
            Status::Fail,
            "lost_at_client",
            format!(
                "lost at client connection {} on {}",
                eg.cid,
                show::server(hop.event)
            ),
            format!(
                "the probe left server {} to {} with its trace headers and reached the \
                 consumer without them: the client behind that subscription republished it \
                 {without} (a relay)",
                show::server(hop.event),
                show::egress(eg)
            ),
            FIX_RELAY,
        ),
        [] => lost_untraced(path, input),
        many => {
            let list: Vec<String> = many
                .iter()
                .map(|(hop, eg)| format!("{}: {}", show::server(hop.event), show::egress(eg)))
                .collect();
            Finding::new(
                Status::Fail,
                "lost_at_client",
                format!("lost at one of {} clients", many.len()),
                format!(
                    "the probe left with its trace headers to {} client connections ({}) and \
                     reached the consumer without them: one of those clients republished it \
                     {without} (a relay)",
                    many.len(),
                    list.join("; ")
                ),
                FIX_RELAY,
            )
        }
    })
}

/// Clients that got the probe with its trace headers and whose republish
/// (if any) was not traced: where headers can have been dropped.
fn relays<'p, 'a>(path: &'p Path<'a>, input: &HopsInput<'_>) -> Vec<(&'p Hop<'a>, &'a Egress)> {
    let mut out = Vec::new();
    for (i, hop) in path.hops.iter().enumerate().filter(|(_, h)| h.kept()) {
        for eg in hop.egresses() {
            if eg.kind == ConnectionKind::Client
                && eg.error.is_none()
                && !input.consumer.receives(hop.event, eg)
                && !path.republished_from(i, eg)
            {
                out.push((hop, eg));
            }
        }
    }
    out
}

fn lost_untraced(path: &Path<'_>, input: &HopsInput<'_>) -> Finding {
    if let Some((parent, eg)) = path.missing.first() {
        let from = show::server(path.hops[*parent].event);
        return Finding::new(
            Status::Fail,
            "lost_after_untraced_hop",
            format!("lost after {from}"),
            format!(
                "the probe reached the consumer without trace headers; the trace ends where \
                 {from} forwarded it over {} ({}), whose server sent no trace event: the \
                 headers were lost there or after it",
                show::link(eg.kind),
                show::egress(eg)
            ),
            "trace that server too (nats-server 2.12.12+ or 2.14+), or run the doctor against \
             it with --server",
        );
    }
    Finding::new(
        Status::Fail,
        "lost_untraced",
        "lost outside the traced servers".to_owned(),
        format!(
            "every traced server ({}) had the trace headers and none delivered the probe to \
             another client, yet the consumer received it on {} without them: something \
             outside the traced path republished it",
            show::chain(path),
            input.listen
        ),
        "look for other publishers to the listen subject (bridges, connectors, mirrors)",
    )
}

fn not_delivered(path: &Path<'_>, input: &HopsInput<'_>) -> Finding {
    let mut delivered = Vec::new();
    let mut refused = Vec::new();
    for hop in &path.hops {
        for eg in hop.egresses().filter(|e| e.kind == ConnectionKind::Client) {
            let item = format!("{} to {}", show::server(hop.event), show::egress(eg));
            match &eg.error {
                None => delivered.push(item),
                Some(e) => refused.push(format!("{item} ({e})")),
            }
        }
    }
    let refused = if refused.is_empty() {
        String::new()
    } else {
        format!("; not delivered: {}", refused.join("; "))
    };
    let listen = input.listen;
    let (short, text, fix) = if !delivered.is_empty() {
        (
            "delivered elsewhere, never to the consumer".to_owned(),
            format!(
                "the probe never reached the consumer on {listen}: it was delivered {}, and \
                 nothing from there arrived on {listen}{refused}",
                delivered.join("; ")
            ),
            "check that the client behind that subscription runs and publishes to the listen \
             subject, and that interest in it crosses to that client's server",
        )
    } else if let Some((parent, eg)) = path.missing.first() {
        let from = show::server(path.hops[*parent].event);
        (
            format!("trace ends after {from}"),
            format!(
                "the probe never reached the consumer on {listen}: the trace ends where {from} \
                 forwarded it over {} ({}), whose server sent no event{refused}",
                show::link(eg.kind),
                show::egress(eg)
            ),
            "run the doctor against that server, or raise --hops-window",
        )
    } else {
        let subject = &path.hops[0].ingress.subject;
        (
            "no subscriber".to_owned(),
            format!(
                "the probe never reached the consumer on {listen}: no traced server delivered \
                 it to any client, so nothing subscribes to {subject} where it was published \
                 or across the links ({}){refused}",
                show::chain(path)
            ),
            "start whatever should consume the publish subject; check subscribe permissions \
             and that interest crosses leafnodes and gateways",
        )
    };
    Finding::new(Status::Fail, "not_delivered_after", short, text, fix)
}
