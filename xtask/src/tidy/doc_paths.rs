//! Tidy's check that every repository path `docs/architecture.md` mentions exists.

use std::path::{Path, PathBuf};

use super::read_text;
use crate::Result;

/// The document whose repository paths must exist.
const ARCHITECTURE: &str = "docs/architecture.md";

/// A code span that starts with one of these (a top-level folder) names a repository path.
const PATH_PREFIXES: [&str; 5] = ["crates/", "xtask/", "examples/", "docs/", "tests/"];

/// A code span that ends with one of these names a repository file.
const PATH_EXTENSIONS: [&str; 5] = [".rs", ".md", ".toml", ".yaml", ".py"];

/// One offence per path [`ARCHITECTURE`] mentions that does not exist in the repository at `root`.
pub(super) fn offences(root: &Path) -> Result<Vec<String>> {
    let mut offences = Vec::new();
    let doc = root.join(ARCHITECTURE);
    let doc_dir = Path::new(ARCHITECTURE).parent().unwrap_or(Path::new(""));
    for mention in mentioned_paths(&read_text(&doc)?) {
        let found = mention.bases(doc_dir).iter().any(|base| {
            // `Path::join` would drop the base for a path written with a leading `/`.
            root.join(base)
                .join(mention.path.trim_start_matches('/'))
                .exists()
        });
        if !found {
            offences.push(format!(
                "{ARCHITECTURE}:{}: `{}` does not exist{}",
                mention.line,
                mention.path,
                match &mention.section {
                    Some(s) if !mention.link => {
                        format!(" (looked in the root, `{s}` and `{s}/src`)")
                    }
                    _ => String::new(),
                }
            ));
        }
    }
    Ok(offences)
}

/// A repository path a Markdown document mentions.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mention {
    /// The line it is on (1-based).
    line: usize,
    /// The path as written.
    path: String,
    /// The folder the enclosing section is about (from a heading such as ``### `crates/x` ``).
    section: Option<String>,
    /// Whether it is a Markdown link target (relative to the document) rather than a name.
    link: bool,
}

impl Mention {
    /// The folders, relative to the repository root, the path may be relative to: the
    /// document's folder for a link; else the root, then the section's folder and its `src`.
    fn bases(&self, doc_dir: &Path) -> Vec<PathBuf> {
        if self.link {
            return vec![doc_dir.to_path_buf()];
        }
        let mut bases = vec![PathBuf::new()];
        if let Some(section) = &self.section {
            bases.push(PathBuf::from(section));
            bases.push(Path::new(section).join("src"));
        }
        bases
    }
}

/// The repository paths a Markdown document mentions, outside fenced code blocks: code spans
/// that look like paths (see [`looks_like_repo_path`]), plain words that start with a top-level
/// folder of [`PATH_PREFIXES`], and relative link targets. Each knows the section it is in: the
/// first code span of the last heading, e.g. ``### `crates/aether-core` ``.
fn mentioned_paths(text: &str) -> Vec<Mention> {
    let mut mentions = Vec::new();
    let mut section: Option<String> = None;
    let mut fenced = false;
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let pieces: Vec<&str> = line.split('`').collect();
        // Odd pieces are code spans, unless the last backtick is unmatched.
        let is_code = |j: usize| j % 2 == 1 && (pieces.len() % 2 == 1 || j + 1 < pieces.len());
        if line.starts_with('#') {
            section = (0..pieces.len())
                .find(|&j| is_code(j))
                .map(|j| pieces[j].trim().trim_end_matches('/').to_owned())
                .filter(|s| !s.is_empty() && !s.contains(char::is_whitespace));
        }
        let mut add = |path: &str, link: bool| {
            mentions.push(Mention {
                line: i + 1,
                path: path.to_owned(),
                section: section.clone(),
                link,
            });
        };
        for (j, piece) in pieces.iter().enumerate() {
            if is_code(j) {
                if looks_like_repo_path(piece) {
                    add(piece, false);
                }
                continue;
            }
            for word in piece.split_whitespace() {
                let word = word
                    .trim_matches(|c: char| !(c.is_alphanumeric() || "_./-".contains(c)))
                    .trim_end_matches('.');
                if PATH_PREFIXES.iter().any(|p| word.starts_with(p)) && !has_placeholder(word) {
                    add(word, false);
                }
            }
            for target in piece
                .split("](")
                .skip(1)
                .filter_map(|t| t.split(')').next())
            {
                let target = target.split('#').next().unwrap_or_default().trim();
                if !target.is_empty() && !target.contains(':') && !has_placeholder(target) {
                    add(target, true);
                }
            }
        }
    }
    mentions
}

/// Whether a code span names a repository path: one word, no placeholder or URL, starting with a
/// top-level folder of [`PATH_PREFIXES`] or ending with an extension of [`PATH_EXTENSIONS`]
/// (more than the bare extension).
fn looks_like_repo_path(span: &str) -> bool {
    !span.is_empty()
        && !span.contains(char::is_whitespace)
        && !span.contains("://")
        && !has_placeholder(span)
        && (PATH_PREFIXES.iter().any(|p| span.starts_with(p))
            || PATH_EXTENSIONS
                .iter()
                .any(|e| span.len() > e.len() && span.ends_with(e)))
}

/// Whether a path holds a placeholder (`<name>`, `{name}`) or a wildcard (`*`, `?`).
fn has_placeholder(path: &str) -> bool {
    path.contains(['<', '>', '{', '}', '*', '?'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_found_in_markdown() {
        let text = "# Top\n\
            `crates/a/src/x.rs`, `Foo::bar`, `cargo xtask model check a.yaml`, `<name>.rs`, `.rs`\n\
            ```\n`docs/in-a-fence.md`\n```\n\
            ### `crates/a` (section)\n\
            `store.rs` and `benches/b.rs`; see [layout](layout.md#top) and docs/plain.md.\n\
            `crates/a-*` `https://x.org/a.md` [web](https://x.org)\n\
            ## Next\n`bare.rs`\n";
        let found: Vec<_> = mentioned_paths(text)
            .into_iter()
            .map(|m| (m.line, m.path, m.section, m.link))
            .collect();
        let a = || Some("crates/a".to_owned());
        assert_eq!(
            found,
            [
                (2, "crates/a/src/x.rs".to_owned(), None, false),
                (6, "crates/a".to_owned(), a(), false),
                (7, "store.rs".to_owned(), a(), false),
                (7, "benches/b.rs".to_owned(), a(), false),
                (7, "docs/plain.md".to_owned(), a(), false),
                (7, "layout.md".to_owned(), a(), true),
                (10, "bare.rs".to_owned(), None, false),
            ]
        );
    }
}
