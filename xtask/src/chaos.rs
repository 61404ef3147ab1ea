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
        let mut cmd = Command::new(cargo_bin());
        cmd.args(["run", "--quiet", "-p", "aether-chaos", "--", "run"]);
        // The report goes under the target folder unless the caller names a place.
        if !args.iter().any(|a| a.starts_with("--report")) {
            cmd.arg("--report").arg(&report);
        }
        run(cmd.args(args).env("NATS_SERVER_BIN", &bin))
    })
}
