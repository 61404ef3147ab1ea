//! Provisioning the Python packages of the cross-language tests (`cargo xtask python`), with pip.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Result;
use crate::run::{run, target_dir, which};

/// What the cross-language tests import: a NATS client, MessagePack and XXH3, pinned.
const PYTHON_PACKAGES: [&str; 3] = ["nats-py==2.16.0", "msgpack==1.2.4", "xxhash==4.1.0"];

/// `python3 -m pip install --target dir packages`; `hint` ends the error when there is no Python.
pub(crate) fn pip_install(dir: &Path, packages: &[&str], hint: &str) -> Result {
    let python = ["python3", "python"]
        .into_iter()
        .find(|p| which(p).is_some())
        .ok_or_else(|| {
            format!("neither python3 nor python is on PATH; install Python 3 with pip ({hint})")
        })?;
    run(Command::new(python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--upgrade",
            "--target",
        ])
        .arg(dir)
        .args(packages))
    .map_err(|e| format!("pip failed: {e}"))
}

/// Installs [`PYTHON_PACKAGES`] with pip into `target/tools/python` (once per package list), for
/// the tests that play a client in another language. Returns the folder (a `PYTHONPATH` entry).
pub(crate) fn python_tools() -> Result<PathBuf> {
    let dir = target_dir().join("tools").join("python");
    let stamp = dir.join(format!(
        ".aether-{}",
        PYTHON_PACKAGES.join("_").replace(['=', '.'], "")
    ));
    if stamp.is_file() {
        return Ok(dir);
    }
    eprintln!(
        "python tools: installing {} with pip into {}",
        PYTHON_PACKAGES.join(" "),
        dir.display()
    );
    pip_install(&dir, &PYTHON_PACKAGES, "the cross-language tests need it")
        .map_err(|e| format!("installing the Python test tools: {e}"))?;
    std::fs::write(&stamp, PYTHON_PACKAGES.join("\n"))
        .map_err(|e| format!("writing {}: {e}", stamp.display()))?;
    Ok(dir)
}
