//! Fault-injection points, so that tests drive the protocol through the library's own code
//! (feature `fault-injection`; for tests only, never for production builds).
//!
//! A point is an async hook the library awaits at one place in its protocol. A test holds the
//! node there (as a long GC pause or a descheduled thread would) while it changes the world
//! around it, then lets it go on.
//!
//! ```
//! use aether_cluster::ClusterConfig;
//! use aether_cluster::faults::FaultPoints;
//!
//! let faults = FaultPoints::new().before_map_write(|| {
//!     Box::pin(async { /* hold the leader here */ })
//! });
//! let config = ClusterConfig::new("orders").fault_points(faults);
//! # drop(config);
//! ```

use std::fmt;
use std::sync::Arc;

use futures::future::BoxFuture;

/// An async hook the library awaits at a fault point.
pub type Hook = Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

/// The places a test can hold a node at. None are set by default.
#[derive(Clone, Default)]
pub struct FaultPoints {
    pub(crate) before_map_write: Option<Hook>,
}

impl FaultPoints {
    /// No fault points.
    pub fn new() -> Self {
        Self::default()
    }

    /// Awaited by the leader after it has decided to publish a shard map, its lease valid by
    /// its own clock, and before it sends the fenced write (docs/cluster.md, "Fencing the
    /// map"): the window in which a paused leader may have been deposed.
    pub fn before_map_write(
        mut self,
        hook: impl Fn() -> BoxFuture<'static, ()> + Send + Sync + 'static,
    ) -> Self {
        self.before_map_write = Some(Arc::new(hook));
        self
    }

    /// Awaits the hook at `before_map_write`, if one is set.
    pub(crate) async fn at_map_write(&self) {
        if let Some(hook) = &self.before_map_write {
            hook().await;
        }
    }
}

impl fmt::Debug for FaultPoints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultPoints")
            .field("before_map_write", &self.before_map_write.is_some())
            .finish()
    }
}
