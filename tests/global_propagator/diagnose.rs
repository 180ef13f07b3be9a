//! `diagnose()` and `diagnose_client()`: each finding from a set-up that
//! causes it, and none from a correct set-up.
//!
//! Subscribers are installed per thread (`with_default`, `set_default`);
//! the global propagator is process-wide, so every test sets the one it
//! needs and holds it (`crate::set_propagator`).

use nats_otel::{diagnose, diagnose::diagnose_client, diagnose::Finding};
use opentelemetry::propagation::TextMapCompositePropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::{InMemorySpanExporter, Sampler, SdkTracerProvider};
use tokio::sync::MutexGuard;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::Layer as _;

use crate::support::nats::*;
use crate::support::server::NatsServer;
use crate::{set_propagator, set_propagator_blocking};

/// W3C Trace Context and Baggage: a correct global propagator.
fn w3c() -> TextMapCompositePropagator {
    TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ])
}

/// Holds the process-wide propagator for the test; `w3c` sets a real one,
/// otherwise the no-op.
fn propagator(w3c: bool) -> MutexGuard<'static, ()> {
    if w3c {
        set_propagator_blocking(self::w3c())
    } else {
        set_propagator_blocking(opentelemetry::trace::noop::NoopTextMapPropagator::new())
    }
}

fn provider(sampler: Sampler) -> (SdkTracerProvider, InMemorySpanExporter) {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_sampler(sampler)
        .with_simple_exporter(exporter.clone())
        .build();
    (provider, exporter)
}

#[test]
fn correct_setup_has_no_findings_and_exports_the_probe_span() {
    let _global = propagator(true);
    let (provider, exporter) = provider(Sampler::AlwaysOn);
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let findings = tracing::subscriber::with_default(subscriber, diagnose);
    assert_eq!(findings, vec![]);
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].name, "nats_otel.diagnose");
}

#[test]
fn correct_setup_inside_an_unsampled_parent_still_has_no_findings() {
    // The probe is a new root, whatever span is current.
    let _global = propagator(true);
    let (provider, _exporter) = provider(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)));
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let findings = tracing::subscriber::with_default(subscriber, || {
        use opentelemetry::trace::{
            SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
        };
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        let unsampled = opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from(7),
            SpanId::from(7),
            TraceFlags::default(),
            true,
            TraceState::default(),
        ));
        let outer = tracing::info_span!("request");
        outer.set_parent(unsampled).unwrap();
        let _outer = outer.entered();
        assert!(!tracing::Span::current()
            .context()
            .span()
            .span_context()
            .is_sampled());
        diagnose()
    });
    assert_eq!(findings, vec![]);
}

#[test]
fn noop_global_propagator() {
    let _global = propagator(false);
    let (provider, _exporter) = provider(Sampler::AlwaysOn);
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let findings = tracing::subscriber::with_default(subscriber, diagnose);
    assert_eq!(findings, vec![Finding::NoopGlobalPropagator]);
    assert!(findings[0].fix().contains("set_text_map_propagator"));
    assert!(findings[0].to_string().contains("no-op"));
}

#[test]
fn no_subscriber() {
    let _global = propagator(true);
    let findings =
        tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), diagnose);
    assert_eq!(findings, vec![Finding::NoSubscriber]);
}

#[test]
fn subscriber_without_opentelemetry_layer() {
    let _global = propagator(true);
    let subscriber = tracing_subscriber::registry().with(
        tracing_subscriber::fmt::layer()
            .with_test_writer()
            .with_filter(tracing_subscriber::filter::LevelFilter::INFO),
    );
    let findings = tracing::subscriber::with_default(subscriber, diagnose);
    assert_eq!(findings, vec![Finding::NoOpenTelemetryLayer]);
    assert!(findings[0].fix().contains("tracing_opentelemetry::layer()"));
}

#[test]
fn layer_with_noop_tracer() {
    // `tracing_opentelemetry::layer()` without `.with_tracer(...)`.
    let _global = propagator(true);
    let subscriber = tracing_subscriber::registry().with(tracing_opentelemetry::layer());
    let findings = tracing::subscriber::with_default(subscriber, diagnose);
    assert_eq!(findings, vec![Finding::NoopTracer]);
}

#[test]
fn tracer_not_sampling() {
    let _global = propagator(true);
    let (provider, exporter) = provider(Sampler::AlwaysOff);
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let findings = tracing::subscriber::with_default(subscriber, diagnose);
    assert_eq!(findings, vec![Finding::NotSampling]);
    provider.force_flush().unwrap();
    assert!(exporter.get_finished_spans().unwrap().is_empty());
}

#[test]
fn filter_disables_crate_spans_but_layer_checks_still_run() {
    // A WARN filter: the crate's INFO spans are off; the ERROR probe still
    // reaches the layer, whose sampler is off too.
    let _global = propagator(true);
    let (provider, _exporter) = provider(Sampler::AlwaysOff);
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
        .with(tracing_subscriber::filter::LevelFilter::WARN);
    let findings = tracing::subscriber::with_default(subscriber, diagnose);
    assert_eq!(findings, vec![Finding::SpansDisabled, Finding::NotSampling]);
}

#[test]
fn filter_disables_crate_spans_entirely() {
    let _global = propagator(true);
    let (provider, _exporter) = provider(Sampler::AlwaysOn);
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
        .with(tracing_subscriber::filter::filter_fn(|meta| {
            meta.target() != "nats_otel"
        }));
    let findings = tracing::subscriber::with_default(subscriber, diagnose);
    assert_eq!(findings, vec![Finding::SpansDisabled]);
}

#[test]
fn opentelemetry_layer_filter_drops_crate_spans() {
    // The fmt layer enables the span; the OpenTelemetry layer's own filter
    // drops it.
    let _global = propagator(true);
    let (provider, _exporter) = provider(Sampler::AlwaysOn);
    let subscriber = tracing_subscriber::registry()
        .with(
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("test"))
                .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
                    meta.target() != "nats_otel"
                })),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .with_test_writer()
                .with_filter(tracing_subscriber::filter::LevelFilter::INFO),
        );
    let findings = tracing::subscriber::with_default(subscriber, diagnose);
    assert_eq!(findings, vec![Finding::LayerFiltersSpans]);
}

#[tokio::test]
async fn client_on_a_server_with_headers_adds_nothing() {
    let _global = set_propagator(w3c()).await;
    let server = NatsServer::start();
    let client = connect(&server).await;
    let (provider, _exporter) = provider(Sampler::AlwaysOn);
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let _default = tracing::subscriber::set_default(subscriber);
    assert_eq!(diagnose_client(&client).await, vec![]);
}

#[tokio::test]
async fn client_on_a_server_without_headers() {
    let _global = set_propagator(w3c()).await;
    // nats-server 2.2+ with `no_header_support` refuses async-nats clients
    // outright; servers before 2.2 accept them but carry no headers. A
    // minimal protocol peer stands in for such a server.
    let (url, _peer) = headerless_server().await;
    let client = async_nats::connect(url).await.unwrap();
    let (provider, _exporter) = provider(Sampler::AlwaysOn);
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let _default = tracing::subscriber::set_default(subscriber);
    let findings = diagnose_client(&client).await;
    assert_eq!(
        findings,
        vec![Finding::ServerWithoutHeaders {
            server: "old 2.1.9".to_owned()
        }]
    );
    assert_eq!(findings[0].as_str(), "server_without_headers");
    assert!(findings[0].to_string().contains("old 2.1.9"));
}
