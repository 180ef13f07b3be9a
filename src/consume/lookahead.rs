//! The consumer adapter's look-ahead: while a message waits for its KV
//! lookup, the adapter reads the next messages (up to a window) and starts
//! their lookups too, and still yields every message in arrival order.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context as TaskContext, Poll};

use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use futures::Stream;
use opentelemetry::Context;
use pin_project_lite::pin_project;

use crate::propagation::ExtractionRecord;

/// By default, how many messages the adapter holds while KV lookups are in
/// flight.
pub(crate) const DEFAULT_WINDOW: usize = 32;

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

type Lookup = BoxFuture<'static, (Context, ExtractionRecord)>;

pin_project! {
    /// One message in the window: ready, or waiting for its lookup.
    struct Slot<T> {
        item: Option<T>,
        lookup: Option<Lookup>,
        outcome: Option<Outcome>,
    }
}

impl<T> Future for Slot<T> {
    type Output = (T, Outcome);

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Some(lookup) = this.lookup.as_mut() {
            let (remote, record) = ready!(lookup.as_mut().poll(cx));
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
        window: usize,
    }
}

impl<T> Lookahead<T> {
    pub(crate) fn new(window: usize) -> Self {
        Self {
            slots: FuturesOrdered::new(),
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

    /// Queues a message waiting for its lookup, which starts on the next
    /// poll.
    pub(crate) fn push_lookup(self: Pin<&mut Self>, item: T, lookup: Lookup) {
        self.project().slots.push_back(Slot {
            item: Some(item),
            lookup: Some(lookup),
            outcome: None,
        });
    }

    /// The oldest message once its outcome is known; drives every lookup
    /// in the window meanwhile.
    pub(crate) fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<(T, Outcome)>> {
        self.project().slots.poll_next(cx)
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
        let (slow_tx, slow_rx) = futures::channel::oneshot::channel::<()>();
        let mut queue = Box::pin(Lookahead::new(4));
        queue.as_mut().push_lookup(
            1,
            Box::pin(async move {
                let _ = slow_rx.await;
                (Context::new(), record())
            }),
        );
        queue
            .as_mut()
            .push_lookup(2, Box::pin(async { (Context::new(), record()) }));
        queue.as_mut().push_ready(3, Outcome::Skipped);
        assert_eq!(queue.len(), 3);
        assert!(queue.has_room());
        // 2 and 3 are done, but 1 is not: nothing yet.
        assert!(poll(queue.as_mut()).is_pending());
        slow_tx.send(()).unwrap();
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
