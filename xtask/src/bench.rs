//! `cargo xtask bench`: the criterion benchmarks, with the peer comparison and its protoc; with
//! `--report`, the benchmark report built from the rows they record.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use crate::Result;
use crate::nats::nats;
use crate::run::{cargo_bin, run, step, target_dir};

/// The crate that holds only the peer benchmarks (and the report builder).
pub(crate) const BENCH_ONLY: &str = "aether-runtime-bench";

/// Provisions nats-server, then runs the benchmarks (`extra` goes to cargo bench). `--report`
/// (before any `--`) also builds target/aether-bench/report.json and report.svg from the rows
/// the benchmarks record; `--quick` runs them with smaller sizes and fewer rounds.
pub(crate) fn bench(extra: &[String]) -> Result {
    let extra = extra.strip_prefix(&["--".to_owned()]).unwrap_or(extra);
    let ours = extra.iter().position(|a| a == "--").unwrap_or(extra.len());
    let flag = |name: &str| extra[..ours].iter().any(|a| a == name);
    let (report, quick) = (flag("--report"), flag("--quick"));
    let extra: Vec<String> = extra
        .iter()
        .enumerate()
        .filter(|(i, a)| *i >= ours || (*a != "--report" && *a != "--quick"))
        .map(|(_, a)| a.clone())
        .collect();
    let bin = step("provision nats-server", nats)?;
    let out = target_dir().join("aether-bench");
    let rows = out.join("rows.jsonl");
    if report {
        std::fs::create_dir_all(&out)
            .map_err(|e| format!("cannot create {}: {e}", out.display()))?;
        match std::fs::remove_file(&rows) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(format!("cannot remove the old {}: {e}", rows.display()));
            }
            _ => {}
        }
    }
    let started = Instant::now();
    let benches = step(
        if quick {
            "benchmarks (quick)"
        } else {
            "benchmarks"
        },
        || {
            let mut cmd = Command::new(cargo_bin());
            cmd.args(["bench", "--benches"]);
            if report {
                // One failing benchmark must not hide the others' rows.
                cmd.arg("--no-fail-fast").env("AETHER_BENCH_ROWS", &rows);
            }
            if quick {
                cmd.env("AETHER_BENCH_QUICK", "1");
            }
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
            cmd.args(&extra).env("NATS_SERVER_BIN", &bin);
            run(&mut cmd)
        },
    );
    if !report {
        return benches;
    }
    // Built even when a benchmark failed: the report lists the rows it lacks.
    let built = step("benchmark report", || {
        build_report(&rows, &out, &bin, quick)
    });
    eprintln!(
        "benchmarks and report{}: {:.1?}",
        if quick { " (quick)" } else { "" },
        started.elapsed()
    );
    benches.and(built)
}

/// Runs `aether-runtime-bench`'s `bench-report` on the recorded rows (xtask itself stays free of
/// dependencies; the chart needs a plotting crate).
fn build_report(rows: &Path, out: &Path, nats_bin: &Path, quick: bool) -> Result {
    let mut cmd = Command::new(cargo_bin());
    cmd.args([
        "run",
        "--quiet",
        "-p",
        BENCH_ONLY,
        "--bin",
        "bench-report",
        "--",
    ])
    .arg("--rows")
    .arg(rows)
    .arg("--out")
    .arg(out)
    .env("NATS_SERVER_BIN", nats_bin);
    if quick {
        cmd.arg("--quick");
    }
    run(&mut cmd)
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
