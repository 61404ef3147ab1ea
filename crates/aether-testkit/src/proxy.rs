//! A fault-injecting TCP proxy (tokio) to put between a client and a server: it forwards bytes
//! both ways until told to **cut** (every connection, open or new, stays open but no byte passes
//! either way: a half-open link, as when a network drops packets silently), and forwards again
//! when **healed**. Connections accepted while cut are held open and silent too. It can also
//! **delay** every chunk it forwards by a latency plus a random jitter (a slow or distant link).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use aether_testkit::proxy::TcpProxy;
//! let proxy = TcpProxy::start("127.0.0.1:4222".parse()?).await?;
//! let url = proxy.url(); // connect the client here
//! proxy.cut(); // the client's link goes silent
//! proxy.heal();
//! proxy.delay(std::time::Duration::from_millis(50), std::time::Duration::from_millis(20));
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A proxy from a local port to `upstream`; see the [module documentation](self). Dropping it
/// closes every connection.
#[derive(Debug)]
pub struct TcpProxy {
    addr: SocketAddr,
    passing: Arc<watch::Sender<bool>>,
    latency: Arc<Latency>,
    accept: JoinHandle<()>,
}

/// The delay added to every forwarded chunk, in microseconds.
#[derive(Debug, Default)]
struct Latency {
    base_us: AtomicU64,
    jitter_us: AtomicU64,
}

impl Latency {
    /// The delay for the next chunk: the base plus up to the jitter, from `seed` (advanced).
    fn next(&self, seed: &mut u64) -> Duration {
        let base = self.base_us.load(Ordering::Relaxed);
        let jitter = self.jitter_us.load(Ordering::Relaxed);
        // xorshift64: enough randomness for jitter, no dependency.
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        let extra = if jitter == 0 {
            0
        } else {
            *seed % jitter.saturating_add(1)
        };
        Duration::from_micros(base.saturating_add(extra))
    }
}

impl TcpProxy {
    /// Listens on a free local port and forwards each connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let passing = Arc::new(watch::channel(true).0);
        let latency = Arc::new(Latency::default());
        let gate = Arc::clone(&passing);
        let delay = Arc::clone(&latency);
        let accept = tokio::spawn(async move {
            let mut links = Vec::new();
            while let Ok((client, _)) = listener.accept().await {
                let gate = gate.subscribe();
                let delay = Arc::clone(&delay);
                links.push(tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        link(client, server, gate, delay).await;
                    }
                }));
                links.retain(|l: &JoinHandle<()>| !l.is_finished());
            }
            for l in links {
                l.abort();
            }
        });
        Ok(Self {
            addr,
            passing,
            latency,
            accept,
        })
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The proxy's address as a NATS URL.
    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// Stops every byte, both ways, on every connection; the connections stay open.
    pub fn cut(&self) {
        self.passing.send_replace(false);
    }

    /// Lets bytes pass again.
    pub fn heal(&self) {
        self.passing.send_replace(true);
    }

    /// Delays every chunk forwarded from now on, either way, by `latency` plus a random part of
    /// `jitter`. Chunks of one connection stay in order and wait one after another, so a burst
    /// waits longer than one chunk (a slow link, not only a distant one). Zero and zero: no
    /// delay.
    pub fn delay(&self, latency: Duration, jitter: Duration) {
        let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.latency.base_us.store(us(latency), Ordering::Relaxed);
        self.latency.jitter_us.store(us(jitter), Ordering::Relaxed);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Copies both ways while the gate is open; holds the connection silent while it is closed.
async fn link(
    client: TcpStream,
    server: TcpStream,
    gate: watch::Receiver<bool>,
    latency: Arc<Latency>,
) {
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = tokio::spawn(pump(
        client_read,
        server_write,
        gate.clone(),
        Arc::clone(&latency),
    ));
    let down = tokio::spawn(pump(server_read, client_write, gate, latency));
    let _ = tokio::join!(up, down);
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut gate: watch::Receiver<bool>,
    latency: Arc<Latency>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut seed = 0x9E37_79B9_7F4A_7C15_u64 ^ u64::from(to.local_addr().map_or(0, |a| a.port()));
    loop {
        // While cut, read nothing and write nothing: the peer's bytes wait in the kernel.
        if gate.wait_for(|passing| *passing).await.is_err() {
            return;
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            // Cut while waiting: go back to waiting for the gate.
            _ = gate.wait_for(|passing| !*passing) => continue,
        };
        let delay = latency.next(&mut seed);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        // Bytes read just before a cut are dropped: the link lost them.
        if !*gate.borrow() {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
