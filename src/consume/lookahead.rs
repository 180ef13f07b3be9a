//! The consumer adapter's look-ahead: while a message waits for its KV
//! lookup, the adapter reads the next messages (up to a window) and starts
//! their lookups too, and still yields every message in arrival order.
//!
//! The lookups of the messages read in one go (until the inner stream has
//! nothing ready, or the window is full) start together as one batch: one
//! request for all their keys when the fallback reads in batches, else one
//! request per key, all in flight at once.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context as TaskContext, Poll};

use futures::channel::oneshot;
use futures::future::BoxFuture;
use futures::stream::{FuturesOrdered, FuturesUnordered};
use futures::Stream;
use opentelemetry::trace::TraceContextExt;
use opentelemetry::Context;
use pin_project_lite::pin_project;

use crate::propagation::{ContextSource, ExtractionRecord, NoContextReason};

/// By default, how many messages the adapter holds while KV lookups are in
/// flight.
pub(crate) const DEFAULT_WINDOW: usize = 256;

/// What became of a message's context.
// Moved once per message; boxing the large variant would cost an
// allocation per message instead.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Outcome {
    /// Extracted (from headers, payload or KV) or found missing, with the
    /// record saying which.
    Extracted(Context, ExtractionRecord),
    /// Left untraced by the subject filter.
    Skipped,
    /// Not a message (an error item of the inner stream).
    NoMeta,
}

/// A message's extraction waiting for its KV lookup: the key, and what the
/// headers and payload gave, kept for when the lookup misses.
pub(crate) struct PendingLookup {
    pub(crate) key: String,
    cx: Context,
    record: ExtractionRecord,
}

impl PendingLookup {
    #[cfg_attr(not(feature = "kv"), allow(dead_code))]
    pub(crate) fn new(key: String, cx: Context, record: ExtractionRecord) -> Self {
        Self { key, cx, record }
    }

    /// The message's context and record once the lookup answered.
    pub(crate) fn complete(
        self,
        result: Result<Context, NoContextReason>,
    ) -> (Context, ExtractionRecord) {
        match result {
            Ok(kv_cx) => {
                let record = self
                    .record
                    .recovered(ContextSource::Kv)
                    .with_remote(kv_cx.span().span_context());
                (kv_cx, record)
            }
            Err(reason) => (self.cx, self.record.fallback_missed(reason)),
        }
    }
}

type Answer = oneshot::Receiver<(Context, ExtractionRecord)>;

pin_project! {
    /// One message in the window: ready, or waiting for its lookup.
    struct Slot<T> {
        item: Option<T>,
        lookup: Option<Answer>,
        outcome: Option<Outcome>,
    }
}

impl<T> Future for Slot<T> {
    type Output = (T, Outcome);

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Some(lookup) = this.lookup.as_mut() {
            // The batch that answers is dropped only with the window itself.
            let (remote, record) = ready!(Pin::new(lookup).poll(cx)).unwrap_or_else(|_| {
                let reason = NoContextReason::KvError {
                    key: String::new(),
                    error: "lookup abandoned".to_owned(),
                };
                (Context::new(), ExtractionRecord::none(reason))
            });
            *this.lookup = None;
            *this.outcome = Some(Outcome::Extracted(remote, record));
        }
        match (this.item.take(), this.outcome.take()) {
            (Some(item), Some(outcome)) => Poll::Ready((item, outcome)),
            // Polled after completion: `FuturesOrdered` never does.
            _ => Poll::Pending,
        }
    }
}

pin_project! {
    /// Messages read ahead, in arrival order, at most `window` of them.
    pub(crate) struct Lookahead<T> {
        #[pin]
        slots: FuturesOrdered<Slot<T>>,
        // Lookups in flight; each answers its messages' slots.
        #[pin]
        batches: FuturesUnordered<BoxFuture<'static, ()>>,
        // Lookups queued since the last flush.
        queued: Vec<(PendingLookup, oneshot::Sender<(Context, ExtractionRecord)>)>,
        window: usize,
    }
}

impl<T> Lookahead<T> {
    pub(crate) fn new(window: usize) -> Self {
        Self {
            slots: FuturesOrdered::new(),
            batches: FuturesUnordered::new(),
            queued: Vec::new(),
            window: window.max(1),
        }
    }

    /// Changes the window; the messages already held stay.
    #[cfg_attr(not(feature = "kv"), allow(dead_code))]
    pub(crate) fn set_window(&mut self, window: usize) {
        self.window = window.max(1);
    }

    pub(crate) fn window(&self) -> usize {
        self.window
    }

    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Whether another message may be read ahead.
    pub(crate) fn has_room(&self) -> bool {
        self.slots.len() < self.window
    }

    /// Queues a message whose outcome is known.
    pub(crate) fn push_ready(self: Pin<&mut Self>, item: T, outcome: Outcome) {
        self.project().slots.push_back(Slot {
            item: Some(item),
            lookup: None,
            outcome: Some(outcome),
        });
    }

    /// Queues a message waiting for its lookup, which starts with the
    /// next [`flush`](Self::flush).
    pub(crate) fn push_lookup(mut self: Pin<&mut Self>, item: T, lookup: PendingLookup) {
        let (answer, answered) = oneshot::channel();
        self.as_mut().project().queued.push((lookup, answer));
        self.push_waiting(item, answered);
    }

    /// Queues a message whose outcome `answered` will bring.
    fn push_waiting(self: Pin<&mut Self>, item: T, answered: Answer) {
        self.project().slots.push_back(Slot {
            item: Some(item),
            lookup: Some(answered),
            outcome: None,
        });
    }

    /// Starts the queued lookups as one batch; `false` when none were
    /// queued. The batch runs when [`poll_next`](Self::poll_next) is next
    /// called.
    #[cfg(feature = "kv")]
    pub(crate) fn flush(
        self: Pin<&mut Self>,
        fallback: &std::sync::Arc<crate::fallback::KvFallback>,
        metrics: &crate::telemetry::Metrics,
    ) -> bool {
        let this = self.project();
        if this.queued.is_empty() {
            return false;
        }
        let queued = std::mem::take(this.queued);
        let (fallback, metrics) = (std::sync::Arc::clone(fallback), metrics.clone());
        this.batches.push(Box::pin(async move {
            let keys = queued.iter().map(|(l, _)| l.key.clone()).collect();
            let results = crate::fallback::lookup_many(&fallback, keys, &metrics).await;
            for ((lookup, answer), result) in queued.into_iter().zip(results) {
                // The receiver is gone only when the window was dropped.
                let _ = answer.send(lookup.complete(result));
            }
        }));
        true
    }

    /// The oldest message once its outcome is known; drives every lookup
    /// in the window meanwhile.
    pub(crate) fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<(T, Outcome)>> {
        let mut this = self.project();
        while let Poll::Ready(Some(())) = this.batches.as_mut().poll_next(cx) {}
        this.slots.poll_next(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use super::*;
    use crate::propagation::{ContextSource, ExtractionRecord};

    fn record() -> ExtractionRecord {
        ExtractionRecord::found(ContextSource::Headers)
    }

    fn poll<T>(queue: Pin<&mut Lookahead<T>>) -> Poll<Option<(T, Outcome)>> {
        queue.poll_next(&mut TaskContext::from_waker(Waker::noop()))
    }

    #[test]
    fn yields_in_arrival_order_while_lookups_finish_out_of_order() {
        let (slow_tx, slow_rx) = oneshot::channel();
        let (fast_tx, fast_rx) = oneshot::channel();
        let mut queue = Box::pin(Lookahead::new(4));
        queue.as_mut().push_waiting(1, slow_rx);
        queue.as_mut().push_waiting(2, fast_rx);
        queue.as_mut().push_ready(3, Outcome::Skipped);
        fast_tx.send((Context::new(), record())).unwrap();
        assert_eq!(queue.len(), 3);
        assert!(queue.has_room());
        // 2 and 3 are done, but 1 is not: nothing yet.
        assert!(poll(queue.as_mut()).is_pending());
        slow_tx.send((Context::new(), record())).unwrap();
        let order: Vec<i32> = (0..3)
            .map(|_| match poll(queue.as_mut()) {
                Poll::Ready(Some((item, _))) => item,
                other => panic!("expected an item, got pending: {}", other.is_pending()),
            })
            .collect();
        assert_eq!(order, [1, 2, 3]);
        assert!(queue.is_empty());
    }

    #[test]
    fn window_is_at_least_one() {
        let queue = Lookahead::<u8>::new(0);
        assert_eq!(queue.window(), 1);
        assert!(queue.has_room());
    }
}
