//! Topologies beyond one cluster, on loopback: a leafnode (hub + leaf) and gateways (two
//! clusters joined by gateways), and waiting for interest to cross a link.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::cluster::{wait_meta_agreement, CLUSTER_HEALTH_TIMEOUT};
use crate::net::{free_ports, ProbeConnection, LOOPBACK};
use crate::server::NatsServer;

/// How long a leafnode or gateway link gets to come up and carry a message.
const LINK_TIMEOUT: Duration = Duration::from_secs(15);

/// A hub and a leaf connected to it, both on loopback, with the link up and carrying
/// messages both ways; panics with the logs if not.
///
/// * The hub (`server_name: hub`) is a standalone JetStream server that accepts leafnode
///   connections:
///
///   ```text
///   leafnodes { listen: "127.0.0.1:-1" }
///   ```
///
/// * The leaf (`server_name: leaf`) runs **without** JetStream and solicits the hub's
///   leafnode port (read from the hub's `/varz`):
///
///   ```text
///   leafnodes { remotes: [ { url: "nats-leaf://127.0.0.1:<hub leafnode port>" } ] }
///   ```
///
///   With no JetStream of its own, the leaf forwards JetStream API requests
///   (`$JS.API.>`, to which the hub subscribes across the link) and publishes to
///   the hub's streams: a JetStream client connected to the leaf uses the hub's
///   JetStream with no domain or API prefix.
///
/// Returned once both `/leafz` list the connection and a probe message went leaf → hub and
/// hub → leaf (see [`wait_interest_propagated`], which tests call again once their own
/// subscriptions exist). The leafnode port is ephemeral, so a restarted hub listens on
/// another one: this pair is not meant for restart tests.
pub fn leafnode_pair() -> (NatsServer, NatsServer) {
    try_leafnode_pair().unwrap_or_else(|e| panic!("{e}"))
}

/// Like [`leafnode_pair`], returning the reason instead of panicking.
pub fn try_leafnode_pair() -> Result<(NatsServer, NatsServer), String> {
    let hub = NatsServer::builder()
        .server_name("hub")
        .config("leafnodes { listen: \"127.0.0.1:-1\" }\n")
        .wait_healthy(true)
        .try_start()?;
    let leaf_port = hub.leafnode_port()?;
    let leaf = NatsServer::builder()
        .server_name("leaf")
        .config(format!(
            "leafnodes {{ remotes: [ {{ url: \"nats-leaf://{LOOPBACK}:{leaf_port}\" }} ] }}\n"
        ))
        .without_jetstream()
        .wait_healthy(true)
        .try_start()?;
    let deadline = Instant::now() + LINK_TIMEOUT;
    wait_leafnode_link(&hub, &leaf, deadline)?;
    wait_interest_propagated(&leaf, &hub, remaining(deadline))?;
    wait_interest_propagated(&hub, &leaf, remaining(deadline))?;
    Ok((hub, leaf))
}

/// Two one-server clusters, `A` (`server_name: a1`) and `B` (`b1`), joined by gateways, both
/// WITHOUT JetStream (core NATS only; see [`gateway_pair_jetstream`]); panics with the logs
/// if the link does not come up.
///
/// ```text
/// A: gateway { name: "A", listen: "127.0.0.1:-1" }
/// B: gateway { name: "B", listen: "127.0.0.1:-1",
///              gateways: [ { name: "A", url: "nats://127.0.0.1:<A's gateway port>" } ] }
/// ```
///
/// Only B names A; A connects back to B on the gateway URL B announces (implicit gateway).
/// Returned once both `/gatewayz` show an outbound and an inbound connection to the other
/// cluster and a probe message went B → A and A → B. Gateways propagate interest per
/// account (2.15 puts `$G` in interest-only mode at once): a test must call
/// [`wait_interest_propagated`] after making its subscriptions and before publishing.
pub fn gateway_pair() -> (NatsServer, NatsServer) {
    try_gateway_pair().unwrap_or_else(|e| panic!("{e}"))
}

/// Like [`gateway_pair`], returning the reason instead of panicking.
pub fn try_gateway_pair() -> Result<(NatsServer, NatsServer), String> {
    let a = NatsServer::builder()
        .server_name("a1")
        .config(gateway_config("A", None))
        .without_jetstream()
        .wait_healthy(true)
        .try_start()?;
    let b = NatsServer::builder()
        .server_name("b1")
        .config(gateway_config("B", Some(("A", a.gateway_port()?))))
        .without_jetstream()
        .wait_healthy(true)
        .try_start()?;
    link_gateways(a, b)
}

/// Like [`gateway_pair`], with JetStream on both A and B: a stream created from a client of
/// A is placed in A, and a client of B publishes into it across the gateway.
///
/// JetStream cannot run on A alone. With a gateway configured, a server runs JetStream in
/// clustered mode, which refuses to start without a configured route ("JetStream cluster
/// requires configured routes or solicited leafnode for the system account"); and a
/// one-server cluster given a route to itself expects a meta group of at least two peers
/// (`cluster_size: 2`), so with JetStream on A only no meta leader is ever elected. Each
/// server is therefore a one-node cluster with a route to itself, and the two form one
/// two-peer JetStream meta group across the gateway:
///
/// ```text
/// A: -js --cluster_name A --cluster nats://127.0.0.1:<p> --routes nats://127.0.0.1:<p>
///    gateway { name: "A", listen: "127.0.0.1:-1" }
/// B: likewise with cluster B, plus gateways: [ { name: "A", url: ... } ]
/// ```
///
/// Returned once the gateway carries messages both ways, both servers' `/healthz` are OK
/// and both name the same meta leader, which lists the other server as a current, online
/// peer (`wait_meta_agreement` in `cluster.rs`). The election is Raft's: measured 1.1 to 9 s
/// after start on 2.15.1 and 2.10.26, either at once when the link comes up or after an
/// election timeout (4 to 9 s). Route ports are reserved before the servers start, so like
/// [`cluster()`](crate::cluster()) this tries up to three times with fresh ports.
pub fn gateway_pair_jetstream() -> (NatsServer, NatsServer) {
    try_gateway_pair_jetstream().unwrap_or_else(|e| panic!("{e}"))
}

/// Like [`gateway_pair_jetstream`], returning the reason instead of panicking.
pub fn try_gateway_pair_jetstream() -> Result<(NatsServer, NatsServer), String> {
    let mut last_error = String::new();
    for _ in 0..3 {
        let attempt = free_ports(2).and_then(|routes| {
            let a = NatsServer::builder()
                .server_name("a1")
                .cluster("A", routes[0], &routes[..1])
                .config(gateway_config("A", None))
                .try_start()?;
            let b = NatsServer::builder()
                .server_name("b1")
                .cluster("B", routes[1], &routes[1..])
                .config(gateway_config("B", Some(("A", a.gateway_port()?))))
                .try_start()?;
            let (a, b) = link_gateways(a, b)?;
            let deadline = Instant::now() + CLUSTER_HEALTH_TIMEOUT;
            a.wait_healthy(remaining(deadline))?;
            b.wait_healthy(remaining(deadline))?;
            wait_meta_agreement(&[&a, &b], deadline)?;
            Ok((a, b))
        });
        match attempt {
            Ok(pair) => return Ok(pair),
            Err(e) => {
                eprintln!("gateway pair with JetStream did not come up, starting another: {e}");
                last_error = e;
            }
        }
    }
    Err(format!(
        "could not start two JetStream clusters joined by gateways: {last_error}"
    ))
}

/// The `gateway {}` block of cluster `name`, soliciting `remote` (name, gateway port).
fn gateway_config(name: &str, remote: Option<(&str, u16)>) -> String {
    let gateways = match remote {
        Some((remote, port)) => {
            format!(", gateways: [ {{ name: \"{remote}\", url: \"nats://{LOOPBACK}:{port}\" }} ]")
        }
        None => String::new(),
    };
    format!("gateway {{ name: \"{name}\", listen: \"{LOOPBACK}:-1\"{gateways} }}\n")
}

/// Waits for the gateway link between `a` and `b`, then for messages both ways.
fn link_gateways(a: NatsServer, b: NatsServer) -> Result<(NatsServer, NatsServer), String> {
    let deadline = Instant::now() + LINK_TIMEOUT;
    wait_gateway_link(&a, "A", &b, "B", deadline)?;
    wait_interest_propagated(&b, &a, remaining(deadline))?;
    wait_interest_propagated(&a, &b, remaining(deadline))?;
    Ok((a, b))
}

fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// Polls `/leafz` on both servers until each lists a leafnode connection.
fn wait_leafnode_link(
    hub: &NatsServer,
    leaf: &NatsServer,
    deadline: Instant,
) -> Result<(), String> {
    loop {
        let hub_links = hub.monitor_json("/leafz").map(|z| z["leafnodes"].as_u64());
        let leaf_links = leaf.monitor_json("/leafz").map(|z| z["leafnodes"].as_u64());
        if matches!((&hub_links, &leaf_links), (Ok(Some(h)), Ok(Some(l))) if *h >= 1 && *l >= 1) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "no leafnode link within {LINK_TIMEOUT:?} (hub /leafz: {hub_links:?}, leaf \
                 /leafz: {leaf_links:?})\n{}\n{}",
                hub.failure("hub"),
                leaf.failure("leaf")
            ));
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `/gatewayz` on both servers until each has an outbound and an inbound gateway
/// connection to the other's cluster.
fn wait_gateway_link(
    a: &NatsServer,
    a_name: &str,
    b: &NatsServer,
    b_name: &str,
    deadline: Instant,
) -> Result<(), String> {
    let linked = |server: &NatsServer, other: &str| -> Result<bool, String> {
        let z = server.monitor_json("/gatewayz")?;
        let outbound = z["outbound_gateways"][other]["connection"].is_object();
        let inbound = z["inbound_gateways"][other]
            .as_array()
            .is_some_and(|c| !c.is_empty());
        Ok(outbound && inbound)
    };
    loop {
        let a_up = linked(a, b_name);
        let b_up = linked(b, a_name);
        if matches!((&a_up, &b_up), (Ok(true), Ok(true))) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "no gateway link between {a_name} and {b_name} within {LINK_TIMEOUT:?} \
                 ({a_name} linked: {a_up:?}, {b_name} linked: {b_up:?})\n{}\n{}",
                a.failure(a_name),
                b.failure(b_name)
            ));
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until a message published on `from` reaches a subscriber on `to`: the interest
/// `to` had when this was called is then known on `from`.
///
/// Subscribes (raw protocol, its own connection) to a fresh probe subject on `to`, then
/// publishes a probe on `from` every 50 ms until one arrives. Leafnodes (`LS+`) and
/// gateways in interest-only mode (`RS+`) send a server's interest over the link in the
/// order its subscriptions were registered, so once the probe's interest is known on
/// `from`, so is every subscription registered on `to` before it (a test's subscriptions,
/// after a round trip on their connection; a stream's subjects, once it was created).
/// Gateways in optimistic mode (2.10 for `$G`) send without waiting for interest.
pub fn wait_interest_propagated(
    from: &NatsServer,
    to: &NatsServer,
    timeout: Duration,
) -> Result<(), String> {
    static PROBES: AtomicUsize = AtomicUsize::new(0);
    let deadline = Instant::now() + timeout;
    let subject = format!(
        "harness.probe.{}.{}",
        std::process::id(),
        PROBES.fetch_add(1, Ordering::Relaxed)
    );
    let fail = |what: String| {
        format!(
            "{what}\n{}\n{}",
            from.failure("publishing side"),
            to.failure("subscribing side")
        )
    };
    let mut subscriber = ProbeConnection::open(to.port).map_err(&fail)?;
    subscriber
        .send(&format!("SUB {subject} 1\r\nPING\r\n"))
        .map_err(&fail)?;
    if !subscriber.wait_for(b"PONG\r\n", deadline).map_err(&fail)? {
        return Err(fail(format!(
            "the probe subscription on port {} was not confirmed within {timeout:?}",
            to.port
        )));
    }
    let mut publisher = ProbeConnection::open(from.port).map_err(&fail)?;
    let mut sent = 0;
    loop {
        publisher
            .send(&format!("PUB {subject} 5\r\nprobe\r\n"))
            .map_err(&fail)?;
        sent += 1;
        let wait_until = deadline.min(Instant::now() + Duration::from_millis(50));
        if subscriber.wait_for(b"MSG ", wait_until).map_err(&fail)? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(fail(format!(
                "none of {sent} probes on {subject} from port {} reached port {} within \
                 {timeout:?}",
                from.port, to.port
            )));
        }
    }
}
