//! Pairing and timing: the paired-rounds runner, the results table rows, the
//! server round-trip barrier, the tracing dispatches.

use super::*;

/// A tracing dispatch with an OpenTelemetry layer: spans unsampled, or all
/// sampled into a batch processor with a no-op exporter.
pub(crate) fn dispatch(sampled: bool) -> (Dispatch, SdkTracerProvider) {
    let provider = sdk::provider(sampled);
    (sdk::dispatch(&provider), provider)
}

/// What the layer writes by default: `traceparent` under both names
/// (`HeaderNames::Both`).
pub(crate) fn raw_headers(extra: Option<(&str, &str)>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("traceparent", TRACEPARENT);
    headers.insert("Traceparent", TRACEPARENT);
    if let Some((name, value)) = extra {
        headers.insert(name, value);
    }
    headers
}

/// One row of the table.
pub(crate) struct Row {
    pub(crate) name: &'static str,
    pub(crate) ours: Vec<f64>,
    pub(crate) raw: Vec<f64>,
    pub(crate) ratios: Vec<f64>,
    pub(crate) target: &'static str,
}

pub(crate) fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Runs `ours` and `raw` alternately for `rounds` rounds; each returns the
/// time it took for `count` messages.
pub(crate) async fn pair<A, FA, B, FB>(
    name: &'static str,
    target: &'static str,
    rounds: usize,
    count: usize,
    mut ours: A,
    mut raw: B,
) -> Result<Row>
where
    A: FnMut() -> FA,
    FA: Future<Output = Result<Duration>>,
    B: FnMut() -> FB,
    FB: Future<Output = Result<Duration>>,
{
    // One unmeasured run of each to warm up connections, streams and caches.
    ours().await?;
    raw().await?;
    let rate = |d: Duration| count as f64 / d.as_secs_f64();
    let mut row = Row {
        name,
        ours: Vec::new(),
        raw: Vec::new(),
        ratios: Vec::new(),
        target,
    };
    for round in 0..rounds {
        let (o, r) = if round % 2 == 0 {
            let o = ours().await?;
            (o, raw().await?)
        } else {
            let r = raw().await?;
            (ours().await?, r)
        };
        row.ours.push(rate(o));
        row.raw.push(rate(r));
        row.ratios.push(rate(o) / rate(r));
    }
    eprintln!(
        "{name}: ours {:.0} msg/s, raw {:.0} msg/s, ratio {:.3}",
        median(&row.ours),
        median(&row.raw),
        median(&row.ratios)
    );
    Ok(row)
}

/// Runs `f` on `rt` with `dispatch` as the default subscriber.
pub(crate) fn with_dispatch<T>(
    dispatch: &Dispatch,
    rt: &tokio::runtime::Runtime,
    f: impl Future<Output = T>,
) -> T {
    tracing::dispatcher::with_default(dispatch, || rt.block_on(f))
}

/// A server round trip between two connections.
///
/// `Client::flush` only writes the client's buffer to the socket; it does
/// not wait for the server. Once a sentinel published by a connection comes
/// back on the barrier subscription (on the consumer connection), the server
/// has processed everything that connection sent before it, subscriptions
/// included, and has delivered earlier messages to the consumer
/// connection's subscriptions, in order.
pub(crate) struct Barrier {
    pub(crate) subject: Subject,
    pub(crate) subscription: async_nats::Subscriber,
    pub(crate) seq: u64,
}

impl Barrier {
    pub(crate) async fn new(consumer: &async_nats::Client) -> Result<tokio::sync::Mutex<Self>> {
        let subject = Subject::from("bench.barrier");
        let subscription = consumer.subscribe(subject.clone()).await?;
        let mut barrier = Self {
            subject,
            subscription,
            seq: 0,
        };
        // Sent by the same connection after its SUB: ordered at the server.
        barrier.wait(consumer).await?;
        Ok(tokio::sync::Mutex::new(barrier))
    }

    /// Returns once everything `from` sent so far has been processed by the
    /// server.
    pub(crate) async fn wait(&mut self, from: &async_nats::Client) -> Result<()> {
        self.seq += 1;
        let sentinel = self.seq.to_string();
        from.publish(self.subject.clone(), sentinel.clone().into())
            .await?;
        from.flush().await?;
        loop {
            let message = next(&mut self.subscription).await?;
            if message.payload == sentinel.as_bytes() {
                return Ok(());
            }
        }
    }
}
