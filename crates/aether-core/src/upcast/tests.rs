//! The upcasters' unit tests and proptests.

// Test code: a failed expectation panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proptest::prelude::*;
use serde::{Deserialize, Serialize};

use super::*;
use crate::wire;

#[derive(Debug, Serialize, Deserialize, PartialEq)]
enum V1 {
    Deposited { amount: u64 },
    Closed,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
enum Current {
    MoneyIn { cents: u64, currency: String },
    Closed { reason: String },
    Fee { cents: u64 },
}

fn stored(event_type: &str, version: u32, payload: &impl Serialize) -> Event {
    Event::builder("acc-1", event_type)
        .version(4)
        .schema_version(version)
        .payload(payload)
        .correlation_id("c-1")
        .build()
        .unwrap()
}

fn all(upcasters: &Upcasters, event: Event) -> Vec<Event> {
    upcasters.upcast(event).unwrap().collect()
}

/// The runtime's tagged enum form: a field rename, an added field and a type rename, each one
/// line, then typed decoding of the result.
#[test]
fn one_line_steps_through_the_enum_tag() {
    let upcasters = Upcasters::new()
        .rename_field("Deposited", 1, "amount", "cents")
        .add_field("Deposited", 2, "currency", "EUR")
        .rename_type("Deposited", 3, "MoneyIn", 1)
        .add_field("Closed", 1, "reason", "unknown");
    upcasters.check().unwrap();
    assert_eq!(upcasters.current_version("Deposited"), 4);
    assert_eq!(upcasters.current_version("MoneyIn"), 1);
    assert_eq!(upcasters.current_version("Closed"), 2);

    let old = stored("Deposited", 1, &V1::Deposited { amount: 5 });
    let out = all(&upcasters, old.clone());
    assert_eq!(out.len(), 1);
    let e = &out[0];
    assert_eq!((e.event_type(), e.schema_version()), ("MoneyIn", 1));
    assert_eq!(
        (e.id(), e.version(), e.timestamp(), e.metadata()),
        (old.id(), old.version(), old.timestamp(), old.metadata())
    );
    assert_eq!(
        e.decode::<Current>().unwrap(),
        Current::MoneyIn {
            cents: 5,
            currency: "EUR".into()
        }
    );
    // A unit variant becomes a struct variant with the added field.
    let closed = all(&upcasters, stored("Closed", 1, &V1::Closed));
    assert_eq!(
        closed[0].decode::<Current>().unwrap(),
        Current::Closed {
            reason: "unknown".into()
        }
    );
}

/// A plain struct payload (no tag) works with the same helpers.
#[test]
fn plain_struct_payloads() {
    #[derive(Serialize)]
    struct Old {
        amount: u64,
    }
    #[derive(Deserialize, Debug, PartialEq)]
    struct New {
        cents: u64,
    }
    let upcasters = Upcasters::new().rename_field("Deposited", 1, "amount", "cents");
    let out = all(&upcasters, stored("Deposited", 1, &Old { amount: 9 }));
    assert_eq!(out[0].decode::<New>().unwrap(), New { cents: 9 });
    assert_eq!(out[0].schema_version(), 2);
}

/// A current event passes untouched: the same value, not a copy.
#[test]
fn current_events_are_not_copied() {
    let upcasters = Upcasters::new().add_field("Other", 1, "x", 1);
    let event = stored("Deposited", 1, &V1::Closed);
    let out = all(&upcasters, event.clone());
    assert_eq!(out, vec![event.clone()]);
    assert!(upcasters.is_current(&event));
    assert!(Upcasters::new().is_current(&event));
}

/// A split: one stored event becomes two of other types, in order, with the stored event's id
/// and version.
#[test]
fn a_split_into_two_types() {
    let upcasters = Upcasters::new().split("DepositedWithFee", 1, |shape| {
        let cents = shape.field("cents").cloned().unwrap_or(Value::from(0));
        let fee = shape.field("fee").cloned().unwrap_or(Value::from(0));
        Ok(vec![
            EventShape::new(
                "MoneyIn",
                1,
                Value::Map(vec![(
                    "MoneyIn".into(),
                    Value::Map(vec![
                        ("cents".into(), cents),
                        ("currency".into(), "EUR".into()),
                    ]),
                )]),
            ),
            EventShape::new(
                "Fee",
                1,
                Value::Map(vec![(
                    "Fee".into(),
                    Value::Map(vec![("cents".into(), fee)]),
                )]),
            ),
        ])
    });
    #[derive(Serialize)]
    enum Old {
        DepositedWithFee { cents: u64, fee: u64 },
    }
    let event = stored(
        "DepositedWithFee",
        1,
        &Old::DepositedWithFee { cents: 100, fee: 3 },
    );
    let out = all(&upcasters, event.clone());
    let decoded: Vec<Current> = out.iter().map(|e| e.decode().unwrap()).collect();
    assert_eq!(
        decoded,
        vec![
            Current::MoneyIn {
                cents: 100,
                currency: "EUR".into()
            },
            Current::Fee { cents: 3 }
        ]
    );
    assert!(out.iter().all(|e| e.id() == event.id() && e.version() == 4));
}

#[test]
fn gaps_newer_events_and_duplicates_are_named() {
    let upcasters = Upcasters::new()
        .add_field("Deposited", 2, "currency", "EUR")
        .add_field("Deposited", 2, "currency", "USD");
    let error = upcasters.check().unwrap_err();
    assert_eq!(
        error.to_string(),
        "two upcasters for event type Deposited from schema version 2"
    );
    let upcasters = Upcasters::new().add_field("Deposited", 2, "currency", "EUR");
    assert_eq!(
        upcasters.check().unwrap_err().to_string(),
        "no upcaster for event type Deposited from schema version 1 (current version 3)"
    );
    let error = upcasters
        .upcast(stored("Deposited", 1, &V1::Closed))
        .unwrap_err();
    assert!(
        matches!(
            error,
            UpcastError::MissingStep {
                from: 1,
                current: 3,
                ..
            }
        ),
        "{error}"
    );
    let error = upcasters
        .upcast(stored("Deposited", 5, &V1::Closed))
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "event type Deposited is stored at schema version 5, newer than this code's 3: deploy the code (and upcasters) that wrote it"
    );
    // Without any upcaster, an event above version 1 is newer too.
    assert!(matches!(
        Upcasters::new().upcast(stored("X", 2, &1)),
        Err(UpcastError::Newer {
            version: 2,
            current: 1,
            ..
        })
    ));
}

/// Hostile steps: a panic, an error, no progress, a loop through types, an explosion. Each is a
/// clear error, returned at once.
#[test]
fn hostile_steps_are_errors_not_hangs() {
    let event = || stored("A", 1, &V1::Closed);
    let panics = Upcasters::new().step("A", 1, |_| panic!("boom in step"));
    let error = panics.upcast(event()).unwrap_err();
    assert_eq!(
        error.to_string(),
        "the upcaster for event type A from schema version 1 panicked: boom in step"
    );

    let fails = Upcasters::new().step("A", 1, |_| Err("no amount".into()));
    assert!(matches!(
        fails.upcast(event()),
        Err(UpcastError::Failed { from: 1, .. })
    ));

    let stuck = Upcasters::new().split("A", 1, |shape| Ok(vec![shape]));
    assert!(matches!(
        stuck.upcast(event()),
        Err(UpcastError::NoProgress { from: 1, to: 1, .. })
    ));

    let looping = Upcasters::new()
        .rename_type("A", 1, "B", 1)
        .rename_type("B", 1, "A", 1);
    assert!(matches!(
        looping.upcast(event()),
        Err(UpcastError::Looped { .. })
    ));

    let explodes = Upcasters::new().split("A", 1, |shape| {
        Ok((0..MAX_EVENTS + 1)
            .map(|_| EventShape::new("B", 1, shape.data.clone()))
            .collect())
    });
    assert!(matches!(
        explodes.upcast(event()),
        Err(UpcastError::TooManyEvents { .. })
    ));

    let no_fields = Upcasters::new().add_field("A", 1, "x", 1);
    let error = no_fields.upcast(stored("A", 1, &7u8)).unwrap_err();
    assert!(error.to_string().contains("has no named fields"), "{error}");

    let garbage = Event::builder("a", "A")
        .encoded_payload(Payload::from_encoded(vec![0x92, 0x01]))
        .build()
        .unwrap();
    assert!(matches!(
        Upcasters::new().add_field("A", 1, "x", 1).upcast(garbage),
        Err(UpcastError::Undecodable { .. })
    ));
}

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Nil),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        "[a-z]{0,8}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(("[a-z]{1,6}", inner), 0..4).prop_map(|entries| {
                Value::Map(
                    entries
                        .into_iter()
                        .map(|(k, v)| (Value::from(k), v))
                        .collect(),
                )
            }),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Upcast, then encode on the wire and decode: the same events; upcasting them again
    /// changes nothing (they are current).
    #[test]
    fn upcast_then_encode_is_stable(fields in prop::collection::btree_map("[a-z]{1,6}", value(), 0..6), tagged in any::<bool>()) {
        prop_assume!(!fields.contains_key("added"));
        let inner = Value::Map(fields.into_iter().map(|(k, v)| (Value::from(k), v)).collect());
        let data = if tagged { Value::Map(vec![("T".into(), inner)]) } else { inner };
        let mut bytes = Vec::new();
        rmpv::encode::write_value(&mut bytes, &data).unwrap();
        let event = Event::builder("a", "T")
            .encoded_payload(Payload::from_encoded(bytes))
            .build()
            .unwrap();
        let upcasters = Upcasters::new()
            .rename_field("T", 1, "a", "b")
            .add_field("T", 2, "added", "x")
            .remove_field("T", 3, "c")
            .rename_type("T", 4, "U", 1);
        let out: Vec<Event> = upcasters.upcast(event).unwrap().collect();
        prop_assert_eq!(out.len(), 1);
        let e = &out[0];
        let back = wire::decode_event(&wire::encode_event(e).unwrap()).unwrap();
        prop_assert_eq!(&back, e);
        let again: Vec<Event> = upcasters.upcast(back).unwrap().collect();
        prop_assert_eq!(&again, &out);
        let shape = EventShape::new("U", 1, e.data().unwrap());
        prop_assert_eq!(shape.field("added").and_then(Value::as_str), Some("x"));
        prop_assert!(shape.field("c").is_none());
    }
}
