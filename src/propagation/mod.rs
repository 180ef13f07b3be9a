//! Propagation: the W3C codec and the carriers it writes and reads.
//!
//! One codec for every carrier: the message headers ([`HeaderInjector`],
//! [`HeaderExtractor`], under the names [`HeaderNames`] says), the
//! [`TraceCarrier`] document embedded in job data, and the KV fallback
//! record all follow the same W3C rules and limits (`tracestate` at most 32
//! list-members, `baggage` at most 180 list-members and 8192 bytes, `%` and
//! `\` percent-encoded in baggage values, every `traceparent` rule).
//!
//! Data flows publish → codec → wire → codec → consume; the publish and
//! consume sides use this module, never the other way round.
//!
//! # Examples
//!
//! ```
//! use async_nats::HeaderMap;
//! use nats_otel::propagation::{HeaderExtractor, HeaderInjector};
//! use nats_otel::ContextSource;
//! use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
//! use opentelemetry::Context;
//!
//! let sent = Context::new().with_remote_span_context(SpanContext::new(
//!     TraceId::from(0x0af7651916cd43dd8448eb211c80319c),
//!     SpanId::from(0xb7ad6b7169203331),
//!     TraceFlags::SAMPLED,
//!     false,
//!     TraceState::NONE,
//! ));
//! let mut headers = HeaderMap::new();
//! HeaderInjector::new(&mut headers).inject_context(&sent);
//!
//! let (received, record) = HeaderExtractor::new(&headers).extract_context();
//! assert_eq!(record.source(), ContextSource::Headers);
//! assert_eq!(
//!     received.span().span_context().trace_id(),
//!     sent.span().span_context().trace_id()
//! );
//! ```

mod carrier;
mod extract;
mod headers;
#[cfg(feature = "kv")]
pub(crate) mod kv_record;
pub(crate) mod message;
mod propagator;
pub(crate) mod record;
mod w3c;

pub use carrier::TraceCarrier;
pub use headers::{HeaderExtractor, HeaderInjector, HeaderNames, InjectSkip};
pub use propagator::{global_propagator_is_noop, W3cPropagator};
pub use w3c::{check_traceparent, TraceparentProblem, BAGGAGE, TRACEPARENT, TRACESTATE};

pub(crate) use extract::{context_from_carrier, extract_headers};
pub(crate) use headers::find_header;
#[cfg(feature = "kv")]
pub(crate) use kv_record::{decode_record, encode as encode_record, CarrierRef};
pub(crate) use message::MessageMeta;
pub(crate) use propagator::PropagatorChoice;
// The extraction record is public through `consume` (and the crate root).
pub(crate) use record::{ContextSource, ExtractionRecord, NoContextReason};
#[cfg(feature = "kv")]
pub(crate) use record::{KeyError, MAX_ENCODED_KEY_LEN};
