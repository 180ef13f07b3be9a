//! Hostile and bad input, table-driven: each row is a header map as a raw
//! client publishes it (no layer, headers built fallibly), and the outcome
//! the consumer adapter must report for it — and every message is still
//! delivered.
//!
//! What the table cannot hold:
//! - **Non-UTF-8 values** cannot be put in an `async_nats::HeaderMap` (its
//!   values are `String`s); `non_utf8_header_bytes_on_the_wire` publishes
//!   them over a raw TCP connection instead and records what async-nats does.
//! - **CR or LF in a value** cannot be published through async-nats either
//!   (`HeaderValue` parsing rejects them); a raw publisher writing them would
//!   just start another header line.
//! - **Header blocks of 64 KiB or more** are rejected by JetStream at
//!   publish time ("header size exceeds maximum allowed of 64k"), so the
//!   60 KiB `tracestate` row goes over core NATS;
//!   `jetstream_takes_a_60_kib_tracestate_and_refuses_64_kib` checks both
//!   sides of that limit.
//!
//! Every failing row is listed in the assertion message, with what differed.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use async_nats::header::{HeaderMap, HeaderName, HeaderValue};
use futures::StreamExt;
use nats_otel::{
    consume::NoContextReason, propagation::TraceparentProblem, ContextSource, ExtractionRecord,
    MessageContextExt, TraceContextStreamExt,
};
use opentelemetry::baggage::BaggageExt;
use opentelemetry::trace::{SpanId, TraceContextExt, TraceId};
use opentelemetry::Context;

use crate::support::nats::*;
use crate::support::server::NatsServer;
use crate::support::telemetry::*;

const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const SPAN: &str = "b7ad6b7169203331";
const VALID: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// W3C limits the consumer must enforce on what it accepts.
const MAX_TRACESTATE_MEMBERS: usize = 32;
const MAX_BAGGAGE_MEMBERS: usize = 180;
const MAX_BAGGAGE_BYTES: usize = 8192;

type Check = Box<dyn Fn(&Context, &ExtractionRecord) -> Result<(), String>>;

enum Expect {
    /// The publisher's context continues: source headers, same trace id,
    /// parent = the traceparent's span id.
    Continues,
    /// Continues, and the extra check holds (limits, baggage, header name).
    ContinuesWith(Check),
    /// A new root: the traceparent breaks this W3C rule.
    Malformed(TraceparentProblem),
    /// A new root, for this reason (`NoContextReason::as_str`).
    NewRoot(&'static str),
}

struct Row {
    name: &'static str,
    headers: Option<HeaderMap>,
    expect: Expect,
}

fn row(name: &'static str, headers: Option<HeaderMap>, expect: Expect) -> Row {
    Row {
        name,
        headers,
        expect,
    }
}

/// A header map built the fallible way, appending (so repeated names keep
/// every value).
fn h(pairs: &[(&str, &str)]) -> Option<HeaderMap> {
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        let name: HeaderName = name.parse().expect("a valid header name");
        let value: HeaderValue = value.parse().expect("a value without CR or LF");
        headers.append(name, value);
    }
    Some(headers)
}

fn tp(value: &str) -> Option<HeaderMap> {
    h(&[("traceparent", value)])
}

fn with_valid(name: &str, value: &str) -> Option<HeaderMap> {
    h(&[("traceparent", VALID), (name, value)])
}

fn members(n: usize, f: impl Fn(usize) -> String) -> String {
    (0..n).map(f).collect::<Vec<_>>().join(",")
}

fn check(f: impl Fn(&Context, &ExtractionRecord) -> Result<(), String> + 'static) -> Expect {
    Expect::ContinuesWith(Box::new(f))
}

/// The tracestate that reached the handler is within the W3C limits and is
/// not the oversize input carried on as-is (discarded or truncated).
fn tracestate_limited(input_len: usize) -> Expect {
    check(move |cx, _| {
        let state = cx.span().span_context().trace_state().header();
        let count = state.split(',').filter(|m| !m.trim().is_empty()).count();
        if count > MAX_TRACESTATE_MEMBERS || (input_len > 512 && state.len() >= input_len) {
            return Err(format!(
                "tracestate of {input_len} bytes carried on with {count} members, {} bytes",
                state.len()
            ));
        }
        Ok(())
    })
}

/// The baggage that reached the handler is within the W3C limits.
fn baggage_limited() -> Expect {
    check(|cx, _| {
        let baggage = cx.baggage();
        let bytes: usize = baggage
            .iter()
            .map(|(k, (v, _))| k.as_str().len() + v.as_str().len() + 1)
            .sum::<usize>()
            + baggage.len().saturating_sub(1);
        if baggage.len() > MAX_BAGGAGE_MEMBERS || bytes > MAX_BAGGAGE_BYTES {
            return Err(format!(
                "baggage carried on with {} members, ~{bytes} bytes",
                baggage.len()
            ));
        }
        Ok(())
    })
}

fn baggage_is(key: &'static str, expected: Option<&'static str>) -> Expect {
    check(move |cx, _| {
        let got = cx.baggage().get(key).map(|v| v.as_str().to_string());
        if got.as_deref() != expected {
            return Err(format!("baggage {key} = {got:?}, expected {expected:?}"));
        }
        Ok(())
    })
}

fn header_name_is(name: &'static str) -> Expect {
    check(move |_, record| match record.header_name() {
        Some(n) if n == name => Ok(()),
        other => Err(format!("header_name {other:?}, expected {name:?}")),
    })
}

fn rows() -> Vec<Row> {
    use Expect::*;
    use TraceparentProblem::*;
    let tracestate_60k = members(1000, |i| format!("vendor{i:04}={:0>50}", i));
    let tracestate_one_60k_member = format!("big={}", "x".repeat(60 * 1024));
    let tracestate_33 = members(33, |i| format!("k{i}=v{i}"));
    let baggage_9000 = members(3, |i| format!("k{i}={}", "x".repeat(2996)));
    let baggage_200 = members(200, |i| format!("k{i}=v{i}"));
    let garbage_10k = "a".repeat(10 * 1024);
    let mut rows = vec![
        // --- traceparent: every W3C rule ------------------------------------
        row(
            "version ff is forbidden",
            tp("ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            Malformed(ForbiddenVersion),
        ),
        row(
            "uppercase hex in the trace id",
            tp("00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01"),
            Malformed(UppercaseHex),
        ),
        row(
            "uppercase hex in the span id",
            tp("00-0af7651916cd43dd8448eb211c80319c-B7AD6B7169203331-01"),
            Malformed(UppercaseHex),
        ),
        row(
            "uppercase hex in the flags",
            tp("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0A"),
            Malformed(UppercaseHex),
        ),
        row(
            "all-zero trace id",
            tp("00-00000000000000000000000000000000-b7ad6b7169203331-01"),
            Malformed(ZeroTraceId),
        ),
        row(
            "all-zero span id",
            tp("00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01"),
            Malformed(ZeroSpanId),
        ),
        row(
            "trace id one digit short",
            tp("00-0af7651916cd43dd8448eb211c80319-b7ad6b7169203331-01"),
            Malformed(WrongLength),
        ),
        row(
            "trace id one digit long",
            tp("00-0af7651916cd43dd8448eb211c80319cc-b7ad6b7169203331-01"),
            Malformed(WrongLength),
        ),
        row(
            "trace id of 16 digits",
            tp("00-0af7651916cd43dd-b7ad6b7169203331-01"),
            Malformed(WrongLength),
        ),
        row(
            "span id of 8 digits",
            tp("00-0af7651916cd43dd8448eb211c80319c-b7ad6b71-01"),
            Malformed(WrongLength),
        ),
        row(
            "version of one digit",
            tp("0-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            Malformed(WrongLength),
        ),
        row(
            "flags of three digits",
            tp("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-011"),
            Malformed(WrongLength),
        ),
        row(
            "dash moved between trace and span id",
            tp("00-0af7651916cd43dd8448eb211c80319cb7ad-6b7169203331-01"),
            Malformed(WrongLength),
        ),
        row(
            "extra field for version 00",
            tp("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra"),
            Malformed(WrongFieldCount),
        ),
        row(
            "trailing dash for version 00",
            tp("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-"),
            Malformed(WrongFieldCount),
        ),
        row(
            "three fields",
            tp("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331"),
            Malformed(WrongFieldCount),
        ),
        row(
            "underscores instead of dashes",
            tp("00_0af7651916cd43dd8448eb211c80319c_b7ad6b7169203331_01"),
            Malformed(WrongFieldCount),
        ),
        row(
            "non-hex letter in the trace id",
            tp("00-0af7651916cd43dd8448eb211c80319g-b7ad6b7169203331-01"),
            Malformed(NotHex),
        ),
        row(
            "non-hex version",
            tp("zz-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            Malformed(NotHex),
        ),
        row(
            "non-hex flags",
            tp("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0x"),
            Malformed(NotHex),
        ),
        row(
            "control character (U+0001) in the span id",
            tp("00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333\u{1}-01"),
            Malformed(NotHex),
        ),
        row(
            "Cyrillic letter that looks like hex c",
            tp("00-0af7651916cd43dd8448eb211c80319\u{441}-b7ad6b7169203331-01"),
            Malformed(NotHex),
        ),
        row("empty value", tp(""), Malformed(Empty)),
        row("spaces and tabs only", tp(" \t \t"), Malformed(Empty)),
        row(
            "10 KiB of garbage",
            tp(&garbage_10k),
            Malformed(WrongFieldCount),
        ),
        row(
            "future version 01 with an extra field is accepted",
            tp("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-what-ever"),
            Continues,
        ),
        row(
            "surrounding tabs and spaces are optional whitespace",
            tp("\t 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01 \t"),
            Continues,
        ),
        row(
            "unusual casing TrAcEpArEnT",
            h(&[("TrAcEpArEnT", VALID)]),
            header_name_is("TrAcEpArEnT"),
        ),
        // --- duplicates ----------------------------------------------------
        row(
            "two traceparent values with different traces (HeaderMap::append)",
            h(&[
                ("traceparent", VALID),
                (
                    "traceparent",
                    "00-11111111111111111111111111111111-2222222222222222-01",
                ),
            ]),
            NewRoot("ambiguous_traceparent"),
        ),
        row(
            "traceparent and Traceparent with different values",
            h(&[
                ("traceparent", VALID),
                (
                    "Traceparent",
                    "00-11111111111111111111111111111111-2222222222222222-01",
                ),
            ]),
            NewRoot("ambiguous_traceparent"),
        ),
        row(
            "the same traceparent value twice",
            h(&[("traceparent", VALID), ("traceparent", VALID)]),
            Continues,
        ),
        // --- no usable traceparent at all -----------------------------------
        row("no headers", None, NewRoot("no_headers")),
        row(
            "unrelated headers only",
            h(&[("Job-Id", "7"), ("Nats-Msg-Id", "x")]),
            NewRoot("no_traceparent"),
        ),
        row(
            "tracestate and baggage without traceparent",
            h(&[("tracestate", "k=v"), ("baggage", "user=1")]),
            NewRoot("no_traceparent"),
        ),
        // --- tracestate -----------------------------------------------------
        row(
            "60 KiB tracestate of 1000 members (core NATS)",
            with_valid("tracestate", &tracestate_60k),
            tracestate_limited(tracestate_60k.len()),
        ),
        row(
            "60 KiB tracestate in one member",
            with_valid("tracestate", &tracestate_one_60k_member),
            tracestate_limited(tracestate_one_60k_member.len()),
        ),
        row(
            "33 tracestate members",
            with_valid("tracestate", &tracestate_33),
            tracestate_limited(tracestate_33.len()),
        ),
        row(
            "tracestate with a control character and unicode",
            with_valid("tracestate", "a=\u{1}\u{7f},ключ=значение\tb=c"),
            tracestate_limited(0),
        ),
        // --- baggage --------------------------------------------------------
        row(
            "baggage over 8192 bytes",
            with_valid("baggage", &baggage_9000),
            baggage_limited(),
        ),
        row(
            "200 baggage members",
            with_valid("baggage", &baggage_200),
            baggage_limited(),
        ),
        row(
            "percent-encoded unicode baggage is decoded",
            with_valid("baggage", "user=%D0%BA%D0%BB%D1%8E%D1%87"),
            baggage_is("user", Some("ключ")),
        ),
        row(
            "baggage member without '=' is ignored",
            with_valid("baggage", "justakey,user=1"),
            baggage_is("justakey", None),
        ),
        row(
            "baggage with control characters and a tab",
            with_valid("baggage", "a=\u{1}\u{2},b=\tc"),
            baggage_limited(),
        ),
        row(
            "baggage with raw (not percent-encoded) unicode",
            with_valid("baggage", "user=ключ"),
            baggage_limited(),
        ),
    ];
    // A 10 KiB traceparent-like value is quoted, not copied, in the reason.
    rows.push(row(
        "reason quotes at most 64 characters of a huge value",
        tp(&format!("00-{}", "f".repeat(10_000))),
        Malformed(WrongFieldCount),
    ));
    rows
}

/// What is wrong with the outcome of `row`; empty when it is as expected.
fn problems(
    row: &Row,
    cx: &Context,
    record: &ExtractionRecord,
    telemetry: &Telemetry,
    subject: &str,
) -> Vec<String> {
    let mut problems = Vec::new();
    let process = telemetry.spans_named(&format!("process {subject}"));
    let [process] = process.as_slice() else {
        return vec![format!("{} process spans", process.len())];
    };
    let continues = |problems: &mut Vec<String>| {
        if record.source() != ContextSource::Headers {
            problems.push(format!("source {record}, expected headers"));
        }
        if trace_id(process) != TraceId::from_hex(TRACE).unwrap() {
            problems.push(format!("trace {} is not the sent one", trace_id(process)));
        }
        if process.parent_span_id != SpanId::from_hex(SPAN).unwrap() {
            problems.push(format!(
                "parent {} is not the sent one",
                process.parent_span_id
            ));
        }
    };
    let new_root = |problems: &mut Vec<String>| {
        if record.source() != ContextSource::None {
            problems.push(format!("source {}, expected none", record.source()));
        }
        if process.parent_span_id != SpanId::INVALID {
            problems.push(format!(
                "process span has parent {}",
                process.parent_span_id
            ));
        }
        if trace_id(process) == TraceId::from_hex(TRACE).unwrap() {
            problems.push("continued the sent trace".into());
        }
    };
    match &row.expect {
        Expect::Continues => continues(&mut problems),
        Expect::ContinuesWith(check) => {
            continues(&mut problems);
            if let Err(e) = check(cx, record) {
                problems.push(e);
            }
        }
        Expect::Malformed(problem) => {
            new_root(&mut problems);
            match record.reason() {
                Some(NoContextReason::MalformedTraceparent {
                    problem: got,
                    value,
                    ..
                }) => {
                    if got != problem {
                        problems.push(format!("problem {got:?}, expected {problem:?}"));
                    }
                    if value.chars().count() > 65 {
                        problems.push(format!("reason quotes {} characters", value.len()));
                    }
                }
                other => problems.push(format!(
                    "reason {other:?}, expected MalformedTraceparent({problem:?})"
                )),
            }
        }
        Expect::NewRoot(kind) => {
            new_root(&mut problems);
            let got = record.reason().map(|r| r.as_str());
            if got != Some(*kind) {
                problems.push(format!("reason {got:?} ({record}), expected {kind}"));
            }
        }
    }
    problems
}

#[tokio::test]
async fn bad_input_table() {
    let telemetry = Telemetry::install();
    let server = NatsServer::start();
    let client = connect(&server).await;
    let mut messages = traced_subscription(&client, "bad.>").await;

    let rows = rows();
    assert!(rows.len() >= 30, "{} rows", rows.len());
    for (i, row) in rows.iter().enumerate() {
        let subject = format!("bad.{i}");
        let payload = format!("row {i}");
        let sent = match &row.headers {
            Some(headers) => {
                client
                    .publish_with_headers(subject, headers.clone(), payload.into())
                    .await
            }
            None => client.publish(subject, payload.into()).await,
        };
        sent.unwrap_or_else(|e| panic!("row {i} ({}): publish failed: {e}", row.name));
    }
    client.flush().await.unwrap();

    let mut failures = Vec::new();
    let mut delivered = HashMap::new();
    for _ in 0..rows.len() {
        let (message, cx) = tokio::time::timeout(WAIT, messages.next())
            .await
            .expect("every row's message is delivered within 10 s")
            .expect("subscription open");
        let i: usize = message.subject.as_str()["bad.".len()..].parse().unwrap();
        assert_eq!(message.payload, format!("row {i}"), "payload intact");
        let record = cx.extraction().expect("every message has a record").clone();
        // The process span ends when the last clone of the yielded context
        // drops; keep what the handler would see (span context, trace state,
        // baggage) in a copy without the span.
        let copy = Context::new()
            .with_remote_span_context(cx.span().span_context().clone())
            .with_baggage(
                cx.baggage()
                    .iter()
                    .map(|(k, (v, _))| opentelemetry::KeyValue::new(k.clone(), v.clone())),
            );
        drop(cx);
        delivered.insert(i, (copy, record, message.subject.to_string()));
    }
    for (i, row) in rows.iter().enumerate() {
        let Some((cx, record, subject)) = delivered.remove(&i) else {
            failures.push(format!("row {i} ({}): not delivered", row.name));
            continue;
        };
        let p = problems(row, &cx, &record, &telemetry, &subject);
        if !p.is_empty() {
            failures.push(format!("row {i} ({}): {}", row.name, p.join("; ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}

/// A raw TCP publisher puts bytes that are not UTF-8 into a header value
/// (a `HeaderMap` cannot hold them). The server relays them unchanged;
/// async-nats 0.51's parser then fails the whole connection ("header isn't
/// valid utf-8"), so that one message never reaches the adapter. The client
/// reconnects on its own and later messages are delivered with their
/// context: the consumer survives, but the bad message itself is lost
/// before this crate sees it.
#[tokio::test]
async fn non_utf8_header_bytes_on_the_wire() {
    let telemetry = Telemetry::install();
    let server = NatsServer::start();
    let client = connect(&server).await;
    let mut messages = traced_subscription(&client, "raw.>").await;

    // The raw publisher: CONNECT with headers, then HPUB.
    let mut raw = TcpStream::connect(("127.0.0.1", server.port())).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut info = [0u8; 4096];
    let _ = raw.read(&mut info).unwrap();
    raw.write_all(b"CONNECT {\"verbose\":false,\"headers\":true,\"no_responders\":false}\r\n")
        .unwrap();
    let header: &[u8] = b"NATS/1.0\r\ntraceparent: \xff\xfe\xfd\r\n\r\n";
    let payload: &[u8] = b"bad";
    let mut hpub = format!(
        "HPUB raw.bad {} {}\r\n",
        header.len(),
        header.len() + payload.len()
    )
    .into_bytes();
    hpub.extend_from_slice(header);
    hpub.extend_from_slice(payload);
    hpub.extend_from_slice(b"\r\nPING\r\n");
    raw.write_all(&hpub).unwrap();
    let mut pong = [0u8; 64];
    let n = raw.read(&mut pong).unwrap();
    assert!(
        String::from_utf8_lossy(&pong[..n]).contains("PONG"),
        "the server accepted the raw publish: {:?}",
        String::from_utf8_lossy(&pong[..n])
    );

    // Then good messages, until one arrives (the subscriber reconnects).
    let mut good = HeaderMap::new();
    good.insert("traceparent", VALID);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut seen_bad = false;
    let mut attempt = 0;
    let (message, cx) = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the subscriber never recovered"
        );
        attempt += 1;
        let _ = client
            .publish_with_headers(format!("raw.good.{attempt}"), good.clone(), "good".into())
            .await;
        match tokio::time::timeout(Duration::from_millis(500), messages.next()).await {
            Ok(Some((message, cx))) if message.subject.starts_with("raw.good") => {
                break (message, cx)
            }
            Ok(Some((message, _))) => {
                seen_bad = true;
                eprintln!("delivered: {:?} {:?}", message.subject, message.headers);
            }
            Ok(None) => panic!("the subscription ended"),
            Err(_) => {}
        }
    };
    assert_eq!(message.payload, "good");
    assert_eq!(
        cx.extraction().unwrap().source(),
        ContextSource::Headers,
        "later messages keep their context"
    );
    drop(cx);
    assert!(
        !seen_bad,
        "async-nats now delivers non-UTF-8 headers: add a row for what the adapter makes of them"
    );
    assert!(!telemetry
        .spans_named("process raw.bad")
        .iter()
        .any(|_| true));
}

/// JetStream's side of the 64 KiB header limit: a 60 KiB tracestate is
/// stored and extracted within the limits; a 64 KiB one is refused at
/// publish — which is why the layer caps tracestate and baggage on inject.
#[tokio::test]
async fn jetstream_takes_a_60_kib_tracestate_and_refuses_64_kib() {
    let _telemetry = Telemetry::install();
    let server = NatsServer::start();
    let js = jetstream(&server).await;
    let stream = create_stream(&js, "BIG", "big.>").await;
    let consumer = durable_consumer(&stream, "big").await;

    let tracestate_60k = members(1000, |i| format!("vendor{i:04}={:0>50}", i));
    assert!(tracestate_60k.len() > 60 * 1024 && tracestate_60k.len() < 63 * 1024);
    js.publish_with_headers(
        "big.60k",
        with_valid("tracestate", &tracestate_60k).unwrap(),
        "60k".into(),
    )
    .await
    .unwrap()
    .await
    .expect("JetStream stores a 60 KiB header block");

    let tracestate_64k = format!(
        "{tracestate_60k},{}",
        members(80, |i| format!("more{i:03}={:0>50}", i))
    );
    let refused = match js
        .publish_with_headers(
            "big.64k",
            with_valid("tracestate", &tracestate_64k).unwrap(),
            "64k".into(),
        )
        .await
    {
        Err(e) => e.to_string(),
        Ok(ack) => match ack.await {
            Err(e) => e.to_string(),
            Ok(ack) => panic!("JetStream stored a 64 KiB header block: {ack:?}"),
        },
    };
    eprintln!("64 KiB header block refused: {refused}");

    let mut fetched = consumer
        .fetch()
        .max_messages(10)
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .unwrap()
        .with_trace_context();
    let (message, cx) = fetched.next().await.unwrap().unwrap();
    assert_eq!(message.payload, "60k");
    let record = cx.extraction().unwrap();
    assert_eq!(record.source(), ContextSource::Headers, "{record}");
    assert_eq!(
        cx.span().span_context().trace_id(),
        TraceId::from_hex(TRACE).unwrap()
    );
    let state = cx.span().span_context().trace_state().header();
    let count = state.split(',').filter(|m| !m.is_empty()).count();
    assert!(
        count <= MAX_TRACESTATE_MEMBERS,
        "the 1000-member tracestate was carried on with {count} members"
    );
    message.ack().await.unwrap();
    drop(cx);
    assert!(
        tokio::time::timeout(Duration::from_secs(3), fetched.next())
            .await
            .ok()
            .flatten()
            .is_none(),
        "only the 60 KiB message was stored"
    );
}
