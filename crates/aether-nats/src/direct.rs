//! Reading records without server-side state: one batched direct get.
//!
//! One request (`$JS.API.DIRECT.GET.<stream>` with `seq`, `next_by_subj` and `batch`, servers
//! 2.11 and newer) returns the next records of a subject (or a subject filter with wildcards)
//! from a sequence, followed by an end-of-batch status. Any replica may answer, and a replica may
//! lag the stream leader: callers that need the newest records complete a short page from the
//! leader.

use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt;

use aether_core::StoreError;

use crate::classify::store_error;

/// The end-of-batch status of a batched direct get.
const END_OF_BATCH: u16 = 204;
/// No record at or after the requested sequence (on the replica that answered).
const NOT_FOUND: u16 = 404;
/// Nobody serves direct gets for the stream (no replica yet, or the stream is gone).
const NO_RESPONDERS: u16 = 503;

/// A stored record as read back: its stream sequence, subject, headers and body.
#[derive(Debug)]
pub struct RawRecord {
    /// Its stream sequence.
    pub seq: u64,
    /// Its subject (`Nats-Subject`), empty if the reply did not say.
    pub subject: String,
    /// Its headers, the server's `Nats-*` reply headers included.
    pub headers: Option<HeaderMap>,
    /// Its body.
    pub payload: Bytes,
}

/// One batched direct get from `stream`: the records of `subject` (wildcards allowed) from
/// sequence `from`, at most `max` of them, in order. Empty when the replica that answered has
/// none (or no replica serves direct gets yet). `context` names the read in errors.
pub async fn batch(
    client: &async_nats::Client,
    stream: &str,
    subject: &str,
    from: u64,
    max: usize,
    timeout: Duration,
    context: &(dyn Fn() -> String + Sync),
) -> Result<Vec<RawRecord>, StoreError> {
    let inbox = client.new_inbox();
    // Subscribed before the request goes out (same connection, so the server sees it first).
    let mut replies = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| StoreError::backend(context(), e))?;
    let request = serde_json::json!({ "seq": from, "next_by_subj": subject, "batch": max });
    client
        .publish_with_reply(
            format!("$JS.API.DIRECT.GET.{stream}"),
            inbox,
            Bytes::from(request.to_string()),
        )
        .await
        .map_err(|e| store_error(context(), e))?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut records = Vec::new();
    loop {
        let reply = match tokio::time::timeout_at(deadline, replies.next()).await {
            Ok(Some(reply)) => reply,
            Ok(None) => {
                return Err(StoreError::Unavailable {
                    context: context(),
                    source: Some("the connection closed the reply subscription".into()),
                });
            }
            Err(_) => return Err(StoreError::Timeout { context: context() }),
        };
        match reply.status.map(|s| s.as_u16()) {
            None => {
                let header = |name: &str| {
                    reply
                        .headers
                        .as_ref()
                        .and_then(|h| h.get(name))
                        .map(|v| v.as_str().to_owned())
                };
                let seq = header(async_nats::header::NATS_SEQUENCE.as_ref())
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or_else(|| {
                        StoreError::backend(context(), "a direct get reply without Nats-Sequence")
                    })?;
                let subject = header(async_nats::header::NATS_SUBJECT.as_ref()).unwrap_or_default();
                records.push(RawRecord {
                    seq,
                    subject,
                    headers: reply.headers,
                    payload: reply.payload,
                });
            }
            Some(END_OF_BATCH | NOT_FOUND) => return Ok(records),
            // No replica serves direct gets yet (a stream created a moment ago on another
            // server of a cluster): nothing read; the caller may ask the leader instead.
            Some(NO_RESPONDERS) => return Ok(records),
            Some(code) => {
                return Err(StoreError::backend(
                    context(),
                    format!(
                        "direct get answered {code} {}",
                        reply.description.unwrap_or_default()
                    ),
                ));
            }
        }
    }
}
