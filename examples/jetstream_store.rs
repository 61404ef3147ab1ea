//! The JetStream event store against a local nats-server.
//!
//! Start a server first (JetStream on, nats-server 2.12 or newer):
//!
//! ```text
//! cargo xtask nats                                   # provisions nats-server into target/tools
//! target/tools/nats-server/bin/nats-server -js       # or any nats-server >= 2.12 with -js
//! cargo run --example jetstream_store
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
    // Through a server restart or a stream leader election, append with the recommended retry:
    // the same event (same id) again while the error is transient; it is never stored twice.
    save_with_retry(
        &store,
        Event::new(&account, "Deposited", version + 1, &Deposited { amount: 7 })?,
    )
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

/// The recommended way to append outside the actor runtime (which does this itself): re-send the
/// same event while the store reports a transient failure (`Unavailable`: nothing was stored, no
/// stream leader; `Timeout`: maybe stored), for a bounded time. A stream leader election on an R3
/// stream took 4-5.5 s here, so 20 s covers it with room.
async fn save_with_retry(
    store: &JetStreamEventStore,
    event: Event,
) -> Result<(), aether::StoreError> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut wait = std::time::Duration::from_millis(50);
    loop {
        match store.save_event(event.clone()).await {
            Err(e) if e.is_transient() && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_secs(1));
            }
            other => return other, // stored, a real conflict, or out of time
        }
    }
}

fn uuid_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{nanos:x}")
}
