//! Metric names, recorded through the [`metrics`] facade (install any recorder, e.g.
//! `metrics-exporter-prometheus`). Every metric has the label `actor_type` (the actor's
//! [`crate::Actor::TYPE`]).
//!
//! | name | kind | meaning |
//! | --- | --- | --- |
//! | `aether_runtime_commands_total` | counter | commands handled; label `outcome` = `ok`, `rejected` or `failed` |
//! | `aether_runtime_events_appended_total` | counter | events appended by actors |
//! | `aether_runtime_conflicts_total` | counter | appends refused with a version conflict |
//! | `aether_runtime_retries_total` | counter | commands re-run after a conflict |
//! | `aether_runtime_activations_total` | counter | actors loaded into memory |
//! | `aether_runtime_passivations_total` | counter | actors unloaded (idle, evicted, stopped, shut down) |
//! | `aether_runtime_snapshots_total` | counter | snapshots saved |
//! | `aether_runtime_panics_total` | counter | handler panics (the actor was reloaded) |
//! | `aether_runtime_duplicate_commands_total` | counter | commands with an id already applied, answered from their events |
//! | `aether_runtime_replayed_events` | histogram | events replayed per activation (after the snapshot) |
//! | `aether_runtime_command_seconds` | histogram | time to handle one command, persistence included |
//! | `aether_runtime_mailbox_depth` | histogram | commands waiting in the mailbox when one is taken |
//! | `aether_runtime_active_actors` | gauge | actors in memory |
//! | `aether_runtime_reminder_firings_total` | counter | reminder firings a dispatcher handled; label `outcome` = `delivered`, `retried`, `undeliverable` or `malformed` (the last with `actor_type` `unknown`) |
//! | `aether_runtime_reminder_lateness_seconds` | histogram | from a firing's due time to its delivery |

use metrics::{Counter, Gauge, Histogram};

/// Counter: commands handled, by `outcome`.
pub const COMMANDS: &str = "aether_runtime_commands_total";
/// Counter: events appended.
pub const EVENTS_APPENDED: &str = "aether_runtime_events_appended_total";
/// Counter: version conflicts met.
pub const CONFLICTS: &str = "aether_runtime_conflicts_total";
/// Counter: commands re-run after a conflict.
pub const RETRIES: &str = "aether_runtime_retries_total";
/// Counter: activations.
pub const ACTIVATIONS: &str = "aether_runtime_activations_total";
/// Counter: passivations.
pub const PASSIVATIONS: &str = "aether_runtime_passivations_total";
/// Counter: snapshots saved.
pub const SNAPSHOTS: &str = "aether_runtime_snapshots_total";
/// Counter: handler panics.
pub const PANICS: &str = "aether_runtime_panics_total";
/// Counter: commands with an id the actor had already applied.
pub const DUPLICATE_COMMANDS: &str = "aether_runtime_duplicate_commands_total";
/// Histogram: events replayed per activation.
pub const REPLAYED_EVENTS: &str = "aether_runtime_replayed_events";
/// Histogram: seconds per command.
pub const COMMAND_SECONDS: &str = "aether_runtime_command_seconds";
/// Histogram: mailbox depth when a command is taken.
pub const MAILBOX_DEPTH: &str = "aether_runtime_mailbox_depth";
/// Gauge: actors in memory.
pub const ACTIVE_ACTORS: &str = "aether_runtime_active_actors";
/// Counter: reminder firings a dispatcher handled, by `outcome`.
pub const REMINDER_FIRINGS: &str = "aether_runtime_reminder_firings_total";
/// Histogram: seconds from a firing's due time to its delivery.
pub const REMINDER_LATENESS: &str = "aether_runtime_reminder_lateness_seconds";

/// A dispatcher's handles for one actor type (registered when it starts).
#[derive(Debug, Clone)]
pub(crate) struct FiringMetrics {
    pub(crate) delivered: Counter,
    pub(crate) retried: Counter,
    pub(crate) undeliverable: Counter,
    pub(crate) lateness: Histogram,
}

impl FiringMetrics {
    pub(crate) fn new(actor_type: &str) -> Self {
        let ty = actor_type.to_owned();
        Self {
            delivered: metrics::counter!(REMINDER_FIRINGS, "actor_type" => ty.clone(), "outcome" => "delivered"),
            retried: metrics::counter!(REMINDER_FIRINGS, "actor_type" => ty.clone(), "outcome" => "retried"),
            undeliverable: metrics::counter!(REMINDER_FIRINGS, "actor_type" => ty.clone(), "outcome" => "undeliverable"),
            lateness: metrics::histogram!(REMINDER_LATENESS, "actor_type" => ty),
        }
    }

    /// Malformed firings (no actor type can be trusted): label `unknown`.
    pub(crate) fn malformed() -> Counter {
        metrics::counter!(REMINDER_FIRINGS, "actor_type" => "unknown", "outcome" => "malformed")
    }
}

/// Handles registered once per runtime, so the hot path does no registry lookups.
#[derive(Debug)]
pub(crate) struct Metrics {
    pub(crate) ok: Counter,
    pub(crate) rejected: Counter,
    pub(crate) failed: Counter,
    pub(crate) events: Counter,
    pub(crate) conflicts: Counter,
    pub(crate) retries: Counter,
    pub(crate) activations: Counter,
    pub(crate) passivations: Counter,
    pub(crate) snapshots: Counter,
    pub(crate) panics: Counter,
    pub(crate) duplicates: Counter,
    pub(crate) replayed: Histogram,
    pub(crate) latency: Histogram,
    pub(crate) mailbox: Histogram,
    pub(crate) active: Gauge,
}

impl Metrics {
    pub(crate) fn new(actor_type: &'static str) -> Self {
        Self {
            ok: metrics::counter!(COMMANDS, "actor_type" => actor_type, "outcome" => "ok"),
            rejected: metrics::counter!(COMMANDS, "actor_type" => actor_type, "outcome" => "rejected"),
            failed: metrics::counter!(COMMANDS, "actor_type" => actor_type, "outcome" => "failed"),
            events: metrics::counter!(EVENTS_APPENDED, "actor_type" => actor_type),
            conflicts: metrics::counter!(CONFLICTS, "actor_type" => actor_type),
            retries: metrics::counter!(RETRIES, "actor_type" => actor_type),
            activations: metrics::counter!(ACTIVATIONS, "actor_type" => actor_type),
            passivations: metrics::counter!(PASSIVATIONS, "actor_type" => actor_type),
            snapshots: metrics::counter!(SNAPSHOTS, "actor_type" => actor_type),
            panics: metrics::counter!(PANICS, "actor_type" => actor_type),
            duplicates: metrics::counter!(DUPLICATE_COMMANDS, "actor_type" => actor_type),
            replayed: metrics::histogram!(REPLAYED_EVENTS, "actor_type" => actor_type),
            latency: metrics::histogram!(COMMAND_SECONDS, "actor_type" => actor_type),
            mailbox: metrics::histogram!(MAILBOX_DEPTH, "actor_type" => actor_type),
            active: metrics::gauge!(ACTIVE_ACTORS, "actor_type" => actor_type),
        }
    }
}
