//! Tests of the refusal parser and the watch.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

fn server_error(text: &str) -> Event {
    Event::ServerError(ServerError::Other(text.to_owned()))
}

#[test]
fn reads_the_servers_refusals() {
    // The texts nats-server 2.12 sends (client.go), as async-nats hands them over.
    assert_eq!(
        Refusal::parse(r#"Permissions Violation for Publish to "ae.events_tenant-b.secret-1""#),
        Some(Refusal::new(
            Operation::Publish,
            "ae.events_tenant-b.secret-1"
        ))
    );
    assert_eq!(
        Refusal::parse(
            r#"Permissions Violation for Publish to "$JS.API.STREAM.INFO.events_tenant-b""#
        ),
        Some(Refusal::new(
            Operation::Publish,
            "$JS.API.STREAM.INFO.events_tenant-b"
        ))
    );
    assert_eq!(
        Refusal::parse(r#"Permissions Violation for Subscription to "_INBOX.abc.*""#),
        Some(Refusal::new(Operation::Subscribe, "_INBOX.abc.*"))
    );
    let queued = Refusal::parse(
        r#"Permissions Violation for Subscription to "aether.x" using queue "workers""#,
    )
    .unwrap();
    assert!(queued.is(Operation::Subscribe, "aether.x"));
    assert_eq!(queued.queue.as_deref(), Some("workers"));
    // A reload revoking a subscription, and the token limit.
    assert!(
        Refusal::parse(r#"Permissions Violation for Subscription to "a.b" (sid 7)"#)
            .unwrap()
            .is(Operation::Subscribe, "a.b")
    );
    assert!(
        Refusal::parse(r#"Permissions Violation for Subscription to "a.b", too many tokens"#)
            .unwrap()
            .is(Operation::Subscribe, "a.b")
    );
    // As the error displays, and with the protocol's quotes left on.
    assert!(
        Refusal::parse(r#"nats: 'Permissions Violation for Publish to "x"'"#)
            .unwrap()
            .is(Operation::Publish, "x")
    );
    // Go's escapes.
    assert_eq!(
        Refusal::parse(r#"Permissions Violation for Publish to "a\"b\\c\x41\u00e9\101""#)
            .unwrap()
            .subject,
        "a\"b\\cAéA"
    );
}

#[test]
fn other_texts_are_not_refusals_and_never_panic() {
    for text in [
        "",
        "authorization violation",
        "Permissions Violation for Publish with Reply of \"_R_.x\"",
        "Permissions Violation for Publish to",
        "Permissions Violation for Publish to \"",
        "Permissions Violation for Publish to \"\"",
        "Permissions Violation for Publish to \"unterminated",
        "Permissions Violation for Publish to \"bad\\q\"",
        "Permissions Violation for Publish to \"\\x\"",
        "Permissions Violation for Publish to \"\\xZZ\"",
        "Permissions Violation for Publish to \"\\uD800\"",
        "Permissions Violation for Publish to \"\\777\"",
        "Permissions Violation for Publish to \"\\UFFFFFFFF\"",
        "Permissions Violation for Publish to \"\\",
        "Permissions Violation for Subscribe to \"x\"",
        "'''",
        "nats: ",
        "Permissions Violation for Publish to x",
    ] {
        assert_eq!(Refusal::parse(text), None, "{text:?}");
    }
    // Invalid UTF-8 from byte escapes is replaced, not a panic.
    assert_eq!(
        Refusal::parse(r#"Permissions Violation for Publish to "\xff""#)
            .unwrap()
            .subject,
        "\u{fffd}"
    );
    // Arbitrary text around and inside the pattern.
    let mut noise = String::from("Permissions Violation for Subscription to \"");
    for i in 0..2000u32 {
        noise.push(char::from_u32(i * 37 % 0x2FFF).unwrap_or('?'));
    }
    let _ = Refusal::parse(&noise);
    for cut in 0..noise.len() {
        if let Some(prefix) = noise.get(..cut) {
            let _ = Refusal::parse(prefix);
        }
    }
}

#[test]
fn the_watch_remembers_and_forgets_on_reconnect() {
    let watch = PermissionWatch::new();
    assert!(
        watch
            .recently_refused(Operation::Publish, "aether.x")
            .is_none()
    );
    watch.observe(&Event::Connected);
    watch.observe(&server_error(
        r#"Permissions Violation for Publish to "aether.x""#,
    ));
    watch.observe(&server_error(
        r#"Permissions Violation for Subscription to "_INBOX_a.xyz.*""#,
    ));
    watch.observe(&server_error("maximum subscriptions exceeded"));
    assert_eq!(watch.refusals(), 2);
    assert!(
        watch
            .recently_refused(Operation::Publish, "aether.x")
            .is_some()
    );
    assert!(
        watch
            .recently_refused(Operation::Publish, "aether.y")
            .is_none()
    );
    assert!(watch.replies_refused("_INBOX_a").is_some());
    assert!(
        watch.replies_refused("_INBOX").is_none(),
        "not a prefix token"
    );
    watch.observe(&Event::Connected);
    assert!(watch.replies_refused("_INBOX_a").is_none());
    assert!(
        watch
            .recently_refused(Operation::Publish, "aether.x")
            .is_none()
    );
}

#[test]
fn the_memory_is_bounded_and_windowed() {
    let watch = PermissionWatch::with_memory(Duration::ZERO);
    for i in 0..(REMEMBERED * 3) {
        watch.report(Refusal::new(Operation::Publish, format!("s.{i}")));
    }
    assert_eq!(watch.remembered().len(), REMEMBERED);
    std::thread::sleep(Duration::from_millis(2));
    assert!(
        watch
            .recently_refused(Operation::Publish, &format!("s.{}", REMEMBERED * 3 - 1))
            .is_none(),
        "outside the window"
    );
}

#[tokio::test]
async fn a_guard_fails_with_the_refusal_it_waits_for() {
    let watch = PermissionWatch::new();
    let reporter = watch.clone();
    let started = std::time::Instant::now();
    let out = watch
        .guard(|r| r.is(Operation::Publish, "wanted"), async move {
            reporter.report(Refusal::new(Operation::Publish, "other"));
            reporter.report(Refusal::new(Operation::Publish, "wanted"));
            tokio::time::sleep(Duration::from_secs(30)).await;
        })
        .await;
    assert_eq!(out, Err(Refusal::new(Operation::Publish, "wanted")));
    assert!(started.elapsed() < Duration::from_secs(5));
    let done = watch.guard(|_| true, async { 7 }).await;
    assert_eq!(done, Ok(7));
}

#[tokio::test]
async fn a_lagging_watcher_finds_its_refusal_in_the_memory() {
    let watch = PermissionWatch::new();
    let mut watcher = watch.watcher();
    watch.report(Refusal::new(Operation::Subscribe, "wanted"));
    for i in 0..(CHANNEL * 2) {
        watch.report(Refusal::new(Operation::Publish, format!("noise.{i}")));
    }
    let found = tokio::time::timeout(
        Duration::from_secs(5),
        watcher.refusal(|r| r.is(Operation::Subscribe, "wanted")),
    )
    .await
    .unwrap();
    assert_eq!(found.subject, "wanted");
}

#[test]
fn a_refusal_is_a_permanent_store_error_naming_the_subject() {
    let e = Refusal::new(Operation::Publish, "ae.events.x").store_error("appending");
    assert!(!e.is_transient());
    assert_eq!(
        e.to_string(),
        "permission denied while appending: the server refused publish to \"ae.events.x\""
    );
}
