//! The reminder layout is a contract, not a Rust detail: a Python client written from
//! `docs/reminders.md` alone (`tests/python/reminder_client.py`, nats-py and msgpack) sets
//! reminders that the dispatcher delivers as commands to a Rust actor (a hostile actor id
//! included), reads back reminders Rust set, and cancels one.
//!
//! Needs the Python test packages (`cargo xtask python`); without them the test fails and says so.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aether_core::EventStore;
use aether_core::reminder::{ReminderStore, When, unix_millis};
use aether_runtime::reminders::{Dispatcher, Reminders};
use aether_runtime::{Actor, Runtime};
use aether_store_jetstream::{JetStreamConfig, JetStreamReminders};
use aether_store_memory::InMemoryEventStore;
use aether_testkit::nats::NatsServer;
use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/python/reminder_client.py"
);

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Wallet {
    balance: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Cmd {
    Deposit(i64),
    Note { text: String },
}

#[derive(Debug, thiserror::Error, Serialize, Deserialize)]
#[error("never")]
struct Never;

impl Actor for Wallet {
    const TYPE: &'static str = "wallet";
    type Command = Cmd;
    type Event = i64;
    type Error = Never;
    fn handle(&self, cmd: &Cmd) -> Result<Vec<i64>, Never> {
        Ok(match cmd {
            Cmd::Deposit(n) => vec![*n],
            Cmd::Note { .. } => vec![0],
        })
    }
    fn apply(&mut self, n: &i64) {
        self.balance += n;
    }
}

async fn python(args: &[&str]) -> Json {
    let mut cmd = aether_testkit::python::command(SCRIPT).unwrap_or_else(|e| panic!("{e}"));
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.args(args).output())
        .await
        .expect("reminder_client.py finishes within a minute")
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "reminder_client.py {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.trim_end().lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {last:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reminders_set_from_python_fire_in_rust_and_python_reads_rusts() {
    let server = NatsServer::start().await.unwrap();
    let url = server.url();
    let reminders: Arc<dyn ReminderStore> = Arc::new(
        JetStreamReminders::open(
            server.connect().await.unwrap(),
            "shop",
            &JetStreamConfig::default(),
        )
        .await
        .unwrap(),
    );
    let events = Arc::new(InMemoryEventStore::new());
    let runtime = Runtime::<Wallet>::builder(events.clone()).build();
    let dispatcher = Dispatcher::new(reminders.clone())
        .runtime(runtime.clone())
        .start();

    // Python sets two reminders; one for an actor id no subject could hold as it is.
    // Far enough ahead to read them back before they fire (each Python run takes a while).
    let due = unix_millis(SystemTime::now() + Duration::from_secs(12)).unwrap();
    let hostile = "py.1 *>ü_";
    for (actor, name, command) in [
        ("py-1", "top-up", json!({"Deposit": 5})),
        (hostile, "note.me", json!({"Note": {"text": "from python"}})),
    ] {
        let set = python(&[
            "set",
            &url,
            "shop",
            "wallet",
            actor,
            name,
            &due.to_string(),
            &command.to_string(),
        ])
        .await;
        assert!(set["seq"].as_u64().unwrap() > 0, "{set}");
    }
    // Read back through Rust before they fire: the doc's layout is the store's.
    let typed = Reminders::<Wallet>::new(reminders.clone());
    let listed = typed.list(hostile).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].key.name, "note.me");
    assert_eq!(
        Reminders::<Wallet>::command_of(&listed[0]).unwrap(),
        Cmd::Note {
            text: "from python".into()
        }
    );

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while events.get_latest_version("py-1").await.unwrap() < 1
        || events.get_latest_version(hostile).await.unwrap() < 1
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "python's reminders did not fire"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stored = events.get_events("py-1", 1).await.unwrap();
    assert_eq!(
        stored[0].metadata().causation_id.as_ref().unwrap().as_str(),
        format!("rem:{due}:top-up")
    );
    assert_eq!(runtime.capture_state("py-1").await.unwrap().0.balance, 5);

    // Rust sets; Python reads it from the doc's layout.
    let at = SystemTime::now() + Duration::from_secs(3600);
    typed
        .remind(
            "rust-1",
            "monthly",
            When::every(Duration::from_secs(30 * 86_400)),
            &Cmd::Deposit(7),
        )
        .await
        .unwrap();
    typed
        .remind(
            "rust-1",
            "once",
            When::At(at),
            &Cmd::Note { text: "ß".into() },
        )
        .await
        .unwrap();
    let every = python(&["get", &url, "shop", "wallet", "rust-1", "monthly"]).await;
    assert_eq!(every["every"], json!(30 * 86_400 * 1000u64), "{every}");
    assert_eq!(every["schedule"], json!("@every 2592000000ms"));
    assert_eq!(every["command"], json!({"Deposit": 7}));
    let once = python(&["get", &url, "shop", "wallet", "rust-1", "once"]).await;
    assert_eq!(once["at"], json!(unix_millis(at).unwrap()), "{once}");
    assert_eq!(once["command"], json!({"Note": {"text": "ß"}}));
    assert!(
        once["target"]
            .as_str()
            .unwrap()
            .starts_with("ar.shop.f.wallet.rust-1."),
        "{once}"
    );
    // Python cancels what Rust set.
    let cancelled = python(&["cancel", &url, "shop", "wallet", "rust-1", "once"]).await;
    assert_eq!(cancelled["purged"], json!(1), "{cancelled}");
    assert!(typed.get("rust-1", "once").await.unwrap().is_none());
    assert_eq!(typed.list("rust-1").await.unwrap().len(), 1);
    dispatcher.stop().await;
}
