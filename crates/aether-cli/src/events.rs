//! `aether events tail`: events as they are stored.

use aether_core::{history, wire};
use async_nats::jetstream::consumer::DeliverPolicy;

use crate::actor::event_row;
use crate::cli::EventsCommand;
use crate::connect::Context;
use crate::failure::Failure;
use crate::output::Output;
use crate::scan;

pub(crate) async fn run(
    command: EventsCommand,
    ctx: &Context,
    out: &Output,
) -> Result<(), Failure> {
    let EventsCommand::Tail {
        actor_prefix,
        types,
        from_start,
        count,
    } = command;
    let stream = ctx.stream().await?;
    let policy = if from_start {
        DeliverPolicy::All
    } else {
        DeliverPolicy::New
    };
    let records = scan::records(&stream, policy, &ctx.stream).await?;
    scan::follow(records, count, |record| {
        let record = record?;
        let event = match wire::decode_event_shared(&record.payload) {
            Ok(event) => event,
            Err(e) => {
                eprintln!("aether: record {} is not an event: {e}", record.sequence);
                return Ok(false);
            }
        };
        if actor_prefix
            .as_deref()
            .is_some_and(|p| !event.actor_id().starts_with(p))
            || (!types.is_empty() && !types.iter().any(|t| t == event.event_type()))
        {
            return Ok(false);
        }
        if out.json {
            let line = history::to_json(&event).map_err(|e| Failure::Problems(e.to_string()))?;
            out.json_line(&line);
        } else {
            // One line per event as it arrives: time, actor, version, type, data.
            let row = event_row(&event);
            out.line(format!(
                "{}  {} v{}  {}  {}",
                row[3], row[0], row[1], row[2], row[4]
            ));
        }
        Ok(true)
    })
    .await
}
