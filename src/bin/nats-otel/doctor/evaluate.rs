//! The doctor's judgement, without a server: from what was injected, what
//! arrived on a path and the probe's known ids to the steps (status, cause
//! code, text, fix) and the verdict.

use std::fmt::Write as _;
use std::time::Duration;

use async_nats::HeaderMap;
use nats_otel::diagnose::Finding;
use nats_otel::{ContextSource, ExtractionRecord};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::Context;
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};
use serde_json::{json, Value};

use super::transit::transit_step;
use crate::analysis::{describe_record, record_json, HeaderAnalysis};
use crate::{EXIT_BROKEN, EXIT_HEALTHY};

/// The payload field holding the probe id.
const PROBE_FIELD: &str = "nats_otel_doctor";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Status {
    Ok,
    Warn,
    Fail,
    Skip,
}

impl Status {
    /// The name in the JSON report.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Warn => "warn",
            Self::Fail => "fail",
            Self::Skip => "skip",
        }
    }

    /// The tag in the text report.
    pub(super) fn tag(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Warn => "WARN",
            Self::Fail => "FAIL",
            Self::Skip => "skip",
        }
    }
}

/// Why a step failed or warned.
#[derive(Debug, Clone)]
pub(super) struct Cause {
    pub(super) code: &'static str,
    pub(super) text: String,
    pub(super) fix: String,
}

impl Cause {
    pub(super) fn new(code: &'static str, text: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            code,
            text: text.into(),
            fix: fix.into(),
        }
    }
}

/// One checked step, for the whole probe (`path: None`) or one path.
#[derive(Debug, Clone)]
pub(super) struct Step {
    pub(super) name: &'static str,
    pub(super) path: Option<&'static str>,
    pub(super) status: Status,
    pub(super) summary: String,
    pub(super) cause: Option<Cause>,
    pub(super) data: Value,
}

impl Step {
    pub(super) fn new(
        name: &'static str,
        path: Option<&'static str>,
        status: Status,
        summary: String,
    ) -> Self {
        Self {
            name,
            path,
            status,
            summary,
            cause: None,
            data: Value::Null,
        }
    }

    pub(super) fn cause(mut self, cause: Cause) -> Self {
        self.cause = Some(cause);
        self
    }

    pub(super) fn data(mut self, data: Value) -> Self {
        self.data = data;
        self
    }

    /// The step's name, with its path if it has one.
    pub(super) fn label(&self) -> String {
        match self.path {
            Some(path) => format!("{} [{path}]", self.name),
            None => self.name.to_owned(),
        }
    }
}

/// The probe's known context.
#[derive(Debug, Clone)]
pub(super) struct Probe {
    pub(super) trace_id: TraceId,
    pub(super) span_id: SpanId,
}

impl Probe {
    /// A probe with fresh random ids.
    pub(super) fn new() -> Self {
        let ids = RandomIdGenerator::default();
        Self {
            trace_id: ids.new_trace_id(),
            span_id: ids.new_span_id(),
        }
    }

    pub(super) fn id(&self) -> String {
        self.trace_id.to_string()
    }

    pub(super) fn context(&self) -> Context {
        Context::new().with_remote_span_context(SpanContext::new(
            self.trace_id,
            self.span_id,
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        ))
    }

    pub(super) fn payload(&self) -> String {
        json!({
            PROBE_FIELD: self.id(),
            "note": "probe published by nats-otel doctor; safe to ignore",
        })
        .to_string()
    }
}

/// The probe id in a payload, if it is a probe.
pub(super) fn probe_id(payload: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(payload).ok()?;
    value.get(PROBE_FIELD)?.as_str().map(str::to_owned)
}

/// What one consumption path saw of the probe.
#[derive(Debug, Clone)]
pub(super) struct Arrival {
    pub(super) subject: String,
    pub(super) headers: Option<HeaderMap>,
    /// Where the consumer adapter found the context.
    pub(super) record: Option<ExtractionRecord>,
    /// The trace id of the consumer's context, when valid.
    pub(super) trace_id: Option<TraceId>,
    pub(super) elapsed: Duration,
    pub(super) stream_sequence: Option<u64>,
}

/// What a path is judged against.
#[derive(Debug, Clone, Copy)]
pub(super) struct PathContext<'a> {
    pub(super) probe: &'a Probe,
    /// The headers the layer injected.
    pub(super) injected: &'a HeaderAnalysis,
    /// Where the probe was published.
    pub(super) subject: &'a str,
    /// Where it is expected.
    pub(super) listen: &'a str,
    pub(super) timeout: Duration,
    /// The stream, on the JetStream path.
    pub(super) stream: Option<&'a str>,
}

/// The server step: connected, with or without header support.
pub(super) fn server_step(url: &str, version: &str, headers: bool) -> Step {
    if headers {
        return Step::new(
            "server",
            None,
            Status::Ok,
            format!("nats-server {version} at {url} supports headers"),
        );
    }
    let finding = Finding::ServerWithoutHeaders {
        server: format!("nats-server {version}"),
    };
    Step::new(
        "server",
        None,
        Status::Fail,
        format!("nats-server {version} does not support headers"),
    )
    .cause(Cause::new(
        "server_without_headers",
        finding.to_string(),
        finding.fix(),
    ))
}

/// The server step when the server refused a client that needs headers
/// (nats-server 2.2+ with `no_header_support`).
pub(super) fn server_refused_step(url: &str, error: &str) -> Step {
    let finding = Finding::ServerWithoutHeaders {
        server: url.to_owned(),
    };
    Step::new(
        "server",
        None,
        Status::Fail,
        format!("the server refused the connection: {error}"),
    )
    .cause(Cause::new(
        "server_without_headers",
        format!("{finding} (no_header_support is set)"),
        finding.fix(),
    ))
}

/// The inject step: did the layer write the probe's traceparent?
pub(super) fn inject_step(
    probe: &Probe,
    injected: &HeaderAnalysis,
    kv_bucket: Option<&str>,
    subject: &str,
) -> Step {
    let data = json!({
        "headers": injected.headers_json(),
        "kv_bucket": kv_bucket,
    });
    let kv = kv_bucket
        .map(|bucket| format!("; carrier also written to KV bucket {bucket}"))
        .unwrap_or_default();
    match &injected.traceparent {
        Some(tp) if tp.trace_id() == Some(probe.id().as_str()) => Step::new(
            "inject",
            None,
            Status::Ok,
            format!("{}: {}{kv}", tp.header, tp.value),
        )
        .data(data),
        other => {
            let what = match other {
                Some(tp) => format!("the layer wrote {}: {}", tp.header, tp.value),
                None => "the layer wrote no traceparent".to_owned(),
            };
            Step::new("inject", None, Status::Fail, what.clone())
                .cause(Cause::new(
                    "not_injected",
                    format!(
                        "{what} for the probe's trace {} on {subject}",
                        probe.trace_id
                    ),
                    "this is a nats-otel bug if TracePropagationLayer was used; please report it",
                ))
                .data(data)
        }
    }
}

/// The publish step, from the publish outcome (a summary and the stream
/// sequence, or the error).
pub(super) fn publish_step(subject: &str, outcome: &Result<(String, Option<u64>), String>) -> Step {
    match outcome {
        Ok((summary, _)) => Step::new("publish", None, Status::Ok, summary.clone()),
        Err(error) => Step::new(
            "publish",
            None,
            Status::Fail,
            format!("publishing to {subject} failed: {error}"),
        )
        .cause(Cause::new(
            "publish_failed",
            format!("the probe could not be published to {subject}: {error}"),
            "check the publish permissions of this user, and that a stream captures the \
             subject when publishing with JetStream",
        )),
    }
}

/// The transit, extract and trace steps of one path; `others` counts the
/// messages that arrived there that were not the probe.
pub(super) fn evaluate_path(
    path: &'static str,
    ctx: &PathContext<'_>,
    arrival: Option<&Arrival>,
    others: usize,
) -> Vec<Step> {
    let Some(arrival) = arrival else {
        return not_delivered(path, ctx, others);
    };
    let seen = HeaderAnalysis::of(arrival.headers.as_ref());
    let mut transit = transit_step(path, ctx, arrival, &seen);
    let record = arrival.record.as_ref();
    let extract = extract_step(path, record);
    let trace = trace_step(path, ctx.probe.trace_id, arrival.trace_id);

    // Lost headers that a fallback made up for are a warning, not a break.
    if transit.status == Status::Fail && trace.status == Status::Ok {
        transit.status = Status::Warn;
        if let Some(cause) = transit.cause.as_mut() {
            cause
                .text
                .push_str("; the KV fallback recovered the context");
        }
    }
    vec![transit, extract, trace]
}

fn not_delivered(path: &'static str, ctx: &PathContext<'_>, others: usize) -> Vec<Step> {
    let via = match ctx.stream {
        Some(stream) => format!(" through stream {stream}"),
        None => String::new(),
    };
    let hop = if ctx.subject == ctx.listen {
        format!("the subject {}", ctx.subject)
    } else {
        format!("{} to {}", ctx.subject, ctx.listen)
    };
    let mut text = format!(
        "the probe did not arrive on {}{via} within {:?}",
        ctx.listen, ctx.timeout
    );
    if others > 0 {
        let _ = write!(text, " ({others} other messages did)");
    }
    let fix = match ctx.stream {
        Some(stream) => format!(
            "check that whatever moves {hop} is running, that stream {stream} captures {}, \
             and the permissions; or raise --timeout",
            ctx.listen
        ),
        None => format!(
            "check that whatever moves {hop} is running and the subscribe/publish \
             permissions; or raise --timeout"
        ),
    };
    let skipped = |name| Step::new(name, Some(path), Status::Skip, "nothing arrived".to_owned());
    vec![
        Step::new("transit", Some(path), Status::Fail, text.clone())
            .cause(Cause::new("not_delivered", text, fix))
            .data(json!({ "arrived": false, "other_messages": others })),
        skipped("extract"),
        skipped("trace"),
    ]
}

/// Where the consumer's context came from.
fn extract_step(path: &'static str, record: Option<&ExtractionRecord>) -> Step {
    match record.map(|r| r.source()) {
        Some(ContextSource::Headers) => {
            let how = match record.and_then(|r| r.header_name()) {
                Some(name) => format!("from headers (header {name}, matched ignoring case)"),
                None => "from headers (traceparent)".to_owned(),
            };
            Step::new("extract", Some(path), Status::Ok, how)
        }
        Some(ContextSource::Kv) | Some(ContextSource::Payload) => {
            let source = record.map(|r| r.source().as_str()).unwrap_or_default();
            let why = record
                .and_then(|r| r.reason())
                .map(|r| r.to_string())
                .unwrap_or_default();
            let text =
                format!("the headers gave no context ({why}); the {source} fallback recovered it");
            Step::new(
                "extract",
                Some(path),
                Status::Warn,
                format!("from the {source} fallback"),
            )
            .cause(Cause::new(
                "kv_recovered",
                text,
                "consumers with the KV fallback keep the trace; fix the transit step so \
                 the others do too",
            ))
        }
        _ => {
            let reason = record
                .and_then(|r| r.reason())
                .map(|r| format!("{}: {r}", r.as_str()))
                .unwrap_or_else(|| "no record".to_owned());
            let fallback = record
                .and_then(|r| r.fallback_reason())
                .map(|r| format!("; fallback: {r}"))
                .unwrap_or_default();
            Step::new(
                "extract",
                Some(path),
                Status::Fail,
                format!("no context: {}", describe_record(record)),
            )
            .cause(Cause::new(
                "not_extracted",
                format!("the consumer found no context ({reason}{fallback})"),
                "see the transit step; nats-otel consumers explain the reason in \
                 ExtractionRecord::reason()",
            ))
        }
    }
    .data(record_json(record))
}

/// Whether the consumer continues the probe's trace.
fn trace_step(path: &'static str, expected: TraceId, found: Option<TraceId>) -> Step {
    match found {
        Some(id) if id == expected => Step::new(
            "trace",
            Some(path),
            Status::Ok,
            format!("consumer continues trace {id}"),
        ),
        Some(id) => {
            let text = format!(
                "the consumer's context is trace {id}, not the probe's {expected}: a hop \
                 started a new trace"
            );
            Step::new("trace", Some(path), Status::Fail, text.clone()).cause(Cause::new(
                "different_trace",
                text,
                "see the transit step",
            ))
        }
        None => {
            let text =
                format!("the consumer would start a new trace instead of continuing {expected}");
            Step::new("trace", Some(path), Status::Fail, text.clone()).cause(Cause::new(
                "new_trace",
                text,
                "see the transit and extract steps",
            ))
        }
    }
}

/// The outcome of all steps: broken at the first failed step, else healthy
/// (with the warnings).
#[derive(Debug)]
pub(super) struct Verdict<'a> {
    pub(super) broken: Option<&'a Step>,
    pub(super) warnings: Vec<&'a Step>,
}

impl<'a> Verdict<'a> {
    pub(super) fn of(steps: &'a [Step]) -> Self {
        Self {
            broken: steps.iter().find(|s| s.status == Status::Fail),
            warnings: steps.iter().filter(|s| s.status == Status::Warn).collect(),
        }
    }

    /// The exit code: broken or healthy (warnings allowed).
    pub(super) fn exit_code(&self) -> u8 {
        if self.broken.is_some() {
            EXIT_BROKEN
        } else {
            EXIT_HEALTHY
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::extracted_trace_id;
    use nats_otel::consume::{ContextExtractor, MessageMeta};
    use nats_otel::propagation::HeaderExtractor;
    use nats_otel::{MessageContextExt, TraceCarrier};

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";
    const OTHER_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
    const OTHER_SPAN: &str = "b7ad6b7169203331";

    fn probe() -> Probe {
        Probe {
            trace_id: TraceId::from_hex(TRACE).unwrap(),
            span_id: SpanId::from_hex(SPAN).unwrap(),
        }
    }

    fn traceparent(trace: &str, span: &str) -> String {
        format!("00-{trace}-{span}-01")
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, *value);
        }
        map
    }

    /// What the layer injects for the probe with the default header names
    /// (both casings of traceparent).
    fn injected() -> HeaderAnalysis {
        let tp = traceparent(TRACE, SPAN);
        HeaderAnalysis::of(Some(&headers(&[
            ("traceparent", &tp),
            ("Traceparent", &tp),
            ("tracestate", ""),
            ("Nats-Otel-Probe", TRACE),
        ])))
    }

    /// The probe arriving on `orders.out` with `headers`, its context
    /// extracted as the consumer adapter does.
    fn arrival(headers: Option<HeaderMap>) -> Arrival {
        let (cx, record) = match &headers {
            Some(headers) => HeaderExtractor::new(headers).extract_context(),
            // No header map at all: what the consumer adapter records.
            None => {
                let cx = ContextExtractor::new().extract(&MessageMeta::of(&message(None)));
                let record = cx.extraction().cloned().expect("a record");
                (cx, record)
            }
        };
        Arrival {
            subject: "orders.out".to_owned(),
            headers,
            record: Some(record),
            trace_id: extracted_trace_id(&cx),
            elapsed: Duration::from_millis(12),
            stream_sequence: None,
        }
    }

    fn message(headers: Option<HeaderMap>) -> async_nats::Message {
        async_nats::Message {
            subject: "orders.out".into(),
            reply: None,
            payload: probe().payload().into(),
            headers,
            status: None,
            description: None,
            length: 0,
        }
    }

    /// Evaluates the core path from `orders.in` to `orders.out`.
    fn evaluate(arrival: Option<&Arrival>, injected: &HeaderAnalysis) -> Vec<Step> {
        let probe = probe();
        let ctx = PathContext {
            probe: &probe,
            injected,
            subject: "orders.in",
            listen: "orders.out",
            timeout: Duration::from_secs(5),
            stream: None,
        };
        evaluate_path("core", &ctx, arrival, 0)
    }

    /// The transit, extract and trace steps for `arrived` headers.
    fn steps_for(arrived: &[(&str, &str)]) -> [Step; 3] {
        let steps = evaluate(Some(&arrival(Some(headers(arrived)))), &injected());
        steps.try_into().expect("three steps")
    }

    fn code(step: &Step) -> Option<&'static str> {
        step.cause.as_ref().map(|c| c.code)
    }

    fn text(step: &Step) -> &str {
        step.cause.as_ref().map_or("", |c| c.text.as_str())
    }

    fn statuses(steps: &[Step]) -> Vec<Status> {
        steps.iter().map(|s| s.status).collect()
    }

    #[test]
    fn healthy_path_is_ok_on_every_step() {
        let tp = traceparent(TRACE, SPAN);
        let steps = steps_for(&[
            ("traceparent", &tp),
            ("Traceparent", &tp),
            ("Nats-Otel-Probe", TRACE),
        ]);
        assert_eq!(statuses(&steps), [Status::Ok; 3]);
        assert!(steps.iter().all(|s| s.cause.is_none()));
        let [transit, extract, trace] = &steps;
        assert_eq!(
            transit.summary,
            format!(
                "arrived on orders.out after 12 ms with headers Nats-Otel-Probe={TRACE}, \
                 Traceparent={tp}, traceparent={tp}"
            )
        );
        assert_eq!(transit.data["traceparent"]["trace_id"], TRACE);
        assert_eq!(extract.data["source"], "headers");
        assert_eq!(trace.summary, format!("consumer continues trace {TRACE}"));
        assert_eq!(Verdict::of(&steps).exit_code(), EXIT_HEALTHY);
    }

    #[test]
    fn hop_that_continued_the_trace_is_ok_and_says_so() {
        let tp = traceparent(TRACE, OTHER_SPAN);
        let [transit, _, trace] = steps_for(&[("traceparent", &tp), ("Traceparent", &tp)]);
        assert_eq!((transit.status, trace.status), (Status::Ok, Status::Ok));
        assert!(transit.cause.is_none());
        assert!(transit
            .summary
            .ends_with("; a hop continued the trace (its own span is the parent now)"));
    }

    #[test]
    fn headers_stripped_breaks_transit_extract_and_trace() {
        let steps = evaluate(Some(&arrival(None)), &injected());
        assert_eq!(statuses(&steps), [Status::Fail; 3]);
        let [transit, extract, trace] = &steps[..] else {
            unreachable!()
        };
        assert_eq!(code(transit), Some("headers_stripped"));
        assert!(text(transit).contains(
            "the probe left with headers (Nats-Otel-Probe, Traceparent, traceparent, \
             tracestate) and arrived with none"
        ));
        assert!(text(transit).contains("Something between orders.in and orders.out"));
        assert_eq!(transit.data["headers"], json!([]));
        assert!(transit.summary.ends_with("with no headers"));
        assert_eq!(code(extract), Some("not_extracted"));
        assert_eq!(extract.data["reason"], "no_headers");
        assert!(extract.summary.starts_with("no context: none(no_headers)"));
        assert_eq!(code(trace), Some("new_trace"));
        let verdict = Verdict::of(&steps);
        assert_eq!(
            verdict.broken.map(Step::label).as_deref(),
            Some("transit [core]")
        );
        assert_eq!(verdict.exit_code(), EXIT_BROKEN);
    }

    #[test]
    fn headers_recovered_by_a_fallback_are_warnings() {
        // The payload carrier stands in for the KV store: a fallback that
        // recovers the probe's context when the headers are gone.
        let carrier = TraceCarrier::from_context(&probe().context());
        let extractor = ContextExtractor::new().payload_carrier(move |_| Some(carrier.clone()));
        let cx = extractor.extract(&MessageMeta::of(&message(None)));
        let recovered = Arrival {
            record: cx.extraction().cloned(),
            trace_id: extracted_trace_id(&cx),
            ..arrival(None)
        };
        let steps = evaluate(Some(&recovered), &injected());
        assert_eq!(statuses(&steps), [Status::Warn, Status::Warn, Status::Ok]);
        let [transit, extract, _] = &steps[..] else {
            unreachable!()
        };
        assert_eq!(code(transit), Some("headers_stripped"));
        assert!(text(transit).ends_with("; the KV fallback recovered the context"));
        assert_eq!(code(extract), Some("kv_recovered"));
        assert_eq!(extract.summary, "from the payload fallback");
        assert!(text(extract).starts_with("the headers gave no context (no headers"));
        let verdict = Verdict::of(&steps);
        assert!(verdict.broken.is_none());
        let warned: Vec<_> = verdict.warnings.iter().map(|s| code(s)).collect();
        assert_eq!(warned, [Some("headers_stripped"), Some("kv_recovered")]);
        assert_eq!(verdict.exit_code(), EXIT_HEALTHY);
    }

    #[test]
    fn traceparent_dropped_when_other_headers_arrive() {
        let [transit, extract, _] = steps_for(&[("Nats-Otel-Probe", TRACE), ("tracestate", "")]);
        assert_eq!(transit.status, Status::Fail);
        assert_eq!(code(&transit), Some("traceparent_dropped"));
        assert!(text(&transit).contains("other headers arrived (Nats-Otel-Probe, tracestate)"));
        assert_eq!(code(&extract), Some("not_extracted"));
    }

    #[test]
    fn header_renamed_names_the_new_header() {
        let tp = traceparent(TRACE, SPAN);
        let [transit, ..] = steps_for(&[("X-Trace-Context", &tp), ("Nats-Otel-Probe", TRACE)]);
        assert_eq!(transit.status, Status::Fail);
        assert_eq!(code(&transit), Some("header_renamed"));
        assert!(text(&transit).contains(
            "under the unexpected header \"X-Trace-Context\" and carries the probe's trace id"
        ));
        assert!(text(&transit).ends_with("renamed traceparent to X-Trace-Context"));
        assert_eq!(transit.data["misplaced"][0]["trace_id"], TRACE);

        // Another trace under the new name: renamed, without the claim.
        let tp = traceparent(OTHER_TRACE, SPAN);
        let [transit, ..] = steps_for(&[("X-Trace-Context", &tp)]);
        assert_eq!(code(&transit), Some("header_renamed"));
        assert!(!text(&transit).contains("carries the probe's trace id"));
    }

    #[test]
    fn malformed_traceparent_quotes_both_values() {
        let upper = traceparent(&TRACE.to_uppercase(), SPAN);
        let [transit, extract, trace] = steps_for(&[("traceparent", &upper)]);
        assert_eq!(transit.status, Status::Fail);
        assert_eq!(code(&transit), Some("malformed_traceparent"));
        assert!(text(&transit).contains(&format!(
            "traceparent arrived as {upper:?} (hex digits must be lowercase)"
        )));
        assert!(text(&transit).contains(&format!("the probe sent {:?}", traceparent(TRACE, SPAN))));
        assert_eq!(code(&extract), Some("not_extracted"));
        assert_eq!(code(&trace), Some("new_trace"));
    }

    #[test]
    fn trace_replaced_when_a_valid_other_trace_arrives() {
        let tp = traceparent(OTHER_TRACE, OTHER_SPAN);
        let [transit, extract, trace] = steps_for(&[("traceparent", &tp)]);
        assert_eq!(transit.status, Status::Fail);
        assert_eq!(code(&transit), Some("trace_replaced"));
        assert!(text(&transit).contains(&format!(
            "arrived for trace {OTHER_TRACE}, not the probe's {TRACE}"
        )));
        assert_eq!(extract.status, Status::Ok);
        assert_eq!(trace.status, Status::Fail);
        assert_eq!(code(&trace), Some("different_trace"));
    }

    #[test]
    fn header_recased_to_lowercase_only_warns_about_go_consumers() {
        let tp = traceparent(TRACE, SPAN);
        let [transit, extract, trace] = steps_for(&[("traceparent", &tp)]);
        assert_eq!(transit.status, Status::Warn);
        assert_eq!(code(&transit), Some("header_recased"));
        let text = text(&transit);
        assert!(text.contains("left as Traceparent + traceparent and arrived as traceparent"));
        assert!(text.contains("but OpenTelemetry Go consumers"));
        assert!(!text.contains("readers matching the W3C name exactly"));
        assert_eq!((extract.status, trace.status), (Status::Ok, Status::Ok));
    }

    #[test]
    fn header_recased_to_capitalized_only_warns_about_w3c_exact_readers() {
        let tp = traceparent(TRACE, SPAN);
        let [transit, extract, trace] = steps_for(&[("Traceparent", &tp)]);
        assert_eq!(transit.status, Status::Warn);
        assert_eq!(code(&transit), Some("header_recased"));
        let text = text(&transit);
        assert!(text.contains("left as Traceparent + traceparent and arrived as Traceparent"));
        assert!(text.contains("but readers matching the W3C name exactly"));
        assert!(!text.contains("OpenTelemetry Go consumers"));
        assert_eq!(extract.status, Status::Ok);
        assert!(extract
            .summary
            .contains("header Traceparent, matched ignoring case"));
        assert_eq!(trace.status, Status::Ok);
        let steps = [transit, extract, trace];
        let verdict = Verdict::of(&steps);
        assert_eq!(verdict.warnings.len(), 1);
        assert_eq!(verdict.exit_code(), EXIT_HEALTHY);
    }

    #[test]
    fn header_recased_into_both_names_is_ok() {
        let tp = traceparent(TRACE, SPAN);
        let lowercase_only = HeaderAnalysis::of(Some(&headers(&[("traceparent", &tp)])));
        let arrived = arrival(Some(headers(&[("traceparent", &tp), ("Traceparent", &tp)])));
        let steps = evaluate(Some(&arrived), &lowercase_only);
        assert_eq!(steps[0].status, Status::Ok);
        assert_eq!(code(&steps[0]), Some("header_recased"));
        assert!(text(&steps[0]).ends_with("every common reader still finds it"));
    }

    #[test]
    fn not_delivered_skips_extract_and_trace() {
        let probe = probe();
        let injected = injected();
        let ctx = PathContext {
            probe: &probe,
            injected: &injected,
            subject: "orders.in",
            listen: "orders.out",
            timeout: Duration::from_millis(500),
            stream: None,
        };
        let steps = evaluate_path("core", &ctx, None, 3);
        assert_eq!(statuses(&steps), [Status::Fail, Status::Skip, Status::Skip]);
        assert_eq!(code(&steps[0]), Some("not_delivered"));
        assert_eq!(
            steps[0].summary,
            "the probe did not arrive on orders.out within 500ms (3 other messages did)"
        );
        let fix = &steps[0].cause.as_ref().unwrap().fix;
        assert!(fix.starts_with("check that whatever moves orders.in to orders.out is running"));
        assert_eq!(
            steps[0].data,
            json!({ "arrived": false, "other_messages": 3 })
        );
        assert_eq!(steps[1].summary, "nothing arrived");

        let ctx = PathContext {
            subject: "jobs.x",
            listen: "jobs.x",
            stream: Some("JOBS"),
            ..ctx
        };
        let steps = evaluate_path("jetstream", &ctx, None, 0);
        assert_eq!(
            steps[0].summary,
            "the probe did not arrive on jobs.x through stream JOBS within 500ms"
        );
        let fix = &steps[0].cause.as_ref().unwrap().fix;
        assert!(
            fix.contains("moves the subject jobs.x is running, that stream JOBS captures jobs.x")
        );
        assert_eq!(steps[2].label(), "trace [jetstream]");
    }

    #[test]
    fn transit_summary_names_the_stream_sequence() {
        let tp = traceparent(TRACE, SPAN);
        let probe = probe();
        let injected = injected();
        let ctx = PathContext {
            probe: &probe,
            injected: &injected,
            subject: "jobs.x",
            listen: "jobs.x",
            timeout: Duration::from_secs(5),
            stream: Some("JOBS"),
        };
        let arrived = Arrival {
            subject: "jobs.x".to_owned(),
            stream_sequence: Some(7),
            ..arrival(Some(headers(&[("traceparent", &tp), ("Traceparent", &tp)])))
        };
        let steps = evaluate_path("jetstream", &ctx, Some(&arrived), 0);
        assert!(steps[0]
            .summary
            .starts_with("arrived on jobs.x (stream JOBS sequence 7) after 12 ms with headers"));
        assert_eq!(steps[0].data["stream_sequence"], 7);
    }

    #[test]
    fn inject_step_checks_the_probe_trace() {
        let probe = probe();
        let step = inject_step(&probe, &injected(), Some("carriers"), "orders.in");
        assert_eq!(step.status, Status::Ok);
        assert_eq!(
            step.summary,
            format!(
                "traceparent: {}; carrier also written to KV bucket carriers",
                traceparent(TRACE, SPAN)
            )
        );
        assert_eq!(step.data["kv_bucket"], "carriers");

        let step = inject_step(&probe, &HeaderAnalysis::default(), None, "orders.in");
        assert_eq!(step.status, Status::Fail);
        assert_eq!(code(&step), Some("not_injected"));
        assert_eq!(
            text(&step),
            format!("the layer wrote no traceparent for the probe's trace {TRACE} on orders.in")
        );
    }

    #[test]
    fn server_and_publish_steps() {
        let ok = server_step("nats://h:4222", "2.15.1", true);
        assert_eq!(ok.status, Status::Ok);
        assert_eq!(
            ok.summary,
            "nats-server 2.15.1 at nats://h:4222 supports headers"
        );
        let old = server_step("nats://h:4222", "2.1.0", false);
        assert_eq!(old.status, Status::Fail);
        assert_eq!(code(&old), Some("server_without_headers"));
        let refused = server_refused_step("nats://h:4222", "requires headers support");
        assert_eq!(code(&refused), Some("server_without_headers"));
        assert!(text(&refused).ends_with(" (no_header_support is set)"));

        let published = publish_step("jobs.x", &Ok(("stored".to_owned(), Some(3))));
        assert_eq!(
            (published.status, published.summary.as_str()),
            (Status::Ok, "stored")
        );
        let failed = publish_step("jobs.x", &Err("no responders".to_owned()));
        assert_eq!(code(&failed), Some("publish_failed"));
        assert_eq!(failed.summary, "publishing to jobs.x failed: no responders");
    }

    #[test]
    fn verdict_is_broken_at_the_first_failure_and_healthy_with_warnings() {
        let step = |name, status| Step::new(name, None, status, String::new());
        let steps = [
            step("server", Status::Ok),
            step("inject", Status::Warn),
            step("publish", Status::Fail),
            step("transit", Status::Fail),
            step("extract", Status::Skip),
        ];
        let verdict = Verdict::of(&steps);
        assert_eq!(verdict.broken.map(|s| s.name), Some("publish"));
        assert_eq!(verdict.warnings.len(), 1);
        assert_eq!(verdict.exit_code(), EXIT_BROKEN);

        let verdict = Verdict::of(&steps[..2]);
        assert!(verdict.broken.is_none());
        assert_eq!(verdict.exit_code(), EXIT_HEALTHY);
        assert_eq!(Verdict::of(&[]).exit_code(), EXIT_HEALTHY);
    }

    #[test]
    fn probe_payload_carries_its_id() {
        let probe = probe();
        assert_eq!(probe_id(probe.payload().as_bytes()), Some(TRACE.to_owned()));
        assert_eq!(probe_id(b"{\"other\":1}"), None);
        assert_eq!(probe_id(b"not json"), None);
        let cx = probe.context();
        assert_eq!(cx.span().span_context().trace_id(), probe.trace_id);
    }
}
