//! A fault-injecting TCP proxy (tokio) to put between a client and a server: it forwards bytes
//! both ways until told to **cut** (every connection, open or new, stays open but no byte passes
//! either way: a half-open link, as when a network drops packets silently), and forwards again
//! when **healed**. Connections accepted while cut are held open and silent too.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use aether_testkit::proxy::TcpProxy;
//! let proxy = TcpProxy::start("127.0.0.1:4222".parse()?).await?;
//! let url = proxy.url(); // connect the client here
//! proxy.cut(); // the client's link goes silent
//! proxy.heal();
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::sync::Arc;

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
    accept: JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on a free local port and forwards each connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let passing = Arc::new(watch::channel(true).0);
        let gate = Arc::clone(&passing);
        let accept = tokio::spawn(async move {
            let mut links = Vec::new();
            while let Ok((client, _)) = listener.accept().await {
                let gate = gate.subscribe();
                links.push(tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        link(client, server, gate).await;
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
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Copies both ways while the gate is open; holds the connection silent while it is closed.
async fn link(client: TcpStream, server: TcpStream, gate: watch::Receiver<bool>) {
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = tokio::spawn(pump(client_read, server_write, gate.clone()));
    let down = tokio::spawn(pump(server_read, client_write, gate));
    let _ = tokio::join!(up, down);
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut gate: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
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
        // Bytes read just before a cut are dropped: the link lost them.
        if !*gate.borrow() {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
