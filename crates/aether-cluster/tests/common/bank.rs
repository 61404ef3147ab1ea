//! The bank-account actor the routing tests use, and a node that hosts it on JetStream.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aether_cluster::{ClusterActors, ClusterConfig, ClusterNode};
use aether_core::EventStore;
use aether_runtime::{Actor, Runtime, SnapshotPolicy};
use aether_store_jetstream::{JetStreamConfig, JetStreamEventStore};
use aether_testkit::nats::NatsServer;
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Account {
    pub balance: i64,
    pub operations: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    Deposit(i64),
    Withdraw(i64),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Moved {
    Deposited(i64),
    Withdrawn(i64),
}

#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize, Deserialize)]
#[error("insufficient funds: balance {balance}, asked {asked}")]
pub struct InsufficientFunds {
    pub balance: i64,
    pub asked: i64,
}

impl Actor for Account {
    const TYPE: &'static str = "account";
    type Command = Command;
    type Event = Moved;
    type Error = InsufficientFunds;

    fn handle(&self, command: &Command) -> Result<Vec<Moved>, InsufficientFunds> {
        match command {
            Command::Deposit(n) => Ok(vec![Moved::Deposited(*n)]),
            Command::Withdraw(n) if *n > self.balance => Err(InsufficientFunds {
                balance: self.balance,
                asked: *n,
            }),
            Command::Withdraw(n) => Ok(vec![Moved::Withdrawn(*n)]),
        }
    }

    fn apply(&mut self, event: &Moved) {
        match event {
            Moved::Deposited(n) => self.balance += n,
            Moved::Withdrawn(n) => self.balance -= n,
        }
        self.operations += 1;
    }
}

pub const STREAM: &str = "bank";

pub async fn store(client: async_nats::Client, replicas: usize) -> Arc<JetStreamEventStore> {
    Arc::new(
        JetStreamEventStore::with_config(
            client,
            STREAM,
            JetStreamConfig::default().replicas(replicas),
        )
        .await
        .expect("store opens"),
    )
}

/// A node hosting the bank actor, its actors and its store.
pub type Bank = (
    ClusterNode,
    ClusterActors<Account>,
    Arc<JetStreamEventStore>,
);

/// A node hosting `Account` on the shared JetStream store.
pub async fn bank_node(client: async_nats::Client, config: ClusterConfig, replicas: usize) -> Bank {
    let store = store(client.clone(), replicas).await;
    let runtime = Runtime::<Account>::builder(store.clone())
        .snapshots(store.clone())
        .snapshot_policy(SnapshotPolicy::every(100).min_events(1))
        .build();
    let node = ClusterNode::new(client, config).expect("valid config");
    let accounts = node.register(runtime).expect("registered");
    node.start().await.expect("node starts");
    (node, accounts, store)
}

/// Node `id` joins cluster `name` on `server` (a single server: one replica), hosting the bank
/// actor, with the routing settings for tests.
pub async fn join(server: &NatsServer, name: &str, id: &str) -> Bank {
    bank_node(
        server.connect().await.expect("connects"),
        routing(super::fast_config(name, id)),
        1,
    )
    .await
}

/// Routing settings for tests: short request timeout, quick handoff timeout.
pub fn routing(config: ClusterConfig) -> ClusterConfig {
    config
        .request_timeout(Duration::from_secs(1))
        .handoff_timeout(Duration::from_secs(3))
        .call_timeout(Duration::from_secs(30))
}

/// Events per command id over `actors`, and the folded state of each actor.
pub async fn audit(
    store: &dyn EventStore,
    actors: impl IntoIterator<Item = String>,
) -> (HashMap<String, usize>, HashMap<String, Account>) {
    let mut causes = HashMap::new();
    let mut states = HashMap::new();
    for actor in actors {
        let mut state = Account::default();
        for e in store.get_events(&actor, 1).await.expect("read events") {
            let cause = e
                .metadata()
                .causation_id
                .clone()
                .expect("every event records its command");
            *causes.entry(cause.to_string()).or_insert(0) += 1;
            state.apply(&e.decode().expect("decodes"));
        }
        states.insert(actor, state);
    }
    (causes, states)
}
