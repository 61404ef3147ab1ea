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
    /// A model is already loaded in this runtime.
    #[error("a model is already loaded for actor type `{0}`")]
    AlreadyLoaded(String),
}

impl<A: Actor> Runtime<A> {
    /// Loads an EventStorming model (the seed's `LoadModel`): from now on, a command whose
    /// [`Actor::command_type`] the model does not declare for aggregate `A::TYPE`, or an event
    /// the command (or, for unnamed commands, the aggregate) may not emit, is refused with
    /// [`AskError::NotInModel`](crate::AskError::NotInModel) and nothing is stored. The model
    /// must validate.
    pub fn load_model(&self, model: &Model) -> Result<(), LoadModelError> {
        model.validate()?;
        let aggregate = model
            .aggregate(A::TYPE)
            .ok_or_else(|| LoadModelError::NoSuchAggregate(A::TYPE.to_owned()))?;
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
