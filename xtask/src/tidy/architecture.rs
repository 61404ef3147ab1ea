//! Tidy's architecture rules: codes by name, one backoff, crate floors, no NATS in the local bus.
//!
//! Each scanner reads plain text, line by line, and skips comment lines (`//`, `///`, `//!`):
//! the rules are about code, and a comment may well explain the number or the NATS side.

/// The crate that may write JetStream API error codes as numbers: it names them for the others.
const ERROR_CODE_HOME: &str = "crates/aether-nats/";

/// JetStream API error codes (`err_code` in the server's replies) lie in this range.
const ERROR_CODES: std::ops::RangeInclusive<u64> = 10001..=10299;

/// What may end an integer literal.
const INTEGER_SUFFIXES: [&str; 12] = [
    "u8", "u16", "u32", "u64", "u128", "usize", "i8", "i16", "i32", "i64", "i128", "isize",
];

/// The one place a doubling retry delay may be computed: core's `Backoff`.
const BACKOFF_HOME: &str = "crates/aether-core/src/backoff.rs";

/// Code (whitespace removed) that doubles a delay by hand.
const DOUBLING: [&str; 2] = ["*2).min(", "saturating_mul(2)"];

/// The in-process bus: this file, and the folder of the same name if it exists.
const LOCAL_BUS: &str = "crates/aether-bus/src/local";

/// The crates everything else stands on.
const FOUNDATION_CRATES: [&str; 6] = [
    "aether-core",
    "aether-nats",
    "aether-store-memory",
    "aether-store-jetstream",
    "aether-bus",
    "aether-testkit",
];

/// The crates built on the foundation, which it therefore must not depend on.
const ABOVE_THE_FOUNDATION: [&str; 2] = ["aether-runtime", "aether-cluster"];

/// What core, the crate every other one depends on, must not depend on: it knows no transport
/// and no runtime.
const NOT_IN_CORE: [&str; 2] = ["async-nats", "tokio"];

/// The offences of one Rust source file, `file` being its path from the repository root (with
/// `/` separators), as `file:line: message`.
pub(super) fn source_offences(file: &str, text: &str) -> Vec<String> {
    let error_codes_allowed = file.starts_with(ERROR_CODE_HOME);
    let backoff_allowed = file == BACKOFF_HOME;
    let local_bus = file == format!("{LOCAL_BUS}.rs") || file.starts_with(&format!("{LOCAL_BUS}/"));
    let mut offences = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if is_comment(line) {
            continue;
        }
        let at = format!("{file}:{}", i + 1);
        let codes = bare_error_codes(line);
        if !error_codes_allowed && !codes.is_empty() {
            let codes = codes
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            offences.push(format!(
                "{at}: JetStream error code {codes} as a number; name it with \
                 `async_nats::jetstream::ErrorCode` or keep it in crates/aether-nats"
            ));
        }
        if !backoff_allowed && doubles_a_delay(line) {
            offences.push(format!(
                "{at}: a hand-rolled doubling backoff; use aether-core's `Backoff`, the one retry \
                 schedule"
            ));
        }
        if local_bus && names_nats(line) {
            offences.push(format!(
                "{at}: the in-process bus names NATS; the NATS bus composes the local one, not \
                 the other way round"
            ));
        }
    }
    offences
}

/// The offences of one crate's manifest against the floors between crates: `krate` is the
/// crate's name, `file` the manifest's path from the repository root, `manifest` its text.
pub(super) fn floor_offences(krate: &str, file: &str, manifest: &str) -> Vec<String> {
    if !FOUNDATION_CRATES.contains(&krate) {
        return Vec::new();
    }
    let mut offences = Vec::new();
    for (line, dependency) in dependencies(manifest) {
        if ABOVE_THE_FOUNDATION.contains(&dependency.as_str()) {
            offences.push(format!(
                "{file}:{line}: {krate} depends on {dependency}; a foundation crate depends on \
                 neither {}",
                ABOVE_THE_FOUNDATION.join(" nor ")
            ));
        }
        if krate == "aether-core" && NOT_IN_CORE.contains(&dependency.as_str()) {
            offences.push(format!(
                "{file}:{line}: aether-core depends on {dependency}; it depends on neither {}",
                NOT_IN_CORE.join(" nor ")
            ));
        }
    }
    offences
}

/// Whether a line is a comment (`//`, `///`, `//!`) and nothing else.
fn is_comment(line: &str) -> bool {
    line.trim_start().starts_with("//")
}

/// The integer literals of a line in [`ERROR_CODES`]: whole tokens such as `10071` or
/// `10071u16`, not `10_071`, `110071`, `x10071` or `1.10071`.
fn bare_error_codes(line: &str) -> Vec<u64> {
    let bytes = line.as_bytes();
    // Bytes of non-ASCII characters count as part of an identifier.
    let in_token = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || !b.is_ascii();
    let mut codes = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if !in_token(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && in_token(bytes[i]) {
            i += 1;
        }
        // A float's digits after or before its point are not a literal of their own.
        let after_point =
            start >= 2 && bytes[start - 1] == b'.' && bytes[start - 2].is_ascii_digit();
        let before_point = i + 1 < bytes.len() && bytes[i] == b'.' && bytes[i + 1].is_ascii_digit();
        if let Some(value) = integer_literal(&line[start..i])
            && !after_point
            && !before_point
            && ERROR_CODES.contains(&value)
        {
            codes.push(value);
        }
    }
    codes
}

/// The value of a decimal integer literal without `_` separators, with or without a type
/// suffix; `None` for anything else.
fn integer_literal(token: &str) -> Option<u64> {
    let end = token
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(token.len());
    let (digits, suffix) = token.split_at(end);
    if digits.is_empty() || !(suffix.is_empty() || INTEGER_SUFFIXES.contains(&suffix)) {
        return None;
    }
    digits.parse().ok()
}

/// Whether a line doubles a value by hand the way a retry delay is doubled.
fn doubles_a_delay(line: &str) -> bool {
    let code: String = line.chars().filter(|c| !c.is_whitespace()).collect();
    DOUBLING.iter().any(|pattern| code.contains(pattern))
}

/// Whether a line names NATS, in any case.
fn names_nats(line: &str) -> bool {
    line.to_ascii_lowercase().contains("nats")
}

/// The dependencies a `Cargo.toml` declares, each with its (1-based) line: the keys of
/// `[dependencies]` and `[target.….dependencies]`, and `[dependencies.<name>]` tables; a
/// `package = "…"` rename counts as the package. Dev- and build-dependencies are not read.
fn dependencies(manifest: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    let mut in_dependencies = false;
    for (i, line) in manifest.lines().enumerate() {
        let line = line.trim();
        if line.starts_with('[') {
            let header = line.trim_matches(['[', ']']).trim();
            in_dependencies = header == "dependencies"
                || (header.starts_with("target.") && header.ends_with(".dependencies"));
            if let Some(name) = header.strip_prefix("dependencies.") {
                found.push((i + 1, unquote(name).to_owned()));
            }
            continue;
        }
        if !in_dependencies {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        // `name.workspace = true` and `name = …` both declare `name`.
        let key = unquote(key.split('.').next().unwrap_or_default().trim());
        let is_name = !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if is_name {
            let package = renamed_package(value).unwrap_or(key);
            found.push((i + 1, package.to_owned()));
        }
    }
    found
}

/// The package of a renamed dependency: `x` in `{ package = "x", … }`.
fn renamed_package(value: &str) -> Option<&str> {
    let (_, after) = value.split_once("package")?;
    let after = after.trim_start().strip_prefix('=')?.trim_start();
    let after = after.strip_prefix('"')?;
    after.split('"').next()
}

/// A TOML key without its quotes.
fn unquote(key: &str) -> &str {
    key.trim().trim_matches(['"', '\''])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_error_codes_are_whole_integer_literals() {
        assert_eq!(bare_error_codes("if code == 10071 {"), [10071]);
        assert_eq!(
            bare_error_codes("Some(10005u16) | Some(10299)"),
            [10005, 10299]
        );
        assert!(bare_error_codes("let n = 10_000;").is_empty());
        assert!(bare_error_codes("let n = 10_071;").is_empty());
        assert!(bare_error_codes("10000 10300 110071 100710").is_empty());
        assert!(bare_error_codes("x10071 e10071_y 0x10071 1.10071 10071.5 10071e3").is_empty());
    }

    #[test]
    fn error_codes_are_flagged_outside_the_nats_crate_only() {
        let text = "//! Doc.\nlet full = code == 10071;\n// 10071 explained.\n/// 10071\n";
        let offences = source_offences("crates/aether-cluster/src/x.rs", text);
        assert_eq!(offences.len(), 1, "{offences:?}");
        assert!(offences[0].starts_with("crates/aether-cluster/src/x.rs:2: "));
        assert!(source_offences("crates/aether-nats/src/codes.rs", text).is_empty());
    }

    #[test]
    fn doubling_backoffs_are_flagged_outside_core_backoff() {
        let text = "delay = (d * 2).min(x);\nd = d.saturating_mul(2);\n// (d * 2).min(x)\nn * 2\n";
        let offences = source_offences("crates/aether-bus/src/nats.rs", text);
        let lines: Vec<_> = offences
            .iter()
            .map(|o| o.split(": ").next().unwrap_or_default())
            .collect();
        assert_eq!(
            lines,
            [
                "crates/aether-bus/src/nats.rs:1",
                "crates/aether-bus/src/nats.rs:2"
            ]
        );
        assert!(source_offences(BACKOFF_HOME, text).is_empty());
        assert!(doubles_a_delay("(d*2).min(max)"));
    }

    #[test]
    fn the_local_bus_names_no_nats() {
        let text = "//! Not NATS.\nuse crate::Nats;\nlet x = 1;\n";
        for file in [
            "crates/aether-bus/src/local.rs",
            "crates/aether-bus/src/local/queue.rs",
        ] {
            let offences = source_offences(file, text);
            assert_eq!(offences.len(), 1, "{file}: {offences:?}");
            assert!(offences[0].starts_with(&format!("{file}:2: ")));
        }
        assert!(source_offences("crates/aether-bus/src/nats.rs", text).is_empty());
        assert!(source_offences("crates/aether-bus/src/localish.rs", text).is_empty());
    }

    #[test]
    fn dependencies_are_read_from_the_dependencies_sections() {
        let manifest = "[package]\nname = \"x\"\n\n[dependencies]\n\
            aether-core.workspace = true\n\
            tokio = { workspace = true, features = [\n    \"sync\",\n] }\n\
            nats = { package = \"async-nats\", version = \"0.4\" }\n\
            # aether-runtime.workspace = true\n\n\
            [dev-dependencies]\naether-runtime.workspace = true\n\n\
            [target.'cfg(unix)'.dependencies]\nrustix = \"1\"\n\n\
            [dependencies.aether-cluster]\nworkspace = true\n";
        assert_eq!(
            dependencies(manifest),
            [
                (5, "aether-core".to_owned()),
                (6, "tokio".to_owned()),
                (9, "async-nats".to_owned()),
                (16, "rustix".to_owned()),
                (18, "aether-cluster".to_owned()),
            ]
        );
    }

    #[test]
    fn foundation_crates_stand_below_the_runtime() {
        let manifest = "[dependencies]\naether-runtime.workspace = true\ntokio = \"1\"\n\
            [dev-dependencies]\naether-cluster.workspace = true\n";
        let testkit = floor_offences(
            "aether-testkit",
            "crates/aether-testkit/Cargo.toml",
            manifest,
        );
        assert_eq!(testkit.len(), 1, "{testkit:?}");
        assert!(testkit[0].starts_with("crates/aether-testkit/Cargo.toml:2: "));
        let core = floor_offences("aether-core", "crates/aether-core/Cargo.toml", manifest);
        assert_eq!(core.len(), 2, "{core:?}");
        assert!(core[1].starts_with("crates/aether-core/Cargo.toml:3: "));
        assert!(
            floor_offences(
                "aether-cluster",
                "crates/aether-cluster/Cargo.toml",
                manifest
            )
            .is_empty()
        );
    }
}
