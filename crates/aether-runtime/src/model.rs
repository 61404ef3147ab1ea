//! EventStorming models in the runtime (feature `model`): checking typed actors against a model,
//! and running aggregates and policies straight from one.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use aether_core::Event;
use aether_model::{Field, FieldType, Model, ValidationError};
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::actor::Actor;
use crate::error::AskError;
use crate::runtime::{Applied, Rules, Runtime, RuntimeBuilder};

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
    /// [`AskError::NotInModel`] and nothing is stored. The model must validate.
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
    /// Only the most recent [`MAX_CAUSES`] are kept, so state and snapshots stay bounded.
    pub causes: Causes,
}

/// How many handled causes a model aggregate remembers. A trigger redelivered after this many
/// newer causes reached the same aggregate would be applied again; redelivery (a projection
/// restart, a bus reconnect) happens long before that in practice.
pub const MAX_CAUSES: usize = 10_000;

/// The most recent causes an aggregate handled, oldest first, at most [`MAX_CAUSES`]. Stored
/// as a list of strings (an older snapshot's set reads back as one).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Causes {
    order: std::collections::VecDeque<String>,
    seen: std::collections::HashSet<String>,
}

impl Causes {
    /// Whether `cause` was handled (among the remembered ones).
    pub fn contains(&self, cause: &str) -> bool {
        self.seen.contains(cause)
    }

    /// Remembers `cause`, forgetting the oldest beyond [`MAX_CAUSES`].
    pub fn insert(&mut self, cause: String) {
        if self.seen.insert(cause.clone()) {
            self.order.push_back(cause);
            while self.order.len() > MAX_CAUSES {
                if let Some(old) = self.order.pop_front() {
                    self.seen.remove(&old);
                }
            }
        }
    }

    /// How many causes are remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether none is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The remembered causes, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.order.iter().map(String::as_str)
    }
}

impl Serialize for Causes {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(&self.order)
    }
}

impl<'de> Deserialize<'de> for Causes {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let list = Vec::<String>::deserialize(deserializer)?;
        let mut causes = Causes::default();
        for cause in list {
            causes.insert(cause);
        }
        Ok(causes)
    }
}

/// A command for a model-driven aggregate, checked against its declaration.
#[derive(Clone)]
pub struct ModelCommand {
    spec: Arc<CommandSpec>,
    data: Map<String, Value>,
    cause: Option<String>,
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

#[derive(Debug)]
struct CommandSpec {
    aggregate: String,
    name: String,
    fields: Vec<Field>,
    emits: Vec<(String, Vec<Field>)>,
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

fn check_fields(
    command: &str,
    fields: &[Field],
    data: &Map<String, Value>,
) -> Result<(), ModelError> {
    for f in fields {
        match data.get(&f.name) {
            None | Some(Value::Null) if f.required => {
                return Err(ModelError::MissingField {
                    command: command.to_owned(),
                    field: f.name.clone(),
                });
            }
            Some(v) if !v.is_null() && !has_type(&f.ty, v) => {
                return Err(ModelError::WrongType {
                    command: command.to_owned(),
                    field: f.name.clone(),
                    expected: f.ty.clone(),
                    got: v.to_string(),
                });
            }
            _ => {}
        }
    }
    if let Some(extra) = data.keys().find(|k| !fields.iter().any(|f| &f.name == *k)) {
        return Err(ModelError::UndeclaredField {
            command: command.to_owned(),
            field: extra.clone(),
        });
    }
    Ok(())
}

/// Whether `value` fits the model field type `ty` (an unknown type fits nothing; a loaded model
/// has none: validation refuses them).
fn has_type(ty: &str, value: &Value) -> bool {
    FieldType::parse(ty).is_some_and(|t| fits(&t, value))
}

fn fits(ty: &FieldType, value: &Value) -> bool {
    match ty {
        FieldType::List(inner) => value
            .as_array()
            .is_some_and(|items| items.iter().all(|v| fits(inner, v))),
        FieldType::String => value.is_string(),
        FieldType::Integer => value.is_i64() || value.is_u64(),
        FieldType::Number => value.is_number(),
        FieldType::Boolean => value.is_boolean(),
        FieldType::Timestamp => value.is_string() || value.is_i64() || value.is_u64(),
        FieldType::Uuid => value.as_str().is_some_and(is_uuid),
        FieldType::Money => {
            value.is_number() || value.as_str().is_some_and(|s| s.parse::<f64>().is_ok())
        }
        FieldType::Object => value.is_object(),
        _ => false,
    }
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[derive(Debug)]
struct PolicySpec {
    name: String,
    when: String,
    target_aggregate: String,
    target_field: Option<String>,
    command: Arc<CommandSpec>,
}

struct ModelInner {
    model: Model,
    commands: HashMap<(String, String), Arc<CommandSpec>>,
    policies: Vec<PolicySpec>,
    runtime: Runtime<ModelActor>,
}

/// Runs the aggregates and policies of an EventStorming model without Rust code per aggregate.
///
/// A command to aggregate `A`, actor `id` is checked against its declared fields and emits the
/// declared events with those fields; the actor's state is the fold of its events' data
/// ([`ModelActor`]). Stored actor ids are `"<aggregate>:<id>"`. Policies run through
/// [`ModelRuntime::react`]: feed it the stored events (from a bus subscription with
/// [`ModelRuntime::run_policies`], or from a durable projection for at-least-once delivery);
/// the command a policy issues carries its cause, so a redelivered event is not applied twice.
#[derive(Clone)]
pub struct ModelRuntime {
    inner: Arc<ModelInner>,
}

impl fmt::Debug for ModelRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModelRuntime")
            .field("model", &self.inner.model.name)
            .field("commands", &self.inner.commands.len())
            .field("policies", &self.inner.policies.len())
            .finish()
    }
}

impl ModelRuntime {
    /// Validates `model` and builds the runtime that hosts its aggregates.
    pub fn new(model: Model, builder: RuntimeBuilder<ModelActor>) -> Result<Self, ValidationError> {
        model.validate()?;
        let mut commands = HashMap::new();
        for (_, aggregate) in model.aggregates() {
            for c in &aggregate.commands {
                let emits = c
                    .emits
                    .iter()
                    .map(|e| {
                        let fields = model.event(e).map(|d| d.fields.clone()).unwrap_or_default();
                        (e.clone(), fields)
                    })
                    .collect();
                commands.insert(
                    (aggregate.name.clone(), c.name.clone()),
                    Arc::new(CommandSpec {
                        aggregate: aggregate.name.clone(),
                        name: c.name.clone(),
                        fields: c.fields.clone(),
                        emits,
                    }),
                );
            }
        }
        let policies = model
            .policies()
            .filter_map(|p| {
                let command = commands.get(&(p.to.clone(), p.issue.clone()))?.clone();
                Some(PolicySpec {
                    name: p.name.clone(),
                    when: p.when.clone(),
                    target_aggregate: p.to.clone(),
                    target_field: p.target_field.clone(),
                    command,
                })
            })
            .collect();
        Ok(Self {
            inner: Arc::new(ModelInner {
                model,
                commands,
                policies,
                runtime: builder.build(),
            }),
        })
    }

    /// The model.
    pub fn model(&self) -> &Model {
        &self.inner.model
    }

    /// The runtime hosting the aggregates (stats, shutdown, ...).
    pub fn runtime(&self) -> &Runtime<ModelActor> {
        &self.inner.runtime
    }

    /// The stored actor id of `id` of `aggregate`.
    pub fn actor_id(aggregate: &str, id: &str) -> String {
        format!("{aggregate}:{id}")
    }

    /// Sends command `command` with `data` (a JSON object of its fields) to actor `id` of
    /// `aggregate`.
    pub async fn send(
        &self,
        aggregate: &str,
        id: &str,
        command: &str,
        data: Value,
    ) -> Result<Applied<ModelEvent>, AskError<ModelError>> {
        self.send_caused(aggregate, id, command, data, None).await
    }

    async fn send_caused(
        &self,
        aggregate: &str,
        id: &str,
        command: &str,
        data: Value,
        cause: Option<String>,
    ) -> Result<Applied<ModelEvent>, AskError<ModelError>> {
        let actor_id = Self::actor_id(aggregate, id);
        let refuse = |source| AskError::Rejected {
            actor_id: actor_id.as_str().into(),
            source,
        };
        let spec = match self
            .inner
            .commands
            .get(&(aggregate.to_owned(), command.to_owned()))
        {
            Some(spec) => spec.clone(),
            None if self.inner.model.aggregate(aggregate).is_none() => {
                return Err(refuse(ModelError::UnknownAggregate(aggregate.to_owned())));
            }
            None => {
                return Err(refuse(ModelError::UnknownCommand {
                    aggregate: aggregate.to_owned(),
                    command: command.to_owned(),
                }));
            }
        };
        let Value::Object(data) = data else {
            return Err(refuse(ModelError::NotAnObject {
                command: command.to_owned(),
            }));
        };
        self.inner
            .runtime
            .ask(&actor_id, ModelCommand { spec, data, cause })
            .await
    }

    /// The state and version of actor `id` of `aggregate`.
    pub async fn state(
        &self,
        aggregate: &str,
        id: &str,
    ) -> Result<(ModelActor, u64), AskError<ModelError>> {
        self.inner
            .runtime
            .capture_state(&Self::actor_id(aggregate, id))
            .await
    }

    /// Runs the policies triggered by one stored event: each issues its command to its target
    /// actor, with the event's fields the command declares. Returns how many commands were
    /// sent. Safe to call again for the same event (redelivery): the target actors remember
    /// the cause and do nothing the second time. Events that are not model events are ignored.
    pub async fn react(&self, event: &Event) -> Result<usize, AskError<ModelError>> {
        let Ok(decoded) = event.decode::<ModelEvent>() else {
            return Ok(0);
        };
        let source_id = event
            .actor_id()
            .split_once(':')
            .map_or(event.actor_id(), |(_, id)| id);
        let mut sent = 0;
        for policy in self
            .inner
            .policies
            .iter()
            .filter(|p| p.when == decoded.name)
        {
            let target = match &policy.target_field {
                Some(field) => match decoded.data.get(field) {
                    Some(Value::String(s)) => s.clone(),
                    Some(other) => other.to_string(),
                    None => {
                        tracing::warn!(policy = %policy.name, %field, "triggering event lacks the target field; policy skipped");
                        continue;
                    }
                },
                None => source_id.to_owned(),
            };
            let data: Map<String, Value> = policy
                .command
                .fields
                .iter()
                .filter_map(|f| {
                    decoded
                        .data
                        .get(&f.name)
                        .map(|v| (f.name.clone(), v.clone()))
                })
                .collect();
            self.send_caused(
                &policy.target_aggregate,
                &target,
                &policy.command.name,
                Value::Object(data),
                Some(format!("{}:{}", policy.name, event.id())),
            )
            .await?;
            sent += 1;
        }
        Ok(sent)
    }

    /// Runs [`ModelRuntime::react`] for every event of `events` (e.g. a bus subscription) in a
    /// task, until the stream ends. Failures are logged and the next event is taken.
    pub fn run_policies<S>(&self, mut events: S) -> tokio::task::JoinHandle<()>
    where
        S: Stream<Item = Event> + Send + Unpin + 'static,
    {
        let this = self.clone();
        tokio::spawn(async move {
            while let Some(event) = events.next().await {
                if let Err(e) = this.react(&event).await {
                    tracing::warn!(event_id = %event.id(), event_type = event.event_type(), error = %e, "a policy failed");
                }
            }
        })
    }
}
