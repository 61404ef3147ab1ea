//! The oldest nats-server Aether supports and how a version string is read: defined once here.
//! `xtask` includes this very file (`#[path]`, it has no dependencies), so it must stay std-only.

/// Oldest nats-server Aether supports: 2.12.1, the first with atomic batch publish that keeps
/// message ids (per-message TTLs and `Nats-Expected-Last-Subject-Sequence-Subject`, which the
/// cluster uses, came earlier, in 2.11).
pub const MIN_SERVER_VERSION: (u32, u32, u32) = (2, 12, 1);

/// Reads `2.15.1` out of `2.15.1`, `v2.15.1`, `nats-server: v2.15.1` or `2.12.0-RC.1`
/// (a missing patch is 0); `None` if there is no version.
pub fn parse_server_version(text: &str) -> Option<(u32, u32, u32)> {
    let word = text
        .split_whitespace()
        .map(|w| w.strip_prefix('v').unwrap_or(w))
        .find(|w| w.contains('.'))?;
    let mut parts = word.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    let patch = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    Some((major, minor, patch))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse() {
        assert_eq!(parse_server_version("2.15.1"), Some((2, 15, 1)));
        assert_eq!(parse_server_version("v2.12"), Some((2, 12, 0)));
        assert_eq!(
            parse_server_version("nats-server: v2.9.10"),
            Some((2, 9, 10))
        );
        assert_eq!(parse_server_version("2.12.0-RC.1"), Some((2, 12, 0)));
        assert_eq!(parse_server_version("garbage"), None);
        assert!(parse_server_version("2.12.0").is_some_and(|v| v < MIN_SERVER_VERSION));
    }
}
