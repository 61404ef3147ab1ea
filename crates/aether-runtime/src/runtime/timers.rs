//! An actor's volatile timers ([`Context::after`](crate::Context::after) /
//! [`every`](crate::Context::every)): one task per timer, sending its command to the actor,
//! aborted when the actor leaves memory (its VM is dropped at passivation).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::AbortHandle;

use super::ActorRef;
use super::registry::Shared;
use crate::actor::Actor;
use crate::context::TimerCommand;

/// The timers of one actor, by name; none costs one word.
#[derive(Debug, Default)]
#[allow(
    clippy::box_collection,
    reason = "one word in every idle actor, not three"
)]
pub(super) struct Timers(Option<Box<HashMap<String, AbortHandle>>>);

impl Timers {
    /// Starts timer `name` (replacing one of that name): `command` goes to actor `id` after
    /// `delay`, and again every `delay` if it `repeat`s, while the actor is in memory.
    pub(super) fn start<A: Actor>(
        &mut self,
        shared: &Arc<Shared<A>>,
        id: &Arc<str>,
        name: String,
        delay: Duration,
        repeat: bool,
        command: TimerCommand<A>,
    ) {
        let actor = ActorRef::new(id.clone(), shared.clone());
        let task = tokio::spawn(async move {
            // A delay past what the clock can hold never ticks.
            let Some(mut next) = tokio::time::Instant::now().checked_add(delay) else {
                return;
            };
            loop {
                tokio::time::sleep_until(next).await;
                // Only to the actor in memory: a tick never activates it (on this node or
                // after its shard moved away, where it must not run).
                if !actor.tell_if_active(command()).await {
                    tracing::debug!(
                        actor_type = A::TYPE,
                        actor_id = actor.id(),
                        "a timer's actor is gone; the timer stops"
                    );
                    return;
                }
                if !repeat {
                    return;
                }
                match next.checked_add(delay.max(Duration::from_millis(1))) {
                    Some(later) => next = later,
                    None => return,
                }
            }
        });
        let timers = self.0.get_or_insert_with(Box::default);
        timers.retain(|_, task| !task.is_finished());
        if let Some(old) = timers.insert(name, task.abort_handle()) {
            old.abort();
        }
    }

    /// Stops timer `name`, if it runs.
    pub(super) fn stop(&mut self, name: &str) {
        if let Some(task) = self.0.as_mut().and_then(|t| t.remove(name)) {
            task.abort();
        }
    }
}

impl Drop for Timers {
    fn drop(&mut self) {
        for task in self.0.iter().flat_map(|t| t.values()) {
            task.abort();
        }
    }
}
