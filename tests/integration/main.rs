//! The integration tests: one test binary, one module per behaviour, each
//! test against its own real nats-server (`support::server`).
//!
//! Tests share this process, so none of them may set process-wide state:
//! no `opentelemetry::global::set_*` (text-map propagator, tracer or meter
//! provider), no `tracing::subscriber::set_global_default`, no environment
//! variables. Every test here relies on the global text-map propagator being
//! OpenTelemetry's default no-op, which makes the crate fall back to W3C
//! Trace Context and Baggage (`noop_global_propagator` asserts it). Tests
//! that set the global propagator live in `tests/global_propagator/`.
//!
//! `support::telemetry::Telemetry::install` and the tests' own subscribers
//! use `tracing::subscriber::set_default`, which is per thread: libtest runs
//! each test on its own thread and `#[tokio::test]` runs it on a
//! current-thread runtime there, so a test's spans and events never reach
//! another test's subscriber. Metrics go through the `SdkMeterProvider` a
//! test hands to the layer and the adapter (`.meter_provider(&provider)`).
//!
//! Run one module with a filter on the test path, e.g.
//! `cargo test --all-features --test integration -- propagation_core::`.

#[path = "../support/mod.rs"]
mod support;

#[cfg(feature = "jetstream")]
mod bad_input;
#[cfg(feature = "cli")]
mod cli_doctor;
#[cfg(feature = "cli")]
mod cli_inspect;
#[cfg(feature = "jetstream")]
mod cluster;
#[cfg(all(feature = "cli", feature = "hops"))]
mod doctor_hops;
mod extraction_reasons;
#[cfg(feature = "kv")]
mod fallback_kv;
mod fallback_payload;
mod fuzz_regressions;
#[cfg(feature = "jetstream")]
mod interop_peers;
mod interop_python;
mod invalid_context_warning;
#[cfg(feature = "jetstream")]
mod messaging_semantics;
mod messaging_spans;
#[cfg(feature = "kv")]
mod metrics;
mod noop_global_propagator;
#[cfg(feature = "jetstream")]
mod otel_tracer;
mod propagation_core;
#[cfg(feature = "jetstream")]
mod propagation_jetstream;
mod proptest_roundtrip;
#[cfg(feature = "jetstream")]
mod restart;
#[cfg(feature = "jetstream")]
mod seed_jetstream;
mod server_harness;
#[cfg(all(feature = "hops", feature = "jetstream"))]
mod server_hops;
#[cfg(feature = "jetstream")]
mod server_versions;
#[cfg(feature = "jetstream")]
mod telemetry_conventions;
mod topologies;
