//! Fast failover: a member whose connection is gone is confirmed dead and failed at once,
//! instead of after its record expires.
//!
//! A request to a node's call subject that finds no responders means the server knows no
//! subscription of that node: its connection closed (a crash, a kill, a node stopped without
//! leaving). A call that meets it, here or in a [`ClusterClient`](crate::ClusterClient) (which
//! reports it on the suspect subject), makes this node read the suspect's record (from the
//! stream leader) and probe it, every [`PROBE_GAP`] for the failover window ([`probe_window`];
//! every probe in it must find no responders; a node that lost its server and reaches another
//! within the window is not failed) (a probe carries the
//! `Aether-Probe` header: the node never answers it, the server answers "no responders" when
//! the node's subscription is gone). Only if every probe finds no responders is the member
//! failed (`ClusterManager::fail_member`), fenced on the revision read first: a node that
//! heartbeats during the window, which lasts longer than a heartbeat interval, keeps its record.
//! A paused, slow or cut-off node still has its subscription, so it is not failed here: pauses
//! and partitions go by the failure timeout and fencing, as before.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Shared;
use super::router::probe_finds_nobody;
use super::wire;

/// Between two probes.
pub(super) const PROBE_GAP: Duration = Duration::from_millis(250);
/// How much longer than one heartbeat interval the window lasts at least.
const HEARTBEAT_MARGIN: Duration = Duration::from_millis(100);
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

    /// Probes `suspect` for the probe window; fails it if no probe finds a responder and its
    /// record did not change meanwhile.
    async fn check(&self, suspect: &str) {
        let node = &self.node;
        // Read first: the marker is fenced on this revision, so a heartbeat during the window
        // (the node alive, reaching the bucket another way) or a new incarnation refuses it.
        let revision = match node.manager.member_revision(suspect).await {
            Ok(Some(revision)) => revision,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(node = %node.me(), suspect, error = %e, "reading a suspect's record failed");
                return;
            }
        };
        let cfg = &node.config;
        let window = probe_window(cfg.failover_window, cfg.heartbeat_interval);
        if window >= cfg.failure_timeout {
            return; // fast failover is off: the record's expiry decides
        }
        let subject = wire::call_subject(&cfg.cluster_name, suspect);
        let started = Instant::now();
        loop {
            // Anything but "no responders" (a probe is never answered): there.
            if !probe_finds_nobody(&node.client, &subject).await {
                return;
            }
            if started.elapsed() >= window {
                break;
            }
            tokio::select! {
                () = node.cancel.cancelled() => return,
                () = tokio::time::sleep(PROBE_GAP) => {}
            }
        }
        if let Err(e) = node.manager.fail_member(suspect, revision).await {
            tracing::warn!(node = %node.me(), suspect, error = %e, "failing a member confirmed dead failed; its record expires by itself");
        }
    }
}

/// How long a suspect is probed: the configured window
/// ([`ClusterConfig::failover_window`](crate::ClusterConfig::failover_window)), and longer than
/// one heartbeat interval, so that a node that is alive heartbeats within it and its new
/// revision refuses the marker even when probes cannot reach it (the servers' routes cut, say).
pub(super) fn probe_window(configured: Duration, heartbeat: Duration) -> Duration {
    configured.max(heartbeat + HEARTBEAT_MARGIN)
}
