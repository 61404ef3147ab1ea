//! Python as a client in another language: tests run small programs written from the project's
//! docs alone (nats-py, msgpack, xxhash) against real servers, to check that what Aether writes to
//! NATS can be read and written without Aether.
//!
//! The packages come from `cargo xtask python` (run by `cargo xtask ci` and `cargo xtask test`),
//! which installs them with pip into `target/tools/python`. The folder is found through
//! `AETHER_PYTHON_PATH`, or above the running test executable. A test that needs them and cannot
//! find them fails with a message that says how to get them.
//!
//! ```no_run
//! # async fn demo() -> Result<(), aether_testkit::python::PythonError> {
//! let mut cmd = aether_testkit::python::command("tests/python/observer.py")?;
//! let out = cmd.arg("nats://127.0.0.1:4222").output().await.expect("python runs");
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The modules every cross-language test may import.
pub const MODULES: [&str; 3] = ["nats", "msgpack", "xxhash"];

const HOW_TO_GET_IT: &str = "run `cargo xtask python` (it installs nats-py, msgpack and xxhash with pip \
     into target/tools/python), or set AETHER_PYTHON_PATH to a folder holding them";

/// Why Python cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum PythonError {
    /// No `python3` (or `python`) on `PATH`.
    #[error("no python3 on PATH: install Python 3.9 or newer; then {HOW_TO_GET_IT}")]
    NoPython,
    /// The packages are missing.
    #[error("the Python test packages are missing ({detail}); {HOW_TO_GET_IT}")]
    MissingPackages {
        /// What was looked at or what failed to import.
        detail: String,
    },
}

/// The Python interpreter and the folder holding the test packages. Found once per process.
pub fn environment() -> Result<(PathBuf, PathBuf), PythonError> {
    static FOUND: OnceLock<Result<(PathBuf, PathBuf), PythonError>> = OnceLock::new();
    FOUND.get_or_init(find).clone()
}

fn find() -> Result<(PathBuf, PathBuf), PythonError> {
    let python = ["python3", "python"]
        .into_iter()
        .find_map(crate::nats::which)
        .ok_or(PythonError::NoPython)?;
    let dir = std::env::var_os("AETHER_PYTHON_PATH")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .or_else(provisioned_dir)
        .ok_or_else(|| PythonError::MissingPackages {
            detail: "AETHER_PYTHON_PATH is unset and there is no target/tools/python".into(),
        })?;
    let check = std::process::Command::new(&python)
        .arg("-c")
        .arg(format!("import {}", MODULES.join(", ")))
        .env("PYTHONPATH", &dir)
        .output()
        .map_err(|e| PythonError::MissingPackages {
            detail: format!("running {}: {e}", python.display()),
        })?;
    if !check.status.success() {
        return Err(PythonError::MissingPackages {
            detail: format!(
                "importing {} from {} failed: {}",
                MODULES.join(", "),
                dir.display(),
                String::from_utf8_lossy(&check.stderr).trim()
            ),
        });
    }
    Ok((python, dir))
}

fn provisioned_dir() -> Option<PathBuf> {
    crate::nats::provisioned(Path::new("tools/python")).filter(|p| p.is_dir())
}

/// A command running `script` (a path) with the test packages importable and unbuffered output.
pub fn command(script: impl AsRef<Path>) -> Result<tokio::process::Command, PythonError> {
    let (python, dir) = environment()?;
    let mut cmd = tokio::process::Command::new(python);
    cmd.arg(script.as_ref())
        .env("PYTHONPATH", dir)
        .env("PYTHONUNBUFFERED", "1")
        .kill_on_drop(true);
    Ok(cmd)
}
