//! The consume side: a [`Stream`](futures::Stream) adapter that pairs each
//! message with the trace context its handler should run in.
//!
//! - [`ContextExtractingConsumer`] and [`TraceContextStreamExt`]: the adapter.
//! - [`ContextExtractor`]: the same, one message at a time.
//! - [`ConsumerItem`], [`MessageMeta`], [`JetStreamMeta`]: what it reads.
//! - [`MessageContextExt`]: the extraction record and handler spans.
//! - [`ExtractionRecord`], [`ContextSource`], [`NoContextReason`]: where
//!   each message's context came from, or why there is none.
//! - [`SettleExt`]: ack, nak, term and in-progress as CLIENT spans.
//!
//! # Examples
//!
//! One message at a time, without a server: a message whose headers a Go
//! service wrote continues its trace, and the record says so.
//!
//! ```
//! use async_nats::HeaderMap;
//! use nats_otel::consume::{ContextExtractor, MessageMeta};
//! use nats_otel::{ContextSource, MessageContextExt};
//! use opentelemetry::trace::TraceContextExt;
//!
//! let mut headers = HeaderMap::new();
//! headers.insert("Traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
//! let meta = MessageMeta::new("jobs.resize", Some(&headers), b"{}");
//!
//! let cx = ContextExtractor::new().extract(&meta);
//! let record = cx.extraction().unwrap();
//! assert_eq!(record.source(), ContextSource::Headers);
//! assert_eq!(record.header_name(), Some("Traceparent"));
//! assert_eq!(
//!     cx.span().span_context().trace_id().to_string(),
//!     "0af7651916cd43dd8448eb211c80319c"
//! );
//! ```

mod item;
mod lookahead;
mod receive;
#[cfg(feature = "jetstream")]
mod settle;
pub(crate) mod span;
mod stream;
mod warn;

pub use crate::propagation::message::{JetStreamMeta, MessageMeta};
pub use crate::propagation::record::{ContextSource, ExtractionRecord, NoContextReason};
pub use item::ConsumerItem;
#[cfg(feature = "jetstream")]
#[cfg_attr(docsrs, doc(cfg(feature = "jetstream")))]
pub use settle::SettleExt;
pub use span::{HandlerSpanError, MessageContextExt, Parenting};
pub use stream::{ContextExtractingConsumer, ContextExtractor, TraceContextStreamExt};
