//! The hops evaluation on events captured from real servers
//! (`src/hops/fixtures`) and on small hand-written ones.

use std::time::Duration;

use nats_otel::hops::{message_tracing_safe, parse_event, TraceEvent};
use serde_json::{json, Value};

use super::path::{Carried, Path, Via};
use super::*;

/// The traceparent in the captured fixtures.
const TP: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

fn fixture(text: &str) -> Vec<TraceEvent> {
    let events: Vec<Value> = serde_json::from_str(text).expect("a JSON array of events");
    events
        .iter()
        .map(|e| parse_event(e.to_string().as_bytes()).expect("a valid event"))
        .collect()
}

fn leafnode() -> Vec<TraceEvent> {
    fixture(include_str!(
        "../../../../hops/fixtures/leafnode_2_15_1.json"
    ))
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

fn endpoint(server: &str, id: &str, cid: u64) -> Endpoint {
    Endpoint {
        server_id: id.to_owned(),
        server_name: server.to_owned(),
        client_id: cid,
    }
}

// Hand-written events: one millisecond per tick.
fn ts(tick: u64) -> String {
    format!("2026-12-02T01:16:24.{tick:03}Z")
}

fn ingress(kind: i64, cid: u64, name: Option<&str>, subject: &str, tick: u64) -> Value {
    json!({ "type": "in", "ts": ts(tick), "kind": kind, "cid": cid, "name": name,
            "acc": "$G", "subj": subject })
}

fn to_client(cid: u64, sub: &str, name: Option<&str>, tick: u64) -> Value {
    json!({ "type": "eg", "ts": ts(tick), "kind": 0, "cid": cid, "name": name, "sub": sub })
}

fn to_leaf(cid: u64, name: &str, hop: &str, tick: u64) -> Value {
    json!({ "type": "eg", "ts": ts(tick), "kind": 4, "cid": cid, "name": name, "hop": hop })
}

fn event(server: &str, version: &str, headers: Value, entries: Value) -> TraceEvent {
    let e = json!({
        "server": { "name": server, "id": format!("N{}", server.to_uppercase()), "ver": version },
        "request": { "header": headers, "msgsize": 120 },
        "events": entries,
    });
    parse_event(e.to_string().as_bytes()).expect("a valid event")
}

/// The probe's trace headers as the layer writes them, plus the trace
/// destination and the probe header.
fn sent() -> Vec<(String, String)> {
    pairs(&[
        ("Nats-Otel-Probe", "p1"),
        ("Nats-Trace-Dest", "_INBOX.t"),
        ("Traceparent", TP),
        ("traceparent", TP),
        ("tracestate", ""),
    ])
}

fn sent_headers() -> Value {
    json!({ "Nats-Otel-Probe": ["p1"], "Nats-Trace-Dest": ["_INBOX.t"],
            "Traceparent": [TP], "traceparent": [TP] })
}

/// The doctor's connection on `leaf` (cid 9) and its consumer on `hub`
/// (cid 3).
fn publisher() -> Endpoint {
    endpoint("leaf", "NLEAF", 9)
}

fn consumer() -> Endpoint {
    endpoint("hub", "NHUB", 3)
}

/// The leaf's event: the doctor's publish to `ingress.1`, delivered to
/// the relay (client 7, subscription `ingress.>`) and, with `forward`, to
/// the hub over the leafnode.
fn leaf_event(forward: bool) -> TraceEvent {
    let mut entries = vec![
        ingress(0, 9, Some("nats-otel"), "ingress.1", 1),
        to_client(7, "ingress.>", None, 2),
    ];
    if forward {
        entries.push(to_leaf(5, "hub", "1", 3));
    }
    event("leaf", "2.15.1", sent_headers(), Value::Array(entries))
}

struct Case {
    events: Vec<TraceEvent>,
    sent: Vec<(String, String)>,
    received: Option<Vec<(String, String)>>,
    publisher: Endpoint,
    consumer: Endpoint,
    recovered: bool,
}

impl Case {
    fn new(events: Vec<TraceEvent>, received: Option<&[(&str, &str)]>) -> Self {
        Self {
            events,
            sent: sent(),
            received: received.map(pairs),
            publisher: publisher(),
            consumer: consumer(),
            recovered: false,
        }
    }

    fn run(&self) -> HopsReport {
        evaluate(&HopsInput {
            dest: "_INBOX.t",
            events: &self.events,
            invalid: &[],
            publisher: &self.publisher,
            consumer: &self.consumer,
            listen: "jobs.1",
            sent: &self.sent,
            received: self.received.as_deref(),
            recovered: self.recovered,
            window: Duration::from_secs(1),
        })
    }
}

fn cause(report: &HopsReport) -> (&'static str, &str) {
    let c = report.step.cause.as_ref().expect("a cause");
    (c.code, c.text.as_str())
}

#[test]
fn relay_dropping_headers_is_named_with_its_server_connection_and_subscription() {
    let report = Case::new(vec![leaf_event(false)], Some(&[])).run();
    assert_eq!(report.step.status, Status::Fail);
    assert_eq!(report.step.name, "hops");
    assert_eq!(
        cause(&report),
        (
            "lost_at_client",
            "the probe left server leaf to client connection 7 (subscription ingress.>) with \
             its trace headers and reached the consumer without them: the client behind that \
             subscription republished it without headers (a relay)"
        )
    );
    assert_eq!(
        report.step.summary,
        "1 trace event: lost at client connection 7 on leaf"
    );
    assert_eq!(
        report.lines.join("\n"),
        "server hops (message trace to _INBOX.t):
  1. leaf (nats-server 2.15.1) — published here by the doctor
       in       client connection 9 \"nats-otel\" (the doctor), subject ingress.1, account $G
       headers  traceparent as sent (Traceparent + traceparent)
       out      client connection 7 (subscription ingress.>)
  consumer on jobs.1 (client connection 3 on hub): traceparent MISSING (sent as Traceparent + \
traceparent); tracestate MISSING (sent as tracestate); no headers at all"
    );
    let data = &report.step.data;
    assert_eq!(data["path"][0]["server"]["name"], "leaf");
    assert_eq!(data["path"][0]["egress"][0]["subscription"], "ingress.>");
    assert_eq!(data["path"][0]["headers"][0]["state"], "as_sent");
    assert_eq!(data["consumer"]["received"], true);
    assert_eq!(data["consumer"]["headers"][0]["state"], "missing");
}

#[test]
fn relay_keeping_other_headers_is_named_too() {
    let report = Case::new(vec![leaf_event(false)], Some(&[("Nats-Otel-Probe", "p1")])).run();
    let (code, text) = cause(&report);
    assert_eq!(code, "lost_at_client");
    assert!(
        text.ends_with(
            "republished it without its trace headers (it kept Nats-Otel-Probe) (a relay)"
        ),
        "{text}"
    );
}

#[test]
fn intact_path_through_the_leafnode_fixture_is_ok() {
    let events = leafnode();
    let mut case = Case::new(events, Some(&[("traceparent", TP)]));
    case.sent = pairs(&[("traceparent", TP)]);
    case.publisher = endpoint("edge-leaf", &case.events[0].server.id, 6);
    case.consumer = endpoint("hub", &case.events[1].server.id, 7);
    let report = case.run();
    assert_eq!(report.step.status, Status::Ok);
    assert!(report.step.cause.is_none());
    assert_eq!(
        report.step.summary,
        "2 trace events: edge-leaf → hub → consumer, trace headers intact"
    );
    let text = report.lines.join("\n");
    assert!(text.contains(
        "  1. edge-leaf (nats-server 2.15.1, cluster edge-leaf) — published here by the doctor"
    ));
    assert!(text.contains("out      leafnode connection 5 to hub (hop 1)"));
    assert!(
        text.contains("    2. hub (nats-server 2.15.1) — hop 1, over the leafnode from edge-leaf")
    );
    assert!(text.contains("in       leafnode connection 5 from edge-leaf, subject jobs.1"));
    assert!(text.contains("out      client connection 7 (subscription jobs.*) [the consumer]"));
    assert_eq!(report.step.data["path"][1]["via"], "link");
    assert_eq!(report.step.data["path"][1]["hop"], "1");
    assert_eq!(report.step.data["path"][1]["egress"][0]["consumer"], true);
}

#[test]
fn events_in_any_order_make_the_same_path() {
    for name in ["leafnode", "gateway", "route"] {
        let mut events = match name {
            "leafnode" => leafnode(),
            "gateway" => fixture(include_str!(
                "../../../../hops/fixtures/gateway_2_15_1.json"
            )),
            _ => fixture(include_str!(
                "../../../../hops/fixtures/cluster_route_2_15_1.json"
            )),
        };
        let first = events[0].server.name.clone();
        let second = events[1].server.name.clone();
        events.reverse();
        // The publisher is not among the events: the earliest client
        // ingress is taken as the publish.
        let path = Path::build(
            &events,
            &pairs(&[("traceparent", TP)]),
            &Endpoint::default(),
        );
        let names: Vec<&str> = path
            .hops
            .iter()
            .map(|h| h.event.server.name.as_str())
            .collect();
        assert_eq!(names, [first.as_str(), second.as_str()], "{name}");
        assert_eq!(path.hops[0].via, Via::Publish);
        assert!(
            matches!(path.hops[1].via, Via::Link { parent: 0, .. }),
            "{name}"
        );
        assert_eq!(path.hops[1].depth, 1);
        assert!(path.missing.is_empty());
        assert!(path
            .hops
            .iter()
            .all(|h| h.headers[0].state == Carried::AsSent));
    }
}

#[test]
fn headers_lost_between_servers_name_the_receiving_server() {
    let hub = event(
        "hub",
        "2.15.1",
        json!({ "Nats-Trace-Dest": ["_INBOX.t"], "Nats-Trace-Hop": ["1"] }),
        json!([
            ingress(4, 5, Some("leaf"), "ingress.1", 4),
            to_client(3, "ingress.1", None, 5)
        ]),
    );
    let report = Case::new(vec![hub, leaf_event(true)], Some(&[])).run();
    let (code, text) = cause(&report);
    assert_eq!(code, "lost_between_servers");
    assert_eq!(
        text,
        "the probe arrived at server hub (nats-server 2.15.1) over the leafnode from leaf \
         without trace headers: leaf had them at its ingress and forwarded the probe on \
         leafnode connection 5 to hub (hop 1)"
    );
    assert!(report
        .lines
        .join("\n")
        .contains("headers  traceparent MISSING (sent as Traceparent + traceparent)"));
}

#[test]
fn rename_at_a_server_names_that_server_and_its_version() {
    let hub = event(
        "hub",
        "2.12.8",
        json!({ "Nats-Trace-Dest": ["_INBOX.t"], "Nats-Trace-Hop": ["1"], "traceparent": [TP, TP] }),
        json!([
            ingress(4, 5, Some("leaf"), "ingress.1", 4),
            to_client(3, "ingress.1", None, 5)
        ]),
    );
    let report = Case::new(vec![leaf_event(true), hub], Some(&[("traceparent", TP)])).run();
    assert_eq!(report.step.status, Status::Warn);
    let (code, text) = cause(&report);
    assert_eq!(code, "header_recased_at_server");
    assert_eq!(
        text,
        "at server hub (nats-server 2.12.8)'s ingress traceparent arrived as traceparent, \
         where it was Traceparent + traceparent before: nats-server 2.12.8 rewrites \
         Traceparent to traceparent on inbound messages (2.11.0 to 2.12.11)"
    );
    let codes: Vec<&str> = report.step.data["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["cause"].as_str().unwrap())
        .collect();
    assert_eq!(
        codes,
        ["header_recased_at_server", "server_rewrites_trace_headers"]
    );
    assert!(report
        .lines
        .join("\n")
        .contains("traceparent RE-CASED: traceparent (sent as Traceparent + traceparent)"));
}

#[test]
fn recased_at_the_first_server_compares_with_what_was_sent() {
    let events = fixture(include_str!(
        "../../../../hops/fixtures/unsampled_casing_2_15_1.json"
    ));
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
    let mut case = Case::new(events, Some(&[("Traceparent", tp)]));
    case.sent = pairs(&[("traceparent", tp), ("Traceparent", tp)]);
    let report = case.run();
    let (code, text) = cause(&report);
    assert_eq!(code, "header_recased_at_server");
    assert!(text.contains("arrived as Traceparent, where it was Traceparent + traceparent"));
    assert!(text.ends_with("the hop before it re-cased it"), "{text}");
}

#[test]
fn traced_republish_without_headers_is_lost_at_that_client() {
    // The relay kept Nats-Trace-Dest but dropped the trace headers.
    let republished = event(
        "leaf",
        "2.15.1",
        json!({ "Nats-Trace-Dest": ["_INBOX.t"] }),
        json!([
            ingress(0, 7, Some("relay"), "jobs.1", 4),
            to_leaf(5, "hub", "1", 5)
        ]),
    );
    let hub = event(
        "hub",
        "2.15.1",
        json!({ "Nats-Trace-Dest": ["_INBOX.t"], "Nats-Trace-Hop": ["1"] }),
        json!([
            ingress(4, 5, Some("leaf"), "jobs.1", 6),
            to_client(3, "jobs.1", None, 7)
        ]),
    );
    let received = [("Nats-Trace-Dest", "_INBOX.t"), ("Nats-Trace-Hop", "1")];
    let case = Case::new(vec![hub, republished, leaf_event(false)], Some(&received));
    let report = case.run();
    let (code, text) = cause(&report);
    assert_eq!(code, "lost_at_client");
    assert_eq!(
        text,
        "the probe left server leaf to client connection 7 (subscription ingress.>) with its \
         trace headers, and that client republished it to jobs.1 without them (it kept \
         Nats-Trace-Dest, so the republish was traced)"
    );
    let path = Path::build(&case.events, &case.sent, &case.publisher);
    assert!(matches!(path.hops[1].via, Via::Republish { parent: 0, .. }));
    assert!(matches!(path.hops[2].via, Via::Link { parent: 1, .. }));
    // The hub's loss is not reported again: it never had them.
    assert_eq!(report.step.data["findings"].as_array().unwrap().len(), 1);
    assert!(complete(
        &case.events,
        &case.sent,
        &case.publisher,
        &case.consumer,
        true
    ));
}

#[test]
fn traced_republish_keeping_headers_is_ok_through_the_relay() {
    let republished = event(
        "leaf",
        "2.15.1",
        sent_headers(),
        json!([
            ingress(0, 7, Some("relay"), "jobs.1", 4),
            to_leaf(5, "hub", "1", 5)
        ]),
    );
    let mut hub_headers = sent_headers();
    hub_headers["Nats-Trace-Hop"] = json!(["1"]);
    let hub = event(
        "hub",
        "2.15.1",
        hub_headers,
        json!([
            ingress(4, 5, Some("leaf"), "jobs.1", 6),
            to_client(3, "jobs.1", None, 7)
        ]),
    );
    let received = [("traceparent", TP), ("Traceparent", TP), ("tracestate", "")];
    let report = Case::new(vec![leaf_event(false), republished, hub], Some(&received)).run();
    assert_eq!(report.step.status, Status::Ok);
    assert_eq!(
        report.step.summary,
        "3 trace events: leaf → client connection 7 → leaf → hub → consumer, trace headers intact"
    );
}

#[test]
fn untraced_next_server_is_where_the_trace_ends() {
    // The leaf forwarded to the hub, which sent no event.
    let report = Case::new(vec![leaf_event(true)], Some(&[])).run();
    let (code, text) = cause(&report);
    // The relay is a candidate too, so the client is named; without it the
    // hop that sent no event is.
    assert_eq!(code, "lost_at_client", "{text}");

    let only_link = event(
        "leaf",
        "2.15.1",
        sent_headers(),
        json!([ingress(0, 9, None, "jobs.1", 1), to_leaf(5, "hub", "1", 2)]),
    );
    let case = Case::new(vec![only_link], Some(&[]));
    let report = case.run();
    let (code, text) = cause(&report);
    assert_eq!(code, "lost_after_untraced_hop");
    assert!(text.contains("the trace ends where leaf forwarded it over the leafnode"));
    assert!(report.lines.join("\n").contains(
        "(no event from the server behind leafnode connection 5 to hub (hop 1) of leaf)"
    ));
    assert!(!complete(
        &case.events,
        &case.sent,
        &case.publisher,
        &case.consumer,
        false
    ));

    // Received intact: only a warning that the trace is incomplete.
    let case = Case {
        received: Some(sent()),
        ..case
    };
    let report = case.run();
    assert_eq!(report.step.status, Status::Warn);
    assert_eq!(cause(&report).0, "incomplete_trace");
}

#[test]
fn not_delivered_names_where_the_probe_went() {
    let report = Case::new(vec![leaf_event(false)], None).run();
    let (code, text) = cause(&report);
    assert_eq!(code, "not_delivered_after");
    assert_eq!(
        text,
        "the probe never reached the consumer on jobs.1: it was delivered leaf to client \
         connection 7 (subscription ingress.>), and nothing from there arrived on jobs.1"
    );
    assert!(report
        .lines
        .join("\n")
        .ends_with("consumer on jobs.1 (client connection 3 on hub): did not receive the probe"));

    let errors = fixture(include_str!("../../../../hops/fixtures/errors_2_15_1.json"));
    let mut case = Case::new(errors, None);
    case.sent = pairs(&[("traceparent", TP)]);
    let report = case.run();
    let (_, text) = cause(&report);
    assert!(
        text.ends_with(
            "; not delivered: solo-err to client connection 5 (subscription one.*) (Not \
             delivered because of no echo)"
        ),
        "{text}"
    );
    let listing = report.lines.join("\n");
    assert!(
        listing.contains("stored   stream ONE (subject one.b), ERROR: maximum messages exceeded")
    );
    assert!(listing.contains("NOT DELIVERED: Not delivered because of no echo"));
}

#[test]
fn several_candidate_clients_are_all_listed() {
    let leaf = event(
        "leaf",
        "2.15.1",
        sent_headers(),
        json!([
            ingress(0, 9, None, "ingress.1", 1),
            to_client(7, "ingress.>", None, 2),
            to_client(8, "ingress.*", Some("audit"), 3),
        ]),
    );
    let report = Case::new(vec![leaf], Some(&[])).run();
    let (code, text) = cause(&report);
    assert_eq!(code, "lost_at_client");
    assert!(text.contains(
        "to 2 client connections (leaf: client connection 7 (subscription ingress.>); leaf: \
         client connection 8 \"audit\" (subscription ingress.*))"
    ));
}

#[test]
fn fallback_recovering_the_context_makes_a_loss_a_warning() {
    let mut case = Case::new(vec![leaf_event(false)], Some(&[]));
    case.recovered = true;
    let report = case.run();
    assert_eq!(report.step.status, Status::Warn);
    assert!(cause(&report)
        .1
        .ends_with("; the KV fallback recovered the context"));
}

#[test]
fn no_events_is_a_warning() {
    let report = Case::new(Vec::new(), Some(&[])).run();
    assert_eq!(report.step.status, Status::Warn);
    let (code, text) = cause(&report);
    assert_eq!(code, "no_trace_events");
    assert!(text.starts_with("no server sent a readable message-trace event to _INBOX.t"));
    assert_eq!(report.lines[1], "  no trace events");
}

#[test]
fn jetstream_store_and_version_warning_from_a_2_12_fixture() {
    let events = fixture(include_str!(
        "../../../../hops/fixtures/single_js_2_12_8.json"
    ));
    let mut case = Case::new(events, Some(&[("traceparent", TP)]));
    case.sent = pairs(&[("traceparent", TP)]);
    case.consumer = endpoint("solo-2.12.8", &case.events[0].server.id, 6);
    let report = case.run();
    assert_eq!(report.step.status, Status::Warn);
    let (code, text) = cause(&report);
    assert_eq!(code, "server_rewrites_trace_headers");
    assert!(text.starts_with("server solo-2.12.8: nats-server 2.12.8 rewrites trace headers"));
    let listing = report.lines.join("\n");
    assert!(listing.contains("stored   stream JOBS (subject jobs.1)"));
    assert!(listing.contains("[the consumer]"));
    assert_eq!(
        report.step.data["path"][0]["jetstream"][0]["stream"],
        "JOBS"
    );
}

#[test]
fn complete_waits_for_the_consumer_delivery_when_it_was_traced() {
    let case = Case::new(vec![leaf_event(false)], None);
    let done = |expect| {
        complete(
            &case.events,
            &case.sent,
            &case.publisher,
            &case.consumer,
            expect,
        )
    };
    assert!(done(false));
    assert!(!done(true));
    assert!(!complete(
        &[],
        &case.sent,
        &case.publisher,
        &case.consumer,
        false
    ));
}

#[test]
fn empty_sent_values_are_not_expected_in_events() {
    // Events leave out headers with empty values (an empty tracestate).
    let leaf = leaf_event(false);
    let path = Path::build(std::slice::from_ref(&leaf), &sent(), &publisher());
    let states: Vec<Carried> = path.hops[0].headers.iter().map(|c| c.state).collect();
    assert_eq!(
        states,
        [Carried::AsSent, Carried::NotSent, Carried::NotSent]
    );
}

#[test]
fn unsafe_versions_skip_tracing_and_say_why() {
    let reason = message_tracing_safe("2.12.8").unwrap_err();
    let step = skipped("nats://h:4222", &reason);
    assert_eq!(step.status, Status::Skip);
    assert_eq!(step.name, "hops");
    assert!(step
        .summary
        .starts_with("not traced: nats-server 2.12.8 rewrites trace headers"));
    assert!(step
        .summary
        .ends_with("; the probe was sent without Nats-Trace-Dest"));
    assert_eq!(step.data["reason"], "rewrites_trace_headers");
    assert_eq!(step.data["traced"], false);

    let reason = message_tracing_safe("2.10.26").unwrap_err();
    let step = skipped("nats://h:4222", &reason);
    assert!(step.summary.contains("does not support message tracing"));
    assert_eq!(step.data["version"], "2.10.26");
}

#[test]
fn an_event_over_a_link_without_its_sender_is_not_a_complete_path() {
    // The hub's event came first; the leaf's (the publish) is still on its
    // way: not complete, and if it never comes, a warning.
    let mut hub_headers = sent_headers();
    hub_headers["Nats-Trace-Hop"] = json!(["1"]);
    let hub = event(
        "hub",
        "2.15.1",
        hub_headers,
        json!([
            ingress(4, 5, Some("leaf"), "jobs.1", 4),
            to_client(3, "jobs.1", None, 5)
        ]),
    );
    let received = [("traceparent", TP), ("Traceparent", TP), ("tracestate", "")];
    let case = Case::new(vec![hub], Some(&received));
    let done =
        |events: &[TraceEvent]| complete(events, &case.sent, &case.publisher, &case.consumer, true);
    assert!(!done(&case.events));
    let report = case.run();
    assert_eq!(report.step.status, Status::Warn);
    let codes: Vec<&str> = report.step.data["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["cause"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["incomplete_trace", "incomplete_trace"]);
    assert!(cause(&report)
        .1
        .starts_with("server leaf, where the probe was published, sent no trace event"));

    let both = vec![case.events[0].clone(), leaf_event(true)];
    assert!(done(&both));
    let report = Case::new(both, Some(&received)).run();
    assert_eq!(report.step.status, Status::Ok);
}
