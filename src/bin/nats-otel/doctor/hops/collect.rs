//! The I/O of `--hops`: the trace subject's subscriptions, and reading the
//! events until the path is complete or the window ends.

use std::collections::HashSet;
use std::time::Duration;

use async_nats::Client;
use bytes::Bytes;
use futures::stream::{self, BoxStream};
use futures::{FutureExt, StreamExt};
use nats_otel::hops::{message_tracing_safe, parse_event, TraceEvent, TRACE_DEST_HEADER};

use super::{complete, evaluate, skipped, Endpoint, HopsInput, HopsReport};
use crate::doctor::evaluate::Step;
use crate::Failure;

impl Endpoint {
    /// The connection of `client`, as trace events name it.
    pub(in crate::doctor) fn of(client: &Client) -> Self {
        let info = client.server_info();
        Self {
            server_id: info.server_id,
            server_name: info.server_name,
            client_id: info.client_id,
        }
    }
}

/// With `--hops`: subscribes to a fresh trace subject on each of `servers`
/// (url, connection), unless a server's version rules message tracing out;
/// then the skipped `hops` step says why.
pub(in crate::doctor) async fn start(
    servers: &[(&str, &Client)],
) -> Result<Result<Tracer, Step>, Failure> {
    for (url, client) in servers {
        if let Err(reason) = message_tracing_safe(&client.server_info().version) {
            return Ok(Err(skipped(url, &reason)));
        }
    }
    let clients: Vec<&Client> = servers.iter().map(|(_, c)| *c).collect();
    Tracer::subscribe(&clients).await.map(Ok)
}

/// The trace destination and the events read from it.
pub(in crate::doctor) struct Tracer {
    /// The subject every server publishes its event to.
    pub(in crate::doctor) dest: String,
    messages: BoxStream<'static, async_nats::Message>,
    /// Payloads read, so an event seen by two subscriptions counts once.
    seen: HashSet<Bytes>,
    events: Vec<TraceEvent>,
    invalid: Vec<String>,
}

/// What the doctor knows when it stops waiting for the probe.
pub(in crate::doctor) struct Outcome<'a> {
    pub(in crate::doctor) publisher: &'a Endpoint,
    pub(in crate::doctor) consumer: &'a Endpoint,
    pub(in crate::doctor) listen: &'a str,
    pub(in crate::doctor) sent: &'a [(String, String)],
    pub(in crate::doctor) received: Option<&'a [(String, String)]>,
    pub(in crate::doctor) recovered: bool,
    pub(in crate::doctor) window: Duration,
}

impl Tracer {
    /// Subscribes to a fresh inbox on each of `clients` (the publishing
    /// connection and, when it is another server, the consumer's): each
    /// server's event is then delivered without waiting for interest to
    /// cross links.
    pub(in crate::doctor) async fn subscribe(clients: &[&Client]) -> Result<Self, Failure> {
        let dest = clients[0].new_inbox();
        let mut subscriptions = Vec::new();
        for client in clients {
            let subscriber = client
                .subscribe(dest.clone())
                .await
                .map_err(|e| Failure(format!("subscribe to the trace subject {dest}: {e}")))?;
            subscriptions.push(subscriber.boxed());
        }
        Ok(Self {
            dest,
            messages: stream::select_all(subscriptions).boxed(),
            seen: HashSet::new(),
            events: Vec::new(),
            invalid: Vec::new(),
        })
    }

    fn add(&mut self, payload: Bytes) {
        if !self.seen.insert(payload.clone()) {
            return;
        }
        match parse_event(&payload) {
            Ok(event) => self.events.push(event),
            Err(e) => self.invalid.push(e.to_string()),
        }
    }

    /// Reads what has arrived, then waits until `done` holds for the events
    /// read or `deadline` passes.
    async fn collect(
        &mut self,
        deadline: tokio::time::Instant,
        done: impl Fn(&[TraceEvent]) -> bool,
    ) {
        loop {
            while let Some(Some(message)) = self.messages.next().now_or_never() {
                self.add(message.payload);
            }
            if done(&self.events) {
                return;
            }
            match tokio::time::timeout_at(deadline, self.messages.next()).await {
                Ok(Some(message)) => self.add(message.payload),
                Err(_) | Ok(None) => return,
            }
        }
    }

    /// Collects the events for at most `window` and judges them.
    pub(in crate::doctor) async fn finish(mut self, outcome: Outcome<'_>) -> HopsReport {
        // The consumer's delivery was traced only if Nats-Trace-Dest
        // reached it (a relay may have dropped it with the other headers).
        let expect_delivery = outcome
            .received
            .unwrap_or_default()
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case(TRACE_DEST_HEADER));
        let deadline = tokio::time::Instant::now() + outcome.window;
        self.collect(deadline, |events| {
            complete(
                events,
                outcome.sent,
                outcome.publisher,
                outcome.consumer,
                expect_delivery,
            )
        })
        .await;
        evaluate(&HopsInput {
            dest: &self.dest,
            events: &self.events,
            invalid: &self.invalid,
            publisher: outcome.publisher,
            consumer: outcome.consumer,
            listen: outcome.listen,
            sent: outcome.sent,
            received: outcome.received,
            recovered: outcome.recovered,
            window: outcome.window,
        })
    }
}
