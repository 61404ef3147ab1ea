//! `cargo xtask chaos [--quick] [--only SCENARIO,...]`: Aether under faults, partitions, load
//! and hostile input (crates/aether-chaos), with nats-server provisioned first; the report is
//! printed and written to `target/aether-chaos/report.json` (docs/reliability.md).

use std::process::Command;

use crate::Result;
use crate::nats::nats;
use crate::run::{cargo_bin, run, step, target_dir};

/// Provisions nats-server, builds the chaos binary and runs its scenarios (`args` go to
/// `aether-chaos run`: `--quick`, `--only a,b`).
pub(crate) fn chaos(args: &[String]) -> Result {
    let bin = step("provision nats-server", nats)?;
    let report = target_dir().join("aether-chaos").join("report.json");
    step("chaos scenarios (crates/aether-chaos)", || {
        run(Command::new(cargo_bin())
            .args([
                "run",
                "--quiet",
                "-p",
                "aether-chaos",
                "--",
                "run",
                "--report",
            ])
            .arg(&report)
            .args(args)
            .env("NATS_SERVER_BIN", &bin))
    })
}
