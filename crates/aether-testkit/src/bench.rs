//! Helpers for the project's criterion benchmarks.

use std::path::{Path, PathBuf};

/// Criterion's mean estimate, in nanoseconds per iteration, of the benchmark at `id` (its path
/// under `target/criterion`: group, function, and parameter if any), if it ran.
pub fn mean_ns(id: &[&str]) -> Option<f64> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let path = id
        .iter()
        .fold(target.join("criterion"), |p, part| p.join(part))
        .join("new/estimates.json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    json["mean"]["point_estimate"].as_f64()
}
