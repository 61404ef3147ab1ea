//! `aether-chaos`: Aether under faults, partitions, load and hostile input, run by
//! `cargo xtask chaos` (see docs/reliability.md).
//!
//! ```text
//! aether-chaos run [--quick] [--only SCENARIO,...] [--steady SECS] [--report PATH]
//! aether-chaos node --urls .. --cluster .. --node .. --stream ..    (a node process; run spawns them)
//! ```
//!
//! Each scenario starts a 3-server NATS cluster (aether-testkit) and three Aether node processes
//! (this binary's `node` mode: the bank account actor on an R3 JetStream store, an R3 cluster
//! bucket), puts load on the cluster from every node, injects its faults, stops the load, and
//! audits the stream independently of the code under test ([`audit`]). The report lists per
//! scenario what was attempted, acknowledged, verified, lost and doubled, errors by kind, each
//! fault's time to detect and to recover, and peak memory. The exit status is non-zero when any
//! scenario lost, doubled or altered an acknowledged command, left a call unanswered, folded a
//! state wrongly, or did not heal.

mod audit;
mod bank;
mod fuzz;
mod hostile;
mod ledger;
mod node;
mod report;
mod scenario;
mod world;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};

use crate::report::{Outcome, Row};
use crate::scenario::{ALL, Plan};
use crate::world::World;

#[derive(Debug, Parser)]
#[command(
    name = "aether-chaos",
    about = "Aether under faults, partitions, load and hostile input"
)]
struct Cli {
    #[command(subcommand)]
    command: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Run the scenarios and write the report.
    Run {
        /// The short version (CI): under 5 minutes.
        #[arg(long)]
        quick: bool,
        /// Only these scenarios (comma-separated).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// How long the steady scenario runs, seconds (a soak: hours).
        #[arg(long)]
        steady: Option<u64>,
        /// Where to write the JSON report.
        #[arg(long, default_value = "target/aether-chaos/report.json")]
        report: PathBuf,
    },
    /// One Aether node process (spawned by `run`).
    Node(node::NodeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("aether-chaos: starting tokio: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Mode::Node(args) => runtime.block_on(node::run(args)),
        Mode::Run {
            quick,
            only,
            steady,
            report,
        } => runtime.block_on(run(Plan { quick, steady }, only, report)),
    };
    // Node processes may hold tasks blocked on stdin: do not wait for them.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aether-chaos: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(plan: Plan, only: Vec<String>, report_path: PathBuf) -> Result<(), String> {
    let quick = plan.quick;
    let names: Vec<&str> = if only.is_empty() {
        ALL.to_vec()
    } else {
        let unknown: Vec<&String> = only.iter().filter(|n| !ALL.contains(&n.as_str())).collect();
        if !unknown.is_empty() {
            return Err(format!("no scenario {unknown:?}; known: {ALL:?}"));
        }
        ALL.iter()
            .copied()
            .filter(|n| only.iter().any(|o| o == n))
            .collect()
    };
    let logs = report_path
        .parent()
        .map(|p| p.join("logs"))
        .unwrap_or_else(|| PathBuf::from("logs"));
    let mut rows = Vec::new();
    for name in names {
        eprintln!("chaos: {name}{}", if quick { " (quick)" } else { "" });
        let row = if name == "fuzz" {
            fuzz::run(plan).await
        } else {
            scenario_row(name, plan, logs.join(name)).await
        };
        eprintln!(
            "chaos: {name}: {} in {:.0} s",
            if row.passed { "pass" } else { "FAIL" },
            row.seconds
        );
        rows.push(row);
        // Written after every scenario, so a run cut short still leaves its figures.
        report::write(&rows, quick, &report_path)?;
    }
    report::print(&rows);
    println!("\nreport: {}", report_path.display());
    let failed: Vec<&str> = rows
        .iter()
        .filter(|r| !r.passed)
        .map(|r| r.scenario.as_str())
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("scenarios failed: {}", failed.join(", ")))
    }
}

/// Runs one scenario in a world of its own and audits it.
async fn scenario_row(name: &str, plan: Plan, logs: PathBuf) -> Row {
    let started = Instant::now();
    let mut world = match World::start(name, scenario::proxied(name), logs).await {
        Ok(w) => w,
        Err(e) => {
            let outcome = Outcome {
                failure: Some(format!("starting: {e}")),
                ..Outcome::default()
            };
            return Row::new(
                name,
                started.elapsed().as_secs_f64(),
                outcome,
                &Default::default(),
                false,
            );
        }
    };
    let mut failure = None;
    let mut faults = Vec::new();
    match world.load().await {
        Ok(()) => match scenario::run(name, &mut world, plan).await {
            Ok(f) => faults = f,
            Err(e) => failure = Some(e),
        },
        Err(e) => failure = Some(e),
    }
    if let Err(e) = world.stop_load().await {
        failure.get_or_insert(e);
    }
    let live = world.live_processes();
    let tries = world.ledger.tries();
    let mut errors = world.ledger.errors();
    if world.ledger.unparsed() > 0 {
        errors.insert("unparsed node lines".into(), world.ledger.unparsed());
    }
    for sample in world.ledger.samples() {
        eprintln!("  final error: {sample}");
    }
    let stream = world.stream.clone();
    let foreign = if name == "hostile" {
        hostile::FOREIGN_RECORDS
    } else {
        0
    };
    let client = world.nats.connect().await;
    let (nats, usage) = world.shutdown().await;
    let findings = match client {
        Ok(client) => match audit::audit(client, &stream, &tries, &live, foreign).await {
            Ok(f) => f,
            Err(e) => {
                failure.get_or_insert(format!("audit: {e}"));
                audit::Findings::default()
            }
        },
        Err(e) => {
            failure.get_or_insert(format!("audit: connecting: {e}"));
            audit::Findings::default()
        }
    };
    drop(nats);
    let outcome = Outcome {
        findings,
        errors,
        faults,
        failure,
    };
    Row::new(
        name,
        started.elapsed().as_secs_f64(),
        outcome,
        &usage,
        name == "steady",
    )
}
