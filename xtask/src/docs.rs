//! `cargo xtask doc`: the API docs built with `-D warnings`, then the doc tests.

use std::process::Command;

use crate::Result;
use crate::run::{cargo, cargo_bin, run};

/// Builds the docs (warnings denied) and runs the doc tests.
pub(crate) fn docs() -> Result {
    let mut cmd = Command::new(cargo_bin());
    cmd.args(["doc", "--workspace", "--no-deps", "--exclude", "xtask"])
        .env("RUSTDOCFLAGS", "-D warnings");
    run(&mut cmd)?;
    cargo(&["test", "--workspace", "--doc"])
}
