//! Waiting for something to happen: poll the condition, with a deadline,
//! rather than sleep for a guessed time.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// How long [`until`] waits between two looks at its condition.
const POLL: Duration = Duration::from_millis(20);

/// How long [`retry`] waits between two attempts.
const RETRY: Duration = Duration::from_millis(250);

/// Polls `condition` until it holds; fails the test, naming `what`, when it
/// still does not after `within`.
// Only JetStream tests wait this way today.
#[cfg_attr(not(feature = "jetstream"), allow(dead_code))]
pub async fn until<F, Fut>(what: &str, within: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !condition().await {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(POLL).await;
    }
}

/// Calls `attempt` until it succeeds and returns its value; fails the test,
/// naming `what` and the last error, when it still fails after `within`.
// Only JetStream tests wait this way today.
#[cfg_attr(not(feature = "jetstream"), allow(dead_code))]
pub async fn retry<T, E, F, Fut>(what: &str, within: Duration, mut attempt: F) -> T
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + within;
    loop {
        match attempt().await {
            Ok(value) => return value,
            Err(e) if Instant::now() < deadline => {
                eprintln!("{what}: {e}; retrying");
                tokio::time::sleep(RETRY).await;
            }
            Err(e) => panic!("{what}: {e} (still failing after {within:?})"),
        }
    }
}
