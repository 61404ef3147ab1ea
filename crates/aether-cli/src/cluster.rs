//! `aether cluster status | watch`: the control plane as the cluster keeps it in its KV bucket
//! (docs/cluster.md): members (with their liveness keys), the leader lease, the shard map.

use std::collections::BTreeMap;

use aether_cluster::{
    KEY_ALIVE_PREFIX, KEY_LEADER, KEY_NODES_PREFIX, KEY_SHARD_MAP, ShardMap, bucket_name,
};
use aether_core::{Payload, history};
use async_nats::jetstream::kv;
use futures::StreamExt;
use serde_json::{Value as Json, json};

use crate::cli::ClusterCommand;
use crate::connect::Context;
use crate::failure::Failure;
use crate::output::Output;
use crate::scan;

pub(crate) async fn run(
    command: ClusterCommand,
    ctx: &Context,
    out: &Output,
) -> Result<(), Failure> {
    match command {
        ClusterCommand::Status { cluster } => status(ctx, out, &cluster).await,
        ClusterCommand::Watch { cluster, count } => watch(ctx, out, &cluster, count).await,
    }
}

async fn bucket(ctx: &Context, cluster: &str) -> Result<kv::Store, Failure> {
    let name = bucket_name(cluster);
    if crate::connect::find_stream(&ctx.js, &format!("KV_{name}"))
        .await?
        .is_none()
    {
        return Err(Failure::NotFound(format!(
            "no cluster {cluster:?} on this server (no KV bucket {name}): check --cluster"
        )));
    }
    ctx.js
        .get_key_value(&name)
        .await
        .map_err(|e| Failure::nats(format!("opening bucket {name}"), e))
}

/// A MessagePack value as JSON (what the bucket holds is MessagePack maps).
fn as_json(bytes: &[u8]) -> Json {
    Payload::from_encoded(bytes.to_vec())
        .to_value()
        .ok()
        .as_ref()
        .and_then(history::to_plain_json)
        .unwrap_or(Json::Null)
}

async fn status(ctx: &Context, out: &Output, cluster: &str) -> Result<(), Failure> {
    let store = bucket(ctx, cluster).await?;
    let read = |e| Failure::nats(format!("reading cluster {cluster}"), e);
    let mut keys = store
        .keys()
        .await
        .map_err(|e| Failure::nats("listing keys", e))?;
    let mut members = BTreeMap::new();
    let mut alive = BTreeMap::new();
    while let Some(key) = keys.next().await {
        let key = key.map_err(|e| Failure::nats("listing keys", e))?;
        if let Some(id) = key.strip_prefix(KEY_NODES_PREFIX)
            && let Some(value) = store.get(&key).await.map_err(read)?
        {
            members.insert(id.to_owned(), as_json(&value));
        } else if let Some(id) = key.strip_prefix(KEY_ALIVE_PREFIX)
            && let Some(value) = store.get(&key).await.map_err(read)?
        {
            alive.insert(id.to_owned(), as_json(&value));
        }
    }
    // Each member's liveness key (what its heartbeats renew): `null` once it expired.
    for (id, record) in &mut members {
        if let Json::Object(fields) = record {
            fields.insert("alive".into(), alive.get(id).cloned().unwrap_or(Json::Null));
        }
    }
    let leader = store
        .get(KEY_LEADER)
        .await
        .map_err(read)?
        .map(|v| as_json(&v));
    let map = match store.get(KEY_SHARD_MAP).await.map_err(read)? {
        Some(bytes) => Some(
            ShardMap::decode(&bytes)
                .map_err(|e| Failure::Problems(format!("the shard map does not decode: {e}")))?,
        ),
        None => None,
    };
    let counts: BTreeMap<String, usize> = map
        .as_ref()
        .map(|m| {
            m.counts()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect()
        })
        .unwrap_or_default();
    if out.json {
        out.json_line(&json!({
            "cluster": cluster,
            "members": members,
            "leader": leader,
            "map": map.as_ref().map(|m| json!({
                "epoch": m.epoch(), "term": m.term(), "leader": m.leader(),
                "shards": m.shard_count(), "shards_per_node": counts,
            })),
        }));
        return Ok(());
    }
    out.fields(&[
        ("cluster", cluster.to_owned()),
        (
            "leader",
            leader
                .as_ref()
                .map_or_else(|| "none".to_owned(), Json::to_string),
        ),
        (
            "shard map",
            map.as_ref().map_or_else(
                || "none yet".to_owned(),
                |m| {
                    format!(
                        "epoch {}, term {}, written by {}, {} shards",
                        m.epoch(),
                        m.term(),
                        m.leader(),
                        m.shard_count()
                    )
                },
            ),
        ),
    ]);
    let rows: Vec<Vec<String>> = members
        .iter()
        .map(|(id, record)| {
            let live = &record["alive"];
            vec![
                id.clone(),
                record["status"].as_str().unwrap_or("?").to_owned(),
                if live.is_null() { "no" } else { "yes" }.to_owned(),
                counts.get(id).copied().unwrap_or(0).to_string(),
                record["capacity"].to_string(),
                live["load"]
                    .as_u64()
                    .map_or_else(String::new, |l| l.to_string()),
                record["version"].as_str().unwrap_or("").to_owned(),
            ]
        })
        .collect();
    out.table(
        &[
            "member", "status", "alive", "shards", "capacity", "load", "version",
        ],
        &rows,
    );
    Ok(())
}

async fn watch(
    ctx: &Context,
    out: &Output,
    cluster: &str,
    count: Option<u64>,
) -> Result<(), Failure> {
    let store = bucket(ctx, cluster).await?;
    let changes = store
        .watch_all()
        .await
        .map_err(|e| Failure::nats(format!("watching cluster {cluster}"), e))?;
    // The previous map, to show each new map's moves.
    let mut previous: Option<ShardMap> = None;
    scan::follow(changes, count, |entry| {
        let entry = entry.map_err(|e| Failure::nats(format!("watching cluster {cluster}"), e))?;
        let operation = match entry.operation {
            kv::Operation::Put => "put",
            kv::Operation::Delete => "delete",
            kv::Operation::Purge => "expired",
        };
        let value = if entry.key == KEY_SHARD_MAP {
            match ShardMap::decode(&entry.value) {
                Ok(map) => {
                    let moves: Vec<Json> = previous
                        .as_ref()
                        .map(|p| p.plan_to(&map).moves)
                        .unwrap_or_default()
                        .iter()
                        .map(|m| json!({"shard": m.shard, "from": m.from.as_deref(), "to": m.to.as_deref()}))
                        .collect();
                    let value = json!({
                        "epoch": map.epoch(), "term": map.term(), "leader": map.leader(),
                        "shards_per_node": map.counts(), "moves": moves,
                    });
                    previous = Some(map);
                    value
                }
                Err(_) => Json::Null,
            }
        } else {
            as_json(&entry.value)
        };
        if out.json {
            out.json_line(&json!({"key": entry.key, "operation": operation, "revision": entry.revision, "value": value}));
        } else {
            out.line(format!("{:>6}  {:<8} {}  {value}", entry.revision, operation, entry.key));
        }
        Ok(true)
    })
    .await
}
