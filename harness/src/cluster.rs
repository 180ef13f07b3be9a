//! JetStream clusters on loopback: [`cluster`], and waiting for the meta group to settle.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::net::{free_ports, http_body, http_get};
use crate::server::NatsServer;

/// How long a cluster gets to elect a JetStream meta leader.
pub(crate) const CLUSTER_HEALTH_TIMEOUT: Duration = Duration::from_secs(20);

/// Starts an `n`-node JetStream cluster on loopback and waits until every node reports
/// healthy and the JetStream meta leader sees every other node as a current peer. A cluster
/// that does not form within 20 s is torn down and started again (three tries); then this
/// panics with the logs.
///
/// Nodes are named `n1`..`nN`, share a cluster name unique to this call, and each has its
/// own client port, route port and store dir; every node routes to all nodes. Creating a
/// replicated stream right afterwards may still see a leader change: retry for a few seconds.
pub fn cluster(n: usize) -> Vec<NatsServer> {
    try_cluster(n).unwrap_or_else(|e| panic!("{e}"))
}

/// Like [`cluster`], returning the reason instead of panicking.
pub fn try_cluster(n: usize) -> Result<Vec<NatsServer>, String> {
    assert!(
        n >= 2,
        "a JetStream cluster needs at least 2 nodes, got {n}"
    );
    static CLUSTERS: AtomicUsize = AtomicUsize::new(0);
    // Route ports are picked before the servers start (each node must know all of them),
    // so another process could take one in between; try again with new ports if so.
    let mut last_error = String::new();
    for _ in 0..3 {
        let name = format!(
            "harness_{}_{}",
            std::process::id(),
            CLUSTERS.fetch_add(1, Ordering::Relaxed)
        );
        let route_ports = free_ports(n)?;
        let mut nodes = Vec::with_capacity(n);
        let mut failed = None;
        for (i, port) in route_ports.iter().enumerate() {
            let node = NatsServer::builder()
                .server_name(format!("n{}", i + 1))
                .cluster(name.clone(), *port, &route_ports)
                .try_start();
            match node {
                Ok(node) => nodes.push(node),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failed {
            last_error = e;
            continue;
        }
        let deadline = Instant::now() + CLUSTER_HEALTH_TIMEOUT;
        let formed = nodes
            .iter()
            .try_for_each(|node| {
                node.wait_healthy(deadline.saturating_duration_since(Instant::now()))
            })
            .and_then(|()| wait_meta_peers(&nodes, deadline));
        match formed {
            Ok(()) => return Ok(nodes),
            // Seen rarely on a loaded 2-core machine: a node that never
            // becomes a current peer. Start over with fresh nodes and ports.
            Err(e) => {
                eprintln!("cluster {name} did not form, starting another: {e}");
                last_error = e;
            }
        }
    }
    Err(format!("could not start a {n}-node cluster: {last_error}"))
}

/// Waits until the JetStream meta leader sees every other node as a current
/// peer. `/healthz` is OK as soon as a majority has a leader, but placing an
/// R`n` asset needs all `n` peers ("no suitable peers for placement"
/// otherwise), which on a loaded machine can take a while longer.
fn wait_meta_peers(nodes: &[NatsServer], deadline: Instant) -> Result<(), String> {
    let n = nodes.len();
    let mut last = String::from("no meta leader reported its replicas yet");
    loop {
        for node in nodes {
            let Ok(response) = http_get(node.monitor_port(), "/jsz") else {
                continue;
            };
            let body = http_body(&response);
            let Ok(jsz) = serde_json::from_str::<serde_json::Value>(body) else {
                continue;
            };
            let meta = &jsz["meta_cluster"];
            // Only the leader lists its replicas.
            if let Some(replicas) = meta["replicas"].as_array() {
                let current = replicas
                    .iter()
                    .filter(|r| r["current"].as_bool() == Some(true))
                    .count();
                if current + 1 >= n {
                    return Ok(());
                }
                last = format!("meta leader sees {current} of {} peers current", n - 1);
            }
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the {n}-node cluster did not form within {CLUSTER_HEALTH_TIMEOUT:?}: {last}"
            ));
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until every node names the same JetStream meta leader and that leader lists every
/// other node, by server name, as a current peer that is not offline.
///
/// Stricter than [`wait_meta_peers`]: when the gateway link comes up, the two meta peers
/// may elect a leader within milliseconds, and 2.10.26 then briefly answers `/healthz` OK
/// on the follower while its `/jsz` shows no leader, and the leader lists the follower as
/// current but `offline`, its name unknown. Creating a stream placed in the follower's
/// cluster fails then with "no suitable peers for placement" (10005).
pub(crate) fn wait_meta_agreement(nodes: &[&NatsServer], deadline: Instant) -> Result<(), String> {
    let mut last;
    loop {
        match meta_agreement(nodes) {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the JetStream meta group did not settle within {CLUSTER_HEALTH_TIMEOUT:?}: {last}"
            ));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn meta_agreement(nodes: &[&NatsServer]) -> Result<(), String> {
    let mut leaders = Vec::with_capacity(nodes.len());
    let mut metas = Vec::with_capacity(nodes.len());
    for node in nodes {
        let meta = node.monitor_json("/jsz")?["meta_cluster"].take();
        leaders.push(meta["leader"].as_str().unwrap_or_default().to_owned());
        metas.push(meta);
    }
    if leaders[0].is_empty() || leaders.iter().any(|l| *l != leaders[0]) {
        return Err(format!(
            "the nodes name different meta leaders: {leaders:?}"
        ));
    }
    let leader = &leaders[0];
    let Some(index) = nodes.iter().position(|n| n.server_name() == Some(leader)) else {
        return Err(format!("the meta leader {leader} is none of the nodes"));
    };
    let replicas = metas[index]["replicas"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for node in nodes {
        let name = node.server_name().unwrap_or_default();
        if name == leader {
            continue;
        }
        let ready = replicas.iter().any(|r| {
            r["name"].as_str() == Some(name)
                && r["current"].as_bool() == Some(true)
                && r["offline"].as_bool() != Some(true)
        });
        if !ready {
            return Err(format!(
                "meta leader {leader} does not list {name} as a current, online peer: {}",
                metas[index]["replicas"]
            ));
        }
    }
    Ok(())
}
