//! Publish rows: core publish through the layer vs raw async-nats, and JetStream
//! publish with acks in flight.

use super::*;

/// How the layer is set up for a core publish row.
#[derive(Clone)]
pub(crate) enum Producer {
    /// A PRODUCER span per message, as a `tracing` span (the default).
    Spans,
    /// A PRODUCER span per message, made with this OpenTelemetry tracer
    /// (`TracePropagationLayer::tracer`).
    TracerSpans(SdkTracer),
    /// `producer_spans(false)`: the caller's context is injected as is
    /// (given explicitly with `Publish::context`), under these names.
    NoSpans(HeaderNames),
    /// A set-up above with `.propagator(W3cPropagator::new())`: the same
    /// W3C fast path, the global propagator never read.
    W3c(Box<Producer>),
}

impl Producer {
    fn layer(&self) -> TracePropagationLayer {
        match self {
            Producer::Spans => TracePropagationLayer::new(),
            Producer::TracerSpans(tracer) => TracePropagationLayer::new().tracer(tracer.clone()),
            Producer::NoSpans(names) => TracePropagationLayer::new()
                .producer_spans(false)
                .header_names(*names),
            Producer::W3c(producer) => producer.layer().propagator(W3cPropagator::new()),
        }
    }
}

/// The header block the layer writes for one message under `names`, in
/// bytes as it travels (`NATS/1.0\r\n`, `name: value\r\n` per header, a
/// closing `\r\n`), with a context carrying `tracestate` and a two-member
/// `baggage` when `full`.
pub(crate) fn header_bytes(names: HeaderNames, full: bool) -> usize {
    use opentelemetry::baggage::BaggageExt;
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
    let state = if full {
        "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE".parse().unwrap()
    } else {
        TraceState::NONE
    };
    let mut cx = opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
        TraceId::from(0x0af7651916cd43dd8448eb211c80319c),
        SpanId::from(0xb7ad6b7169203331),
        TraceFlags::SAMPLED,
        true,
        state,
    ));
    if full {
        cx = cx.with_baggage([
            opentelemetry::KeyValue::new("user", "alice"),
            opentelemetry::KeyValue::new("tenant", "acme"),
        ]);
    }
    let mut headers = HeaderMap::new();
    HeaderInjector::new(&mut headers)
        .header_names(names)
        .inject_context(&cx);
    let fields: usize = headers
        .iter()
        .flat_map(|(name, values)| {
            let name: &str = name.as_ref();
            values
                .iter()
                .map(move |v| name.len() + 2 + v.as_str().len() + 2)
        })
        .sum();
    "NATS/1.0\r\n".len() + fields + 2
}

/// What a core publish row compares the layer with.
pub(crate) enum Baseline {
    /// `publish_with_headers` with the same header bytes, prebuilt.
    Raw,
    /// The layer set up otherwise.
    Layer(Producer),
    /// What one writes without the crate: a `tracing` PRODUCER span under
    /// the caller's context, the SDK propagator into a fresh `HeaderMap`,
    /// `publish_with_headers`.
    HandWritten,
}

/// The caller's context every message is published in: what a traced
/// request handler holds, sampled or not (with 1-10 % sampling, most are
/// not).
pub(crate) fn caller_context(sampled: bool) -> opentelemetry::Context {
    use opentelemetry::trace::TraceFlags;
    opentelemetry::Context::new().with_remote_span_context(opentelemetry::trace::SpanContext::new(
        opentelemetry::trace::TraceId::from(0x0af7651916cd43dd8448eb211c80319c),
        opentelemetry::trace::SpanId::from(0xb7ad6b7169203331),
        if sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        },
        false,
        opentelemetry::trace::TraceState::NONE,
    ))
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn core_publish(
    client: &async_nats::Client,
    barrier: &tokio::sync::Mutex<Barrier>,
    s: &Settings,
    payload: &Bytes,
    producer: Producer,
    baseline: Baseline,
    parent: opentelemetry::Context,
    (name, target): (&'static str, &'static str),
) -> Result<Row> {
    let subject = Subject::from("bench.core");
    let headers = raw_headers(None);
    let n = s.messages;
    let through_layer = |producer: &Producer| {
        let mut svc = producer.layer().layer(CorePublisher::new(client.clone()));
        let (subject, parent) = (&subject, &parent);
        async move {
            let start = Instant::now();
            for _ in 0..n {
                let publish =
                    Publish::new(subject.clone(), payload.clone()).context(parent.clone());
                svc.ready().await?.call(publish).await?;
            }
            barrier.lock().await.wait(client).await?;
            Ok(start.elapsed())
        }
    };
    let hand_written = || async {
        use opentelemetry::propagation::TextMapPropagator;
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        let propagator = TraceContextPropagator::new();
        let start = Instant::now();
        for _ in 0..n {
            let span = tracing::info_span!(
                "publish",
                otel.name = "publish bench.core",
                otel.kind = "producer",
                messaging.system = "nats",
                messaging.destination.name = subject.as_str(),
                messaging.operation.type = "send",
                messaging.operation.name = "publish",
            );
            let _ = span.set_parent(parent.clone());
            let mut headers = HeaderMap::new();
            propagator.inject_context(&span.context(), &mut sdk::PlainInjector(&mut headers));
            client
                .publish_with_headers(subject.clone(), headers, payload.clone())
                .await?;
        }
        barrier.lock().await.wait(client).await?;
        Ok(start.elapsed())
    };
    pair(
        name,
        target,
        s.rounds,
        n,
        || through_layer(&producer),
        || async {
            match &baseline {
                Baseline::Raw => {}
                Baseline::Layer(baseline) => return through_layer(baseline).await,
                Baseline::HandWritten => return hand_written().await,
            }
            let start = Instant::now();
            for _ in 0..n {
                client
                    .publish_with_headers(subject.clone(), headers.clone(), payload.clone())
                    .await?;
            }
            barrier.lock().await.wait(client).await?;
            Ok(start.elapsed())
        },
    )
    .await
}

/// JetStream acks in flight, at most `window` of them: pushing one more
/// first awaits the oldest.
pub(crate) struct AckWindow {
    pub(crate) acks: VecDeque<PublishAckFuture>,
    pub(crate) window: usize,
}

impl AckWindow {
    fn new(window: usize) -> Self {
        Self {
            acks: VecDeque::with_capacity(window),
            window,
        }
    }

    async fn push(&mut self, ack: PublishAckFuture) -> Result<()> {
        self.acks.push_back(ack);
        if self.acks.len() >= self.window {
            if let Some(oldest) = self.acks.pop_front() {
                oldest.await?;
            }
        }
        Ok(())
    }

    /// Awaits every ack still in flight.
    async fn drain(self) -> Result<()> {
        for ack in self.acks {
            ack.await?;
        }
        Ok(())
    }
}

pub(crate) async fn jetstream_publish(
    js: &jetstream::Context,
    s: &Settings,
    payload: &Bytes,
    tracer: Option<SdkTracer>,
    name: &'static str,
) -> Result<Row> {
    let subject = Subject::from("bench.js");
    let headers = raw_headers(None);
    let (n, window) = (s.js_messages, s.window);
    pair(
        name,
        ">= 0.95",
        s.rounds,
        n,
        || async {
            let mut layer = TracePropagationLayer::new();
            if let Some(tracer) = &tracer {
                layer = layer.tracer(tracer.clone());
            }
            let mut svc = layer.layer(JetStreamSender::new(js.clone()));
            let mut acks = AckWindow::new(window);
            let start = Instant::now();
            for _ in 0..n {
                let ack = svc
                    .ready()
                    .await?
                    .call(Publish::new(subject.clone(), payload.clone()))
                    .await?;
                acks.push(ack).await?;
            }
            acks.drain().await?;
            Ok(start.elapsed())
        },
        || async {
            let mut acks = AckWindow::new(window);
            let start = Instant::now();
            for _ in 0..n {
                let ack = js
                    .publish_with_headers(subject.clone(), headers.clone(), payload.clone())
                    .await?;
                acks.push(ack).await?;
            }
            acks.drain().await?;
            Ok(start.elapsed())
        },
    )
    .await
}
