//! [`ClusterEvent`]: what a node observes, as a stream.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use crate::map::{RebalancePlan, ShardMap};
use crate::record::NodeRecord;

/// A change in membership, leadership or the shard map, as this node sees it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ClusterEvent {
    /// A node's record appeared.
    MemberJoined(NodeRecord),
    /// A node's record changed (status, load, metadata, capacity).
    MemberUpdated(NodeRecord),
    /// A node left gracefully (deleted its record).
    MemberLeft {
        /// The node.
        node_id: String,
    },
    /// A node's record expired: it stopped heartbeating for the failure timeout. Also reported
    /// for a record that vanished while this node's watch was reconnecting.
    MemberFailed {
        /// The node.
        node_id: String,
    },
    /// The leader lease changed hands (or lapsed: `leader` is `None`).
    LeaderChanged {
        /// The holder.
        leader: Option<String>,
        /// Its term (0 when there is no leader).
        term: u64,
    },
    /// This node won the lease.
    BecameLeader {
        /// Its fencing term.
        term: u64,
    },
    /// This node stopped leading.
    SteppedDown {
        /// The term it held.
        term: u64,
        /// Why.
        reason: String,
    },
    /// A newer shard map was published.
    ShardMapChanged {
        /// The map.
        map: Arc<ShardMap>,
        /// What moved since the map this node had before (every shard for the first map).
        plan: RebalancePlan,
    },
    /// The consumer fell behind and missed this many events; read the current state from the
    /// manager (`members`, `shard_map`, `leader`).
    Lagged {
        /// How many.
        missed: u64,
    },
}

/// The stream [`ClusterManager::watch`](crate::ClusterManager::watch) returns. Each watcher has
/// a bounded buffer (1024 events); a slow one gets [`ClusterEvent::Lagged`] instead of blocking
/// the node.
#[derive(Debug)]
pub struct ClusterEvents {
    inner: BroadcastStream<ClusterEvent>,
}

impl ClusterEvents {
    pub(crate) fn new(rx: tokio::sync::broadcast::Receiver<ClusterEvent>) -> Self {
        Self {
            inner: BroadcastStream::new(rx),
        }
    }
}

impl Stream for ClusterEvents {
    type Item = ClusterEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.inner).poll_next(cx).map(|item| {
            item.map(|r| match r {
                Ok(e) => e,
                Err(BroadcastStreamRecvError::Lagged(missed)) => ClusterEvent::Lagged { missed },
            })
        })
    }
}
