//! What the consumer makes of headers written by others: other casings
//! (Go's `Traceparent`), no headers, malformed `traceparent` values. Messages
//! are published by a plain client, without the layer.

use async_nats::HeaderMap;
use nats_otel::{
    consume::NoContextReason, propagation::TraceparentProblem, ContextSource, MessageContextExt,
};
use opentelemetry::baggage::BaggageExt;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceId};
use opentelemetry::StringValue;
use opentelemetry_sdk::trace::SpanData;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::support::nats::*;
use crate::support::server::NatsServer;
use crate::support::telemetry::*;

const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const SPAN: &str = "b7ad6b7169203331";
const VALID: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        headers.insert(*name, *value);
    }
    headers
}

/// Publishes `traceparent` under `header_name` with a plain client and
/// checks the consumer continues that trace and reports the casing.
async fn traceparent_under(header_name: &str) {
    let telemetry = Telemetry::install();
    let server = NatsServer::start();
    let client = connect(&server).await;
    let mut jobs = traced_subscription(&client, "jobs.cased").await;

    client
        .publish_with_headers("jobs.cased", headers(&[(header_name, VALID)]), "job".into())
        .await
        .unwrap();

    let (message, cx) = next(&mut jobs).await;
    assert_eq!(&message.payload[..], b"job");
    assert!(
        message.headers.as_ref().unwrap().get(header_name).is_some(),
        "the server kept the casing {header_name}"
    );
    let record = cx.extraction().unwrap();
    assert_eq!(record.source(), ContextSource::Headers, "{record}");
    assert_eq!(record.reason(), None);
    assert_eq!(record.header_name(), Some(header_name));
    drop(cx);

    let process = telemetry.span("process jobs.cased");
    assert_eq!(trace_id(&process), TraceId::from_hex(TRACE).unwrap());
    assert_eq!(process.parent_span_id, SpanId::from_hex(SPAN).unwrap());
    assert!(process.parent_span_is_remote);
    assert_attribute(&process, "nats_otel.context.source", "headers");
}

#[tokio::test]
async fn go_cased_traceparent_is_extracted() {
    traceparent_under("Traceparent").await;
}

#[tokio::test]
async fn upper_cased_traceparent_is_extracted() {
    traceparent_under("TRACEPARENT").await;
}

#[tokio::test]
async fn go_cased_tracestate_and_baggage_reach_the_handler() {
    let telemetry = Telemetry::install();
    let server = NatsServer::start();
    let client = connect(&server).await;
    let mut jobs = traced_subscription(&client, "jobs.go").await;

    // What Go's propagation.HeaderCarrier writes (http.Header canonical form).
    let sent = headers(&[
        ("Traceparent", VALID),
        ("Tracestate", "congo=t61rcWkgMzE"),
        ("Baggage", "user.id=42,tenant=acme"),
    ]);
    client
        .publish_with_headers("jobs.go", sent, "job".into())
        .await
        .unwrap();

    let (message, cx) = next(&mut jobs).await;
    assert_eq!(&message.payload[..], b"job");
    let record = cx.extraction().unwrap();
    assert_eq!(record.source(), ContextSource::Headers, "{record}");
    assert_eq!(record.header_name(), Some("Traceparent"));
    assert_eq!(
        cx.baggage().get("user.id"),
        Some(&StringValue::from("42")),
        "baggage in the yielded context: {:?}",
        cx.baggage()
    );
    assert_eq!(cx.baggage().get("tenant"), Some(&StringValue::from("acme")));
    assert_eq!(
        cx.span().span_context().trace_state().header(),
        "congo=t61rcWkgMzE"
    );

    let handler = cx.handler_span(tracing::info_span!("handler")).unwrap();
    let in_handler = async {
        tracing::Span::current()
            .context()
            .baggage()
            .get("user.id")
            .cloned()
    }
    .instrument(handler)
    .await;
    assert_eq!(
        in_handler,
        Some(StringValue::from("42")),
        "baggage inside the handler span"
    );
    drop(cx);

    let process = telemetry.span("process jobs.go");
    let handler = telemetry.span("handler");
    assert_eq!(trace_id(&process), TraceId::from_hex(TRACE).unwrap());
    assert_eq!(process.parent_span_id, SpanId::from_hex(SPAN).unwrap());
    assert_eq!(
        process.span_context.trace_state().header(),
        "congo=t61rcWkgMzE",
        "tracestate carried on"
    );
    assert_child_of(&handler, &process);
}

struct Case {
    name: &'static str,
    headers: &'static [(&'static str, &'static str)],
    reason: NoContextReason,
}

fn malformed(header: &str, value: &str, problem: TraceparentProblem) -> NoContextReason {
    NoContextReason::MalformedTraceparent {
        header: header.into(),
        value: value.into(),
        problem,
    }
}

const UPPER: &str = "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01";
const VERSION_FF: &str = "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
const ZERO_TRACE: &str = "00-00000000000000000000000000000000-b7ad6b7169203331-01";
const ZERO_SPAN: &str = "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01";
const CUT_AFTER_TRACE: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b71";
const SHORT_TRACE: &str = "00-0af7651916cd43dd-b7ad6b7169203331-01";
const SHORT_SPAN: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b71-01";
const SHORT_FLAGS: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0";

/// No headers, no traceparent, or a traceparent that breaks a W3C rule the
/// SDK's propagator also enforces: each message is yielded (not lost), as a
/// new root, with the reason recorded.
#[tokio::test]
async fn unusable_context_starts_a_new_root_with_the_reason() {
    let cases = [
        Case {
            name: "no headers",
            headers: &[],
            reason: NoContextReason::NoHeaders,
        },
        Case {
            name: "headers without traceparent",
            headers: &[("Job-Id", "7")],
            reason: NoContextReason::MissingTraceparent {
                present: vec!["Job-Id".into()],
            },
        },
        Case {
            name: "uppercase hex",
            headers: &[("traceparent", UPPER)],
            reason: malformed("traceparent", UPPER, TraceparentProblem::UppercaseHex),
        },
        Case {
            name: "uppercase hex under Go casing",
            headers: &[("Traceparent", UPPER)],
            reason: malformed("Traceparent", UPPER, TraceparentProblem::UppercaseHex),
        },
        Case {
            name: "version ff",
            headers: &[("traceparent", VERSION_FF)],
            reason: malformed(
                "traceparent",
                VERSION_FF,
                TraceparentProblem::ForbiddenVersion,
            ),
        },
        Case {
            name: "all-zero trace id",
            headers: &[("traceparent", ZERO_TRACE)],
            reason: malformed("traceparent", ZERO_TRACE, TraceparentProblem::ZeroTraceId),
        },
        Case {
            name: "all-zero span id",
            headers: &[("traceparent", ZERO_SPAN)],
            reason: malformed("traceparent", ZERO_SPAN, TraceparentProblem::ZeroSpanId),
        },
        Case {
            name: "truncated after the trace id",
            headers: &[("traceparent", CUT_AFTER_TRACE)],
            reason: malformed(
                "traceparent",
                CUT_AFTER_TRACE,
                TraceparentProblem::WrongFieldCount,
            ),
        },
    ];
    run_cases(&cases).await;
}

/// A traceparent whose trace id, span id or flags has the wrong number of
/// digits breaks W3C Trace Context (fixed 32-16-2 lowercase hex digits) and
/// must be ignored. The SDK's `TraceContextPropagator` does not check field
/// lengths (it zero-pads short ids), so this is the crate's to catch.
#[tokio::test]
async fn wrong_length_traceparent_fields_start_a_new_root() {
    let cases = [
        Case {
            name: "truncated trace id (16 of 32 digits)",
            headers: &[("traceparent", SHORT_TRACE)],
            reason: malformed("traceparent", SHORT_TRACE, TraceparentProblem::WrongLength),
        },
        Case {
            name: "truncated span id (8 of 16 digits)",
            headers: &[("traceparent", SHORT_SPAN)],
            reason: malformed("traceparent", SHORT_SPAN, TraceparentProblem::WrongLength),
        },
        Case {
            name: "truncated flags (1 of 2 digits)",
            headers: &[("traceparent", SHORT_FLAGS)],
            reason: malformed("traceparent", SHORT_FLAGS, TraceparentProblem::WrongLength),
        },
    ];
    run_cases(&cases).await;
}

/// Publishes each case with a plain client and checks what the consumer
/// yields; collects every mismatch so one run names every failing case.
async fn run_cases(cases: &[Case]) {
    let telemetry = Telemetry::install();
    let server = NatsServer::start();
    let client = connect(&server).await;
    let mut jobs = traced_subscription(&client, "bad.*").await;

    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let subject = format!("bad.{i}");
        let payload = format!("case {i}");
        if case.headers.is_empty() {
            client
                .publish(subject.clone(), payload.clone().into())
                .await
                .unwrap();
        } else {
            client
                .publish_with_headers(
                    subject.clone(),
                    headers(case.headers),
                    payload.clone().into(),
                )
                .await
                .unwrap();
        }

        // Not lost, and nothing panicked on the way.
        let (message, cx) = next(&mut jobs).await;
        assert_eq!(message.subject.as_str(), subject, "{}", case.name);
        assert_eq!(&message.payload[..], payload.as_bytes(), "{}", case.name);

        let record = cx.extraction().expect("extraction record").clone();
        let yielded = cx.span().span_context().clone();
        drop(cx);

        let mut problems = Vec::new();
        if record.source() != ContextSource::None {
            problems.push(format!("source is {}, expected none", record.source()));
        }
        if record.reason() != Some(&case.reason) {
            problems.push(format!(
                "reason is {:?}, expected {:?}",
                record.reason(),
                case.reason
            ));
        }
        match telemetry
            .spans_named(&format!("process {subject}"))
            .as_slice()
        {
            [process] => problems.extend(new_root_problems(process, &yielded, &case.reason)),
            [] => problems.push(format!(
                "no process span exported (sampled out under the parent {:?}?)",
                yielded
            )),
            more => problems.push(format!("{} process spans", more.len())),
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{} ({:?}):\n    {}",
                case.name,
                case.headers,
                problems.join("\n    ")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// What is wrong with `process` as the new root of a message without usable
/// context.
fn new_root_problems(
    process: &SpanData,
    yielded: &SpanContext,
    reason: &NoContextReason,
) -> Vec<String> {
    let mut problems = Vec::new();
    if process.parent_span_id != SpanId::INVALID || process.parent_span_is_remote {
        problems.push(format!(
            "process span has parent {} (remote: {}), expected a new root",
            process.parent_span_id, process.parent_span_is_remote
        ));
    }
    if trace_id(process) == TraceId::from_hex(TRACE).unwrap() {
        problems.push("process span continued the malformed trace id".into());
    }
    if !yielded.is_valid() || yielded.trace_id() != trace_id(process) {
        problems.push(format!(
            "yielded context {yielded:?} is not the process span's"
        ));
    }
    let source = attribute(process, "nats_otel.context.source");
    if source != Some("none".into()) {
        problems.push(format!("nats_otel.context.source = {source:?}"));
    }
    let recorded = attribute(process, "nats_otel.context.reason");
    if recorded != Some(reason.as_str().into()) {
        problems.push(format!(
            "nats_otel.context.reason = {recorded:?}, expected {}",
            reason.as_str()
        ));
    }
    problems
}
