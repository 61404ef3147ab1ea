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

/// This process's resident memory in bytes (`VmRSS` from `/proc/self/status`); `None` where
/// there is no `/proc`.
pub fn resident_bytes() -> Option<u64> {
    resident_bytes_of("/proc/self/status")
}

/// `VmRSS` in bytes from a `/proc/<pid>/status` file.
pub(crate) fn resident_bytes_of(status: &str) -> Option<u64> {
    let text = std::fs::read_to_string(status).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_this_process_resident_memory() {
        let rss = super::resident_bytes().unwrap_or(0);
        assert!(rss > 1 << 20, "a test process holds more than 1 MiB: {rss}");
    }
}
