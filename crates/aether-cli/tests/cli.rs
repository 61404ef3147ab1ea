//! The real `aether` binary against a real nats-server holding data written through the library:
//! each command's output, its `--json` form, its exit code, and one-line errors for bad input.

// Test code: a failed expectation panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Output};
use std::time::{Duration, UNIX_EPOCH};

use aether_core::{ActorSnapshot, Event, EventStore, SnapshotStore, history};
use aether_store_jetstream::JetStreamEventStore;
use aether_testkit::nats::NatsServer;
use serde_json::{Value as Json, json};

const BIN: &str = env!("CARGO_BIN_EXE_aether");

fn aether(server: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(["--server", server])
        .args(args)
        .env_remove("NATS_URL")
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

fn json_lines(o: &Output) -> Vec<Json> {
    stdout(o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

/// Four events of two actors (one at schema version 2), a snapshot, and one record on the
/// stream that is not an event.
fn events() -> Vec<Event> {
    let at = |s: u64| UNIX_EPOCH + Duration::from_secs(1_719_835_200 + s);
    let id = |n: u128| uuid::Uuid::from_u128(0x0190_a5c8_3b2e_7c4d_8e5f_0000_0000_0000 + n);
    vec![
        Event::builder("order-1", "OrderPlaced")
            .id(id(1))
            .timestamp(at(0))
            .payload(&json!({"total": 99.5}))
            .correlation_id("checkout-1")
            .build()
            .unwrap(),
        Event::builder("order-1", "ItemAdded")
            .id(id(2))
            .version(2)
            .schema_version(2)
            .timestamp(at(1))
            .payload(&json!({"sku": "sku-1", "qty": 2}))
            .build()
            .unwrap(),
        Event::builder("order-2", "OrderPlaced")
            .id(id(3))
            .timestamp(at(2))
            .payload(&json!({"total": 5}))
            .build()
            .unwrap(),
        Event::builder("order-1", "OrderShipped")
            .id(id(4))
            .version(3)
            .timestamp(at(3))
            .build()
            .unwrap(),
    ]
}

async fn seeded() -> (NatsServer, JetStreamEventStore) {
    let server = NatsServer::start().await.unwrap();
    let client = server.connect().await.unwrap();
    let store = JetStreamEventStore::new(client.clone(), "shop")
        .await
        .unwrap();
    for event in events() {
        store.save_event(event).await.unwrap();
    }
    store
        .save_snapshot(
            ActorSnapshot::new("order-1", 3, &json!({"total": 99.5, "shipped": true})).unwrap(),
        )
        .await
        .unwrap();
    // Garbage on the stream's subject space: another writer's mistake.
    let js = async_nats::jetstream::new(client);
    js.publish("ae.shop.garbage", "not an event".into())
        .await
        .unwrap()
        .await
        .unwrap();
    (server, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_info_check_and_dump() {
    let (server, _store) = seeded().await;
    let url = server.url();

    let info = aether(&url, &["--store", "shop", "store", "info", "--json"]);
    assert!(info.status.success(), "{}", stderr(&info));
    let info = &json_lines(&info)[0];
    assert_eq!(info["stream"], "shop");
    assert_eq!(info["messages"], 5);
    assert_eq!(info["actors"], 3);
    assert_eq!(info["compatible"], true);
    assert_eq!(info["snapshot_bucket"], "shop-snapshots");
    let human = stdout(&aether(&url, &["--store", "shop", "store", "info"]));
    assert!(human.contains("subjects:   ae.shop.*"), "{human}");
    assert!(human.contains("compatible: yes"), "{human}");

    // The garbage record is a problem (exit 1); the two actors' versions are in order.
    let check = aether(&url, &["--store", "shop", "store", "check"]);
    assert_eq!(check.status.code(), Some(1), "{}", stderr(&check));
    let text = stdout(&check);
    assert!(text.contains("5         malformed"), "{text}");
    assert!(
        text.ends_with("5 records, 2 actors: 1 problems, 0 gaps (gaps are allowed)\n"),
        "{text}"
    );
    assert_eq!(stderr(&check), "aether: 1 problems\n");

    // Dump: every event as its history line, the garbage skipped and said so (exit 1).
    let dump = aether(&url, &["--store", "shop", "store", "dump"]);
    assert_eq!(dump.status.code(), Some(1));
    let expected: Vec<String> = events()
        .iter()
        .map(|e| history::to_line(e).unwrap())
        .collect();
    assert_eq!(stdout(&dump).lines().collect::<Vec<_>>(), expected);
    assert!(
        stderr(&dump).contains("skipped record 5"),
        "{}",
        stderr(&dump)
    );
    let only = aether(
        &url,
        &[
            "--store",
            "shop",
            "store",
            "dump",
            "--actor-prefix",
            "order-2",
        ],
    );
    assert_eq!(stdout(&only).lines().count(), 1);

    // Load the dump into another store, and dump that: the same lines.
    let file = std::env::temp_dir().join(format!("aether-cli-dump-{}.jsonl", std::process::id()));
    std::fs::write(&file, stdout(&dump)).unwrap();
    let load = aether(
        &url,
        &["--store", "copy", "store", "load", file.to_str().unwrap()],
    );
    assert!(load.status.success(), "{}", stderr(&load));
    assert_eq!(stdout(&load), "loaded 4 events of 2 actors into copy\n");
    let copy = aether(&url, &["--store", "copy", "store", "dump"]);
    assert!(copy.status.success());
    assert_eq!(stdout(&copy).lines().collect::<Vec<_>>(), expected);
    // Loading the same file again stores nothing new: a stored event sent again is a retry.
    let again = aether(
        &url,
        &["--store", "copy", "store", "load", file.to_str().unwrap()],
    );
    assert!(again.status.success(), "{}", stderr(&again));
    let copy = aether(&url, &["--store", "copy", "store", "dump"]);
    assert_eq!(stdout(&copy).lines().count(), 4);
    // Another event at a stored version conflicts (each event at its version, checked), and
    // the error says which line of the file.
    let other = Event::builder("order-1", "OrderPlaced").build().unwrap();
    std::fs::write(&file, history::to_line(&other).unwrap() + "\n").unwrap();
    let conflict = aether(
        &url,
        &["--store", "copy", "store", "load", file.to_str().unwrap()],
    );
    assert_eq!(conflict.status.code(), Some(1));
    assert!(
        stderr(&conflict).starts_with("aether: event 1 of the file: version conflict"),
        "{}",
        stderr(&conflict)
    );
    std::fs::remove_file(&file).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actors_events_and_projections() {
    let (server, store) = seeded().await;
    let url = server.url();

    let history = aether(&url, &["--store", "shop", "actor", "history", "order-1"]);
    assert!(history.status.success(), "{}", stderr(&history));
    assert_eq!(
        stdout(&history),
        "actor    version  type          time                  data\n\
         order-1  1        OrderPlaced   2024-07-01T12:00:00Z  {\"total\":99.5}\n\
         order-1  2        ItemAdded v2  2024-07-01T12:00:01Z  {\"qty\":2,\"sku\":\"sku-1\"}\n\
         order-1  3        OrderShipped  2024-07-01T12:00:03Z  null\n"
    );
    let from = aether(
        &url,
        &[
            "--store", "shop", "--json", "actor", "history", "order-1", "--from", "2",
        ],
    );
    let lines = json_lines(&from);
    assert_eq!(lines.len(), 2);
    assert_eq!(
        (lines[0]["v"].clone(), lines[0]["sv"].clone()),
        (json!(2), json!(2))
    );

    let state = aether(
        &url,
        &["--store", "shop", "--json", "actor", "state", "order-1"],
    );
    assert_eq!(
        json_lines(&state)[0],
        json!({"actor": "order-1", "version": 3, "state_version": 1, "commands": 0, "state": {"shipped": true, "total": 99.5}})
    );

    let versions = stdout(&aether(&url, &["--store", "shop", "actor", "versions"]));
    let lines: Vec<&str> = versions.lines().collect();
    assert_eq!(lines[0], "actor    version  sequence");
    assert_eq!(lines[1], "garbage  ?        5");
    assert_eq!(lines[2..], ["order-1  3        4", "order-2  1        3"]);
    let page = aether(
        &url,
        &[
            "--store", "shop", "--json", "actor", "versions", "--prefix", "order-", "--limit", "1",
            "--after", "order-1",
        ],
    );
    assert_eq!(
        json_lines(&page),
        vec![json!({"actor": "order-2", "version": 1, "sequence": 3})]
    );

    // Tail from the start: the events, the garbage reported on stderr.
    let tail = aether(
        &url,
        &[
            "--store",
            "shop",
            "--json",
            "events",
            "tail",
            "--from-start",
            "--type",
            "OrderPlaced",
            "--count",
            "2",
        ],
    );
    assert!(tail.status.success(), "{}", stderr(&tail));
    let tailed: Vec<_> = json_lines(&tail)
        .iter()
        .map(|l| l["actor"].clone())
        .collect();
    assert_eq!(tailed, vec![json!("order-1"), json!("order-2")]);

    // Projections: a durable consumer that read two events and acknowledged one.
    let js = async_nats::jetstream::new(server.connect().await.unwrap());
    let stream = js.get_stream(store.stream_name()).await.unwrap();
    let consumer: async_nats::jetstream::consumer::PullConsumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("totals".into()),
            ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut batch = consumer.fetch().max_messages(2).messages().await.unwrap();
    use futures::StreamExt;
    let first = batch.next().await.unwrap().unwrap();
    first.ack().await.unwrap();
    let _second = batch.next().await.unwrap().unwrap();
    let list = aether(&url, &["--store", "shop", "projections", "list"]);
    assert_eq!(
        stdout(&list),
        "projection  position  lag  unacknowledged  redelivered\ntotals      1         3    1               0\n"
    );
    let rebuild = aether(
        &url,
        &["--store", "shop", "projections", "rebuild", "totals"],
    );
    assert!(rebuild.status.success(), "{}", stderr(&rebuild));
    let gone = aether(
        &url,
        &["--store", "shop", "projections", "status", "totals"],
    );
    assert_eq!(gone.status.code(), Some(4));
    assert_eq!(
        stderr(&gone),
        "aether: no projection \"totals\" on stream shop (`aether projections list` lists them)\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_one_line_and_an_exit_code() {
    // Nothing listens on this port.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("nats://{}", l.local_addr().unwrap())
    };
    let down = aether(&closed, &["store", "info"]);
    assert_eq!(down.status.code(), Some(3));
    let text = stderr(&down);
    assert!(
        text.starts_with(&format!("aether: cannot connect to NATS at {closed}: ")),
        "{text}"
    );
    assert_eq!(text.lines().count(), 1, "{text}");

    let server = NatsServer::start().await.unwrap();
    let url = server.url();
    let missing = aether(&url, &["--store", "nothing", "store", "info"]);
    assert_eq!(missing.status.code(), Some(4));
    assert_eq!(
        stderr(&missing),
        "aether: no stream `nothing` on this server: check --store (nothing) and --namespace (none); `nats stream ls` lists the streams\n"
    );
    // Reads never create a stream.
    let js = async_nats::jetstream::new(server.connect().await.unwrap());
    assert!(js.get_stream("nothing").await.is_err());

    let bad_name = aether(&url, &["--store", "Bad_Name", "store", "info"]);
    assert_eq!(bad_name.status.code(), Some(2));
    assert_eq!(stderr(&bad_name).lines().count(), 1);

    // A stream that is not Aether's, under a store's name: reported, not trusted.
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "foreign".into(),
        subjects: vec!["foreign.>".into()],
        max_messages: 10,
        ..Default::default()
    })
    .await
    .unwrap();
    let foreign = aether(&url, &["--store", "foreign", "store", "info"]);
    assert_eq!(foreign.status.code(), Some(1));
    assert!(
        stdout(&foreign)
            .contains("compatible: NO: subjects: found [\"foreign.>\"], need [\"ae.foreign.*\"]"),
        "{}",
        stdout(&foreign)
    );

    let no_file = aether(
        &url,
        &[
            "--store",
            "shop",
            "store",
            "load",
            "/nonexistent/history.jsonl",
        ],
    );
    assert_eq!(no_file.status.code(), Some(2));
    assert!(
        stderr(&no_file)
            .starts_with("aether: history line 0: opening /nonexistent/history.jsonl failed"),
        "{}",
        stderr(&no_file)
    );

    let no_actor = aether(&url, &["--store", "foreign", "actor", "history", "x"]);
    assert_ne!(no_actor.status.code(), Some(0));
    assert_eq!(
        stderr(&no_actor).lines().count(),
        1,
        "{}",
        stderr(&no_actor)
    );
}

#[test]
fn models_without_a_server() {
    let model = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/model/order_fulfilment.yaml"
    );
    let check = Command::new(BIN)
        .args(["model", "check", model])
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", stderr(&check));
    assert!(stdout(&check).contains("model `order-fulfilment` is valid"));
    let mermaid = Command::new(BIN)
        .args(["model", "diagram", model])
        .output()
        .unwrap();
    assert!(
        stdout(&mermaid).starts_with("flowchart"),
        "{}",
        stdout(&mermaid)
    );
    let json = Command::new(BIN)
        .args(["model", "convert", model, "--format", "json"])
        .output()
        .unwrap();
    let back: Json = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(back["name"], "order-fulfilment");

    let bad = std::env::temp_dir().join(format!("aether-cli-bad-{}.yaml", std::process::id()));
    std::fs::write(&bad, "name: m\ncontexts:\n  - name: c\n    aggregates: [{ name: A, commands: [{ name: Do, emits: [Nope] }] }]\n").unwrap();
    let invalid = Command::new(BIN)
        .args(["model", "check", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(invalid.status.code(), Some(1));
    assert!(stdout(&invalid).contains("Nope"), "{}", stdout(&invalid));
    std::fs::remove_file(&bad).ok();

    let completions = Command::new(BIN)
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(stdout(&completions).contains("_aether()"));
}

/// A one-node cluster: its member, leader and map as `cluster status` shows them, and its
/// records as `cluster watch` replays them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_status_and_watch() {
    use aether_cluster::{ClusterConfig, ClusterNode};
    use futures::StreamExt;

    let server = NatsServer::start().await.unwrap();
    let url = server.url();
    let node = ClusterNode::new(
        server.connect().await.unwrap(),
        ClusterConfig::new("ops").node_id("n1").shard_count(8),
    )
    .unwrap();
    let mut events = node.manager().watch();
    node.start().await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), async {
        while node.manager().shard_map().is_none() {
            events.next().await;
        }
    })
    .await
    .expect("a shard map within 20 s");

    let status = aether(&url, &["--json", "cluster", "status", "--cluster", "ops"]);
    assert!(status.status.success(), "{}", stderr(&status));
    let status = &json_lines(&status)[0];
    assert_eq!(status["members"]["n1"]["id"], "n1");
    assert_eq!(
        status["members"]["n1"]["alive"]["incarnation"],
        node.manager().incarnation()
    );
    assert_eq!(status["map"]["shards"], 8);
    assert_eq!(status["map"]["shards_per_node"], json!({"n1": 8}));
    let human = stdout(&aether(&url, &["cluster", "status", "--cluster", "ops"]));
    assert!(human.contains("n1      active  yes    8"), "{human}");

    let watch = aether(
        &url,
        &[
            "--json",
            "cluster",
            "watch",
            "--cluster",
            "ops",
            "--count",
            "2",
        ],
    );
    assert!(watch.status.success(), "{}", stderr(&watch));
    let keys: Vec<_> = json_lines(&watch)
        .iter()
        .map(|l| l["key"].clone())
        .collect();
    assert_eq!(keys.len(), 2);

    let none = aether(&url, &["cluster", "status", "--cluster", "nope"]);
    assert_eq!(none.status.code(), Some(4));
    assert_eq!(
        stderr(&none),
        "aether: no cluster \"nope\" on this server (no KV bucket aether-cluster-nope): check --cluster\n"
    );
    node.leave().await.unwrap();
}

/// A server that wants a user and password: without them, one line and exit 3; with them
/// (options or the `nats` CLI's environment variables), the command runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_asked_for_and_used() {
    let server = NatsServer::start_with(
        "cli-auth",
        vec![
            "--user".into(),
            "ops".into(),
            "--pass".into(),
            "s3cret".into(),
        ],
    )
    .await
    .unwrap();
    let url = server.url();
    let refused = aether(&url, &["--store", "shop", "store", "info"]);
    assert_eq!(refused.status.code(), Some(3), "{}", stderr(&refused));
    let text = stderr(&refused);
    assert!(
        text.starts_with("aether: cannot connect to NATS at "),
        "{text}"
    );
    assert!(text.to_lowercase().contains("authorization"), "{text}");
    assert_eq!(text.lines().count(), 1, "{text}");

    let wrong = aether(
        &url,
        &["--user", "ops", "--password", "nope", "store", "info"],
    );
    assert_eq!(wrong.status.code(), Some(3), "{}", stderr(&wrong));

    // Right credentials: the server answers (there is no stream yet: exit 4, not 3).
    let with_options = aether(
        &url,
        &["--user", "ops", "--password", "s3cret", "store", "info"],
    );
    assert_eq!(
        with_options.status.code(),
        Some(4),
        "{}",
        stderr(&with_options)
    );
    let with_env = Command::new(BIN)
        .args(["--server", &url, "store", "info"])
        .env("NATS_USER", "ops")
        .env("NATS_PASSWORD", "s3cret")
        .output()
        .unwrap();
    assert_eq!(with_env.status.code(), Some(4), "{}", stderr(&with_env));
}

/// A tenant's user as docs/security.md sets one up: an nkey, the reader's block, replies only on
/// `_INBOX_tenant-a.>`. With `--nkey` and `--inbox-prefix` the CLI reads the tenant's store;
/// without the prefix the server refuses the reply inbox; an unknown key is refused at connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_reads_its_store_with_an_nkey_and_its_inbox_prefix() {
    use aether_core::Namespace;
    use aether_store_jetstream::JetStreamConfig;
    use aether_testkit::tenancy::{self, Authorization, Role};
    use nkeys::KeyPair;

    let user = KeyPair::new_user();
    let server = Authorization::with_operator()
        .nkey_user(
            &user.public_key(),
            &Role::Reader.permissions("tenant-a").unwrap(),
        )
        .start("cli-nkeys")
        .await
        .unwrap();
    let operator = tenancy::connect_operator(server.server()).await.unwrap();
    let store = JetStreamEventStore::with_config(
        operator,
        "events",
        JetStreamConfig::default().namespace(Namespace::new("tenant-a").unwrap()),
    )
    .await
    .unwrap();
    store
        .save_event(Event::new("order-1", "Placed", 1, &"for tenant a").unwrap())
        .await
        .unwrap();
    let dir = std::env::temp_dir().join(format!("aether-cli-nkey-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let seed_file = dir.join("tenant-a.nk");
    std::fs::write(&seed_file, format!("{}\n", user.seed().unwrap())).unwrap();
    let seed = seed_file.to_str().unwrap();
    let url = server.server().url();
    let tenant = [
        "--store",
        "events",
        "--namespace",
        "tenant-a",
        "--timeout",
        "2",
    ];
    let history = |extra: &[&str]| {
        let mut args: Vec<&str> = extra.to_vec();
        args.extend(tenant);
        args.extend(["--json", "actor", "history", "order-1"]);
        aether(&url, &args)
    };

    let read = history(&["--nkey", seed, "--inbox-prefix", "_INBOX_tenant-a"]);
    assert!(read.status.success(), "{}", stderr(&read));
    assert!(stdout(&read).contains("for tenant a"), "{}", stdout(&read));

    // The usual `_INBOX` prefix: the server refuses the replies' subscription.
    let without = history(&["--nkey", seed]);
    assert!(
        !without.status.success(),
        "read without the tenant's inbox prefix"
    );
    let text = stderr(&without);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.contains(r#"the server refused this user: subscribe to "_INBOX."#)
            && text.contains("--inbox-prefix"),
        "{text}"
    );

    // A key the server does not know: refused at connect (exit 3).
    let stranger = dir.join("stranger.nk");
    std::fs::write(&stranger, KeyPair::new_user().seed().unwrap()).unwrap();
    let refused = history(&["--nkey", stranger.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(3), "{}", stderr(&refused));

    // Not a seed at all: bad input, one line.
    std::fs::write(dir.join("empty.nk"), "# nothing here\n").unwrap();
    let empty = dir.join("empty.nk");
    let bad = history(&["--nkey", empty.to_str().unwrap()]);
    assert!(stderr(&bad).contains("no nkey seed"), "{}", stderr(&bad));
    let _ = std::fs::remove_dir_all(&dir);
}
