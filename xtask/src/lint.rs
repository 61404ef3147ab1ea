//! `cargo xtask lint`: the fmt check and clippy with `-D warnings` on every target.

use std::process::Command;

use crate::Result;
use crate::bench::with_protoc;
use crate::run::{cargo, cargo_bin, run, step};

/// The fmt check, then clippy.
pub(crate) fn lint() -> Result {
    step("fmt check", || cargo(&["fmt", "--all", "--check"]))?;
    step("clippy (all targets, -D warnings)", clippy)
}

/// Clippy on every target with every feature, warnings denied.
pub(crate) fn clippy() -> Result {
    // All features include the bench crate's `peer`, whose eventsourced-nats build needs protoc.
    let mut cmd = Command::new(cargo_bin());
    cmd.args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--all-features",
        "--",
        "-D",
        "warnings",
    ]);
    with_protoc(&mut cmd)?;
    run(&mut cmd)
}
