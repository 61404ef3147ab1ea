//! Durable projections: read models fed from a JetStream event stream, with the position kept by
//! the server.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use aether_core::{BoxError, Event, UpcastError, Upcasters};
use aether_nats::permissions::{Operation, PermissionWatch, Refusal, inbox_prefix};
use aether_nats::settle::{SETTLE_PATIENCE, while_settling};
use async_nats::jetstream::{self, AckKind};

use crate::metrics::ProjectionMetrics;
use async_trait::async_trait;
use futures::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::filter::EventFilter;

/// A read model or reaction kept up to date from the event stream.
///
/// Events arrive in stream order, each with its stream `position` (strictly increasing). The
/// runner acknowledges an event only after `apply` succeeds, and the server keeps the position, so
/// a restart neither loses nor skips events. A crash between `apply` and the acknowledgement
/// delivers that event again: a read model that remembers the last position it applied (and
/// ignores positions at or below it) applies every event exactly once.
#[async_trait]
pub trait Projection: Send + Sync {
    /// Applies one event.
    async fn apply(&self, event: &Event, position: u64) -> Result<(), BoxError>;

    /// Forgets everything, before a [`ProjectionRunner::rebuild`] replays from the start.
    async fn reset(&self) -> Result<(), BoxError> {
        Ok(())
    }
}

/// How long the server waits for an acknowledgement before delivering an event again.
const ACK_WAIT: Duration = Duration::from_secs(60);
/// Events delivered but not yet acknowledged, at most.
const MAX_ACK_PENDING: i64 = 1024;

/// Where a new projection starts reading (an existing one always resumes where it stopped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum StartFrom {
    /// The first event in the stream.
    #[default]
    Beginning,
    /// This stream position.
    Position(u64),
}

/// Configuration of a projection.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ProjectionConfig {
    /// Durable name: the server keeps this projection's position under it.
    pub name: String,
    /// The event stream (`JetStreamEventStore::stream_name`).
    pub stream: String,
    /// The subjects to read (`JetStreamEventStore::subject_filter`: all actors).
    pub subject_filter: String,
    /// Only events passing this reach `apply` (others are acknowledged and passed over).
    pub filter: EventFilter,
    /// Where a new projection starts.
    pub start: StartFrom,
    /// Attempts per event before the projection parks (default 5).
    pub attempts: u32,
    /// First retry delay, doubled each attempt up to `max_backoff` (default 50 ms).
    pub backoff: Duration,
    /// Longest retry delay (default 2 s).
    pub max_backoff: Duration,
    /// Stored events are upcast through these to their current shape before the filter and
    /// `apply` see them (default: none). An event they cannot upcast parks the projection.
    pub upcasters: Upcasters,
    /// The permission watch installed on the connection (default none): with it, setting up
    /// the projection fails at once with [`ProjectionError::PermissionDenied`] when the server
    /// refuses a subject it needs for the user's permissions (without it, after the request
    /// timeout, or the settle patience for creating the consumer).
    pub permissions: Option<PermissionWatch>,
}

impl ProjectionConfig {
    /// A projection named `name` over `stream`, reading `subject_filter`.
    pub fn new(
        name: impl Into<String>,
        stream: impl Into<String>,
        subject_filter: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            stream: stream.into(),
            subject_filter: subject_filter.into(),
            filter: EventFilter::default(),
            start: StartFrom::Beginning,
            attempts: 5,
            backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
            upcasters: Upcasters::new(),
            permissions: None,
        }
    }

    /// Reports the server's permission refusals while setting up at once (see the field).
    pub fn permissions(mut self, watch: PermissionWatch) -> Self {
        self.permissions = Some(watch);
        self
    }

    /// Upcasts stored events through `upcasters` before filtering and applying them, so the
    /// projection only ever sees current shapes (the same upcasters the runtime uses). A split
    /// event reaches `apply` as several events with the same stream position, in order.
    pub fn upcasters(mut self, upcasters: Upcasters) -> Self {
        self.upcasters = upcasters;
        self
    }

    /// Keeps only these event types.
    pub fn event_types<I: IntoIterator<Item = S>, S: Into<String>>(mut self, types: I) -> Self {
        self.filter = self.filter.event_types(types);
        self
    }

    /// Keeps only actors whose id starts with `prefix`.
    pub fn actor_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.filter = self.filter.actor_prefix(prefix);
        self
    }

    /// Sets the whole filter.
    pub fn filter(mut self, filter: EventFilter) -> Self {
        self.filter = filter;
        self
    }

    /// Sets where a new projection starts.
    pub fn start(mut self, start: StartFrom) -> Self {
        self.start = start;
        self
    }

    /// Sets the retry policy.
    pub fn retry(mut self, attempts: u32, backoff: Duration, max_backoff: Duration) -> Self {
        self.attempts = attempts.max(1);
        self.backoff = backoff;
        self.max_backoff = max_backoff;
        self
    }

    fn setup_error(&self, source: BoxError) -> ProjectionError {
        ProjectionError::Setup {
            name: self.name.clone(),
            stream: self.stream.clone(),
            source,
        }
    }

    fn wants(&self, event: &Event) -> bool {
        self.filter.matches(event)
    }
}

/// A projection failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProjectionError {
    /// Setting up the durable consumer failed.
    #[error("projection {name}: setting up on stream {stream} failed")]
    Setup {
        /// The projection.
        name: String,
        /// The stream.
        stream: String,
        /// The cause.
        #[source]
        source: BoxError,
    },
    /// `apply` kept failing for one event: the projection stopped there (the event stays
    /// unacknowledged and is delivered again when the projection restarts).
    #[error(
        "projection {name} parked at stream position {position} (event {event_id}) after {attempts} failed attempts"
    )]
    Parked {
        /// The projection.
        name: String,
        /// The event's stream position.
        position: u64,
        /// The event.
        event_id: uuid::Uuid,
        /// How many times it was tried.
        attempts: u32,
        /// The last failure.
        #[source]
        source: BoxError,
    },
    /// A stored event could not be upcast to its current shape (a missing or failing upcaster,
    /// or an event written by newer code): the projection stopped there, the event stays
    /// unacknowledged, and a runner started with the right upcasters resumes at it.
    #[error("projection {name} parked at stream position {position} (event {event_id}): {source}")]
    Upcast {
        /// The projection.
        name: String,
        /// The event's stream position.
        position: u64,
        /// The event.
        event_id: uuid::Uuid,
        /// What the upcasters said.
        #[source]
        source: UpcastError,
    },
    /// The server refused a subject the projection needs for the user's permissions (reported
    /// at once with [`ProjectionConfig::permissions`]). Not transient.
    #[error("projection {name}: permission denied: the server refused {operation} to {subject:?}")]
    PermissionDenied {
        /// The projection.
        name: String,
        /// `"publish"` or `"subscribe"`.
        operation: &'static str,
        /// The refused subject.
        subject: String,
    },
    /// Reading the stream failed.
    #[error("projection {name}: reading the stream failed")]
    Read {
        /// The projection.
        name: String,
        /// The cause.
        #[source]
        source: BoxError,
    },
}

/// Progress of a running projection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProjectionStatus {
    /// Stream position of the last acknowledged message.
    pub position: u64,
    /// Events applied by this runner.
    pub applied: u64,
    /// Messages passed over by the filters.
    pub filtered: u64,
    /// Stored messages that are not events (acknowledged and logged).
    pub malformed: u64,
    /// Set when the projection parked.
    pub parked: Option<String>,
}

/// A running projection. Dropping it (or [`ProjectionRunner::stop`]) stops it; its position stays
/// on the server. Run one runner per projection name at a time: a restart resumes right after the
/// last acknowledged event (re-delivering, in order, what a crashed runner had not acknowledged).
pub struct ProjectionRunner {
    name: String,
    task: JoinHandle<Result<(), ProjectionError>>,
    status: watch::Receiver<ProjectionStatus>,
}

impl fmt::Debug for ProjectionRunner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProjectionRunner")
            .field("name", &self.name)
            .field("status", &*self.status.borrow())
            .finish()
    }
}

impl ProjectionRunner {
    /// Starts (or resumes) the projection.
    pub async fn start(
        js: jetstream::Context,
        config: ProjectionConfig,
        projection: Arc<dyn Projection>,
    ) -> Result<Self, ProjectionError> {
        let Some(watch) = config.permissions.clone() else {
            return Self::set_up(js, config, projection).await;
        };
        // The JetStream API subjects naming the stream (stream info, consumer create, info and
        // delete, next messages) and the reply inbox.
        let inbox = inbox_prefix(&js.client());
        let stream = config.stream.clone();
        let concerns = |r: &Refusal| {
            r.is_reply_inbox(&inbox)
                || (r.operation == Operation::Publish
                    && r.subject.starts_with("$JS.")
                    && r.subject.split('.').any(|t| t == stream))
        };
        let name = config.name.clone();
        let refused = |r: Refusal| ProjectionError::PermissionDenied {
            name,
            operation: r.operation.as_str(),
            subject: r.subject,
        };
        if let Some(r) = watch.replies_refused(&inbox) {
            return Err(refused(r));
        }
        watch
            .guard(concerns, Self::set_up(js, config, projection))
            .await
            .map_err(refused)?
    }

    /// The body of [`Self::start`].
    async fn set_up(
        js: jetstream::Context,
        config: ProjectionConfig,
        projection: Arc<dyn Projection>,
    ) -> Result<Self, ProjectionError> {
        let setup = |e: BoxError| config.setup_error(e);
        let stream = js
            .get_stream(&config.stream)
            .await
            .map_err(|e| setup(Box::new(e)))?;
        let consumer_config = |deliver_policy| jetstream::consumer::pull::Config {
            durable_name: Some(config.name.clone()),
            filter_subject: config.subject_filter.clone(),
            deliver_policy,
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: ACK_WAIT,
            max_ack_pending: MAX_ACK_PENDING,
            ..Default::default()
        };
        let first = match config.start {
            StartFrom::Beginning => jetstream::consumer::DeliverPolicy::All,
            StartFrom::Position(p) => jetstream::consumer::DeliverPolicy::ByStartSequence {
                start_sequence: p.max(1),
            },
        };
        // Creating a durable consumer with one configuration is idempotent: tried again while
        // the NATS cluster settles (a stream whose replicas are still being placed).
        let what = format!("creating projection consumer {}", config.name);
        let mut consumer: jetstream::consumer::PullConsumer =
            while_settling(&what, SETTLE_PATIENCE, || {
                stream.get_or_create_consumer(&config.name, consumer_config(first))
            })
            .await
            .map_err(|e| setup(Box::new(e)))?;
        // Events handed to a previous runner that died unacknowledged would only come back after
        // the ack wait, and after later events. Start again right after the acknowledged floor
        // instead, so events stay in stream order and nothing waits.
        let info = consumer.info().await.map_err(|e| setup(Box::new(e)))?;
        if info.num_ack_pending > 0 {
            let floor = info.ack_floor.stream_sequence;
            stream
                .delete_consumer(&config.name)
                .await
                .map_err(|e| setup(Box::new(e)))?;
            let resume = jetstream::consumer::DeliverPolicy::ByStartSequence {
                start_sequence: floor.saturating_add(1),
            };
            consumer = while_settling(&what, SETTLE_PATIENCE, || {
                stream.get_or_create_consumer(&config.name, consumer_config(resume))
            })
            .await
            .map_err(|e| setup(Box::new(e)))?;
        }
        let messages = consumer.messages().await.map_err(|e| setup(Box::new(e)))?;
        let (tx, status) = watch::channel(ProjectionStatus::default());
        let name = config.name.clone();
        let task = tokio::spawn(run(messages, config, projection, tx));
        Ok(Self { name, task, status })
    }

    /// Deletes the projection's position, resets the read model and starts again from the first
    /// event.
    pub async fn rebuild(
        js: jetstream::Context,
        config: ProjectionConfig,
        projection: Arc<dyn Projection>,
    ) -> Result<Self, ProjectionError> {
        let setup = |e: BoxError| config.setup_error(e);
        let stream = js
            .get_stream(&config.stream)
            .await
            .map_err(|e| setup(Box::new(e)))?;
        // Absent is fine: rebuilding a projection that never ran.
        let _ = stream.delete_consumer(&config.name).await;
        projection.reset().await.map_err(setup)?;
        Self::start(js, config.start(StartFrom::Beginning), projection).await
    }

    /// The latest progress.
    pub fn status(&self) -> ProjectionStatus {
        self.status.borrow().clone()
    }

    /// Waits until the projection has acknowledged `position` (or parked, or stopped).
    pub async fn caught_up_to(&mut self, position: u64) -> ProjectionStatus {
        let _ = self
            .status
            .wait_for(|s| s.position >= position || s.parked.is_some())
            .await;
        self.status()
    }

    /// Stops the projection now (as a crash would: an event being applied is delivered again on
    /// restart).
    pub fn stop(&self) {
        self.task.abort();
    }

    /// Waits for the projection to end and returns why (a park returns the error).
    pub async fn join(mut self) -> Result<(), ProjectionError> {
        match (&mut self.task).await {
            Ok(result) => result,
            Err(_) => Ok(()), // stopped
        }
    }
}

impl Drop for ProjectionRunner {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(
    mut messages: jetstream::consumer::pull::Stream,
    config: ProjectionConfig,
    projection: Arc<dyn Projection>,
    status: watch::Sender<ProjectionStatus>,
) -> Result<(), ProjectionError> {
    let metrics = ProjectionMetrics::new(&config.name);
    metrics.parked.set(0.0);
    while let Some(next) = messages.next().await {
        let msg = match next {
            Ok(msg) => msg,
            Err(e) => {
                // Missed heartbeats and the like: the stream recovers by itself.
                tracing::warn!(projection = %config.name, error = %e, "projection read error");
                continue;
            }
        };
        let (position, pending) = msg
            .info()
            .map_or((0, 0), |i| (i.stream_sequence, i.pending));
        let outcome = match aether_core::wire::decode_event(&msg.payload) {
            Err(e) => {
                tracing::warn!(projection = %config.name, position, error = %e, "skipping a stored message that is not an event");
                Outcome::Malformed
            }
            Ok(event) => match deliver(&config, &*projection, event, position).await {
                Ok(outcome) => outcome,
                Err(e) => {
                    metrics.parked.set(1.0);
                    status.send_modify(|s| s.parked = Some(e.to_string()));
                    tracing::error!(projection = %config.name, error = %e, "projection parked");
                    return Err(e);
                }
            },
        };
        if let Err(e) = msg.ack_with(AckKind::Ack).await {
            return Err(ProjectionError::Read {
                name: config.name.clone(),
                source: e,
            });
        }
        metrics.lag.set(pending as f64);
        if let Outcome::Applied = outcome {
            metrics.applied.increment(1);
        }
        status.send_modify(|s| {
            s.position = position;
            match outcome {
                Outcome::Applied => s.applied += 1,
                Outcome::Filtered => s.filtered += 1,
                Outcome::Malformed => s.malformed += 1,
            }
        });
    }
    Ok(())
}

enum Outcome {
    Applied,
    Filtered,
    Malformed,
}

/// Upcasts a stored event and applies what passes the filter: `Applied` if anything did.
async fn deliver(
    config: &ProjectionConfig,
    projection: &dyn Projection,
    event: Event,
    position: u64,
) -> Result<Outcome, ProjectionError> {
    let event_id = event.id();
    let current = config
        .upcasters
        .upcast(event)
        .map_err(|source| ProjectionError::Upcast {
            name: config.name.clone(),
            position,
            event_id,
            source,
        })?;
    let mut outcome = Outcome::Filtered;
    for event in current.filter(|e| config.wants(e)) {
        apply_with_retry(config, projection, &event, position).await?;
        outcome = Outcome::Applied;
    }
    Ok(outcome)
}

async fn apply_with_retry(
    config: &ProjectionConfig,
    projection: &dyn Projection,
    event: &Event,
    position: u64,
) -> Result<(), ProjectionError> {
    let schedule = aether_core::Backoff::new(config.backoff, config.max_backoff);
    let mut attempt = 1;
    loop {
        match projection.apply(event, position).await {
            Ok(()) => return Ok(()),
            Err(e) if attempt >= config.attempts => {
                return Err(ProjectionError::Parked {
                    name: config.name.clone(),
                    position,
                    event_id: event.id(),
                    attempts: attempt,
                    source: e,
                });
            }
            Err(e) => {
                tracing::warn!(projection = %config.name, position, attempt, error = %e, "projection failed, retrying");
                tokio::time::sleep(schedule.delay(attempt)).await;
                attempt += 1;
            }
        }
    }
}
