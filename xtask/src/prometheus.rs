//! Provisioning Prometheus for the dashboard test (`cargo xtask prometheus`): the test evaluates
//! every panel's query of `docs/grafana/aether.json` against a real Prometheus scraping a running
//! Aether process. Prometheus is optional: without it that part of the test says it was skipped.
//!
//! Found in this order: `PROMETHEUS_BIN`; `prometheus` on `PATH`; the copy under
//! `target/tools/prometheus`; else Debian's package is downloaded with `apt-get download` (no
//! root needed) and unpacked there with `dpkg-deb -x`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Result;
use crate::run::{target_dir, which};

/// The Prometheus binary to use, provisioning Debian's package when there is none; `None` (with
/// the reason printed) where it cannot be had.
pub(crate) fn prometheus() -> Option<PathBuf> {
    match find_or_provision() {
        Ok(bin) => {
            eprintln!("prometheus: {}", bin.display());
            Some(bin)
        }
        Err(why) => {
            eprintln!(
                "prometheus: not available ({why}); the dashboard queries will not be evaluated"
            );
            None
        }
    }
}

fn find_or_provision() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("PROMETHEUS_BIN").map(PathBuf::from) {
        return bin
            .is_file()
            .then_some(bin.clone())
            .ok_or_else(|| format!("PROMETHEUS_BIN={} is not a file", bin.display()));
    }
    if let Some(bin) = which("prometheus") {
        return Ok(bin);
    }
    let dir = target_dir().join("tools").join("prometheus");
    let bin = dir.join("usr").join("bin").join("prometheus");
    if bin.is_file() {
        return Ok(bin);
    }
    for tool in ["apt-get", "dpkg-deb"] {
        if which(tool).is_none() {
            return Err(format!("{tool} is not on PATH (not a Debian system)"));
        }
    }
    let download = dir.join("download");
    std::fs::create_dir_all(&download)
        .map_err(|e| format!("creating {}: {e}", download.display()))?;
    eprintln!(
        "prometheus: downloading Debian's package into {}",
        download.display()
    );
    quiet(
        Command::new("apt-get")
            .args(["download", "prometheus"])
            .current_dir(&download),
    )?;
    let deb = std::fs::read_dir(&download)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or("apt-get download left no .deb")?;
    quiet(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dir))?;
    let _ = std::fs::remove_dir_all(&download);
    bin.is_file()
        .then_some(bin.clone())
        .ok_or_else(|| format!("the package has no {}", rel(&bin, &dir)))
}

fn quiet(cmd: &mut Command) -> Result {
    let out = cmd.output().map_err(|e| format!("running {cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn rel(path: &Path, base: &Path) -> String {
    path.strip_prefix(base)
        .unwrap_or(path)
        .display()
        .to_string()
}
