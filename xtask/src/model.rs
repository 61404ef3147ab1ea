//! `cargo xtask model`: checks, draws or converts an EventStorming model with the `aether` CLI's
//! `model` commands (`crates/aether-cli`).

use std::env;
use std::process::Command;

use crate::Result;
use crate::run::{cargo_bin, run};

/// Runs `aether model ARGS` (file paths relative to where you are).
pub(crate) fn model(args: &[String]) -> Result {
    // `run` works from the workspace root: make the caller's relative paths absolute first.
    let here = env::current_dir().map_err(|e| format!("reading the current directory: {e}"))?;
    let args = args.iter().map(|a| {
        let path = here.join(a);
        if !a.starts_with('-') && path.exists() {
            path.display().to_string()
        } else {
            a.clone()
        }
    });
    let mut cmd = Command::new(cargo_bin());
    cmd.args([
        "run",
        "--quiet",
        "-p",
        "aether-cli",
        "--bin",
        "aether",
        "--",
        "model",
    ])
    .args(args);
    run(&mut cmd)
}
