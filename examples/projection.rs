//! A read model kept up to date from the event stream, surviving a restart.
//!
//! Account balances are projected from `Deposited` events by a durable projection: the server
//! keeps its position, so after a restart it continues where it stopped — nothing lost, nothing
//! applied twice (the model remembers the last position it applied).
//!
//! ```text
//! cargo xtask nats && target/tools/nats-server/bin/nats-server -js     # a server, JetStream on
//! cargo run --example projection
//! ```
//! `NATS_URL` picks another server (default `nats://127.0.0.1:4222`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use aether::bus::{Projection, ProjectionConfig, ProjectionRunner};
use aether::store::jetstream::{JetStreamEventStore, async_nats};
use aether::{BoxError, Event, EventStore, Namespace};
use async_trait::async_trait;

/// Balances per account, and the last stream position applied.
#[derive(Debug, Default)]
struct Balances(Mutex<(u64, BTreeMap<String, u64>)>);

#[async_trait]
impl Projection for Balances {
    async fn apply(&self, event: &Event, position: u64) -> Result<(), BoxError> {
        let mut state = self.0.lock().map_err(|_| "poisoned")?;
        if position <= state.0 {
            return Ok(()); // delivered again after a crash: already applied
        }
        state.0 = position;
        *state.1.entry(event.actor_id().to_owned()).or_default() += event.decode::<u64>()?;
        Ok(())
    }

    async fn reset(&self) -> Result<(), BoxError> {
        *self.0.lock().map_err(|_| "poisoned")? = Default::default();
        Ok(())
    }
}

async fn deposit(
    store: &JetStreamEventStore,
    account: &str,
    amount: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    let version = store.get_latest_version(account).await? + 1;
    store
        .save_event(Event::new(account, "Deposited", version, &amount)?)
        .await?;
    Ok(())
}

async fn last_position(
    js: &async_nats::jetstream::Context,
    stream: &str,
) -> Result<u64, Box<dyn std::error::Error>> {
    Ok(js
        .get_stream(stream)
        .await?
        .info()
        .await?
        .state
        .last_sequence)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let Ok(client) = async_nats::connect(url.as_str()).await else {
        eprintln!("cannot reach nats-server at {url}; start one with JetStream on, e.g.:");
        eprintln!("  cargo xtask nats && target/tools/nats-server/bin/nats-server -js");
        std::process::exit(2);
    };
    let run = std::process::id();
    let namespace = Namespace::new(format!("projection-demo-{run}"))?;
    let store = JetStreamEventStore::with_namespace(client.clone(), "bank", namespace).await?;
    let js = async_nats::jetstream::new(client);
    let config = ProjectionConfig::new("balances", store.stream_name(), store.subject_filter())
        .event_types(["Deposited"]);
    let model = Arc::new(Balances::default());

    deposit(&store, "alice", 100).await?;
    deposit(&store, "bob", 50).await?;
    let mut runner = ProjectionRunner::start(js.clone(), config.clone(), model.clone()).await?;
    runner
        .caught_up_to(last_position(&js, store.stream_name()).await?)
        .await;
    println!("balances: {:?}", model.0.lock().map_err(|_| "poisoned")?.1);

    // The projection stops (a deploy, a crash); events keep coming.
    runner.stop();
    deposit(&store, "alice", 25).await?;
    deposit(&store, "carol", 10).await?;

    // Restarted, it resumes at its server-kept position.
    let mut runner = ProjectionRunner::start(js.clone(), config, model.clone()).await?;
    let status = runner
        .caught_up_to(last_position(&js, store.stream_name()).await?)
        .await;
    println!(
        "after a restart: {:?} (position {}, {} applied by the new runner)",
        model.0.lock().map_err(|_| "poisoned")?.1,
        status.position,
        status.applied
    );
    Ok(())
}
