//! `cargo xtask deny`: cargo-deny's bans, licenses and sources checks (installing it if missing).

use std::process::Command;

use crate::Result;
use crate::run::{cargo, cargo_bin};

/// Runs `cargo deny check bans licenses sources`; advisories are left out (they need the network).
pub(crate) fn deny() -> Result {
    let has_deny = Command::new(cargo_bin())
        .args(["deny", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_deny {
        eprintln!("cargo-deny is missing; installing it with `cargo install --locked cargo-deny`");
        cargo(&["install", "--locked", "cargo-deny"])?;
    }
    eprintln!(
        "note: `advisories` is not checked here: it needs to fetch the advisory database from the network"
    );
    cargo(&[
        "deny",
        "--all-features",
        "check",
        "bans",
        "licenses",
        "sources",
    ])
}
