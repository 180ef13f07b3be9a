//! nats-server versions and what differs between them for propagation: the
//! `nats-server-harness` crate's `versions` module, re-exported.

pub use nats_server_harness::versions::*;
