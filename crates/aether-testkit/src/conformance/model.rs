//! The model-based check: generated operation sequences against a reference model.

// Assertion code that only tests run: a failed check panics with what broke.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use aether_core::{Event, StoreError};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use uuid::Uuid;

use super::{ConformanceStore, StoreHarness, ev, unique};

#[derive(Debug, Clone)]
enum Op {
    Append { actor: usize, delta: i64 },
    Batch { actor: usize, deltas: Vec<i64> },
    RetryLast { actor: usize },
    Read { actor: usize, from: u64 },
    Latest { actor: usize },
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let actor = 0..3usize;
    prop_oneof![
        4 => (actor.clone(), -2i64..4).prop_map(|(actor, delta)| Op::Append { actor, delta }),
        2 => (actor.clone(), proptest::collection::vec(-1i64..3, 0..5))
            .prop_map(|(actor, deltas)| Op::Batch { actor, deltas }),
        1 => actor.clone().prop_map(|actor| Op::RetryLast { actor }),
        2 => (actor.clone(), 0u64..12).prop_map(|(actor, from)| Op::Read { actor, from }),
        1 => actor.prop_map(|actor| Op::Latest { actor }),
    ]
}

/// The reference model: per actor, the stored (version, id) pairs.
#[derive(Default)]
struct Model {
    actors: BTreeMap<usize, Vec<(u64, Uuid)>>,
    last_ok: BTreeMap<usize, Vec<Event>>,
}

impl Model {
    fn latest(&self, a: usize) -> u64 {
        self.actors
            .get(&a)
            .and_then(|v| v.last())
            .map_or(0, |x| x.0)
    }

    /// Applies an append with the rules written out independently of the stores.
    fn append(&mut self, a: usize, events: &[Event]) -> Result<(), &'static str> {
        if events.is_empty() {
            return Ok(());
        }
        let stored = self.actors.entry(a).or_default();
        if events
            .iter()
            .all(|e| stored.contains(&(e.version(), e.id())))
        {
            return Ok(());
        }
        if events.windows(2).any(|w| w[1].version() <= w[0].version()) {
            return Err("invalid batch");
        }
        if events[0].version() <= stored.last().map_or(0, |x| x.0) {
            return Err("conflict");
        }
        stored.extend(events.iter().map(|e| (e.version(), e.id())));
        self.last_ok.insert(a, events.to_vec());
        Ok(())
    }
}

fn outcome(r: &Result<(), StoreError>) -> Result<(), &'static str> {
    match r {
        Ok(()) => Ok(()),
        Err(StoreError::VersionConflict(_)) => Err("conflict"),
        Err(StoreError::InvalidBatch { .. }) => Err("invalid batch"),
        Err(_) => Err("other error"),
    }
}

/// Runs `ops` against a fresh set of actors in `store` and the model; the first difference is
/// returned as a description.
async fn check_ops(store: &Arc<dyn ConformanceStore>, ops: &[Op]) -> Result<(), String> {
    let prefix = unique("model");
    let id = |a: usize| format!("{prefix}-{a}");
    let mut model = Model::default();
    for (step, op) in ops.iter().enumerate() {
        let fail = |what: String| Err(format!("step {step} {op:?}: {what}"));
        match op {
            Op::Append { actor, delta } => {
                let v = (model.latest(*actor) as i64 + delta).max(0) as u64;
                let e = ev(&id(*actor), v);
                let got = outcome(&store.save_event(e.clone()).await);
                let want = model.append(*actor, &[e]);
                if got != want {
                    return fail(format!("store {got:?}, model {want:?}"));
                }
            }
            Op::Batch { actor, deltas } => {
                let mut v = model.latest(*actor) as i64;
                let events: Vec<Event> = deltas
                    .iter()
                    .map(|d| {
                        v = (v + d).max(0);
                        ev(&id(*actor), v as u64)
                    })
                    .collect();
                let got = outcome(&store.save_events(events.clone()).await);
                let want = model.append(*actor, &events);
                if got != want {
                    return fail(format!("store {got:?}, model {want:?}"));
                }
            }
            Op::RetryLast { actor } => {
                let Some(events) = model.last_ok.get(actor).cloned() else {
                    continue;
                };
                let got = outcome(&store.save_events(events.clone()).await);
                let want = model.append(*actor, &events);
                if got != want {
                    return fail(format!("retry: store {got:?}, model {want:?}"));
                }
            }
            Op::Read { actor, from } => {
                let got: Vec<(u64, Uuid)> = store
                    .get_events(&id(*actor), *from)
                    .await
                    .map_err(|e| format!("step {step}: {e}"))?
                    .iter()
                    .map(|e| (e.version(), e.id()))
                    .collect();
                let want: Vec<(u64, Uuid)> = model
                    .actors
                    .get(actor)
                    .map(|v| v.iter().filter(|x| x.0 >= *from).copied().collect())
                    .unwrap_or_default();
                if got != want {
                    return fail(format!("read {got:?}, model {want:?}"));
                }
            }
            Op::Latest { actor } => {
                let got = store
                    .get_latest_version(&id(*actor))
                    .await
                    .map_err(|e| format!("step {step}: {e}"))?;
                if got != model.latest(*actor) {
                    return fail(format!("latest {got}, model {}", model.latest(*actor)));
                }
            }
        }
    }
    Ok(())
}

/// Generated operation sequences give the same results on the store as on a reference model.
/// A failure is shrunk to a minimal sequence before it is reported.
pub async fn model_based(h: &dyn StoreHarness) {
    let store = h.open(None).await;
    let cases = std::env::var("AETHER_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64u32);
    let strategy = proptest::collection::vec(op_strategy(), 1..40);
    let mut runner = TestRunner::new(Config {
        cases,
        ..Config::default()
    });
    for _ in 0..cases {
        let mut tree = strategy.new_tree(&mut runner).expect("generate operations");
        let Err(mut failure) = check_ops(&store, &tree.current()).await else {
            continue;
        };
        let mut minimal = tree.current();
        // Shrink the standard way: simplify while the case fails, complicate when it passes.
        let mut failed = true;
        for _ in 0..2000 {
            let moved = if failed {
                tree.simplify()
            } else {
                tree.complicate()
            };
            if !moved {
                break;
            }
            match check_ops(&store, &tree.current()).await {
                Err(f) => {
                    failed = true;
                    failure = f;
                    minimal = tree.current();
                }
                Ok(()) => failed = false,
            }
        }
        panic!("store differs from the model: {failure}\nminimal operations: {minimal:#?}");
    }
}
