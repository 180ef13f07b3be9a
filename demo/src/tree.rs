//! Prints the spans of one trace as an indented tree.

use std::collections::HashSet;

use opentelemetry::trace::{SpanId, SpanKind, TraceId};
use opentelemetry_sdk::trace::SpanData;

/// Prints the spans of `trace_id`: name, kind, duration, and whether the parent was remote
/// (the context crossed HTTP or NATS to get there).
pub(crate) fn print_trace_tree(spans: &[SpanData], trace_id: TraceId) {
    let spans: Vec<&SpanData> = spans
        .iter()
        .filter(|span| span.span_context.trace_id() == trace_id)
        .collect();
    println!("trace {trace_id} ({} spans):", spans.len());
    let ids: HashSet<SpanId> = spans.iter().map(|s| s.span_context.span_id()).collect();
    let mut roots: Vec<&SpanData> = spans
        .iter()
        .copied()
        .filter(|span| !ids.contains(&span.parent_span_id))
        .collect();
    roots.sort_by_key(|span| span.start_time);
    for root in roots {
        print_span(root, &spans, 1);
    }
}

fn print_span(span: &SpanData, spans: &[&SpanData], depth: usize) {
    let duration = span
        .end_time
        .duration_since(span.start_time)
        .unwrap_or_default();
    let kind = match span.span_kind {
        SpanKind::Client => "client",
        SpanKind::Server => "server",
        SpanKind::Producer => "producer",
        SpanKind::Consumer => "consumer",
        SpanKind::Internal => "internal",
    };
    println!(
        "{:indent$}{} [{kind}] {:.2} ms{}",
        "",
        span.name,
        duration.as_secs_f64() * 1000.0,
        if span.parent_span_is_remote {
            "  (remote parent)"
        } else {
            ""
        },
        indent = depth * 2,
    );
    let mut children: Vec<&SpanData> = spans
        .iter()
        .copied()
        .filter(|child| child.parent_span_id == span.span_context.span_id())
        .collect();
    children.sort_by_key(|child| child.start_time);
    for child in children {
        print_span(child, spans, depth + 1);
    }
}
