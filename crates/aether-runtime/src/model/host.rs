//! `ModelRuntime`: hosting every aggregate of a model, and running its policies.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use aether_core::{Event, EventStore, ReminderStore};
use aether_model::{Model, ValidationError};
use futures::{Stream, StreamExt};
use serde_json::{Map, Value};

use super::actor::{CommandSpec, ModelActor, ModelCommand, ModelError, ModelEvent};
use crate::error::AskError;
use crate::runtime::{Applied, Runtime, RuntimeBuilder};

#[derive(Debug)]
pub(super) struct PolicySpec {
    pub(super) name: String,
    when: String,
    pub(super) target_aggregate: String,
    target_field: Option<String>,
    pub(super) command: Arc<CommandSpec>,
    /// The deadline, and the events on the triggering actor that void it.
    within: Option<std::time::Duration>,
    pub(super) unless: Vec<String>,
}

struct ModelInner {
    model: Model,
    commands: HashMap<(String, String), Arc<CommandSpec>>,
    policies: Vec<PolicySpec>,
    runtime: Runtime<ModelActor>,
    /// The store the runtime writes to (deadlines read the triggering actor's later events).
    events: Arc<dyn EventStore>,
    /// Where deadline policies keep their reminders.
    reminders: Option<Arc<dyn ReminderStore>>,
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
                    within: p.deadline(),
                    unless: p.unless.clone(),
                })
            })
            .collect();
        let events = builder.event_store();
        let reminders = builder.reminder_store();
        Ok(Self {
            inner: Arc::new(ModelInner {
                model,
                commands,
                policies,
                runtime: builder.build(),
                events,
                reminders,
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

    /// Delivers this model's deadline reminders: register it with a
    /// [`Dispatcher`](crate::reminders::Dispatcher) for `ModelActor::TYPE` (the runtime's
    /// builder needs [`reminders`](RuntimeBuilder::reminders) for deadline policies).
    pub fn deadlines(&self) -> Arc<super::Deadlines> {
        Arc::new(super::Deadlines {
            model: self.clone(),
        })
    }

    pub(super) fn policy(&self, name: &str) -> Option<&PolicySpec> {
        self.inner.policies.iter().find(|p| p.name == name)
    }

    pub(super) fn event_store(&self) -> &dyn EventStore {
        self.inner.events.as_ref()
    }

    pub(super) fn reminder_store(&self) -> Option<&dyn ReminderStore> {
        self.inner.reminders.as_deref()
    }

    /// Issues a policy's command with its cause.
    pub(super) async fn send_for_policy(
        &self,
        aggregate: &str,
        id: &str,
        command: &str,
        data: Value,
        cause: String,
    ) -> Result<Applied<ModelEvent>, AskError<ModelError>> {
        self.send_caused(aggregate, id, command, data, Some(cause))
            .await
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
            if let Some(within) = policy.within {
                // Issued later, unless voided: kept as a reminder until then.
                self.set_deadline(
                    &policy.name,
                    within,
                    event,
                    &policy.target_aggregate,
                    &target,
                    data,
                )
                .await?;
                sent += 1;
                continue;
            }
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
