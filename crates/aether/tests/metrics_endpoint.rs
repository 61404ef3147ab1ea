//! Prometheus end to end: the exporter installed by `aether::metrics::install_prometheus`, real
//! work on every layer (JetStream and memory stores, local and NATS buses, a projection, a
//! runtime, a 2-node cluster) against a real nats-server, then a scrape over HTTP. Every metric
//! docs/metrics.md lists is exported with its documented type, and nothing named `aether_*` is
//! exported without being listed there. The Grafana dashboard names only documented metrics.

#![cfg(all(
    feature = "metrics",
    feature = "memory",
    feature = "jetstream",
    feature = "bus",
    feature = "cluster"
))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use aether::bus::{
    EventBus, NatsEventBus, Overflow, Projection, ProjectionConfig, ProjectionRunner,
    SubscribeOptions,
};
use aether::cluster::{ClusterConfig, ClusterNode};
use aether::runtime::{Actor, Runtime, SnapshotPolicy};
use aether::store::jetstream::JetStreamEventStore;
use aether::store::memory::InMemoryEventStore;
use aether::{ActorSnapshot, Event, EventStore, Namespace, SnapshotStore};
use aether_testkit::nats::NatsServer;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Counter {
    n: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Counted {
    Added(u64),
}

#[derive(Debug, Clone, thiserror::Error, Serialize, Deserialize)]
#[error("zero is not a number to add")]
struct Zero;

impl Actor for Counter {
    const TYPE: &'static str = "counter";
    type Command = u64;
    type Event = Counted;
    type Error = Zero;

    fn handle(&self, by: &u64) -> Result<Vec<Counted>, Zero> {
        if *by == 0 {
            return Err(Zero);
        }
        Ok(vec![Counted::Added(*by)])
    }

    fn apply(&mut self, Counted::Added(by): &Counted) {
        self.n += by;
    }
}

struct Count(std::sync::atomic::AtomicU64);

#[async_trait::async_trait]
impl Projection for Count {
    async fn apply(&self, _: &Event, _: u64) -> Result<(), aether::BoxError> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

/// The metrics docs/metrics.md lists: name → documented type.
fn documented() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/metrics.md"
    ))
    .unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("| `aether_"))
        .map(|rest| {
            let (name, rest) = rest.split_once('`').unwrap();
            let kind = rest.split('|').nth(1).unwrap().trim().to_owned();
            (format!("aether_{name}"), kind)
        })
        .collect()
}

/// `# TYPE` lines of a Prometheus text page: name → type.
fn exported(page: &str) -> BTreeMap<String, String> {
    page.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| (name.to_owned(), kind.trim().to_owned()))
        .collect()
}

/// The body of `GET path` on 127.0.0.1:`port` (HTTP/1.0: no chunked encoding to undo).
async fn http_get(port: u16, path: &str) -> String {
    match try_http_get(port, path).await {
        Ok(body) => body,
        Err(head) => panic!("GET {path}: {head}"),
    }
}

/// The body of `GET path` when the answer is 200, else the response head.
async fn try_http_get(port: u16, path: &str) -> Result<String, String> {
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    conn.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut response = String::new();
    conn.read_to_string(&mut response)
        .await
        .map_err(|e| e.to_string())?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    if head.contains(" 200 ") {
        Ok(body.to_owned())
    } else {
        Err(head.to_owned())
    }
}

async fn scrape(port: u16) -> String {
    http_get(port, "/metrics").await
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The dashboard's queries, each with its panel title.
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/grafana/aether.json"
    ))
    .unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|panel| {
            let title = panel["title"].as_str().unwrap_or_default().to_owned();
            panel["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |t| (title.clone(), t["expr"].as_str().unwrap().to_owned()))
        })
        .collect()
}

/// Runs a real Prometheus (from `PROMETHEUS_BIN`, provisioned by `cargo xtask prometheus`)
/// scraping this process's endpoint every second, and evaluates every panel's query: each must
/// return data. Returns how many queries were evaluated.
async fn evaluate_dashboard(prometheus: &std::path::Path, target: u16) -> usize {
    let dir = std::env::temp_dir().join(format!("aether-prometheus-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  \
             - job_name: aether\n    static_configs:\n      - targets: ['127.0.0.1:{target}']\n"
        ),
    )
    .unwrap();
    let web = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = tokio::process::Command::new(prometheus)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{web}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let query = |q: &str| format!("/api/v1/query?query={}", percent_encode(q));
    // Ready once it has scraped us a few times (rates need two samples).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        // Until it is up it refuses connections, then answers 503 while it starts.
        let ready = try_http_get(web, &query("count_over_time(up{job=\"aether\"}[1m]) >= 4"))
            .await
            .is_ok_and(|body| body.contains("\"value\""));
        if ready {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Prometheus never scraped the endpoint"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut empty = Vec::new();
    let queries = dashboard_queries();
    for (title, expr) in &queries {
        let body = http_get(web, &query(expr)).await;
        let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(answer["status"], "success", "{title}: {expr}: {body}");
        if answer["data"]["result"]
            .as_array()
            .is_none_or(Vec::is_empty)
        {
            empty.push(format!("{title}: {expr}"));
        }
    }
    let _ = child.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
    assert!(empty.is_empty(), "panels without data: {empty:#?}");
    queries.len()
}

fn cluster_config(node: &str) -> ClusterConfig {
    ClusterConfig::new("metrics")
        .node_id(node)
        .shard_count(16)
        .heartbeat_interval(Duration::from_millis(200))
        .failure_timeout(Duration::from_secs(2))
        .lease_ttl(Duration::from_secs(2))
        .rebalance_delay(Duration::from_millis(20))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_metric_is_exported_and_nothing_else() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let handle = aether::metrics::install_prometheus(([127, 0, 0, 1], port).into()).unwrap();
    // One recorder per process.
    assert!(matches!(
        aether::metrics::install_prometheus(([127, 0, 0, 1], 0).into()),
        Err(aether::metrics::MetricsError::AlreadyInstalled
            | aether::metrics::MetricsError::Listen { .. })
    ));
    let server = NatsServer::start().await.unwrap();
    let client = server.connect().await.unwrap();

    // Stores: appends (one refused), reads from a version, snapshots (hit and miss).
    let store = Arc::new(
        JetStreamEventStore::new(client.clone(), "metrics")
            .await
            .unwrap(),
    );
    for v in 1..=5 {
        store
            .save_event(Event::new("a-1", "Added", v, &v).unwrap())
            .await
            .unwrap();
    }
    assert!(
        store
            .save_event(Event::new("a-1", "Added", 3, &3).unwrap())
            .await
            .is_err()
    );
    assert_eq!(store.get_events("a-1", 4).await.unwrap().len(), 2);
    store
        .save_snapshot(ActorSnapshot::new("a-1", 5, &5u64).unwrap())
        .await
        .unwrap();
    assert!(store.get_latest_snapshot("a-1").await.unwrap().is_some());
    assert!(store.get_latest_snapshot("nobody").await.unwrap().is_none());
    let memory = InMemoryEventStore::new();
    memory
        .save_event(Event::new("m-1", "Added", 1, &1).unwrap())
        .await
        .unwrap();

    // Buses: local delivery, a subscriber that loses events, two nodes over NATS, garbage.
    let local = EventBus::new();
    let ns = Namespace::new("orders").unwrap();
    let mut sub = local.subscribe("orders".parse().unwrap());
    let _slow = local.subscribe_with(
        "orders".parse().unwrap(),
        SubscribeOptions::default()
            .capacity(1)
            .overflow(Overflow::Wait(Duration::from_millis(1))),
    );
    for v in 1..=3 {
        local
            .publish(&ns, &Event::new("o-1", "Placed", v, &v).unwrap())
            .await;
    }
    assert!(sub.next().await.is_some());
    let one = NatsEventBus::new(server.connect().await.unwrap())
        .await
        .unwrap();
    let two = NatsEventBus::new(server.connect().await.unwrap())
        .await
        .unwrap();
    let mut remote = two.subscribe("orders".parse().unwrap()).await.unwrap();
    one.publish(&ns, &Event::new("o-2", "Placed", 1, &1).unwrap())
        .await
        .unwrap();
    assert!(remote.next().await.is_some());
    // Garbage, then an event on the same connection: reading the event means the garbage was
    // read (and counted) before it.
    client
        .publish("aether.orders", "not an event".into())
        .await
        .unwrap();
    let after = Event::new("o-3", "Placed", 1, &1).unwrap();
    client
        .publish(
            "aether.orders",
            aether::wire::encode_event(&after).unwrap().into(),
        )
        .await
        .unwrap();
    assert_eq!(remote.next().await, Some(after));
    let projection = ProjectionRunner::start(
        async_nats_js(&client),
        ProjectionConfig::new("counts", store.stream_name(), store.subject_filter()),
        Arc::new(Count(Default::default())),
    )
    .await
    .unwrap();

    // Runtime and a 2-node cluster on the JetStream store.
    let runtime = Runtime::<Counter>::builder(store.clone())
        .snapshots(store.clone())
        .snapshot_policy(SnapshotPolicy::every(2))
        .build();
    runtime.ask("c-1", 1).await.unwrap();
    runtime.ask("c-1", 2).await.unwrap();
    assert!(runtime.ask("c-1", 0).await.is_err());
    let mut nodes = Vec::new();
    for id in ["n1", "n2"] {
        let node = ClusterNode::new(server.connect().await.unwrap(), cluster_config(id)).unwrap();
        let actors = node
            .register(Runtime::<Counter>::builder(store.clone()).build())
            .unwrap();
        node.start().await.unwrap();
        nodes.push((node, actors));
    }
    // Calls from both nodes to many actors: some are remote for each caller.
    for i in 0..40 {
        for (_, actors) in &nodes {
            actors.ask(&format!("k-{i}"), 1).await.unwrap();
        }
    }
    // A reminder delivered by a dispatcher: its firing counted and its lateness recorded.
    let reminders: std::sync::Arc<dyn aether::reminder::ReminderStore> = std::sync::Arc::new(
        aether::store::jetstream::JetStreamReminders::open(
            server.connect().await.unwrap(),
            "metrics",
            &aether::store::jetstream::JetStreamConfig::default(),
        )
        .await
        .unwrap(),
    );
    let dispatcher = aether::runtime::reminders::Dispatcher::new(reminders.clone())
        .runtime(runtime.clone())
        .start();
    aether::runtime::reminders::Reminders::<Counter>::new(reminders)
        .remind("r-1", "once", aether::When::after(Duration::ZERO), &5)
        .await
        .unwrap();
    for _ in 0..200 {
        if dispatcher.stats().delivered > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(dispatcher.stats().delivered, 1, "{:?}", dispatcher.stats());

    // A call that is not one: answered `bad_request`, and counted.
    let raw = server.connect().await.unwrap();
    raw.request("aether-cluster.metrics.call.n1", "not a call".into())
        .await
        .unwrap();

    // Wait until the projection and the undecodable message were counted, then scrape.
    let mut page = String::new();
    for _ in 0..100 {
        page = scrape(port).await;
        if page.contains("aether_bus_undecodable_total 1") && projection.status().applied > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        page.lines()
            .any(|l| l.starts_with("aether_cluster_malformed_total{")
                && l.contains("what=\"call\"")
                && l.contains("node=\"n1\"")
                && l.ends_with(" 1")),
        "the malformed call is counted"
    );
    let got = exported(&page);
    let want = documented();
    assert!(
        want.len() >= 45,
        "docs/metrics.md lists {} metrics",
        want.len()
    );
    for (name, kind) in &want {
        let exported_kind = got.get(name).unwrap_or_else(|| {
            panic!(
                "{name} is documented but not exported; exported: {:?}",
                got.keys()
            )
        });
        let expected = if kind == "histogram" {
            "summary"
        } else {
            kind.as_str()
        };
        assert_eq!(exported_kind, expected, "{name}: documented as {kind}");
    }
    let undocumented: Vec<_> = got
        .keys()
        .filter(|n| n.starts_with("aether_") && !want.contains_key(*n))
        .collect();
    assert!(
        undocumented.is_empty(),
        "exported but not documented: {undocumented:?}"
    );
    // Labels are bounded: no actor id anywhere in the page.
    for id in ["a-1", "c-1", "k-1", "o-1"] {
        assert!(
            !page.contains(&format!("\"{id}\"")),
            "actor id {id} used as a label"
        );
    }
    assert!(handle.render().contains("aether_store_appends_total"));
    match std::env::var_os("PROMETHEUS_BIN") {
        Some(bin) => {
            let evaluated = evaluate_dashboard(std::path::Path::new(&bin), port).await;
            eprintln!("Prometheus evaluated {evaluated} dashboard queries, each with data");
        }
        None => eprintln!(
            "PROMETHEUS_BIN is not set: the dashboard's queries were not evaluated against a \
             real Prometheus (`cargo xtask prometheus` provisions one; `cargo xtask ci` does)"
        ),
    }
    for (node, _) in nodes {
        node.leave().await.unwrap();
    }
    projection.stop();
    one.stop();
    two.stop();
}

fn async_nats_js(
    client: &aether::store::jetstream::async_nats::Client,
) -> aether::store::jetstream::async_nats::jetstream::Context {
    aether::store::jetstream::async_nats::jetstream::new(client.clone())
}

/// Every query of the shipped dashboard names only documented metrics (with the summary
/// suffixes `_sum` and `_count` allowed for histograms).
#[test]
fn the_dashboard_names_only_documented_metrics() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/grafana/aether.json"
    ))
    .unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let want = documented();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 15);
    let mut used = BTreeSet::new();
    for panel in panels {
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {} has no query", panel["title"]);
        for target in targets {
            let expr = target["expr"].as_str().unwrap();
            let names = metric_names(expr);
            assert!(!names.is_empty(), "{expr} names no metric");
            for name in names {
                let base = ["_sum", "_count"]
                    .iter()
                    .find_map(|s| {
                        name.strip_suffix(s)
                            .filter(|b| want.get(*b).is_some_and(|k| k == "histogram"))
                    })
                    .unwrap_or(&name)
                    .to_owned();
                assert!(
                    want.contains_key(&base),
                    "panel {}: {name} is not documented",
                    panel["title"]
                );
                used.insert(base);
            }
        }
    }
    // The dashboard covers every layer.
    for layer in [
        "aether_store_",
        "aether_bus_",
        "aether_runtime_",
        "aether_cluster_",
    ] {
        assert!(
            used.iter().any(|n| n.starts_with(layer)),
            "no panel for {layer}*"
        );
    }
}

/// The `aether_*` identifiers in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("aether_") {
        let preceded = rest[..at]
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if !preceded {
            names.push(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    names
}
