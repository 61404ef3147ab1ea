//! The command line: connection options like the `nats` CLI's, the store's name and namespace,
//! and one subcommand per thing an operator looks at.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Look at what Aether keeps on NATS: events, actors, projections, the cluster, and models.
#[derive(Debug, Parser)]
#[command(name = "aether", version, about, long_about = None)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) connection: Connection,
    /// The store's name (`JetStreamEventStore::new(client, NAME)`).
    #[arg(long, global = true, env = "AETHER_STORE", default_value = "events")]
    pub(crate) store: String,
    /// The store's namespace, if it has one.
    #[arg(long, global = true, env = "AETHER_NAMESPACE")]
    pub(crate) namespace: Option<String>,
    /// Print JSON (one object per line where there are several) instead of tables.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// How to reach NATS (the `nats` CLI's names).
#[derive(Debug, Args)]
pub(crate) struct Connection {
    /// NATS server URLs, comma separated.
    #[arg(
        short,
        long,
        global = true,
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub(crate) server: String,
    /// A credentials file (JWT and nkey seed).
    #[arg(long, global = true, env = "NATS_CREDS")]
    pub(crate) creds: Option<PathBuf>,
    /// A file holding an nkey seed (`SU...`) to authenticate with.
    #[arg(long, global = true, env = "NATS_NKEY")]
    pub(crate) nkey: Option<PathBuf>,
    /// The prefix of reply subjects (default `_INBOX`): a user allowed only its own inbox prefix
    /// (a tenant's, in docs/security.md) needs it.
    #[arg(long, global = true, env = "NATS_INBOX_PREFIX")]
    pub(crate) inbox_prefix: Option<String>,
    /// User name.
    #[arg(long, global = true, env = "NATS_USER")]
    pub(crate) user: Option<String>,
    /// Password.
    #[arg(long, global = true, env = "NATS_PASSWORD", hide_env_values = true)]
    pub(crate) password: Option<String>,
    /// Token.
    #[arg(long, global = true, env = "NATS_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// A CA certificate (PEM) to trust the server's certificate with.
    #[arg(long, global = true, env = "NATS_CA")]
    pub(crate) tlsca: Option<PathBuf>,
    /// A client certificate (PEM), with `--tlskey`.
    #[arg(long, global = true, env = "NATS_CERT")]
    pub(crate) tlscert: Option<PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(long, global = true, env = "NATS_KEY")]
    pub(crate) tlskey: Option<PathBuf>,
    /// Seconds to wait for the server, per request.
    #[arg(long, global = true, default_value_t = 5)]
    pub(crate) timeout: u64,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// The event stream: what it holds, whether it is sound, dumping and loading histories.
    #[command(subcommand)]
    Store(StoreCommand),
    /// One actor: its history, its latest snapshot; or every actor and its version.
    #[command(subcommand)]
    Actor(ActorCommand),
    /// Events as they are stored.
    #[command(subcommand)]
    Events(EventsCommand),
    /// Durable projections on the stream: positions, lag, parked events.
    #[command(subcommand)]
    Projections(ProjectionsCommand),
    /// Reminders: an actor's, cancelling one, the reminder stream's state.
    #[command(subcommand)]
    Reminders(RemindersCommand),
    /// A cluster's control plane: members, leader, shard map.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// EventStorming models: check, draw, convert (no server needed).
    #[command(subcommand)]
    Model(ModelCommand),
    /// Prints a shell completion script.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum StoreCommand {
    /// The stream's name, subjects, counts, size, replicas, and whether its settings are what
    /// the library expects.
    Info,
    /// Reads every record: malformed records and versions out of order are problems (exit 1);
    /// gaps between versions are reported (allowed by the store's rules).
    Check,
    /// Writes every event as a history line (docs/schema-evolution.md, "History files").
    Dump {
        /// Only actors whose id starts with this.
        #[arg(long)]
        actor_prefix: Option<String>,
    },
    /// Appends the events of a history file through the store (each at its version, checked).
    Load {
        /// The history file (JSON lines); `-` reads standard input.
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ActorCommand {
    /// The actor's events.
    History {
        /// The actor id.
        id: String,
        /// From this version on.
        #[arg(long, default_value_t = 1)]
        from: u64,
    },
    /// The actor's latest snapshot: its version and state.
    State {
        /// The actor id.
        id: String,
    },
    /// Actors and their latest versions, in subject order.
    Versions {
        /// Only actors whose id starts with this.
        #[arg(long)]
        prefix: Option<String>,
        /// At most this many actors.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Start after this actor id (the last of the previous page).
        #[arg(long)]
        after: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum EventsCommand {
    /// Follows events as they are stored, until interrupted.
    Tail {
        /// Only actors whose id starts with this.
        #[arg(long)]
        actor_prefix: Option<String>,
        /// Only events of this type (repeatable).
        #[arg(long = "type")]
        types: Vec<String>,
        /// Start with the first event in the stream instead of the next one stored.
        #[arg(long)]
        from_start: bool,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ProjectionsCommand {
    /// Every durable consumer on the stream, with its position and lag.
    List,
    /// One projection: position, lag, events delivered but not acknowledged.
    Status {
        /// The projection's name.
        name: String,
    },
    /// Deletes the projection's position: the next `ProjectionRunner::start` reads from the
    /// first event (the runner's `rebuild` also resets the read model).
    Rebuild {
        /// The projection's name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum RemindersCommand {
    /// An actor's reminders: name, when, when next due, the command they deliver.
    List {
        /// The actor type (`Actor::TYPE`).
        actor_type: String,
        /// The actor id.
        actor_id: String,
    },
    /// Cancels one reminder, and a firing of it not yet handed out (exit 4 if it is not set).
    Cancel {
        /// The actor type.
        actor_type: String,
        /// The actor id.
        actor_id: String,
        /// The reminder's name.
        name: String,
    },
    /// The reminder stream: reminders set, firings waiting and being delivered.
    Status,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ClusterCommand {
    /// Members, leader and term, shard map epoch and shards per node.
    Status {
        /// The cluster's name.
        #[arg(long, env = "AETHER_CLUSTER")]
        cluster: String,
    },
    /// Membership, leadership and shard map changes as they happen, until interrupted.
    Watch {
        /// The cluster's name.
        #[arg(long, env = "AETHER_CLUSTER")]
        cluster: String,
        /// Stop after this many changes.
        #[arg(long)]
        count: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ModelCommand {
    /// Validates a model: every problem, each with its path (exit 1 when there are any).
    Check {
        /// The model file (YAML, JSON or TOML, by extension).
        file: PathBuf,
    },
    /// Draws a model.
    Diagram {
        /// The model file.
        file: PathBuf,
        /// The diagram language.
        #[arg(long, value_enum, default_value_t = DiagramFormat::Mermaid)]
        format: DiagramFormat,
    },
    /// Writes a model in another format.
    Convert {
        /// The model file.
        file: PathBuf,
        /// The format to write.
        #[arg(long, value_enum)]
        format: ModelFormat,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum DiagramFormat {
    Mermaid,
    Dot,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum ModelFormat {
    Yaml,
    Json,
    Toml,
}
