//! Throwaway nats-server processes for tests: a single JetStream server or a 3-node cluster, on
//! random ports with temporary storage, that can be stopped, killed, restarted and paused.
//!
//! The binary is found in this order: `NATS_SERVER_BIN`; `nats-server` on `PATH` if it is at
//! least [`MIN_VERSION`]; the copy `cargo xtask nats` provisions under the target directory
//! (`target/tools/nats-server/bin/nats-server`). An older binary is never used. If none is found, starting a server
//! fails with an error that says to run `cargo xtask nats`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), aether_testkit::nats::HarnessError> {
//! use aether_testkit::nats::{NatsCluster, NatsServer};
//! let server = NatsServer::start().await?;
//! let client = server.connect().await?;
//! client.publish("greeting", "hello".into()).await.ok();
//!
//! let mut cluster = NatsCluster::start(3).await?;
//! cluster.node_mut(1).pause()?; // SIGSTOP
//! cluster.node_mut(1).resume()?;
//! cluster.node_mut(2).kill().await?;
//! cluster.node_mut(2).restart().await?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

mod cluster;
pub use cluster::NatsCluster;

/// Oldest nats-server Aether supports (atomic batches with message ids: 2.12.1).
pub const MIN_VERSION: (u32, u32, u32) = aether_nats::server_version::MIN_SERVER_VERSION;

/// How long a server may take to report that it is ready.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// What to tell a developer who has no usable nats-server.
const HOW_TO_GET_IT: &str = "run `cargo xtask nats` (it installs nats-server >= 2.12.1 into the target directory) \
     or set NATS_SERVER_BIN to a nats-server >= 2.12.1 binary";

/// Errors of the nats-server test harness.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HarnessError {
    /// No usable nats-server binary.
    #[error("no usable nats-server found ({detail}); {HOW_TO_GET_IT}")]
    BinaryNotFound {
        /// What was looked at.
        detail: String,
    },
    /// The binary is older than [`MIN_VERSION`].
    #[error("nats-server at {path} is version {version}, older than 2.12.1; {HOW_TO_GET_IT}")]
    BinaryTooOld {
        /// The binary.
        path: PathBuf,
        /// The version it reported.
        version: String,
    },
    /// Spawning or signalling the process failed.
    #[error("nats-server {name}: {context}: {source}")]
    Io {
        /// The server's name.
        name: String,
        /// What the harness was doing.
        context: String,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// The server did not become ready in time.
    #[error("nats-server {name} did not become ready within {timeout:?}; its log:\n{log}")]
    StartTimeout {
        /// The server's name.
        name: String,
        /// How long the harness waited.
        timeout: Duration,
        /// The server's output so far.
        log: String,
    },
    /// The server exited while starting.
    #[error("nats-server {name} exited while starting; its log:\n{log}")]
    Exited {
        /// The server's name.
        name: String,
        /// The server's output.
        log: String,
    },
    /// The operation needs a running server.
    #[error("nats-server {name} is not running")]
    NotRunning {
        /// The server's name.
        name: String,
    },
    /// Connecting a client failed.
    #[error("connecting to nats-server {name} at {url}: {source}")]
    Connect {
        /// The server's name.
        name: String,
        /// Its URL.
        url: String,
        /// The failure.
        #[source]
        source: async_nats::ConnectError,
    },
}

/// The nats-server binary the harness uses, with its version. Found once per process.
#[derive(Debug, Clone)]
pub struct ServerBinary {
    /// Path of the binary.
    pub path: PathBuf,
    /// Version it reports, e.g. `2.15.1`.
    pub version: String,
}

/// Finds the nats-server binary (see the [module docs](self)).
pub fn server_binary() -> Result<ServerBinary, HarnessError> {
    static FOUND: OnceLock<Result<ServerBinary, String>> = OnceLock::new();
    let found = FOUND.get_or_init(|| find_binary().map_err(|e| e.to_string()));
    found
        .clone()
        .map_err(|detail| HarnessError::BinaryNotFound { detail })
}

fn find_binary() -> Result<ServerBinary, HarnessError> {
    if let Some(path) = std::env::var_os("NATS_SERVER_BIN").filter(|p| !p.is_empty()) {
        return check_version(PathBuf::from(path));
    }
    // Same order as `cargo xtask nats`: PATH (if new enough), then the provisioned copy.
    let mut looked = vec!["NATS_SERVER_BIN is unset".to_owned()];
    match which("nats-server").map(check_version) {
        Some(Ok(found)) => return Ok(found),
        Some(Err(e)) => looked.push(e.to_string()),
        None => looked.push("nats-server is not on PATH".to_owned()),
    }
    match provisioned_binary().map(check_version) {
        Some(Ok(found)) => return Ok(found),
        Some(Err(e)) => looked.push(e.to_string()),
        None => looked.push("no provisioned copy under target/tools".to_owned()),
    }
    Err(HarnessError::BinaryNotFound {
        detail: looked.join("; "),
    })
}

/// `target/tools/nats-server/bin/nats-server` above the running test executable, or under
/// `CARGO_TARGET_DIR`.
fn provisioned_binary() -> Option<PathBuf> {
    provisioned(Path::new("tools/nats-server/bin/nats-server"))
}

/// `rel` (a path under the target directory, where `cargo xtask` provisions tools) under
/// `CARGO_TARGET_DIR`, or above the running test executable, if it exists.
pub(crate) fn provisioned(rel: &Path) -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        let p = Path::new(&dir).join(rel);
        if p.exists() {
            return Some(p);
        }
    }
    let exe = std::env::current_exe().ok()?;
    exe.ancestors().map(|a| a.join(rel)).find(|p| p.exists())
}

pub(crate) fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Parses `nats-server: v2.15.1` (or `2.15.1`) into its numbers.
pub fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    aether_nats::server_version::parse_server_version(text)
}

fn check_version(path: PathBuf) -> Result<ServerBinary, HarnessError> {
    let out = std::process::Command::new(&path)
        .arg("--version")
        .output()
        .map_err(|source| HarnessError::Io {
            name: path.display().to_string(),
            context: "running --version".into(),
            source,
        })?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    match parse_version(&text) {
        Some(v) if v >= MIN_VERSION => Ok(ServerBinary {
            path,
            version: format!("{}.{}.{}", v.0, v.1, v.2),
        }),
        _ => Err(HarnessError::BinaryTooOld {
            path,
            version: text,
        }),
    }
}

/// Reserves a free TCP port on 127.0.0.1 (bind to port 0, read it, release it). A port is
/// handed out once per process: the OS may offer a just-released port again, and a cluster's
/// route ports are chosen before its nodes' client ports (a node once got the same port for
/// both and failed to start).
fn free_port(name: &str) -> Result<u16, HarnessError> {
    static HANDED_OUT: OnceLock<Mutex<std::collections::HashSet<u16>>> = OnceLock::new();
    let io = |source| HarnessError::Io {
        name: name.into(),
        context: "reserving a port".into(),
        source,
    };
    for _ in 0..1000 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(io)?;
        let fresh = HANDED_OUT
            .get_or_init(Mutex::default)
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(port);
        if fresh {
            return Ok(port);
        }
    }
    Err(io(std::io::Error::other(
        "the OS kept offering ports this process already uses",
    )))
}

#[derive(Default)]
struct LogState {
    lines: Vec<String>,
    exited: bool,
}

/// The output of one server process, shared with the task that reads it.
#[derive(Clone)]
struct Log {
    state: Arc<Mutex<LogState>>,
    changed: watch::Sender<u64>,
}

impl Log {
    fn new() -> Self {
        Self {
            state: Arc::default(),
            changed: watch::Sender::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, line: String) {
        self.lock().lines.push(line);
        self.changed.send_modify(|n| *n += 1);
    }

    fn close(&self) {
        self.lock().exited = true;
        self.changed.send_modify(|n| *n += 1);
    }

    fn text(&self) -> String {
        let s = self.lock();
        let tail = s.lines.len().saturating_sub(60);
        s.lines[tail..].join("\n")
    }

    /// Waits until `f` finds something in the lines (returns it), the output ends, or `timeout`.
    async fn wait_for<T>(
        &self,
        timeout: Duration,
        mut f: impl FnMut(&[String]) -> Option<T>,
    ) -> Result<T, bool> {
        let mut rx = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            {
                let s = self.lock();
                if let Some(t) = f(&s.lines) {
                    return Ok(t);
                }
                if s.exited {
                    return Err(true);
                }
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return Err(false),
            }
        }
    }
}

/// One nats-server process with JetStream enabled, listening on 127.0.0.1.
///
/// Dropping it kills the process and removes its storage.
pub struct NatsServer {
    name: String,
    binary: ServerBinary,
    port: u16,
    extra_args: Vec<String>,
    jetstream: bool,
    store_dir: tempfile::TempDir,
    child: Option<Child>,
    log: Log,
}

impl fmt::Debug for NatsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsServer")
            .field("name", &self.name)
            .field("port", &self.port)
            .field("running", &self.child.is_some())
            .field("store_dir", &self.store_dir.path())
            .finish()
    }
}

impl NatsServer {
    /// Starts a single JetStream server on a random port with a temporary store directory.
    pub async fn start() -> Result<Self, HarnessError> {
        Self::start_with("aether-test", Vec::new()).await
    }

    /// Starts a server named `name` with extra command-line arguments.
    pub async fn start_with(name: &str, extra_args: Vec<String>) -> Result<Self, HarnessError> {
        Self::launch(name, extra_args, true).await
    }

    /// Starts a server with JetStream disabled, to test how clients report it.
    pub async fn start_without_jetstream() -> Result<Self, HarnessError> {
        Self::launch("aether-test-nojs", Vec::new(), false).await
    }

    async fn launch(
        name: &str,
        extra_args: Vec<String>,
        jetstream: bool,
    ) -> Result<Self, HarnessError> {
        let binary = server_binary()?;
        let store_dir = tempfile::Builder::new()
            .prefix("aether-nats-")
            .tempdir()
            .map_err(|source| HarnessError::Io {
                name: name.into(),
                context: "creating a store directory".into(),
                source,
            })?;
        let mut server = Self {
            name: name.to_owned(),
            binary,
            port: free_port(name)?,
            extra_args,
            jetstream,
            store_dir,
            child: None,
            log: Log::new(),
        };
        server.spawn().await?;
        Ok(server)
    }

    async fn spawn(&mut self) -> Result<(), HarnessError> {
        let mut cmd = Command::new(&self.binary.path);
        cmd.args(["-a", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .args(["-n", &self.name, "-sd"])
            .arg(self.store_dir.path())
            .args(self.jetstream.then_some("-js"))
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|source| HarnessError::Io {
            name: self.name.clone(),
            context: format!("spawning {}", self.binary.path.display()),
            source,
        })?;
        let log = Log::new();
        if let Some(stderr) = child.stderr.take() {
            let log = log.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    log.push(line);
                }
                log.close();
            });
        }
        self.log = log;
        self.child = Some(child);
        match self
            .log
            .wait_for(START_TIMEOUT, |lines| {
                lines
                    .iter()
                    .any(|l| l.contains("Server is ready"))
                    .then_some(())
            })
            .await
        {
            Ok(()) => Ok(()),
            Err(exited) => {
                let log = self.log.text();
                self.child = None; // kill_on_drop
                Err(if exited {
                    HarnessError::Exited {
                        name: self.name.clone(),
                        log,
                    }
                } else {
                    HarnessError::StartTimeout {
                        name: self.name.clone(),
                        timeout: START_TIMEOUT,
                        log,
                    }
                })
            }
        }
    }

    /// The server's name (`-n`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The binary in use.
    pub fn binary(&self) -> &ServerBinary {
        &self.binary
    }

    /// The server's resident memory in bytes (`VmRSS` from `/proc`), for scale measurements;
    /// `None` when it is not running or the platform has no `/proc`.
    pub fn resident_bytes(&self) -> Option<u64> {
        let pid = self.child.as_ref().and_then(Child::id)?;
        crate::bench::resident_bytes_of(&format!("/proc/{pid}/status"))
    }

    /// The server's CPU time so far (user + system, seconds, from `/proc`), for scale
    /// measurements; `None` when it is not running or the platform has no `/proc`.
    pub fn cpu_seconds(&self) -> Option<f64> {
        let pid = self.child.as_ref().and_then(Child::id)?;
        crate::bench::cpu_seconds_of(&format!("/proc/{pid}/stat"))
    }

    /// The process id, while it runs.
    pub fn process_id(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Whether the process is running (it may be paused).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The last lines the server logged, for diagnostics.
    pub fn log(&self) -> String {
        self.log.text()
    }

    /// Connects an async-nats client.
    pub async fn connect(&self) -> Result<async_nats::Client, HarnessError> {
        async_nats::connect(self.url())
            .await
            .map_err(|source| HarnessError::Connect {
                name: self.name.clone(),
                url: self.url(),
                source,
            })
    }

    fn pid(&self) -> Result<rustix::process::Pid, HarnessError> {
        self.child
            .as_ref()
            .and_then(Child::id)
            .and_then(|id| i32::try_from(id).ok())
            .and_then(rustix::process::Pid::from_raw)
            .ok_or_else(|| HarnessError::NotRunning {
                name: self.name.clone(),
            })
    }

    fn signal(&self, signal: rustix::process::Signal, what: &str) -> Result<(), HarnessError> {
        rustix::process::kill_process(self.pid()?, signal).map_err(|e| HarnessError::Io {
            name: self.name.clone(),
            context: format!("sending {what}"),
            source: e.into(),
        })
    }

    /// Pauses the process (SIGSTOP): it keeps its sockets but answers nothing.
    pub fn pause(&self) -> Result<(), HarnessError> {
        self.signal(rustix::process::Signal::STOP, "SIGSTOP")
    }

    /// Resumes a paused process (SIGCONT).
    pub fn resume(&self) -> Result<(), HarnessError> {
        self.signal(rustix::process::Signal::CONT, "SIGCONT")
    }

    async fn wait_exit(&mut self) -> Result<Option<ExitStatus>, HarnessError> {
        let Some(mut child) = self.child.take() else {
            return Ok(None);
        };
        child
            .wait()
            .await
            .map(Some)
            .map_err(|source| HarnessError::Io {
                name: self.name.clone(),
                context: "waiting for exit".into(),
                source,
            })
    }

    /// Stops the server gracefully (SIGTERM, SIGCONT in case it is paused) and waits for it.
    /// Its storage is kept for [`NatsServer::restart`].
    pub async fn stop(&mut self) -> Result<(), HarnessError> {
        if self.child.is_none() {
            return Ok(());
        }
        self.signal(rustix::process::Signal::TERM, "SIGTERM")?;
        self.resume()?;
        self.wait_exit().await.map(drop)
    }

    /// Kills the server (SIGKILL), as a crash would, and waits for it. Storage is kept.
    pub async fn kill(&mut self) -> Result<(), HarnessError> {
        if let Some(child) = self.child.as_mut() {
            child.start_kill().map_err(|source| HarnessError::Io {
                name: self.name.clone(),
                context: "killing".into(),
                source,
            })?;
        }
        self.wait_exit().await.map(drop)
    }

    /// Starts the server again on the same port with the same storage (stopping it first if it
    /// is still running).
    pub async fn restart(&mut self) -> Result<(), HarnessError> {
        self.stop().await?;
        self.spawn().await
    }

    /// Waits until the server logs a line containing `needle` (counting from the start of the
    /// current process) `count` times.
    pub async fn wait_for_log(
        &self,
        needle: &str,
        count: usize,
        timeout: Duration,
    ) -> Result<(), HarnessError> {
        self.log
            .wait_for(timeout, |lines| {
                (lines.iter().filter(|l| l.contains(needle)).count() >= count).then_some(())
            })
            .await
            .map_err(|_| HarnessError::StartTimeout {
                name: self.name.clone(),
                timeout,
                log: self.log.text(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parsing itself is tested where it is defined (server_version.rs); this pins the link.
    #[test]
    fn the_harness_uses_the_one_minimum() {
        assert_eq!(MIN_VERSION, (2, 12, 1));
        assert_eq!(parse_version("nats-server: v2.15.1"), Some((2, 15, 1)));
    }
}
