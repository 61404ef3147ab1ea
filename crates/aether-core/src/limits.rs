//! Limits and version rules that every store enforces the same way.
//!
//! Stores call [`check_append`] with the actor's current version before writing, so the rules
//! below hold for the in-memory store and the JetStream store alike:
//!
//! - the first version of an actor is > 0, and every new version is strictly greater than the
//!   actor's latest; gaps are allowed;
//! - a batch holds 1..=[`MAX_BATCH_EVENTS`] events of one actor with strictly increasing versions
//!   and distinct ids, and is stored all-or-nothing;
//! - actor ids are 1..=[`MAX_ACTOR_ID_BYTES`] bytes of any UTF-8; event types are
//!   1..=[`MAX_EVENT_TYPE_BYTES`] bytes without control characters.

use std::collections::HashSet;

use crate::error::{EventError, StoreError, VersionConflict};
use crate::event::Event;
use crate::snapshot::ActorSnapshot;

/// Longest accepted actor id, in bytes.
pub const MAX_ACTOR_ID_BYTES: usize = 1024;
/// Longest accepted event type, in bytes.
pub const MAX_EVENT_TYPE_BYTES: usize = 256;
/// Most events accepted in one all-or-nothing append (JetStream's atomic batch limit).
pub const MAX_BATCH_EVENTS: usize = 1000;

/// Checks an actor id: non-empty and at most [`MAX_ACTOR_ID_BYTES`] bytes.
pub fn validate_actor_id(actor_id: &str) -> Result<(), EventError> {
    if actor_id.is_empty() {
        return Err(EventError::EmptyActorId);
    }
    if actor_id.len() > MAX_ACTOR_ID_BYTES {
        return Err(EventError::ActorIdTooLong {
            len: actor_id.len(),
            max: MAX_ACTOR_ID_BYTES,
        });
    }
    Ok(())
}

/// Checks an event type: non-empty, at most [`MAX_EVENT_TYPE_BYTES`] bytes, no control characters.
pub fn validate_event_type(event_type: &str) -> Result<(), EventError> {
    if event_type.is_empty() {
        return Err(EventError::EmptyEventType);
    }
    if event_type.len() > MAX_EVENT_TYPE_BYTES {
        return Err(EventError::EventTypeTooLong {
            len: event_type.len(),
            max: MAX_EVENT_TYPE_BYTES,
        });
    }
    // Fast path: printable ASCII has no control characters; only other text needs the full scan.
    let printable_ascii = event_type.bytes().all(|b| (0x20..0x7f).contains(&b));
    if !printable_ascii && event_type.chars().any(char::is_control) {
        return Err(EventError::ControlCharInEventType {
            event_type: event_type.to_owned(),
        });
    }
    Ok(())
}

/// Checks a snapshot save against the version of the snapshot already stored for the actor
/// (`None`: none): the version must be above 0 and not below the stored one (an equal version
/// replaces it). Every store calls this, as it calls [`check_append`] for events.
///
/// Returns [`StoreError::InvalidSnapshot`] otherwise, and [`StoreError::InvalidEvent`] for a bad
/// actor id.
pub fn check_snapshot(
    stored_version: Option<u64>,
    snapshot: &ActorSnapshot,
) -> Result<(), StoreError> {
    validate_actor_id(&snapshot.actor_id)?;
    if snapshot.version == 0 {
        return Err(StoreError::InvalidSnapshot {
            actor_id: snapshot.actor_id.clone(),
            reason: "version must be greater than 0".into(),
        });
    }
    if let Some(existing) = stored_version.filter(|v| *v > snapshot.version) {
        return Err(StoreError::InvalidSnapshot {
            actor_id: snapshot.actor_id.clone(),
            reason: format!(
                "version {} is below the stored snapshot's version {existing}",
                snapshot.version
            ),
        });
    }
    Ok(())
}

/// Checks an append of `events` (one event, or an all-or-nothing batch) against the actor's
/// `current_version` (0 when the actor has no events). An empty slice is valid: nothing to write.
///
/// Returns [`StoreError::VersionConflict`] when the first version is not above `current_version`,
/// [`StoreError::InvalidBatch`] for a batch that mixes actors, repeats ids, does not increase its
/// versions strictly or is too large, and [`StoreError::InvalidEvent`] for a bad id or type.
pub fn check_append(current_version: u64, events: &[Event]) -> Result<(), StoreError> {
    let Some(first) = events.first() else {
        return Ok(());
    };
    let batch_error = |reason: String| StoreError::InvalidBatch {
        actor_id: first.actor_id().to_owned(),
        reason,
    };
    if events.len() > MAX_BATCH_EVENTS {
        return Err(batch_error(format!(
            "{} events; at most {MAX_BATCH_EVENTS} can be appended at once",
            events.len()
        )));
    }
    first.validate()?;
    if events.len() > 1 {
        let mut ids = HashSet::with_capacity(events.len());
        let mut previous = first.version();
        ids.insert(first.id());
        for (i, e) in events.iter().enumerate().skip(1) {
            if e.actor_id() != first.actor_id() {
                return Err(batch_error(format!(
                    "event {i} belongs to actor {:?}; a batch holds events of one actor",
                    e.actor_id()
                )));
            }
            e.validate()?;
            if e.version() <= previous {
                return Err(batch_error(format!(
                    "event {i} has version {} after version {previous}; versions must increase",
                    e.version()
                )));
            }
            if !ids.insert(e.id()) {
                return Err(batch_error(format!(
                    "event {i} repeats event id {}",
                    e.id()
                )));
            }
            previous = e.version();
        }
    }
    if first.version() <= current_version {
        return Err(
            VersionConflict::new(first.actor_id(), current_version, first.version()).into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(actor: &str, v: u64) -> Event {
        Event::builder(actor, "T").version(v).build().unwrap()
    }

    #[test]
    fn version_rules() {
        assert!(check_append(0, &[]).is_ok());
        assert!(check_append(0, &[ev("a", 1)]).is_ok());
        assert!(check_append(0, &[ev("a", 5)]).is_ok(), "gaps are allowed");
        let err = check_append(0, &[ev("a", 0)]).err();
        let c = err.as_ref().and_then(StoreError::as_version_conflict);
        assert_eq!(
            c.map(|c| (c.current_version, c.attempted_version)),
            Some((0, 0))
        );
        let err = check_append(3, &[ev("a", 3)]).err();
        assert!(err.is_some_and(|e| e.is_version_conflict()));
        assert!(check_append(0, &[ev("a", 1), ev("a", 3)]).is_ok());
        assert!(matches!(
            check_append(0, &[ev("a", 2), ev("a", 2)]),
            Err(StoreError::InvalidBatch { .. })
        ));
        assert!(matches!(
            check_append(0, &[ev("a", 1), ev("b", 2)]),
            Err(StoreError::InvalidBatch { .. })
        ));
        let e = ev("a", 1);
        let same_id = e.to_builder().version(2).build().unwrap();
        assert!(matches!(
            check_append(0, &[e, same_id]),
            Err(StoreError::InvalidBatch { .. })
        ));
    }

    #[test]
    fn id_and_type_rules() {
        assert_eq!(validate_actor_id(""), Err(EventError::EmptyActorId));
        assert!(validate_actor_id(&"x".repeat(MAX_ACTOR_ID_BYTES)).is_ok());
        assert!(validate_actor_id(&"x".repeat(MAX_ACTOR_ID_BYTES + 1)).is_err());
        assert!(validate_actor_id("a.b *>\u{e9}").is_ok());
        assert!(validate_event_type("Order\r\nPlaced").is_err());
        assert!(validate_event_type("Order\u{7f}").is_err());
        assert!(validate_event_type("Order\u{85}").is_err(), "C1 control");
        assert!(validate_event_type("Bestellung\u{e4}nderung").is_ok());
        assert!(validate_event_type("").is_err());
    }
}
