//! `cargo xtask bench`: the criterion benchmarks, with the peer comparison and its protoc.

use std::process::Command;

use crate::Result;
use crate::nats::nats;
use crate::run::{cargo_bin, run, step};

/// The crate that holds only the peer benchmarks.
pub(crate) const BENCH_ONLY: &str = "aether-runtime-bench";

/// Provisions nats-server, then runs the benchmarks (`extra` goes to cargo bench).
pub(crate) fn bench(extra: &[String]) -> Result {
    let extra = extra.strip_prefix(&["--".to_owned()]).unwrap_or(extra);
    let bin = step("provision nats-server", nats)?;
    step("benchmarks", || {
        let mut cmd = Command::new(cargo_bin());
        cmd.args(["bench", "--benches"]);
        // The peer comparison (eventsourced-nats) is part of the bench crate's runs.
        let bench_crate = extra.iter().any(|a| a == BENCH_ONLY)
            || !extra
                .iter()
                .any(|a| a == "-p" || a.starts_with("--package"));
        if bench_crate {
            cmd.args(["--features", &format!("{BENCH_ONLY}/peer")]);
            with_protoc(&mut cmd)?;
        }
        if !extra
            .iter()
            .any(|a| a == "-p" || a.starts_with("--package"))
        {
            cmd.arg("--workspace");
        }
        cmd.args(extra).env("NATS_SERVER_BIN", &bin);
        run(&mut cmd)
    })
}

/// Points `PROTOC` at a protoc binary (eventsourced-nats, a peer in the benchmarks, compiles a
/// .proto file when built): the caller's `PROTOC` if set, else the one shipped in the
/// `protoc-bin-vendored` crate, so nothing has to be installed.
pub(crate) fn with_protoc(cmd: &mut Command) -> Result {
    if std::env::var_os("PROTOC").is_none() {
        let path = protoc_bin_vendored::protoc_bin_path()
            .map_err(|e| format!("no protoc for this platform in protoc-bin-vendored ({e}); set PROTOC to a protoc binary"))?;
        cmd.env("PROTOC", path);
    }
    Ok(())
}
