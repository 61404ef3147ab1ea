//! What the node processes said, timestamped on arrival: every command tried and its outcome,
//! the errors by kind, and the cluster and connection events the fault timings are read from.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// One command a node tried.
#[derive(Debug, Clone)]
pub(crate) struct Try {
    /// The node that sent it.
    pub(crate) node: String,
    /// The account.
    pub(crate) actor: String,
    /// The amount deposited.
    pub(crate) amount: u64,
    /// When the first attempt was announced.
    pub(crate) at: Instant,
    /// When it was acknowledged.
    pub(crate) acked: Option<Instant>,
    /// The error it ended with, if it was not retried further.
    pub(crate) failed: Option<String>,
}

/// An event line (`EVENT ...`, `NATS ...`, `READY`, `STOPPED`, `LEFT ...`) of a node.
#[derive(Debug, Clone)]
pub(crate) struct Said {
    /// When it arrived.
    pub(crate) at: Instant,
    /// The node that said it.
    pub(crate) node: String,
    /// The line.
    pub(crate) line: String,
}

#[derive(Debug, Default)]
struct Inner {
    tries: HashMap<String, Try>,
    errors: BTreeMap<String, u64>,
    said: Vec<Said>,
    unparsed: u64,
    samples: Vec<String>,
}

/// The orchestrator's record of everything the nodes printed.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    inner: Mutex<Inner>,
    changed: Notify,
}

impl Ledger {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records one stdout line of `node`.
    pub(crate) fn record(&self, node: &str, line: &str) {
        let now = Instant::now();
        let mut inner = self.lock();
        let mut words = line.split(' ');
        match words.next() {
            Some("TRY") => match (words.next(), words.next(), words.next()) {
                (Some(id), Some(actor), Some(amount)) => {
                    let amount = amount.parse().unwrap_or(0);
                    inner.tries.insert(
                        id.to_owned(),
                        Try {
                            node: node.to_owned(),
                            actor: actor.to_owned(),
                            amount,
                            at: now,
                            acked: None,
                            failed: None,
                        },
                    );
                }
                _ => inner.unparsed += 1,
            },
            Some("ACK") => {
                if let Some(t) = words.next().and_then(|id| inner.tries.get_mut(id)) {
                    t.acked = Some(now);
                }
            }
            Some("RETRY") => {
                let kind = words.nth(1).unwrap_or("?");
                *inner.errors.entry(format!("retried: {kind}")).or_default() += 1;
            }
            Some("FAIL") => {
                let id = words.next().unwrap_or_default().to_owned();
                let kind = words.next().unwrap_or("?").to_owned();
                *inner.errors.entry(format!("final: {kind}")).or_default() += 1;
                let text: Vec<&str> = words.clone().collect();
                if inner.samples.len() < 5 {
                    inner.samples.push(format!("{id}: {}", text.join(" ")));
                }
                if let Some(t) = inner.tries.get_mut(&id) {
                    t.failed = Some(kind);
                }
            }
            Some(_) => inner.said.push(Said {
                at: now,
                node: node.to_owned(),
                line: line.to_owned(),
            }),
            None => {}
        }
        drop(inner);
        self.changed.notify_waiters();
    }

    /// Records something the orchestrator itself observed (a hostile input's outcome, say).
    pub(crate) fn count_error(&self, kind: impl Into<String>) {
        *self.lock().errors.entry(kind.into()).or_default() += 1;
    }

    /// Waits until `pred` holds over the lines said so far; `Err` after `timeout`.
    pub(crate) async fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&[Said]) -> Option<T>,
    ) -> Result<T, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            if let Some(found) = pred(&self.lock().said) {
                return Ok(found);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(format!("no {what} within {timeout:?}"));
            }
        }
    }

    /// The first line of any node after `since` that `pred` accepts.
    pub(crate) async fn first_after(
        &self,
        what: &str,
        since: Instant,
        timeout: Duration,
        pred: impl Fn(&Said) -> bool,
    ) -> Result<Said, String> {
        self.wait_for(what, timeout, |said| {
            said.iter().find(|s| s.at >= since && pred(s)).cloned()
        })
        .await
    }

    /// Waits until every node in `nodes` has had a command *started* after `since` acknowledged,
    /// and returns how long after `since` the last of them was.
    pub(crate) async fn served_again(
        &self,
        nodes: &[String],
        since: Instant,
        timeout: Duration,
    ) -> Result<Duration, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            let latest = {
                let inner = self.lock();
                let mut latest = Some(since);
                for node in nodes {
                    let first = inner
                        .tries
                        .values()
                        .filter(|t| &t.node == node && t.at >= since)
                        .filter_map(|t| t.acked)
                        .min();
                    latest = match (latest, first) {
                        (Some(l), Some(f)) => Some(l.max(f)),
                        _ => None,
                    };
                }
                latest
            };
            if let Some(latest) = latest {
                return Ok(latest - since);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(format!(
                    "nodes {nodes:?} did not all get a new command acknowledged within {timeout:?}"
                ));
            }
        }
    }

    /// The lines said so far that `pred` accepts.
    pub(crate) fn said_matching(&self, pred: impl Fn(&Said) -> bool) -> Vec<Said> {
        self.lock()
            .said
            .iter()
            .filter(|s| pred(s))
            .cloned()
            .collect()
    }

    /// Every command tried, by id.
    pub(crate) fn tries(&self) -> HashMap<String, Try> {
        self.lock().tries.clone()
    }

    /// Errors by kind.
    pub(crate) fn errors(&self) -> BTreeMap<String, u64> {
        self.lock().errors.clone()
    }

    /// The text of the first few final errors.
    pub(crate) fn samples(&self) -> Vec<String> {
        self.lock().samples.clone()
    }

    /// Lines that did not parse (a broken node protocol).
    pub(crate) fn unparsed(&self) -> u64 {
        self.lock().unparsed
    }
}
