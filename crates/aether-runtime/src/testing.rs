//! Given/when/then tests for any [`Actor`], without a store or a runtime (for tests: a failed
//! expectation panics): `given(past events).when(command).then_expect(events | error)`.
//!
//! ```
//! use aether_runtime::Actor;
//! use aether_runtime::testing::{given, Then};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Default, Serialize, Deserialize)]
//! struct Switch { on: bool }
//! #[derive(Debug, PartialEq, Serialize, Deserialize)]
//! enum Flipped { On, Off }
//! #[derive(Debug, PartialEq, thiserror::Error)]
//! #[error("already on")]
//! struct AlreadyOn;
//!
//! impl Actor for Switch {
//!     const TYPE: &'static str = "switch";
//!     type Command = ();
//!     type Event = Flipped;
//!     type Error = AlreadyOn;
//!     fn handle(&self, (): &()) -> Result<Vec<Flipped>, AlreadyOn> {
//!         if self.on { Err(AlreadyOn) } else { Ok(vec![Flipped::On]) }
//!     }
//!     fn apply(&mut self, e: &Flipped) { self.on = *e == Flipped::On }
//! }
//!
//! given::<Switch>([]).when(()).then_expect(Then::Events(vec![Flipped::On]));
//! given::<Switch>([Flipped::On]).when(()).then_expect(Then::Error(AlreadyOn));
//! given::<Switch>([Flipped::On, Flipped::Off]).when(()).then_expect_events([Flipped::On]);
//! ```

// Assertions are what this module is for: a failed expectation panics with the difference.
#![allow(clippy::panic)]

#[cfg(feature = "replay-check")]
pub mod replay;
mod time;

pub use time::{Fire, Timeline};

use std::fmt::Debug;

use crate::Actor;

/// The expected outcome of a command.
#[derive(Debug, Clone, PartialEq)]
pub enum Then<E, Err> {
    /// These events, in this order.
    Events(Vec<E>),
    /// This domain error.
    Error(Err),
}

/// The actor's state after some past events.
#[derive(Debug)]
pub struct Given<A: Actor> {
    state: A,
    past: usize,
}

/// Starts a scenario: the actor's state is the fold of `events` over `A::default()`.
pub fn given<A: Actor>(events: impl IntoIterator<Item = A::Event>) -> Given<A> {
    let mut state = A::default();
    let mut past = 0;
    for event in events {
        state.apply(&event);
        past += 1;
    }
    Given { state, past }
}

impl<A: Actor> Given<A> {
    /// The command under test (decided with `handle_async`, as the runtime does).
    pub fn when(self, command: A::Command) -> When<A> {
        let outcome = futures::executor::block_on(self.state.handle_async(&command));
        When {
            state: self.state,
            past: self.past,
            command,
            outcome,
        }
    }

    /// The state the past events produced.
    pub fn state(&self) -> &A {
        &self.state
    }
}

/// The outcome of the command, to check.
pub struct When<A: Actor> {
    state: A,
    past: usize,
    command: A::Command,
    outcome: Result<Vec<A::Event>, A::Error>,
}

impl<A: Actor> Debug for When<A>
where
    A::Event: Debug,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("When")
            .field("actor_type", &A::TYPE)
            .field("past_events", &self.past)
            .field(
                "outcome",
                &self.outcome.as_ref().map_err(ToString::to_string),
            )
            .finish_non_exhaustive()
    }
}

impl<A: Actor> When<A>
where
    A::Event: Debug + PartialEq,
    A::Command: Debug,
{
    /// Asserts the outcome: these events (which must also apply cleanly) or this error.
    pub fn then_expect(self, expected: Then<A::Event, A::Error>) -> A
    where
        A::Error: PartialEq + Debug,
    {
        match expected {
            Then::Events(events) => self.then_expect_events(events),
            Then::Error(error) => {
                match &self.outcome {
                    Err(actual) if *actual == error => {}
                    other => panic!(
                        "{}: after {} past events, {:?} should fail with {error:?}, got {other:?}",
                        A::TYPE,
                        self.past,
                        self.command
                    ),
                }
                self.state
            }
        }
    }

    /// Asserts that the command emits exactly `expected`; returns the state after applying
    /// them (for further checks).
    pub fn then_expect_events(self, expected: impl IntoIterator<Item = A::Event>) -> A {
        let expected: Vec<_> = expected.into_iter().collect();
        let mut state = self.state;
        match self.outcome {
            Ok(actual) if actual == expected => {
                for event in &actual {
                    state.apply(event);
                }
                state
            }
            Ok(actual) => panic!(
                "{}: after {} past events, {:?} should emit {expected:?}, emitted {actual:?}",
                A::TYPE,
                self.past,
                self.command
            ),
            Err(e) => panic!(
                "{}: after {} past events, {:?} should emit {expected:?}, was refused: {e}",
                A::TYPE,
                self.past,
                self.command
            ),
        }
    }

    /// Asserts that the command is refused with an error `check` accepts (for error types
    /// without `PartialEq`).
    pub fn then_expect_error_matching(self, check: impl FnOnce(&A::Error) -> bool) -> A {
        match &self.outcome {
            Err(e) if check(e) => self.state,
            other => panic!(
                "{}: after {} past events, {:?} should be refused, got {other:?}",
                A::TYPE,
                self.past,
                self.command
            ),
        }
    }
}
