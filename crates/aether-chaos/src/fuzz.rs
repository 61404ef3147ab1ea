//! Scenario 6, fuzzing: the property tests that feed arbitrary and damaged bytes to every
//! decoder of what arrives from the network, run with many more cases than the ordinary test
//! run (`PROPTEST_CASES`): event decoding (aether-core `wire`), subject and namespace encoding
//! (the store's actor tokens, `Namespace::storage_token`), the cluster's calls, answers and
//! handoff confirmations, and its KV records and shard map. cargo-fuzz needs a nightly
//! toolchain, which this project does not require; proptest with large case counts runs on
//! stable.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio::process::Command;

use crate::audit::Findings;
use crate::report::{Outcome, Row};
use crate::scenario::Plan;

/// Each fuzz target and the test-name filter that selects its properties.
const TARGETS: [(&str, &str); 5] = [
    ("event decoding (aether-core wire)", "wire::tests::"),
    ("namespace tokens (aether-core)", "namespace::"),
    (
        "actor subject tokens (the JetStream store's layout)",
        "layout::",
    ),
    (
        "cluster calls, answers, handoffs",
        "node::wire::tests::fuzz_",
    ),
    ("cluster KV records and maps", "record::tests::fuzz_"),
];

/// The package that only has benchmarks (left out, as `cargo xtask test` does).
const BENCH_ONLY: &str = "aether-runtime-bench";

/// Runs every target with `cases` cases per property.
pub(crate) async fn run(plan: Plan) -> Row {
    let cases: u64 = if plan.quick { 5_000 } else { 100_000 };
    let started = Instant::now();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut errors = BTreeMap::new();
    let mut failure = None;
    // One run of the library tests of the whole workspace, with every feature, as the test
    // step builds them: no rebuild, only the targets' filters.
    let filters: Vec<&str> = TARGETS.iter().map(|(_, filter)| *filter).collect();
    for (what, _) in TARGETS {
        eprintln!("  fuzz {what}: {cases} cases per property");
    }
    let run = Command::new(&cargo)
        .args(["test", "--quiet", "--workspace", "--all-features", "--lib"])
        .args(["--exclude", BENCH_ONLY, "--"])
        .args(&filters)
        .env("PROPTEST_CASES", cases.to_string())
        .kill_on_drop(true)
        .output();
    // Bounded like every other step: a hung property (or build) ends the scenario.
    let limit = Duration::from_secs(if plan.quick { 600 } else { 1200 });
    let output = match tokio::time::timeout(limit, run).await {
        Ok(output) => output,
        Err(_) => Err(std::io::Error::other(format!("no result within {limit:?}"))),
    };
    match output {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            *errors
                .entry("fuzz: a property failed".to_owned())
                .or_default() += 1;
            let text = String::from_utf8_lossy(&out.stdout);
            let failed: Vec<&str> = text
                .lines()
                .filter(|l| {
                    l.contains("FAILED") || l.contains("panicked") || l.contains("minimal failing")
                })
                .take(20)
                .collect();
            failure = Some(format!("fuzzing failed:\n{}", failed.join("\n")));
        }
        Err(e) => failure = Some(format!("running {cargo} test: {e}")),
    }
    let findings = Findings {
        attempted: cases * TARGETS.len() as u64,
        ..Findings::default()
    };
    let outcome = Outcome {
        findings,
        errors,
        faults: Vec::new(),
        failure,
    };
    Row::fuzz(started.elapsed().as_secs_f64(), outcome)
}
