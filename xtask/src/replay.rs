//! `cargo xtask replay-check`: the examples' golden histories, folded through today's `apply`
//! and upcasters by each example's `replay_check_of_golden_histories` test (which prints its
//! report), failing on any divergence, failure or panic.

use std::process::Command;

use crate::Result;
use crate::run::{cargo_bin, root};

/// Each golden history and the example whose actor it records.
const GOLDEN: [(&str, &str); 1] = [("bank_account.jsonl", "bank_account")];

/// Runs the replay check of every example with a golden history.
pub(crate) fn replay_check() -> Result {
    let dir = root().join("examples/golden");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .map_err(|e| format!("reading {}: {e}", dir.display()))?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".jsonl"))
        .collect();
    files.sort();
    let known: Vec<&str> = GOLDEN.iter().map(|(file, _)| *file).collect();
    if let Some(orphan) = files.iter().find(|f| !known.contains(&f.as_str())) {
        return Err(format!(
            "examples/golden/{orphan} has no replay check: add it to GOLDEN in xtask/src/replay.rs"
        ));
    }
    for (file, example) in GOLDEN {
        eprintln!("replay check: examples/golden/{file} through example {example}");
        let output = Command::new(cargo_bin())
            .current_dir(root())
            .args([
                "test",
                "--quiet",
                "-p",
                "aether-examples",
                "--example",
                example,
                "--",
                "--exact",
                "tests::replay_check_of_golden_histories",
                "--nocapture",
            ])
            .output()
            .map_err(|e| format!("running cargo test: {e}"))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        print!("{stdout}");
        eprint!("{}", String::from_utf8_lossy(&output.stderr));
        if !output.status.success() {
            return Err(format!("the replay check of {file} failed"));
        }
        // A renamed test would match nothing and pass: make sure it ran and reported.
        if !stdout.contains("replay check of") || !stdout.contains("1 passed") {
            return Err(format!(
                "example {example} has no test tests::replay_check_of_golden_histories printing its report"
            ));
        }
    }
    Ok(())
}
