//! A bank account as an event-sourced actor: commands, domain errors, snapshots, and a
//! concurrency conflict between two runtimes (two "nodes") that the runtime resolves by
//! reloading and retrying. Its events changed shape once (`Deposited` stored `amount` before it
//! stored `cents`): an upcaster reads the old ones, and the replay check in the tests folds the
//! golden histories in `examples/golden/bank_account.jsonl` through today's code.
//!
//! Run with `cargo run --example bank_account --features runtime`.

use std::sync::Arc;

use aether::runtime::{Actor, AskError, Runtime, SnapshotPolicy};
use aether::store::memory::InMemoryEventStore;
use aether::{EventStore, SnapshotStore, Upcasters};
use serde::{Deserialize, Serialize};

/// The account's state: the fold of its events.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
struct BankAccount {
    owner: Option<String>,
    /// In cents.
    balance: u64,
}

/// What callers ask for.
#[derive(Debug, Clone)]
enum Command {
    Open { owner: String },
    Deposit { cents: u64 },
    Withdraw { cents: u64 },
}

/// What happened. Stored event types are the variant names: `Opened`, `Deposited`, `Withdrawn`.
/// `Deposited` is at schema version 2 (see [`upcasters`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum AccountEvent {
    Opened { owner: String },
    Deposited { cents: u64 },
    Withdrawn { cents: u64 },
}

/// Why the account refuses a command.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
enum AccountError {
    #[error("the account is already open")]
    AlreadyOpen,
    #[error("the account is not open")]
    NotOpen,
    #[error("amounts must be positive")]
    ZeroAmount,
    #[error("insufficient funds: balance {balance} cents, requested {requested} cents")]
    InsufficientFunds { balance: u64, requested: u64 },
}

impl Actor for BankAccount {
    const TYPE: &'static str = "bank-account";
    type Command = Command;
    type Event = AccountEvent;
    type Error = AccountError;

    fn handle(&self, command: &Command) -> Result<Vec<AccountEvent>, AccountError> {
        match command {
            Command::Open { .. } if self.owner.is_some() => Err(AccountError::AlreadyOpen),
            Command::Open { owner } => Ok(vec![AccountEvent::Opened {
                owner: owner.clone(),
            }]),
            _ if self.owner.is_none() => Err(AccountError::NotOpen),
            Command::Deposit { cents: 0 } | Command::Withdraw { cents: 0 } => {
                Err(AccountError::ZeroAmount)
            }
            Command::Deposit { cents } => Ok(vec![AccountEvent::Deposited { cents: *cents }]),
            Command::Withdraw { cents } if *cents > self.balance => {
                Err(AccountError::InsufficientFunds {
                    balance: self.balance,
                    requested: *cents,
                })
            }
            Command::Withdraw { cents } => Ok(vec![AccountEvent::Withdrawn { cents: *cents }]),
        }
    }

    fn apply(&mut self, event: &AccountEvent) {
        match event {
            AccountEvent::Opened { owner } => self.owner = Some(owner.clone()),
            AccountEvent::Deposited { cents } => self.balance += cents,
            AccountEvent::Withdrawn { cents } => self.balance -= cents,
        }
    }
}

/// How older stored shapes become today's: the first release stored `Deposited { amount }`.
/// Every runtime over this store (and the replay check) uses the same upcasters.
fn upcasters() -> Upcasters {
    Upcasters::new().rename_field("Deposited", 1, "amount", "cents")
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let store = Arc::new(InMemoryEventStore::new());
    let runtime = Runtime::<BankAccount>::builder(store.clone())
        .snapshots(store.clone())
        .snapshot_policy(SnapshotPolicy::every(5))
        .upcasters(upcasters())
        .build();

    let account = runtime.actor("account-42");
    account
        .ask(Command::Open {
            owner: "Ada".into(),
        })
        .await?;
    for cents in [10_000, 2_500, 700] {
        account.ask(Command::Deposit { cents }).await?;
    }
    let applied = account.ask(Command::Withdraw { cents: 3_000 }).await?;
    println!(
        "withdrew 30.00; version {} ({:?})",
        applied.version, applied.events
    );

    // A domain error comes back as is; nothing is stored.
    match account.ask(Command::Withdraw { cents: 1_000_000 }).await {
        Err(AskError::Rejected { source, .. }) => println!("refused: {source}"),
        other => return Err(format!("expected a refusal, got {other:?}").into()),
    }

    // Every 5 events a snapshot; activation then replays only what came after it.
    let snapshot = store.get_latest_snapshot("account-42").await?;
    println!(
        "snapshot at version {:?}",
        snapshot.map(|s| s.version).unwrap_or_default()
    );

    // Another node (a second runtime on the same store) deposits behind our back.
    let other_node = Runtime::<BankAccount>::builder(store.clone())
        .upcasters(upcasters())
        .build();
    other_node
        .ask("account-42", Command::Deposit { cents: 5_000 })
        .await?;
    // Our actor's state is now stale: its next append conflicts, so it folds in the other
    // node's event, decides again and succeeds.
    let applied = account.ask(Command::Deposit { cents: 100 }).await?;
    println!(
        "deposited 1.00 after a conflict; version {}, conflicts {}, retries {}",
        applied.version,
        runtime.stats().conflicts,
        runtime.stats().retries
    );
    // A refusal is only final on the latest state: had this been decided on the stale balance
    // (102.00) it would have been refused; the runtime checks for newer events first.
    other_node
        .ask("account-42", Command::Deposit { cents: 10_000 })
        .await?;
    let applied = account.ask(Command::Withdraw { cents: 20_000 }).await?;
    println!(
        "withdrew 200.00 on fresh state; version {}",
        applied.version
    );

    // Passivate and reactivate: the state comes back from the snapshot plus later events.
    runtime.stop_vm("account-42").await;
    let (state, version) = runtime.capture_state("account-42").await?;
    println!(
        "{} has {}.{:02} at version {version} (store says {})",
        state.owner.as_deref().unwrap_or("?"),
        state.balance / 100,
        state.balance % 100,
        store.get_latest_version("account-42").await?
    );
    runtime.shutdown().await;
    other_node.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use aether::runtime::testing::{Then, given};

    fn opened() -> AccountEvent {
        AccountEvent::Opened {
            owner: "Ada".into(),
        }
    }

    #[test]
    fn opening() {
        given::<BankAccount>([])
            .when(Command::Open {
                owner: "Ada".into(),
            })
            .then_expect(Then::Events(vec![opened()]));
        given::<BankAccount>([opened()])
            .when(Command::Open {
                owner: "Bob".into(),
            })
            .then_expect(Then::Error(AccountError::AlreadyOpen));
    }

    #[test]
    fn deposits_and_withdrawals() {
        let state = given::<BankAccount>([opened(), AccountEvent::Deposited { cents: 100 }])
            .when(Command::Withdraw { cents: 40 })
            .then_expect_events([AccountEvent::Withdrawn { cents: 40 }]);
        assert_eq!(state.balance, 60);
        given::<BankAccount>([opened(), AccountEvent::Deposited { cents: 100 }])
            .when(Command::Withdraw { cents: 101 })
            .then_expect(Then::Error(AccountError::InsufficientFunds {
                balance: 100,
                requested: 101,
            }));
        given::<BankAccount>([opened()])
            .when(Command::Deposit { cents: 0 })
            .then_expect(Then::Error(AccountError::ZeroAmount));
        given::<BankAccount>([])
            .when(Command::Deposit { cents: 5 })
            .then_expect(Then::Error(AccountError::NotOpen));
    }

    #[tokio::test]
    async fn on_the_runtime_the_balance_is_the_fold_of_the_events() {
        let store = Arc::new(InMemoryEventStore::new());
        let runtime = Runtime::<BankAccount>::builder(store.clone()).build();
        let account = runtime.actor("t");
        account
            .ask(Command::Open {
                owner: "Ada".into(),
            })
            .await
            .unwrap();
        account.ask(Command::Deposit { cents: 70 }).await.unwrap();
        let refused = account
            .ask(Command::Withdraw { cents: 71 })
            .await
            .unwrap_err();
        assert!(refused.is_rejected());
        let (state, version) = runtime.capture_state("t").await.unwrap();
        assert_eq!((state.balance, version), (70, 2));
        runtime.shutdown().await;
    }

    /// The golden histories (the first release's `Deposited { amount }` and today's shapes)
    /// replay into their recorded states through today's `apply` and upcasters.
    /// `cargo xtask replay-check` runs this.
    #[test]
    fn replay_check_of_golden_histories() {
        use aether::runtime::testing::replay::ReplayCheck;
        let golden = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../examples/golden/bank_account.jsonl"
        );
        let report = ReplayCheck::<BankAccount>::new()
            .upcasters(upcasters())
            .run_file(golden)
            .unwrap();
        println!("{report}");
        assert!(report.is_ok(), "{report}");
        assert!(
            report
                .actors
                .iter()
                .all(|a| a.outcome == aether::runtime::testing::replay::Outcome::Matched)
        );
        assert!(
            report.actors.iter().any(|a| a.upcast > 0),
            "an old shape is covered"
        );
    }

    #[tokio::test]
    async fn a_refusal_on_stale_state_is_retried_on_the_latest_state() {
        let store = Arc::new(InMemoryEventStore::new());
        let here = Runtime::<BankAccount>::builder(store.clone()).build();
        let there = Runtime::<BankAccount>::builder(store.clone()).build();
        let open = Command::Open {
            owner: "Ada".into(),
        };
        here.ask("x", open).await.unwrap();
        there
            .ask("x", Command::Deposit { cents: 50 })
            .await
            .unwrap();
        // `here` still believes the balance is 0; the store says 50.
        let applied = here
            .ask("x", Command::Withdraw { cents: 50 })
            .await
            .unwrap();
        assert_eq!(applied.version, 3);
        assert_eq!(here.stats().retries, 1);
        here.shutdown().await;
        there.shutdown().await;
    }
}
