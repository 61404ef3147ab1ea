//! `aether actor history | state | versions`.

use aether_core::history;
use aether_core::{EventStore, SnapshotStore};
use aether_store_jetstream::layout;
use futures::{StreamExt, TryStreamExt};
use serde_json::{Value as Json, json};

use crate::cli::ActorCommand;
use crate::connect::Context;
use crate::failure::Failure;
use crate::output::Output;

pub(crate) async fn run(command: ActorCommand, ctx: &Context, out: &Output) -> Result<(), Failure> {
    match command {
        ActorCommand::History { id, from } => history_of(ctx, out, &id, from).await,
        ActorCommand::State { id } => state(ctx, out, &id).await,
        ActorCommand::Versions {
            prefix,
            limit,
            after,
        } => versions(ctx, out, prefix.as_deref(), limit, after.as_deref()).await,
    }
}

/// A payload as JSON for people: the JSON form when it has one, else its hex bytes.
pub(crate) fn payload_json(event: &aether_core::Event) -> Json {
    event
        .data()
        .ok()
        .as_ref()
        .and_then(history::to_plain_json)
        .unwrap_or_else(|| {
            Json::from(
                event
                    .payload()
                    .as_bytes()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>(),
            )
        })
}

/// One row of an event table: version, type (with its schema version past 1), time, payload.
pub(crate) fn event_row(event: &aether_core::Event) -> Vec<String> {
    let time = history::to_json(event)
        .ok()
        .and_then(|j| j["time"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let event_type = match event.schema_version() {
        1 => event.event_type().to_owned(),
        sv => format!("{} v{sv}", event.event_type()),
    };
    vec![
        event.actor_id().to_owned(),
        event.version().to_string(),
        event_type,
        time,
        payload_json(event).to_string(),
    ]
}

async fn history_of(ctx: &Context, out: &Output, id: &str, from: u64) -> Result<(), Failure> {
    let store = ctx.existing_store().await?;
    let events: Vec<_> = store
        .stream_events(id, from)
        .try_collect()
        .await
        .map_err(|e| Failure::nats(format!("reading the events of {id:?}"), e))?;
    if events.is_empty() {
        return Err(Failure::NotFound(format!(
            "actor {id:?} has no events from version {from} in stream {}",
            ctx.stream
        )));
    }
    if out.json {
        for event in &events {
            let line = history::to_json(event).map_err(|e| Failure::Problems(e.to_string()))?;
            out.json_line(&line);
        }
    } else {
        let rows: Vec<_> = events.iter().map(event_row).collect();
        out.table(&["actor", "version", "type", "time", "data"], &rows);
    }
    Ok(())
}

async fn state(ctx: &Context, out: &Output, id: &str) -> Result<(), Failure> {
    let store = ctx.existing_store().await?;
    let snapshot = store
        .get_latest_snapshot(id)
        .await
        .map_err(|e| Failure::nats(format!("reading the snapshot of {id:?}"), e))?
        .ok_or_else(|| {
            Failure::NotFound(format!(
                "actor {id:?} has no snapshot in {} (`aether actor history` shows its events)",
                layout::snapshot_bucket(&ctx.stream)
            ))
        })?;
    let state = snapshot
        .data()
        .ok()
        .as_ref()
        .and_then(history::to_plain_json)
        .unwrap_or(Json::Null);
    if out.json {
        out.json_line(&json!({
            "actor": id,
            "version": snapshot.version,
            "state_version": snapshot.state_version,
            "commands": snapshot.commands.len(),
            "state": state,
        }));
    } else {
        out.fields(&[
            ("actor", id.to_owned()),
            ("version", snapshot.version.to_string()),
            ("state version", snapshot.state_version.to_string()),
            ("commands remembered", snapshot.commands.len().to_string()),
            ("state", state.to_string()),
        ]);
    }
    Ok(())
}

async fn versions(
    ctx: &Context,
    out: &Output,
    prefix: Option<&str>,
    limit: usize,
    after: Option<&str>,
) -> Result<(), Failure> {
    let stream = ctx.stream().await?;
    let subject_prefix = layout::subject_prefix(&ctx.stream);
    let info = stream
        .info_with_subjects(format!("{subject_prefix}*"))
        .await
        .map_err(|e| Failure::nats(format!("listing the subjects of {}", ctx.stream), e))?;
    let mut info = info;
    let mut subjects: Vec<(String, String)> = Vec::new();
    while let Some(entry) = info.next().await {
        let (subject, _count) = entry
            .map_err(|e| Failure::nats(format!("listing the subjects of {}", ctx.stream), e))?;
        if let Some(actor) = subject
            .strip_prefix(&subject_prefix)
            .and_then(layout::actor_from_token)
        {
            subjects.push((actor, subject));
        }
    }
    subjects.sort();
    let page: Vec<_> = subjects
        .into_iter()
        .filter(|(actor, _)| prefix.is_none_or(|p| actor.starts_with(p)))
        .filter(|(actor, _)| after.is_none_or(|a| actor.as_str() > a))
        .take(limit)
        .collect();
    let mut rows = Vec::new();
    for (actor, subject) in page {
        let last = stream
            .direct_get_last_for_subject(&subject)
            .await
            .map_err(|e| Failure::nats(format!("reading the last event of {actor:?}"), e))?;
        let version = match aether_core::wire::decode_event(&last.payload) {
            Ok(event) => Some(event.version()),
            Err(e) => {
                eprintln!(
                    "aether: the last record of {actor:?} (sequence {}) is not an event: {e}",
                    last.sequence
                );
                None
            }
        };
        if out.json {
            out.json_line(&json!({"actor": actor, "version": version, "sequence": last.sequence}));
        } else {
            let version = version.map_or_else(|| "?".to_owned(), |v| v.to_string());
            rows.push(vec![actor, version, last.sequence.to_string()]);
        }
    }
    if !out.json {
        out.table(&["actor", "version", "sequence"], &rows);
    }
    Ok(())
}
