//! The project's examples live in the top-level `examples/` directory; this package builds them
//! with every feature of the `aether` facade, so each one runs with a plain
//! `cargo run --example NAME` from the repository root. It also compiles the user guide
//! (`docs/guide/`) and the operations and metrics documents as doc tests, so every code block
//! there builds, and runs where it needs no server. It has no library code.

/// `docs/guide/getting-started.md`, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/guide/getting-started.md")]
pub struct GettingStarted;

/// `docs/guide/event-store.md`, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/guide/event-store.md")]
pub struct EventStoreGuide;

/// `docs/guide/bus-and-projections.md`, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/guide/bus-and-projections.md")]
pub struct BusGuide;

/// `docs/guide/actors-and-snapshots.md`, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/guide/actors-and-snapshots.md")]
pub struct ActorsGuide;

/// `docs/guide/running-a-cluster.md`, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/guide/running-a-cluster.md")]
pub struct ClusterGuide;

/// `docs/guide/models.md`, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/guide/models.md")]
pub struct ModelsGuide;

/// `docs/guide/reminders-and-timers.md`, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/guide/reminders-and-timers.md")]
pub struct RemindersGuide;

/// `docs/guide/schema-evolution.md`, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/guide/schema-evolution.md")]
pub struct SchemaEvolutionGuide;

/// `docs/guide/metrics-and-dashboards.md`, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/guide/metrics-and-dashboards.md")]
pub struct MetricsGuide;

/// `docs/metrics.md`, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/metrics.md")]
pub struct MetricsReference;

/// `docs/operations.md`, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/operations.md")]
pub struct Operations;
