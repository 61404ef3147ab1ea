//! Reading the stream's records in order with an ordered consumer: every record up to the last
//! one stored when the scan began, or every new record until stopped.

use async_nats::jetstream::{self, consumer::DeliverPolicy};
use bytes::Bytes;
use futures::StreamExt;

use crate::connect::Context;
use crate::failure::Failure;
use crate::output::Progress;

/// One stored record.
pub(crate) struct Record {
    pub(crate) sequence: u64,
    pub(crate) subject: String,
    pub(crate) payload: Bytes,
}

/// Calls `each` with every record stored when the scan begins, in stream order. `each` returns
/// whether to go on.
pub(crate) async fn all(
    ctx: &Context,
    label: &'static str,
    mut each: impl FnMut(Record) -> Result<bool, Failure>,
) -> Result<u64, Failure> {
    let mut stream = ctx.stream().await?;
    let info = stream
        .info()
        .await
        .map_err(|e| Failure::nats(format!("reading stream {}", ctx.stream), e))?;
    let (messages, last) = (info.state.messages, info.state.last_sequence);
    if messages == 0 {
        return Ok(0);
    }
    let progress = Progress::new(label, messages);
    let mut read = 0;
    let mut records = records(&stream, DeliverPolicy::All, &ctx.stream).await?;
    while let Some(record) = records.next().await {
        let record = record?;
        let sequence = record.sequence;
        read += 1;
        progress.at(read);
        if !each(record)? || sequence >= last {
            break;
        }
    }
    progress.done();
    Ok(read)
}

/// The stream's records from `policy` on, without end.
pub(crate) async fn records(
    stream: &jetstream::stream::Stream,
    policy: DeliverPolicy,
    name: &str,
) -> Result<impl futures::Stream<Item = Result<Record, Failure>> + use<>, Failure> {
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            deliver_policy: policy,
            ..Default::default()
        })
        .await
        .map_err(|e| Failure::nats(format!("reading stream {name}"), e))?;
    let messages = consumer
        .messages()
        .await
        .map_err(|e| Failure::nats(format!("reading stream {name}"), e))?;
    let name = name.to_owned();
    Ok(messages.map(move |message| {
        let message = message.map_err(|e| Failure::nats(format!("reading stream {name}"), e))?;
        let sequence = message
            .info()
            .map(|i| i.stream_sequence)
            .map_err(|e| Failure::Nats {
                what: format!("reading stream {name}"),
                reason: e.to_string(),
            })?;
        Ok(Record {
            sequence,
            subject: message.subject.to_string(),
            payload: message.payload.clone(),
        })
    }))
}

/// Hands `each` the items of `items` until it ends, Ctrl-C, or `each` has shown `count` (it
/// returns whether it showed the item): the loop of `events tail` and `cluster watch`.
pub(crate) async fn follow<T>(
    items: impl futures::Stream<Item = T>,
    count: Option<u64>,
    mut each: impl FnMut(T) -> Result<bool, Failure>,
) -> Result<(), Failure> {
    let mut items = std::pin::pin!(items);
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let mut shown = 0;
    while count.is_none_or(|c| shown < c) {
        let item = tokio::select! {
            item = items.next() => item,
            _ = &mut interrupted => return Ok(()),
        };
        let Some(item) = item else { return Ok(()) };
        if each(item)? {
            shown += 1;
        }
    }
    Ok(())
}
