//! The wire format's unit tests and proptests.

use self::time::{system_time, unix_parts};
use super::*;
use proptest::prelude::*;
use std::time::{Duration, UNIX_EPOCH};

fn encode(e: &Event) -> Vec<u8> {
    encode_event(e).unwrap_or_else(|err| panic!("{err}"))
}

fn decode_err(bytes: &[u8]) -> String {
    match decode_event(bytes) {
        Ok(e) => panic!("decoded {e:?}"),
        Err(err) => {
            assert!(err.is_decode());
            err.to_string()
        }
    }
}

/// A hand-built event map: the entries are given pre-encoded.
fn map(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = vec![];
    rmp::encode::write_map_len(&mut out, entries.len() as u32).unwrap();
    for (k, v) in entries {
        rmp::encode::write_str(&mut out, k).unwrap();
        out.extend_from_slice(v);
    }
    out
}

fn str_value(s: &str) -> Vec<u8> {
    let mut out = vec![];
    rmp::encode::write_str(&mut out, s).unwrap();
    out
}

const ID_BIN: [u8; 18] = [
    0xc4, 16, 0x01, 0x90, 0x00, 0x00, 0x00, 0x00, 0x70, 0x00, 0x80, 0x00, 0, 0, 0, 0, 0, 1,
];
const TIME_64: [u8; 10] = [0xd7, 0xff, 0, 0, 0, 0, 0x65, 0x53, 0xf1, 0x00];

fn valid_entries() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("id", ID_BIN.to_vec()),
        ("type", str_value("T")),
        ("actor", str_value("a")),
        ("v", vec![3]),
        ("time", TIME_64.to_vec()),
    ]
}

fn build(entries: &[(&'static str, Vec<u8>)]) -> Vec<u8> {
    let borrowed: Vec<(&str, &[u8])> = entries.iter().map(|(k, v)| (*k, &v[..])).collect();
    map(&borrowed)
}

#[test]
fn round_trips_and_refuses_garbage() {
    let event = Event::new("a", "T", 3, &("x", 1)).unwrap();
    let mut buf = vec![7];
    encode_event_into(&event, &mut buf).unwrap();
    assert_eq!(buf[1..], encode(&event));
    assert_eq!(decode_event(&buf[1..]).unwrap(), event);
    let err = decode_event(b"not an event").unwrap_err();
    assert!(err.to_string().contains("decode `Event`"), "{err}");
}

#[test]
fn the_layout_is_the_documented_one() {
    let event = Event::builder("a", "T")
        .id(Uuid::from_bytes(ID_BIN[2..].try_into().unwrap()))
        .version(3)
        .timestamp(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        .build()
        .unwrap();
    let mut expected = vec![0x85];
    expected.extend(str_value("id"));
    expected.extend(ID_BIN);
    expected.extend(str_value("type"));
    expected.extend(str_value("T"));
    expected.extend(str_value("actor"));
    expected.extend(str_value("a"));
    expected.extend(str_value("v"));
    expected.push(3);
    expected.extend(str_value("time"));
    expected.extend(TIME_64);
    assert_eq!(
        encode(&event),
        expected,
        "nil payload and no metadata: 5 keys"
    );
    assert_eq!(decode_event(&expected).unwrap(), event);
    assert_eq!(decode_event(&build(&valid_entries())).unwrap(), event);

    let full = event
        .to_builder()
        .payload(&1u8)
        .correlation_id("c")
        .meta("k", "v")
        .build()
        .unwrap();
    let mut expected_full = expected.clone();
    expected_full[0] = 0x87;
    expected_full.extend(str_value("data"));
    expected_full.extend([0xc4, 1, 1]);
    expected_full.extend(str_value("meta"));
    expected_full.push(0x82);
    for s in ["correlation_id", "c", "k", "v"] {
        expected_full.extend(str_value(s));
    }
    assert_eq!(encode(&full), expected_full);
}

/// The annotated example of `docs/nats-layout.md`, "Event encoding".
#[test]
fn the_documented_example_is_exact() {
    #[derive(serde::Serialize)]
    struct Placed {
        total: f64,
    }
    let event = Event::builder("order-1", "OrderPlaced")
        .id(Uuid::parse_str("0190a5c8-3b2e-7c4d-8e5f-0123456789ab").unwrap())
        .timestamp(UNIX_EPOCH + Duration::new(1_719_835_200, 123_456_789))
        .payload(&Placed { total: 99.5 })
        .correlation_id("c-1")
        .build()
        .unwrap();
    let documented = concat!(
        "87a26964c4100190a5c83b2e7c4d8e5f0123456789aba474797065ab4f72646572506c61636564a5616374",
        "6f72a76f726465722d31a17601a474696d65d7ff1d6f345466829a40a464617461c41081a5746f74616c",
        "cb4058e00000000000a46d65746181ae636f7272656c6174696f6e5f6964a3632d31",
    );
    let hex: String = encode(&event).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, documented);
}

#[test]
fn timestamps_use_the_64_bit_form_when_it_fits_else_96() {
    let at = |secs: i64, nanos: u32| {
        let e = Event::builder("a", "T")
            .timestamp(system_time(secs, nanos).unwrap())
            .build()
            .unwrap();
        let bytes = encode(&e);
        assert_eq!(decode_event(&bytes).unwrap(), e);
        let pos = bytes.windows(5).position(|w| w == b"\xa4time").unwrap();
        bytes[pos + 5..].to_vec()
    };
    let sixty_four = at(1, 999_999_999);
    assert_eq!(sixty_four[..2], [0xd7, 0xff]);
    assert_eq!(
        u64::from_be_bytes(sixty_four[2..10].try_into().unwrap()),
        (999_999_999 << 34) | 1
    );
    assert_eq!(at(0, 0)[..2], [0xd7, 0xff]);
    assert_eq!(at((1 << 34) - 1, 5)[..2], [0xd7, 0xff]);
    for (secs, nanos) in [(1 << 34, 0), (-1, 5), (i64::MIN, 1), (i64::MAX, 0)] {
        let bytes = at(secs, nanos);
        assert_eq!(bytes[..3], [0xc7, 12, 0xff], "{secs}");
        assert_eq!(u32::from_be_bytes(bytes[3..7].try_into().unwrap()), nanos);
        assert_eq!(i64::from_be_bytes(bytes[7..15].try_into().unwrap()), secs);
    }
    // Before 1970 the seconds round down and the nanoseconds count up from there.
    let before = UNIX_EPOCH - Duration::from_nanos(1);
    assert_eq!(unix_parts(before), Some((-1, 999_999_999)));
    assert_eq!(system_time(-1, 999_999_999), Some(before));
}

#[test]
fn reads_the_32_bit_timestamp_and_the_string_id() {
    let mut entries = valid_entries();
    entries[0].1 = str_value("01900000-0000-7000-8000-000000000001");
    entries[4].1 = vec![0xd6, 0xff, 0x65, 0x53, 0xf1, 0x00];
    let lower = decode_event(&build(&entries)).unwrap();
    entries[0].1 = str_value(&"01900000-0000-7000-8000-000000000001".to_uppercase());
    let upper = decode_event(&build(&entries)).unwrap();
    let canonical = decode_event(&build(&valid_entries())).unwrap();
    assert_eq!(lower, canonical);
    assert_eq!(upper, canonical);
}

#[test]
fn optional_fields_may_be_nil_and_unknown_keys_are_skipped() {
    let mut entries = valid_entries();
    entries.push(("data", vec![0xc0]));
    entries.push(("meta", vec![0xc0]));
    entries.push(("specversion", str_value("1.0")));
    // An unknown key holding every kind of value, nested.
    let mut nested = vec![0x93, 0xcb];
    nested.extend(1.5f64.to_be_bytes());
    nested.extend([0x81, 0xa1, b'k', 0xd4, 0x05, 0x00]);
    nested.extend([0xdc, 0x00, 0x02, 0xc3, 0xc4, 0x01, 0xff]);
    entries.push(("x-future", nested));
    entries.push(("meta2", vec![0x80]));
    let event = decode_event(&build(&entries)).unwrap();
    assert_eq!(event, decode_event(&build(&valid_entries())).unwrap());
    assert!(event.data().unwrap().is_nil());
    assert!(event.metadata().is_empty());
    // An empty meta map is no metadata either.
    let mut entries = valid_entries();
    entries.push(("meta", vec![0x80]));
    assert!(
        decode_event(&build(&entries))
            .unwrap()
            .metadata()
            .is_empty()
    );
}

#[test]
fn errors_name_the_field() {
    let with = |key: &'static str, value: Vec<u8>| {
        let mut entries = valid_entries();
        entries.retain(|(k, _)| *k != key);
        entries.push((key, value));
        build(&entries)
    };
    let without = |key: &str| {
        let mut entries = valid_entries();
        entries.retain(|(k, _)| *k != key);
        build(&entries)
    };
    for key in ["id", "type", "actor", "v", "time"] {
        let err = decode_err(&without(key));
        assert!(err.contains(&format!("field `{key}`: missing")), "{err}");
    }
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            with("id", vec![0xc4, 2, 1, 2]),
            "field `id`: a bin of 2 bytes",
        ),
        (with("id", str_value("not-a-uuid")), "field `id`: the str"),
        (
            with("id", str_value("0190000000007000800000000000000100000")),
            "field `id`: the str",
        ),
        (with("id", vec![0x01]), "field `id`: expected bin 16"),
        (
            with("type", vec![0x01]),
            "field `type`: expected a str, found an integer",
        ),
        (
            with("actor", vec![0xa2, 0xff, 0xfe]),
            "field `actor`: a str that is not UTF-8",
        ),
        (
            with("v", str_value("1")),
            "field `v`: expected an unsigned integer",
        ),
        (
            with("v", vec![0xff]),
            "field `v`: expected an unsigned integer, found a negative",
        ),
        (
            with("time", vec![0x01]),
            "field `time`: expected the timestamp extension",
        ),
        (
            with("time", vec![0xd6, 0x05, 0, 0, 0, 0]),
            "field `time`: expected the timestamp extension (type -1), found extension type 5",
        ),
        (
            with("time", vec![0xd7, 0xff, 0xff, 0xff, 0xff, 0xfc, 0, 0, 0, 0]),
            "field `time`: 1073741823 nanoseconds",
        ),
        (
            with("time", vec![0xc7, 2, 0xff, 0, 0]),
            "field `time`: a timestamp of 2 bytes",
        ),
        (
            with("data", str_value("x")),
            "field `data`: expected a bin or nil",
        ),
        (
            with("meta", vec![0x91, 0xa0]),
            "field `meta`: expected a map or nil",
        ),
        (
            with("meta", vec![0x81, 0xa1, b'k', 0x01]),
            "field `meta`: expected a str",
        ),
        (
            with(
                "meta",
                [
                    vec![0x82],
                    str_value("k"),
                    str_value("1"),
                    str_value("k"),
                    str_value("2"),
                ]
                .concat(),
            ),
            "field `meta`: the key \"k\" is given twice",
        ),
        (with("id", vec![0xc4, 20, 1]), "field `id`: truncated"),
    ];
    for (bytes, expected) in cases {
        let err = decode_err(&bytes);
        assert!(
            err.contains(expected),
            "{err:?} should contain {expected:?}"
        );
    }
    let mut twice = valid_entries();
    twice.push(("v", vec![4]));
    assert!(decode_err(&build(&twice)).contains("field `v`: given twice"));
    let mut trailing = build(&valid_entries());
    trailing.push(0xc0);
    assert!(decode_err(&trailing).contains("1 trailing bytes after the event"));
    assert!(decode_err(&[0x91, 0xc0]).contains("an event is a MessagePack map, found an array"));
    assert!(decode_err(&[0x81, 0x01, 0x01]).contains("keys are strings"));
    assert!(decode_err(&[]).contains("truncated"));
    assert!(decode_err(&[0xdf, 0xff, 0xff, 0xff, 0xff]).contains("truncated"));
    let mut huge = valid_entries();
    huge.push(("x", vec![0xdd, 0xff, 0xff, 0xff, 0xff, 0xc0]));
    assert!(decode_err(&build(&huge)).contains("truncated"));
}

#[test]
fn reserved_extra_keys_are_refused_on_encode() {
    for key in ["correlation_id", "causation_id"] {
        let e = Event::builder("a", "T").meta(key, "x").build().unwrap();
        let mut buf = vec![1, 2];
        let err = encode_event_into(&e, &mut buf).unwrap_err();
        assert!(!err.is_decode());
        assert!(err.to_string().contains("field `meta`"), "{err}");
        assert_eq!(buf, [1, 2], "nothing is left behind");
    }
}

#[test]
fn a_typical_envelope_is_small() {
    #[derive(serde::Serialize)]
    struct Line {
        sku: String,
        qty: u32,
        price: f64,
    }
    #[derive(serde::Serialize)]
    struct OrderPlaced {
        customer: String,
        lines: Vec<Line>,
        total: f64,
        currency: String,
    }
    let payload = OrderPlaced {
        customer: "customer-1234".into(),
        lines: (0..3)
            .map(|i| Line {
                sku: format!("sku-{i:05}"),
                qty: i + 1,
                price: 19.99,
            })
            .collect(),
        total: 119.94,
        currency: "EUR".into(),
    };
    let event = Event::builder("order-42", "OrderPlaced")
        .version(7)
        .payload(&payload)
        .build()
        .unwrap();
    let bytes = encode(&event);
    let content = event.payload().len() + "order-42".len() + "OrderPlaced".len();
    let envelope = bytes.len() - content;
    // For comparison: the 0.1 format (rmp-serde's derived encoding of `Event`).
    let old = rmp_serde::to_vec_named(&event).unwrap().len();
    println!(
        "{} bytes: payload {} + actor and type {} + envelope {envelope} (0.1 format: {old})",
        bytes.len(),
        event.payload().len(),
        content - event.payload().len(),
    );
    assert_eq!(envelope, 60);
}

fn time_strategy() -> impl Strategy<Value = SystemTime> {
    prop_oneof![
        // Around now, in the 64-bit form.
        (0i64..(1 << 34), 0u32..1_000_000_000),
        // Anywhere, including before 1970 and far future.
        (any::<i64>(), 0u32..1_000_000_000),
    ]
    .prop_filter_map("not representable here", |(secs, nanos)| {
        let after = Duration::new(secs.unsigned_abs(), nanos);
        if secs >= 0 {
            UNIX_EPOCH.checked_add(after)
        } else {
            // secs < 0: secs.unsigned_abs() whole seconds before, then `nanos` forward.
            UNIX_EPOCH
                .checked_sub(Duration::from_secs(secs.unsigned_abs() - 1))
                .and_then(|t| t.checked_sub(Duration::from_secs(1)))
                .and_then(|t| t.checked_add(Duration::from_nanos(u64::from(nanos))))
        }
    })
}

fn metadata_strategy() -> impl Strategy<Value = Metadata> {
    (
        proptest::option::of(".*"),
        proptest::option::of(".*"),
        proptest::collection::btree_map(".*", ".*", 0..4),
    )
        .prop_map(|(correlation_id, causation_id, mut extra)| {
            extra.remove(CORRELATION_ID);
            extra.remove(CAUSATION_ID);
            Metadata {
                correlation_id,
                causation_id: causation_id.map(Into::into),
                extra,
            }
        })
}

fn event_strategy() -> impl Strategy<Value = Event> {
    (
        any::<u128>(),
        ".*",
        ".*",
        any::<u64>(),
        time_strategy(),
        prop_oneof![
            Just(vec![NIL]),
            proptest::collection::vec(any::<u8>(), 0..300)
        ],
        metadata_strategy(),
    )
        .prop_map(|(id, actor, event_type, version, time, payload, meta)| {
            Event::builder(actor, event_type)
                .id(Uuid::from_u128(id))
                .version(version)
                .timestamp(time)
                .encoded_payload(Payload::from_encoded(payload))
                .metadata(meta)
                .build()
                .unwrap()
        })
}

proptest! {
    #[test]
    fn every_event_round_trips(event in event_strategy()) {
        let bytes = encode(&event);
        prop_assert_eq!(decode_event(&bytes).unwrap(), event.clone());
        // Time parts survive the conversion both ways.
        let (secs, nanos) = unix_parts(event.timestamp()).unwrap();
        prop_assert_eq!(system_time(secs, nanos), Some(event.timestamp()));
    }

    #[test]
    fn the_envelope_is_at_most_64_bytes_for_short_fields(
        actor in "[a-z0-9-]{1,31}",
        event_type in "[A-Za-z]{1,31}",
        version in 1u64..(1 << 32),
        secs in 0u64..(1 << 34),
        nanos in 0u32..1_000_000_000,
        payload in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let event = Event::builder(actor.as_str(), event_type.as_str())
            .version(version)
            .timestamp(UNIX_EPOCH + Duration::new(secs, nanos))
            .encoded_payload(Payload::from_encoded(payload.clone()))
            .build()
            .unwrap();
        let envelope = encode(&event).len() - payload.len() - actor.len() - event_type.len();
        prop_assert!(envelope <= 64, "{} bytes", envelope);
    }

    #[test]
    fn decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = decode_event(&bytes);
    }

    #[test]
    fn damaged_events_never_panic(event in event_strategy(), at in any::<usize>(), byte in any::<u8>()) {
        let mut bytes = encode(&event);
        let at = at % bytes.len();
        bytes[at] = byte;
        let _ = decode_event(&bytes);
        let _ = decode_event(&bytes[..at]);
    }
}

#[test]
fn a_shared_decode_slices_the_payload_out_of_the_message() {
    let event = Event::new("a-1", "Placed", 3, &("memo", 42u64)).unwrap();
    let bytes = Bytes::from(encode_event(&event).unwrap());
    let shared = decode_event_shared(&bytes).unwrap();
    assert_eq!(shared, decode_event(&bytes).unwrap());
    assert_eq!(shared, event);
    let payload = shared.payload().as_bytes();
    let range = bytes.as_ptr() as usize..bytes.as_ptr() as usize + bytes.len();
    assert!(
        range.contains(&(payload.as_ptr() as usize)),
        "the payload points into the message, not at a copy"
    );
    // Garbage is an error, as with the copying decode.
    assert!(decode_event_shared(&Bytes::from_static(b"not an event")).is_err());
}

/// `sv`: written only when not 1, right after `v`; read from any unsigned form or nil (1);
/// 0, a negative number, a str and a second `sv` are errors naming the field.
#[test]
fn the_schema_version_is_optional_and_checked() {
    let plain = Event::builder("a", "T").build().unwrap();
    assert!(!encode(&plain).windows(3).any(|w| w == [0xa2, b's', b'v']));
    let v3 = plain.to_builder().schema_version(3).build().unwrap();
    let bytes = encode(&v3);
    assert!(
        bytes.windows(4).any(|w| w == [0xa2, b's', b'v', 3]),
        "{bytes:02x?}"
    );
    assert_eq!(decode_event(&bytes).unwrap().schema_version(), 3);
    assert_eq!(decode_event(&bytes).unwrap(), v3);

    let with = |value: Vec<u8>| {
        let mut entries = valid_entries();
        entries.push(("sv", value));
        build(&entries)
    };
    assert_eq!(decode_event(&with(vec![0xc0])).unwrap().schema_version(), 1);
    assert_eq!(
        decode_event(&with(vec![0xd0, 7])).unwrap().schema_version(),
        7
    );
    assert_eq!(
        decode_event(&with(vec![0xce, 0xff, 0xff, 0xff, 0xff]))
            .unwrap()
            .schema_version(),
        u32::MAX
    );
    for (value, says) in [
        (vec![0x00], "field `sv`: schema version 0"),
        (
            vec![0xff],
            "field `sv`: expected an unsigned integer, found a negative one",
        ),
        (str_value("2"), "field `sv`: expected an unsigned integer"),
        (
            vec![0xcf, 0, 0, 0, 1, 0, 0, 0, 0],
            "field `sv`: a schema version above 2^32-1",
        ),
    ] {
        let err = decode_err(&with(value));
        assert!(err.contains(says), "{err}");
    }
    let mut entries = valid_entries();
    entries.push(("sv", vec![2]));
    entries.push(("sv", vec![2]));
    assert!(decode_err(&build(&entries)).contains("field `sv`: given twice"));
    let zero = plain.to_builder().schema_version(0).build().unwrap();
    assert!(encode_event(&zero).is_err());
    assert!(zero.validate().is_err());
}
