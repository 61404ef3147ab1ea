//! Which facade features bring in a NATS client, as an outside project sees it: for each feature,
//! a scratch package outside the workspace depends on `aether` with that feature alone, and
//! `cargo metadata` resolves its dependency graph (starting from the workspace's lockfile, so the
//! same versions). Only `jetstream`, `bus`, `cluster` and `full` may contain async-nats.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

const FEATURES: [(&str, bool); 9] = [
    ("memory", false),
    ("replay-check", false),
    ("runtime", false),
    ("model", false),
    ("metrics", false),
    ("jetstream", true),
    ("bus", true),
    ("cluster", true),
    ("full", true),
];

/// The packages in the resolved graph of a project depending on `aether` with `feature` alone.
fn resolved_packages(root: &Path, feature: &str) -> Vec<String> {
    let dir = std::env::temp_dir().join(format!(
        "aether-feature-probe-{}-{feature}",
        std::process::id()
    ));
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(dir.join("src/lib.rs"), "").unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"feature-probe\"\nversion = \"0.0.0\"\nedition = \"2024\"\n\n\
             [dependencies]\naether = {{ path = {:?}, default-features = false, features = [{feature:?}] }}\n\n\
             [workspace]\n",
            root.join("crates/aether").display().to_string()
        ),
    )
    .unwrap();
    std::fs::copy(root.join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(dir.join("Cargo.toml"))
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "cargo metadata for feature {feature}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let nodes: Vec<&str> = metadata["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| nodes.contains(&p["id"].as_str().unwrap()))
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn only_the_features_that_need_nats_pull_in_async_nats() {
    let root: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap();
    for (feature, needs_nats) in FEATURES {
        let packages = resolved_packages(&root, feature);
        assert!(
            packages.iter().any(|p| p == "aether"),
            "{feature}: {packages:?}"
        );
        let nats = packages.iter().any(|p| p == "async-nats");
        assert_eq!(
            nats, needs_nats,
            "feature `{feature}`: async-nats in the graph = {nats}, expected {needs_nats}"
        );
        if feature == "metrics" {
            assert!(packages.iter().any(|p| p == "metrics-exporter-prometheus"));
        }
    }
}
