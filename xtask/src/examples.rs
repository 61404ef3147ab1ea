//! The runnable examples CI tries: the quick start, those without a server, and those with one.

use std::path::Path;
use std::process::Command;

use crate::Result;
use crate::run::{cargo_bin, root, run, target_dir};

/// Examples that need no server: run them and check they succeed.
const MEMORY_EXAMPLES: [&str; 3] = ["bank_account", "retry_patterns", "model_driven"];

/// The examples that need a nats-server.
const NATS_EXAMPLES: [&str; 5] = [
    "jetstream_store",
    "cross_node_broadcast",
    "projection",
    "cluster_membership",
    "cluster_node",
];

/// Runs each of [`MEMORY_EXAMPLES`], failing on the first that fails.
pub(crate) fn memory_examples() -> Result {
    MEMORY_EXAMPLES.iter().try_for_each(|example| {
        eprintln!("-- example {example}");
        run(Command::new(cargo_bin())
            .args(["run", "--quiet", "--example", example])
            .current_dir(root()))
    })
}

/// Runs the README's first command and checks it prints the replayed order state.
pub(crate) fn quickstart() -> Result {
    let out = Command::new(cargo_bin())
        .args(["run", "--quiet", "--example", "quickstart"])
        .current_dir(root())
        .output()
        .map_err(|e| format!("could not run the quick start: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    let expected = [
        "Order state after replaying 2 events:",
        "Status: shipped",
        "Total: $99.99",
        "Tracking: FS123456",
        "Version conflict caught",
    ];
    match expected.iter().find(|line| !stdout.contains(*line)) {
        _ if !out.status.success() => Err(format!(
            "the quick start exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )),
        Some(missing) => Err(format!("the quick start did not print {missing:?}")),
        None => Ok(()),
    }
}

/// Starts nats-server on a free port with a temporary store, runs the examples that need one
/// against it, and stops the server.
pub(crate) fn jetstream_example(nats_bin: &Path) -> Result {
    use std::io::{BufRead, BufReader};
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("finding a free port: {e}"))?
        .port();
    let dir = target_dir()
        .join("tmp")
        .join(format!("jetstream-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let mut server = Command::new(nats_bin)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(&dir)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting {}: {e}", nats_bin.display()))?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    if let Some(stderr) = server.stderr.take() {
        std::thread::spawn(move || {
            for line in BufReader::new(stderr)
                .lines()
                .map_while(std::result::Result::ok)
            {
                if line.contains("Server is ready") {
                    let _ = ready_tx.send(());
                }
            }
        });
    }
    let result = match ready_rx.recv_timeout(std::time::Duration::from_secs(30)) {
        Ok(()) => NATS_EXAMPLES.iter().try_for_each(|example| {
            eprintln!("-- example {example}");
            run(Command::new(cargo_bin())
                .args(["run", "--quiet", "--example", example])
                .current_dir(root())
                .env("NATS_URL", format!("nats://127.0.0.1:{port}")))
        }),
        Err(_) => Err("nats-server did not report ready within 30 s".to_owned()),
    };
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&dir);
    result
}
