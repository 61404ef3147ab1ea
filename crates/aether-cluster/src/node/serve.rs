//! The serving side ([`Server`]): answers calls other nodes send for actors of shards this node
//! owns, and receives the handoff confirmations of shards moving to it.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tracing::Instrument;

use super::Shared;
use super::handoff::Handoff;
use super::shards::Serve;
use super::wire::{self, Answer, Call, Confirmation, Status};
use crate::hash::shard_for;

/// Calls answered at once; more wait in the subscription (and, past its buffer, are dropped
/// by NATS as a slow consumer's, which callers see as a timeout and re-send).
const ANSWERING_AT_ONCE: usize = 4096;

/// How long a call is held here for a shard that is about to be served (pending handoff, map
/// not yet applied) before the caller is told to try again.
const HOLD_HERE: Duration = Duration::from_secs(2);

/// Answers the calls and handoff confirmations other nodes send this node.
#[derive(Debug)]
pub(super) struct Server {
    node: Arc<Shared>,
    /// Takes the confirmations.
    handoff: Arc<Handoff>,
    /// Calls being answered, at most [`ANSWERING_AT_ONCE`].
    permits: Arc<Semaphore>,
}

impl Server {
    pub(super) fn new(node: Arc<Shared>, handoff: Arc<Handoff>) -> Self {
        Self {
            node,
            handoff,
            permits: Arc::new(Semaphore::new(ANSWERING_AT_ONCE)),
        }
    }

    pub(super) async fn serve_calls(self: Arc<Self>, mut calls: async_nats::Subscriber) {
        loop {
            let message = tokio::select! {
                () = self.node.cancel.cancelled() => return,
                m = calls.next() => m,
            };
            let Some(message) = message else { return };
            if message
                .headers
                .as_ref()
                .is_some_and(|h| h.get(wire::PROBE_HEADER).is_some())
            {
                continue; // a liveness probe: its delivery was the answer
            }
            let Some(reply) = message.reply.clone() else {
                continue; // nobody to answer
            };
            let Ok(permit) = self.permits.clone().acquire_owned().await else {
                return;
            };
            let server = self.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let answer = server.answer(&message.payload).await;
                let node = &server.node;
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

    /// The answer to one call: served here, or why not (held a little first while this node's
    /// map or the shard's handoff is about to catch up).
    async fn answer(&self, payload: &[u8]) -> Answer {
        let node = &self.node;
        let epoch_now = || node.manager.shard_map().map_or(0, |m| m.epoch());
        let call: Call = match wire::decode(payload) {
            Ok(c) => c,
            Err(e) => {
                node.metrics.malformed_call.increment(1);
                return Answer::with_reason(
                    Status::BadRequest,
                    epoch_now(),
                    format!("the call does not decode: {e}"),
                );
            }
        };
        let Some(host) = node.hosts.get(&call.actor_type) else {
            return Answer::with_reason(
                Status::BadRequest,
                epoch_now(),
                format!(
                    "node {} hosts no actor type {:?}",
                    node.me(),
                    call.actor_type
                ),
            );
        };
        if let Err(e) = aether_core::limits::validate_actor_id(&call.actor) {
            return Answer::with_reason(Status::BadRequest, epoch_now(), e.to_string());
        }
        let shard = shard_for(&call.actor, node.config.shard_count);
        let until = Instant::now() + HOLD_HERE.min(node.config.request_timeout / 2);
        loop {
            let mapped = node.shards.map_changed.notified();
            let moved = node.shards.changed.notified();
            tokio::pin!(mapped, moved);
            mapped.as_mut().enable();
            moved.as_mut().enable();
            let map = node.manager.shard_map();
            let epoch = map.as_ref().map_or(0, |m| m.epoch());
            let applied = node.shards.map_epoch();
            let waiting = Instant::now() < until;
            if (epoch < call.epoch || applied < epoch) && waiting {
                // The caller has seen a newer map, or this node has not applied its own yet.
            } else if map.as_ref().and_then(|m| m.owner(shard)) != Some(node.me()) {
                return Answer::status(Status::NotOwner, epoch);
            } else {
                match node.shards.enter(shard) {
                    Ok(entered) => {
                        node.metrics.served.increment(1);
                        let span = tracing::debug_span!(
                            "aether.cluster.serve",
                            cluster = %node.config.cluster_name,
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

    /// Hands each confirmation to the handoff, and acknowledges it.
    pub(super) async fn serve_handoffs(self: Arc<Self>, mut handoffs: async_nats::Subscriber) {
        let node = &self.node;
        loop {
            let message = tokio::select! {
                () = node.cancel.cancelled() => return,
                m = handoffs.next() => m,
            };
            let Some(message) = message else { return };
            match wire::decode::<Confirmation>(&message.payload) {
                Ok(confirmation) => self.handoff.take(&confirmation),
                Err(e) => {
                    node.metrics.malformed_handoff.increment(1);
                    tracing::warn!(node = %node.me(), error = %e, "a handoff message does not decode; ignored");
                    continue;
                }
            }
            if let Some(reply) = message.reply {
                let _ = node
                    .client
                    .publish(reply, bytes::Bytes::from_static(b"\x81\xa2ok\xc3"))
                    .await;
            }
        }
    }
}
