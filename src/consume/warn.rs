//! Rate-limited WARN events for messages that arrive without usable context.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::propagation::NoContextReason;

/// At most one WARN per this many milliseconds, per extractor or adapter.
const INTERVAL_MS: u64 = 1_000;

/// The rate limiter of one extractor or adapter (shared by its clones).
#[derive(Debug, Clone)]
pub(crate) struct NoContextWarnings(Arc<Limiter>);

#[derive(Debug)]
struct Limiter {
    start: Instant,
    suppressed: AtomicU64,
    /// Milliseconds since `start` of the last WARN, plus one (0 = never).
    last: AtomicU64,
}

impl Default for NoContextWarnings {
    fn default() -> Self {
        Self(Arc::new(Limiter {
            start: Instant::now(),
            suppressed: AtomicU64::new(0),
            last: AtomicU64::new(0),
        }))
    }
}

impl NoContextWarnings {
    /// Emits a WARN naming the subject and reason, unless one was emitted
    /// less than a second ago; the next one reports how many were
    /// suppressed.
    pub(crate) fn warn(&self, subject: &str, reason: &NoContextReason) {
        let limiter = &self.0;
        let now = limiter.start.elapsed().as_millis() as u64 + 1;
        let last = limiter.last.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < INTERVAL_MS
            || limiter
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            limiter.suppressed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let suppressed = limiter.suppressed.swap(0, Ordering::Relaxed);
        tracing::warn!(
            target: "nats_otel",
            subject,
            reason = reason.as_str(),
            suppressed,
            "consumed message has no usable trace context, starting a new trace: {reason}"
        );
    }
}
