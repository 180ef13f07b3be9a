//! Real peers in other languages (tests/peers/): Python, Go and JavaScript
//! programs with their own NATS clients and OpenTelemetry SDKs, speaking
//! the command line and JSON lines described in tests/peers/README.md.
//!
//! `cargo xtask test` installs them and names them through environment
//! variables; without those the tests fail (never skip) saying how to get
//! them.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// How long a peer may take for its next line or to exit.
pub const PEER_WAIT: Duration = Duration::from_secs(30);

/// The python of the peers' venv (`target/peers-venv`).
pub const PEER_PYTHON_ENV: &str = "NATS_OTEL_PEER_PYTHON";
/// The Go peer's binary (`target/peers-go/peer`).
pub const PEER_GO_ENV: &str = "NATS_OTEL_PEER_GO";
/// The JavaScript peer's `node_modules` (`target/peers-js/node_modules`).
pub const PEER_JS_ENV: &str = "NATS_OTEL_PEER_NODE_MODULES";

/// A peer's language.
// Go and JavaScript peers only in `interop_peers` (JetStream).
#[cfg_attr(not(feature = "jetstream"), allow(dead_code))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// nats-py + opentelemetry-python (`tests/peers/peer.py`).
    Python,
    /// nats.go + OpenTelemetry Go (`tests/peers/go/main.go`).
    Go,
    /// nats.js + OpenTelemetry JS (`tests/peers/js/peer.js`).
    JavaScript,
}

impl Lang {
    pub fn name(self) -> &'static str {
        match self {
            Lang::Python => "python",
            Lang::Go => "go",
            Lang::JavaScript => "js",
        }
    }

    fn env(self) -> &'static str {
        match self {
            Lang::Python => PEER_PYTHON_ENV,
            Lang::Go => PEER_GO_ENV,
            Lang::JavaScript => PEER_JS_ENV,
        }
    }

    /// The path the test command put in this peer's environment variable.
    fn installed(self) -> PathBuf {
        let env = self.env();
        let Some(path) = std::env::var_os(env).filter(|v| !v.is_empty()) else {
            panic!(
                "{env} is not set. The {} peer is installed by the test command: run `cargo \
                 xtask test` (or `cargo xtask install-peers` and set the variables it prints)",
                self.name()
            );
        };
        let path = PathBuf::from(path);
        assert!(
            path.exists(),
            "{env}={} does not exist; run `cargo xtask install-peers`, which reinstalls it",
            path.display()
        );
        path
    }

    fn command(self) -> Command {
        let root = env!("CARGO_MANIFEST_DIR");
        match self {
            Lang::Python => {
                let mut c = Command::new(self.installed());
                c.arg(format!("{root}/tests/peers/peer.py"));
                c
            }
            Lang::Go => Command::new(self.installed()),
            Lang::JavaScript => {
                let mut c = Command::new("node");
                c.arg(format!("{root}/tests/peers/js/peer.js"))
                    .env("NODE_PATH", self.installed());
                c
            }
        }
    }
}

/// A running peer, killed on drop.
pub struct Peer {
    lang: Lang,
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Peer {
    /// Starts the `lang` peer with `args`.
    pub fn spawn<I, S>(lang: Lang, args: I) -> Peer
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        let mut child = lang
            .command()
            .args(args.into_iter().map(Into::into))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start the {} peer: {e} (JavaScript needs `node` on PATH)",
                    lang.name()
                )
            });
        let stdout = child.stdout.take().expect("piped stdout");
        Peer {
            lang,
            child,
            lines: BufReader::new(stdout).lines(),
        }
    }

    /// The peer's next JSON line.
    pub async fn json(&mut self) -> Value {
        let name = self.lang.name();
        let line = tokio::time::timeout(PEER_WAIT, self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("the {name} peer printed nothing within 30 s"))
            .unwrap_or_else(|e| panic!("read the {name} peer's output: {e}"))
            .unwrap_or_else(|| {
                panic!("the {name} peer exited before printing its result (its stderr is above)")
            });
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{name} peer printed {line:?}: {e}"))
    }

    /// Waits for `{"ready": true}`.
    pub async fn ready(&mut self) {
        let ready = self.json().await;
        assert_eq!(ready["ready"], true, "{} peer: {ready}", self.lang.name());
    }

    /// Waits for the peer to exit and asserts it succeeded.
    pub async fn exits_ok(mut self) {
        let name = self.lang.name();
        let status = tokio::time::timeout(PEER_WAIT, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("the {name} peer did not exit"))
            .unwrap();
        assert!(status.success(), "the {name} peer failed: {status}");
    }
}

/// `doc[key]` as a string, failing the test when it is missing.
pub fn str_field<'a>(doc: &'a Value, key: &str) -> &'a str {
    doc[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} missing in {doc}"))
}
