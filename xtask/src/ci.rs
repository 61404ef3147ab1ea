//! `cargo xtask ci`: every check the project's CI runs, in order, failing fast and timed.

use crate::Result;
use crate::chaos::chaos;
use crate::deny::deny;
use crate::docs::docs;
use crate::examples::{jetstream_example, memory_examples, quickstart};
use crate::lint::clippy;
use crate::model::model;
use crate::nats::nats;
use crate::python::python_tools;
use crate::replay::replay_check;
use crate::run::{cargo, root, step, target_dir};
use crate::test::run_tests;
use crate::tidy::tidy;

/// The example model CI checks.
const EXAMPLE_MODEL: &str = "examples/model/order_fulfilment.yaml";

/// The facade's features, each built alone by `ci` (which of them may bring in async-nats is
/// checked by `crates/aether/tests/features.rs`, with `cargo metadata`).
const FACADE_FEATURES: [&str; 9] = [
    "memory",
    "replay-check",
    "runtime",
    "model",
    "metrics",
    "jetstream",
    "bus",
    "cluster",
    "full",
];

/// The library crates: every `crates/*` package.
fn library_crates() -> Result<Vec<String>> {
    let dir = root().join("crates");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(|e| format!("reading {}: {e}", dir.display()))? {
        let path = entry.map_err(|e| e.to_string())?.path();
        if let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|_| path.join("Cargo.toml").is_file())
        {
            names.push(name.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Free space under which a build of every CI step from a clean target dir may not fit.
const DISK_NEEDED_GB: u64 = 20;

/// Warns, before anything is built, when the target dir's disk has less free space than a
/// clean build needs: a full disk otherwise shows up minutes later as a linker's bus error.
fn check_disk() {
    let dir = target_dir();
    let probe = if dir.exists() { dir } else { root() };
    let output = std::process::Command::new("df")
        .args(["-Pk"])
        .arg(&probe)
        .output();
    let free_kb = output.ok().and_then(|out| {
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .nth(1)
            .and_then(|line| line.split_whitespace().nth(3))
            .and_then(|free| free.parse::<u64>().ok())
    });
    match free_kb {
        Some(kb) if kb / (1024 * 1024) < DISK_NEEDED_GB => eprintln!(
            "xtask ci: warning: {} GB free under {}; a build from a clean target dir needs about \
             {DISK_NEEDED_GB} GB (`cargo clean` or removing target/debug/incremental frees space)",
            kb / (1024 * 1024),
            probe.display()
        ),
        Some(kb) => eprintln!(
            "xtask ci: {} GB free under {}",
            kb / (1024 * 1024),
            probe.display()
        ),
        None => eprintln!("xtask ci: could not read free disk space (df), going on"),
    }
}

/// Runs every CI step in order, stopping at the first that fails.
pub(crate) fn ci() -> Result {
    check_disk();
    step("fmt check", || cargo(&["fmt", "--all", "--check"]))?;
    step(
        "tidy (module docs, paths in docs/architecture.md, architecture rules)",
        tidy,
    )?;
    step("clippy (all targets, -D warnings)", clippy)?;
    for krate in library_crates()? {
        step(&format!("build {krate} (default features)"), || {
            cargo(&["build", "-p", &krate])
        })?;
        step(&format!("build {krate} (no default features)"), || {
            cargo(&["build", "-p", &krate, "--no-default-features"])
        })?;
    }
    for feature in FACADE_FEATURES {
        step(
            &format!("build aether with feature {feature} alone"),
            || {
                cargo(&[
                    "build",
                    "-p",
                    "aether",
                    "--no-default-features",
                    "--features",
                    feature,
                ])
            },
        )?;
    }
    let bin = step("provision nats-server", nats)?;
    step("provision the Python test tools", python_tools)?;
    step("tests", || run_tests(&bin, &[]))?;
    step("quick start (cargo run --example quickstart)", quickstart)?;
    step("examples without a server", memory_examples)?;
    step("example model (cargo xtask model check)", || {
        model(&[
            "check".to_owned(),
            root().join(EXAMPLE_MODEL).display().to_string(),
        ])
    })?;
    step(
        "replay check of the examples' golden histories (cargo xtask replay-check)",
        replay_check,
    )?;
    step("NATS examples against a throwaway nats-server", || {
        jetstream_example(&bin)
    })?;
    step(
        "chaos, quick (cargo xtask chaos --quick: faults, partitions, hostile input, fuzzing)",
        || chaos(&["--quick".to_owned()]),
    )?;
    step("docs (-D warnings) and doc tests", docs)?;
    step("cargo deny (bans licenses sources)", deny)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_library_crate_is_found() {
        let crates = library_crates().unwrap();
        assert!(crates.contains(&"aether-core".to_owned()), "{crates:?}");
    }
}
