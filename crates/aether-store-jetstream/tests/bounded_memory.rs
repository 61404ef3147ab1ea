//! Hostile input cannot grow the store's memory: a million distinct actor ids told through
//! `update_version_cache` (as EventStored notifications from a busy or hostile peer would) leave
//! the cache at its capacity and resident memory level. One test per process, so nothing else
//! moves the numbers.

// Test code: a failed expectation panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use aether_store_jetstream::{DEFAULT_CACHE_CAPACITY, JetStreamEventStore};
use aether_testkit::nats::NatsServer;

/// Resident memory of this process in bytes (Linux `/proc/self/statm`).
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[tokio::test]
async fn a_million_actor_ids_leave_the_cache_and_memory_bounded() {
    let server = NatsServer::start().await.unwrap();
    let store = JetStreamEventStore::new(server.connect().await.unwrap(), "bounded")
        .await
        .unwrap();
    const ROUNDS: u64 = 10;
    const PER_ROUND: u64 = 100_000;
    let mut after = Vec::new();
    for round in 0..ROUNDS {
        for i in 0..PER_ROUND {
            let id = format!("hostile-{round}-{i}-{}", "x".repeat(16));
            store.update_version_cache(&id, 1 + i);
        }
        assert!(store.cached_actors() <= DEFAULT_CACHE_CAPACITY);
        after.push(rss());
    }
    let mb = |b: u64| b as f64 / 1e6;
    eprintln!(
        "RSS after each 100k distinct actors (MB): {:?}",
        after
            .iter()
            .map(|b| format!("{:.1}", mb(*b)))
            .collect::<Vec<_>>()
    );
    assert_eq!(store.cached_actors(), DEFAULT_CACHE_CAPACITY);
    // The first rounds fill the cache; from then on memory stays level while 800k more
    // distinct ids go through: less than 10% above the level the filled cache reached.
    let filled = after[1];
    let last = *after.last().unwrap();
    assert!(
        last <= filled + filled / 10,
        "resident memory kept growing: {:.1} MB after 200k ids, {:.1} MB after 1M",
        mb(filled),
        mb(last)
    );
}
