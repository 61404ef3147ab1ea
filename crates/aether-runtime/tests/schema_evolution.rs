//! Schema evolution on both stores: a history written by three generations of code (a renamed
//! type and field, an added field with a default, a type split in two) activates into the current
//! state; new events carry the current schema version; snapshots of another state version are
//! discarded; missing, newer and hostile upcasters are clear, prompt, permanent errors.

// Test code: a failed expectation panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::error::Error as _;
use std::sync::Arc;
use std::time::Duration;

use aether_core::{
    ActorSnapshot, Event, EventShape, EventStore, SnapshotStore, UpcastError, Upcasters, Value,
};
use aether_runtime::{Actor, AskError, Runtime, SnapshotPolicy};
use aether_store_jetstream::JetStreamEventStore;
use aether_store_memory::InMemoryEventStore;
use aether_testkit::nats::NatsServer;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Today's account. State version 2: version 1 kept no fees.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
struct Account {
    owner: String,
    cents: u64,
    fees: u64,
    currency: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum AccountEvent {
    /// Was `Created { name }` (schema version 1).
    Opened { owner: String },
    /// v1 `{amount}`, v2 `{cents}`, v3 (current) `{cents, currency}`.
    Deposited { cents: u64, currency: String },
    /// Split out of `DepositedWithFee { cents, fee }` (v1).
    Fee { cents: u64 },
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

impl Actor for Account {
    const TYPE: &'static str = "account";
    const STATE_VERSION: u32 = 2;
    type Command = u64;
    type Event = AccountEvent;
    type Error = Never;

    fn handle(&self, cents: &u64) -> Result<Vec<AccountEvent>, Never> {
        Ok(vec![AccountEvent::Deposited {
            cents: *cents,
            currency: "EUR".into(),
        }])
    }

    fn apply(&mut self, event: &AccountEvent) {
        match event {
            AccountEvent::Opened { owner } => self.owner.clone_from(owner),
            AccountEvent::Deposited { cents, currency } => {
                self.cents += cents;
                self.currency.clone_from(currency);
            }
            AccountEvent::Fee { cents } => self.fees += cents,
        }
    }
}

fn upcasters() -> Upcasters {
    Upcasters::new()
        .step("Created", 1, |shape| {
            shape.retype("Opened");
            shape.schema_version = 1;
            if let Some(name) = shape.remove_field("name") {
                shape.set_field("owner", name)?;
            }
            Ok(())
        })
        .rename_field("Deposited", 1, "amount", "cents")
        .add_field("Deposited", 2, "currency", "EUR")
        .split("DepositedWithFee", 1, |shape| {
            let field = |name| shape.field(name).cloned().unwrap_or(Value::from(0));
            Ok(vec![
                EventShape::variant(
                    "Deposited",
                    3,
                    [("cents", field("cents")), ("currency", Value::from("EUR"))],
                ),
                EventShape::variant("Fee", 1, [("cents", field("fee"))]),
            ])
        })
}

/// What three older generations of code stored for `id`: versions 1 to 4.
fn old_history(id: &str) -> Vec<Event> {
    let event = |v: u64, t: &str, sv: u32, data: serde_json::Value| {
        Event::builder(id, t)
            .version(v)
            .schema_version(sv)
            .payload(&data)
            .build()
            .unwrap()
    };
    vec![
        event(1, "Created", 1, json!({"Created": {"name": "ana"}})),
        event(2, "Deposited", 1, json!({"Deposited": {"amount": 100}})),
        event(3, "Deposited", 2, json!({"Deposited": {"cents": 50}})),
        event(
            4,
            "DepositedWithFee",
            1,
            json!({"DepositedWithFee": {"cents": 30, "fee": 2}}),
        ),
    ]
}

fn current(cents: u64, fees: u64) -> Account {
    Account {
        owner: "ana".into(),
        cents,
        fees,
        currency: "EUR".into(),
    }
}

/// The whole story on one store: old history activates into today's state, a new event is
/// written at the current version, an old-state-version snapshot is discarded, and a snapshot
/// taken now is used.
async fn evolves(store: Arc<dyn EventStore>, snapshots: Arc<dyn SnapshotStore>) {
    let id = "acc-1";
    for event in old_history(id) {
        store.save_event(event).await.unwrap();
    }
    // A snapshot from the code of state version 1: decodes, but means something else.
    snapshots
        .save_snapshot(ActorSnapshot::new(id, 4, &current(999, 0)).unwrap())
        .await
        .unwrap();
    let runtime = Runtime::<Account>::builder(store.clone())
        .snapshots(snapshots.clone())
        .snapshot_policy(SnapshotPolicy::every(100))
        .upcasters(upcasters())
        .build();
    let applied = runtime.ask(id, 10).await.unwrap();
    assert_eq!(applied.version, 5);
    let (state, version) = runtime.capture_state(id).await.unwrap();
    assert_eq!((state, version), (current(190, 2), 5));
    assert_eq!(
        runtime.stats().replayed,
        4,
        "the old snapshot was discarded"
    );

    let stored = store.get_events(id, 5).await.unwrap();
    assert_eq!(
        (stored[0].event_type(), stored[0].schema_version()),
        ("Deposited", 3),
        "new events carry the current version"
    );

    // Passivation snapshots at state version 2; the next activation starts from it.
    let runtime = Runtime::<Account>::builder(store.clone())
        .snapshots(snapshots.clone())
        .snapshot_policy({
            let mut policy = SnapshotPolicy::default();
            policy.min_events = 0;
            policy
        })
        .upcasters(upcasters())
        .build();
    runtime.ask(id, 5).await.unwrap();
    assert!(runtime.stop_vm(id).await);
    let snapshot = snapshots.get_latest_snapshot(id).await.unwrap().unwrap();
    assert_eq!((snapshot.version, snapshot.state_version), (6, 2));
    let replayed = runtime.stats().replayed;
    let (state, version) = runtime.capture_state(id).await.unwrap();
    assert_eq!((state, version), (current(195, 2), 6));
    assert_eq!(
        runtime.stats().replayed,
        replayed,
        "activated from the snapshot"
    );
    runtime.shutdown().await;
}

#[tokio::test]
async fn old_shapes_replay_into_the_current_state_on_the_memory_store() {
    let store = Arc::new(InMemoryEventStore::new());
    evolves(store.clone(), store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_shapes_replay_into_the_current_state_on_jetstream() {
    let server = NatsServer::start().await.unwrap();
    let store = Arc::new(
        JetStreamEventStore::new(server.connect().await.unwrap(), "evolve")
            .await
            .unwrap(),
    );
    evolves(store.clone(), store.clone()).await;
    // On JetStream the record says its schema version in a header too (absent: 1).
    let client = server.connect().await.unwrap();
    let js = async_nats::jetstream::new(client);
    let stream = js.get_stream(store.stream_name()).await.unwrap();
    let subject = store.subject_for("acc-1");
    for (seq, expected) in [(1, None), (3, Some("2")), (5, Some("3"))] {
        let message = stream.get_raw_message(seq).await.unwrap();
        assert_eq!(message.subject.as_str(), subject.as_str());
        let header = message
            .headers
            .get("Aether-Schema-Version")
            .map(|v| v.as_str().to_owned());
        assert_eq!(header.as_deref(), expected, "record {seq}");
    }
}

/// Activation fails at once (no retries for the transient budget) with the upcasters' error,
/// the same for every waiting caller, and other actors keep working.
#[tokio::test]
async fn missing_newer_and_hostile_upcasters_fail_the_activation_clearly() {
    let store = Arc::new(InMemoryEventStore::new());
    for event in old_history("old") {
        store.save_event(event).await.unwrap();
    }
    store
        .save_event(
            Event::builder("future", "Deposited")
                .schema_version(7)
                .payload(&json!({"Deposited": {"cents": 1, "currency": "EUR", "memo": "x"}}))
                .build()
                .unwrap(),
        )
        .await
        .unwrap();

    let cases: Vec<(&str, Upcasters, &str)> = vec![
        // A chain with a gap.
        ("old", upcasters().add_field("Deposited", 4, "memo", ""), ""),
        (
            "future",
            upcasters(),
            "event type Deposited is stored at schema version 7, newer than this code's 3",
        ),
        (
            "old",
            upcasters().step("Created", 1, |_| panic!("hostile step")),
            "the upcaster for event type Created from schema version 1 panicked: hostile step",
        ),
    ];
    for (case, (id, upcasters, says)) in cases.into_iter().enumerate() {
        let checked = upcasters.check();
        let runtime = Runtime::<Account>::builder(store.clone())
            .upcasters(upcasters)
            .build();
        let started = std::time::Instant::now();
        let (a, b) = tokio::join!(runtime.ask(id, 1), runtime.ask(id, 1));
        assert!(started.elapsed() < Duration::from_secs(2), "prompt");
        for error in [a.unwrap_err(), b.unwrap_err()] {
            assert!(!error.is_transient());
            let AskError::Upcast {
                context, source, ..
            } = &error
            else {
                panic!("expected an upcast error, got {error:?}");
            };
            assert!(context.starts_with("stored event"), "{context}");
            if says.is_empty() {
                // The gap: Deposited v3 -> v4 is missing; `check` says so before any load.
                assert!(
                    matches!(
                        &**source,
                        UpcastError::MissingStep {
                            from: 3,
                            current: 5,
                            ..
                        }
                    ),
                    "{source}"
                );
                assert!(checked.is_err());
            } else {
                assert!(source.to_string().contains(says), "{source}");
                assert_eq!(error.source().unwrap().to_string(), source.to_string());
            }
        }
        // Other actors are unaffected (each case's own: what it writes is at its versions).
        runtime.ask(&format!("fresh-{case}"), 3).await.unwrap();
        runtime.shutdown().await;
    }
}

/// The replay check over `tests/golden/accounts.jsonl`: today's code folds the recorded
/// histories (three generations of shapes) into the recorded states; a changed `apply` is
/// reported as a divergence naming the field; missing upcasters, panics, version regressions
/// and expectations without events are reported per actor.
#[cfg(feature = "replay-check")]
mod replay_check {
    use aether_core::history::{self, Line};
    use aether_runtime::testing::replay::{Outcome, ReplayCheck};

    use super::*;

    const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/accounts.jsonl");

    #[test]
    fn golden_histories_replay_into_their_recorded_states() {
        let report = ReplayCheck::<Account>::new()
            .upcasters(upcasters())
            .run_file(GOLDEN)
            .unwrap();
        assert!(report.is_ok(), "{report}");
        let outcomes: Vec<(&str, u64, u64, u64, &Outcome)> = report
            .actors
            .iter()
            .map(|a| (a.actor.as_str(), a.events, a.upcast, a.version, &a.outcome))
            .collect();
        assert_eq!(
            outcomes,
            vec![
                ("acc-1", 5, 4, 5, &Outcome::Matched),
                ("acc-2", 3, 0, 3, &Outcome::Matched),
                ("acc-3", 1, 0, 1, &Outcome::Unchecked),
            ]
        );
        // What the report would record equals what is recorded.
        let recorded: Vec<_> = history::read_file(GOLDEN)
            .unwrap()
            .into_iter()
            .filter_map(|l| match l {
                Line::Expect(e) => Some(e),
                _ => None,
            })
            .collect();
        assert_eq!(report.expectations()[..2], recorded[..]);
    }

    /// Today's account with a bug: fees are added to the balance.
    #[derive(Debug, Default, Serialize, Deserialize)]
    #[serde(transparent)]
    struct Buggy(Account);

    impl Actor for Buggy {
        const TYPE: &'static str = "account";
        type Command = u64;
        type Event = AccountEvent;
        type Error = Never;

        fn handle(&self, cents: &u64) -> Result<Vec<AccountEvent>, Never> {
            self.0.handle(cents)
        }

        fn apply(&mut self, event: &AccountEvent) {
            match event {
                AccountEvent::Fee { cents } => self.0.cents += cents,
                AccountEvent::Opened { owner } if owner == "panic" => panic!("cannot open"),
                other => self.0.apply(other),
            }
        }
    }

    #[test]
    fn a_changed_apply_is_reported_as_a_divergence() {
        let report = ReplayCheck::<Buggy>::new()
            .upcasters(upcasters())
            .run_file(GOLDEN)
            .unwrap();
        assert!(!report.is_ok());
        let problems: Vec<_> = report.problems().collect();
        assert_eq!(problems.len(), 2, "{report}");
        assert_eq!(
            problems[0].outcome,
            Outcome::Diverged {
                at: "$.cents".into(),
                expected: json!(190),
                actual: json!(192),
            }
        );
        let table = report.to_string();
        assert!(
            table.contains(
                "acc-1       5       4        5  DIVERGED at $.cents: expected 190, got 192"
            ),
            "{table}"
        );
    }

    #[test]
    fn failures_are_reported_per_actor() {
        let line = |text: &str| history::parse_line(text).unwrap().unwrap();
        let lines = vec![
            // Upcast needed, no upcaster registered for it.
            line(
                r#"{"id":"0190a5c8-3b2e-7c4d-8e5f-000000000001","type":"Deposited","actor":"a","v":1,"sv":2,"time":"2024-07-01T12:00:00Z","data":{"Deposited":{"cents":1}}}"#,
            ),
            // `apply` panics.
            line(
                r#"{"id":"0190a5c8-3b2e-7c4d-8e5f-000000000002","type":"Opened","actor":"b","v":1,"time":"2024-07-01T12:00:00Z","data":{"Opened":{"owner":"panic"}}}"#,
            ),
            // Versions go backwards.
            line(
                r#"{"id":"0190a5c8-3b2e-7c4d-8e5f-000000000003","type":"Opened","actor":"c","v":2,"time":"2024-07-01T12:00:00Z","data":{"Opened":{"owner":"x"}}}"#,
            ),
            line(
                r#"{"id":"0190a5c8-3b2e-7c4d-8e5f-000000000004","type":"Opened","actor":"c","v":1,"time":"2024-07-01T12:00:00Z","data":{"Opened":{"owner":"x"}}}"#,
            ),
            line(r#"{"expect":{"actor":"d","state":{}}}"#),
        ];
        let report = ReplayCheck::<Buggy>::new().run(lines);
        let outcomes: Vec<String> = report
            .actors
            .iter()
            .map(|a| a.outcome.to_string())
            .collect();
        assert!(
            outcomes[0].contains(
                "FAILED: stored event 0190a5c8-3b2e-7c4d-8e5f-000000000001 (version 1, type Deposited at schema version 2): event type Deposited is stored at schema version 2, newer than this code's 1"
            ),
            "{outcomes:?}"
        );
        assert_eq!(outcomes[1], "PANICKED: cannot open");
        assert!(
            outcomes[2].contains("version 1 after version 2"),
            "{outcomes:?}"
        );
        assert_eq!(
            outcomes[3],
            "FAILED: expected, but no events in the history"
        );
    }
}

/// A model that declares the account's event versions is accepted with the matching upcasters
/// and refused, naming the event, when they disagree.
#[cfg(feature = "model")]
#[test]
fn a_model_checks_its_event_versions_against_the_upcasters() {
    use aether_model::{Format, Model};
    use aether_runtime::LoadModelError;

    let model = |deposited_version: u32| {
        let text = format!(
            r"
name: bank
contexts:
  - name: accounts
    actors:
      - {{ name: Teller, issues: [Open, Deposit, ChargeFee] }}
    aggregates:
      - name: account
        commands:
          - {{ name: Open, emits: [Opened] }}
          - {{ name: Deposit, emits: [Deposited] }}
          - {{ name: ChargeFee, emits: [Fee] }}
    events:
      - name: Opened
        formerly: [{{ name: Created }}]
      - name: Deposited
        version: {deposited_version}
        previous: [{previous}]
        formerly: [{{ name: DepositedWithFee }}]
      - name: Fee
",
            previous = (1..deposited_version)
                .map(|v| format!("{{ version: {v} }}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        Model::parse(&text, Format::Yaml).unwrap()
    };
    let runtime = |upcasters| {
        Runtime::<Account>::builder(Arc::new(InMemoryEventStore::new()))
            .upcasters(upcasters)
            .build()
    };
    runtime(upcasters()).load_model(&model(3)).unwrap();

    let error = runtime(upcasters()).load_model(&model(4)).unwrap_err();
    assert_eq!(
        error.to_string(),
        "the model and the runtime's upcasters disagree about event `Deposited`: the model is at version 4, the upcasters at version 3"
    );
    let without_rename = Upcasters::new()
        .rename_field("Deposited", 1, "amount", "cents")
        .add_field("Deposited", 2, "currency", "EUR")
        .rename_type("DepositedWithFee", 1, "Deposited", 3);
    match runtime(without_rename).load_model(&model(3)) {
        Err(LoadModelError::Upcasters { event, problem }) => {
            assert_eq!(event, "Opened");
            assert_eq!(
                problem,
                "no upcaster is registered for `Created` from version 1"
            );
        }
        other => panic!("{other:?}"),
    }
}
