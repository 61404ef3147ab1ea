//! `aether reminders list | cancel | status`: the reminders kept in the store's reminder stream
//! (docs/reminders.md). Reading never creates the stream.

use std::time::{Duration, SystemTime};

use aether_core::reminder::{Reminder, ReminderKey, ReminderStore, When, unix_millis};
use aether_core::{Payload, history};
use aether_store_jetstream::reminders::{DUE_CONSUMER, rfc3339};
use aether_store_jetstream::{JetStreamConfig, JetStreamReminders, layout};
use serde_json::{Value as Json, json};

use crate::cli::RemindersCommand;
use crate::connect::Context;
use crate::failure::Failure;
use crate::output::Output;

pub(crate) async fn run(
    command: RemindersCommand,
    ctx: &Context,
    out: &Output,
) -> Result<(), Failure> {
    match command {
        RemindersCommand::List {
            actor_type,
            actor_id,
        } => list(ctx, out, &actor_type, &actor_id).await,
        RemindersCommand::Cancel {
            actor_type,
            actor_id,
            name,
        } => cancel(ctx, out, ReminderKey::new(actor_type, actor_id, name)).await,
        RemindersCommand::Status => status(ctx, out).await,
    }
}

/// The reminders of the store, only when their stream exists.
async fn reminders(ctx: &Context) -> Result<JetStreamReminders, Failure> {
    let stream = layout::reminder_stream(&ctx.stream);
    if crate::connect::find_stream(&ctx.js, &stream)
        .await?
        .is_none()
    {
        return Err(Failure::NotFound(format!(
            "no reminder stream `{stream}` on this server: nothing has set a reminder in store {} (check --store and --namespace)",
            ctx.store
        )));
    }
    let mut config = JetStreamConfig::default();
    if let Some(ns) = &ctx.namespace {
        config = config.namespace(ns.clone());
    }
    JetStreamReminders::open(ctx.client.clone(), &ctx.store, &config)
        .await
        .map_err(|e| Failure::nats(format!("opening reminder stream {stream}"), e))
}

/// When a reminder is due, for people: an RFC 3339 time, or `every <interval>`.
fn when_text(when: &When) -> String {
    match when {
        When::At(at) => unix_millis(*at)
            .and_then(rfc3339)
            .unwrap_or_else(|| format!("{at:?}")),
        When::Every(interval) => format!("every {}", humantime(*interval)),
        other => format!("{other:?}"),
    }
}

fn humantime(d: Duration) -> String {
    if d.subsec_millis() != 0 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs())
    }
}

/// The command a reminder carries, as JSON when it decodes (MessagePack), else hex.
fn command_json(reminder: &Reminder) -> Json {
    Payload::from_encoded(reminder.payload.to_vec())
        .to_value()
        .ok()
        .as_ref()
        .and_then(history::to_plain_json)
        .unwrap_or_else(|| {
            Json::from(
                reminder
                    .payload
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>(),
            )
        })
}

async fn list(
    ctx: &Context,
    out: &Output,
    actor_type: &str,
    actor_id: &str,
) -> Result<(), Failure> {
    let store = reminders(ctx).await?;
    let found = store
        .list(actor_type, actor_id)
        .await
        .map_err(|e| match e {
            aether_core::ReminderError::Invalid { .. } => Failure::Input(e.to_string()),
            e => Failure::nats(
                format!("listing the reminders of {actor_type} {actor_id:?}"),
                e,
            ),
        })?;
    if out.json {
        for r in &found {
            let (at, every) = match r.when {
                When::At(at) => (unix_millis(at).map(Json::from), None),
                When::Every(i) => (None, Some(Json::from(i.as_millis() as u64))),
                _ => (None, None),
            };
            out.json_line(&json!({
                "actor_type": r.key.actor_type,
                "actor_id": r.key.actor_id,
                "name": r.key.name,
                "at_ms": at,
                "every_ms": every,
                "command": command_json(r),
            }));
        }
        return Ok(());
    }
    if found.is_empty() {
        out.line(format!("no reminders for {actor_type} {actor_id:?}"));
        return Ok(());
    }
    let now = SystemTime::now();
    let rows: Vec<Vec<String>> = found
        .iter()
        .map(|r| {
            let due = match r.when {
                When::At(at) if at <= now => "now (firing)".to_owned(),
                When::At(at) => format!(
                    "in {}",
                    humantime(Duration::from_secs(
                        at.duration_since(now).unwrap_or_default().as_secs()
                    ))
                ),
                _ => String::new(),
            };
            vec![
                r.key.name.clone(),
                when_text(&r.when),
                due,
                command_json(r).to_string(),
            ]
        })
        .collect();
    out.table(&["name", "when", "due", "command"], &rows);
    Ok(())
}

async fn cancel(ctx: &Context, out: &Output, key: ReminderKey) -> Result<(), Failure> {
    let store = reminders(ctx).await?;
    let cancelled = store.cancel(&key).await.map_err(|e| match e {
        aether_core::ReminderError::Invalid { .. } => Failure::Input(e.to_string()),
        e => Failure::nats(format!("cancelling reminder {key}"), e),
    })?;
    if !cancelled {
        return Err(Failure::NotFound(format!("no reminder {key}")));
    }
    if out.json {
        out.json_line(&json!({ "cancelled": key.to_string() }));
    } else {
        out.line(format!("cancelled reminder {key}"));
    }
    Ok(())
}

async fn status(ctx: &Context, out: &Output) -> Result<(), Failure> {
    let store = reminders(ctx).await?;
    let name = store.stream_name().to_owned();
    let mut stream = ctx
        .js
        .get_stream(&name)
        .await
        .map_err(|e| Failure::nats(format!("reading stream {name}"), e))?;
    let info = stream
        .info()
        .await
        .map_err(|e| Failure::nats(format!("reading stream {name}"), e))?
        .clone();
    let waiting = match stream.consumer_info(DUE_CONSUMER).await {
        Ok(c) => Some((c.num_pending, c.num_ack_pending)),
        Err(_) => None,
    };
    if out.json {
        out.json_line(&json!({
            "stream": name,
            "messages": info.state.messages,
            "bytes": info.state.bytes,
            "firings_waiting": waiting.map(|w| w.0),
            "firings_being_delivered": waiting.map(|w| w.1),
        }));
        return Ok(());
    }
    out.fields(&[
        ("stream", name),
        (
            "reminders and unsettled firings",
            info.state.messages.to_string(),
        ),
        ("bytes", info.state.bytes.to_string()),
        (
            "firings waiting / being delivered",
            waiting.map_or_else(
                || "no reader has started (no consumer yet)".to_owned(),
                |(w, d)| format!("{w} / {d}"),
            ),
        ),
    ]);
    Ok(())
}
