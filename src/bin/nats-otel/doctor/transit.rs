//! The transit step: did the probe's trace context arrive intact, and if
//! not, what did a hop do to it (stripped, dropped, renamed, rewrote,
//! replaced or re-cased it)?

use serde_json::json;

use super::evaluate::{Arrival, Cause, PathContext, Status, Step};
use crate::analysis::{readers_missing, HeaderAnalysis};

/// Did the probe's trace context arrive intact? Names the first thing a
/// hop did to it.
pub(super) fn transit_step(
    path: &'static str,
    ctx: &PathContext<'_>,
    arrival: &Arrival,
    seen: &HeaderAnalysis,
) -> Step {
    let probe = ctx.probe;
    let sent_names = ctx.injected.names().join(", ");
    let arrived_names = seen.names();
    let where_ = match arrival.stream_sequence {
        Some(seq) => format!(
            "{} (stream {} sequence {seq})",
            arrival.subject,
            ctx.stream.unwrap_or_default()
        ),
        None => arrival.subject.clone(),
    };
    let headers_text = if seen.pairs.is_empty() {
        "no headers".to_owned()
    } else {
        let list: Vec<String> = seen.pairs.iter().map(|(n, v)| format!("{n}={v}")).collect();
        format!("headers {}", list.join(", "))
    };
    let summary = format!(
        "arrived on {where_} after {} ms with {headers_text}",
        arrival.elapsed.as_millis()
    );
    let data = json!({
        "arrived": true,
        "subject": arrival.subject,
        "stream_sequence": arrival.stream_sequence,
        "elapsed_ms": arrival.elapsed.as_millis() as u64,
        "headers": seen.headers_json(),
        "header_names": arrived_names,
        "traceparent": seen.traceparent.as_ref().map(|t| t.to_json()),
        "misplaced": seen.misplaced_json(),
    });
    let hop = format!("between {} and {}", ctx.subject, ctx.listen);
    let step = |status, cause: Option<Cause>| {
        let mut s = Step::new("transit", Some(path), status, summary.clone()).data(data.clone());
        s.cause = cause;
        s
    };

    let Some(tp) = &seen.traceparent else {
        if seen.pairs.is_empty() {
            return step(
                Status::Fail,
                Some(Cause::new(
                    "headers_stripped",
                    format!(
                        "headers stripped in transit: the probe left with headers ({sent_names}) \
                         and arrived with none. Something {hop} republishes only the payload: a \
                         relay or bridge that copies subject and data but not headers, a \
                         connector, or a client or server without header support"
                    ),
                    "make that hop forward the headers (async-nats: publish_with_headers with \
                     the incoming message's headers); or enable the KV fallback \
                     (TracePropagationLayer::fallback and .fallback(...) on the consumer), or \
                     embed a TraceCarrier in the payload",
                )),
            );
        }
        if let Some(m) = seen.misplaced.first() {
            let same = if m.trace_id().as_deref() == Some(probe.id().as_str()) {
                " and carries the probe's trace id"
            } else {
                ""
            };
            return step(
                Status::Fail,
                Some(Cause::new(
                    "header_renamed",
                    format!(
                        "header renamed in transit: no traceparent arrived, but a \
                         traceparent-shaped value arrived under the unexpected header {:?}{same}. \
                         Something {hop} renamed traceparent to {}",
                        m.header, m.header
                    ),
                    format!(
                        "make that hop keep the W3C name traceparent; if the rename is \
                         deliberate, read {} with a custom propagator \
                         (ContextExtractor::propagator)",
                        m.header
                    ),
                )),
            );
        }
        return step(
            Status::Fail,
            Some(Cause::new(
                "traceparent_dropped",
                format!(
                    "traceparent dropped in transit: other headers arrived ({}) but no \
                     traceparent in any casing. Something {hop} rebuilt the headers: it keeps \
                     only some, or it consumed and republished without injecting (a no-op \
                     global propagator in that service, or publishing outside any span)",
                    arrived_names.join(", ")
                ),
                "in that hop, forward all headers, or extract the incoming context and publish \
                 inside it through TracePropagationLayer; for other instrumentation call \
                 opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new())",
            )),
        );
    };

    if let Some(problem) = tp.problem {
        let sent = ctx
            .injected
            .traceparent
            .as_ref()
            .map(|t| t.value.clone())
            .unwrap_or_default();
        return step(
            Status::Fail,
            Some(Cause::new(
                "malformed_traceparent",
                format!(
                    "malformed value in transit: {} arrived as {:?} ({problem}); the probe sent \
                     {sent:?}. Something {hop} rewrote the value",
                    tp.header, tp.value
                ),
                "make that hop forward the value unchanged; W3C requires \
                 00-<32 lowercase hex>-<16 lowercase hex>-<2 hex>",
            )),
        );
    }

    let arrived_trace = tp.trace_id().unwrap_or_default();
    if arrived_trace != probe.id() {
        return step(
            Status::Fail,
            Some(Cause::new(
                "trace_replaced",
                format!(
                    "trace replaced in transit: a valid traceparent arrived for trace \
                     {arrived_trace}, not the probe's {}. Something {hop} consumed the probe \
                     and republished it in a new trace instead of continuing the incoming one",
                    probe.trace_id
                ),
                "in that hop, extract the incoming context (with_trace_context / \
                 ContextExtractor) and publish inside cx.handler_span(...), so the new message \
                 continues the trace",
            )),
        );
    }

    let sent_names = ctx.injected.traceparent_names();
    let arrived_names = seen.traceparent_names();
    if sent_names != arrived_names {
        let missing = readers_missing(&arrived_names);
        let who = match &missing {
            Some(readers) => format!(
                "nats-otel matches any casing, so the trace holds for its consumers, but {readers} \
                 start a new trace"
            ),
            None => "every common reader still finds it".to_owned(),
        };
        return step(
            if missing.is_some() {
                Status::Warn
            } else {
                Status::Ok
            },
            Some(Cause::new(
                "header_recased",
                format!(
                    "header re-cased in transit: traceparent left as {} and arrived as {} \
                     (nats-server 2.11.0 to 2.12.11 rewrite Traceparent to traceparent; other \
                     hops rebuild names). {who}",
                    sent_names.join(" + "),
                    arrived_names.join(" + "),
                ),
                "make that hop keep header names (nats-server 2.12.12 or 2.14 and later keep \
                 them); publish with HeaderNames::Both (the default) so that Go and W3C-exact \
                 readers each find their name; or read headers case-insensitively \
                 (nats_otel::propagation::HeaderExtractor)",
            )),
        );
    }

    let sent_span = ctx.injected.traceparent.as_ref().and_then(|t| t.span_id());
    if tp.span_id() != sent_span {
        let mut s = step(Status::Ok, None);
        s.summary
            .push_str("; a hop continued the trace (its own span is the parent now)");
        return s;
    }
    step(Status::Ok, None)
}
