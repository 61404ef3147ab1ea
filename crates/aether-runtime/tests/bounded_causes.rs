//! A model aggregate's handled causes stay bounded: a million distinct causes leave at most
//! `MAX_CAUSES` in its state (and so in its snapshots), and resident memory level. One test per
//! process, so nothing else moves the numbers.
#![cfg(feature = "model")]
// Test code: a failed expectation panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use aether_runtime::{Actor, MAX_CAUSES, ModelActor, ModelEvent};

/// Resident memory of this process in bytes (Linux `/proc/self/statm`).
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[test]
fn a_million_causes_leave_state_snapshots_and_memory_bounded() {
    let mut actor = ModelActor::default();
    let mut after = Vec::new();
    for round in 0..10 {
        for i in 0..100_000 {
            let event: ModelEvent = serde_json::from_value(serde_json::json!({
                "name": "Shipped",
                "data": {},
                "cause": format!("ship-on-pay:{round}-{i}-0192f0c8-7c1e-7d3a-9a47-3b0d8b3c2f11"),
            }))
            .unwrap();
            actor.apply(&event);
        }
        assert!(actor.causes.len() <= MAX_CAUSES);
        after.push(rss());
    }
    assert_eq!(actor.causes.len(), MAX_CAUSES);
    // The newest are remembered, the oldest forgotten.
    assert!(
        actor
            .causes
            .contains("ship-on-pay:9-99999-0192f0c8-7c1e-7d3a-9a47-3b0d8b3c2f11")
    );
    assert!(
        !actor
            .causes
            .contains("ship-on-pay:0-0-0192f0c8-7c1e-7d3a-9a47-3b0d8b3c2f11")
    );
    // The snapshot (the serialized state) is bounded too, and reads back the same.
    let snapshot = rmp_serde::to_vec_named(&actor).unwrap();
    assert!(
        snapshot.len() < MAX_CAUSES * 100,
        "{} bytes",
        snapshot.len()
    );
    let back: ModelActor = rmp_serde::from_slice(&snapshot).unwrap();
    assert_eq!(back, actor);
    let mb = |b: u64| b as f64 / 1e6;
    eprintln!(
        "RSS after each 100k causes (MB): {:?}",
        after
            .iter()
            .map(|b| format!("{:.1}", mb(*b)))
            .collect::<Vec<_>>()
    );
    let (first, last) = (after[0], *after.last().unwrap());
    assert!(
        last <= first + first / 10,
        "memory kept growing: {:.1} -> {:.1} MB",
        mb(first),
        mb(last)
    );
}
