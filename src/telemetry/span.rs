//! What the publish and consume sides' spans share: span naming, captured
//! headers as attributes, and the error type.

use std::sync::Arc;

use async_nats::HeaderMap;
use opentelemetry::KeyValue;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::attr;
use crate::propagation::find_header;

/// Names a span from the message subject.
pub(crate) type SpanNameFn = Arc<dyn Fn(&str) -> String + Send + Sync>;

/// The allow-listed headers as `messaging.nats.header.<name>` attributes.
pub(crate) fn captured_headers<'a>(
    headers: Option<&'a HeaderMap>,
    names: &'a [String],
) -> impl Iterator<Item = KeyValue> + 'a {
    headers.into_iter().flat_map(move |headers| {
        names.iter().filter_map(move |name| {
            find_header(headers, name).map(|(_, value)| {
                KeyValue::new(
                    format!("{}{}", attr::NATS_HEADER_PREFIX, name.to_ascii_lowercase()),
                    value.to_owned(),
                )
            })
        })
    })
}

/// Sets `error.type` on a `tracing` span's OpenTelemetry span.
pub(crate) fn record_error_type(span: &Span, error_type: &str) {
    span.set_attribute(
        opentelemetry_semantic_conventions::attribute::ERROR_TYPE,
        error_type.to_owned(),
    );
}
