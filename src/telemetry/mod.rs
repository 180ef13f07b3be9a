//! Telemetry shared by the publish and consume sides: the crate's metrics,
//! the tracer spans are made with, the one messaging span, span naming and
//! captured headers.

mod messaging;
mod metrics;
mod span;
mod tracer;

pub(crate) use messaging::{InContext, MessagingSpan, Operation, OperationType, Parent};
pub(crate) use metrics::{MessagingAttributes, Metrics};
pub(crate) use span::{captured_headers, SpanName, SpanNameFn};
pub(crate) use tracer::{caller_context, tracing_caller_context, SpanTracer};
