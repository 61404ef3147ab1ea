//! Carrying out what a decision asked of time (`Context`): reminders set before its events are
//! stored, cancellations and timers after; transient store failures ridden out like appends.

use std::panic::AssertUnwindSafe;
use std::time::SystemTime;

use aether_core::reminder::{ReminderError, ReminderKey, ReminderStore};

use super::super::outage::through_outages;
use super::Vm;
use crate::actor::Actor;
use crate::context::{Context, TimeOp};
use crate::error::AskError;

impl<A: Actor> Vm<A> {
    /// The runtime's reminder store, or the error of a handler that needs one.
    fn reminder_store(&self, name: &str) -> Result<&dyn ReminderStore, AskError<A::Error>> {
        self.shared
            .reminders
            .as_deref()
            .ok_or_else(|| AskError::Reminder {
                actor_id: self.id.clone(),
                source: Box::new(ReminderError::Unsupported {
                    reason: format!(
                        "the handler set or cancelled reminder {name:?}, and the runtime has no \
                     reminder store (RuntimeBuilder::reminders)"
                    ),
                }),
            })
    }

    fn reminder_error(&self, source: ReminderError) -> AskError<A::Error> {
        AskError::Reminder {
            actor_id: self.id.clone(),
            source: Box::new(source),
        }
    }

    /// Runs one reminder-store call, again while it fails transiently, within the retry
    /// policy's transient budget (as appends ride out outages).
    async fn ride_out<T, F, Fut>(&self, mut call: F) -> Result<T, AskError<A::Error>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ReminderError>>,
    {
        let started = tokio::time::Instant::now();
        let first = call().await;
        through_outages(
            self.shared.config.retry.transient_budget,
            started,
            first,
            ReminderError::is_transient,
            |_, _| {},
            call,
        )
        .await
        .map_err(|e| self.reminder_error(e))
    }

    /// Sets the reminders a decision asked for, before its events are stored: a crash in
    /// between leaves a reminder for a decision that was not stored, never a lost one.
    pub(super) async fn set_reminders(&self, ops: &[TimeOp<A>]) -> Result<(), AskError<A::Error>> {
        for op in ops {
            match op {
                TimeOp::Failed(ReminderError::Invalid { key, reason }) => {
                    return Err(self.reminder_error(ReminderError::Invalid {
                        key: key.clone(),
                        reason: reason.clone(),
                    }));
                }
                TimeOp::Failed(other) => {
                    return Err(self.reminder_error(ReminderError::Unsupported {
                        reason: other.to_string(),
                    }));
                }
                TimeOp::Remind(reminder) => {
                    let store = self.reminder_store(&reminder.key.name)?;
                    self.ride_out(|| store.set(reminder)).await?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// What the actor's `on_activate` asks of time (nothing if it panics: logged).
    pub(super) fn activation_ops(&self) -> Vec<TimeOp<A>> {
        let mut ctx = Context::new(self.id.clone(), SystemTime::now(), None);
        let asked = std::panic::catch_unwind(AssertUnwindSafe(|| self.state.on_activate(&mut ctx)));
        match asked {
            Ok(()) => ctx.ops,
            Err(panic) => {
                let message = aether_core::panic_message(panic.as_ref());
                tracing::warn!(actor_type = A::TYPE, actor_id = %self.id, %message, "on_activate panicked");
                Vec::new()
            }
        }
    }

    /// Carries out what `on_activate` asked for; failures are logged (there is no caller).
    pub(super) async fn activated(&mut self, ops: Vec<TimeOp<A>>) {
        let outcome = match self.set_reminders(&ops).await {
            Ok(()) => self.after_stored(ops).await,
            Err(e) => Err(e),
        };
        if let Err(e) = outcome {
            tracing::warn!(actor_type = A::TYPE, actor_id = %self.id, error = %e, "what on_activate asked of time failed");
        }
    }

    /// Cancels reminders and starts or stops timers, once the decision is stored. Every request
    /// is carried out; the first failure is returned.
    pub(super) async fn after_stored(
        &mut self,
        ops: Vec<TimeOp<A>>,
    ) -> Result<(), AskError<A::Error>> {
        let mut first_failure = None;
        for op in ops {
            match op {
                TimeOp::Forget(name) => {
                    let key = ReminderKey::new(A::TYPE, &*self.id, name);
                    let cancelled = match self.reminder_store(&key.name) {
                        Ok(store) => self.ride_out(|| store.cancel(&key)).await.map(drop),
                        Err(e) => Err(e),
                    };
                    if let Err(e) = cancelled {
                        first_failure.get_or_insert(e);
                    }
                }
                TimeOp::Timer {
                    name,
                    delay,
                    repeat,
                    command,
                } => {
                    let (shared, id) = (self.shared.clone(), self.id.clone());
                    self.timers
                        .start(&shared, &id, name, delay, repeat, command);
                }
                TimeOp::StopTimer(name) => self.timers.stop(&name),
                TimeOp::Remind(_) | TimeOp::Failed(_) => {}
            }
        }
        first_failure.map_or(Ok(()), Err)
    }
}
