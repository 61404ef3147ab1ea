//! Policies with a deadline ("when OrderPlaced and no PaymentReceived within 30m then
//! CancelOrder"): the trigger sets a durable reminder on the target actor, due `within` after
//! the triggering event; when it fires, the command is issued unless one of the policy's
//! `unless` events was stored on the triggering actor after the trigger (read from the store
//! then, so nothing has to cancel the reminder and a late or repeated firing decides right).

use std::fmt;
use std::time::Duration;

use aether_core::Event;
use aether_core::reminder::{Firing, Reminder, ReminderError, ReminderKey, Settled, When};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::actor::ModelActor;
use super::host::ModelRuntime;
use crate::Actor;
use crate::error::AskError;
use crate::reminders::{Deliver, settle_ask, settle_failure};

use super::actor::ModelError;

/// Tries at setting a deadline while the reminder store fails transiently (about 20 s).
const DEADLINE_TRIES: u32 = 12;
const DEADLINE_BACKOFF: aether_core::Backoff =
    aether_core::Backoff::new(Duration::from_millis(100), Duration::from_secs(2));

/// What a deadline reminder carries (MessagePack, named fields).
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Deadline {
    /// The policy.
    pub(super) policy: String,
    /// The triggering actor (stored id) and the triggering event's version.
    pub(super) source: String,
    pub(super) after: u64,
    /// The target's id within the policy's aggregate.
    pub(super) target: String,
    /// The command's data, taken from the triggering event.
    pub(super) data: Map<String, Value>,
    /// The cause the command carries (`<policy>:<event id>`).
    pub(super) cause: String,
}

impl ModelRuntime {
    /// Sets the deadline reminder of `policy` (due `within` after `event`) for `target`.
    pub(super) async fn set_deadline(
        &self,
        policy: &str,
        within: Duration,
        event: &Event,
        aggregate: &str,
        target: &str,
        data: Map<String, Value>,
    ) -> Result<(), AskError<ModelError>> {
        let actor_id = Self::actor_id(aggregate, target);
        let failed = |source: ReminderError| AskError::Reminder {
            actor_id: actor_id.as_str().into(),
            source: Box::new(source),
        };
        let store = self.reminder_store().ok_or_else(|| {
            failed(ReminderError::Unsupported {
                reason: format!(
                    "policy {policy:?} has a deadline, and the model runtime has no reminder \
                     store (RuntimeBuilder::reminders)"
                ),
            })
        })?;
        let cause = format!("{policy}:{}", event.id());
        let deadline = Deadline {
            policy: policy.to_owned(),
            source: event.actor_id().to_owned(),
            after: event.version(),
            target: target.to_owned(),
            data,
            cause: cause.clone(),
        };
        let key = ReminderKey::new(ModelActor::TYPE, actor_id.as_str(), cause);
        let payload = rmp_serde::to_vec_named(&deadline).map_err(|e| {
            failed(ReminderError::Invalid {
                key: Box::new(key.clone()),
                reason: format!("the deadline does not encode: {e}"),
            })
        })?;
        let due = event.timestamp().checked_add(within).ok_or_else(|| {
            failed(ReminderError::Invalid {
                key: Box::new(key.clone()),
                reason: format!("a deadline of {within:?} is past what a time can hold"),
            })
        })?;
        let reminder = Reminder::new(key, When::At(due), payload);
        // Through passing failures of the reminder store, as a handler's reminders are.
        let mut tries = 0u32;
        loop {
            match store.set(&reminder).await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_transient() && tries < DEADLINE_TRIES => {
                    tries += 1;
                    tokio::time::sleep(DEADLINE_BACKOFF.delay(tries)).await;
                }
                Err(e) => return Err(failed(e)),
            }
        }
    }
}

/// Delivers a model's deadline reminders: issues the policy's command unless one of its
/// `unless` events was stored on the triggering actor after the trigger. Register it for
/// `ModelActor::TYPE` (see [`ModelRuntime::deadlines`]).
pub struct Deadlines {
    pub(super) model: ModelRuntime,
}

impl fmt::Debug for Deadlines {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deadlines")
            .field("model", &self.model)
            .finish()
    }
}

#[async_trait::async_trait]
impl Deliver for Deadlines {
    async fn deliver(&self, firing: &Firing) -> Settled {
        let deadline: Deadline = match rmp_serde::from_slice(&firing.payload) {
            Ok(d) => d,
            Err(e) => {
                return Settled::Undeliverable(format!(
                    "reminder {} is not a model deadline: {e}",
                    firing.key
                ));
            }
        };
        let Some(policy) = self.model.policy(&deadline.policy) else {
            return Settled::Undeliverable(format!(
                "the model has no policy {:?} any more",
                deadline.policy
            ));
        };
        let after = match self
            .model
            .event_store()
            .get_events(&deadline.source, deadline.after.saturating_add(1))
            .await
        {
            Ok(events) => events,
            Err(e) => return settle_failure(firing, e.is_transient(), &e),
        };
        if after
            .iter()
            .any(|e| policy.unless.iter().any(|u| u == e.event_type()))
        {
            // Voided in time: nothing to issue.
            return Settled::Delivered;
        }
        let outcome = self
            .model
            .send_for_policy(
                &policy.target_aggregate,
                &deadline.target,
                &policy.command.name,
                Value::Object(deadline.data),
                deadline.cause,
            )
            .await
            .map(drop);
        settle_ask(firing, outcome)
    }
}
