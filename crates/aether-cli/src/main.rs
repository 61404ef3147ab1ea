//! `aether`: what Aether keeps on NATS, for operators. Events, actors, projections, the cluster's
//! control plane and EventStorming models, read through the same layout and codecs as the library
//! (docs/cli.md).
//!
//! Exit codes: 0 done; 1 problems found (`store check`, `model check`); 2 bad usage or input;
//! 3 NATS refused or failed (unreachable, credentials, permissions, timeouts); 4 not found (no
//! such stream, actor, projection or cluster).

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

mod actor;
mod cli;
mod cluster;
mod connect;
mod events;
mod failure;
mod model;
mod output;
mod projections;
mod reminders;
mod scan;
mod store;

use cli::{Cli, Command};
use failure::Failure;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("aether: cannot start: {e}");
            return ExitCode::from(3);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("aether: {failure}{}", refused());
            ExitCode::from(failure.exit_code())
        }
    }
}

/// What the server refused on the connection, for the error line: a refused request is never
/// answered, so the failure itself says only that it timed out.
fn refused() -> String {
    let refusals = connect::refusals();
    if refusals.is_empty() {
        return String::new();
    }
    let list: Vec<String> = refusals.iter().map(ToString::to_string).collect();
    let inbox = refusals.iter().any(|r| {
        r.operation == aether_nats::permissions::Operation::Subscribe
            && r.subject.starts_with("_INBOX")
    });
    format!(
        " (the server refused this user: {}{})",
        list.join(", "),
        if inbox {
            "; a user allowed only its own reply inbox needs --inbox-prefix"
        } else {
            ""
        }
    )
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let out = output::Output::new(cli.json);
    // The commands that need no server first; the others share one connection.
    let command = match cli.command {
        Command::Model(command) => return model::run(command, &out),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "aether", &mut std::io::stdout());
            return Ok(());
        }
        other => other,
    };
    let ctx = connect::Context::new(&cli.connection, &cli.store, cli.namespace).await?;
    match command {
        Command::Store(command) => store::run(command, &ctx, &out).await,
        Command::Actor(command) => actor::run(command, &ctx, &out).await,
        Command::Events(command) => events::run(command, &ctx, &out).await,
        Command::Projections(command) => projections::run(command, &ctx, &out).await,
        Command::Cluster(command) => cluster::run(command, &ctx, &out).await,
        Command::Reminders(command) => reminders::run(command, &ctx, &out).await,
        Command::Model(_) | Command::Completions { .. } => Ok(()),
    }
}
