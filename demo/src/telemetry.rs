//! Telemetry: `tracing` + `tracing-opentelemetry` + the OpenTelemetry SDK, with an in-memory
//! exporter (role `all` prints a trace tree from it) and OTLP/HTTP export when configured.

use std::io::IsTerminal as _;
use std::time::Duration;

use opentelemetry::trace::{TraceContextExt as _, TraceId, TracerProvider as _};
use opentelemetry_otlp::{SpanExporter, WithExportConfig as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use opentelemetry_sdk::Resource;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

use crate::{BoxError, Role};

/// The tracer provider, plus the in-memory exporter that role `all` reads the tree from.
pub(crate) struct Telemetry {
    provider: SdkTracerProvider,
    memory: Option<InMemorySpanExporter>,
}

impl Telemetry {
    /// Installs the global `tracing` subscriber: an OpenTelemetry layer (INFO spans and up)
    /// and a log layer on stderr (stdout is kept for the worker's JSON lines).
    pub(crate) fn install(role: Role) -> Result<Self, BoxError> {
        let service = match role {
            Role::All => "job-pipeline",
            Role::Api => "job-pipeline-api",
            Role::Worker => "job-pipeline-worker",
        };
        let mut builder = SdkTracerProvider::builder()
            .with_resource(Resource::builder().with_service_name(service).build());
        let memory = (role == Role::All).then(InMemorySpanExporter::default);
        if let Some(memory) = &memory {
            builder = builder.with_simple_exporter(memory.clone());
        }
        if let Some(exporter) = otlp_exporter_from_env()? {
            builder = builder.with_batch_exporter(exporter);
        }
        let provider = builder.build();

        let logs = EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| EnvFilter::new("warn,job_pipeline=info"));
        let subscriber = tracing_subscriber::registry()
            .with(
                tracing_opentelemetry::layer()
                    .with_tracer(provider.tracer("job_pipeline"))
                    .with_filter(tracing_subscriber::filter::LevelFilter::INFO),
            )
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_filter(logs),
            );
        tracing::subscriber::set_global_default(subscriber)?;
        Ok(Self { provider, memory })
    }

    /// The tracer the `tracing` layer uses, for components that make spans directly.
    pub(crate) fn tracer(&self) -> opentelemetry_sdk::trace::SdkTracer {
        self.provider.tracer("job_pipeline")
    }

    /// Every span finished so far (role `all` only).
    pub(crate) fn finished_spans(&self) -> Vec<SpanData> {
        let _ = self.provider.force_flush();
        self.memory
            .as_ref()
            .and_then(|memory| memory.get_finished_spans().ok())
            .unwrap_or_default()
    }

    /// Flushes and stops the exporters (the OTLP batch, if any).
    pub(crate) fn shutdown(self) {
        if let Err(error) = self.provider.shutdown() {
            tracing::warn!("shutting down the tracer provider: {error}");
        }
    }
}

/// The trace id of a span (all zeros without an OpenTelemetry layer).
pub(crate) fn trace_id_of(span: &Span) -> TraceId {
    span.context().span().span_context().trace_id()
}

/// The variables `opentelemetry-otlp` reads the endpoint from, most specific first.
const ENDPOINT_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

/// An OTLP/HTTP (protobuf) exporter when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, e.g. to `http://127.0.0.1:4318`. It runs in
/// the SDK's batch thread with reqwest's blocking client, built without TLS: plain `http://`
/// only, to a local collector.
fn otlp_exporter_from_env() -> Result<Option<SpanExporter>, BoxError> {
    let Some((var, endpoint)) = ENDPOINT_VARS.iter().find_map(|var| {
        let value = std::env::var(var).ok().filter(|v| !v.is_empty())?;
        Some((var, value))
    }) else {
        return Ok(None);
    };
    if !endpoint.starts_with("http://") {
        return Err(
            format!("{var}={endpoint}: the demo's OTLP client speaks plain http:// only").into(),
        );
    }
    // The builder reads the endpoint from the same variables (and appends `/v1/traces` to
    // the generic one).
    let exporter = SpanExporter::builder()
        .with_http()
        .with_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| format!("{var}={endpoint}: cannot build the OTLP exporter: {e}"))?;
    eprintln!("job_pipeline: exporting spans over OTLP/HTTP to {endpoint}");
    Ok(Some(exporter))
}
