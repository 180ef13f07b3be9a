//! Rate-limited WARN events for messages that arrive without usable context.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use crate::propagation::NoContextReason;

/// At most one WARN per this many milliseconds, process-wide.
const INTERVAL_MS: u64 = 1_000;

static SUPPRESSED: AtomicU64 = AtomicU64::new(0);
/// Milliseconds since `start()` of the last WARN, plus one (0 = never).
static LAST: AtomicU64 = AtomicU64::new(0);

fn start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// Emits a WARN naming the subject and reason, unless one was emitted less
/// than a second ago; the next one reports how many were suppressed.
pub(crate) fn no_context(subject: &str, reason: &NoContextReason) {
    let now = start().elapsed().as_millis() as u64 + 1;
    let last = LAST.load(Ordering::Relaxed);
    if last != 0 && now.saturating_sub(last) < INTERVAL_MS
        || LAST
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
    {
        SUPPRESSED.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let suppressed = SUPPRESSED.swap(0, Ordering::Relaxed);
    tracing::warn!(
        target: "nats_otel",
        subject,
        reason = reason.as_str(),
        suppressed,
        "consumed message has no usable trace context, starting a new trace: {reason}"
    );
}
