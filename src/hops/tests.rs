//! Unit tests of the hops module: the captured events (fixtures/), the
//! spans made from them, and everything malformed.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry::{Array, KeyValue, Value};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracer, SdkTracerProvider, SpanData};
use serde_json::json;

use super::bridge::{Bridge, Handled};
use super::span::{MAX_SPAN_EVENTS, MAX_VALUE_LEN};
use super::*;

/// `(name, JSON array of events)`, all captured from real servers; the name
/// says the topology and the server version.
const FIXTURES: &[(&str, &str)] = &[
    (
        "single_js_2_15_1",
        include_str!("fixtures/single_js_2_15_1.json"),
    ),
    (
        "single_js_2_12_8",
        include_str!("fixtures/single_js_2_12_8.json"),
    ),
    (
        "single_js_2_11_11",
        include_str!("fixtures/single_js_2_11_11.json"),
    ),
    (
        "cluster_route_2_15_1",
        include_str!("fixtures/cluster_route_2_15_1.json"),
    ),
    (
        "leafnode_2_15_1",
        include_str!("fixtures/leafnode_2_15_1.json"),
    ),
    (
        "gateway_2_15_1",
        include_str!("fixtures/gateway_2_15_1.json"),
    ),
    (
        "subject_mapping_2_15_1",
        include_str!("fixtures/subject_mapping_2_15_1.json"),
    ),
    (
        "service_import_2_15_1",
        include_str!("fixtures/service_import_2_15_1.json"),
    ),
    (
        "stream_export_2_15_1",
        include_str!("fixtures/stream_export_2_15_1.json"),
    ),
    ("errors_2_15_1", include_str!("fixtures/errors_2_15_1.json")),
    (
        "unsampled_casing_2_15_1",
        include_str!("fixtures/unsampled_casing_2_15_1.json"),
    ),
];

const TRACE_ID: u128 = 0x0af7651916cd43dd8448eb211c80319c;
const PRODUCER: u64 = 0xb7ad6b7169203331;

/// The events of one fixture, each as the bytes a server published.
fn fixture(name: &str) -> Vec<Vec<u8>> {
    let (_, text) = FIXTURES.iter().find(|(n, _)| *n == name).expect("fixture");
    let events: Vec<serde_json::Value> = serde_json::from_str(text).expect("fixture JSON");
    events
        .iter()
        .map(|e| serde_json::to_vec(e).unwrap())
        .collect()
}

fn parsed(name: &str) -> Vec<TraceEvent> {
    fixture(name)
        .iter()
        .map(|b| parse_event(b).unwrap())
        .collect()
}

fn ts(s: &str) -> SystemTime {
    super::time::parse_rfc3339(s).unwrap()
}

fn harness() -> (Bridge<SdkTracer>, InMemorySpanExporter, SdkTracerProvider) {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    (
        Bridge::new(provider.tracer("hops-test")),
        exporter,
        provider,
    )
}

fn spans_of(name: &str) -> Vec<SpanData> {
    let (bridge, exporter, _provider) = harness();
    for event in fixture(name) {
        assert_eq!(bridge.handle(&event), Handled::Span, "{name}");
    }
    exporter.get_finished_spans().unwrap()
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attrs
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

fn s(v: &str) -> Value {
    Value::from(v.to_owned())
}

fn event_names(span: &SpanData) -> Vec<&str> {
    span.events.iter().map(|e| e.name.as_ref()).collect()
}

#[test]
fn every_fixture_parses() {
    for (name, _) in FIXTURES {
        for event in parsed(name) {
            assert!(event.ingress().is_some(), "{name}");
            assert!(
                !event.server.name.is_empty() && event.server.id.starts_with('N'),
                "{name}"
            );
            assert!(event.server.time.is_some(), "{name}");
            let tp = event.request.header("TRACEPARENT").expect("traceparent");
            assert!(tp.starts_with("00-"), "{name}");
            assert!(event.span_context().is_ok(), "{name}");
        }
    }
}

#[test]
fn single_server_with_jetstream() {
    for (name, version) in [
        ("single_js_2_15_1", "2.15.1"),
        ("single_js_2_12_8", "2.12.8"),
        ("single_js_2_11_11", "2.11.11"),
    ] {
        let events = parsed(name);
        assert_eq!(events.len(), 1);
        let e = &events[0];
        assert_eq!(e.server.version, version);
        assert_eq!(e.server.cluster, None);
        assert_eq!(e.request.msg_size, 115);
        assert_eq!(e.hops, 0);
        assert_eq!(e.hop(), None);
        let types: Vec<&str> = e.entries.iter().map(TraceEntry::entry_type).collect();
        assert_eq!(types, ["in", "js", "eg"], "{name}");
        let TraceEntry::Ingress(i) = &e.entries[0] else {
            panic!()
        };
        assert_eq!(
            (i.kind, i.account.as_str(), i.subject.as_str()),
            (ConnectionKind::Client, "$G", "jobs.1")
        );
        let TraceEntry::JetStream(js) = &e.entries[1] else {
            panic!()
        };
        assert_eq!(
            (
                js.stream.as_str(),
                js.subject.as_deref(),
                js.error.as_deref()
            ),
            ("JOBS", Some("jobs.1"), None)
        );
        let TraceEntry::Egress(eg) = &e.entries[2] else {
            panic!()
        };
        assert_eq!(
            (eg.kind, eg.subscription.as_deref(), eg.hop.as_deref()),
            (ConnectionKind::Client, Some("jobs.*"), None)
        );
        let sc = e.span_context().unwrap();
        assert_eq!(sc.trace_id(), TraceId::from(TRACE_ID));
        assert_eq!(sc.span_id(), SpanId::from(PRODUCER));
        assert!(sc.is_sampled() && sc.is_remote());
    }
}

#[test]
fn cluster_route_hops() {
    let events = parsed("cluster_route_2_15_1");
    let (a, c) = (&events[0], &events[1]);
    assert_eq!(
        (a.server.name.as_str(), a.server.cluster.as_deref(), a.hops),
        ("node-a", Some("east"), 1)
    );
    let TraceEntry::Egress(out) = &a.entries[1] else {
        panic!()
    };
    assert_eq!(out.kind, ConnectionKind::Route);
    assert_eq!(
        (out.name.as_deref(), out.hop.as_deref()),
        (Some("node-c"), Some("1"))
    );
    assert_eq!(c.hop(), Some("1"));
    let TraceEntry::Ingress(inc) = &c.entries[0] else {
        panic!()
    };
    assert_eq!(
        (inc.kind, inc.name.as_deref()),
        (ConnectionKind::Route, Some("node-a"))
    );
    let TraceEntry::Egress(deliver) = &c.entries[1] else {
        panic!()
    };
    assert_eq!(deliver.queue.as_deref(), Some("workers"));
}

#[test]
fn leafnode_and_gateway_kinds() {
    let leaf = parsed("leafnode_2_15_1");
    let TraceEntry::Egress(out) = &leaf[0].entries[1] else {
        panic!()
    };
    assert_eq!(
        (out.kind, out.name.as_deref()),
        (ConnectionKind::Leafnode, Some("hub"))
    );
    let TraceEntry::Ingress(inc) = &leaf[1].entries[0] else {
        panic!()
    };
    assert_eq!(
        (inc.kind, inc.name.as_deref()),
        (ConnectionKind::Leafnode, Some("edge-leaf"))
    );

    let gw = parsed("gateway_2_15_1");
    assert_eq!(gw[0].server.cluster.as_deref(), Some("west"));
    assert_eq!(gw[1].server.cluster.as_deref(), Some("east"));
    let TraceEntry::Egress(out) = &gw[0].entries[1] else {
        panic!()
    };
    assert_eq!(
        (out.kind, out.name.as_deref()),
        (ConnectionKind::Gateway, Some("east-1"))
    );
    assert!(out.kind.is_server_link() && !ConnectionKind::Client.is_server_link());
}

#[test]
fn account_entries() {
    let e = &parsed("subject_mapping_2_15_1")[0];
    let TraceEntry::SubjectMapping(sm) = &e.entries[1] else {
        panic!()
    };
    assert_eq!(sm.mapped_to, "orders.v2.new");

    let e = &parsed("service_import_2_15_1")[0];
    let TraceEntry::ServiceImport(si) = &e.entries[1] else {
        panic!()
    };
    assert_eq!(
        (si.account.as_str(), si.from.as_str(), si.to.as_str()),
        ("SVC", "echo", "svc.echo")
    );
    let TraceEntry::Egress(eg) = &e.entries[2] else {
        panic!()
    };
    assert_eq!(eg.account.as_deref(), Some("SVC"));

    let e = &parsed("stream_export_2_15_1")[0];
    let TraceEntry::StreamExport(se) = &e.entries[1] else {
        panic!()
    };
    assert_eq!((se.account.as_str(), se.to.as_str()), ("PUB", "evt.1"));
}

#[test]
fn errors_and_casing() {
    let e = &parsed("errors_2_15_1")[0];
    let TraceEntry::JetStream(js) = &e.entries[1] else {
        panic!()
    };
    assert_eq!(js.error.as_deref(), Some("maximum messages exceeded"));
    let TraceEntry::Egress(eg) = &e.entries[2] else {
        panic!()
    };
    assert_eq!(
        eg.error.as_deref(),
        Some("Not delivered because of no echo")
    );

    // 2.15.1 keeps `Traceparent` as sent; found in any casing. Unsampled.
    let e = &parsed("unsampled_casing_2_15_1")[0];
    assert!(e.request.headers.contains_key("Traceparent"));
    let sc = e.span_context().unwrap();
    assert!(!sc.is_sampled());
    assert_eq!(
        sc.trace_id(),
        TraceId::from(0x4bf92f3577b34da6a3ce929d0e0e4736)
    );
}

#[test]
fn span_of_single_server() {
    let spans = spans_of("single_js_2_15_1");
    assert_eq!(spans.len(), 1);
    let span = &spans[0];
    assert_eq!(span.name, "nats-server solo-2.15.1");
    assert_eq!(span.span_kind, SpanKind::Internal);
    assert_eq!(span.span_context.trace_id(), TraceId::from(TRACE_ID));
    assert_eq!(span.parent_span_id, SpanId::from(PRODUCER));
    assert!(span.parent_span_is_remote);
    // Earliest entry (ingress) to latest (the JetStream entry, listed before
    // the egress but updated after it).
    assert_eq!(span.start_time, ts("2026-12-02T01:15:54.434443735Z"));
    assert_eq!(span.end_time, ts("2026-12-02T01:15:54.435114586Z"));
    let a = &span.attributes;
    assert_eq!(attr(a, "messaging.system"), Some(&s("nats")));
    assert_eq!(attr(a, "nats.server.name"), Some(&s("solo-2.15.1")));
    assert_eq!(attr(a, "nats.server.version"), Some(&s("2.15.1")));
    assert_eq!(
        attr(a, "nats.server.id"),
        Some(&s(
            "NDPU3HBDKHFIPUXFYULFSZ3UEOGL4YIENBNF5EJXGTJDSGJ5HK5CENZN"
        ))
    );
    assert_eq!(attr(a, "nats.server.cluster"), None);
    assert_eq!(attr(a, "messaging.destination.name"), Some(&s("jobs.1")));
    assert_eq!(
        attr(a, "messaging.message.envelope.size"),
        Some(&Value::I64(115))
    );
    assert_eq!(attr(a, "nats.trace.hop"), None);
    assert_eq!(span.status, Status::Unset);

    assert_eq!(event_names(span), ["ingress", "jetstream_store", "egress"]);
    let ev = &span.events.events;
    assert_eq!(ev[0].timestamp, span.start_time);
    assert_eq!(ev[1].timestamp, span.end_time);
    assert_eq!(ev[2].timestamp, ts("2026-12-02T01:15:54.434873012Z"));
    assert_eq!(
        attr(&ev[0].attributes, "nats.connection.kind"),
        Some(&s("client"))
    );
    assert_eq!(
        attr(&ev[0].attributes, "nats.connection.id"),
        Some(&Value::I64(7))
    );
    assert_eq!(attr(&ev[0].attributes, "nats.account"), Some(&s("$G")));
    assert_eq!(attr(&ev[1].attributes, "nats.stream"), Some(&s("JOBS")));
    assert_eq!(
        attr(&ev[1].attributes, "nats.stream.subject"),
        Some(&s("jobs.1"))
    );
    assert_eq!(
        attr(&ev[2].attributes, "nats.subscription"),
        Some(&s("jobs.*"))
    );
    assert_eq!(attr(&ev[2].attributes, "nats.next_hop.server"), None);
}

#[test]
fn spans_of_a_cluster() {
    let spans = spans_of("cluster_route_2_15_1");
    assert_eq!(spans.len(), 2);
    let (a, c) = (&spans[0], &spans[1]);
    assert_eq!(
        (a.name.as_ref(), c.name.as_ref()),
        ("nats-server node-a", "nats-server node-c")
    );
    for span in [a, c] {
        assert_eq!(span.parent_span_id, SpanId::from(PRODUCER));
        assert_eq!(span.span_context.trace_id(), TraceId::from(TRACE_ID));
        assert_eq!(
            attr(&span.attributes, "nats.server.cluster"),
            Some(&s("east"))
        );
        assert!(span.end_time >= span.start_time);
    }
    assert_ne!(a.span_context.span_id(), c.span_context.span_id());
    assert_eq!(attr(&a.attributes, "nats.trace.hops"), Some(&Value::I64(1)));
    assert_eq!(
        attr(&a.attributes, "nats.server.next_hops"),
        Some(&Value::Array(Array::String(vec!["node-c".into()])))
    );
    let out = &a.events.events[1];
    assert_eq!(out.name, "egress");
    assert_eq!(
        attr(&out.attributes, "nats.connection.kind"),
        Some(&s("route"))
    );
    assert_eq!(
        attr(&out.attributes, "nats.next_hop.server"),
        Some(&s("node-c"))
    );
    assert_eq!(attr(&out.attributes, "nats.next_hop.id"), Some(&s("1")));
    // The next server's hop id matches.
    assert_eq!(attr(&c.attributes, "nats.trace.hop"), Some(&s("1")));
    let inc = &c.events.events[0];
    assert_eq!(
        attr(&inc.attributes, "nats.previous_hop.server"),
        Some(&s("node-a"))
    );
    assert_eq!(
        attr(&c.events.events[1].attributes, "nats.queue"),
        Some(&s("workers"))
    );
}

#[test]
fn spans_of_leafnode_gateway_and_accounts() {
    let leaf = spans_of("leafnode_2_15_1");
    let out = &leaf[0].events.events[1];
    assert_eq!(
        attr(&out.attributes, "nats.connection.kind"),
        Some(&s("leafnode"))
    );
    assert_eq!(
        attr(&out.attributes, "nats.next_hop.server"),
        Some(&s("hub"))
    );
    let gw = spans_of("gateway_2_15_1");
    let out = &gw[0].events.events[1];
    assert_eq!(
        attr(&out.attributes, "nats.connection.kind"),
        Some(&s("gateway"))
    );
    assert_eq!(
        attr(&gw[1].attributes, "nats.server.cluster"),
        Some(&s("east"))
    );

    let sm = spans_of("subject_mapping_2_15_1");
    assert_eq!(
        event_names(&sm[0]),
        ["ingress", "subject_mapping", "egress"]
    );
    assert_eq!(
        attr(&sm[0].events.events[1].attributes, "nats.subject.mapped_to"),
        Some(&s("orders.v2.new"))
    );
    let si = spans_of("service_import_2_15_1");
    assert_eq!(event_names(&si[0]), ["ingress", "service_import", "egress"]);
    let ev = &si[0].events.events[1].attributes;
    assert_eq!(attr(ev, "nats.service_import.to"), Some(&s("svc.echo")));
    assert_eq!(attr(ev, "nats.account"), Some(&s("SVC")));
    let se = spans_of("stream_export_2_15_1");
    assert_eq!(event_names(&se[0]), ["ingress", "stream_export", "egress"]);
}

#[test]
fn errors_set_status_and_attributes() {
    let spans = spans_of("errors_2_15_1");
    let span = &spans[0];
    assert_eq!(
        span.status,
        Status::error("jetstream: maximum messages exceeded")
    );
    let eg = &span.events.events[2];
    assert_eq!(
        attr(&eg.attributes, "error.message"),
        Some(&s("Not delivered because of no echo"))
    );
}

#[test]
fn unsampled_and_missing_parents_make_no_span() {
    let (bridge, exporter, _p) = harness();
    let event = &fixture("unsampled_casing_2_15_1")[0];
    assert_eq!(bridge.handle(event), Handled::Unsampled);

    let mut no_tp: serde_json::Value =
        serde_json::from_slice(&fixture("single_js_2_15_1")[0]).unwrap();
    no_tp["request"]["header"] = json!({"Nats-Trace-Dest": ["t"]});
    assert_eq!(
        bridge.handle(&serde_json::to_vec(&no_tp).unwrap()),
        Handled::NoTraceparent
    );
    no_tp["request"] = json!(null);
    assert_eq!(
        bridge.handle(&serde_json::to_vec(&no_tp).unwrap()),
        Handled::NoTraceparent
    );

    for bad in [
        json!({"traceparent": ["00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01"]}),
        json!({"traceparent": ["00-00000000000000000000000000000000-b7ad6b7169203331-01"]}),
        json!({"traceparent": ["x".repeat(1 << 20)]}),
        // Two casings that disagree.
        json!({"traceparent": ["00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"],
               "Traceparent": ["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"]}),
    ] {
        no_tp["request"] = json!({"header": bad});
        assert_eq!(
            bridge.handle(&serde_json::to_vec(&no_tp).unwrap()),
            Handled::InvalidTraceparent
        );
    }
    // The same value twice is fine; a huge unrelated header too.
    no_tp["request"] = json!({"header": {
        "traceparent": ["00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"],
        "TRACEPARENT": ["00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"],
        "tracestate": ["k=v"],
        "X-Big": ["y".repeat(1 << 20)]}});
    assert_eq!(
        bridge.handle(&serde_json::to_vec(&no_tp).unwrap()),
        Handled::Span
    );

    let spans = exporter.get_finished_spans().unwrap();
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].span_context.trace_state().get("k"), Some("v"));
    let stats = bridge.stats();
    assert_eq!(
        (
            stats.events_received,
            stats.spans_made,
            stats.unsampled,
            stats.no_traceparent,
            stats.invalid_traceparent
        ),
        (8, 1, 1, 2, 4)
    );
    assert_eq!(stats.dropped(), 7);
}

#[test]
fn malformed_events_are_counted_not_panicking() {
    let (bridge, exporter, _p) = harness();
    let good = fixture("cluster_route_2_15_1").remove(0);
    // Every truncation of a real event.
    for len in 0..good.len() {
        assert_eq!(
            bridge.handle(&good[..len]),
            Handled::Malformed,
            "prefix {len}"
        );
    }
    let base: serde_json::Value = serde_json::from_slice(&good).unwrap();
    let with = |path: &[&str], v: serde_json::Value| {
        let mut e = base.clone();
        let mut at = &mut e;
        for p in &path[..path.len() - 1] {
            at = if let Ok(i) = p.parse::<usize>() {
                &mut at[i]
            } else {
                &mut at[*p]
            };
        }
        let last = path[path.len() - 1];
        match last.parse::<usize>() {
            Ok(i) => at[i] = v,
            Err(_) => at[last] = v,
        }
        serde_json::to_vec(&e).unwrap()
    };
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"null".to_vec(), "wrong_shape"),
        (b"[]".to_vec(), "wrong_shape"),
        (b"\"event\"".to_vec(), "wrong_shape"),
        (vec![0xff, 0xfe, 0x00, 0x7b], "not_json"),
        (b"{}".to_vec(), "missing_server"),
        (with(&["server"], json!(null)), "missing_server"),
        (with(&["server"], json!({"host": "x"})), "missing_server"),
        (with(&["server"], json!("node-a")), "wrong_shape"),
        (with(&["server", "name"], json!(7)), "wrong_shape"),
        (
            with(&["server", "time"], json!("yesterday")),
            "bad_timestamp",
        ),
        (with(&["request"], json!([])), "wrong_shape"),
        (
            with(&["server"], json!(["node-a", "", "NID"])),
            "wrong_shape",
        ),
        (b" null ".to_vec(), "wrong_shape"),
        (
            with(&["request", "header"], json!({"traceparent": "not-a-list"})),
            "wrong_shape",
        ),
        (with(&["request", "msgsize"], json!(-1)), "wrong_shape"),
        (with(&["hops"], json!("1")), "wrong_shape"),
        (with(&["events"], json!(null)), "no_ingress"),
        (with(&["events"], json!([])), "no_ingress"),
        (with(&["events"], json!({"type": "in"})), "wrong_shape"),
        (
            with(
                &["events", "0"],
                json!({"type": "eg", "ts": "2026-12-02T01:16:11Z", "kind": 1, "cid": 1}),
            ),
            "no_ingress",
        ),
        (
            with(&["events", "0", "ts"], json!("2026-12-02 01:16")),
            "bad_timestamp",
        ),
        (
            with(&["events", "0", "ts"], json!(1_764_638_171)),
            "bad_timestamp",
        ),
        (
            with(&["events", "0", "ts"], json!("0001-01-01T00:00:00Z")),
            "bad_timestamp",
        ),
        (with(&["events", "0", "kind"], json!("client")), "bad_entry"),
        (with(&["events", "0", "cid"], json!(-5)), "bad_entry"),
        (with(&["events", "0", "subj"], json!(["jobs"])), "bad_entry"),
        (with(&["events", "1", "hop"], json!({"id": 1})), "bad_entry"),
        (with(&["events", "1"], json!(42)), "bad_entry"),
        (
            with(&["events", "1"], json!({"ts": "2026-12-02T01:16:11Z"})),
            "bad_entry",
        ),
        (with(&["events", "1", "type"], json!(2)), "bad_entry"),
    ];
    for (bytes, reason) in &cases {
        assert_eq!(
            parse_event(bytes).map(|_| ()).map_err(|e| e.as_str()),
            Err(*reason),
            "{}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
        );
        assert_eq!(bridge.handle(bytes), Handled::Malformed);
    }
    let too_big = vec![b' '; MAX_EVENT_BYTES + 1];
    assert_eq!(
        parse_event(&too_big),
        Err(InvalidEvent::TooLarge {
            len: MAX_EVENT_BYTES + 1
        })
    );
    // Error messages quote little of a huge value.
    let huge = with(&["server", "name"], json!(["n".repeat(100_000)]));
    let err = parse_event(&huge).unwrap_err();
    assert!(err.to_string().len() < 400, "{err}");
    let stats = bridge.stats();
    assert_eq!(stats.malformed, (good.len() + cases.len()) as u64);
    assert_eq!(stats.spans_made, 0);
    assert!(exporter.get_finished_spans().unwrap().is_empty());
}

#[test]
fn unknown_fields_and_entry_types_are_tolerated() {
    let (bridge, exporter, _p) = harness();
    let mut e: serde_json::Value = serde_json::from_slice(&fixture("single_js_2_15_1")[0]).unwrap();
    e["future"] = json!({"x": [1, 2]});
    e["server"]["tags"] = json!(["az:1"]);
    e["events"][0]["new_field"] = json!(true);
    e["events"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "zz", "ts": "2026-12-02T01:15:55Z", "what": 1}));
    e["events"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "yy"}));
    e["events"][2]["kind"] = json!(9);
    let bytes = serde_json::to_vec(&e).unwrap();
    let event = parse_event(&bytes).unwrap();
    assert_eq!(
        event.entries[3],
        TraceEntry::Unknown {
            entry_type: "zz".into(),
            timestamp: Some(ts("2026-12-02T01:15:55Z"))
        }
    );
    assert_eq!(
        event.entries[4],
        TraceEntry::Unknown {
            entry_type: "yy".into(),
            timestamp: None
        }
    );
    let TraceEntry::Egress(eg) = &event.entries[2] else {
        panic!()
    };
    assert_eq!(eg.kind, ConnectionKind::Other(9));
    assert_eq!(eg.kind.as_str(), "unknown");

    assert_eq!(bridge.handle(&bytes), Handled::Span);
    assert_eq!(bridge.stats().unknown_entries, 2);
    let span = &exporter.get_finished_spans().unwrap()[0];
    // The unknown entry's time stretches the span.
    assert_eq!(span.end_time, ts("2026-12-02T01:15:55Z"));
    assert_eq!(
        event_names(span),
        ["ingress", "jetstream_store", "egress", "unknown", "unknown"]
    );
    assert_eq!(
        attr(&span.events.events[3].attributes, "nats.trace.entry_type"),
        Some(&s("zz"))
    );
    assert_eq!(span.events.events[4].timestamp, span.start_time);
}

#[test]
fn one_entry_and_offset_times() {
    let (bridge, exporter, _p) = harness();
    let event = json!({
        "server": {"id": "NID", "ver": "2.15.1", "time": "2026-12-02T02:00:00+01:00"},
        "request": {"header": {"traceparent": ["00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"]}},
        "events": [{"type": "in", "ts": "2026-12-02T02:00:00.5+01:00", "kind": 0, "cid": 1, "acc": "A", "subj": "s", "error": "Maximum Payload Violation"}]
    });
    assert_eq!(
        bridge.handle(&serde_json::to_vec(&event).unwrap()),
        Handled::Span
    );
    let span = &exporter.get_finished_spans().unwrap()[0];
    // No name: the id names the server.
    assert_eq!(span.name, "nats-server NID");
    let at = UNIX_EPOCH + Duration::new(1_796_173_200, 500_000_000);
    assert_eq!((span.start_time, span.end_time), (at, at));
    assert_eq!(
        span.status,
        Status::error("ingress: Maximum Payload Violation")
    );
}

#[test]
fn fan_out_is_capped() {
    let (bridge, exporter, _p) = harness();
    let mut e: serde_json::Value = serde_json::from_slice(&fixture("single_js_2_15_1")[0]).unwrap();
    let long = "é".repeat(MAX_VALUE_LEN);
    for i in 0..1000 {
        e["events"].as_array_mut().unwrap().push(json!({
            "type": "eg", "ts": "2026-12-02T01:15:54.5Z", "kind": 4, "cid": i, "name": long, "hop": format!("{i}")
        }));
    }
    assert_eq!(
        bridge.handle(&serde_json::to_vec(&e).unwrap()),
        Handled::Span
    );
    let span = &exporter.get_finished_spans().unwrap()[0];
    assert_eq!(span.events.len(), MAX_SPAN_EVENTS);
    assert_eq!(
        attr(&span.attributes, "nats.trace.entries_dropped"),
        Some(&Value::I64(1003 - MAX_SPAN_EVENTS as i64))
    );
    let Some(Value::Array(Array::String(hops))) = attr(&span.attributes, "nats.server.next_hops")
    else {
        panic!()
    };
    assert_eq!(hops.len(), 32);
    assert!(hops[0].as_str().len() <= MAX_VALUE_LEN && hops[0].as_str().starts_with('é'));
}

fn sampled(flags: TraceFlags) -> SpanContext {
    SpanContext::new(
        TraceId::from(TRACE_ID),
        SpanId::from(PRODUCER),
        flags,
        false,
        TraceState::NONE,
    )
}

#[test]
fn publish_settings_apply() {
    let settings = HopsSettings::new_for_test("trace.events", None);
    assert!(settings.is_enabled());
    assert_eq!(settings.dest(), "trace.events");
    let mut headers = async_nats::HeaderMap::new();
    assert!(!settings.apply(&mut headers, &sampled(TraceFlags::default())));
    assert!(!settings.apply(&mut headers, &SpanContext::empty_context()));
    assert!(headers.get(TRACE_DEST_HEADER).is_none());
    assert!(settings.apply(&mut headers, &sampled(TraceFlags::SAMPLED)));
    assert_eq!(
        headers.get(TRACE_DEST_HEADER).map(|v| v.as_str()),
        Some("trace.events")
    );
    // Already there: left alone.
    let mut own = async_nats::HeaderMap::new();
    own.insert(TRACE_DEST_HEADER, "mine");
    assert!(!settings.apply(&mut own, &sampled(TraceFlags::SAMPLED)));
    assert_eq!(own.get(TRACE_DEST_HEADER).map(|v| v.as_str()), Some("mine"));

    let clone = settings.clone();
    settings.turn_off();
    assert!(!clone.is_enabled());
    assert!(!clone.apply(
        &mut async_nats::HeaderMap::new(),
        &sampled(TraceFlags::SAMPLED)
    ));

    let reason = message_tracing_safe("2.12.8").unwrap_err();
    let disabled = HopsSettings::new_for_test("trace.events", Some(reason.clone()));
    assert!(!disabled.is_enabled());
    assert_eq!(disabled.disabled_reason(), Some(&reason));
    assert!(format!("{disabled:?}").contains("enabled: false"));
}

#[test]
fn destinations() {
    for ok in ["trace.events", "_traces.api-1", "a", "$SYS.x"] {
        assert!(super::bridge::valid_dest(ok).is_some(), "{ok}");
    }
    for bad in [
        "",
        "a..b",
        ".a",
        "a.",
        "a.*",
        ">",
        "a.>",
        "a b",
        "a\r\nb",
        "tracé",
        &"a".repeat(257),
    ] {
        assert!(super::bridge::valid_dest(bad).is_none(), "{bad:?}");
    }
}

/// A manual check against a real server: `NATS_URL=nats://127.0.0.1:4222
/// cargo test --lib --features hops hops::tests::real_server -- --ignored`,
/// with a 2.12.12+/2.14+ server.
#[tokio::test]
#[ignore = "needs a running nats-server at NATS_URL"]
async fn real_server() {
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let client = async_nats::connect(url).await.unwrap();
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let hops = ServerHops::spawn(client.clone(), "hops.test.events", provider.tracer("hops"))
        .await
        .unwrap();
    assert!(
        hops.disabled_reason().is_none(),
        "{:?}",
        hops.disabled_reason()
    );
    let _sub = client.subscribe("hops.test.jobs").await.unwrap();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        "traceparent",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    );
    assert!(hops
        .publish_settings()
        .apply(&mut headers, &sampled(TraceFlags::SAMPLED)));
    client
        .publish_with_headers("hops.test.jobs", headers, "{}".into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    for _ in 0..50 {
        if hops.stats().spans_made > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let spans = exporter.get_finished_spans().unwrap();
    assert_eq!(spans.len(), 1, "{:?}", hops.stats());
    assert_eq!(spans[0].parent_span_id, SpanId::from(PRODUCER));
    assert_eq!(event_names(&spans[0]), ["ingress", "egress"]);
    eprintln!("{:#?}", spans[0]);
    let settings = hops.publish_settings();
    hops.shutdown().await;
    assert!(!settings.is_enabled());
}
