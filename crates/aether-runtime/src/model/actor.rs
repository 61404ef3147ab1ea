//! The model-driven aggregate: `ModelActor`, its commands, events and refusals.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use aether_model::Field;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::causes::Causes;
use super::fields::check_fields;
use crate::actor::Actor;

/// The state of a model-driven aggregate (the Go VM's map state): the fold of its events'
/// data, with bookkeeping.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelActor {
    /// Every event's fields merged in, later events overwriting earlier values.
    pub fields: Map<String, Value>,
    /// The last event's type.
    pub last_event: Option<String>,
    /// Events applied, by type.
    pub counts: BTreeMap<String, u64>,
    /// Causes already handled (policy + triggering event id): a redelivered trigger is a no-op.
    /// Only the most recent [`MAX_CAUSES`](super::MAX_CAUSES) are kept, so state and snapshots
    /// stay bounded.
    pub causes: Causes,
}

/// A command for a model-driven aggregate, checked against its declaration.
#[derive(Clone)]
pub struct ModelCommand {
    pub(super) spec: Arc<CommandSpec>,
    pub(super) data: Map<String, Value>,
    pub(super) cause: Option<String>,
}

impl fmt::Debug for ModelCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModelCommand")
            .field("aggregate", &self.spec.aggregate)
            .field("command", &self.spec.name)
            .field("data", &self.data)
            .field("cause", &self.cause)
            .finish()
    }
}

/// A command an aggregate declares: its fields, and the events it emits with their fields.
#[derive(Debug)]
pub(super) struct CommandSpec {
    pub(super) aggregate: String,
    pub(super) name: String,
    pub(super) fields: Vec<Field>,
    pub(super) emits: Vec<(String, Vec<Field>)>,
}

/// An event of a model-driven aggregate: its type and its data (the stored payload).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelEvent {
    /// The event type, as declared in the model.
    pub name: String,
    /// Its fields.
    pub data: Map<String, Value>,
    /// The policy and triggering event that caused it, if a policy did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
}

/// Why a model-driven aggregate refused a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// The model has no such aggregate.
    #[error("the model declares no aggregate `{0}`")]
    UnknownAggregate(String),
    /// The aggregate has no such command.
    #[error("aggregate `{aggregate}` declares no command `{command}`")]
    UnknownCommand {
        /// The aggregate.
        aggregate: String,
        /// The command.
        command: String,
    },
    /// The command's data is not an object.
    #[error("{command}: the data must be an object of fields")]
    NotAnObject {
        /// The command.
        command: String,
    },
    /// A required field is missing.
    #[error("{command}: required field `{field}` is missing")]
    MissingField {
        /// The command.
        command: String,
        /// The field.
        field: String,
    },
    /// A field has the wrong type.
    #[error("{command}: field `{field}` must be {expected}, got {got}")]
    WrongType {
        /// The command.
        command: String,
        /// The field.
        field: String,
        /// The declared type.
        expected: String,
        /// The value given.
        got: String,
    },
    /// A field the command does not declare.
    #[error("{command}: field `{field}` is not declared")]
    UndeclaredField {
        /// The command.
        command: String,
        /// The field.
        field: String,
    },
    /// An event the command emits requires a field the command does not provide.
    #[error(
        "{command}: event `{event}` requires field `{field}`, which the command does not carry"
    )]
    EventFieldMissing {
        /// The command.
        command: String,
        /// The event.
        event: String,
        /// The field.
        field: String,
    },
}

impl Actor for ModelActor {
    const TYPE: &'static str = "model";
    type Command = ModelCommand;
    type Event = ModelEvent;
    type Error = ModelError;

    fn handle(&self, command: &ModelCommand) -> Result<Vec<ModelEvent>, ModelError> {
        if let Some(cause) = &command.cause
            && self.causes.contains(cause)
        {
            return Ok(Vec::new()); // already handled: a redelivered trigger
        }
        let spec = &command.spec;
        check_fields(&spec.name, &spec.fields, &command.data)?;
        spec.emits
            .iter()
            .map(|(event, fields)| {
                let mut data = Map::new();
                for f in fields {
                    match command.data.get(&f.name) {
                        Some(v) => {
                            data.insert(f.name.clone(), v.clone());
                        }
                        None if f.required => {
                            return Err(ModelError::EventFieldMissing {
                                command: spec.name.clone(),
                                event: event.clone(),
                                field: f.name.clone(),
                            });
                        }
                        None => {}
                    }
                }
                Ok(ModelEvent {
                    name: event.clone(),
                    data,
                    cause: command.cause.clone(),
                })
            })
            .collect()
    }

    fn apply(&mut self, event: &ModelEvent) {
        for (k, v) in &event.data {
            self.fields.insert(k.clone(), v.clone());
        }
        self.last_event = Some(event.name.clone());
        *self.counts.entry(event.name.clone()).or_default() += 1;
        if let Some(cause) = &event.cause {
            self.causes.insert(cause.clone());
        }
    }

    fn event_type(event: &ModelEvent) -> &str {
        &event.name
    }

    fn command_type(command: &ModelCommand) -> Option<&str> {
        Some(&command.spec.name)
    }
}
