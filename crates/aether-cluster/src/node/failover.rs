//! Fast failover: a member whose connection is gone is confirmed dead and failed at once,
//! instead of after its record expires.
//!
//! A request to a node's call subject that finds no responders means the server knows no
//! subscription of that node: its connection closed (a crash, a kill, a node stopped without
//! leaving). A call that meets it, here or in a [`ClusterClient`](crate::ClusterClient) (which
//! reports it on the suspect subject), makes this node probe the suspect: [`PROBES`] requests,
//! [`PROBE_GAP`] apart (a probe carries the `Aether-Probe` header: the node never answers it,
//! the server answers "no responders" when the node's subscription is gone). Only if every probe
//! finds no responders is the member failed (`ClusterManager::fail_member`). A paused, slow or
//! cut-off node still has its subscription, so it is not failed here: pauses and partitions go
//! by the failure timeout and fencing, as before.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Shared;
use super::router::probe_finds_nobody;
use super::wire;

/// Probes of a suspect; all must find no responders.
pub(super) const PROBES: u32 = 3;
/// Between two probes: long enough for a node that lost its server to be on another one (a
/// reconnect takes milliseconds), so a reconnecting node is not failed.
pub(super) const PROBE_GAP: Duration = Duration::from_millis(250);
/// A suspect is checked at most this often.
const CHECK_AT_MOST_EVERY: Duration = Duration::from_secs(1);
/// Suspects waiting to be checked; more are dropped (they are reported again).
pub(super) const QUEUE: usize = 64;

/// Checks the nodes that calls found without responders.
pub(super) struct Failover {
    node: Arc<Shared>,
    /// When each suspect was last taken up.
    checked: Mutex<HashMap<String, Instant>>,
}

impl Failover {
    pub(super) fn new(node: Arc<Shared>) -> Self {
        Self {
            node,
            checked: Mutex::new(HashMap::new()),
        }
    }

    /// Takes suspects from this node's calls (`suspects`) and from callers' reports
    /// (`reports`, the suspect subject) until the node stops.
    pub(super) async fn run(
        self: Arc<Self>,
        mut suspects: mpsc::Receiver<String>,
        mut reports: Option<async_nats::Subscriber>,
    ) {
        loop {
            let report = async {
                match reports.as_mut() {
                    Some(r) => r.next().await,
                    None => std::future::pending().await,
                }
            };
            let suspect = tokio::select! {
                () = self.node.cancel.cancelled() => return,
                s = suspects.recv() => match s {
                    Some(s) => s,
                    None => return,
                },
                m = report => match m {
                    Some(m) => match std::str::from_utf8(&m.payload) {
                        Ok(id) => id.to_owned(),
                        Err(_) => continue,
                    },
                    None => {
                        reports = None;
                        continue;
                    }
                },
            };
            self.consider(suspect);
        }
    }

    /// Starts checking `suspect` unless it is this node, not a member, or checked lately.
    fn consider(self: &Arc<Self>, suspect: String) {
        let node = &self.node;
        if suspect == node.me() || !node.manager.members().iter().any(|m| m.id == suspect) {
            return;
        }
        {
            let mut checked = self.checked.lock().unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            checked.retain(|_, at| now.duration_since(*at) < CHECK_AT_MOST_EVERY);
            if checked.contains_key(&suspect) {
                return;
            }
            checked.insert(suspect.clone(), now);
        }
        let failover = Arc::clone(self);
        tokio::spawn(async move { failover.check(&suspect).await });
    }

    /// Probes `suspect`; fails it if no probe finds a responder.
    async fn check(&self, suspect: &str) {
        let node = &self.node;
        let subject = wire::call_subject(&node.config.cluster_name, suspect);
        for probe in 0..PROBES {
            if probe > 0 {
                tokio::select! {
                    () = node.cancel.cancelled() => return,
                    () = tokio::time::sleep(PROBE_GAP) => {}
                }
            }
            // Anything but "no responders" (a probe is never answered): there.
            if !probe_finds_nobody(&node.client, &subject).await {
                return;
            }
        }
        if node.cancel.is_cancelled() {
            return;
        }
        match node.manager.fail_member(suspect).await {
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(node = %node.me(), suspect, error = %e, "failing a member confirmed dead failed; its record expires by itself");
            }
        }
    }
}
