//! `cargo xtask tidy`: the repository rules neither rustc nor clippy checks, every offence listed.

mod architecture;
mod doc_paths;

use std::path::{Path, PathBuf};

use crate::Result;
use crate::run::root;

/// Runs the tidy checks on the repository and fails listing every offence.
pub(crate) fn tidy() -> Result {
    let offences = tidy_offences(&root())?;
    if offences.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} offence(s):\n  {}",
            offences.len(),
            offences.join("\n  ")
        ))
    }
}

/// Every offence against the tidy rules in the repository at `root`, rule by rule:
///
/// 1. each Rust file under `crates/*/src/` (at any depth) starts with a `//!` module doc
///    comment (only blank lines may come before it);
/// 2. each repository path `docs/architecture.md` mentions exists ([`doc_paths`]);
/// 3. the architecture rules of [`architecture`]: JetStream error codes by name, one backoff,
///    floors between crates, an in-process bus that names no NATS.
fn tidy_offences(root: &Path) -> Result<Vec<String>> {
    let mut sources = Vec::new();
    for file in crate_sources(root)? {
        let text = read_text(&file)?;
        sources.push((relative(root, &file), text));
    }
    let mut offences = Vec::new();
    for (file, text) in &sources {
        if !starts_with_module_doc(text) {
            offences.push(format!(
                "{file}: does not start with a `//!` module doc comment"
            ));
        }
    }
    offences.extend(doc_paths::offences(root)?);
    for (file, text) in &sources {
        offences.extend(architecture::source_offences(file, text));
    }
    for krate in sorted_entries(&root.join("crates"))? {
        let manifest = krate.join("Cargo.toml");
        if let Some(name) = krate.file_name().and_then(|n| n.to_str())
            && manifest.is_file()
        {
            offences.extend(architecture::floor_offences(
                name,
                &relative(root, &manifest),
                &read_text(&manifest)?,
            ));
        }
    }
    Ok(offences)
}

/// Reads a file as UTF-8.
fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))
}

/// `path` relative to `root`, with `/` separators, for messages.
fn relative(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// Every `.rs` file under `crates/*/src/`, sorted.
fn crate_sources(root: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for krate in sorted_entries(&root.join("crates"))? {
        let src = krate.join("src");
        if src.is_dir() {
            rust_files(&src, &mut files)?;
        }
    }
    Ok(files)
}

/// The entries of a folder, sorted.
fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut entries = std::fs::read_dir(dir)
        .map_err(|e| format!("reading {}: {e}", dir.display()))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|e| format!("reading {}: {e}", dir.display()))?;
    entries.sort();
    Ok(entries)
}

/// Adds the `.rs` files under `dir`, at any depth, to `files`.
fn rust_files(dir: &Path, files: &mut Vec<PathBuf>) -> Result {
    for path in sorted_entries(dir)? {
        if path.is_dir() {
            rust_files(&path, files)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    Ok(())
}

/// Whether a Rust file's first non-blank line is a `//!` module doc comment.
fn starts_with_module_doc(text: &str) -> bool {
    text.trim_start_matches('\u{feff}')
        .lines()
        .find(|line| !line.trim().is_empty())
        .is_some_and(|line| line.starts_with("//!"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_repository_is_tidy() {
        let offences = tidy_offences(&root()).unwrap();
        assert!(offences.is_empty(), "tidy:\n{}", offences.join("\n"));
    }

    #[test]
    fn module_docs_come_first() {
        assert!(starts_with_module_doc("//! Docs.\n\nuse x;\n"));
        assert!(starts_with_module_doc("\n//! Docs after a blank line.\n"));
        assert!(!starts_with_module_doc("use x;\n//! Too late.\n"));
        assert!(!starts_with_module_doc(
            "#![allow(x)]\n//! After an attribute.\n"
        ));
        assert!(!starts_with_module_doc("/// An item doc.\nfn f() {}\n"));
        assert!(!starts_with_module_doc(""));
    }
}
