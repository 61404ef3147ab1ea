//! Checking a typed actor against an EventStorming model: `Runtime::load_model`.

use std::sync::Arc;

use aether_model::{Model, ValidationError};

use crate::actor::Actor;
use crate::runtime::{Rules, Runtime};

/// Loading a model into a runtime failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadModelError {
    /// The model itself has problems.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The model declares no aggregate named like the actor type.
    #[error("the model declares no aggregate `{0}` (the actor's TYPE)")]
    NoSuchAggregate(String),
    /// The model declares event versions the runtime's upcasters do not match: another current
    /// version, or a step (from an older version or a former name) that is not registered.
    #[error("the model and the runtime's upcasters disagree about event `{event}`: {problem}")]
    Upcasters {
        /// The event.
        event: String,
        /// What differs.
        problem: String,
    },
    /// A model is already loaded in this runtime.
    #[error("a model is already loaded for actor type `{0}`")]
    AlreadyLoaded(String),
}

impl<A: Actor> Runtime<A> {
    /// Loads an EventStorming model (the seed's `LoadModel`): from now on, a command whose
    /// [`Actor::command_type`] the model does not declare for aggregate `A::TYPE`, or an event
    /// the command (or, for unnamed commands, the aggregate) may not emit, is refused with
    /// [`AskError::NotInModel`](crate::AskError::NotInModel) and nothing is stored. The model
    /// must validate, and the versions it declares for the aggregate's events (`version`,
    /// `previous`, `formerly`) must match the runtime's upcasters: the same current version and
    /// a registered step for every older version and former name.
    pub fn load_model(&self, model: &Model) -> Result<(), LoadModelError> {
        model.validate()?;
        let aggregate = model
            .aggregate(A::TYPE)
            .ok_or_else(|| LoadModelError::NoSuchAggregate(A::TYPE.to_owned()))?;
        let upcasters = &self.shared.upcasters;
        let emitted = aggregate.commands.iter().flat_map(|c| &c.emits);
        for event in emitted.filter_map(|name| model.event(name)) {
            let disagree = |problem: String| LoadModelError::Upcasters {
                event: event.name.clone(),
                problem,
            };
            let (model_version, code_version) = (
                event.current_version(),
                upcasters.current_version(&event.name),
            );
            if model_version != code_version {
                return Err(disagree(format!(
                    "the model is at version {model_version}, the upcasters at version {code_version}"
                )));
            }
            let registered: std::collections::HashSet<(&str, u32)> = upcasters.steps().collect();
            for (event_type, from) in event.upcast_steps() {
                if !registered.contains(&(event_type.as_str(), from)) {
                    return Err(disagree(format!(
                        "no upcaster is registered for `{event_type}` from version {from}"
                    )));
                }
            }
        }
        let rules = Rules {
            aggregate: aggregate.name.clone(),
            commands: aggregate
                .commands
                .iter()
                .map(|c| (c.name.clone(), c.emits.clone()))
                .collect(),
        };
        self.shared
            .rules
            .set(Arc::new(rules))
            .map_err(|_| LoadModelError::AlreadyLoaded(A::TYPE.to_owned()))
    }
}
