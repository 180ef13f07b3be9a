//! Consume rows: the adapter vs a raw subscriber with manual extraction, and the
//! RSS check.

use super::*;

/// Publishes `count` messages with a traceparent to `subject` and waits
/// until the consumer's client has them all buffered.
pub(crate) async fn fill(
    publisher: &async_nats::Client,
    barrier: &tokio::sync::Mutex<Barrier>,
    subject: &Subject,
    count: usize,
    payload: &Bytes,
) -> Result<()> {
    let headers = raw_headers(None);
    for _ in 0..count {
        publisher
            .publish_with_headers(subject.clone(), headers.clone(), payload.clone())
            .await?;
    }
    barrier.lock().await.wait(publisher).await
}

/// The next item, or an error after 10 s: a lost message must fail the
/// benchmark, not hang it.
pub(crate) async fn next<S: futures::Stream + Unpin>(stream: &mut S) -> Result<S::Item> {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .map_err(|_| "no message for 10 s (lost?)")?
        .ok_or_else(|| "the subscription ended".into())
}

/// Messages per chunk: published, buffered, then consumed (timed).
pub(crate) const CHUNK: usize = 5_000;

pub(crate) async fn consume(
    publisher: &async_nats::Client,
    consumer: &async_nats::Client,
    barrier: &tokio::sync::Mutex<Barrier>,
    s: &Settings,
    payload: &Bytes,
    (tracer, link): (Option<SdkTracer>, sdk::Linked),
    (name, target): (&'static str, &'static str),
) -> Result<Row> {
    let subject = Subject::from("bench.consume");
    let n = s.messages;
    pair(
        name,
        target,
        s.rounds,
        n,
        || async {
            let mut messages = consumer
                .subscribe(subject.clone())
                .await?
                .with_trace_context();
            if let Some(tracer) = &tracer {
                messages = messages.tracer(tracer.clone());
            }
            barrier.lock().await.wait(consumer).await?;
            let mut elapsed = Duration::ZERO;
            let mut left = n;
            while left > 0 {
                let chunk = left.min(CHUNK);
                fill(publisher, barrier, &subject, chunk, payload).await?;
                let start = Instant::now();
                for _ in 0..chunk {
                    let (message, cx) = next(&mut messages).await?;
                    std::hint::black_box((&message, &cx));
                }
                elapsed += start.elapsed();
                left -= chunk;
            }
            Ok(elapsed)
        },
        || async {
            let propagator = TraceContextPropagator::new();
            let mut messages = consumer.subscribe(subject.clone()).await?;
            barrier.lock().await.wait(consumer).await?;
            let mut elapsed = Duration::ZERO;
            let mut left = n;
            while left > 0 {
                let chunk = left.min(CHUNK);
                fill(publisher, barrier, &subject, chunk, payload).await?;
                let start = Instant::now();
                for _ in 0..chunk {
                    let message = next(&mut messages).await?;
                    // The hand-written way: extract with the SDK, start a
                    // CONSUMER span under the remote parent, made the same
                    // way as ours (a `tracing` span, or with the tracer),
                    // linked to its parent as the conventions require
                    // unless `link` says otherwise.
                    match &tracer {
                        None => {
                            let span = sdk::hand_written_tracing_span(&propagator, &message, link);
                            std::hint::black_box((&message, &span));
                        }
                        Some(tracer) => {
                            let cx =
                                sdk::hand_written_tracer_span(&propagator, tracer, &message, link);
                            std::hint::black_box((&message, &cx));
                        }
                    }
                }
                elapsed += start.elapsed();
                left -= chunk;
            }
            Ok(elapsed)
        },
    )
    .await
}

pub(crate) fn vm_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Publishes and consumes `count` messages through `messages`, by chunks.
pub(crate) async fn drain<S>(
    messages: &mut S,
    publisher: &async_nats::Client,
    barrier: &tokio::sync::Mutex<Barrier>,
    subject: &Subject,
    count: usize,
    payload: &Bytes,
) -> Result<()>
where
    S: futures::Stream<Item = (async_nats::Message, opentelemetry::Context)> + Unpin,
{
    let mut left = count;
    while left > 0 {
        let chunk = left.min(CHUNK);
        fill(publisher, barrier, subject, chunk, payload).await?;
        for _ in 0..chunk {
            let (message, cx) = next(messages).await?;
            std::hint::black_box((&message, &cx));
        }
        left -= chunk;
    }
    Ok(())
}

/// RSS before and after consuming `count` messages through the adapter.
pub(crate) async fn rss(
    publisher: &async_nats::Client,
    consumer: &async_nats::Client,
    barrier: &tokio::sync::Mutex<Barrier>,
    count: usize,
    payload: &Bytes,
) -> Result<(u64, u64, Duration)> {
    let subject = Subject::from("bench.rss");
    let mut messages = consumer
        .subscribe(subject.clone())
        .await?
        .with_trace_context();
    barrier.lock().await.wait(consumer).await?;
    // Warm up: allocator pools, channel buffers, span machinery.
    drain(
        &mut messages,
        publisher,
        barrier,
        &subject,
        5 * CHUNK,
        payload,
    )
    .await?;
    let before = vm_rss_kib().ok_or("no VmRSS in /proc/self/status")?;
    let start = Instant::now();
    drain(&mut messages, publisher, barrier, &subject, count, payload).await?;
    let took = start.elapsed();
    let after = vm_rss_kib().ok_or("no VmRSS in /proc/self/status")?;
    Ok((before, after, took))
}
