//! The serving side: answers calls other nodes send for actors of shards this node owns, and
//! takes the handoff confirmations of shards moving to it.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;
use tracing::Instrument;

use super::shards::{MigrationStatus, Serve};
use super::wire::{self, Answer, Call, Handoff, Status};
use super::{NodeInner, lock};
use crate::hash::shard_for;

/// Calls answered at once; more wait in the subscription (and, past its buffer, are dropped
/// by NATS as a slow consumer's, which callers see as a timeout and re-send).
const ANSWERING_AT_ONCE: usize = 4096;

/// How long a call is held here for a shard that is about to be served (pending handoff, map
/// not yet applied) before the caller is told to try again.
const HOLD_HERE: Duration = Duration::from_secs(2);

impl NodeInner {
    pub(super) async fn serve_calls(self: Arc<Self>, mut calls: async_nats::Subscriber) {
        let permits = Arc::new(tokio::sync::Semaphore::new(ANSWERING_AT_ONCE));
        loop {
            let message = tokio::select! {
                () = self.cancel.cancelled() => return,
                m = calls.next() => m,
            };
            let Some(message) = message else { return };
            let Some(reply) = message.reply.clone() else {
                continue; // nobody to answer
            };
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let node = self.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let answer = node.answer(&message.payload).await;
                match wire::encode(&answer) {
                    Ok(bytes) => {
                        if let Err(e) = node.client.publish(reply, bytes).await {
                            tracing::warn!(node = %node.me(), error = %e, "could not send an answer");
                        }
                    }
                    Err(e) => {
                        tracing::error!(node = %node.me(), error = %e, "an answer does not encode")
                    }
                }
            });
        }
    }

    async fn answer(&self, payload: &[u8]) -> Answer {
        let epoch_now = || self.manager.shard_map().map_or(0, |m| m.epoch());
        let call: Call = match wire::decode(payload) {
            Ok(c) => c,
            Err(e) => {
                return Answer::with_reason(
                    Status::BadRequest,
                    epoch_now(),
                    format!("the call does not decode: {e}"),
                );
            }
        };
        let Some(host) = self.host(&call.actor_type) else {
            return Answer::with_reason(
                Status::BadRequest,
                epoch_now(),
                format!(
                    "node {} hosts no actor type {:?}",
                    self.me(),
                    call.actor_type
                ),
            );
        };
        if let Err(e) = aether_core::limits::validate_actor_id(&call.actor) {
            return Answer::with_reason(Status::BadRequest, epoch_now(), e.to_string());
        }
        let shard = shard_for(&call.actor, self.config.shard_count);
        let until = Instant::now() + HOLD_HERE.min(self.config.request_timeout / 2);
        loop {
            let mapped = self.map_changed.notified();
            let moved = self.shards.changed.notified();
            tokio::pin!(mapped, moved);
            mapped.as_mut().enable();
            moved.as_mut().enable();
            let map = self.manager.shard_map();
            let epoch = map.as_ref().map_or(0, |m| m.epoch());
            let applied = self.applied_epoch();
            let waiting = Instant::now() < until;
            if (epoch < call.epoch || applied < epoch) && waiting {
                // The caller has seen a newer map, or this node has not applied its own yet.
            } else if map.as_ref().and_then(|m| m.owner(shard)) != Some(self.me()) {
                return Answer::status(Status::NotOwner, epoch);
            } else {
                match self.shards.enter(shard) {
                    Ok(entered) => {
                        self.metrics.served.increment(1);
                        let span = tracing::debug_span!(
                            "aether.cluster.serve",
                            cluster = %self.config.cluster_name,
                            actor_type = call.actor_type.as_str(),
                            actor_id = call.actor.as_str(),
                            command_id = call.id.as_str(),
                            epoch,
                        );
                        let answer = host
                            .serve(&call.actor, call.id.into(), &call.cmd, epoch)
                            .instrument(span)
                            .await;
                        drop(entered);
                        return answer;
                    }
                    Err(Serve::Draining) => return Answer::status(Status::Moving, epoch),
                    Err(_) if !waiting => return Answer::status(Status::Moving, epoch),
                    Err(_) => {} // pending handoff: hold the call
                }
            }
            let _ = tokio::time::timeout_at(until, futures::future::select(mapped, moved)).await;
        }
    }

    pub(super) async fn serve_handoffs(self: Arc<Self>, mut handoffs: async_nats::Subscriber) {
        loop {
            let message = tokio::select! {
                () = self.cancel.cancelled() => return,
                m = handoffs.next() => m,
            };
            let Some(message) = message else { return };
            match wire::decode::<Handoff>(&message.payload) {
                Ok(handoff) => self.take_handoff(&handoff),
                Err(e) => {
                    tracing::warn!(node = %self.me(), error = %e, "a handoff message does not decode; ignored");
                    continue;
                }
            }
            if let Some(reply) = message.reply {
                let _ = self
                    .client
                    .publish(reply, bytes::Bytes::from_static(b"\x81\xa2ok\xc3"))
                    .await;
            }
        }
    }

    /// The previous owner drained `handoff.shards`: serve the ones pending here; remember the
    /// others in case this node has not applied the map that gives them yet.
    pub(super) fn take_handoff(&self, handoff: &Handoff) {
        let _span = tracing::debug_span!(
            "aether.cluster.move",
            cluster = %self.config.cluster_name,
            node = %self.me(),
            side = "take",
            epoch = handoff.epoch,
            shards = handoff.shards.len(),
            from = handoff.from.as_str(),
        )
        .entered();
        let mut early = lock(&self.early);
        for &shard in &handoff.shards {
            if shard >= self.config.shard_count {
                continue;
            }
            match self.shards.state(shard) {
                Serve::Pending => {
                    self.shards.set(shard, Serve::Serving);
                    if let Some(m) = self.shards.finish(shard, MigrationStatus::Done, None) {
                        self.metrics.moves_done.increment(1);
                        tracing::debug!(node = %self.me(), shard, from = ?m.from, took = ?m.took, "shard handed over");
                    }
                }
                Serve::NotMine => {
                    early.insert(shard, (handoff.from.clone(), handoff.epoch));
                }
                Serve::Serving | Serve::Draining => {}
            }
        }
    }
}
