//! `aether reminders` against a real nats-server holding reminders set through the library:
//! listing an actor's (table and JSON), the stream's state, cancelling, and what it says when
//! there is nothing to show.

// Test code: a failed expectation panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use aether_core::reminder::{Reminder, ReminderKey, ReminderStore, When, unix_millis};
use aether_store_jetstream::{JetStreamConfig, JetStreamReminders};
use aether_testkit::nats::NatsServer;
use serde_json::{Value as Json, json};

const BIN: &str = env!("CARGO_BIN_EXE_aether");

fn aether(server: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(["--server", server, "--store", "shop"])
        .args(args)
        .env_remove("NATS_URL")
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reminders_are_listed_cancelled_and_counted() {
    let server = NatsServer::start().await.unwrap();
    let url = server.url();
    // Before anything set a reminder: no stream, and reading does not create one.
    let none = aether(&url, &["reminders", "list", "order", "o-1"]);
    assert_eq!(none.status.code(), Some(4), "{}", text(&none.stderr));
    assert!(text(&none.stderr).contains("no reminder stream `REMINDERS_shop`"));

    let store = JetStreamReminders::open(
        server.connect().await.unwrap(),
        "shop",
        &JetStreamConfig::default(),
    )
    .await
    .unwrap();
    let at = SystemTime::now() + Duration::from_secs(3600);
    let command = rmp_serde::to_vec_named(&json!({"CancelUnpaid": {"reason": "late"}})).unwrap();
    store
        .set(&Reminder::new(
            ReminderKey::new("order", "o-1", "payment"),
            When::At(at),
            command,
        ))
        .await
        .unwrap();
    store
        .set(&Reminder::new(
            ReminderKey::new("order", "o-1", "nudge"),
            When::every(Duration::from_secs(600)),
            rmp_serde::to_vec_named(&"Nudge").unwrap(),
        ))
        .await
        .unwrap();

    let table = aether(&url, &["reminders", "list", "order", "o-1"]);
    assert!(table.status.success(), "{}", text(&table.stderr));
    let out = text(&table.stdout);
    assert!(
        out.contains("payment") && out.contains("every 600s"),
        "{out}"
    );
    assert!(
        out.contains(r#"{"CancelUnpaid":{"reason":"late"}}"#),
        "{out}"
    );

    let listed = aether(&url, &["--json", "reminders", "list", "order", "o-1"]);
    let lines: Vec<Json> = text(&listed.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["name"], json!("nudge"));
    assert_eq!(lines[0]["every_ms"], json!(600_000));
    assert_eq!(lines[1]["at_ms"], json!(unix_millis(at).unwrap()));
    assert_eq!(
        lines[1]["command"],
        json!({"CancelUnpaid": {"reason": "late"}})
    );

    let status = aether(&url, &["--json", "reminders", "status"]);
    let status: Json = serde_json::from_str(text(&status.stdout).trim()).unwrap();
    assert_eq!(status["messages"], json!(2));
    assert_eq!(
        status["firings_waiting"],
        Json::Null,
        "no reader has started"
    );

    let cancelled = aether(&url, &["reminders", "cancel", "order", "o-1", "payment"]);
    assert!(cancelled.status.success(), "{}", text(&cancelled.stderr));
    let again = aether(&url, &["reminders", "cancel", "order", "o-1", "payment"]);
    assert_eq!(again.status.code(), Some(4));
    let bad = aether(
        &url,
        &["reminders", "cancel", "order", "o-1", "bad\u{7}name"],
    );
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad.stderr));
    let one = aether(&url, &["--json", "reminders", "list", "order", "o-1"]);
    assert_eq!(text(&one.stdout).lines().count(), 1);
}
