//! Clusters for tenants: two tenants on one NATS account, each with its own store (namespace),
//! cluster bucket and cluster subjects, and users whose subject permissions are the cluster
//! node's and the caller's blocks of docs/security.md, exactly as written there (for the other
//! tenant, its names substituted). Tenant A's two nodes join, hand shards over (confirmed, not
//! timed out) and call each other's actors; a caller speaking the documented wire protocol reads
//! the map and calls an actor once per command id, and so does a `ClusterClient` with the same
//! block (refused at once for tenant B's cluster); the server logs no permission violation while
//! they do. With tenant A's credentials nothing of tenant B's cluster can be read or written: its
//! bucket, its call and handoff subjects.

// Test code: a failed expectation panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use aether_cluster::{
    ClientConfig, ClusterActors, ClusterClient, ClusterNode, MigrationStatus, ShardMap,
    bucket_name, shard_for,
};
use aether_core::{EventStore, Namespace};
use aether_runtime::{Runtime, SnapshotPolicy};
use aether_store_jetstream::{JetStreamConfig, JetStreamEventStore};
use aether_testkit::nats::NatsServer;
use aether_testkit::tenancy::{self, Marker, Role, TenantUser};
use common::bank::{Account, Command, audit, routing};
use common::wire::{call, status_and_version};
use common::{SETTLE, fast_config, until};
use futures::StreamExt;

/// The users besides the operator: `node-a`, `node-b` with the cluster node's block for their
/// tenant, `caller-a` with the caller's block for `tenant-a`.
const USERS: &[TenantUser] = &[
    TenantUser::new("node-a", "na", Role::ClusterNode, "tenant-a"),
    TenantUser::new("node-b", "nb", Role::ClusterNode, "tenant-b"),
    TenantUser::new("caller-a", "ca", Role::Caller, "tenant-a"),
];

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
    let client = tenancy::connect(server, user, password, Some(&format!("_INBOX_{tenant}")))
        .await
        .unwrap();
    let store = store(&client, tenant).await;
    let runtime = Runtime::<Account>::builder(store.clone())
        .snapshots(store)
        .snapshot_policy(SnapshotPolicy::every(100).min_events(1))
        .build();
    let node = ClusterNode::new(client, routing(fast_config(tenant, id))).unwrap();
    let accounts = node.register(runtime).unwrap();
    if let Err(e) = node.start().await {
        panic!(
            "{id} does not start: {e:?}; {:#?}",
            tenancy::violations(server)
        );
    }
    (node, accounts)
}

/// [`common::served`], and no move pending or in progress.
fn served(node: &ClusterNode, owners: usize) -> bool {
    common::served(node, owners)
        && node.migrations().iter().all(|m| {
            !matches!(
                m.status,
                MigrationStatus::Pending | MigrationStatus::InProgress
            )
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tenant_s_cluster_works_and_reaches_nothing_of_the_other() {
    let server = tenancy::start_tenants("cluster-tenants", USERS)
        .await
        .unwrap();
    let operator = tenancy::connect_operator(&server).await.unwrap();
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
    let caller = tenancy::connect(&server, "caller-a", "ca", Some("_INBOX_tenant-a"))
        .await
        .unwrap();
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
    // The same caller's block serves a `ClusterClient`: it reads the bucket, follows the map and
    // calls, with nothing refused.
    let (client_conn, watch) =
        tenancy::connect_watched(&server, "caller-a", "ca", Some("_INBOX_tenant-a"))
            .await
            .unwrap();
    let cluster = ClusterClient::connect(
        client_conn.clone(),
        ClientConfig::new("tenant-a").permissions(watch.clone()),
    )
    .await
    .expect("a client with the caller's block");
    let by_client = cluster
        .actors::<Account>()
        .ask_with_id(actor, Command::Deposit(5), "caller-cmd-2")
        .await
        .unwrap();
    assert_eq!(by_client.version, 2);
    cluster.close().await;

    let store_a = store(&operator, "tenant-a").await;
    let (causes, states) = audit(&*store_a, [actor.to_owned()]).await;
    assert_eq!(causes.get("caller-cmd-1"), Some(&1));
    assert_eq!(causes.get("caller-cmd-2"), Some(&1));
    assert_eq!(states[actor].balance, 10);
    assert!(
        tenancy::violations(&server).is_empty(),
        "the node's and the caller's blocks must cover everything they do: {:?}",
        tenancy::violations(&server)
    );

    // A client of tenant B's cluster with tenant A's caller credentials: refused at once.
    let refused = ClusterClient::connect(
        client_conn,
        ClientConfig::new("tenant-b")
            .permissions(watch)
            .request_timeout(Duration::from_secs(2)),
    )
    .await
    .expect_err("tenant B's cluster");
    assert!(refused.is_permission_denied(), "{refused}");

    // With tenant A's node credentials: tenant B's bucket cannot be read or written, its nodes
    // cannot be called or sent a handoff, and its subjects cannot be listened to.
    let spy = tenancy::connect(&server, "node-a", "na", Some("_INBOX_tenant-a"))
        .await
        .unwrap();
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
        let direct =
            "$JS.API.DIRECT.GET.KV_aether-cluster-tenant-b.$KV.aether-cluster-tenant-b.shardmap";
        assert!(
            !tenancy::answered(client, direct, "".into(), Duration::from_secs(2)).await,
            "read tenant B's map"
        );
        let forged = call("secret-1", "forged-1", u64::MAX, &Command::Withdraw(99));
        assert!(
            !tenancy::answered(
                client,
                "aether-cluster.tenant-b.call.b1",
                forged.into(),
                Duration::from_secs(2)
            )
            .await,
            "called tenant B's node"
        );
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
    // (A request answered proves the server has all these subscriptions, or refused them.)
    let marker = Marker::subscribe(
        &spy,
        "_INBOX_tenant-a",
        "$JS.API.STREAM.INFO.KV_aether-cluster-tenant-a",
    )
    .await
    .unwrap();
    for subject in [
        "aether-cluster.tenant-b.call.b1",
        "aether-cluster.tenant-b.handoff.b1",
        "$KV.aether-cluster-tenant-b.probe",
    ] {
        operator.publish(subject, "probe".into()).await.unwrap();
    }
    marker
        .arrive(&operator, Duration::from_secs(10))
        .await
        .unwrap();
    for peek in &mut peeks {
        assert!(
            tenancy::nothing_received(peek),
            "tenant A heard tenant B's cluster"
        );
    }

    // Tenant B is untouched: its map, its actor; its node still serves.
    let after = b_kv.entry("shardmap").await.unwrap().unwrap();
    assert_eq!(after.revision, map_b.revision);
    assert!(b1.manager().shard_map().unwrap().epoch() < u64::MAX);
    let secret = actors_b.ask("secret-1", Command::Deposit(1)).await.unwrap();
    assert_eq!(secret.version, 2, "only B's own commands reached secret-1");
    let refused = tenancy::violations(&server);
    let mut missing = tenancy::not_logged(
        &refused,
        "node-a",
        &[
            "Publish Violation - Subject \"$JS.API.STREAM.INFO.KV_aether-cluster-tenant-b\"",
            "Publish Violation - Subject \"$KV.aether-cluster-tenant-b.shardmap\"",
            "Publish Violation - Subject \"aether-cluster.tenant-b.call.b1\"",
            "Publish Violation - Subject \"aether-cluster.tenant-b.handoff.b1\"",
            "Subscription Violation - Subject \"aether-cluster.tenant-b.call.*\"",
            "Subscription Violation - Subject \"aether-cluster.tenant-b.handoff.*\"",
            "Subscription Violation - Subject \"$KV.aether-cluster-tenant-b.>\"",
        ],
    );
    missing.extend(tenancy::not_logged(
        &refused,
        "caller-a",
        &["Publish Violation - Subject \"aether-cluster.tenant-b.call.b1\""],
    ));
    assert!(missing.is_empty(), "no {missing:?} in {refused:#?}");
    let store_b = store(&operator, "tenant-b").await;
    assert_eq!(store_b.get_latest_version("secret-1").await.unwrap(), 2);

    for n in [&a2, &a1, &b1] {
        n.leave().await.unwrap();
    }
    // Nothing else was refused, leaving included: only tenant A's reaches for tenant B's names.
    let unexpected = tenancy::unexpected_violations(
        &tenancy::violations(&server),
        &["node-a", "caller-a"],
        |l| l.contains("tenant-b"),
    );
    assert!(unexpected.is_empty(), "{unexpected:#?}");
}
