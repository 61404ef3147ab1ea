//! The JetStream event store against a local nats-server.
//!
//! Start a server first (JetStream on, nats-server 2.12 or newer):
//!
//! ```text
//! cargo xtask nats                                   # provisions nats-server into target/tools
//! target/tools/nats-server/bin/nats-server -js       # or any nats-server >= 2.12 with -js
//! cargo run -p aether --features jetstream --example jetstream_store
//! ```
//!
//! `NATS_URL` picks another server (default `nats://127.0.0.1:4222`).

use aether::store::jetstream::{JetStreamConfig, JetStreamEventStore, async_nats};
use aether::{ActorSnapshot, Event, EventStore, Namespace, SnapshotStore};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Deposited {
    amount: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let client = match async_nats::connect(url.as_str()).await {
        Ok(client) => client,
        Err(e) => {
            eprintln!("cannot reach nats-server at {url}: {e}");
            eprintln!("start one with JetStream on, e.g.:");
            eprintln!("  cargo xtask nats && target/tools/nats-server/bin/nats-server -js");
            std::process::exit(2);
        }
    };

    // One stream per (store, namespace): here "accounts_demo".
    let config = JetStreamConfig::default().namespace(Namespace::new("demo")?);
    let store = JetStreamEventStore::with_config(client, "accounts", config).await?;
    println!("stream {} ready", store.stream_name());

    // A fresh account id per run, so the example can run again against the same server.
    let account = format!("account-{}", uuid_suffix());
    let start = store.get_latest_version(&account).await?;
    store
        .save_event(Event::new(
            &account,
            "Deposited",
            start + 1,
            &Deposited { amount: 100 },
        )?)
        .await?;
    // Several events at once, all or nothing (JetStream atomic batch).
    store
        .save_events(vec![
            Event::new(&account, "Deposited", start + 2, &Deposited { amount: 20 })?,
            Event::new(&account, "Deposited", start + 3, &Deposited { amount: 5 })?,
        ])
        .await?;

    // A writer with a stale view is refused by the server, whatever process it runs in.
    let stale = Event::new(&account, "Deposited", start + 2, &Deposited { amount: 1 })?;
    if let Err(e) = store.save_event(stale).await {
        println!("refused as expected: {e}");
    }

    // Snapshot, then replay only what came after it.
    let mut balance = 0;
    let mut events = store.stream_events(&account, 0);
    while let Some(event) = events.next().await {
        balance += event?.decode::<Deposited>()?.amount;
    }
    let version = store.get_latest_version(&account).await?;
    store
        .save_snapshot(ActorSnapshot::new(account.as_str(), version, &balance)?)
        .await?;
    store
        .save_event(Event::new(
            &account,
            "Deposited",
            version + 1,
            &Deposited { amount: 7 },
        )?)
        .await?;
    let snapshot = store.get_latest_snapshot(&account).await?;
    let mut from_snapshot = snapshot
        .as_ref()
        .map_or(Ok(0), ActorSnapshot::decode::<u64>)?;
    let after = snapshot.map_or(0, |s| s.version) + 1;
    for event in store.get_events(&account, after).await? {
        from_snapshot += event.decode::<Deposited>()?.amount;
    }
    println!(
        "{account}: balance {from_snapshot} at version {}",
        version + 1
    );
    Ok(())
}

fn uuid_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{nanos:x}")
}
