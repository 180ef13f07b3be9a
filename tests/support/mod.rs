//! Shared helpers for the integration tests.

pub mod nats;
pub mod peers;
pub mod server;
pub mod telemetry;
pub mod versions;
pub mod wait;
