//! One scenario's world: a 3-server NATS cluster, Aether node processes (optionally each behind
//! its own fault-injecting proxies to every server), the ledger of what they said, and a sampler
//! of every process's memory and open handles.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use aether_testkit::nats::NatsCluster;
use aether_testkit::proxy::TcpProxy;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::ledger::Ledger;

/// How many Aether nodes a scenario runs.
pub(crate) const NODES: usize = 3;

/// How long a node may take to join.
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);

/// A running node process.
#[derive(Debug)]
struct NodeProc {
    child: Child,
    stdin: ChildStdin,
    reader: JoinHandle<()>,
}

/// The peak and the growth of one process's samples.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Usage {
    /// The highest resident memory seen, bytes.
    pub(crate) peak_rss: u64,
    /// Mean RSS over the last quarter of the samples divided by the mean over the second quarter
    /// (after warm-up): near 1 when memory is bounded.
    pub(crate) rss_growth: f64,
    /// The most open file descriptors seen (nodes only; 0 for servers).
    pub(crate) peak_fds: u64,
}

type Samples = BTreeMap<String, Vec<(u64, u64)>>;

/// A scenario's processes and what they said.
#[derive(Debug)]
pub(crate) struct World {
    /// The NATS servers.
    pub(crate) nats: NatsCluster,
    /// The Aether cluster's name.
    pub(crate) cluster: String,
    /// The store (stream) the nodes write.
    pub(crate) stream: String,
    /// What the nodes said.
    pub(crate) ledger: Arc<Ledger>,
    nodes: Vec<Option<NodeProc>>,
    incarnations: Vec<u32>,
    /// `proxies[node][server]`, when the nodes reach the servers through proxies.
    proxies: Vec<Vec<TcpProxy>>,
    samples: Arc<Mutex<Samples>>,
    sampler: JoinHandle<()>,
    logs: PathBuf,
}

impl World {
    /// Starts the servers and `NODES` node processes (through proxies when `proxied`), and
    /// waits until every node is ready.
    pub(crate) async fn start(name: &str, proxied: bool, logs: PathBuf) -> Result<Self, String> {
        let nats = NatsCluster::start(3)
            .await
            .map_err(|e| format!("starting 3 nats-servers: {e}"))?;
        let mut proxies = Vec::new();
        if proxied {
            for _ in 0..NODES {
                let mut mine = Vec::new();
                for server in nats.nodes() {
                    let addr = format!("127.0.0.1:{}", server.port())
                        .parse()
                        .map_err(|e| format!("server address: {e}"))?;
                    mine.push(
                        TcpProxy::start(addr)
                            .await
                            .map_err(|e| format!("starting a proxy: {e}"))?,
                    );
                }
                proxies.push(mine);
            }
        }
        std::fs::create_dir_all(&logs).map_err(|e| format!("creating {}: {e}", logs.display()))?;
        let samples = Arc::new(Mutex::new(Samples::new()));
        let mut world = Self {
            nats,
            cluster: format!("chaos-{name}"),
            stream: format!("{}-{name}", crate::bank::STREAM_PREFIX),
            ledger: Arc::new(Ledger::default()),
            nodes: (0..NODES).map(|_| None).collect(),
            incarnations: vec![0; NODES],
            proxies,
            samples: samples.clone(),
            sampler: tokio::spawn(async {}),
            logs,
        };
        // The first node creates the stream and the bucket; the others join after it.
        world.spawn(0).await?;
        for i in 1..NODES {
            world.spawn(i).await?;
        }
        world.sampler = tokio::spawn(sample(world.pids_handle(), samples));
        Ok(world)
    }

    /// Node `i`'s id.
    pub(crate) fn node_id(i: usize) -> String {
        format!("node-{}", i + 1)
    }

    /// The node processes running now, as the prefix of their command ids (`node-1.2`: node-1's
    /// third incarnation).
    pub(crate) fn live_processes(&self) -> Vec<String> {
        (0..NODES)
            .filter(|i| self.nodes[*i].is_some())
            .map(|i| {
                format!(
                    "{}.{}",
                    Self::node_id(i),
                    self.incarnations[i].saturating_sub(1)
                )
            })
            .collect()
    }

    /// The ids of the nodes running now.
    pub(crate) fn live(&self) -> Vec<String> {
        (0..NODES)
            .filter(|i| self.nodes[*i].is_some())
            .map(Self::node_id)
            .collect()
    }

    fn urls(&self, i: usize) -> String {
        match self.proxies.get(i) {
            Some(mine) => mine.iter().map(TcpProxy::url).collect::<Vec<_>>().join(","),
            None => self.nats.urls(),
        }
    }

    /// Starts node `i` (again, after a kill or a leave) and waits for its `READY`.
    pub(crate) async fn spawn(&mut self, i: usize) -> Result<(), String> {
        let id = Self::node_id(i);
        let exe = std::env::current_exe().map_err(|e| format!("finding this binary: {e}"))?;
        let log = self.logs.join(format!("{id}.{}.log", self.incarnations[i]));
        let stderr =
            std::fs::File::create(&log).map_err(|e| format!("creating {}: {e}", log.display()))?;
        let mut child = Command::new(exe)
            .args(["node", "--urls", &self.urls(i), "--cluster", &self.cluster])
            .args(["--node", &id, "--stream", &self.stream])
            .args(["--incarnation", &self.incarnations[i].to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("spawning {id}: {e}"))?;
        self.incarnations[i] += 1;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(format!("{id}: no pipes"));
        };
        let ledger = self.ledger.clone();
        let name = id.clone();
        // Every line is also kept in a file, for a human reading a failure.
        let out = self
            .logs
            .join(format!("{id}.{}.out", self.incarnations[i] - 1));
        let mut copy = std::fs::File::create(&out)
            .map(std::io::BufWriter::new)
            .map_err(|e| format!("creating {}: {e}", out.display()))?;
        let reader = tokio::spawn(async move {
            use std::io::Write;
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = writeln!(copy, "{:?} {line}", std::time::SystemTime::now());
                ledger.record(&name, &line);
            }
            ledger.record(&name, "EXITED");
            let _ = copy.flush();
        });
        let since = Instant::now();
        self.nodes[i] = Some(NodeProc {
            child,
            stdin,
            reader,
        });
        let ready = self
            .ledger
            .first_after(&format!("READY from {id}"), since, JOIN_TIMEOUT, |s| {
                s.node == id && (s.line == "READY" || s.line == "EXITED")
            })
            .await?;
        if ready.line == "EXITED" {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(format!("{id} exited before joining:\n{log}"));
        }
        Ok(())
    }

    async fn tell(&mut self, i: usize, command: &str) -> Result<(), String> {
        let node = self.nodes[i]
            .as_mut()
            .ok_or_else(|| format!("{} is not running", Self::node_id(i)))?;
        node.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .map_err(|e| format!("telling {} to {command}: {e}", Self::node_id(i)))
    }

    /// Starts the load on every running node.
    pub(crate) async fn load(&mut self) -> Result<(), String> {
        for i in 0..NODES {
            if self.nodes[i].is_some() {
                self.tell(i, "load").await?;
            }
        }
        Ok(())
    }

    /// Starts the load on node `i`.
    pub(crate) async fn load_on(&mut self, i: usize) -> Result<(), String> {
        self.tell(i, "load").await
    }

    /// Stops the load on every running node and waits until each has an outcome for every
    /// command it started.
    pub(crate) async fn stop_load(&mut self) -> Result<(), String> {
        let since = Instant::now();
        for i in 0..NODES {
            if self.nodes[i].is_some() {
                self.tell(i, "stop").await?;
            }
        }
        for id in self.live() {
            self.ledger
                .first_after(
                    &format!("STOPPED from {id}"),
                    since,
                    // A caller may be retrying one command for 60 s, and its last attempt may
                    // take the 30 s call timeout.
                    Duration::from_secs(120),
                    |s| s.node == id && s.line == "STOPPED",
                )
                .await?;
        }
        Ok(())
    }

    /// SIGKILLs node `i` and waits for it to be gone.
    pub(crate) async fn kill9(&mut self, i: usize) -> Result<Instant, String> {
        let mut node = self.nodes[i]
            .take()
            .ok_or_else(|| format!("{} is not running", Self::node_id(i)))?;
        let at = Instant::now();
        node.child
            .start_kill()
            .map_err(|e| format!("killing {}: {e}", Self::node_id(i)))?;
        let _ = node.child.wait().await;
        let _ = node.reader.await;
        Ok(at)
    }

    /// SIGSTOPs (`pause`) or SIGCONTs node `i`.
    pub(crate) fn signal(&self, i: usize, pause: bool) -> Result<Instant, String> {
        let pid = self.nodes[i]
            .as_ref()
            .and_then(|n| n.child.id())
            .and_then(|p| i32::try_from(p).ok())
            .and_then(rustix::process::Pid::from_raw)
            .ok_or_else(|| format!("{} is not running", Self::node_id(i)))?;
        let signal = if pause {
            rustix::process::Signal::STOP
        } else {
            rustix::process::Signal::CONT
        };
        rustix::process::kill_process(pid, signal)
            .map_err(|e| format!("signalling {}: {e}", Self::node_id(i)))?;
        Ok(Instant::now())
    }

    /// Tells node `i` to leave gracefully and waits until it has exited; returns when it was told.
    pub(crate) async fn leave(&mut self, i: usize) -> Result<Instant, String> {
        let at = self.leave_start(i).await?;
        self.leave_finish(i, at).await?;
        Ok(at)
    }

    /// Tells node `i` to leave gracefully; returns when it was told.
    pub(crate) async fn leave_start(&mut self, i: usize) -> Result<Instant, String> {
        let at = Instant::now();
        self.tell(i, "leave").await?;
        Ok(at)
    }

    /// Waits until node `i`, told to leave at `at`, has left and exited.
    pub(crate) async fn leave_finish(&mut self, i: usize, at: Instant) -> Result<(), String> {
        let id = Self::node_id(i);
        let left = self
            .ledger
            .first_after(
                &format!("LEFT from {id}"),
                at,
                Duration::from_secs(60),
                |s| s.node == id && s.line.starts_with("LEFT"),
            )
            .await?;
        if left.line != "LEFT ok" {
            return Err(format!("{id} did not leave cleanly: {}", left.line));
        }
        if let Some(mut node) = self.nodes[i].take() {
            // It exits right after `LEFT`; a process that does not is killed.
            if tokio::time::timeout(Duration::from_secs(10), node.child.wait())
                .await
                .is_err()
            {
                let _ = node.child.start_kill();
                let _ = node.child.wait().await;
            }
            let _ = node.reader.await;
        }
        Ok(())
    }

    /// The leader now, from the nodes' `EVENT leader` lines (the latest one of a running node).
    pub(crate) fn leader(&self) -> Option<usize> {
        let tries = self
            .ledger
            .said_matching(|s| s.line.starts_with("EVENT leader "));
        let live = self.live();
        tries
            .iter()
            .rev()
            .find(|s| live.contains(&s.node))
            .and_then(|s| (0..NODES).find(|i| Self::node_id(*i) == s.node))
    }

    /// Node `i`'s proxy to server `s` (when proxied).
    pub(crate) fn proxy(&self, i: usize, s: usize) -> Result<&TcpProxy, String> {
        self.proxies
            .get(i)
            .and_then(|p| p.get(s))
            .ok_or_else(|| format!("no proxy from node {i} to server {s}"))
    }

    /// A handle on the pids, for the sampler.
    fn pids_handle(&self) -> Vec<(String, u32)> {
        let nodes = self
            .nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| Some((Self::node_id(i), n.as_ref()?.child.id()?)));
        let servers = self
            .nats
            .nodes()
            .iter()
            .filter_map(|s| Some((format!("nats-{}", s.name()), s.process_id()?)));
        nodes.chain(servers).collect()
    }

    /// Resident memory and handles of the node processes running at the start and of the
    /// servers, per process name.
    pub(crate) fn usage(&self) -> BTreeMap<String, Usage> {
        let samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        samples
            .iter()
            .map(|(name, s)| (name.clone(), usage_of(s)))
            .collect()
    }

    /// Stops the sampler and every node (SIGKILL: the audit reads only the stream).
    pub(crate) async fn shutdown(mut self) -> (NatsCluster, BTreeMap<String, Usage>) {
        self.sampler.abort();
        for i in 0..NODES {
            if self.nodes[i].is_some() {
                let _ = self.signal(i, false);
                let _ = self.kill9(i).await;
            }
        }
        let usage = self.usage();
        (self.nats, usage)
    }
}

fn usage_of(samples: &[(u64, u64)]) -> Usage {
    let mean = |part: &[(u64, u64)]| {
        (!part.is_empty()).then(|| part.iter().map(|s| s.0 as f64).sum::<f64>() / part.len() as f64)
    };
    let q = samples.len() / 4;
    let growth = match (mean(&samples[q..2 * q]), mean(&samples[3 * q..])) {
        (Some(early), Some(late)) if early > 0.0 => late / early,
        _ => 1.0,
    };
    Usage {
        peak_rss: samples.iter().map(|s| s.0).max().unwrap_or(0),
        rss_growth: growth,
        peak_fds: samples.iter().map(|s| s.1).max().unwrap_or(0),
    }
}

/// Samples RSS and open descriptors of the node processes every 500 ms (a process that exits
/// stops contributing; a restarted one is not followed: the figures describe the survivors).
async fn sample(pids: Vec<(String, u32)>, samples: Arc<Mutex<Samples>>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        for (name, pid) in &pids {
            let rss = aether_testkit::bench::resident_bytes_of(&format!("/proc/{pid}/status"));
            let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
                .map(|d| d.count() as u64)
                .unwrap_or(0);
            if let Some(rss) = rss {
                samples
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .entry(name.clone())
                    .or_default()
                    .push((rss, fds));
            }
        }
    }
}
