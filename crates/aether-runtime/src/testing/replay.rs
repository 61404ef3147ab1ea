//! The replay check: recorded histories folded through the current `apply` and upcasters, with
//! the final states compared to recorded expectations. Call it from your own tests, with your own
//! actor types, before deploying changed event code (feature `replay-check`).
//!
//! ```
//! use aether_core::history::{Expectation, Line};
//! use aether_core::{Event, Upcasters};
//! use aether_runtime::Actor;
//! use aether_runtime::testing::replay::ReplayCheck;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Default, Serialize, Deserialize)]
//! struct Counter { total: u64 }
//! #[derive(Serialize, Deserialize)]
//! enum Counted { Added { by: u64 } }
//! #[derive(Debug, thiserror::Error)]
//! #[error("never")]
//! struct Never;
//!
//! impl Actor for Counter {
//!     const TYPE: &'static str = "counter";
//!     type Command = u64;
//!     type Event = Counted;
//!     type Error = Never;
//!     fn handle(&self, by: &u64) -> Result<Vec<Counted>, Never> { Ok(vec![Counted::Added { by: *by }]) }
//!     fn apply(&mut self, Counted::Added { by }: &Counted) { self.total += by }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Yesterday's code wrote `{"Added": {"amount": 2}}`; today the field is `by`.
//! #[derive(Serialize)]
//! enum Old { Added { amount: u64 } }
//! let history = vec![
//!     Line::Event(Event::new("c-1", "Added", 1, &Old::Added { amount: 2 })?),
//!     Line::Expect(Expectation::new("c-1", Some(1), serde_json::json!({"total": 2}))),
//! ];
//! let report = ReplayCheck::<Counter>::new()
//!     .upcasters(Upcasters::new().rename_field("Added", 1, "amount", "by"))
//!     .run(history);
//! assert!(report.is_ok(), "{report}");
//! assert_eq!(report.actors[0].upcast, 1);
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use aether_core::history::{self, Expectation, HistoryError, Line};
use aether_core::{Event, Upcasters, panic_message};
use serde_json::Value as Json;

use crate::Actor;
use crate::runtime::load::decode_current;

/// Replays histories of actor type `A`; see the [module documentation](self).
pub struct ReplayCheck<A: Actor> {
    upcasters: Upcasters,
    _actor: PhantomData<fn() -> A>,
}

impl<A: Actor> fmt::Debug for ReplayCheck<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayCheck")
            .field("actor_type", &A::TYPE)
            .field("upcasters", &self.upcasters)
            .finish()
    }
}

impl<A: Actor> Default for ReplayCheck<A> {
    fn default() -> Self {
        Self::new()
    }
}

/// How one actor's history replayed.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Outcome {
    /// The final state (and version, when expected) is the recorded one.
    Matched,
    /// The history folded, but into another state or version than recorded.
    Diverged {
        /// Where the states first differ (a JSON path, e.g. `$.balance`), or the versions.
        at: String,
        /// The recorded value there.
        expected: Json,
        /// The value the current code produced there.
        actual: Json,
    },
    /// The history folded; there is no expectation to compare with.
    Unchecked,
    /// An event could not be upcast or decoded, or versions went backwards.
    Failed(String),
    /// `apply` (or `Default`) panicked.
    Panicked(String),
    /// An expectation names an actor with no events in the history.
    NoEvents,
}

impl Outcome {
    /// Whether this outcome is a problem (anything but matched or unchecked).
    pub fn is_problem(&self) -> bool {
        !matches!(self, Outcome::Matched | Outcome::Unchecked)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Matched => f.write_str("matched"),
            Outcome::Diverged {
                at,
                expected,
                actual,
            } => write!(f, "DIVERGED at {at}: expected {expected}, got {actual}"),
            Outcome::Unchecked => f.write_str("no expectation"),
            Outcome::Failed(why) => write!(f, "FAILED: {why}"),
            Outcome::Panicked(why) => write!(f, "PANICKED: {why}"),
            Outcome::NoEvents => f.write_str("FAILED: expected, but no events in the history"),
        }
    }
}

/// One actor's replay.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ActorReplay {
    /// The actor.
    pub actor: String,
    /// Stored events read.
    pub events: u64,
    /// Of those, events that went through an upcaster.
    pub upcast: u64,
    /// The version of the last event folded in.
    pub version: u64,
    /// The final state as JSON (`None` when the replay failed or panicked).
    pub state: Option<Json>,
    /// The verdict.
    pub outcome: Outcome,
}

/// The replay of every actor in a history, in order of actor id.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ReplayReport {
    /// The actor type.
    pub actor_type: &'static str,
    /// One entry per actor.
    pub actors: Vec<ActorReplay>,
}

impl ReplayReport {
    /// Whether every actor matched (or had nothing to match): nothing diverged, failed or
    /// panicked.
    pub fn is_ok(&self) -> bool {
        !self.actors.iter().any(|a| a.outcome.is_problem())
    }

    /// The actors with a problem.
    pub fn problems(&self) -> impl Iterator<Item = &ActorReplay> {
        self.actors.iter().filter(|a| a.outcome.is_problem())
    }

    /// The final states as expectation lines: what to record as the golden expectations once a
    /// replay is known to be right (with [`Expectation::to_line`]).
    pub fn expectations(&self) -> Vec<Expectation> {
        self.actors
            .iter()
            .filter_map(|a| {
                let state = a.state.clone()?;
                Some(Expectation::new(a.actor.clone(), Some(a.version), state))
            })
            .collect()
    }
}

impl fmt::Display for ReplayReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let problems = self.problems().count();
        writeln!(
            f,
            "replay check of {}: {} actors, {} with problems",
            self.actor_type,
            self.actors.len(),
            problems
        )?;
        let width = self
            .actors
            .iter()
            .map(|a| a.actor.len())
            .max()
            .unwrap_or(5)
            .max(5);
        writeln!(f, "{:<width$}  events  upcast  version  outcome", "actor")?;
        for a in &self.actors {
            writeln!(
                f,
                "{:<width$}  {:>6}  {:>6}  {:>7}  {}",
                a.actor, a.events, a.upcast, a.version, a.outcome
            )?;
        }
        Ok(())
    }
}

impl<A: Actor> ReplayCheck<A> {
    /// A check without upcasters.
    pub fn new() -> Self {
        Self {
            upcasters: Upcasters::new(),
            _actor: PhantomData,
        }
    }

    /// Upcasts through `upcasters` (the same ones the runtime is built with).
    #[must_use]
    pub fn upcasters(mut self, upcasters: Upcasters) -> Self {
        self.upcasters = upcasters;
        self
    }

    /// Replays a history file in the JSON-lines form (`aether_core::history`).
    pub fn run_file(&self, path: impl AsRef<Path>) -> Result<ReplayReport, HistoryError> {
        Ok(self.run(history::read_file(path)?))
    }

    /// Replays events (in version order per actor; actors may interleave) and compares with the
    /// expectations among `lines`.
    pub fn run(&self, lines: impl IntoIterator<Item = Line>) -> ReplayReport {
        let mut histories: BTreeMap<String, Vec<Event>> = BTreeMap::new();
        let mut expected: BTreeMap<String, Expectation> = BTreeMap::new();
        for line in lines {
            match line {
                Line::Event(event) => histories
                    .entry(event.actor_id().to_owned())
                    .or_default()
                    .push(event),
                Line::Expect(e) => {
                    expected.insert(e.actor.clone(), e);
                }
                // `Line` may grow; a kind this check does not know is not a history event.
                _ => {}
            }
        }
        let mut actors: Vec<ActorReplay> = histories
            .into_iter()
            .map(|(actor, events)| {
                let expectation = expected.remove(&actor);
                self.replay(actor, events, expectation)
            })
            .collect();
        actors.extend(expected.into_values().map(|e| ActorReplay {
            actor: e.actor,
            events: 0,
            upcast: 0,
            version: 0,
            state: None,
            outcome: Outcome::NoEvents,
        }));
        actors.sort_by(|a, b| a.actor.cmp(&b.actor));
        ReplayReport {
            actor_type: A::TYPE,
            actors,
        }
    }

    fn replay(
        &self,
        actor: String,
        events: Vec<Event>,
        expectation: Option<Expectation>,
    ) -> ActorReplay {
        let mut replay = ActorReplay {
            actor,
            events: 0,
            upcast: 0,
            version: 0,
            state: None,
            outcome: Outcome::Unchecked,
        };
        let folded = catch_unwind(AssertUnwindSafe(|| self.fold(events, &mut replay)));
        let state = match folded {
            Ok(Ok(state)) => state,
            Ok(Err(why)) => {
                replay.outcome = Outcome::Failed(why);
                return replay;
            }
            Err(panic) => {
                replay.outcome = Outcome::Panicked(panic_message(panic.as_ref()));
                return replay;
            }
        };
        let state = match serde_json::to_value(&state) {
            Ok(state) => state,
            Err(e) => {
                replay.outcome = Outcome::Failed(format!("the state does not serialize: {e}"));
                return replay;
            }
        };
        replay.outcome = match expectation {
            None => Outcome::Unchecked,
            Some(e) if e.version.is_some_and(|v| v != replay.version) => Outcome::Diverged {
                at: "version".into(),
                expected: Json::from(e.version),
                actual: Json::from(replay.version),
            },
            Some(e) => match first_difference(&e.state, &state, "$".into()) {
                None => Outcome::Matched,
                Some((at, expected, actual)) => Outcome::Diverged {
                    at,
                    expected,
                    actual,
                },
            },
        };
        replay.state = Some(state);
        replay
    }

    /// Folds `events` into a fresh state; an error says which event and why.
    fn fold(&self, events: Vec<Event>, replay: &mut ActorReplay) -> Result<A, String> {
        let mut state = A::default();
        for event in events {
            if event.version() <= replay.version {
                return Err(format!(
                    "version {} after version {}: a history lists each actor's events in version order",
                    event.version(),
                    replay.version
                ));
            }
            replay.version = event.version();
            replay.events += 1;
            let upcast = decode_current::<A>(&self.upcasters, event, |e| state.apply(&e))
                .map_err(|e| e.to_string())?;
            replay.upcast += u64::from(upcast);
        }
        Ok(state)
    }
}

/// Where `expected` and `actual` first differ: the JSON path and the two values there.
fn first_difference(expected: &Json, actual: &Json, at: String) -> Option<(String, Json, Json)> {
    match (expected, actual) {
        (Json::Object(e), Json::Object(a)) => {
            let keys: std::collections::BTreeSet<&String> = e.keys().chain(a.keys()).collect();
            keys.into_iter().find_map(|k| {
                let (ev, av) = (
                    e.get(k).cloned().unwrap_or(Json::Null),
                    a.get(k).cloned().unwrap_or(Json::Null),
                );
                first_difference(&ev, &av, format!("{at}.{k}"))
            })
        }
        (Json::Array(e), Json::Array(a)) if e.len() == a.len() => e
            .iter()
            .zip(a)
            .enumerate()
            .find_map(|(i, (ev, av))| first_difference(ev, av, format!("{at}[{i}]"))),
        _ if expected == actual => None,
        _ => Some((at, expected.clone(), actual.clone())),
    }
}
