//! `aether projections list | status | rebuild`: the stream's durable consumers.

use async_nats::jetstream::consumer;
use futures::StreamExt;
use serde_json::json;

use crate::cli::ProjectionsCommand;
use crate::connect::Context;
use crate::failure::Failure;
use crate::output::Output;

pub(crate) async fn run(
    command: ProjectionsCommand,
    ctx: &Context,
    out: &Output,
) -> Result<(), Failure> {
    let stream = ctx.stream().await?;
    match command {
        ProjectionsCommand::List => {
            let mut infos = Vec::new();
            let mut consumers = stream.consumers();
            while let Some(info) = consumers.next().await {
                let info = info.map_err(|e| Failure::nats("listing consumers", e))?;
                // Durable consumers are projections; ordered and replay readers are not.
                if info.config.durable_name.is_some() {
                    infos.push(info);
                }
            }
            infos.sort_by(|a, b| a.name.cmp(&b.name));
            show(out, &infos);
            Ok(())
        }
        ProjectionsCommand::Status { name } => {
            let info = consumer_info(ctx, &stream, &name).await?;
            show(out, &[info]);
            Ok(())
        }
        ProjectionsCommand::Rebuild { name } => {
            consumer_info(ctx, &stream, &name).await?;
            stream
                .delete_consumer(&name)
                .await
                .map_err(|e| Failure::nats(format!("deleting the position of {name}"), e))?;
            if out.json {
                out.json_line(&json!({"projection": name, "position": 0}));
            } else {
                out.line(format!(
                    "projection {name}: position deleted; its next start reads from the first event (stop its runner first, and reset its read model)"
                ));
            }
            Ok(())
        }
    }
}

async fn consumer_info(
    ctx: &Context,
    stream: &async_nats::jetstream::stream::Stream,
    name: &str,
) -> Result<consumer::Info, Failure> {
    match stream.consumer_info(name).await {
        Ok(info) => Ok(info),
        Err(e)
            if matches!(
                e.kind(),
                async_nats::jetstream::context::ConsumerInfoErrorKind::NotFound
            ) || matches!(e.kind(), async_nats::jetstream::context::ConsumerInfoErrorKind::JetStream(js)
                if js.error_code() == async_nats::jetstream::ErrorCode::CONSUMER_NOT_FOUND) =>
        {
            Err(Failure::NotFound(format!(
                "no projection {name:?} on stream {} (`aether projections list` lists them)",
                ctx.stream
            )))
        }
        Err(e) => Err(Failure::nats(format!("reading projection {name}"), e)),
    }
}

fn show(out: &Output, infos: &[consumer::Info]) {
    if out.json {
        for i in infos {
            out.json_line(&json!({
                "projection": i.name,
                "position": i.ack_floor.stream_sequence,
                "lag": i.num_pending,
                "unacknowledged": i.num_ack_pending,
                "redelivered": i.num_redelivered,
                "filter": i.config.filter_subject,
            }));
        }
        return;
    }
    let rows: Vec<Vec<String>> = infos
        .iter()
        .map(|i| {
            vec![
                i.name.clone(),
                i.ack_floor.stream_sequence.to_string(),
                i.num_pending.to_string(),
                i.num_ack_pending.to_string(),
                i.num_redelivered.to_string(),
            ]
        })
        .collect();
    out.table(
        &[
            "projection",
            "position",
            "lag",
            "unacknowledged",
            "redelivered",
        ],
        &rows,
    );
}
