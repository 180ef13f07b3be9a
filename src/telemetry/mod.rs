//! Telemetry shared by the publish and consume sides: the crate's metrics,
//! the tracer spans are made with, span naming and common attributes.

mod metrics;
mod span;
mod tracer;

pub(crate) use metrics::Metrics;
pub(crate) use span::{captured_headers, record_error_type, SpanNameFn};
pub(crate) use tracer::{caller_context, operation_span_name, SpanTracer};
