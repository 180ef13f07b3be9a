//! Shared helpers for the integration tests.

pub mod server;
pub mod telemetry;
