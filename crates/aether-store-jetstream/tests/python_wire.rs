//! The event encoding is a contract, not a Rust detail: a Python client written from
//! `docs/nats-layout.md` alone (`tests/python/wire_client.py`, nats-py and msgpack) appends events
//! the store reads and continues, and reads back every field of events the store wrote.
//!
//! Needs the Python test packages (`cargo xtask python`); without them the test fails and says so.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aether_core::{Event, EventStore, Metadata};
use aether_store_jetstream::JetStreamEventStore;
use aether_testkit::nats::NatsServer;
use serde_json::{Value as Json, json};
use uuid::Uuid;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/wire_client.py");

/// Runs the client and returns the JSON line it printed last.
async fn python(args: &[&str]) -> Json {
    let mut cmd = aether_testkit::python::command(SCRIPT).unwrap_or_else(|e| panic!("{e}"));
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.args(args).output())
        .await
        .expect("wire_client.py finishes within a minute")
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "wire_client.py {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.trim_end().lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {last:?}"))
}

/// Seconds since 1970 (rounded down) and nanoseconds, as the timestamp extension has them.
fn unix(t: SystemTime) -> Json {
    let (seconds, nanos) = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (i64::try_from(d.as_secs()).unwrap(), d.subsec_nanos()),
        Err(e) => match (
            -i64::try_from(e.duration().as_secs()).unwrap(),
            e.duration().subsec_nanos(),
        ) {
            (s, 0) => (s, 0),
            (s, n) => (s - 1, 1_000_000_000 - n),
        },
    };
    json!({ "seconds": seconds, "nanos": nanos })
}

fn meta_json(meta: &Metadata) -> Json {
    let mut map = serde_json::Map::new();
    if let Some(c) = &meta.correlation_id {
        map.insert("correlation_id".into(), c.as_str().into());
    }
    if let Some(c) = &meta.causation_id {
        map.insert("causation_id".into(), c.as_str().into());
    }
    for (k, v) in &meta.extra {
        map.insert(k.clone(), v.as_str().into());
    }
    Json::Object(map)
}

#[derive(serde::Serialize)]
struct Line {
    sku: String,
    qty: u32,
}

#[derive(serde::Serialize)]
enum Status {
    Open,
    Held { reason: String },
}

#[derive(serde::Serialize)]
struct Placed {
    customer: String,
    lines: Vec<Line>,
    total: f64,
    note: Option<String>,
    status: Status,
}

#[tokio::test]
async fn python_writes_what_the_store_reads_and_reads_what_it_writes() {
    let server = NatsServer::start().await.unwrap();
    let store = JetStreamEventStore::new(server.connect().await.unwrap(), "events")
        .await
        .unwrap();
    let url = server.url();

    // (a) Python appends versions 1..=3, straight to the actor's subject: schema version 2 (`sv`
    // and the header), then `sv` nil and absent (both 1).
    let actor = "py-order.1 *";
    let wrote = python(&[
        "write",
        &url,
        store.stream_name(),
        &store.subject_for(actor),
        actor,
    ])
    .await;
    let wrote = wrote["written"].as_array().unwrap();
    assert_eq!(wrote.len(), 3);
    let events = store.get_events(actor, 1).await.unwrap();
    assert_eq!(events.len(), 3, "{events:?}");
    for (event, w) in events.iter().zip(wrote) {
        let id = Uuid::parse_str(w["id"].as_str().unwrap()).unwrap();
        assert_eq!(event.id(), id);
        assert_eq!(event.actor_id(), actor);
        assert_eq!(event.event_type(), w["type"].as_str().unwrap());
        assert_eq!(event.version(), w["v"].as_u64().unwrap());
        assert_eq!(
            u64::from(event.schema_version()),
            w["sv"].as_u64().unwrap(),
            "{id}"
        );
        assert_eq!(unix(event.timestamp()), w["time"], "{id}");
        assert_eq!(event.decode::<Json>().unwrap(), w["data"], "{id}");
        assert_eq!(meta_json(event.metadata()), w["meta"], "{id}");
    }
    assert_eq!(
        events.iter().map(Event::schema_version).collect::<Vec<_>>(),
        [2, 1, 1]
    );
    assert!(events[2].data().unwrap().is_nil());
    assert!(events[2].timestamp() < UNIX_EPOCH);

    // The store continues the Python history (it had never seen the actor).
    let next = Event::new(actor, "OrderShipped", 4, &json!({ "carrier": "dhl" })).unwrap();
    store.save_event(next.clone()).await.unwrap();
    assert_eq!(store.get_latest_version(actor).await.unwrap(), 4);
    let all = store.get_events(actor, 1).await.unwrap();
    assert_eq!(
        all.iter().map(Event::version).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert_eq!(all[3], next);

    // (b) The store writes, Python reads every field back (schema version 3 on the second).
    let actor = "kunde-ü/🚀";
    let placed = Placed {
        customer: "Jürgen Groß".into(),
        lines: vec![
            Line {
                sku: "sku-1".into(),
                qty: 2,
            },
            Line {
                sku: "sku-2".into(),
                qty: 1,
            },
        ],
        total: 119.94,
        note: None,
        status: Status::Held {
            reason: "fraud check".into(),
        },
    };
    let ours = [
        Event::builder(actor, "OrderPlaced")
            .payload(&placed)
            .correlation_id("checkout-7")
            .causation_id("cmd-1")
            .meta("tenant", "acme")
            .meta("user", "jürgen")
            .build()
            .unwrap(),
        Event::builder(actor, "OrderHeld")
            .version(2)
            .schema_version(3)
            .payload(&Status::Open)
            .timestamp(UNIX_EPOCH - Duration::new(86_400, 250))
            .build()
            .unwrap(),
        Event::builder(actor, "OrderTouched")
            .version(3_000_000_000)
            .correlation_id("checkout-7")
            .build()
            .unwrap(),
    ];
    store.save_event(ours[0].clone()).await.unwrap();
    store.save_events(ours[1..].to_vec()).await.unwrap();

    let read = python(&["read", &url, store.stream_name(), &store.subject_for(actor)]).await;
    let read = read["read"].as_array().unwrap();
    assert_eq!(read.len(), ours.len(), "{read:?}");
    for (event, r) in ours.iter().zip(read) {
        let id = event.id();
        assert_eq!(r["id"], id.to_string());
        assert_eq!(r["id_form"], "bin16", "Aether writes the id as bin 16");
        assert_eq!(r["type"], event.event_type());
        assert_eq!(r["actor"], actor);
        assert_eq!(r["v"], event.version());
        assert_eq!(r["sv"], event.schema_version(), "{id}");
        // The header only when the schema version is not 1.
        let header = Some(event.schema_version())
            .filter(|&sv| sv != 1)
            .map(|sv| sv.to_string());
        assert_eq!(r["sv_header"], json!(header), "{id}");
        assert_eq!(r["time"], unix(event.timestamp()), "{id}");
        assert_eq!(r["data"], event.decode::<Json>().unwrap(), "{id}");
        assert_eq!(r["meta"], meta_json(event.metadata()), "{id}");
        assert_eq!(r["headers_agree"], true, "{id}: {r}");
    }
    // What Python saw of the payload is the documented shape (a struct is a map by field name).
    assert_eq!(read[0]["data"]["lines"][1]["sku"], "sku-2");
    assert_eq!(read[0]["data"]["note"], Json::Null);
    assert_eq!(
        read[0]["data"]["status"],
        json!({ "Held": { "reason": "fraud check" } })
    );
    assert_eq!(read[1]["data"], "Open");
    assert_eq!(read[2]["data"], Json::Null);
    assert_eq!(
        read.iter().map(|r| r["sv"].clone()).collect::<Vec<_>>(),
        [1, 3, 1]
    );
    assert_eq!(read[1]["sv_header"], "3");
    assert_eq!(read[0]["sv_header"], Json::Null);
    // Optional fields are left out when empty; `sv` comes right after `v`.
    assert_eq!(
        read[1]["keys"],
        json!(["id", "type", "actor", "v", "sv", "time", "data"])
    );
    assert_eq!(
        read[2]["keys"],
        json!(["id", "type", "actor", "v", "time", "meta"])
    );
}
