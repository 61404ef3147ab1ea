//! Model validation: every problem at once, each with its path in the model.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::model::{Field, Model, is_known_type};

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

impl Model {
    /// Checks references, names, reachability, policy cycles and field types, and reports
    /// every problem at once.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let problems = problems(self);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ValidationError { problems })
        }
    }
}

struct Report(Vec<Problem>);

impl Report {
    fn add(&mut self, path: impl Into<String>, kind: ProblemKind) {
        self.0.push(Problem {
            path: path.into(),
            kind,
        });
    }

    fn name(&mut self, path: &str, kind: ElementKind, name: &str, seen: &mut BTreeSet<String>) {
        if name.trim().is_empty() {
            self.add(path, ProblemKind::EmptyName { kind });
        } else if !seen.insert(name.to_owned()) {
            self.add(
                path,
                ProblemKind::Duplicate {
                    kind,
                    name: name.to_owned(),
                },
            );
        }
    }

    fn fields(&mut self, path: &str, fields: &[Field]) {
        let mut seen = BTreeSet::new();
        for f in fields {
            let here = format!("{path}.fields[{}]", f.name);
            self.name(&here, ElementKind::Field, &f.name, &mut seen);
            if !is_known_type(&f.ty) {
                self.add(
                    here,
                    ProblemKind::UnknownFieldType {
                        field: f.name.clone(),
                        ty: f.ty.clone(),
                    },
                );
            }
        }
    }
}

fn unknown(kind: ElementKind, name: &str) -> ProblemKind {
    ProblemKind::UnknownReference {
        kind,
        name: name.to_owned(),
    }
}

fn problems(model: &Model) -> Vec<Problem> {
    let mut r = Report(Vec::new());
    // Names, uniqueness (model-wide per kind; fields per owner) and field types.
    let mut names: BTreeMap<ElementKind, BTreeSet<String>> = BTreeMap::new();
    for c in &model.contexts {
        let cp = format!("contexts[{}]", c.name);
        r.name(
            &cp,
            ElementKind::Context,
            &c.name,
            names.entry(ElementKind::Context).or_default(),
        );
        for a in &c.aggregates {
            let ap = format!("{cp}.aggregates[{}]", a.name);
            r.name(
                &ap,
                ElementKind::Aggregate,
                &a.name,
                names.entry(ElementKind::Aggregate).or_default(),
            );
            for cmd in &a.commands {
                let p = format!("{ap}.commands[{}]", cmd.name);
                r.name(
                    &p,
                    ElementKind::Command,
                    &cmd.name,
                    names.entry(ElementKind::Command).or_default(),
                );
                r.fields(&p, &cmd.fields);
            }
        }
        for e in &c.events {
            let p = format!("{cp}.events[{}]", e.name);
            r.name(
                &p,
                ElementKind::Event,
                &e.name,
                names.entry(ElementKind::Event).or_default(),
            );
            r.fields(&p, &e.fields);
        }
        for (items, kind, key) in [
            (
                c.policies
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>(),
                ElementKind::Policy,
                "policies",
            ),
            (
                c.read_models.iter().map(|p| p.name.as_str()).collect(),
                ElementKind::ReadModel,
                "read_models",
            ),
            (
                c.external_systems.iter().map(|p| p.name.as_str()).collect(),
                ElementKind::ExternalSystem,
                "external_systems",
            ),
            (
                c.actors.iter().map(|p| p.name.as_str()).collect(),
                ElementKind::Actor,
                "actors",
            ),
        ] {
            for name in items {
                r.name(
                    &format!("{cp}.{key}[{name}]"),
                    kind,
                    name,
                    names.entry(kind).or_default(),
                );
            }
        }
    }

    // References.
    let events: BTreeSet<&str> = model
        .contexts
        .iter()
        .flat_map(|c| &c.events)
        .map(|e| e.name.as_str())
        .collect();
    let commands: BTreeSet<&str> = model
        .aggregates()
        .flat_map(|(_, a)| &a.commands)
        .map(|c| c.name.as_str())
        .collect();
    let mut emitted = BTreeSet::new();
    let mut issued = BTreeSet::new();
    for c in &model.contexts {
        let cp = format!("contexts[{}]", c.name);
        for a in &c.aggregates {
            for cmd in &a.commands {
                for (i, e) in cmd.emits.iter().enumerate() {
                    emitted.insert(e.as_str());
                    if !events.contains(e.as_str()) {
                        r.add(
                            format!(
                                "{cp}.aggregates[{}].commands[{}].emits[{i}]",
                                a.name, cmd.name
                            ),
                            unknown(ElementKind::Event, e),
                        );
                    }
                }
            }
        }
        for p in &c.policies {
            let pp = format!("{cp}.policies[{}]", p.name);
            if !events.contains(p.when.as_str()) {
                r.add(format!("{pp}.when"), unknown(ElementKind::Event, &p.when));
            }
            match model.aggregate(&p.to) {
                None => r.add(format!("{pp}.to"), unknown(ElementKind::Aggregate, &p.to)),
                Some(a) if a.command(&p.issue).is_none() => {
                    r.add(
                        format!("{pp}.issue"),
                        unknown(ElementKind::Command, &p.issue),
                    );
                }
                Some(_) => {
                    issued.insert(p.issue.as_str());
                }
            }
            if let Some(field) = &p.target_field
                && let Some(event) = model.event(&p.when)
                && !event.fields.iter().any(|f| &f.name == field)
            {
                r.add(
                    format!("{pp}.target_field"),
                    ProblemKind::UnknownTargetField {
                        event: p.when.clone(),
                        field: field.clone(),
                    },
                );
            }
        }
        for m in &c.read_models {
            for (i, e) in m.consumes.iter().enumerate() {
                if !events.contains(e.as_str()) {
                    r.add(
                        format!("{cp}.read_models[{}].consumes[{i}]", m.name),
                        unknown(ElementKind::Event, e),
                    );
                }
            }
        }
        for x in &c.external_systems {
            for (i, e) in x.consumes.iter().enumerate() {
                if !events.contains(e.as_str()) {
                    r.add(
                        format!("{cp}.external_systems[{}].consumes[{i}]", x.name),
                        unknown(ElementKind::Event, e),
                    );
                }
            }
            for (i, cmd) in x.issues.iter().enumerate() {
                issued.insert(cmd.as_str());
                if !commands.contains(cmd.as_str()) {
                    r.add(
                        format!("{cp}.external_systems[{}].issues[{i}]", x.name),
                        unknown(ElementKind::Command, cmd),
                    );
                }
            }
        }
        for actor in &c.actors {
            for (i, cmd) in actor.issues.iter().enumerate() {
                issued.insert(cmd.as_str());
                if !commands.contains(cmd.as_str()) {
                    r.add(
                        format!("{cp}.actors[{}].issues[{i}]", actor.name),
                        unknown(ElementKind::Command, cmd),
                    );
                }
            }
        }
    }

    // Reachability: events nobody emits, commands nobody issues.
    for c in &model.contexts {
        let cp = format!("contexts[{}]", c.name);
        for e in &c.events {
            if !emitted.contains(e.name.as_str()) {
                r.add(
                    format!("{cp}.events[{}]", e.name),
                    ProblemKind::EventNeverEmitted {
                        name: e.name.clone(),
                    },
                );
            }
        }
        for a in &c.aggregates {
            for cmd in &a.commands {
                if !issued.contains(cmd.name.as_str()) {
                    r.add(
                        format!("{cp}.aggregates[{}].commands[{}]", a.name, cmd.name),
                        ProblemKind::CommandNeverIssued {
                            name: cmd.name.clone(),
                        },
                    );
                }
            }
        }
    }

    // Policy cycles.
    for cycle in policy_cycles(model) {
        let first = cycle.first().cloned().unwrap_or_default();
        let context = model
            .contexts
            .iter()
            .find(|c| c.policies.iter().any(|p| p.name == first))
            .map(|c| c.name.clone())
            .unwrap_or_default();
        let mut policies = cycle;
        policies.push(first.clone());
        r.add(
            format!("contexts[{context}].policies[{first}]"),
            ProblemKind::PolicyCycle { policies },
        );
    }
    r.0
}

/// Cycles among policies: P -> Q when P's command emits the event Q waits for. Each cycle is
/// reported once, starting at the policy declared first.
fn policy_cycles(model: &Model) -> Vec<Vec<String>> {
    let policies: Vec<_> = model.policies().collect();
    let next: Vec<Vec<usize>> = policies
        .iter()
        .map(|p| {
            let emits: Vec<&str> = model
                .aggregate(&p.to)
                .and_then(|a| a.command(&p.issue))
                .map(|c| c.emits.iter().map(String::as_str).collect())
                .unwrap_or_default();
            policies
                .iter()
                .enumerate()
                .filter(|(_, q)| emits.contains(&q.when.as_str()))
                .map(|(j, _)| j)
                .collect()
        })
        .collect();
    let mut found = BTreeSet::new();
    // Depth-first from every policy, with the path kept; small graphs, so simple is fine.
    fn walk(
        at: usize,
        next: &[Vec<usize>],
        path: &mut Vec<usize>,
        found: &mut BTreeSet<Vec<usize>>,
    ) {
        for &to in &next[at] {
            if let Some(start) = path.iter().position(|&p| p == to) {
                let mut cycle = path[start..].to_vec();
                let min = cycle
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, v)| **v)
                    .map(|(i, _)| i)
                    .unwrap_or(0);
                cycle.rotate_left(min);
                found.insert(cycle);
            } else if path.len() < next.len() {
                path.push(to);
                walk(to, next, path, found);
                path.pop();
            }
        }
    }
    for start in 0..policies.len() {
        walk(start, &next, &mut vec![start], &mut found);
    }
    found
        .into_iter()
        .map(|c| c.into_iter().map(|i| policies[i].name.clone()).collect())
        .collect()
}
