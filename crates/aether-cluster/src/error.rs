//! The cluster's errors.

use std::time::Duration;

/// A boxed error from NATS.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a cluster operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// A configuration value is out of range.
    #[error("invalid cluster config: {field} {reason}")]
    InvalidConfig {
        /// The setting.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The cluster was created with another shard count; it is fixed for the cluster's life.
    #[error(
        "cluster {cluster} has {cluster_shards} shards but this node is configured with {configured}; \
         the shard count is fixed for a cluster's life (use the same value, or another cluster name)"
    )]
    ShardCountMismatch {
        /// The cluster name.
        cluster: String,
        /// The cluster's shard count.
        cluster_shards: u32,
        /// This node's.
        configured: u32,
    },
    /// Another live process holds this node id.
    #[error(
        "node id {node_id} is in use in cluster {cluster}: its record was still renewed after waiting {waited:?}; \
         pick another node id or stop the other process"
    )]
    NodeIdInUse {
        /// The cluster name.
        cluster: String,
        /// The node id.
        node_id: String,
        /// How long this node waited for the record to expire.
        waited: Duration,
    },
    /// Setting up the cluster's KV bucket failed (JetStream disabled, no permission, server down).
    #[error("setting up cluster {cluster} on NATS failed while {context}: {source}")]
    Setup {
        /// The cluster name.
        cluster: String,
        /// What the node was doing.
        context: String,
        /// The cause.
        #[source]
        source: BoxError,
    },
    /// The NATS server refused a subject the node needs for the user's permissions: they forbid
    /// publishing to, or subscribing to, `subject` (the cluster's bucket or one of its keys, the
    /// node's call or handoff subject, the reply inbox). Reported at once with a permission
    /// watch ([`ClusterConfig::permissions`](crate::ClusterConfig::permissions)); without one,
    /// the refused request times out ([`ClusterError::Setup`] or [`ClusterError::Nats`]). Not
    /// transient: the same request is refused again until an operator grants the permission.
    #[error("permission denied while {context}: the server refused {operation} to {subject:?}")]
    PermissionDenied {
        /// `"publish"` or `"subscribe"`.
        operation: &'static str,
        /// The refused subject.
        subject: String,
        /// What the node was doing, with the cluster's name.
        context: String,
    },
    /// A NATS operation failed.
    #[error("cluster {cluster}: {context}: {source}")]
    Nats {
        /// The cluster name.
        cluster: String,
        /// What the node was doing.
        context: String,
        /// The cause.
        #[source]
        source: BoxError,
    },
    /// `start` was called twice.
    #[error("cluster node {node_id} is already started")]
    AlreadyStarted {
        /// The node id.
        node_id: String,
    },
    /// The node has left the cluster (or was never started).
    #[error("cluster node {node_id} is not running")]
    NotRunning {
        /// The node id.
        node_id: String,
    },
    /// A stored document is not in the documented format.
    #[error("cluster {cluster}: key {key} does not hold the documented format: {reason}")]
    Corrupt {
        /// The cluster name.
        cluster: String,
        /// The KV key.
        key: String,
        /// Why it does not decode.
        reason: String,
    },
}

impl ClusterError {
    /// `true` for [`ClusterError::PermissionDenied`]: the user's permissions forbid a subject the
    /// node needs.
    pub fn is_permission_denied(&self) -> bool {
        matches!(self, ClusterError::PermissionDenied { .. })
    }

    /// The error of a request the server refused, while `context`.
    pub(crate) fn denied(
        refusal: aether_nats::permissions::Refusal,
        context: impl Into<String>,
    ) -> Self {
        ClusterError::PermissionDenied {
            operation: refusal.operation.as_str(),
            subject: refusal.subject,
            context: context.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aether_nats::permissions::{Operation, Refusal};

    #[test]
    fn a_refusal_is_a_permission_error_naming_the_subject() {
        let e = ClusterError::denied(
            Refusal::new(Operation::Publish, "$KV.aether-cluster-c.config"),
            "joining cluster c (writing the cluster settings)",
        );
        assert!(e.is_permission_denied());
        assert_eq!(
            e.to_string(),
            "permission denied while joining cluster c (writing the cluster settings): \
             the server refused publish to \"$KV.aether-cluster-c.config\""
        );
    }
}
