//! The caller side of a node: the command ids it makes, and the requests that carry calls to
//! other nodes (one request, bounded by the request timeout and the call's deadline, and why it
//! brought no answer). [`Caller`] is all of it that does not need the node, shared with
//! [`ClusterClient`](crate::ClusterClient).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aether_core::CommandId;
use tokio::time::Instant;
use tracing::Instrument;

use super::Shared;
use super::wire::{self, Answer, Call, Status};
use crate::metrics::NodeMetrics;
use crate::refusals::Guard;

/// The caller side of a node: command ids, and the requests that carry calls to other nodes.
#[derive(Debug)]
pub(super) struct Router {
    pub(super) node: Arc<Shared>,
    caller: Caller,
}

impl Router {
    pub(super) fn new(node: Arc<Shared>) -> Self {
        let caller = Caller::new(
            node.client.clone(),
            &node.config.cluster_name,
            node.config.request_timeout,
            node.guard.clone(),
            node.metrics.clone(),
            node.manager.incarnation(),
        );
        Self { node, caller }
    }

    /// A command id unique in the cluster (see [`Caller::command_id`]).
    pub(super) fn command_id(&self) -> CommandId {
        self.caller.command_id()
    }

    /// One request to `owner` (see [`Caller::request`]).
    pub(super) async fn request(
        &self,
        owner: &str,
        call: &Call,
        deadline: Instant,
    ) -> Result<Answer, RequestError> {
        self.caller.request(owner, call, deadline).await
    }
}

/// What sends calls to their owners: the connection, the cluster's name and request timeout,
/// the permission guard, the metrics, and the command ids of this process.
#[derive(Debug)]
pub(crate) struct Caller {
    client: async_nats::Client,
    cluster: String,
    request_timeout: Duration,
    guard: Option<Arc<Guard>>,
    pub(crate) metrics: NodeMetrics,
    /// The first 12 hex digits of the process's incarnation, the prefix of its command ids.
    prefix: [u8; 12],
    prefix_len: usize,
    next_command: AtomicU64,
}

impl Caller {
    pub(crate) fn new(
        client: async_nats::Client,
        cluster: &str,
        request_timeout: Duration,
        guard: Option<Arc<Guard>>,
        metrics: NodeMetrics,
        incarnation: &str,
    ) -> Self {
        let mut prefix = [0u8; 12];
        let mut prefix_len = 0;
        for digit in incarnation.bytes().filter(u8::is_ascii_hexdigit).take(12) {
            prefix[prefix_len] = digit;
            prefix_len += 1;
        }
        Self {
            client,
            cluster: cluster.to_owned(),
            request_timeout,
            guard,
            metrics,
            prefix,
            prefix_len,
            next_command: AtomicU64::new(0),
        }
    }

    /// The connection calls go out on.
    pub(crate) fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// A command id unique in the cluster: 12 hex digits (48 random bits) of this process's
    /// incarnation and a hex counter. Up to 2^40 commands per process it is at most 23 bytes,
    /// which a [`CommandId`] holds inline: making one allocates nothing.
    pub(crate) fn command_id(&self) -> CommandId {
        let n = self.next_command.fetch_add(1, Ordering::Relaxed);
        let mut buf = [0u8; 12 + 1 + 16];
        let mut len = self.prefix_len;
        buf[..len].copy_from_slice(&self.prefix[..len]);
        buf[len] = b'-';
        len += 1;
        let digits = (64 - n.leading_zeros()).div_ceil(4).max(1) as usize;
        for i in 0..digits {
            let nibble = (n >> (4 * (digits - 1 - i))) & 0xf;
            buf[len + i] = b"0123456789abcdef"[nibble as usize];
        }
        len += digits;
        std::str::from_utf8(&buf[..len]).map_or_else(|_| format!("{n:x}").into(), CommandId::from)
    }

    /// One request to `owner`, bounded by the request timeout and the call's deadline. `Err`
    /// says why there is no answer (the call is then re-sent with the same id).
    pub(crate) async fn request(
        &self,
        owner: &str,
        call: &Call,
        deadline: Instant,
    ) -> Result<Answer, RequestError> {
        let payload = wire::encode(call).map_err(RequestError::Encode)?;
        let subject = wire::call_subject(&self.cluster, owner);
        let until = deadline.min(Instant::now() + self.request_timeout);
        let started = std::time::Instant::now();
        let span = tracing::debug_span!(
            "aether.cluster.call",
            cluster = %self.cluster,
            actor_type = call.actor_type.as_str(),
            actor_id = call.actor.as_str(),
            command_id = call.id.as_str(),
            owner,
        );
        let ask = async {
            let request =
                tokio::time::timeout_at(until, self.client.request(subject.clone(), payload));
            match &self.guard {
                None => Ok(request.await),
                // Boxed: the race would swell every remote call's future.
                Some(guard) => {
                    Box::pin(guard.watch(|r| guard.concerns_request(r, &subject), request)).await
                }
            }
        }
        .instrument(span);
        tokio::pin!(ask);
        // A request the owner does not answer soon is checked with a probe: if the owner's
        // connection is gone (killed while the request was on its way), no answer will come,
        // and waiting out the request timeout would only delay the failover.
        let outcome = tokio::select! {
            biased;
            outcome = &mut ask => outcome,
            () = tokio::time::sleep(PROBE_AFTER) => {
                if self.gone(&subject).await {
                    return Err(RequestError::NoResponders { owner: owner.to_owned() });
                }
                ask.await
            }
        };
        let reply = match outcome {
            Ok(reply) => reply,
            Err(refusal) => {
                self.metrics.refused_call.increment(1);
                return Err(RequestError::Refused {
                    owner: owner.to_owned(),
                    refusal,
                });
            }
        };
        self.metrics
            .remote_seconds
            .record(started.elapsed().as_secs_f64());
        let owner = || owner.to_owned();
        let message = match reply {
            Err(_) => return Err(RequestError::TimedOut { owner: owner() }),
            Ok(Err(e)) => {
                return Err(match e.kind() {
                    async_nats::RequestErrorKind::NoResponders => {
                        RequestError::NoResponders { owner: owner() }
                    }
                    _ => RequestError::Failed {
                        owner: owner(),
                        source: e,
                    },
                });
            }
            Ok(Ok(m)) => m,
        };
        let answer: Answer =
            wire::decode(&message.payload).map_err(|source| RequestError::BadAnswer {
                owner: owner(),
                source,
            })?;
        match answer.status {
            Status::Ok => self.metrics.remote_ok.increment(1),
            Status::Rejected => self.metrics.remote_rejected.increment(1),
            Status::Failed | Status::BadRequest => self.metrics.remote_failed.increment(1),
            Status::NotOwner | Status::Moving => {}
        }
        Ok(answer)
    }
}

impl Caller {
    /// Whether nobody listens on `subject` (a node's call subject) any more: one liveness probe
    /// ([`wire::PROBE_HEADER`], never answered) that the server answers "no responders" at once
    /// when the node's subscription is gone; anything else within [`PROBE_WAIT`] (nothing, as
    /// the node ignores probes) means it is there.
    pub(crate) async fn gone(&self, subject: &str) -> bool {
        probe_finds_nobody(&self.client, subject).await
    }
}

/// A request that has not been answered after this long is checked with a probe.
const PROBE_AFTER: Duration = Duration::from_millis(200);
/// How long a probe waits for the server's "no responders".
pub(crate) const PROBE_WAIT: Duration = Duration::from_millis(100);

/// One liveness probe of `subject` on `client`: `true` when the server reports no responders.
pub(crate) async fn probe_finds_nobody(client: &async_nats::Client, subject: &str) -> bool {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(wire::PROBE_HEADER, "1");
    let probe = client.request_with_headers(subject.to_owned(), headers, bytes::Bytes::new());
    matches!(
        tokio::time::timeout(PROBE_WAIT, probe).await,
        Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders
    )
}

/// Why a request to another node brought no answer. Every kind holds the call (it is re-sent
/// with the same id); the kind says what to expect from waiting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum RequestError {
    /// The call did not encode.
    #[error("encoding the call: {0}")]
    Encode(#[source] rmp_serde::encode::Error),
    /// No answer within the request timeout (or before the call's deadline): the owner is
    /// paused, overloaded or cut off; the command may have been applied.
    #[error("node {owner} did not answer in time")]
    TimedOut {
        /// The node asked.
        owner: String,
    },
    /// Nobody listens on the owner's subject: it is gone (its connection closed).
    #[error("node {owner} is not listening (gone?)")]
    NoResponders {
        /// The node asked.
        owner: String,
    },
    /// NATS refused or dropped the request (connection lost, ...).
    #[error("request to node {owner} failed: {source}")]
    Failed {
        /// The node asked.
        owner: String,
        /// The client's error.
        #[source]
        source: async_nats::RequestError,
    },
    /// The server refused the request for the user's permissions (the owner's call subject, or
    /// this connection's reply inbox): reported only with a permission watch, and final.
    #[error(
        "the NATS server refused the request to node {owner}: {refusal} (the user's permissions)"
    )]
    Refused {
        /// The node asked.
        owner: String,
        /// What the server refused.
        refusal: aether_nats::permissions::Refusal,
    },
    /// The owner answered with bytes that are not an answer.
    #[error("node {owner} sent an answer that does not decode: {source}")]
    BadAnswer {
        /// The node asked.
        owner: String,
        /// The codec's error.
        #[source]
        source: rmp_serde::decode::Error,
    },
}
