//! `cargo xtask test`: every test of the workspace, nats-server and the Python tools provisioned.

use std::path::Path;
use std::process::Command;

use crate::bench::BENCH_ONLY;
use crate::nats::nats;
use crate::python::python_tools;
use crate::run::{cargo_bin, run, step, target_dir};
use crate::{Result, prometheus};

/// Provisions nats-server and the Python tools, then runs the tests (`extra` goes to cargo test).
pub(crate) fn test(extra: &[String]) -> Result {
    let extra = extra.strip_prefix(&["--".to_owned()]).unwrap_or(extra);
    let bin = step("provision nats-server", nats)?;
    step("provision the Python test tools", python_tools)?;
    step("tests", || run_tests(&bin, extra))
}

/// Runs every test of the workspace against the nats-server at `nats_bin`.
pub(crate) fn run_tests(nats_bin: &Path, extra: &[String]) -> Result {
    let mut cmd = Command::new(cargo_bin());
    // The peer comparison crate only has benchmarks (clippy checks them; `xtask bench` runs
    // them): building its peers for a test run would only cost time. All features, so the
    // feature-gated parts (runtime models, the facade's examples and their unit tests) are
    // tested too.
    cmd.args([
        "test",
        "--workspace",
        "--all-targets",
        "--all-features",
        "--exclude",
        BENCH_ONLY,
    ])
    .args(extra)
    .env("NATS_SERVER_BIN", nats_bin)
    .env(
        "AETHER_PYTHON_PATH",
        target_dir().join("tools").join("python"),
    );
    if let Some(bin) = prometheus::prometheus() {
        cmd.env("PROMETHEUS_BIN", bin);
    }
    run(&mut cmd)?;
    // The bench crate's one tested target: the report builder (no peers, no benchmarks run).
    if extra.is_empty() {
        run(Command::new(cargo_bin()).args(["test", "-p", BENCH_ONLY, "--bin", "bench-report"]))?;
    }
    Ok(())
}
