//! The KV fallback write-through row.

use super::*;

pub(crate) async fn kv_write_through(
    js: &jetstream::Context,
    s: &Settings,
    payload: &Bytes,
) -> Result<(Row, u64, usize)> {
    // The bucket on the same storage as the stream it is compared with, so
    // that both writes cost the same (the 0.5 floor).
    let store = match s.storage {
        stream::StorageType::File => KvFallback::open_bucket(js, "bench_carriers").await?,
        stream::StorageType::Memory => {
            js.create_key_value(async_nats::jetstream::kv::Config {
                bucket: "bench_carriers".into(),
                history: 1,
                max_age: nats_otel::fallback::DEFAULT_MAX_AGE,
                storage: stream::StorageType::Memory,
                ..Default::default()
            })
            .await?
        }
    };
    let fallback = KvFallback::new(store, FallbackKey::header("Job-Id"));
    let subject = Subject::from("bench.kv");
    let (n, window) = (s.kv_messages, (s.window / 4).max(1));
    let row = pair(
        "KV fallback write-through vs plain JetStream publish (unsampled)",
        ">= 0.45",
        s.rounds,
        n,
        || async {
            let mut svc = TracePropagationLayer::new()
                .fallback(fallback.clone())
                .layer(JetStreamPublisher::new(js.clone()));
            let mut in_flight = FuturesUnordered::new();
            let start = Instant::now();
            for i in 0..n {
                let publish = Publish::new(subject.clone(), payload.clone())
                    .header("Job-Id", &format!("job-{i}"))?;
                in_flight.push(svc.ready().await?.call(publish));
                if in_flight.len() >= window {
                    in_flight.next().await.ok_or("no future")??;
                }
            }
            while let Some(done) = in_flight.next().await {
                done?;
            }
            Ok(start.elapsed())
        },
        || async {
            let mut in_flight = FuturesUnordered::new();
            let start = Instant::now();
            for i in 0..n {
                let headers = raw_headers(Some(("Job-Id", &format!("job-{i}"))));
                let js = js.clone();
                let (subject, payload) = (subject.clone(), payload.clone());
                in_flight.push(async move {
                    js.publish_with_headers(subject, headers, payload)
                        .await?
                        .await
                });
                if in_flight.len() >= window {
                    in_flight.next().await.ok_or("no future")??;
                }
            }
            while let Some(done) = in_flight.next().await {
                done?;
            }
            Ok(start.elapsed())
        },
    )
    .await?;

    // Consume what was written through the layer, headers intact, with the
    // fallback configured: it must never be read.
    let stream = js.get_stream("BENCH_KV").await?;
    let pull = stream
        .create_consumer(consumer::pull::Config {
            ack_policy: consumer::AckPolicy::None,
            filter_subject: "bench.kv".into(),
            ..Default::default()
        })
        .await?;
    let total = stream.cached_info().state.messages as usize;
    let mut messages = pull
        .messages()
        .await?
        .with_trace_context()
        .fallback(fallback.clone());
    let mut from_headers = 0;
    for _ in 0..total {
        let (_, cx) = next(&mut messages).await??;
        if cx.extraction().map(|r| r.source()) == Some(ContextSource::Headers) {
            from_headers += 1;
        }
    }
    let reads = fallback.stats().reads;
    Ok((row, reads, from_headers))
}
