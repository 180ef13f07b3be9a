//! `doctor --hops`: the probe carries `Nats-Trace-Dest`, every nats-server
//! it crosses publishes a message-trace event (ADR-41), and the doctor
//! orders them into the probe's path and names the hop where its trace
//! headers were lost.
//!
//! [`evaluate`] is pure: parsed events, what the probe sent and what the
//! consumer received in; the `hops` step and the hop-by-hop listing out.
//! [`path`] orders the events, [`judge`] and [`consumer`] give the
//! findings, [`show`] the words; [`collect`] does the I/O.

mod collect;
mod consumer;
mod judge;
mod path;
mod show;

use std::time::Duration;

use nats_otel::hops::{TraceEvent, UnsafeVersion};
use serde_json::json;

pub(super) use self::collect::{start, Outcome};
pub(super) use self::path::Endpoint;
use self::path::{check_families, Path};
use super::evaluate::{Cause, Status, Step};

/// What the hops are judged from.
#[derive(Debug, Clone, Copy)]
pub(super) struct HopsInput<'a> {
    /// The trace destination subject.
    pub(super) dest: &'a str,
    /// The events read (deduplicated).
    pub(super) events: &'a [TraceEvent],
    /// Why the other events could not be read.
    pub(super) invalid: &'a [String],
    /// The connection the probe was published on.
    pub(super) publisher: &'a Endpoint,
    /// The connection the probe was expected on.
    pub(super) consumer: &'a Endpoint,
    /// The subject the probe was expected on.
    pub(super) listen: &'a str,
    /// Every header the probe was published with: (name, value).
    pub(super) sent: &'a [(String, String)],
    /// The headers the consumer received; `None` when the probe did not
    /// arrive.
    pub(super) received: Option<&'a [(String, String)]>,
    /// Whether the consumer continued the probe's trace though its
    /// headers gave no context: a fallback recovered it.
    pub(super) recovered: bool,
    /// How long events were collected after the probe arrived.
    pub(super) window: Duration,
}

/// The `hops` step and the listing printed after the steps.
#[derive(Debug, Clone)]
pub(super) struct HopsReport {
    pub(super) step: Step,
    pub(super) lines: Vec<String>,
}

/// Whether no more events are expected: the probe's first server reported,
/// every server it was forwarded to did too, and with `expect_delivery`
/// (the consumer received `Nats-Trace-Dest`, so its delivery was traced)
/// the delivery to the consumer is in.
pub(super) fn complete(
    events: &[TraceEvent],
    sent: &[(String, String)],
    publisher: &Endpoint,
    consumer: &Endpoint,
    expect_delivery: bool,
) -> bool {
    Path::build(events, sent, publisher).complete(consumer, expect_delivery)
}

/// Judges the events and renders the path.
pub(super) fn evaluate(input: &HopsInput<'_>) -> HopsReport {
    let path = Path::build(input.events, input.sent, input.publisher);
    let findings = judge::judge(&path, input);
    let main = &findings[0];
    let n = input.events.len();
    let summary = format!(
        "{n} trace event{}: {}",
        if n == 1 { "" } else { "s" },
        main.short
    );
    let consumer = match input.received {
        None => format!(
            "on {} (client connection {} on {}): did not receive the probe",
            input.listen, input.consumer.client_id, input.consumer.server_name
        ),
        Some(received) => {
            let checks = check_families(input.sent, received, false);
            let none = if received.is_empty() {
                "; no headers at all"
            } else {
                ""
            };
            format!(
                "on {} (client connection {} on {}): {}{none}",
                input.listen,
                input.consumer.client_id,
                input.consumer.server_name,
                show::families(&checks)
            )
        }
    };
    let mut lines = vec![format!("server hops (message trace to {}):", input.dest)];
    if path.hops.is_empty() {
        lines.push("  no trace events".to_owned());
    }
    lines.extend(show::lines(
        &path,
        input.publisher,
        input.consumer,
        &consumer,
    ));
    for f in &findings[1..] {
        lines.push(format!("  note: {}", f.text));
    }
    if !input.invalid.is_empty() {
        lines.push(format!(
            "  note: {} unreadable trace events: {}",
            input.invalid.len(),
            input.invalid.join("; ")
        ));
    }
    let data = json!({
        "traced": true,
        "dest": input.dest,
        "events": n,
        "invalid": input.invalid,
        "path": show::path_json(&path, input.consumer),
        "missing": path.missing.iter().map(|(parent, eg)| json!({
            "after": path.hops[*parent].event.server.name,
            "egress": show::egress(eg),
        })).collect::<Vec<_>>(),
        "consumer": {
            "server": input.consumer.server_name,
            "cid": input.consumer.client_id,
            "subject": input.listen,
            "received": input.received.is_some(),
            "headers": input.received.map(|r| show::checks_json(&check_families(input.sent, r, false))),
        },
        "findings": findings.iter().map(|f| json!({
            "status": f.status.as_str(), "cause": f.code, "message": f.text, "fix": f.fix,
        })).collect::<Vec<_>>(),
    });
    let mut step = Step::new("hops", None, main.status, summary).data(data);
    if main.status != Status::Ok {
        step = step.cause(Cause::new(main.code, main.text.clone(), main.fix.clone()));
    }
    HopsReport { step, lines }
}

/// The `hops` step when the server's version rules message tracing out:
/// the probe goes without `Nats-Trace-Dest`.
pub(super) fn skipped(url: &str, reason: &UnsafeVersion) -> Step {
    Step::new(
        "hops",
        None,
        Status::Skip,
        format!("not traced: {reason}; the probe was sent without Nats-Trace-Dest"),
    )
    .data(json!({
        "traced": false,
        "server": url,
        "version": reason.version(),
        "reason": reason.as_str(),
        "reason_text": reason.to_string(),
    }))
}

#[cfg(test)]
mod tests;
