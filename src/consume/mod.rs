//! The consume side: a [`Stream`](futures::Stream) adapter that pairs each
//! message with the trace context its handler should run in.
//!
//! - [`ContextExtractingConsumer`] and [`TraceContextStreamExt`]: the adapter.
//! - [`ContextExtractor`]: the same, one message at a time.
//! - [`ConsumerItem`], [`MessageMeta`], [`JetStreamMeta`]: what it reads.
//! - [`MessageContextExt`]: the extraction record and handler spans.

mod item;
pub(crate) mod span;
mod stream;
mod warn;

pub use item::{ConsumerItem, JetStreamMeta, MessageMeta};
pub use span::{HandlerSpanError, MessageContextExt, Redelivery};
pub use stream::{ContextExtractingConsumer, ContextExtractor, TraceContextStreamExt};
