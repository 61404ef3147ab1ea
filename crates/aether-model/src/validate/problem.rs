//! What model validation reports: each problem's kind (with its message) and path, and the
//! error holding them all.

use std::fmt;
use std::ops::RangeInclusive;

/// The kind of element a problem is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum ElementKind {
    /// A bounded context.
    Context,
    /// An aggregate.
    Aggregate,
    /// A command.
    Command,
    /// A domain event.
    Event,
    /// A policy.
    Policy,
    /// A read model.
    ReadModel,
    /// An external system.
    ExternalSystem,
    /// An actor (role).
    Actor,
    /// A field.
    Field,
}

impl fmt::Display for ElementKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ElementKind::Context => "context",
            ElementKind::Aggregate => "aggregate",
            ElementKind::Command => "command",
            ElementKind::Event => "event",
            ElementKind::Policy => "policy",
            ElementKind::ReadModel => "read model",
            ElementKind::ExternalSystem => "external system",
            ElementKind::Actor => "actor",
            ElementKind::Field => "field",
        })
    }
}

/// What is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProblemKind {
    /// A name refers to an element that does not exist.
    #[error("unknown {kind} `{name}`")]
    UnknownReference {
        /// What kind of element was expected.
        kind: ElementKind,
        /// The name used.
        name: String,
    },
    /// Two elements of a kind share a name (fields: within one command or event).
    #[error("duplicate {kind} `{name}`")]
    Duplicate {
        /// The kind.
        kind: ElementKind,
        /// The name.
        name: String,
    },
    /// An element has an empty name.
    #[error("empty {kind} name")]
    EmptyName {
        /// The kind.
        kind: ElementKind,
    },
    /// No command of any aggregate emits this event.
    #[error("no aggregate emits event `{name}`")]
    EventNeverEmitted {
        /// The event.
        name: String,
    },
    /// No actor, external system or policy issues this command.
    #[error("no actor, external system or policy issues command `{name}`")]
    CommandNeverIssued {
        /// The command.
        name: String,
    },
    /// Policies trigger each other in a loop.
    #[error("policy cycle: {}", policies.join(" -> "))]
    PolicyCycle {
        /// The policies of the cycle, in order, the first repeated at the end.
        policies: Vec<String>,
    },
    /// A field's type is not one the model knows.
    #[error(
        "field `{field}` has unknown type `{ty}` (known: string, integer, number, boolean, timestamp, uuid, money, object, list<..> of those)"
    )]
    UnknownFieldType {
        /// The field.
        field: String,
        /// The type written.
        ty: String,
    },
    /// A policy targets the actor named by a field its triggering event does not have.
    #[error("event `{event}` has no field `{field}` to find the target actor")]
    UnknownTargetField {
        /// The triggering event.
        event: String,
        /// The field.
        field: String,
    },
    /// A policy's deadline is not a duration the model understands.
    #[error("policy deadline `{within}` is not a duration like `30m`, `1h30m` or `2d`")]
    InvalidDeadline {
        /// What was written.
        within: String,
    },
    /// A policy lists `unless` events without a deadline.
    #[error("`unless` needs a deadline (`within`)")]
    UnlessWithoutDeadline,
    /// An event's version is 0 (versions start at 1).
    #[error("event `{event}` has version 0: versions start at 1")]
    InvalidEventVersion {
        /// The event.
        event: String,
    },
    /// A `previous` entry's version is not below the event's current version (or is 0).
    #[error(
        "event `{event}` is at version {current} but lists previous version {version} (previous versions: {})",
        previous_range(*.current)
    )]
    PreviousVersionOutOfRange {
        /// The event.
        event: String,
        /// The version listed in `previous`.
        version: u32,
        /// The event's current version.
        current: u32,
    },
    /// Two `previous` entries of an event have the same version.
    #[error("event `{event}` lists previous version {version} twice")]
    DuplicatePreviousVersion {
        /// The event.
        event: String,
        /// The version listed twice.
        version: u32,
    },
    /// An event at version `current` does not declare every older version in `previous`.
    #[error(
        "event `{event}` is at version {current} but {} not declared in `previous`",
        missing_text(.missing)
    )]
    MissingPreviousVersions {
        /// The event.
        event: String,
        /// The event's current version.
        current: u32,
        /// The versions not declared, as ascending runs (e.g. `1..=2`, `4..=4`).
        missing: Vec<RangeInclusive<u32>>,
    },
    /// An event's former name is the name of a live event of the model.
    #[error(
        "event `{event}` lists former name `{former}`, but `{former}` is a live event of the model"
    )]
    FormerNameIsLive {
        /// The event that lists the former name.
        event: String,
        /// The former name.
        former: String,
    },
    /// A former name claims no stored version (`versions: 0`), or more than
    /// [`crate::MAX_FORMER_VERSIONS`].
    #[error(
        "event `{event}` lists former name `{former}` with versions {versions}: a former name has between 1 and 1000 stored versions"
    )]
    InvalidFormerVersions {
        /// The event that lists the former name.
        event: String,
        /// The former name.
        former: String,
        /// The versions it claims.
        versions: u32,
    },
    /// Two events (or one event twice) claim the same former name.
    #[error("former name `{former}` of event `{event}` is already claimed by event `{first}`")]
    FormerNameClaimedTwice {
        /// The former name.
        former: String,
        /// The event that claims it again.
        event: String,
        /// The event that claimed it first.
        first: String,
    },
}

/// The versions an event at version `current` may list in `previous`, in words.
fn previous_range(current: u32) -> String {
    match current {
        0 | 1 => "none".to_owned(),
        2 => "only 1".to_owned(),
        _ => format!("1 to {}", current - 1),
    }
}

/// Missing versions in words: "version 2 is", "versions 1, 2 and 4 to 7 are".
fn missing_text(missing: &[RangeInclusive<u32>]) -> String {
    let mut parts = Vec::new();
    for run in missing {
        let (from, to) = (*run.start(), *run.end());
        match to.saturating_sub(from) {
            0 => parts.push(from.to_string()),
            1 => parts.extend([from.to_string(), to.to_string()]),
            _ => parts.push(format!("{from} to {to}")),
        }
    }
    let single = matches!(missing, [run] if run.start() == run.end());
    let list = match parts.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        _ => parts.concat(),
    };
    if single {
        format!("version {list} is")
    } else {
        format!("versions {list} are")
    }
}

/// One problem and where it is, e.g. `contexts[sales].aggregates[Order].commands[Place].emits[0]`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Problem {
    /// The path to the offending element.
    pub path: String,
    /// What is wrong.
    pub kind: ProblemKind,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.kind)
    }
}

/// A model that does not validate: all its problems.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ValidationError {
    /// Every problem found, in model order.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the model has {} problem(s):", self.problems.len())?;
        for p in &self.problems {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationError {}
