//! Golden vectors of the event wire format (`docs/nats-layout.md`, "Event encoding").
//!
//! `tests/wire/<name>.msgpack` holds an encoded event and `tests/wire/<name>.json` what it means:
//! `id` (canonical string), `type`, `actor`, `v`, `sv` (only when not 1), `time` (RFC 3339 with nanoseconds) and
//! `time_unix` (`seconds` rounded down, `nanos`), `data` (hex of the payload bytes),
//! `data_decoded` (the payload as JSON, when it is representable) and `meta`. Canonical vectors are
//! checked both ways (the event of the JSON encodes to exactly the bytes, the bytes decode to the
//! JSON); read-only vectors (other writers' choices: the id as a string, unknown keys, the 32-bit
//! timestamp) only decode. The files are committed; `write_golden_vectors` (ignored) wrote them
//! once and is kept to show where they came from.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aether_core::{Event, Payload, wire};
use serde_json::{Value as Json, json};
use uuid::Uuid;

/// Written by Aether: encoding the JSON's event gives exactly these bytes.
const CANONICAL: [&str; 6] = [
    "minimal",
    "full_metadata",
    "large_payload",
    "non_ascii_actor",
    "pre_1970",
    "schema_version",
];
/// Written by someone else: they decode to the JSON, and re-encode to the canonical form.
const READ_ONLY: [&str; 1] = ["id_as_string"];

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/wire")
}

fn read_vector(name: &str) -> (Vec<u8>, Json) {
    let bytes = std::fs::read(dir().join(format!("{name}.msgpack")))
        .unwrap_or_else(|e| panic!("{name}.msgpack: {e}"));
    let json = std::fs::read(dir().join(format!("{name}.json")))
        .unwrap_or_else(|e| panic!("{name}.json: {e}"));
    (bytes, serde_json::from_slice(&json).unwrap())
}

#[test]
fn canonical_vectors_encode_to_their_bytes_and_decode_to_their_json() {
    for name in CANONICAL {
        let (bytes, expected) = read_vector(name);
        let event = event_from_json(&expected);
        assert_eq!(
            hex(&wire::encode_event(&event).unwrap()),
            hex(&bytes),
            "{name}: encoding the JSON's event"
        );
        let decoded = wire::decode_event(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(event_to_json(&decoded), expected, "{name}: decoding");
        assert_eq!(decoded, event, "{name}");
    }
}

#[test]
fn read_only_vectors_decode_to_their_json() {
    for name in READ_ONLY {
        let (bytes, expected) = read_vector(name);
        let decoded = wire::decode_event(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(event_to_json(&decoded), expected, "{name}: decoding");
        let canonical = wire::encode_event(&decoded).unwrap();
        assert_ne!(canonical, bytes, "{name} is not in the canonical form");
        assert_eq!(wire::decode_event(&canonical).unwrap(), decoded, "{name}");
    }
}

#[test]
fn every_file_is_a_checked_vector() {
    let mut names: Vec<String> = std::fs::read_dir(dir())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut expected: Vec<String> = CANONICAL
        .iter()
        .chain(&READ_ONLY)
        .flat_map(|n| [format!("{n}.json"), format!("{n}.msgpack")])
        .collect();
    expected.sort();
    assert_eq!(names, expected);
}

#[test]
fn the_vectors_cover_what_they_are_named_after() {
    let event = |name| wire::decode_event(&read_vector(name).0).unwrap();
    assert!(event("minimal").data().unwrap().is_nil());
    assert!(event("minimal").metadata().is_empty());
    let full = event("full_metadata");
    assert!(full.metadata().correlation_id.is_some() && full.metadata().causation_id.is_some());
    assert!(full.metadata().extra.len() >= 2);
    assert!(
        full.version() > u64::from(u32::MAX),
        "the 64-bit integer form"
    );
    let large = read_vector("large_payload").0;
    assert!(event("large_payload").payload().len() > 65_535, "bin 32");
    assert!(large.len() > 64 * 1024);
    assert!(!event("non_ascii_actor").actor_id().is_ascii());
    assert!(
        event("pre_1970").timestamp() < UNIX_EPOCH,
        "the 96-bit form"
    );
    assert_eq!(event("minimal").schema_version(), 1, "absent: version 1");
    assert_eq!(event("schema_version").schema_version(), 3);
}

/// Writes the vectors. Run once, by hand: `cargo test -p aether-core --test wire -- --ignored`;
/// the files are then committed and the other tests only read them.
#[test]
#[ignore = "writes the golden vectors into tests/wire; they are committed, not regenerated"]
fn write_golden_vectors() {
    std::fs::create_dir_all(dir()).unwrap();
    let write = |name: &str, bytes: &[u8], event: &Event| {
        std::fs::write(dir().join(format!("{name}.msgpack")), bytes).unwrap();
        let text = serde_json::to_string_pretty(&event_to_json(event)).unwrap() + "\n";
        std::fs::write(dir().join(format!("{name}.json")), text).unwrap();
    };
    let at = |secs: i64, nanos: u32| system_time(secs, nanos).unwrap();
    let id = |s: &str| Uuid::parse_str(s).unwrap();

    let minimal = Event::builder("order-1", "OrderCreated")
        .id(id("0190a5c8-3b2e-7c4d-8e5f-0123456789ab"))
        .timestamp(at(1_719_835_200, 123_456_789))
        .build()
        .unwrap();

    let full_metadata = Event::builder("order-42", "OrderPlaced")
        .id(id("0190a5c8-3b2f-7a01-9b02-c3d4e5f60718"))
        .version((1 << 32) + 5)
        .timestamp(at(1_719_835_201, 5))
        .payload(&json!({ "customer": "c-7", "items": 3, "total": 99.5 }))
        .correlation_id("checkout-7")
        .causation_id("0190a5c8-3b2e-7c4d-8e5f-0123456789ab")
        .meta("tenant", "acme")
        .meta("trace-id", "4bf92f3577b34da6a3ce929d0e0e4736")
        .meta("user", "jürgen")
        .build()
        .unwrap();

    let rows: Vec<Json> = (0..880)
        .map(|i| {
            json!({
                "line": i,
                "sku": format!("sku-{i:05}"),
                "text": "forty characters of description text....",
                "qty": i % 7 + 1,
            })
        })
        .collect();
    let large_payload = Event::builder("report-2024", "ReportGenerated")
        .id(id("0190a5c8-3b30-7b11-8c22-d3e4f5061728"))
        .version(70_000)
        .timestamp(at(1_719_835_202, 999_999_999))
        .payload(&json!({ "rows": rows }))
        .build()
        .unwrap();
    assert!((65_536..70_000).contains(&large_payload.payload().len()));

    let non_ascii_actor = Event::builder("kunde-ü/🚀", "KundeAngelegt")
        .id(id("0190a5c8-3b31-7c21-8d32-e4f506172839"))
        .version(300)
        .timestamp(at(1_719_835_203, 0))
        .payload(&json!({ "name": "Jürgen Groß", "rocket": "🚀" }))
        .build()
        .unwrap();

    let pre_1970 = Event::builder("apollo-11", "EagleLanded")
        .id(id("00000000-0000-4000-8000-000000000011"))
        .timestamp(at(-14_182_940, 500_000_000))
        .payload(&json!({ "where": "Tranquility Base" }))
        .build()
        .unwrap();

    // An event whose payload shape is at schema version 3 (`sv`), the runtime's tagged form.
    let schema_version = Event::builder("account-7", "MoneyDeposited")
        .id(id("0190a5c8-3b33-7e41-8f52-061728394a5b"))
        .version(12)
        .schema_version(3)
        .timestamp(at(1_719_835_204, 250_000_000))
        .payload(&json!({ "MoneyDeposited": { "cents": 1250, "currency": "EUR" } }))
        .build()
        .unwrap();

    for (name, event) in [
        ("schema_version", &schema_version),
        ("minimal", &minimal),
        ("full_metadata", &full_metadata),
        ("large_payload", &large_payload),
        ("non_ascii_actor", &non_ascii_actor),
        ("pre_1970", &pre_1970),
    ] {
        write(name, &wire::encode_event(event).unwrap(), event);
    }

    // Another writer: the id as an upper-case string, the 32-bit timestamp form, the version in a
    // signed integer format, keys in another order, and unknown keys holding values of every shape.
    let id_as_string = Event::builder("order-7", "OrderPaid")
        .id(id("0190a5c8-3b32-7d31-8e42-f50617283940"))
        .version(200)
        .timestamp(at(1_700_000_000, 0))
        .payload(&json!({ "amount": 12.25, "method": "card" }))
        .correlation_id("checkout-9")
        .build()
        .unwrap();
    let mut b = vec![];
    let str = |b: &mut Vec<u8>, s: &str| rmp::encode::write_str(b, s).unwrap();
    rmp::encode::write_map_len(&mut b, 10).unwrap();
    str(&mut b, "specversion");
    str(&mut b, "1.0");
    str(&mut b, "time");
    b.extend([0xd6, 0xff]);
    b.extend(1_700_000_000u32.to_be_bytes());
    str(&mut b, "id");
    str(&mut b, "0190A5C8-3B32-7D31-8E42-F50617283940");
    str(&mut b, "source");
    str(&mut b, "python-client");
    str(&mut b, "actor");
    str(&mut b, "order-7");
    str(&mut b, "type");
    str(&mut b, "OrderPaid");
    str(&mut b, "x-future");
    rmp::encode::write_array_len(&mut b, 4).unwrap();
    rmp::encode::write_sint(&mut b, -1).unwrap();
    rmp::encode::write_map_len(&mut b, 1).unwrap();
    str(&mut b, "nested");
    rmp::encode::write_nil(&mut b).unwrap();
    rmp::encode::write_bin(&mut b, &[0xc1, 0xc1]).unwrap();
    rmp::encode::write_f64(&mut b, 2.5).unwrap();
    str(&mut b, "v");
    rmp::encode::write_i16(&mut b, 200).unwrap();
    str(&mut b, "data");
    rmp::encode::write_bin(&mut b, id_as_string.payload().as_bytes()).unwrap();
    str(&mut b, "meta");
    rmp::encode::write_map_len(&mut b, 1).unwrap();
    str(&mut b, "correlation_id");
    str(&mut b, "checkout-9");
    write("id_as_string", &b, &id_as_string);
}

/// The event a vector's JSON describes (from `time_unix`, `data` and `meta`).
fn event_from_json(j: &Json) -> Event {
    let s = |key: &str| j[key].as_str().unwrap_or_else(|| panic!("{key}: {j}"));
    let time = &j["time_unix"];
    let mut event = Event::builder(s("actor"), s("type"))
        .id(Uuid::parse_str(s("id")).unwrap())
        .version(j["v"].as_u64().unwrap())
        .schema_version(
            j.get("sv")
                .map_or(1, |v| u32::try_from(v.as_u64().unwrap()).unwrap()),
        )
        .timestamp(
            system_time(
                time["seconds"].as_i64().unwrap(),
                u32::try_from(time["nanos"].as_u64().unwrap()).unwrap(),
            )
            .unwrap(),
        )
        .encoded_payload(Payload::from_encoded(unhex(s("data"))));
    for (key, value) in j["meta"].as_object().unwrap() {
        let value = value.as_str().unwrap();
        event = match key.as_str() {
            "correlation_id" => event.correlation_id(value),
            "causation_id" => event.causation_id(value),
            _ => event.meta(key.as_str(), value),
        };
    }
    event.build().unwrap()
}

/// What a vector's JSON says about `event`.
fn event_to_json(event: &Event) -> Json {
    let (seconds, nanos) = unix_parts(event.timestamp());
    let meta = event.metadata();
    let mut meta_json = serde_json::Map::new();
    if let Some(c) = &meta.correlation_id {
        meta_json.insert("correlation_id".into(), c.as_str().into());
    }
    if let Some(c) = &meta.causation_id {
        meta_json.insert("causation_id".into(), c.as_str().into());
    }
    for (k, v) in &meta.extra {
        meta_json.insert(k.clone(), v.as_str().into());
    }
    let mut j = json!({
        "id": event.id().to_string(),
        "type": event.event_type(),
        "actor": event.actor_id(),
        "v": event.version(),
        "time": rfc3339(seconds, nanos),
        "time_unix": { "seconds": seconds, "nanos": nanos },
        "data": hex(event.payload().as_bytes()),
        "meta": meta_json,
    });
    if let Some(decoded) = event
        .data()
        .ok()
        .as_ref()
        .and_then(aether_core::history::to_plain_json)
    {
        j["data_decoded"] = decoded;
    }
    if event.schema_version() != 1 {
        j["sv"] = event.schema_version().into();
    }
    j
}

fn unix_parts(t: SystemTime) -> (i64, u32) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (i64::try_from(d.as_secs()).unwrap(), d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            let secs = -i64::try_from(d.as_secs()).unwrap();
            match d.subsec_nanos() {
                0 => (secs, 0),
                n => (secs - 1, 1_000_000_000 - n),
            }
        }
    }
}

fn system_time(secs: i64, nanos: u32) -> Option<SystemTime> {
    let whole = if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(secs.unsigned_abs()))?
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))?
    };
    whole.checked_add(Duration::from_nanos(u64::from(nanos)))
}

/// `seconds` since 1970 (rounded down) plus `nanos` as RFC 3339 in UTC with nine fraction digits.
fn rfc3339(seconds: i64, nanos: u32) -> String {
    let days = seconds.div_euclid(86_400);
    let of_day = seconds.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        of_day / 3_600,
        of_day % 3_600 / 60,
        of_day % 60
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn rfc3339_matches_known_dates() {
    assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000000000Z");
    assert_eq!(rfc3339(-1, 999_999_999), "1969-12-31T23:59:59.999999999Z");
    assert_eq!(rfc3339(951_782_400, 1), "2000-02-29T00:00:00.000000001Z");
    assert_eq!(rfc3339(-14_182_940, 0), "1969-07-20T20:17:40.000000000Z");
    assert_eq!(rfc3339(1_719_835_200, 0), "2024-07-01T12:00:00.000000000Z");
}
