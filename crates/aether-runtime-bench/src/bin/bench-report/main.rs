//! `bench-report`: builds the benchmark report from the rows the benchmarks recorded.
//!
//! ```text
//! bench-report [--rows FILE] [--out DIR] [--quick]
//! ```
//!
//! Reads the JSON lines at `--rows` (default `target/aether-bench/rows.jsonl`), judges each row
//! against its target (`targets.rs`: design.md section 6 and issue 25), and writes
//! `report.json` and `report.svg` into `--out` (default `target/aether-bench`), then prints the
//! table as markdown. `cargo xtask bench --report [--quick]` runs the benchmarks and then this.
//! Rows that do not parse, and targets no row was recorded for, are listed in the report and on
//! stderr; a malformed row makes the exit status non-zero.

use std::path::PathBuf;
use std::process::ExitCode;

mod chart;
mod machine;
mod report;
mod rows;
mod targets;

use report::Report;

struct Args {
    rows: PathBuf,
    out: PathBuf,
    quick: bool,
}

fn args() -> Result<Args, String> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let out = target.join("aether-bench");
    let mut args = Args {
        rows: out.join("rows.jsonl"),
        out,
        quick: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--rows" => args.rows = it.next().ok_or("--rows needs a file")?.into(),
            "--out" => args.out = it.next().ok_or("--out needs a folder")?.into(),
            "--quick" => args.quick = true,
            other => {
                return Err(format!(
                    "unknown argument `{other}`; usage: bench-report [--rows FILE] [--out DIR] [--quick]"
                ));
            }
        }
    }
    Ok(args)
}

fn run() -> Result<bool, String> {
    let args = args()?;
    let (rows, problems) = rows::read(&args.rows)?;
    if rows.is_empty() && problems.is_empty() {
        return Err(format!(
            "{} holds no rows: no benchmark recorded one (did they run with `--bench`?)",
            args.rows.display()
        ));
    }
    let report = Report::new(
        rows,
        problems,
        args.quick,
        machine::machine(),
        machine::server_version(),
        machine::now_utc(),
    );
    let malformed = !report.problems.is_empty();
    std::fs::create_dir_all(&args.out)
        .map_err(|e| format!("cannot create {}: {e}", args.out.display()))?;
    let json_path = args.out.join("report.json");
    let json = serde_json::to_string_pretty(&report.to_json())
        .map_err(|e| format!("cannot encode the report: {e}"))?;
    std::fs::write(&json_path, json + "\n")
        .map_err(|e| format!("cannot write {}: {e}", json_path.display()))?;
    let svg_path = args.out.join("report.svg");
    chart::draw(&report, &svg_path)?;

    println!("{}", report.to_markdown());
    let judged = report.rows.iter().filter(|j| j.met.is_some()).count();
    let met = report.rows.iter().filter(|j| j.met == Some(true)).count();
    eprintln!(
        "benchmark report: {} rows, {met} of {judged} targets met, {} targets not measured{}",
        report.rows.len(),
        report.missing.len(),
        if report.quick { " (quick run)" } else { "" }
    );
    for t in &report.missing {
        eprintln!(
            "  not measured: `{}` (target {}, {})",
            t.id,
            t.show(),
            t.source
        );
    }
    for p in &report.problems {
        eprintln!("  problem: {p}");
    }
    eprintln!("wrote {} and {}", json_path.display(), svg_path.display());
    Ok(!malformed)
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("bench-report: some rows were malformed (listed above)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("bench-report: {e}");
            ExitCode::FAILURE
        }
    }
}
