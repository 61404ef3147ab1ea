//! Scenario 5, hostile input at every entrance, while the cluster serves its load: garbage, truncated
//! and oversize records in the event stream; garbage and invalid calls on the nodes' call
//! subjects; garbage on their handoff subjects; garbage in the cluster's KV bucket (a stranger's
//! record, an unknown key, the shard map itself); hostile actor ids, namespaces and oversize
//! events through the store's API. Each must be a clear error or a dropped message, never a
//! node down; afterwards every node is served again and the shard map still changes when a node
//! joins. Every outcome is counted in the report's errors as `hostile <entrance>: <outcome>`.

use std::time::Duration;

use aether_core::{Event, EventStore, EventStoreWithErrors, Namespace, StoreError};
use aether_store_jetstream::JetStreamEventStore;
use bytes::Bytes;
use rmpv::Value;
use tokio::time::Instant;

use crate::scenario::{Fault, Plan};
use crate::world::World;

/// The records the scenario stores in the stream that are not events: 4 bodies on a spare
/// actor's subject and 1 on a busy account's (the audit expects exactly these).
pub(crate) const FOREIGN_RECORDS: u64 = 5;

/// Runs the hostile scenario; `Err` names every entrance that did not refuse cleanly.
pub(crate) async fn run(world: &mut World, _plan: Plan) -> Result<Vec<Fault>, String> {
    let client = world
        .nats
        .connect()
        .await
        .map_err(|e| format!("connecting the hostile client: {e}"))?;
    let mut wrong = Vec::new();
    let at = Instant::now();
    stream_garbage(world, &client, &mut wrong).await?;
    calls(world, &client, &mut wrong).await;
    kv_garbage(world, &client, &mut wrong).await?;
    api(world, &client, &mut wrong).await?;

    // The map must still change after the garbage written over it: a node leaves and comes back.
    let since = Instant::now();
    world.leave(2).await?;
    world.spawn(2).await?;
    world.load_on(2).await?;
    world
        .ledger
        .first_after(
            "a new shard map after garbage in the bucket",
            since,
            Duration::from_secs(30),
            |s| s.line.starts_with("EVENT map "),
        )
        .await?;
    let recover = world
        .ledger
        .served_again(&world.live(), at, Duration::from_secs(60))
        .await?;
    if !wrong.is_empty() {
        return Err(format!(
            "hostile input not refused cleanly: {}",
            wrong.join("; ")
        ));
    }
    Ok(vec![Fault {
        what: "hostile input at every entrance".into(),
        detect_ms: None,
        recover_ms: Some(u64::try_from(recover.as_millis()).unwrap_or(u64::MAX)),
    }])
}

fn encode(value: &Value) -> Bytes {
    let mut out = Vec::new();
    // Writing into a Vec cannot fail.
    let _ = rmpv::encode::write_value(&mut out, value);
    out.into()
}

fn map(pairs: &[(&str, Value)]) -> Value {
    Value::Map(
        pairs
            .iter()
            .map(|(k, v)| (Value::from(*k), v.clone()))
            .collect(),
    )
}

/// A deposit command as the call protocol carries it (`{"Deposit": n}`).
fn deposit(n: u64) -> Value {
    Value::Binary(encode(&map(&[("Deposit", Value::from(n))])).to_vec())
}

/// Bodies that are not events, published on a spare actor's subject of the stream; reading that
/// actor must be a codec error, and the accounts must be unaffected.
async fn stream_garbage(
    world: &World,
    client: &async_nats::Client,
    wrong: &mut Vec<String>,
) -> Result<(), String> {
    let js = async_nats::jetstream::new(client.clone());
    let subject = format!("ae.{}.hostile-1", world.stream);
    let truncated = {
        let event = map(&[
            ("id", Value::Binary(vec![7; 16])),
            ("type", Value::from("Deposited")),
            ("actor", Value::from("hostile-1")),
            ("v", Value::from(1)),
        ]);
        let bytes = encode(&event);
        bytes.slice(..bytes.len() / 2)
    };
    let bodies: [(&str, Bytes); 4] = [
        ("garbage", Bytes::from_static(b"\xc1\xc1 not msgpack")),
        ("empty", Bytes::new()),
        ("truncated event", truncated),
        ("wrong shape", encode(&Value::Array(vec![Value::from(1)]))),
    ];
    for (what, body) in bodies {
        let outcome = match js.publish(subject.clone(), body).await {
            Ok(ack) => match ack.await {
                Ok(_) => "stored".to_owned(),
                Err(e) => format!("refused by the server ({e})"),
            },
            Err(e) => format!("refused by the server ({e})"),
        };
        world
            .ledger
            .count_error(format!("hostile stream {what}: {outcome}"));
    }
    // A body over the server's max payload (1 MiB by default).
    let huge = Bytes::from(vec![0u8; 2 << 20]);
    let outcome = match js.publish(subject.clone(), huge).await {
        Ok(ack) => match ack.await {
            Ok(_) => "stored",
            Err(_) => "refused by the server",
        },
        Err(_) => "refused by the client",
    };
    world
        .ledger
        .count_error(format!("hostile stream 2 MiB body: {outcome}"));

    // One garbage record on a busy account's subject too: the account must keep working and
    // its history stay whole (the audit counts the record as foreign and checks the versions).
    match js
        .publish(
            format!("ae.{}.acct-0", world.stream),
            Bytes::from_static(b"\xc1"),
        )
        .await
    {
        Ok(ack) => {
            let outcome = if ack.await.is_ok() {
                "stored"
            } else {
                "refused by the server"
            };
            world.ledger.count_error(format!(
                "hostile stream garbage on a live account: {outcome}"
            ));
        }
        Err(e) => wrong.push(format!("publishing garbage on acct-0: {e}")),
    }

    let store = open_store(world, client).await?;
    match store.get_events_with_errors("hostile-1", 1).await {
        Ok(read) if read.events.is_empty() && read.errors.len() == 4 => world
            .ledger
            .count_error("hostile stream read: 4 records reported undecodable and skipped"),
        Ok(read) => wrong.push(format!(
            "reading an actor of 4 garbage records: {} events, {} reported",
            read.events.len(),
            read.errors.len()
        )),
        Err(e) => world
            .ledger
            .count_error(format!("hostile stream read: {e}")),
    }
    Ok(())
}

/// The scenario's store, opened as the nodes open it.
async fn open_store(
    world: &World,
    client: &async_nats::Client,
) -> Result<JetStreamEventStore, String> {
    JetStreamEventStore::with_config(client.clone(), &world.stream, crate::node::store_config())
        .await
        .map_err(|e| format!("opening the store: {e}"))
}

/// Garbage and invalid calls on every node's call subject, and garbage on its handoff subject.
async fn calls(world: &World, client: &async_nats::Client, wrong: &mut Vec<String>) {
    let good = |actor: Value, cmd: Value| {
        map(&[
            ("type", Value::from("account")),
            ("actor", actor),
            ("id", Value::from("hostile-call")),
            ("epoch", Value::from(0)),
            ("cmd", cmd),
        ])
    };
    let invalid: Vec<(&str, Bytes)> = vec![
        ("garbage", Bytes::from_static(b"\xc1\xc1\xc1")),
        ("empty", Bytes::new()),
        ("truncated map", Bytes::from_static(b"\x85\xa4type")),
        (
            "missing fields",
            encode(&map(&[("type", Value::from("account"))])),
        ),
        (
            "unknown actor type",
            encode(&map(&[
                ("type", Value::from("no-such-type")),
                ("actor", Value::from("acct-1")),
                ("id", Value::from("hostile-call")),
                ("epoch", Value::from(0)),
                ("cmd", deposit(1)),
            ])),
        ),
        ("empty actor id", encode(&good(Value::from(""), deposit(1)))),
        (
            "2000-byte actor id",
            encode(&good(Value::from("a".repeat(2000)), deposit(1))),
        ),
        (
            "undecodable command",
            encode(&good(Value::from("acct-1"), Value::Binary(vec![0xc1]))),
        ),
        (
            "900 KiB command",
            encode(&good(
                Value::from("acct-1"),
                Value::Binary(vec![0x90; 900 << 10]),
            )),
        ),
    ];
    for i in 0..crate::world::NODES {
        let node = World::node_id(i);
        let call = format!("aether-cluster.{}.call.{node}", world.cluster);
        for (what, body) in &invalid {
            let outcome = answer(client, &call, body.clone()).await;
            if outcome == "ok" {
                wrong.push(format!("a call with {what} was answered ok by {node}"));
            }
            world
                .ledger
                .count_error(format!("hostile call {what}: {outcome}"));
        }
        let handoff = format!("aether-cluster.{}.handoff.{node}", world.cluster);
        for (what, body) in invalid.iter().take(4) {
            let outcome = answer(client, &handoff, body.clone()).await;
            world
                .ledger
                .count_error(format!("hostile handoff {what}: {outcome}"));
        }
    }
}

/// The `status` of the answer to a request, or what happened instead.
async fn answer(client: &async_nats::Client, subject: &str, body: Bytes) -> String {
    let request = client.request(subject.to_owned(), body);
    match tokio::time::timeout(Duration::from_secs(2), request).await {
        Err(_) => "no answer (dropped)".into(),
        Ok(Err(e)) => format!("request failed ({})", e.kind()),
        Ok(Ok(msg)) => {
            let status = rmpv::decode::read_value(&mut msg.payload.as_ref())
                .ok()
                .and_then(|v| {
                    v.as_map()?
                        .iter()
                        .find(|(k, _)| k.as_str() == Some("status"))
                        .and_then(|(_, s)| s.as_str().map(str::to_owned))
                });
            status.unwrap_or_else(|| "an answer without status".into())
        }
    }
}

/// Garbage values in the cluster's bucket: a stranger's record, an unknown key and the shard map.
async fn kv_garbage(
    world: &World,
    client: &async_nats::Client,
    wrong: &mut Vec<String>,
) -> Result<(), String> {
    let js = async_nats::jetstream::new(client.clone());
    for key in [
        "nodes.intruder",
        "alive.intruder",
        "no-such-key",
        "shardmap",
    ] {
        let subject = format!("$KV.aether-cluster-{}.{key}", world.cluster);
        match js
            .publish(subject, Bytes::from_static(b"\xc1 garbage"))
            .await
        {
            Ok(ack) => match ack.await {
                Ok(_) => world
                    .ledger
                    .count_error(format!("hostile kv {key}: stored")),
                Err(e) => world
                    .ledger
                    .count_error(format!("hostile kv {key}: refused ({e})")),
            },
            Err(e) => wrong.push(format!("publishing to kv key {key}: {e}")),
        }
    }
    Ok(())
}

/// Hostile ids, namespaces and sizes through the store's API: each a clear error.
async fn api(
    world: &World,
    client: &async_nats::Client,
    wrong: &mut Vec<String>,
) -> Result<(), String> {
    let store = open_store(world, client).await?;
    let mut expect_err = |what: &str, result: Result<(), String>| match result {
        Ok(()) => wrong.push(format!("{what} was accepted")),
        Err(e) => world.ledger.count_error(format!("hostile api {what}: {e}")),
    };
    let event = |actor: &str, size: usize| {
        Event::new(actor, "Deposited", 1, &vec![0u8; size]).map_err(|e| e.to_string())
    };
    let long = "x".repeat(1025);
    let save = |e: Result<Event, String>| async {
        store.save_event(e?).await.map_err(|e| match e {
            StoreError::InvalidEvent(_) => "invalid event".to_owned(),
            StoreError::TooLarge { .. } => "too large".to_owned(),
            other => other.to_string(),
        })
    };
    expect_err("a 1025-byte actor id", save(event(&long, 1)).await);
    expect_err("an empty actor id", save(event("", 1)).await);
    expect_err("a 2 MiB event", save(event("hostile-2", 2 << 20)).await);
    for ns in ["a.>", "a b", "*", "", "a..b", &"n".repeat(65)] {
        expect_err(
            &format!("namespace {ns:?}"),
            Namespace::new(ns)
                .map(drop)
                .map_err(|_| "refused".to_owned()),
        );
    }
    Ok(())
}
