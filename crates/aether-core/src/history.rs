//! The JSON-lines form of histories: events (and expected states) as one JSON object per line,
//! for golden files, dumps of a real stream and the replay check (feature `json`).
//! `docs/schema-evolution.md` ("History files") specifies it; in short:
//!
//! ```text
//! {"id":"0190a5c8-3b2e-7c4d-8e5f-0123456789ab","type":"Deposited","actor":"acc-1","v":1,"time":"2024-07-01T12:00:00.123456789Z","data":{"Deposited":{"amount":5}}}
//! {"id":"0190a5c8-3b2e-7c4d-8e5f-0123456789ac","type":"Deposited","actor":"acc-1","v":2,"sv":2,"time":"2024-07-01T12:00:01Z","data":{"Deposited":{"cents":7}},"meta":{"causation_id":"cmd-2"}}
//! {"expect":{"actor":"acc-1","v":2,"state":{"balance":12}}}
//! ```
//!
//! An **event line** has `id` (a UUID), `type`, `actor`, `v` (the version in the actor's
//! history), `time` (RFC 3339), optionally `sv` (schema version, 1 when absent), the payload as
//! `data` (JSON; absent or null: the nil payload) or, when JSON cannot hold it (binary, extension
//! types, non-string map keys), as `data_msgpack` (the MessagePack bytes in standard base64), and
//! optionally `meta` (an object of strings). An **expectation line** has `expect`: an actor, the
//! version its history should end at (`v`, optional) and its `state` as JSON. Blank lines are
//! skipped; anything else is an error naming the line.
//!
//! ```
//! use aether_core::{Event, history};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let event = Event::new("acc-1", "Opened", 1, &serde_json::json!({"owner": "ana"}))?;
//! let line = history::to_line(&event)?;
//! match history::parse_line(&line)? {
//!     Some(history::Line::Event(back)) => assert_eq!(back, event),
//!     other => panic!("{other:?}"),
//! }
//! # Ok(()) }
//! ```

use std::io::BufRead;
use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value as Json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use crate::event::{Event, Metadata};
use crate::payload::{Payload, Value};

/// One line of a history file.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Line {
    /// A stored event.
    Event(Event),
    /// What an actor's state should be once its events are folded in.
    Expect(Expectation),
}

/// An expected final state (an `expect` line).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Expectation {
    /// The actor.
    pub actor: String,
    /// The version the actor's history ends at, when given.
    pub version: Option<u64>,
    /// The state, as the actor's state type serializes to JSON.
    pub state: Json,
}

impl Expectation {
    /// Expects `actor` to end at `version` (if given) in `state`.
    pub fn new(actor: impl Into<String>, version: Option<u64>, state: Json) -> Self {
        Self {
            actor: actor.into(),
            version,
            state,
        }
    }

    /// The expectation as one JSON line (without the newline).
    pub fn to_line(&self) -> String {
        let mut expect = Map::new();
        expect.insert("actor".into(), Json::from(self.actor.as_str()));
        if let Some(v) = self.version {
            expect.insert("v".into(), Json::from(v));
        }
        expect.insert("state".into(), self.state.clone());
        let mut line = Map::new();
        line.insert("expect".into(), Json::Object(expect));
        Json::Object(line).to_string()
    }
}

/// A line that is not an event or an expectation in the documented form.
#[derive(Debug, thiserror::Error)]
#[error("history line {line}: {problem}")]
#[non_exhaustive]
pub struct HistoryError {
    /// The 1-based line number (0 when not read from a file).
    pub line: usize,
    /// What is wrong with it.
    pub problem: String,
}

impl HistoryError {
    fn new(problem: impl Into<String>) -> Self {
        Self {
            line: 0,
            problem: problem.into(),
        }
    }

    fn at(mut self, line: usize) -> Self {
        self.line = line;
        self
    }
}

/// The event as one JSON line (without the newline).
pub fn to_line(event: &Event) -> Result<String, HistoryError> {
    Ok(to_json(event)?.to_string())
}

/// The event as a JSON object in the history form.
pub fn to_json(event: &Event) -> Result<Json, HistoryError> {
    let mut j = Map::new();
    j.insert("id".into(), Json::from(event.id().to_string()));
    j.insert("type".into(), Json::from(event.event_type()));
    j.insert("actor".into(), Json::from(event.actor_id()));
    j.insert("v".into(), Json::from(event.version()));
    if event.schema_version() != 1 {
        j.insert("sv".into(), Json::from(event.schema_version()));
    }
    let time = rfc3339(event.timestamp())?;
    j.insert("time".into(), Json::from(time));
    let data = event
        .data()
        .map_err(|e| HistoryError::new(format!("the payload is not MessagePack: {e}")))?;
    match to_plain_json(&data) {
        Some(Json::Null) => {}
        Some(json) => {
            j.insert("data".into(), json);
        }
        None => {
            j.insert(
                "data_msgpack".into(),
                Json::from(STANDARD.encode(event.payload().as_bytes())),
            );
        }
    }
    let meta = event.metadata();
    if !meta.is_empty() {
        let mut m = Map::new();
        if let Some(c) = &meta.correlation_id {
            m.insert("correlation_id".into(), Json::from(c.as_str()));
        }
        if let Some(c) = &meta.causation_id {
            m.insert("causation_id".into(), Json::from(c.as_str()));
        }
        for (k, v) in &meta.extra {
            m.insert(k.clone(), Json::from(v.as_str()));
        }
        j.insert("meta".into(), Json::Object(m));
    }
    Ok(Json::Object(j))
}

/// Parses one line: `None` for a blank line.
pub fn parse_line(line: &str) -> Result<Option<Line>, HistoryError> {
    if line.trim().is_empty() {
        return Ok(None);
    }
    let json: Json =
        serde_json::from_str(line).map_err(|e| HistoryError::new(format!("not JSON: {e}")))?;
    let Json::Object(object) = json else {
        return Err(HistoryError::new("not a JSON object"));
    };
    if let Some(expect) = object.get("expect") {
        return expectation(expect).map(|e| Some(Line::Expect(e)));
    }
    event_from(&object).map(|e| Some(Line::Event(e)))
}

/// Reads every line of `reader` (blank lines skipped); an error names its line.
pub fn read(reader: impl BufRead) -> Result<Vec<Line>, HistoryError> {
    let mut lines = Vec::new();
    for (n, text) in reader.lines().enumerate() {
        let text = text.map_err(|e| HistoryError::new(format!("reading failed: {e}")).at(n + 1))?;
        if let Some(line) = parse_line(&text).map_err(|e| e.at(n + 1))? {
            lines.push(line);
        }
    }
    Ok(lines)
}

/// Reads a history file (see [`read`]); an error names the file or the line.
pub fn read_file(path: impl AsRef<std::path::Path>) -> Result<Vec<Line>, HistoryError> {
    let path = path.as_ref();
    let file = std::fs::File::open(path)
        .map_err(|e| HistoryError::new(format!("opening {} failed: {e}", path.display())))?;
    read(std::io::BufReader::new(file)).map_err(|mut e| {
        e.problem = format!("{}: {}", path.display(), e.problem);
        e
    })
}

/// The event described by a JSON object in the history form.
pub fn from_json(json: &Json) -> Result<Event, HistoryError> {
    match json {
        Json::Object(object) => event_from(object),
        _ => Err(HistoryError::new("not a JSON object")),
    }
}

fn event_from(o: &Map<String, Json>) -> Result<Event, HistoryError> {
    let text = |key: &str| {
        o.get(key)
            .and_then(Json::as_str)
            .ok_or_else(|| HistoryError::new(format!("`{key}` is missing or not a string")))
    };
    let uint = |key: &str| {
        o.get(key).and_then(Json::as_u64).ok_or_else(|| {
            HistoryError::new(format!("`{key}` is missing or not an unsigned integer"))
        })
    };
    let id = Uuid::parse_str(text("id")?)
        .map_err(|e| HistoryError::new(format!("`id` is not a UUID: {e}")))?;
    let time = OffsetDateTime::parse(text("time")?, &Rfc3339)
        .map_err(|e| HistoryError::new(format!("`time` is not RFC 3339: {e}")))?;
    let schema = match o.get("sv") {
        None | Some(Json::Null) => 1,
        Some(_) => u32::try_from(uint("sv")?)
            .ok()
            .filter(|v| *v >= 1)
            .ok_or_else(|| HistoryError::new("`sv` is not in 1..=4294967295"))?,
    };
    let payload = match (o.get("data"), o.get("data_msgpack")) {
        (Some(_), Some(_)) => {
            return Err(HistoryError::new(
                "both `data` and `data_msgpack` are given",
            ));
        }
        (Some(data), None) => {
            let mut bytes = Vec::new();
            rmpv::encode::write_value(&mut bytes, &from_plain_json(data))
                .map_err(|e| HistoryError::new(format!("`data` does not encode: {e}")))?;
            Payload::from_encoded(bytes)
        }
        (None, Some(b64)) => {
            let bytes = b64
                .as_str()
                .and_then(|s| STANDARD.decode(s).ok())
                .ok_or_else(|| HistoryError::new("`data_msgpack` is not standard base64"))?;
            Payload::from_encoded(bytes)
        }
        (None, None) => Payload::nil(),
    };
    let mut meta = Metadata::default();
    match o.get("meta") {
        None | Some(Json::Null) => {}
        Some(Json::Object(m)) => {
            for (k, v) in m {
                let v = v
                    .as_str()
                    .ok_or_else(|| HistoryError::new(format!("`meta.{k}` is not a string")))?;
                match k.as_str() {
                    "correlation_id" => meta.correlation_id = Some(v.to_owned()),
                    "causation_id" => meta.causation_id = Some(v.into()),
                    _ => {
                        meta.extra.insert(k.clone(), v.to_owned());
                    }
                }
            }
        }
        Some(_) => return Err(HistoryError::new("`meta` is not an object")),
    }
    Event::builder(text("actor")?, text("type")?)
        .id(id)
        .version(uint("v")?)
        .schema_version(schema)
        .timestamp(SystemTime::from(time))
        .encoded_payload(payload)
        .metadata(meta)
        .build()
        .map_err(|e| HistoryError::new(e.to_string()))
}

/// `at` in RFC 3339 (UTC); a time outside the years 0 to 9999 cannot be written (an error, not
/// a panic: the wire format holds times far beyond them).
fn rfc3339(at: SystemTime) -> Result<String, HistoryError> {
    let nanos = match at.duration_since(std::time::UNIX_EPOCH) {
        Ok(after) => i128::try_from(after.as_nanos()).ok(),
        Err(before) => i128::try_from(before.duration().as_nanos())
            .ok()
            .map(|n| -n),
    };
    nanos
        .and_then(|n| OffsetDateTime::from_unix_timestamp_nanos(n).ok())
        .ok_or_else(|| HistoryError::new("the time is outside what RFC 3339 can write"))?
        .format(&Rfc3339)
        .map_err(|e| HistoryError::new(format!("the time does not format as RFC 3339: {e}")))
}

fn expectation(j: &Json) -> Result<Expectation, HistoryError> {
    let actor = j
        .get("actor")
        .and_then(Json::as_str)
        .ok_or_else(|| HistoryError::new("`expect.actor` is missing or not a string"))?;
    let version = match j.get("v") {
        None | Some(Json::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .ok_or_else(|| HistoryError::new("`expect.v` is not an unsigned integer"))?,
        ),
    };
    let state = j
        .get("state")
        .cloned()
        .ok_or_else(|| HistoryError::new("`expect.state` is missing"))?;
    Ok(Expectation::new(actor, version, state))
}

/// A MessagePack value as JSON, if JSON holds it exactly (no bin, no extension, string keys,
/// finite floats).
pub fn to_plain_json(v: &Value) -> Option<Json> {
    Some(match v {
        Value::Nil => Json::Null,
        Value::Boolean(b) => Json::Bool(*b),
        Value::Integer(i) => match (i.as_u64(), i.as_i64()) {
            (Some(u), _) => u.into(),
            (None, Some(s)) => s.into(),
            _ => return None,
        },
        Value::F32(f) => Json::Number(serde_json::Number::from_f64(f64::from(*f))?),
        Value::F64(f) => Json::Number(serde_json::Number::from_f64(*f)?),
        Value::String(s) => Json::String(s.as_str()?.to_owned()),
        Value::Array(items) => Json::Array(items.iter().map(to_plain_json).collect::<Option<_>>()?),
        Value::Map(entries) => Json::Object(
            entries
                .iter()
                .map(|(k, v)| Some((k.as_str()?.to_owned(), to_plain_json(v)?)))
                .collect::<Option<_>>()?,
        ),
        Value::Binary(_) | Value::Ext(..) => return None,
    })
}

/// A JSON value as MessagePack: integers stay integers, other numbers are float 64.
pub fn from_plain_json(j: &Json) -> Value {
    match j {
        Json::Null => Value::Nil,
        Json::Bool(b) => Value::Boolean(*b),
        Json::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => Value::from(u),
            (None, Some(i), _) => Value::from(i),
            (None, None, Some(f)) => Value::F64(f),
            (None, None, None) => Value::Nil,
        },
        Json::String(s) => Value::from(s.as_str()),
        Json::Array(items) => Value::Array(items.iter().map(from_plain_json).collect()),
        Json::Object(entries) => Value::Map(
            entries
                .iter()
                .map(|(k, v)| (Value::from(k.as_str()), from_plain_json(v)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    fn round_trip(event: &Event) -> Event {
        match parse_line(&to_line(event).unwrap()).unwrap() {
            Some(Line::Event(e)) => e,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn events_round_trip_through_a_line() {
        let at = UNIX_EPOCH + Duration::new(1_719_835_200, 123_456_789);
        let plain = Event::builder("acc-ü", "Deposited")
            .version(7)
            .schema_version(3)
            .timestamp(at)
            .payload(&serde_json::json!({"Deposited": {"cents": 5, "note": "x", "rate": 0.5}}))
            .correlation_id("c")
            .causation_id("cmd")
            .meta("k", "v")
            .build()
            .unwrap();
        assert_eq!(round_trip(&plain), plain);
        let line = to_line(&plain).unwrap();
        assert!(
            line.contains(r#""time":"2024-07-01T12:00:00.123456789Z""#),
            "{line}"
        );
        assert!(line.contains(r#""sv":3"#), "{line}");

        // Binary payloads go as base64 MessagePack; nil payloads and pre-1970 times too.
        let binary = Event::builder("a", "Blob")
            .encoded_payload(binary_payload())
            .timestamp(UNIX_EPOCH - Duration::new(86_400, 500_000_000))
            .build()
            .unwrap();
        let line = to_line(&binary).unwrap();
        assert!(line.contains("data_msgpack"), "{line}");
        assert_eq!(round_trip(&binary), binary);
        // Times the wire format holds but RFC 3339 cannot write: an error, not a panic.
        for at in [
            UNIX_EPOCH + Duration::from_secs(300_000_000_000),
            UNIX_EPOCH - Duration::from_secs(70_000_000_000),
        ] {
            let far = Event::builder("a", "T").timestamp(at).build().unwrap();
            assert!(to_line(&far).unwrap_err().to_string().contains("RFC 3339"));
        }
        let nil = Event::builder("a", "Nothing").build().unwrap();
        assert!(!to_line(&nil).unwrap().contains("data"));
        assert_eq!(round_trip(&nil).payload(), nil.payload());
    }

    /// A payload JSON cannot hold: a bin value.
    fn binary_payload() -> Payload {
        let mut bytes = Vec::new();
        rmpv::encode::write_value(&mut bytes, &Value::Binary(vec![0, 1, 2, 255])).unwrap();
        Payload::from_encoded(bytes)
    }

    #[test]
    fn expectations_and_errors() {
        let e = Expectation::new("acc-1", Some(3), serde_json::json!({"balance": 12}));
        assert_eq!(parse_line(&e.to_line()).unwrap(), Some(Line::Expect(e)));
        assert_eq!(parse_line("   ").unwrap(), None);
        let text = "\n{\"expect\":{\"actor\":\"a\",\"state\":null}}\n{\"type\":\"T\"}\n";
        let error = read(text.as_bytes()).unwrap_err();
        assert_eq!(error.line, 3);
        assert_eq!(
            error.to_string(),
            "history line 3: `id` is missing or not a string"
        );
        for (line, says) in [
            ("[1]", "not a JSON object"),
            ("{", "not JSON"),
            (
                r#"{"id":"x","type":"T","actor":"a","v":1,"time":"2024-07-01T12:00:00Z"}"#,
                "`id` is not a UUID",
            ),
            (
                r#"{"id":"0190a5c8-3b2e-7c4d-8e5f-0123456789ab","type":"T","actor":"a","v":1,"time":"yesterday"}"#,
                "`time` is not RFC 3339",
            ),
            (
                r#"{"id":"0190a5c8-3b2e-7c4d-8e5f-0123456789ab","type":"T","actor":"a","v":1,"sv":0,"time":"2024-07-01T12:00:00Z"}"#,
                "`sv` is not in",
            ),
            (
                r#"{"id":"0190a5c8-3b2e-7c4d-8e5f-0123456789ab","type":"T","actor":"a","v":-1,"time":"2024-07-01T12:00:00Z"}"#,
                "`v` is missing or not an unsigned integer",
            ),
        ] {
            let error = parse_line(line).unwrap_err().to_string();
            assert!(error.contains(says), "{line}: {error}");
        }
    }
}
