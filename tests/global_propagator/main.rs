//! Tests that set OpenTelemetry's process-wide text-map propagator
//! (`opentelemetry::global::set_text_map_propagator`): their own binary,
//! since every test in `tests/integration/` relies on it being the default
//! no-op.
//!
//! Each test here sets the propagator it needs through [`set_propagator`]
//! (or [`set_propagator_blocking`]) and holds the returned guard to its end,
//! so the tests of this binary, which run in parallel, see one propagator
//! at a time: their own.

// Shared with `tests/integration/`, which uses all of it; this binary uses
// a few helpers.
#[path = "../support/mod.rs"]
#[allow(dead_code, unused_imports)]
mod support;

mod diagnose;
mod propagator_choice;

use opentelemetry::propagation::TextMapPropagator;
use tokio::sync::{Mutex, MutexGuard};

/// Held by the test whose propagator is the global one.
static PROPAGATOR: Mutex<()> = Mutex::const_new(());

/// Makes `propagator` the global text-map propagator until the returned
/// guard drops; waits for any other test's guard first.
pub async fn set_propagator<P>(propagator: P) -> MutexGuard<'static, ()>
where
    P: TextMapPropagator + Send + Sync + 'static,
{
    let guard = PROPAGATOR.lock().await;
    opentelemetry::global::set_text_map_propagator(propagator);
    guard
}

/// [`set_propagator`] for a test without an async runtime.
pub fn set_propagator_blocking<P>(propagator: P) -> MutexGuard<'static, ()>
where
    P: TextMapPropagator + Send + Sync + 'static,
{
    let guard = PROPAGATOR.blocking_lock();
    opentelemetry::global::set_text_map_propagator(propagator);
    guard
}
