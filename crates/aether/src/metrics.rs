//! Prometheus metrics for every layer (feature `metrics`): [`install_prometheus`] serves them
//! over HTTP, and [`names`] lists what each layer records. `docs/metrics.md` has every metric with
//! its type, labels and meaning, and `docs/grafana/aether.json` is a dashboard for them.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! // First, before stores, buses, runtimes and cluster nodes are built: each registers its
//! // metrics when it is created.
//! let handle = aether::metrics::install_prometheus("127.0.0.1:9464".parse()?)?;
//! // ... build and run the system; Prometheus scrapes http://127.0.0.1:9464/metrics
//! assert!(handle.render().is_empty() || handle.render().contains("# TYPE"));
//! # Ok(()) }
//! ```

use std::net::SocketAddr;

pub use metrics_exporter_prometheus::PrometheusHandle;
use metrics_exporter_prometheus::{BuildError, PrometheusBuilder};

/// The metric names of each layer.
pub mod names {
    /// The event stores' metrics (`aether_store_*`).
    pub use aether_core::store_metrics as store;

    /// The bus's metrics (`aether_bus_*`).
    #[cfg(feature = "bus")]
    pub use aether_bus::metrics as bus;

    /// The runtime's metrics (`aether_runtime_*`).
    #[cfg(feature = "runtime")]
    pub use aether_runtime::metrics as runtime;

    /// The cluster's metrics (`aether_cluster_*`).
    #[cfg(feature = "cluster")]
    pub use aether_cluster::metrics as cluster;
}

/// Why the exporter could not be installed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsError {
    /// The HTTP listener could not start (the address is in use, or not local).
    #[error("starting the Prometheus endpoint on {addr}: {source}")]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// What the exporter said.
        #[source]
        source: BuildError,
    },
    /// A metrics recorder is already installed in this process (there can be only one).
    #[error("a metrics recorder is already installed in this process")]
    AlreadyInstalled,
    /// No tokio runtime to run the endpoint on, and none could be started.
    #[error("starting a runtime for the Prometheus endpoint: {0}")]
    Runtime(String),
}

/// Installs the Prometheus exporter as this process's metrics recorder and serves
/// `http://<addr>/metrics`. Call it first: stores, buses, runtimes and cluster nodes register
/// their metrics when they are created, and those created before record nothing.
///
/// Inside a tokio runtime the endpoint runs on it; otherwise on a small thread of its own. The
/// returned handle renders the same text (for a health page or a test).
pub fn install_prometheus(addr: SocketAddr) -> Result<PrometheusHandle, MetricsError> {
    let listen = |source| MetricsError::Listen { addr, source };
    let builder = PrometheusBuilder::new().with_http_listener(addr);
    let recorder = match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            let (recorder, exporter) = {
                let _entered = runtime.enter();
                builder.build().map_err(listen)?
            };
            runtime.spawn(exporter);
            recorder
        }
        Err(_) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| MetricsError::Runtime(e.to_string()))?;
            let (recorder, exporter) = {
                let _entered = runtime.enter();
                builder.build().map_err(listen)?
            };
            std::thread::Builder::new()
                .name("aether-prometheus".into())
                .spawn(move || runtime.block_on(exporter))
                .map_err(|e| MetricsError::Runtime(e.to_string()))?;
            recorder
        }
    };
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|_| MetricsError::AlreadyInstalled)?;
    Ok(handle)
}
