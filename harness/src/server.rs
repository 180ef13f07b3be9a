//! [`NatsServer`]: one nats-server process (start, stop, kill, restart, readiness, health,
//! monitoring endpoints).

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::builder::Builder;
use crate::install::install_help;
use crate::net::{http_body, http_get, json_string_field, parse_ports, read_info, Ports, LOOPBACK};
use crate::versions::PINNED_SERVER;

/// How long a server gets to open its client port.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a standalone server gets to report healthy after its port opened.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a graceful stop may take before the process is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Lines of server log quoted in error messages.
const LOG_TAIL_LINES: usize = 60;

/// A `nats-server` child process with its own temporary store directory.
///
/// Dropping it kills the process, reaps it and removes the directory.
pub struct NatsServer {
    pub(crate) opts: Builder,
    pub(crate) binary: PathBuf,
    pub(crate) config_path: Option<PathBuf>,
    pub(crate) wait_healthy_on_start: bool,
    pub(crate) child: Option<Child>,
    /// Client port; fixed after the first start so restarts reuse it.
    pub(crate) port: u16,
    /// HTTP monitoring port; fixed after the first start.
    pub(crate) monitor_port: u16,
    /// The `INFO` line the server greeted with on its latest start.
    pub(crate) info: String,
    pub(crate) dir: tempfile::TempDir,
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
            let body = http_body(&response);
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

    pub(crate) fn spawn_and_wait(&mut self) -> Result<(), String> {
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
    pub(crate) fn failure(&self, what: &str) -> String {
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

impl NatsServer {
    /// One monitoring endpoint (e.g. `/varz`, `/leafz`, `/gatewayz`) as JSON.
    pub fn monitor_json(&self, path: &str) -> Result<serde_json::Value, String> {
        let response = http_get(self.monitor_port, path)?;
        let body = http_body(&response);
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
