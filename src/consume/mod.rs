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

mod item;
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
pub use span::{HandlerSpanError, MessageContextExt, Redelivery};
pub use stream::{ContextExtractingConsumer, ContextExtractor, TraceContextStreamExt};
