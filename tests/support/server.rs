//! A real `nats-server` for the tests: the `nats-server-harness` workspace crate (`harness/`),
//! re-exported so tests keep writing `support::server::NatsServer`, `support::server::cluster`.

pub use nats_server_harness::*;
