//! Consuming on another server than the one the probe is published to
//! (`--listen-server`): waiting until that server's subscriptions are known
//! where the probe is published.

use std::time::Duration;

use async_nats::Client;
use bytes::Bytes;
use futures::StreamExt;
use tokio::time::{timeout_at, Instant};

/// How often a probe for interest is sent.
const EVERY: Duration = Duration::from_millis(50);

/// Waits until a message published on `from` reaches a subscription made on
/// `to` now. Leafnodes and gateways pass interest on in the order it was
/// registered, so the subscriptions `to` made before are then known on
/// `from`'s side too. Returns whether that happened within `timeout`.
pub(super) async fn wait_interest(from: &Client, to: &Client, timeout: Duration) -> bool {
    let subject = to.new_inbox();
    let Ok(mut subscriber) = to.subscribe(subject.clone()).await else {
        return false;
    };
    crate::round_trip(to).await;
    let deadline = Instant::now() + timeout;
    loop {
        if from.publish(subject.clone(), Bytes::new()).await.is_err() {
            return false;
        }
        let _ = from.flush().await;
        match timeout_at(deadline.min(Instant::now() + EVERY), subscriber.next()).await {
            Ok(Some(_)) => return true,
            Ok(None) => return false,
            Err(_) if Instant::now() >= deadline => return false,
            Err(_) => {}
        }
    }
}
