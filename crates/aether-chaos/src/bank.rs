//! The actor under test: a bank account that takes deposits. Every deposit is one event, so an
//! acknowledged command is exactly one record in the stream, and the balance is the sum of the
//! amounts: a fold the audit can compute without the runtime.

use aether_runtime::Actor;
use serde::{Deserialize, Serialize};

/// The store (stream) name prefix; each scenario writes its own stream, `chaos-<scenario>`.
pub(crate) const STREAM_PREFIX: &str = "chaos";

/// The event type a deposit is stored under (the runtime stores `Actor::TYPE`-independent event
/// types: the variant's name).
pub(crate) const DEPOSITED: &str = "Deposited";

/// An account's state: the fold of its events.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Account {
    /// The sum of the deposits.
    pub(crate) balance: u64,
    /// How many deposits were folded in.
    pub(crate) deposits: u64,
}

/// What an account is told.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Command {
    /// Add an amount.
    Deposit(u64),
}

/// What an account records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Moved {
    /// An amount was added.
    Deposited(u64),
}

/// Accounts refuse nothing; the type exists because the runtime asks for one.
#[derive(Debug, Clone, thiserror::Error, Serialize, Deserialize)]
#[error("never")]
pub(crate) struct Never;

impl Actor for Account {
    const TYPE: &'static str = "account";
    type Command = Command;
    type Event = Moved;
    type Error = Never;

    fn handle(&self, command: &Command) -> Result<Vec<Moved>, Never> {
        match command {
            Command::Deposit(n) => Ok(vec![Moved::Deposited(*n)]),
        }
    }

    fn apply(&mut self, event: &Moved) {
        match event {
            Moved::Deposited(n) => self.balance = self.balance.saturating_add(*n),
        }
        self.deposits += 1;
    }
}

/// The account ids the load spreads over: `acct-0` .. `acct-<n-1>`.
pub(crate) fn account(i: u64) -> String {
    format!("acct-{i}")
}
