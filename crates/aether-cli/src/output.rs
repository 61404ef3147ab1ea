//! Printing: aligned tables for people (bold headers only on a terminal), one JSON object per
//! line with `--json`.

use std::io::{IsTerminal, Write};

use serde_json::Value as Json;

/// Where and how results are printed.
pub(crate) struct Output {
    pub(crate) json: bool,
    colour: bool,
}

impl Output {
    pub(crate) fn new(json: bool) -> Self {
        Self {
            json,
            colour: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
        }
    }

    /// One line of text.
    pub(crate) fn line(&self, text: impl AsRef<str>) {
        let mut out = std::io::stdout().lock();
        // A closed pipe (`aether ... | head`) ends the output; nothing to report.
        let _ = writeln!(out, "{}", text.as_ref());
    }

    /// One JSON value on one line.
    pub(crate) fn json_line(&self, value: &Json) {
        self.line(value.to_string());
    }

    /// A key/value block: `key: value` lines, keys aligned.
    pub(crate) fn fields(&self, fields: &[(&str, String)]) {
        let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        for (key, value) in fields {
            self.line(format!(
                "{}{key}{}:{} {value}",
                self.bold(),
                self.plain(),
                " ".repeat(width - key.len())
            ));
        }
    }

    /// A table with a header row; columns padded to their widest cell.
    pub(crate) fn table(&self, headers: &[&str], rows: &[Vec<String>]) {
        let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
        for row in rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let render = |cells: Vec<&str>| {
            let last = cells.len().saturating_sub(1);
            cells
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    if i == last {
                        (*c).to_owned()
                    } else {
                        format!(
                            "{c}{}",
                            " ".repeat(widths[i].saturating_sub(c.chars().count()))
                        )
                    }
                })
                .collect::<Vec<_>>()
                .join("  ")
        };
        self.line(format!(
            "{}{}{}",
            self.bold(),
            render(headers.to_vec()),
            self.plain()
        ));
        for row in rows {
            self.line(render(row.iter().map(String::as_str).collect()));
        }
    }

    fn bold(&self) -> &'static str {
        if self.colour { "\x1b[1m" } else { "" }
    }

    fn plain(&self) -> &'static str {
        if self.colour { "\x1b[0m" } else { "" }
    }
}

/// Prints scan progress on standard error, when it is a terminal: `label: n of total`.
pub(crate) struct Progress {
    on: bool,
    label: &'static str,
    total: u64,
}

impl Progress {
    pub(crate) fn new(label: &'static str, total: u64) -> Self {
        Self {
            on: std::io::stderr().is_terminal() && total > 10_000,
            label,
            total,
        }
    }

    pub(crate) fn at(&self, n: u64) {
        if self.on && n.is_multiple_of(5_000) {
            eprint!("\r{}: {n} of {} records", self.label, self.total);
        }
    }

    pub(crate) fn done(&self) {
        if self.on {
            eprintln!("\r{}: {} records{}", self.label, self.total, " ".repeat(12));
        }
    }
}
