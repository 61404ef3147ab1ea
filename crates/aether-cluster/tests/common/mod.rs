//! Helpers shared by the cluster tests: fast configs, waiting on a node's events, child nodes.

#![allow(dead_code, unreachable_pub)]

pub mod bank;
pub mod wire;

use std::process::Stdio;
use std::time::Duration;

use aether_cluster::{ClusterConfig, ClusterEvent, ClusterEvents, ClusterManager, ClusterNode};
use futures::StreamExt;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::time::Instant;

pub const SHARDS: u32 = 64;
pub const HEARTBEAT: Duration = Duration::from_millis(300);
pub const FAILURE_TIMEOUT: Duration = Duration::from_secs(2);
pub const LEASE_TTL: Duration = Duration::from_secs(2);
/// How long nodes get to settle (agree on a map, finish moves).
pub const SETTLE: Duration = Duration::from_secs(30);

pub fn cluster_name() -> String {
    format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// Short timeouts so failures are noticed in seconds.
pub fn fast_config(cluster: &str, node: &str) -> ClusterConfig {
    ClusterConfig::new(cluster)
        .node_id(node)
        .shard_count(SHARDS)
        .heartbeat_interval(HEARTBEAT)
        .failure_timeout(FAILURE_TIMEOUT)
        .lease_ttl(LEASE_TTL)
        .rebalance_delay(Duration::from_millis(100))
}

/// Polls `pred` (a condition on live nodes, with no event to await) until it holds; panics after
/// [`SETTLE`].
pub async fn until(what: &str, pred: impl Fn() -> bool) {
    let deadline = Instant::now() + SETTLE;
    while !pred() {
        assert!(Instant::now() < deadline, "no {what} within {SETTLE:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether `node`'s map has exactly `owners` owners and the node serves every shard it owns.
pub fn served(node: &ClusterNode, owners: usize) -> bool {
    node.manager()
        .shard_map()
        .is_some_and(|m| m.counts().len() == owners)
        && node.shards_in_use() == node.manager().shards_owned().len()
}

/// A node and its event stream (subscribed before start, so nothing is missed).
pub struct Node {
    pub manager: ClusterManager,
    pub events: ClusterEvents,
    pub seen: Vec<ClusterEvent>,
}

impl Node {
    pub async fn start(client: async_nats::Client, config: ClusterConfig) -> Self {
        let manager = ClusterManager::new(client, config).expect("valid config");
        let events = manager.watch();
        manager.start().await.expect("node starts");
        Self {
            manager,
            events,
            seen: Vec::new(),
        }
    }

    /// Waits (on events, not on a timer) until `pred` holds for the node; panics after `timeout`.
    pub async fn until(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&ClusterManager) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        while !pred(&self.manager) {
            match tokio::time::timeout_at(deadline, self.events.next()).await {
                Ok(Some(e)) => self.seen.push(e),
                Ok(None) => panic!(
                    "{}: event stream ended waiting for {what}",
                    self.manager.node_id()
                ),
                Err(_) => panic!(
                    "{}: no {what} within {timeout:?}; members {:?}, leader {:?}, map {:?}",
                    self.manager.node_id(),
                    self.manager
                        .members()
                        .iter()
                        .map(|m| m.id.clone())
                        .collect::<Vec<_>>(),
                    self.manager.leader(),
                    self.manager.shard_map().map(|m| (
                        m.epoch(),
                        m.counts()
                            .into_iter()
                            .map(|(k, v)| (k.to_owned(), v))
                            .collect::<Vec<_>>()
                    )),
                ),
            }
        }
    }

    /// Waits for an event matching `pred` and returns it.
    pub async fn event(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&ClusterEvent) -> bool,
    ) -> ClusterEvent {
        let deadline = Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.events.next()).await {
                Ok(Some(e)) => {
                    self.seen.push(e.clone());
                    if pred(&e) {
                        return e;
                    }
                }
                Ok(None) => panic!(
                    "{}: event stream ended waiting for {what}",
                    self.manager.node_id()
                ),
                Err(_) => panic!(
                    "{}: no {what} within {timeout:?}; saw {:?}",
                    self.manager.node_id(),
                    self.seen
                ),
            }
        }
    }
}

/// Whether the node's map gives every shard to one of exactly `owners`.
pub fn map_owned_by(m: &ClusterManager, owners: &[&str]) -> bool {
    m.shard_map().is_some_and(|map| {
        let counts = map.counts();
        map.owners().len() == SHARDS as usize
            && counts.len() == owners.len()
            && owners.iter().all(|o| counts.contains_key(o))
    })
}

/// A cluster node in a child OS process (this test binary re-run with `child_node`), so tests
/// can SIGKILL or SIGSTOP it. It prints one line per event to stdout.
pub struct ChildNode {
    pub child: Child,
    pub lines: Lines<BufReader<ChildStdout>>,
    pub node_id: String,
}

impl ChildNode {
    pub async fn spawn(test_binary_filter: &str, urls: &str, cluster: &str, node_id: &str) -> Self {
        let spec = format!("{urls}|{cluster}|{node_id}");
        Self::spawn_env(test_binary_filter, "AETHER_CLUSTER_CHILD", spec, node_id).await
    }

    /// Re-runs this test binary's ignored test `test_filter` with `env_key=spec`, and waits for
    /// its "started" line.
    pub async fn spawn_env(test_filter: &str, env_key: &str, spec: String, node_id: &str) -> Self {
        let exe = std::env::current_exe().expect("test binary path");
        let mut child = Command::new(exe)
            .args([
                test_filter,
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(env_key, spec)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn child node");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut node = Self {
            child,
            lines: BufReader::new(stdout).lines(),
            node_id: node_id.to_owned(),
        };
        node.expect_line("started", Duration::from_secs(60)).await;
        node
    }

    /// Waits for a stdout line starting with `NODE <prefix>`; returns the rest.
    pub async fn expect_line(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let want = format!("NODE {prefix}");
        loop {
            match tokio::time::timeout_at(deadline, self.lines.next_line()).await {
                // libtest may print "test child_node ... " before the first line.
                Ok(Ok(Some(line))) if line.contains(&want) => {
                    let at = line.find(&want).unwrap_or(0) + want.len();
                    return line[at..].trim().to_owned();
                }
                Ok(Ok(Some(_))) => {}
                Ok(Ok(None)) => panic!("child {} exited waiting for {prefix:?}", self.node_id),
                Ok(Err(e)) => panic!("child {} stdout: {e}", self.node_id),
                Err(_) => panic!(
                    "child {} printed no {prefix:?} within {timeout:?}",
                    self.node_id
                ),
            }
        }
    }

    fn pid(&self) -> rustix::process::Pid {
        let raw = self
            .child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .expect("child running");
        rustix::process::Pid::from_raw(raw).expect("pid")
    }

    pub fn kill9(&self) {
        rustix::process::kill_process(self.pid(), rustix::process::Signal::KILL).expect("SIGKILL");
    }

    pub fn pause(&self) {
        rustix::process::kill_process(self.pid(), rustix::process::Signal::STOP).expect("SIGSTOP");
    }

    pub fn resume(&self) {
        rustix::process::kill_process(self.pid(), rustix::process::Signal::CONT).expect("SIGCONT");
    }
}

/// The body of the child process: join, print events, run until killed.
pub async fn run_child_node() {
    let Ok(spec) = std::env::var("AETHER_CLUSTER_CHILD") else {
        return;
    };
    let mut parts = spec.split('|');
    let (Some(urls), Some(cluster), Some(node_id)) = (parts.next(), parts.next(), parts.next())
    else {
        panic!("AETHER_CLUSTER_CHILD must be urls|cluster|node_id, not {spec:?}");
    };
    let addrs: Vec<async_nats::ServerAddr> =
        urls.split(',').map(|u| u.parse().expect("url")).collect();
    let client = async_nats::connect(addrs).await.expect("child connects");
    let manager = ClusterManager::new(client, fast_config(cluster, node_id)).expect("config");
    let mut events = manager.watch();
    manager.start().await.expect("child starts");
    println!("NODE started");
    while let Some(event) = events.next().await {
        match event {
            ClusterEvent::BecameLeader { term } => println!("NODE leader {term}"),
            ClusterEvent::SteppedDown { term, reason } => {
                println!("NODE stepped-down {term} {reason}")
            }
            ClusterEvent::ShardMapChanged { map, .. } => {
                println!("NODE map {} {}", map.epoch(), map.term())
            }
            other => println!("NODE event {other:?}"),
        }
    }
}

/// The body of a child process hosting the bank actor: join, serve, print map changes, run
/// until killed. `AETHER_BANK_CHILD` = urls|cluster|node_id.
pub async fn run_bank_child() {
    let Ok(spec) = std::env::var("AETHER_BANK_CHILD") else {
        return;
    };
    let mut parts = spec.split('|');
    let (Some(urls), Some(cluster), Some(node_id)) = (parts.next(), parts.next(), parts.next())
    else {
        panic!("AETHER_BANK_CHILD must be urls|cluster|node_id[|failure_ms], not {spec:?}");
    };
    let mut config = bank::routing(fast_config(cluster, node_id));
    if let Some(ms) = parts.next() {
        config = config.failure_timeout(Duration::from_millis(ms.parse().expect("failure ms")));
    }
    let addrs: Vec<async_nats::ServerAddr> =
        urls.split(',').map(|u| u.parse().expect("url")).collect();
    let client = async_nats::connect(addrs).await.expect("child connects");
    let (node, _accounts, _store) = bank::bank_node(client, config, 1).await;
    let mut events = node.manager().watch();
    println!("NODE started");
    while let Some(event) = events.next().await {
        if let ClusterEvent::ShardMapChanged { map, .. } = event {
            println!("NODE map {} {}", map.epoch(), map.shards_of(node_id).len());
        }
    }
}

impl ChildNode {
    /// A child process hosting the bank actor (see [`run_bank_child`]).
    pub async fn spawn_bank(test_filter: &str, urls: &str, cluster: &str, node_id: &str) -> Self {
        Self::spawn_bank_with(test_filter, urls, cluster, node_id, None).await
    }

    /// [`spawn_bank`](Self::spawn_bank) with another failure timeout (milliseconds).
    pub async fn spawn_bank_with(
        test_filter: &str,
        urls: &str,
        cluster: &str,
        node_id: &str,
        failure_ms: Option<u64>,
    ) -> Self {
        let mut spec = format!("{urls}|{cluster}|{node_id}");
        if let Some(ms) = failure_ms {
            spec.push_str(&format!("|{ms}"));
        }
        Self::spawn_env(test_filter, "AETHER_BANK_CHILD", spec, node_id).await
    }
}

/// The JSON a Python test script printed on its last line; panics with its output if it failed.
pub fn python_result(script: &str, out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{script} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let last = out
        .stdout
        .trim_ascii_end()
        .rsplit(|b| *b == b'\n')
        .next()
        .unwrap_or_default();
    serde_json::from_slice(last).expect("the script's last line is JSON")
}
