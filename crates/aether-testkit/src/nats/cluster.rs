//! [`NatsCluster`]: several JetStream nats-servers on 127.0.0.1, fully meshed by routes, for
//! tests of replicated streams, leader loss and failover.

use std::time::Duration;

use super::{HarnessError, NatsServer, START_TIMEOUT, free_port};

/// A cluster of JetStream nats-servers on 127.0.0.1, fully meshed by routes.
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts `size` nodes (3 for R3 streams) and waits until JetStream has a metadata leader.
    pub async fn start(size: usize) -> Result<Self, HarnessError> {
        let cluster_name = format!("aether-{}", uuid::Uuid::new_v4().simple());
        let cluster_ports = (0..size)
            .map(|i| free_port(&format!("node-{i}")))
            .collect::<Result<Vec<_>, _>>()?;
        let starts = (0..size).map(|i| {
            let routes = cluster_ports
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, p)| format!("nats://127.0.0.1:{p}"))
                .collect::<Vec<_>>()
                .join(",");
            let args = vec![
                "--cluster_name".to_owned(),
                cluster_name.clone(),
                "--cluster".to_owned(),
                format!("nats://127.0.0.1:{}", cluster_ports[i]),
                "--routes".to_owned(),
                routes,
            ];
            async move { NatsServer::start_with(&format!("node-{i}"), args).await }
        });
        // Nodes must start together: each waits for its peers before it reports ready.
        let nodes = futures::future::try_join_all(starts).await?;
        let cluster = Self { nodes };
        cluster.wait_for_jetstream(START_TIMEOUT).await?;
        Ok(cluster)
    }

    /// Waits until JetStream can place replicated streams: every running node has seen a
    /// metadata leader (from its log), and the leader accepts a stream with one replica per
    /// running node. The leader learns its peers' JetStream state shortly after the election, so
    /// the placement probe is retried briefly while the server answers "no suitable peers".
    pub async fn wait_for_jetstream(&self, timeout: Duration) -> Result<(), HarnessError> {
        const LEADER: &str = "JetStream cluster new metadata leader";
        const SELF_LEADER: &str = "Self is new JetStream cluster metadata leader";
        let running: Vec<&NatsServer> = self.nodes.iter().filter(|n| n.is_running()).collect();
        for node in &running {
            node.log
                .wait_for(timeout, |lines| {
                    lines
                        .iter()
                        .any(|l| l.contains(LEADER) || l.contains(SELF_LEADER))
                        .then_some(())
                })
                .await
                .map_err(|_| HarnessError::StartTimeout {
                    name: node.name.clone(),
                    timeout,
                    log: node.log(),
                })?;
        }
        let Some(first) = running.first() else {
            return Ok(());
        };
        let client = first.connect().await?;
        let js = async_nats::jetstream::new(client);
        let probe = async_nats::jetstream::stream::Config {
            name: format!("AETHER_HARNESS_PROBE_{}", uuid::Uuid::new_v4().simple()),
            subjects: vec![format!(
                "aether.harness.probe.{}",
                uuid::Uuid::new_v4().simple()
            )],
            num_replicas: running.len(),
            storage: async_nats::jetstream::stream::StorageType::Memory,
            ..Default::default()
        };
        let placed = aether_nats::settle::while_settling("placing a probe stream", timeout, || {
            js.create_stream(probe.clone())
        })
        .await;
        match placed {
            Ok(_) => {
                // Best effort: the probe stream is tiny and in memory.
                let _ = js.delete_stream(&probe.name).await;
                Ok(())
            }
            Err(e) => Err(HarnessError::StartTimeout {
                name: format!("cluster (JetStream placement: {e})"),
                timeout,
                log: first.log(),
            }),
        }
    }

    /// The nodes.
    pub fn nodes(&self) -> &[NatsServer] {
        &self.nodes
    }

    /// Node `i` (panics if out of range, like indexing).
    pub fn node(&self, i: usize) -> &NatsServer {
        &self.nodes[i]
    }

    /// Node `i`, mutably, to stop, kill, restart or pause it.
    pub fn node_mut(&mut self, i: usize) -> &mut NatsServer {
        &mut self.nodes[i]
    }

    /// Every node, mutably, to kill or restart several at once.
    pub fn nodes_mut(&mut self) -> &mut [NatsServer] {
        &mut self.nodes
    }

    /// Comma-separated URLs of all nodes, for a client that fails over between them.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The index of the node that leads JetStream stream `stream` (to kill the worst node).
    pub async fn stream_leader(&self, stream: &str) -> Result<usize, HarnessError> {
        let io = |what: String| HarnessError::Io {
            name: "cluster".into(),
            context: format!("finding the leader of stream {stream}"),
            source: std::io::Error::other(what),
        };
        let js = async_nats::jetstream::new(self.connect().await?);
        let mut handle = js.get_stream(stream).await.map_err(|e| io(e.to_string()))?;
        let info = handle.info().await.map_err(|e| io(e.to_string()))?;
        let leader = info
            .cluster
            .as_ref()
            .and_then(|c| c.leader.clone())
            .ok_or_else(|| io("the stream reports no leader".into()))?;
        self.nodes
            .iter()
            .position(|n| n.name == leader)
            .ok_or_else(|| io(format!("no node is named {leader}")))
    }

    /// Connects a client that knows every node (and fails over between them).
    pub async fn connect(&self) -> Result<async_nats::Client, HarnessError> {
        let addrs = self
            .nodes
            .iter()
            .filter_map(|n| n.url().parse::<async_nats::ServerAddr>().ok())
            .collect::<Vec<_>>();
        async_nats::connect(addrs)
            .await
            .map_err(|source| HarnessError::Connect {
                name: "cluster".into(),
                url: self.urls(),
                source,
            })
    }
}
