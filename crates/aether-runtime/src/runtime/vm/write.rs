//! The write protocol of one command (`Vm::decide_and_append`): answer a command id applied
//! before, decide, append at the versions after the current one (re-sent through outages),
//! apply and publish; on a conflict or a possibly stale refusal, fold in the store's newer
//! events and decide again (unless they hold the command's own events).

use std::pin::Pin;

use std::time::SystemTime;

use aether_core::{CommandId, CommandRecord, Event, StoreError};
use futures::StreamExt;

use super::super::Applied;
use super::super::load::{decode_current, replay};
use super::super::outage::through_outages;
use super::super::recent::{Remembered, id_hash, millis, remember};
use super::super::registry::bump;
use super::{Vm, rare};
use crate::actor::Actor;
use crate::context::{Context, TimeOp};
use crate::error::AskError;

/// Where a command is in the write protocol (`Vm::decide_and_append`).
enum Stage<A: Actor> {
    /// Answer a command id applied before; otherwise decide on the current state.
    Decide,
    /// The actor refused: final unless the store holds newer events.
    Refused(A::Error),
    /// Decided and encoded: append at the versions after the current one.
    Append(Decided<A>),
    /// The store holds events this VM has not applied: fold them in and decide again, after a
    /// backoff when an append lost the race.
    FoldIn { backoff: bool },
    /// The answer.
    Done(Result<Applied<A::Event>, AskError<A::Error>>),
}

/// Decided events, and the same events encoded once: re-sent as they are through outages (so
/// their ids, and the store's deduplication, hold) and published from the same copy.
struct Decided<A: Actor> {
    events: Vec<A::Event>,
    stored: Vec<Event>,
    /// What the handler asked of time (reminders, timers): carried out only if stored.
    ops: Vec<TimeOp<A>>,
}

impl<A: Actor> Vm<A> {
    /// Runs `command` through the write protocol: answer a known command id, decide, append;
    /// when the store holds newer events (an append lost the race, or a refusal may be stale),
    /// fold them in and decide again, for at most `RetryPolicy::max_attempts` decisions.
    pub(super) async fn decide_and_append(
        &mut self,
        command: &A::Command,
        command_id: Option<&CommandId>,
    ) -> Result<Applied<A::Event>, AskError<A::Error>> {
        // Hashed once per command; only read with the id.
        let hash = command_id.map_or(0, |id| id_hash(id));
        let mut attempt = 1;
        let mut stage = Stage::Decide;
        loop {
            stage = match stage {
                Stage::Decide => match self.known(command_id, hash) {
                    // Applied before (a retry, or a copy another node handled first): answered
                    // from its stored events, never decided again.
                    Some(record) => Stage::Done(rare(self.answer_again(record)).await),
                    None => {
                        let mut ctx = Context::new(self.id.clone(), SystemTime::now(), command_id);
                        match self.state.decide(command, &mut ctx).await {
                            Ok(events) => self.prepare(command, command_id, events, ctx.ops),
                            Err(refusal) => Stage::Refused(refusal),
                        }
                    }
                },
                Stage::Refused(source) => {
                    // Final only if decided on the latest version: another writer may have
                    // appended since (one version read, on this path only).
                    if attempt < self.shared.config.retry.max_attempts
                        && rare(self.behind_the_store()).await
                    {
                        Stage::FoldIn { backoff: false }
                    } else {
                        Stage::Done(Err(AskError::Rejected {
                            actor_id: self.id.clone(),
                            source,
                        }))
                    }
                }
                Stage::Append(decided) if !decided.ops.is_empty() => {
                    rare(self.append_with_time(decided, command_id, hash, attempt)).await
                }
                Stage::Append(decided) => match self.append(&decided.stored).await {
                    Ok(()) => Stage::Done(Ok(self.applied(decided, command_id, hash).await)),
                    Err(e) => self.append_failed(e, attempt),
                },
                Stage::FoldIn { backoff } => match rare(self.catch_up(command_id)).await {
                    // The other writer applied this very command (a copy served elsewhere):
                    // found among the folded events themselves, so also when the memory no
                    // longer keeps it (this VM was paused past the horizon mid-command).
                    Ok(Some(record)) => Stage::Done(rare(self.answer_again(record)).await),
                    Ok(None) => {
                        attempt += 1;
                        self.count_retry();
                        if backoff {
                            let wait = self.shared.config.retry.backoff_for(attempt);
                            rare(tokio::time::sleep(wait)).await;
                        }
                        Stage::Decide
                    }
                    Err(e) => Stage::Done(Err(e)),
                },
                Stage::Done(answer) => return answer,
            };
        }
    }

    /// The record of command `id` (hashed `hash`), if this actor already applied it.
    fn known(&self, id: Option<&CommandId>, hash: u64) -> Option<CommandRecord> {
        let id = id?;
        self.recent.as_ref()?.find(hash, id)
    }

    /// What follows a decision: events a loaded model does not allow end the command, no
    /// events is the answer at once, and other events are encoded for the append.
    fn prepare(
        &self,
        command: &A::Command,
        command_id: Option<&CommandId>,
        events: Vec<A::Event>,
        ops: Vec<TimeOp<A>>,
    ) -> Stage<A> {
        if let Some(rules) = self.shared.rules.get()
            && let Err(reason) = rules.check::<A>(command, &events)
        {
            return Stage::Done(Err(AskError::NotInModel {
                actor_id: self.id.clone(),
                reason,
            }));
        }
        if events.is_empty() && ops.is_empty() {
            return Stage::Done(Ok(Applied {
                version: self.version,
                events,
            }));
        }
        match self.encode(&events, command_id) {
            Ok(stored) => {
                note_event_ids(&stored);
                Stage::Append(Decided {
                    events,
                    stored,
                    ops,
                })
            }
            Err(e) => Stage::Done(Err(e)),
        }
    }

    /// The append of a decision that asked something of time: its reminders set first, then
    /// its events (if any) appended, then its cancellations and timers carried out.
    async fn append_with_time(
        &mut self,
        mut decided: Decided<A>,
        command_id: Option<&CommandId>,
        hash: u64,
        attempt: u32,
    ) -> Stage<A> {
        if let Err(e) = self.set_reminders(&decided.ops).await {
            return Stage::Done(Err(e));
        }
        let ops = std::mem::take(&mut decided.ops);
        let applied = if decided.stored.is_empty() {
            Applied {
                version: self.version,
                events: decided.events,
            }
        } else {
            match self.append(&decided.stored).await {
                Ok(()) => self.applied(decided, command_id, hash).await,
                // A conflict or a failure: the caller's loop decides again or answers.
                Err(e) => return self.append_failed(e, attempt),
            }
        };
        Stage::Done(self.after_stored(ops).await.map(|()| applied))
    }

    /// What a failed append leads to: after a conflict, folding in the other writer's events and
    /// deciding again (while attempts remain); otherwise the failure is the answer.
    fn append_failed(&self, e: StoreError, attempt: u32) -> Stage<A> {
        if !e.is_version_conflict() {
            return Stage::Done(Err(AskError::Store {
                actor_id: self.id.clone(),
                source: Box::new(e),
            }));
        }
        bump(&self.shared.stats.conflicts);
        self.shared.metrics.conflicts.increment(1);
        if attempt < self.shared.config.retry.max_attempts {
            Stage::FoldIn { backoff: true }
        } else {
            Stage::Done(Err(AskError::Conflict {
                actor_id: self.id.clone(),
                attempts: attempt,
            }))
        }
    }

    /// Encodes decided events once, at the versions after the current one, with the command's
    /// id as their causation id.
    fn encode(
        &self,
        events: &[A::Event],
        command_id: Option<&CommandId>,
    ) -> Result<Vec<Event>, AskError<A::Error>> {
        events
            .iter()
            .zip(self.version + 1..)
            .map(|(event, version)| {
                let event_type = A::event_type(event);
                let builder = Event::builder(&*self.id, event_type)
                    .version(version)
                    .schema_version(self.shared.upcasters.current_version(event_type))
                    .payload(event);
                match command_id {
                    Some(cause) => builder.causation_id(cause.clone()),
                    None => builder,
                }
                .build()
                .map_err(|source| AskError::Codec {
                    actor_id: self.id.clone(),
                    context: format!("encoding a {event_type} event"),
                    source: Box::new(source),
                })
            })
            .collect()
    }

    /// Appends `stored`. The first try awaits the store's own (boxed) future, with nothing
    /// around it; only a transient failure enters the re-send loop, boxed as a rare path.
    async fn append(&self, stored: &[Event]) -> Result<(), StoreError> {
        let sent = tokio::time::Instant::now();
        match self.append_once(stored).await {
            Err(e) if e.is_transient() => rare(self.append_through_outages(stored, e, sent)).await,
            other => other,
        }
    }

    /// One append of `stored` (the store's future, not wrapped in another).
    fn append_once<'a>(
        &'a self,
        stored: &'a [Event],
    ) -> Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send + 'a>> {
        if let [one] = stored {
            self.shared.store.save_event(one.clone())
        } else {
            self.shared.store.save_events(stored.to_vec())
        }
    }

    /// After the first append of `stored` (sent at `started`) failed transiently with `first`:
    /// re-sends the same events (same ids: a stored one is recognised, never stored twice) while
    /// the store reports a transient failure, for up to `RetryPolicy::transient_budget` since
    /// `started`. Other results are returned as they are.
    async fn append_through_outages(
        &self,
        stored: &[Event],
        first: StoreError,
        started: tokio::time::Instant,
    ) -> Result<(), StoreError> {
        through_outages(
            self.shared.config.retry.transient_budget,
            started,
            Err(first),
            StoreError::is_transient,
            |e, retries| {
                self.count_retry();
                tracing::debug!(actor_type = A::TYPE, actor_id = %self.id, error = %e, retries, "store unavailable; re-sending the same events");
            },
            || self.append_once(stored),
        )
        .await
    }

    /// Folds appended events into the state, remembers the command's id, and publishes the
    /// events (the copy encoded for the store) when there is a bus.
    async fn applied(
        &mut self,
        decided: Decided<A>,
        command_id: Option<&CommandId>,
        hash: u64,
    ) -> Applied<A::Event> {
        for event in &decided.events {
            self.state.apply(event);
        }
        let n = decided.events.len() as u64;
        if let Some(id) = command_id {
            // Applied now: the first event's timestamp is this process's clock, read when the
            // event was built (a replay of the event sees the same time).
            let at = decided.stored.first().map_or(0, |e| millis(e.timestamp()));
            let command = Remembered {
                hash,
                id: id.clone(),
                first: self.version + 1,
                last: self.version + n,
                at,
            };
            remember(
                &mut self.recent,
                &self.shared.config.command_memory,
                command,
                at,
            );
        }
        self.version += n;
        self.since_snapshot += n;
        self.shared.metrics.events.increment(n);
        if self.shared.bus.is_some() {
            rare(self.publish(decided.stored)).await;
        }
        Applied {
            version: self.version,
            events: decided.events,
        }
    }

    /// Counts a panic of the actor's code (runtime stats and metrics).
    pub(super) fn count_panic(&self) {
        bump(&self.shared.stats.panics);
        self.shared.metrics.panics.increment(1);
    }

    /// Counts one more try of a command (runtime stats and metrics).
    fn count_retry(&self) {
        bump(&self.shared.stats.retries);
        self.shared.metrics.retries.increment(1);
    }

    /// Publishes appended events on the bus; a failure is logged (the events are stored).
    async fn publish(&self, stored: Vec<Event>) {
        let Some((bus, namespace)) = &self.shared.bus else {
            return;
        };
        for event in &stored {
            if let Err(e) = bus.publish(namespace, event).await {
                tracing::warn!(actor_type = A::TYPE, actor_id = %self.id, error = %e, "publishing an appended event failed");
            }
        }
    }

    /// The outcome of an already applied command, rebuilt from its stored events.
    async fn answer_again(
        &self,
        record: CommandRecord,
    ) -> Result<Applied<A::Event>, AskError<A::Error>> {
        bump(&self.shared.stats.duplicates);
        self.shared.metrics.duplicates.increment(1);
        tracing::debug!(actor_type = A::TYPE, actor_id = %self.id, command_id = %record.id, "command already applied; answering from its events");
        // Read as a stream and left at the command's last event: the command may lie tens of
        // thousands of events back (ids are remembered for a time, not a count).
        let mut stored = self.shared.store.stream_events(&self.id, record.first);
        let mut events = Vec::new();
        while let Some(event) = stored.next().await {
            let event = event.map_err(|source| AskError::Store {
                actor_id: self.id.clone(),
                source: Box::new(source),
            })?;
            if event.version() > record.last {
                break;
            }
            if event.metadata().causation_id.as_deref() == Some(record.id.as_str()) {
                decode_current::<A>(&self.shared.upcasters, event, |e| events.push(e))
                    .map_err(|e| e.into_ask(&self.id))?;
            }
        }
        Ok(Applied {
            version: record.last,
            events,
        })
    }

    /// Whether the store holds events this VM has not applied.
    async fn behind_the_store(&self) -> bool {
        match self.shared.store.get_latest_version(&self.id).await {
            Ok(latest) => latest > self.version,
            Err(e) => {
                tracing::warn!(actor_type = A::TYPE, actor_id = %self.id, error = %e, "could not check for newer events before refusing");
                false
            }
        }
    }

    /// Folds in the events other writers appended; returns the record of command `command_id`
    /// when they include its events.
    async fn catch_up(
        &mut self,
        command_id: Option<&CommandId>,
    ) -> Result<Option<CommandRecord>, AskError<A::Error>> {
        let replayed = replay(
            &self.shared,
            &self.id,
            &mut self.state,
            &mut self.version,
            &mut self.recent,
            command_id.map(CommandId::as_str),
        )
        .await
        .map_err(|failure| failure.into_ask(&self.id))?;
        self.since_snapshot += replayed.events;
        Ok(command_id
            .zip(replayed.wanted)
            .map(|(id, (first, last))| CommandRecord::new(id.as_str(), first, last)))
    }
}

/// Records the ids of the events about to be stored on the command's span, when it is on.
fn note_event_ids(stored: &[Event]) {
    let span = tracing::Span::current();
    if !span.is_disabled() {
        let ids: Vec<String> = stored.iter().map(|e| e.id().to_string()).collect();
        span.record("event_ids", ids.join(",").as_str());
    }
}
