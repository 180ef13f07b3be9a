//! A start-up self-check: is this process set up so that trace context can
//! cross NATS?
//!
//! [`diagnose`] inspects the process (global propagator, `tracing`
//! subscriber, OpenTelemetry layer, tracer and sampler);
//! [`diagnose_client`] also asks the server whether it carries headers.
//! Each problem is a typed [`Finding`] with a [`fix`](Finding::fix).
//!
//! # Examples
//!
//! ```
//! // A process with no `tracing` subscriber at all: the check says what is
//! // missing and how to fix it.
//! for finding in nats_otel::diagnose() {
//!     println!("{finding}: {}", finding.fix());
//! }
//! ```

use std::fmt;

use opentelemetry::trace::TraceContextExt;
use opentelemetry::Context;
use tracing::Span;
use tracing_opentelemetry::{OpenTelemetrySpanExt, SetParentError};

/// The target of the probe span, the same as the crate's own spans.
const TARGET: &str = "nats_otel";

/// One problem found by [`diagnose`] or [`diagnose_client`].
///
/// `Display` says what is wrong and what it breaks; [`fix`](Self::fix) says
/// what to change.
///
/// # Examples
///
/// ```
/// use nats_otel::diagnose::Finding;
///
/// let finding = Finding::NoOpenTelemetryLayer;
/// assert_eq!(finding.as_str(), "no_opentelemetry_layer");
/// assert!(finding.fix().contains("tracing_opentelemetry::layer()"));
/// println!("{finding}\n  fix: {}", finding.fix());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Finding {
    /// The global text-map propagator is OpenTelemetry's default no-op.
    ///
    /// This crate falls back to W3C Trace Context and Baggage, so NATS
    /// propagation still works; other instrumentation in the process (HTTP
    /// clients and servers, gRPC) injects and extracts nothing.
    NoopGlobalPropagator,
    /// No `tracing` subscriber is installed, so no span exists and no span
    /// context can be injected (only an explicit or
    /// [`Context::current`] context).
    NoSubscriber,
    /// The subscriber's filter disables INFO spans with target `nats_otel`:
    /// the crate's `publish` and `process` spans are not recorded
    /// (propagation of your own spans' context still works).
    SpansDisabled,
    /// The `tracing` subscriber has no OpenTelemetry layer: every span
    /// context is invalid, so nothing is injected on publish and consumed
    /// contexts cannot become parents of handler spans.
    NoOpenTelemetryLayer,
    /// The OpenTelemetry layer is installed, but its own (per-layer) filter
    /// excludes spans with target `nats_otel`, so the crate's spans never
    /// reach OpenTelemetry.
    LayerFiltersSpans,
    /// The OpenTelemetry layer's tracer is a no-op (no tracer provider):
    /// spans get invalid contexts, so nothing is injected.
    NoopTracer,
    /// New root spans are not sampled: contexts propagate (with the sampled
    /// flag off), but the spans are not exported, so traces look empty or
    /// broken in the backend.
    NotSampling,
    /// The server does not support message headers, so `traceparent`
    /// cannot travel.
    ServerWithoutHeaders {
        /// The server's name and version, as it reported them.
        server: String,
    },
    /// The server (2.11.0 up to 2.12.11) renames `Traceparent` to
    /// `traceparent` on every message, and while nats-server message
    /// tracing is active may overwrite the first letter of a trace header on
    /// stored messages: consumers that read only `Traceparent`
    /// (OpenTelemetry Go's `HeaderCarrier`) lose the trace, and server hops
    /// ([`hops`](crate#modules), feature `hops`) stay off on it.
    ServerRewritesTraceHeaders {
        /// The server's name and version, as it reported them.
        server: String,
    },
    /// The client could not reach the server, so header support was not
    /// checked.
    ServerUnreachable {
        /// The error.
        error: String,
    },
}

impl Finding {
    /// A short, stable name for logs and scripts, e.g.
    /// `"noop_global_propagator"`.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(nats_otel::diagnose::Finding::NotSampling.as_str(), "not_sampling");
    /// ```
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::NoopGlobalPropagator => "noop_global_propagator",
            Self::NoSubscriber => "no_subscriber",
            Self::SpansDisabled => "spans_disabled",
            Self::NoOpenTelemetryLayer => "no_opentelemetry_layer",
            Self::LayerFiltersSpans => "layer_filters_spans",
            Self::NoopTracer => "noop_tracer",
            Self::NotSampling => "not_sampling",
            Self::ServerWithoutHeaders { .. } => "server_without_headers",
            Self::ServerRewritesTraceHeaders { .. } => "server_rewrites_trace_headers",
            Self::ServerUnreachable { .. } => "server_unreachable",
        }
    }

    /// What to change to resolve this finding.
    ///
    /// # Examples
    ///
    /// ```
    /// let fix = nats_otel::diagnose::Finding::NoopGlobalPropagator.fix();
    /// assert!(fix.contains("set_text_map_propagator"));
    /// ```
    pub fn fix(&self) -> &'static str {
        match self {
            Self::NoopGlobalPropagator => {
                "at start-up call opentelemetry::global::set_text_map_propagator(\
                 opentelemetry_sdk::propagation::TraceContextPropagator::new()) (or a \
                 TextMapCompositePropagator of TraceContextPropagator and BaggagePropagator)"
            }
            Self::NoSubscriber => {
                "install a subscriber with an OpenTelemetry layer: \
                 tracing_subscriber::registry().with(tracing_opentelemetry::layer()\
                 .with_tracer(provider.tracer(\"my-service\"))).init()"
            }
            Self::SpansDisabled => {
                "enable INFO spans for the nats_otel target in the subscriber's filter, \
                 e.g. EnvFilter directive \"nats_otel=info\" (RUST_LOG=info,nats_otel=info)"
            }
            Self::NoOpenTelemetryLayer => {
                "add the OpenTelemetry layer to the subscriber: \
                 .with(tracing_opentelemetry::layer().with_tracer(provider.tracer(\"my-service\")))"
            }
            Self::LayerFiltersSpans => {
                "let the OpenTelemetry layer's filter pass INFO spans with target nats_otel \
                 (e.g. add \"nats_otel=info\" to the filter given to .with_filter(...))"
            }
            Self::NoopTracer => {
                "give the layer an SDK tracer: build an opentelemetry_sdk::trace::SdkTracerProvider \
                 with an exporter and use tracing_opentelemetry::layer().with_tracer(provider.\
                 tracer(\"my-service\")); tracing_opentelemetry::layer() alone, or the global \
                 tracer before set_tracer_provider, is a no-op"
            }
            Self::NotSampling => {
                "use a sampler that samples root spans, e.g. Sampler::ParentBased(Box::new(\
                 Sampler::AlwaysOn)) or TraceIdRatioBased with a non-zero ratio; check \
                 OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG"
            }
            Self::ServerWithoutHeaders { .. } => {
                "run a nats-server that supports headers (2.2 or later) and remove \
                 no_header_support from its configuration; until then, carry the context in \
                 the payload (TraceCarrier) instead"
            }
            Self::ServerRewritesTraceHeaders { .. } => {
                "upgrade nats-server to 2.12.12, 2.14.0 or later; until then Go consumers need                  a carrier that reads any casing, and message tracing (server hops) stays off"
            }
            Self::ServerUnreachable { .. } => {
                "check the server URL and credentials, then call diagnose_client again once \
                 the client is connected"
            }
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoopGlobalPropagator => f.write_str(
                "the global OpenTelemetry propagator is the no-op: nats-otel falls back to W3C \
                 Trace Context, but other instrumentation in this process (HTTP, gRPC) \
                 propagates nothing",
            ),
            Self::NoSubscriber => f.write_str(
                "no tracing subscriber is installed: spans are not recorded and have no trace \
                 context to inject",
            ),
            Self::SpansDisabled => f.write_str(
                "the subscriber's filter disables INFO spans with target nats_otel: the \
                 publish and process spans are not recorded",
            ),
            Self::NoOpenTelemetryLayer => f.write_str(
                "the tracing subscriber has no OpenTelemetry layer: span contexts are invalid, \
                 so nothing can be injected on publish",
            ),
            Self::LayerFiltersSpans => f.write_str(
                "the OpenTelemetry layer's own filter drops spans with target nats_otel: the \
                 publish and process spans never reach OpenTelemetry",
            ),
            Self::NoopTracer => f.write_str(
                "the OpenTelemetry layer's tracer is a no-op (no tracer provider): span \
                 contexts are invalid, so nothing can be injected on publish",
            ),
            Self::NotSampling => f.write_str(
                "the tracer does not sample new traces: context still propagates, but spans \
                 are not exported",
            ),
            Self::ServerWithoutHeaders { server } => write!(
                f,
                "the server ({server}) does not support message headers: traceparent cannot \
                 travel"
            ),
            Self::ServerRewritesTraceHeaders { server } => write!(
                f,
                "{server} renames Traceparent to traceparent on every message and may \
                 overwrite trace headers while message tracing is active: Go consumers lose \
                 the trace and server hops stay off"
            ),
            Self::ServerUnreachable { error } => write!(
                f,
                "could not reach the server to check header support: {error}"
            ),
        }
    }
}

/// Checks that this process can propagate trace context, and returns what
/// is wrong (empty when all is well).
///
/// Call it at start-up, after installing the `tracing` subscriber and the
/// propagator, and log the findings. It checks, on the calling thread's
/// default subscriber:
///
/// - the global propagator ([`Finding::NoopGlobalPropagator`]);
/// - the subscriber and its filter ([`Finding::NoSubscriber`],
///   [`Finding::SpansDisabled`]);
/// - the OpenTelemetry layer and its tracer ([`Finding::NoOpenTelemetryLayer`],
///   [`Finding::LayerFiltersSpans`], [`Finding::NoopTracer`]);
/// - the sampler, for a new root span ([`Finding::NotSampling`]).
///
/// To do so it creates one short root span, `nats_otel.diagnose` (target
/// `nats_otel`, level INFO). When the set-up is correct that span is
/// exported like any other: finding it in your tracing backend shows that
/// export works too.
///
/// # Examples
///
/// ```
/// use nats_otel::diagnose::Finding;
///
/// // No subscriber and no propagator installed in this doctest:
/// let findings = nats_otel::diagnose();
/// assert!(findings.contains(&Finding::NoSubscriber));
/// for finding in &findings {
///     eprintln!("tracing set-up: {finding}; fix: {}", finding.fix());
/// }
/// ```
pub fn diagnose() -> Vec<Finding> {
    let mut findings = Vec::new();
    if crate::propagation::global_propagator_is_noop() {
        findings.push(Finding::NoopGlobalPropagator);
    }
    check_tracing(&mut findings);
    findings
}

/// Like [`diagnose`], and also checks that the server `client` is
/// connected to supports message headers ([`Finding::ServerWithoutHeaders`]).
///
/// When the client is not connected yet (e.g. it was built with
/// `retry_on_initial_connect`), this waits for the connection by flushing;
/// wrap the call in a timeout if the server may be unreachable.
///
/// # Examples
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let client = async_nats::connect("nats://127.0.0.1:4222").await?;
/// for finding in nats_otel::diagnose::diagnose_client(&client).await {
///     tracing::warn!(finding = finding.as_str(), fix = finding.fix(), "{finding}");
/// }
/// # Ok(())
/// # }
/// ```
pub async fn diagnose_client(client: &async_nats::Client) -> Vec<Finding> {
    let mut findings = diagnose();
    if client.connection_state() != async_nats::connection::State::Connected {
        if let Err(error) = client.flush().await {
            findings.push(Finding::ServerUnreachable {
                error: error.to_string(),
            });
            return findings;
        }
    }
    let info = client.server_info();
    let name = if info.server_name.is_empty() {
        "nats-server".to_owned()
    } else {
        info.server_name.clone()
    };
    let server = format!("{name} {}", info.version).trim_end().to_owned();
    if !info.headers {
        findings.push(Finding::ServerWithoutHeaders { server });
    } else if rewrites_trace_headers(&info.version) {
        findings.push(Finding::ServerRewritesTraceHeaders { server });
    }
    findings
}

/// Whether `version` is a nats-server from 2.11.0 up to 2.12.11, which
/// rename `Traceparent` and may overwrite trace headers under message
/// tracing (fixed in 2.12.12 and 2.14.0).
fn rewrites_trace_headers(version: &str) -> bool {
    let core = version.split(['-', '+']).next().unwrap_or_default();
    let mut parts = core.split('.').map(|p| p.parse::<u32>().ok());
    match (parts.next(), parts.next(), parts.next()) {
        (Some(Some(major)), Some(Some(minor)), Some(Some(patch))) => {
            ((2, 11, 0)..(2, 12, 12)).contains(&(major, minor, patch))
        }
        _ => false,
    }
}

/// Probes the calling thread's default subscriber with a throwaway span.
fn check_tracing(findings: &mut Vec<Finding>) {
    let no_subscriber =
        tracing::dispatcher::get_default(|d| d.is::<tracing::subscriber::NoSubscriber>());
    if no_subscriber {
        findings.push(Finding::NoSubscriber);
        return;
    }
    let mut span = probe_span(tracing::Level::INFO);
    if span.is_disabled() {
        findings.push(Finding::SpansDisabled);
        // An ERROR span may still pass the filter and tell us about the
        // layer, the tracer and the sampler.
        span = probe_span(tracing::Level::ERROR);
        if span.is_disabled() {
            return;
        }
    }
    // A fresh root, whatever span is current. The error says whether an
    // OpenTelemetry layer is there at all.
    if let Err(SetParentError::LayerNotFound) = span.set_parent(Context::new()) {
        findings.push(Finding::NoOpenTelemetryLayer);
        return;
    }
    let span_context = span.context().span().span_context().clone();
    if span_context.is_valid() {
        if !span_context.is_sampled() {
            findings.push(Finding::NotSampling);
        }
        return;
    }
    // Invalid context. If the layer recorded the span, reading its context
    // started it and a new parent is refused: the tracer is a no-op.
    // Otherwise the layer never saw the span: its own filter excluded it.
    match span.set_parent(Context::new()) {
        Err(SetParentError::AlreadyStarted) => findings.push(Finding::NoopTracer),
        _ => findings.push(Finding::LayerFiltersSpans),
    }
}

fn probe_span(level: tracing::Level) -> Span {
    // `span!` needs a constant level; two call sites keep them distinct.
    if level == tracing::Level::ERROR {
        tracing::error_span!(
            target: TARGET,
            parent: None,
            "nats_otel.diagnose",
            otel.name = "nats_otel.diagnose",
        )
    } else {
        tracing::info_span!(
            target: TARGET,
            parent: None,
            "nats_otel.diagnose",
            otel.name = "nats_otel.diagnose",
        )
    }
}
