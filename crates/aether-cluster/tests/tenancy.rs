//! Clusters for tenants: two tenants on one NATS account, each with its own store (namespace),
//! cluster bucket and cluster subjects, and users whose subject permissions are the cluster
//! node's and the caller's blocks of docs/security.md, exactly as written there (for the other
//! tenant, its names substituted). Tenant A's two nodes join, hand shards over (confirmed, not
//! timed out) and call each other's actors; a caller speaking the documented wire protocol reads
//! the map and calls an actor once per command id; the server logs no permission violation while
//! they do. With tenant A's credentials nothing of tenant B's cluster can be read or written: its
//! bucket, its call and handoff subjects.

// Test code: a failed expectation panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use aether_cluster::{
    ClusterActors, ClusterNode, MigrationStatus, ShardMap, bucket_name, shard_for,
};
use aether_core::{EventStore, Namespace};
use aether_runtime::{Runtime, SnapshotPolicy};
use aether_store_jetstream::{JetStreamConfig, JetStreamEventStore};
use aether_testkit::nats::NatsServer;
use common::bank::{Account, Command, audit, routing};
use common::fast_config;
use futures::{FutureExt, StreamExt};
use tokio::time::Instant;

const SETTLE: Duration = Duration::from_secs(30);

/// The block after `marker` in docs/security.md (written for store `events`, namespace and
/// cluster `tenant-a`), rewritten for `token`.
fn block(marker: &str, token: &str) -> String {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/security.md"
    ))
    .unwrap();
    let start = doc
        .find(&format!("<!-- tested: {marker} -->"))
        .unwrap_or_else(|| panic!("docs/security.md has the {marker} block"));
    let body = doc[start..]
        .split("```")
        .nth(1)
        .expect("a fenced block after the marker");
    let body = body.strip_prefix("text").unwrap_or(body);
    body.replace("tenant-a", token)
}

async fn server() -> NatsServer {
    let node_a = block("cluster node permissions", "tenant-a");
    let node_b = block("cluster node permissions", "tenant-b");
    let caller_a = block("caller permissions", "tenant-a");
    let conf = format!(
        r#"authorization {{
  users = [
    {{ user: operator, password: operator }}
    {{ user: node-a, password: na, permissions: {node_a} }}
    {{ user: node-b, password: nb, permissions: {node_b} }}
    {{ user: caller-a, password: ca, permissions: {caller_a} }}
  ]
}}
"#
    );
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "cluster-tenancy-{}.conf",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::write(&path, conf).unwrap();
    NatsServer::start_with(
        "cluster-tenants",
        vec!["-c".into(), path.display().to_string()],
    )
    .await
    .unwrap()
}

async fn connect(
    server: &NatsServer,
    user: &str,
    password: &str,
    inbox: &str,
) -> async_nats::Client {
    async_nats::ConnectOptions::with_user_and_password(user.into(), password.into())
        .custom_inbox_prefix(inbox)
        .connect(server.url())
        .await
        .unwrap()
}

async fn store(client: &async_nats::Client, tenant: &str) -> Arc<JetStreamEventStore> {
    Arc::new(
        JetStreamEventStore::with_config(
            client.clone(),
            "events",
            JetStreamConfig::default().namespace(Namespace::new(tenant).unwrap()),
        )
        .await
        .unwrap(),
    )
}

/// What the operator does once per tenant: the store, and the cluster's bucket with the
/// settings docs/security.md shows.
async fn provision(operator: &async_nats::Client, tenant: &str) {
    store(operator, tenant).await;
    async_nats::jetstream::new(operator.clone())
        .create_key_value(async_nats::jetstream::kv::Config {
            bucket: bucket_name(tenant),
            description: format!("Aether cluster {tenant}: node records, leader lease, shard map"),
            history: 1,
            max_value_size: 1024 * 1024,
            limit_markers: Some(Duration::from_secs(60)),
            storage: async_nats::jetstream::stream::StorageType::File,
            num_replicas: 1,
            ..Default::default()
        })
        .await
        .unwrap();
}

/// Node `id` of tenant `tenant`'s cluster (named like the tenant), hosting the bank actor on the
/// tenant's store, connected as `user`.
async fn node(
    server: &NatsServer,
    user: &str,
    password: &str,
    tenant: &str,
    id: &str,
) -> (ClusterNode, ClusterActors<Account>) {
    let client = connect(server, user, password, &format!("_INBOX_{tenant}")).await;
    let store = store(&client, tenant).await;
    let runtime = Runtime::<Account>::builder(store.clone())
        .snapshots(store)
        .snapshot_policy(SnapshotPolicy::every(100).min_events(1))
        .build();
    let node = ClusterNode::new(client, routing(fast_config(tenant, id))).unwrap();
    let accounts = node.register(runtime).unwrap();
    if let Err(e) = node.start().await {
        panic!("{id} does not start: {e:?}; {:#?}", violations(server));
    }
    (node, accounts)
}

/// Polls `pred` (a condition on live nodes, with no event to await) until it holds.
async fn until(what: &str, pred: impl Fn() -> bool) {
    let deadline = Instant::now() + SETTLE;
    while !pred() {
        assert!(Instant::now() < deadline, "no {what} within {SETTLE:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn served(node: &ClusterNode, owners: usize) -> bool {
    node.manager()
        .shard_map()
        .is_some_and(|m| m.counts().len() == owners)
        && node.shards_in_use() == node.manager().shards_owned().len()
        && node.migrations().iter().all(|m| {
            !matches!(
                m.status,
                MigrationStatus::Pending | MigrationStatus::InProgress
            )
        })
}

/// The permission violations the server logged so far.
fn violations(server: &NatsServer) -> Vec<String> {
    server
        .log()
        .lines()
        .filter(|l| l.contains("Violation"))
        .map(str::to_owned)
        .collect()
}

/// A call as docs/cluster.md specifies it.
fn call(actor: &str, id: &str, epoch: u64, command: &Command) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Call<'a> {
        #[serde(rename = "type")]
        actor_type: &'a str,
        actor: &'a str,
        id: &'a str,
        epoch: u64,
        cmd: serde_bytes_compat::Bytes,
    }
    rmp_serde::to_vec_named(&Call {
        actor_type: "account",
        actor,
        id,
        epoch,
        cmd: serde_bytes_compat::Bytes(rmp_serde::to_vec_named(command).unwrap()),
    })
    .unwrap()
}

/// `status` and `version` of an answer, read as a plain MessagePack map.
fn status_and_version(bytes: &[u8]) -> (String, Option<u64>) {
    let value = rmpv::decode::read_value(&mut &bytes[..]).unwrap();
    let get = |key: &str| {
        value
            .as_map()
            .unwrap()
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v.clone())
    };
    (
        get("status").unwrap().as_str().unwrap().to_owned(),
        get("version").and_then(|v| v.as_u64()),
    )
}

mod serde_bytes_compat {
    pub(super) struct Bytes(pub(super) Vec<u8>);
    impl serde::Serialize for Bytes {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(&self.0)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tenant_s_cluster_works_and_reaches_nothing_of_the_other() {
    let server = server().await;
    let operator = connect(&server, "operator", "operator", "_INBOX").await;
    for tenant in ["tenant-a", "tenant-b"] {
        provision(&operator, tenant).await;
    }

    // Tenant A: a1 alone, then a2 joins; the shards moving to a2 are confirmed by a1 (a handoff
    // over the handoff subject), not served after the handoff timeout.
    let (a1, actors_a1) = node(&server, "node-a", "na", "tenant-a", "a1").await;
    until("a map over a1", || served(&a1, 1)).await;
    let ids: Vec<String> = (0..32).map(|i| format!("acct-{i}")).collect();
    for id in &ids {
        actors_a1.ask(id, Command::Deposit(10)).await.unwrap();
    }
    let (a2, actors_a2) = node(&server, "node-a", "na", "tenant-a", "a2").await;
    until("a map over a1 and a2", || served(&a1, 2) && served(&a2, 2)).await;
    let taken: Vec<_> = a2
        .migrations()
        .into_iter()
        .filter(|m| m.from.as_deref() == Some("a1"))
        .collect();
    assert!(!taken.is_empty(), "a2 took no shard from a1");
    for m in &taken {
        assert_eq!(m.status, MigrationStatus::Done, "{m:?}");
        assert!(m.reason.is_none(), "not confirmed by a1: {m:?}");
    }
    // Calls in both directions, across the call subjects (each node owns some of the accounts).
    for (i, id) in ids.iter().enumerate() {
        let actors = if i % 2 == 0 { &actors_a1 } else { &actors_a2 };
        let applied = actors.ask(id, Command::Deposit(1)).await.unwrap();
        assert_eq!(applied.version, 2, "{id}");
    }
    let owners: std::collections::BTreeSet<_> =
        ids.iter().filter_map(|id| actors_a1.node_for(id)).collect();
    assert_eq!(owners.len(), 2, "the accounts live on both nodes");

    // Tenant B: one node of its own.
    let (b1, actors_b) = node(&server, "node-b", "nb", "tenant-b", "b1").await;
    until("a map over b1", || served(&b1, 1)).await;
    actors_b
        .ask("secret-1", Command::Deposit(99))
        .await
        .unwrap();

    // A caller of tenant A, from the documented wire protocol: the shard count from `config`,
    // the map from a watch of `shardmap`, a call to the owner; the same command id twice is
    // applied once.
    let caller = connect(&server, "caller-a", "ca", "_INBOX_tenant-a").await;
    let kv = async_nats::jetstream::new(caller.clone())
        .get_key_value(bucket_name("tenant-a"))
        .await
        .unwrap();
    #[derive(serde::Deserialize)]
    struct Settings {
        shard_count: u32,
    }
    let settings: Settings =
        rmp_serde::from_slice(&kv.entry("config").await.unwrap().unwrap().value).unwrap();
    let mut maps = kv.watch_with_history("shardmap").await.unwrap();
    let entry = tokio::time::timeout(SETTLE, maps.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let map = ShardMap::decode(&entry.value).unwrap();
    let actor = "acct-caller";
    let owner = map
        .owner(shard_for(actor, settings.shard_count))
        .unwrap()
        .to_owned();
    let subject = format!("aether-cluster.tenant-a.call.{owner}");
    let body = call(actor, "caller-cmd-1", map.epoch(), &Command::Deposit(5));
    let first = caller
        .request(subject.clone(), body.clone().into())
        .await
        .unwrap();
    let again = caller.request(subject, body.into()).await.unwrap();
    assert_eq!(status_and_version(&first.payload), ("ok".into(), Some(1)));
    assert_eq!(status_and_version(&again.payload), ("ok".into(), Some(1)));
    let store_a = store(&operator, "tenant-a").await;
    let (causes, states) = audit(&*store_a, [actor.to_owned()]).await;
    assert_eq!(causes.get("caller-cmd-1"), Some(&1));
    assert_eq!(states[actor].balance, 5);
    assert!(
        violations(&server).is_empty(),
        "the node's and the caller's blocks must cover everything they do: {:?}",
        violations(&server)
    );

    // With tenant A's node credentials: tenant B's bucket cannot be read or written, its nodes
    // cannot be called or sent a handoff, and its subjects cannot be listened to.
    let spy = connect(&server, "node-a", "na", "_INBOX_tenant-a").await;
    let short = |c: &async_nats::Client| {
        async_nats::jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(1))
            .build(c.clone())
    };
    for client in [&spy, &caller] {
        assert!(
            short(client)
                .get_key_value(bucket_name("tenant-b"))
                .await
                .is_err()
        );
        let direct = client.request(
            "$JS.API.DIRECT.GET.KV_aether-cluster-tenant-b.$KV.aether-cluster-tenant-b.shardmap",
            "".into(),
        );
        let got = tokio::time::timeout(Duration::from_secs(2), direct).await;
        assert!(got.map_or(true, |r| r.is_err()), "read tenant B's map");
        let forged = client.request(
            "aether-cluster.tenant-b.call.b1",
            call("secret-1", "forged-1", u64::MAX, &Command::Withdraw(99)).into(),
        );
        let got = tokio::time::timeout(Duration::from_secs(2), forged).await;
        assert!(got.map_or(true, |r| r.is_err()), "called tenant B's node");
    }
    let b_kv = async_nats::jetstream::new(operator.clone())
        .get_key_value(bucket_name("tenant-b"))
        .await
        .unwrap();
    let map_b = b_kv.entry("shardmap").await.unwrap().unwrap();
    let ghost = ShardMap::new(
        u64::MAX,
        1,
        "ghost",
        common::SHARDS,
        vec!["ghost".into(); common::SHARDS as usize],
    );
    let written = short(&spy)
        .publish(
            "$KV.aether-cluster-tenant-b.shardmap",
            ghost.encode().into(),
        )
        .await;
    if let Ok(ack) = written {
        assert!(ack.await.is_err(), "tenant B's bucket took tenant A's map");
    }
    spy.publish(
        "aether-cluster.tenant-b.handoff.b1",
        rmp_serde::to_vec_named(&serde_json::json!({"from": "a1", "epoch": 1, "shards": [0]}))
            .unwrap()
            .into(),
    )
    .await
    .unwrap();
    // Listening: three subscriptions to tenant B's subjects, then a marker to the spy's inbox
    // after the operator published on each of them; once the marker is here, whatever the server
    // sent before it is here too.
    let mut peeks = Vec::new();
    for subject in [
        "aether-cluster.tenant-b.call.*",
        "aether-cluster.tenant-b.handoff.*",
        "$KV.aether-cluster-tenant-b.>",
    ] {
        peeks.push(spy.subscribe(subject).await.unwrap());
    }
    let marker = format!("_INBOX_tenant-a.marker.{}", uuid::Uuid::new_v4().simple());
    let mut mark = spy.subscribe(marker.clone()).await.unwrap();
    // A request answered proves the server has all these subscriptions (or refused them).
    spy.request("$JS.API.STREAM.INFO.KV_aether-cluster-tenant-a", "".into())
        .await
        .unwrap();
    for subject in [
        "aether-cluster.tenant-b.call.b1",
        "aether-cluster.tenant-b.handoff.b1",
        "$KV.aether-cluster-tenant-b.probe",
    ] {
        operator.publish(subject, "probe".into()).await.unwrap();
    }
    operator.publish(marker, "marker".into()).await.unwrap();
    operator.flush().await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), mark.next())
        .await
        .expect("the marker arrives")
        .expect("the marker subscription is open");
    for peek in &mut peeks {
        assert!(
            !matches!(peek.next().now_or_never(), Some(Some(_))),
            "tenant A heard tenant B's cluster"
        );
    }

    // Tenant B is untouched: its map, its actor; its node still serves.
    let after = b_kv.entry("shardmap").await.unwrap().unwrap();
    assert_eq!(after.revision, map_b.revision);
    assert!(b1.manager().shard_map().unwrap().epoch() < u64::MAX);
    let secret = actors_b.ask("secret-1", Command::Deposit(1)).await.unwrap();
    assert_eq!(secret.version, 2, "only B's own commands reached secret-1");
    let refused = violations(&server);
    for line in [
        "user:node-a\" - Publish Violation - Subject \"$JS.API.STREAM.INFO.KV_aether-cluster-tenant-b\"",
        "user:node-a\" - Publish Violation - Subject \"$KV.aether-cluster-tenant-b.shardmap\"",
        "user:node-a\" - Publish Violation - Subject \"aether-cluster.tenant-b.call.b1\"",
        "user:node-a\" - Publish Violation - Subject \"aether-cluster.tenant-b.handoff.b1\"",
        "user:node-a\" - Subscription Violation - Subject \"aether-cluster.tenant-b.call.*\"",
        "user:node-a\" - Subscription Violation - Subject \"aether-cluster.tenant-b.handoff.*\"",
        "user:node-a\" - Subscription Violation - Subject \"$KV.aether-cluster-tenant-b.>\"",
        "user:caller-a\" - Publish Violation - Subject \"aether-cluster.tenant-b.call.b1\"",
    ] {
        assert!(
            refused.iter().any(|l| l.contains(line)),
            "no {line} in {refused:#?}"
        );
    }
    let store_b = store(&operator, "tenant-b").await;
    assert_eq!(store_b.get_latest_version("secret-1").await.unwrap(), 2);

    for n in [&a2, &a1, &b1] {
        n.leave().await.unwrap();
    }
    // Nothing else was refused, leaving included: only tenant A's reaches for tenant B's names.
    let unexpected: Vec<_> = violations(&server)
        .into_iter()
        .filter(|l| {
            !((l.contains("user:node-a\"") || l.contains("user:caller-a\""))
                && l.contains("tenant-b"))
        })
        .collect();
    assert!(unexpected.is_empty(), "{unexpected:#?}");
}
