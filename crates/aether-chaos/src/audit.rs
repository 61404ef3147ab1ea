//! The check every scenario ends with. It reads the stream with a plain ordered consumer and
//! decodes each record from the MessagePack layout of docs/nats-layout.md by hand (rmpv), not
//! through Aether's codec or store, then compares with what the nodes acknowledged:
//!
//! - every acknowledged command is stored exactly once, with the amount that was sent (`lost`,
//!   `duplicated`, `altered`);
//! - no command id appears on two records at all (`duplicated` counts those too);
//! - each account's versions are 1, 2, 3, ... in stream order (`gaps`);
//! - each account's state as the runtime rebuilds it (snapshot plus replay, through a fresh
//!   `Runtime` on the store) equals the fold of its records (`state_mismatches`).
//!
//! Records that do not decode as an event are counted as `foreign` and left out of the other
//! checks; their number must be exactly what the scenario wrote as hostile input (0 elsewhere),
//! and every deposit must carry the id of a command a node tried (`unexplained`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use aether_runtime::Runtime;
use aether_store_jetstream::JetStreamEventStore;
use async_nats::jetstream::{self, consumer::DeliverPolicy};
use futures::StreamExt;
use rmpv::Value;

use crate::bank::{Account, DEPOSITED};
use crate::ledger::Try;

/// One decoded event record.
#[derive(Debug, Clone)]
struct Record {
    actor: String,
    version: u64,
    amount: u64,
    command: Option<String>,
}

/// What the audit found.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub(crate) struct Findings {
    /// Records read.
    pub(crate) records: u64,
    /// Records that are not events of the account actor (hostile input, counted and skipped).
    pub(crate) foreign: u64,
    /// How many foreign records the scenario wrote itself (0 but in `hostile`): any other is a
    /// record nobody can explain.
    pub(crate) foreign_expected: u64,
    /// Deposit records whose command id is missing or was never tried by a node: an effect
    /// nobody asked for.
    pub(crate) unexplained: u64,
    /// Commands tried.
    pub(crate) attempted: u64,
    /// Commands acknowledged to their caller.
    pub(crate) acknowledged: u64,
    /// Acknowledged commands found in the stream exactly once with the amount sent.
    pub(crate) verified: u64,
    /// Acknowledged commands not in the stream.
    pub(crate) lost: u64,
    /// Command ids stored more than once (acknowledged or not).
    pub(crate) duplicated: u64,
    /// Acknowledged commands stored with another amount or on another account.
    pub(crate) altered: u64,
    /// Commands stored but never acknowledged (their caller was killed, or gave up): allowed.
    pub(crate) applied_unacknowledged: u64,
    /// Commands started by a node that was still running at the end with no outcome.
    pub(crate) unanswered: u64,
    /// Accounts whose versions are not 1, 2, 3, ... in stream order.
    pub(crate) gaps: u64,
    /// Accounts whose rebuilt state differs from the fold of their records.
    pub(crate) state_mismatches: u64,
    /// The first few problems, in words.
    pub(crate) problems: Vec<String>,
}

impl Findings {
    fn problem(&mut self, text: String) {
        if self.problems.len() < 20 {
            self.problems.push(text);
        }
    }

    /// Whether nothing was lost, doubled, altered, left unanswered or folded wrongly.
    pub(crate) fn clean(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.altered == 0
            && self.unanswered == 0
            && self.gaps == 0
            && self.state_mismatches == 0
            && self.unexplained == 0
            && self.foreign == self.foreign_expected
    }
}

/// Reads the stream `stream` and checks it against `tries`; `live` are the node processes
/// running at the end, as command id prefixes (their tries must all have an outcome).
pub(crate) async fn audit(
    client: async_nats::Client,
    stream: &str,
    tries: &HashMap<String, Try>,
    live: &[String],
    foreign_expected: u64,
) -> Result<Findings, String> {
    let mut found = Findings {
        foreign_expected,
        ..Findings::default()
    };
    let records = read(&client, stream, &mut found).await?;
    for r in &records {
        if r.command.as_deref().is_none_or(|c| !tries.contains_key(c)) {
            found.unexplained += 1;
            let what = r.command.as_deref().unwrap_or("no command id");
            found.problem(format!(
                "{} version {}: a deposit of an unknown command ({what})",
                r.actor, r.version
            ));
        }
    }
    if found.foreign != foreign_expected {
        found.problem(format!(
            "{} records are not events, {foreign_expected} were written as hostile input",
            found.foreign
        ));
    }

    // Per command id: the records that carry it.
    let mut by_command: HashMap<&str, Vec<&Record>> = HashMap::new();
    for r in &records {
        if let Some(c) = &r.command {
            by_command.entry(c).or_default().push(r);
        }
    }
    found.duplicated = by_command.values().filter(|v| v.len() > 1).count() as u64;
    for (id, rs) in by_command.iter().filter(|(_, v)| v.len() > 1) {
        found.problem(format!("command {id} stored {} times", rs.len()));
    }
    found.attempted = tries.len() as u64;
    for (id, t) in tries {
        let stored = by_command.get(id.as_str());
        if t.acked.is_some() {
            found.acknowledged += 1;
        }
        match (t.acked, stored) {
            (Some(_), None) => {
                found.lost += 1;
                found.problem(format!(
                    "acknowledged command {id} ({}) is not stored",
                    t.actor
                ));
            }
            (Some(_), Some(rs)) => {
                if rs
                    .iter()
                    .any(|r| r.actor != t.actor || r.amount != t.amount)
                {
                    found.altered += 1;
                    found.problem(format!(
                        "command {id} stored differently from what was sent"
                    ));
                } else if rs.len() == 1 {
                    found.verified += 1;
                }
            }
            (None, Some(_)) => found.applied_unacknowledged += 1,
            (None, None) => {}
        }
        if t.acked.is_none()
            && t.failed.is_none()
            && live.iter().any(|p| id.starts_with(&format!("{p}.")))
        {
            found.unanswered += 1;
            found.problem(format!(
                "command {id} of running node {} has no outcome",
                t.node
            ));
        }
    }

    // Per account: versions in stream order, and the fold.
    let mut accounts: BTreeMap<&str, (u64, Account)> = BTreeMap::new();
    for r in &records {
        let (last, state) = accounts.entry(&r.actor).or_default();
        if r.version != *last + 1 && *last != u64::MAX {
            found.gaps += 1;
            found.problem(format!(
                "{}: version {} follows {}",
                r.actor, r.version, last
            ));
            *last = u64::MAX;
        } else if *last != u64::MAX {
            *last = r.version;
        }
        state.balance = state.balance.saturating_add(r.amount);
        state.deposits += 1;
    }

    let store = Arc::new(
        JetStreamEventStore::with_config(client, stream, crate::node::store_config())
            .await
            .map_err(|e| format!("opening store {stream} for the state check: {e}"))?,
    );
    let runtime = Runtime::<Account>::builder(store.clone())
        .snapshots(store)
        .build();
    for (actor, (_, folded)) in &accounts {
        match runtime.capture_state(actor).await {
            Ok((state, version)) if state == *folded && version == folded.deposits => {}
            Ok((state, version)) => {
                found.state_mismatches += 1;
                found.problem(format!(
                    "{actor}: rebuilt {state:?} at version {version}, the records fold to {folded:?}"
                ));
            }
            Err(e) => {
                found.state_mismatches += 1;
                found.problem(format!("{actor}: rebuilding failed: {e}"));
            }
        }
    }
    runtime.shutdown().await;
    Ok(found)
}

/// Every record of the stream, decoded by hand; foreign ones counted in `found`.
async fn read(
    client: &async_nats::Client,
    stream: &str,
    found: &mut Findings,
) -> Result<Vec<Record>, String> {
    let js = jetstream::new(client.clone());
    let context = |e: &dyn std::fmt::Display| format!("reading stream {stream}: {e}");
    let mut handle = js.get_stream(stream).await.map_err(|e| context(&e))?;
    let last = handle
        .info()
        .await
        .map_err(|e| context(&e))?
        .state
        .last_sequence;
    let mut out = Vec::new();
    if last == 0 {
        return Ok(out);
    }
    let consumer = handle
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(|e| context(&e))?;
    let mut messages = consumer.messages().await.map_err(|e| context(&e))?;
    loop {
        let next = tokio::time::timeout(Duration::from_secs(30), messages.next())
            .await
            .map_err(|_| context(&"no record for 30 s before the last sequence"))?;
        let Some(message) = next else {
            return Err(context(&"the consumer ended before the last sequence"));
        };
        let message = message.map_err(|e| context(&e))?;
        let sequence = message.info().map_err(|e| context(&e))?.stream_sequence;
        found.records += 1;
        match decode(&message.payload) {
            Some(r) => out.push(r),
            None => found.foreign += 1,
        }
        if sequence >= last {
            return Ok(out);
        }
    }
}

/// An account's deposit record from the layout of docs/nats-layout.md ("Event encoding"), or
/// `None` for anything else.
fn decode(mut body: &[u8]) -> Option<Record> {
    let value = rmpv::decode::read_value(&mut body).ok()?;
    let map = value.as_map()?;
    let field = |name: &str| {
        map.iter()
            .find(|(k, _)| k.as_str() == Some(name))
            .map(|(_, v)| v)
    };
    if field("type")?.as_str()? != DEPOSITED {
        return None;
    }
    let actor = field("actor")?.as_str()?.to_owned();
    let version = field("v")?.as_u64()?;
    // `data`: the payload's own MessagePack, the externally tagged `{"Deposited": n}`.
    let mut data = match field("data")? {
        Value::Binary(b) => b.as_slice(),
        _ => return None,
    };
    let payload = rmpv::decode::read_value(&mut data).ok()?;
    let amount = payload
        .as_map()?
        .iter()
        .find(|(k, _)| k.as_str() == Some(DEPOSITED))?
        .1
        .as_u64()?;
    let command = field("meta")
        .and_then(Value::as_map)
        .and_then(|m| m.iter().find(|(k, _)| k.as_str() == Some("causation_id")))
        .and_then(|(_, v)| v.as_str())
        .map(str::to_owned);
    Some(Record {
        actor,
        version,
        amount,
        command,
    })
}
