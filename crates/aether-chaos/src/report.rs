//! The report: one row per scenario, printed as a table and written as JSON to
//! `target/aether-chaos/report.json` (the shape is documented in docs/reliability.md).

use std::collections::BTreeMap;
use std::path::Path;

use crate::audit::Findings;
use crate::scenario::Fault;
use crate::world::Usage;

/// One scenario's outcome.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Row {
    /// The scenario.
    pub(crate) scenario: String,
    /// Nothing lost, doubled, altered or unanswered, every fault healed, memory bounded.
    pub(crate) passed: bool,
    /// Wall time of the scenario, seconds.
    pub(crate) seconds: f64,
    /// The audit's findings.
    #[serde(flatten)]
    pub(crate) findings: Findings,
    /// Errors the nodes reported (retried or final) and hostile inputs' outcomes, by kind.
    pub(crate) errors: BTreeMap<String, u64>,
    /// Each fault's detection and recovery times.
    pub(crate) faults: Vec<Fault>,
    /// Peak RSS of the Aether node processes (those running from the start), MiB.
    pub(crate) peak_rss_node_mib: f64,
    /// Peak RSS of the nats-server processes (until a restart), MiB.
    pub(crate) peak_rss_server_mib: f64,
    /// The largest late/early RSS ratio of a node process (see `Usage::rss_growth`).
    pub(crate) rss_growth: f64,
    /// The most open descriptors of a node process.
    pub(crate) peak_fds: u64,
    /// Why the scenario itself failed (a fault that did not heal, a step that errored).
    pub(crate) failure: Option<String>,
}

/// What a scenario produced, before it is judged.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// The audit's findings.
    pub(crate) findings: Findings,
    /// Errors by kind.
    pub(crate) errors: BTreeMap<String, u64>,
    /// The faults and their timings.
    pub(crate) faults: Vec<Fault>,
    /// Why the scenario failed, if it did.
    pub(crate) failure: Option<String>,
}

impl Row {
    /// Builds the row and decides whether it passed (memory is judged only when `judge_memory`).
    pub(crate) fn new(
        scenario: &str,
        seconds: f64,
        outcome: Outcome,
        usage: &BTreeMap<String, Usage>,
        judge_memory: bool,
    ) -> Self {
        let Outcome {
            findings,
            errors,
            faults,
            mut failure,
        } = outcome;
        let mib = |b: u64| b as f64 / f64::from(1 << 20);
        let nodes = usage.iter().filter(|(n, _)| n.starts_with("node-"));
        let servers = usage.iter().filter(|(n, _)| n.starts_with("nats-"));
        let peak_rss_node_mib = mib(nodes.clone().map(|(_, u)| u.peak_rss).max().unwrap_or(0));
        let peak_rss_server_mib = mib(servers.map(|(_, u)| u.peak_rss).max().unwrap_or(0));
        let rss_growth = nodes.clone().map(|(_, u)| u.rss_growth).fold(0.0, f64::max);
        let peak_fds = nodes.map(|(_, u)| u.peak_fds).max().unwrap_or(0);
        if judge_memory && rss_growth > MAX_GROWTH && failure.is_none() {
            failure = Some(format!(
                "a node's memory kept growing: late/early RSS {rss_growth:.2} > {MAX_GROWTH}"
            ));
        }
        if findings.acknowledged == 0 && failure.is_none() {
            failure = Some("no command was acknowledged".into());
        }
        Self {
            scenario: scenario.to_owned(),
            passed: failure.is_none() && findings.clean(),
            seconds,
            findings,
            errors,
            faults,
            peak_rss_node_mib,
            peak_rss_server_mib,
            rss_growth,
            peak_fds,
            failure,
        }
    }
}

impl Row {
    /// The fuzzing row: passed when every target passed (no audit, no acknowledgements).
    pub(crate) fn fuzz(seconds: f64, outcome: Outcome) -> Self {
        Self {
            scenario: "fuzz".into(),
            passed: outcome.failure.is_none(),
            seconds,
            findings: outcome.findings,
            errors: outcome.errors,
            faults: Vec::new(),
            peak_rss_node_mib: 0.0,
            peak_rss_server_mib: 0.0,
            rss_growth: 0.0,
            peak_fds: 0,
            failure: outcome.failure,
        }
    }
}

/// The most a node's RSS may grow from the second to the last quarter of a steady run.
const MAX_GROWTH: f64 = 1.5;

/// Prints the table to stdout.
pub(crate) fn print(rows: &[Row]) {
    println!(
        "\n{:<12} {:>9} {:>7} {:>8} {:>5} {:>5} {:>7} {:>8} {:>9} {:>9}  result",
        "scenario",
        "attempted",
        "acked",
        "verified",
        "lost",
        "dup",
        "errors",
        "faults",
        "worst rec",
        "node RSS"
    );
    for r in rows {
        let f = &r.findings;
        let errors: u64 = r.errors.values().sum();
        let worst = r.faults.iter().filter_map(|f| f.recover_ms).max();
        println!(
            "{:<12} {:>9} {:>7} {:>8} {:>5} {:>5} {:>7} {:>8} {:>9} {:>8.0}M  {}",
            r.scenario,
            f.attempted,
            f.acknowledged,
            f.verified,
            f.lost,
            f.duplicated,
            errors,
            r.faults.len(),
            worst.map_or("-".into(), |ms| format!("{:.1}s", ms as f64 / 1000.0)),
            r.peak_rss_node_mib,
            if r.passed { "pass" } else { "FAIL" },
        );
    }
    for r in rows {
        println!("\n{}:", r.scenario);
        for fault in &r.faults {
            println!(
                "  {:<55} detect {:>7}  recover {:>7}",
                fault.what,
                fault.detect_ms.map_or("-".into(), |ms| format!("{ms} ms")),
                fault.recover_ms.map_or("-".into(), |ms| format!("{ms} ms")),
            );
        }
        for (kind, n) in &r.errors {
            println!("  {n:>6}  {kind}");
        }
        for p in &r.findings.problems {
            println!("  problem: {p}");
        }
        if let Some(f) = &r.failure {
            println!("  FAILED: {f}");
        }
    }
}

/// Writes the rows as JSON to `path`.
pub(crate) fn write(rows: &[Row], quick: bool, path: &Path) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    let doc = serde_json::json!({ "quick": quick, "scenarios": rows });
    let text =
        serde_json::to_string_pretty(&doc).map_err(|e| format!("encoding the report: {e}"))?;
    std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))
}
