//! A consistent-hash ring with virtual nodes (the seed's `ConsistentHashRing`).
//!
//! Every node owns `virtual_nodes` points on a 64-bit ring, at `stable_hash("<node id>#<i>")`.
//! A key belongs to the first point clockwise from its own hash. Adding a node only takes keys
//! from others *to the new node*; removing one only moves *its* keys: nothing ever moves between
//! two nodes that stayed (proptested in this crate).

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use crate::hash::stable_hash;

/// Virtual nodes per node when none is given. With 1024 shards this keeps every node between 1/3
/// and 2x of the mean share (docs/cluster.md states the measured bounds).
pub const DEFAULT_VIRTUAL_NODES: u32 = 256;

/// A consistent-hash ring with virtual nodes.
///
/// ```
/// use aether_cluster::ConsistentHashRing;
/// let mut ring = ConsistentHashRing::new(256);
/// ring.add_node("node-a");
/// ring.add_node("node-b");
/// let owner = ring.get_node("order-42").unwrap();
/// assert!(owner == "node-a" || owner == "node-b");
/// ```
#[derive(Clone, Default)]
pub struct ConsistentHashRing {
    virtual_nodes: u32,
    /// Sorted by point; ties (astronomically rare) broken by node id, so the order is total.
    points: Vec<(u64, Arc<str>)>,
    nodes: BTreeSet<Arc<str>>,
}

impl fmt::Debug for ConsistentHashRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsistentHashRing")
            .field("virtual_nodes", &self.virtual_nodes)
            .field("nodes", &self.nodes)
            .field("points", &self.points.len())
            .finish()
    }
}

impl ConsistentHashRing {
    /// An empty ring whose nodes get `virtual_nodes` points each (at least 1).
    pub fn new(virtual_nodes: u32) -> Self {
        Self {
            virtual_nodes: virtual_nodes.max(1),
            points: Vec::new(),
            nodes: BTreeSet::new(),
        }
    }

    /// A ring holding `nodes`.
    pub fn with_nodes<'a>(virtual_nodes: u32, nodes: impl IntoIterator<Item = &'a str>) -> Self {
        let mut ring = Self::new(virtual_nodes);
        for node in nodes {
            ring.insert_points(node);
        }
        ring.points.sort_unstable();
        ring
    }

    /// The ring position of a node's `i`-th virtual node.
    pub fn point_of(node_id: &str, i: u32) -> u64 {
        stable_hash(format!("{node_id}#{i}").as_bytes())
    }

    /// Adds a node (no effect if it is already there).
    pub fn add_node(&mut self, node_id: &str) {
        if self.insert_points(node_id) {
            self.points.sort_unstable();
        }
    }

    /// Adds a node's points unsorted; false if it was already there.
    fn insert_points(&mut self, node_id: &str) -> bool {
        if self.nodes.contains(node_id) {
            return false;
        }
        let id: Arc<str> = Arc::from(node_id);
        self.nodes.insert(id.clone());
        self.points
            .extend((0..self.virtual_nodes).map(|i| (Self::point_of(node_id, i), id.clone())));
        true
    }

    /// Removes a node (no effect if it is not there).
    pub fn remove_node(&mut self, node_id: &str) {
        if self.nodes.remove(node_id) {
            self.points.retain(|(_, n)| &**n != node_id);
        }
    }

    /// The node owning `key` (by its stable hash), or `None` on an empty ring.
    pub fn get_node(&self, key: &str) -> Option<&str> {
        self.node_for_hash(stable_hash(key.as_bytes()))
    }

    /// The node owning a ring position: the first point at or after `hash`, wrapping around.
    pub fn node_for_hash(&self, hash: u64) -> Option<&str> {
        let i = self.points.partition_point(|(p, _)| *p < hash);
        self.points
            .get(i)
            .or_else(|| self.points.first())
            .map(|(_, n)| &**n)
    }

    /// The nodes on the ring, in id order.
    pub fn nodes(&self) -> impl Iterator<Item = &str> {
        self.nodes.iter().map(|n| &**n)
    }

    /// How many nodes are on the ring.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the ring has no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Virtual nodes per node.
    pub fn virtual_nodes(&self) -> u32 {
        self.virtual_nodes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_ring_has_no_owner() {
        assert_eq!(ConsistentHashRing::new(8).get_node("x"), None);
    }

    #[test]
    fn wraps_around() {
        let ring = ConsistentHashRing::with_nodes(4, ["a"]);
        assert_eq!(ring.node_for_hash(u64::MAX), Some("a"));
        assert_eq!(ring.node_for_hash(0), Some("a"));
    }

    #[test]
    fn add_and_remove_are_idempotent() {
        let mut ring = ConsistentHashRing::with_nodes(4, ["a", "b"]);
        ring.add_node("a");
        assert_eq!(ring.points.len(), 8);
        ring.remove_node("c");
        ring.remove_node("a");
        assert_eq!(ring.points.len(), 4);
        assert_eq!(ring.nodes().collect::<Vec<_>>(), ["b"]);
    }
}
