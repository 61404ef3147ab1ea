//! Model validation: every problem at once, each with its path in the model.
//!
//! [`Model::validate`] runs one pass per kind of check. A pass is a small function that takes
//! the model (and, for most passes, one bounded context) and pushes what it finds into a shared
//! report:
//!
//! - name passes: names are not empty and unique per kind across the model; fields are checked
//!   with their command or event (names unique within it, types known);
//! - reference passes: commands' emitted events; policies' event, aggregate, command and target
//!   field; the events read models and external systems consume; the commands external systems
//!   and actors issue;
//! - reachability passes: events no command emits, commands nobody issues;
//! - version passes: each event's version chain (version at least 1, every older version
//!   declared once in `previous`), and its former names (not a live event, at least one stored
//!   version, claimed by one event only);
//! - the policy cycle pass, over the whole model.
//!
//! Problems come out in model order: each group of passes runs over every context in turn
//! (names, then references, then reachability, then versions), and within a context the passes
//! follow the order in which a context lists its elements.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::{BoundedContext, Field, Model, is_known_type};

mod problem;
mod versions;

pub use problem::{ElementKind, Problem, ProblemKind, ValidationError};
use versions::{check_event_versions, check_former_names};

impl Model {
    /// Checks references, names, reachability, event versions, policy cycles and field types,
    /// and reports every problem at once.
    ///
    /// Runs the passes in order: the name passes over every context, then the reference passes
    /// over every context, then the reachability passes over every context, then the version
    /// passes over every context, then the policy cycle pass over the whole model.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let mut report = Report::default();
        for passes in [
            &NAME_PASSES[..],
            &REFERENCE_PASSES,
            &REACHABILITY_PASSES,
            &VERSION_PASSES,
        ] {
            for context in &self.contexts {
                for pass in passes {
                    pass(self, context, &mut report);
                }
            }
        }
        check_policy_cycles(self, &mut report);
        if report.problems.is_empty() {
            Ok(())
        } else {
            Err(ValidationError {
                problems: report.problems,
            })
        }
    }
}

/// A pass over one bounded context of the model: it pushes what it finds into the report.
type ContextPass = fn(&Model, &BoundedContext, &mut Report);

/// Names: not empty and unique per kind across the model (fields: unique per command or
/// event, with a known type). In the order a context lists its elements.
const NAME_PASSES: [ContextPass; 7] = [
    check_context_name,
    check_aggregate_names,
    check_event_names,
    check_policy_names,
    check_read_model_names,
    check_external_system_names,
    check_actor_names,
];

/// References by name to events, commands and aggregates.
const REFERENCE_PASSES: [ContextPass; 5] = [
    check_command_emits,
    check_policy_references,
    check_read_model_consumes,
    check_external_system_references,
    check_actor_issues,
];

/// Reachability: events nobody emits, commands nobody issues.
const REACHABILITY_PASSES: [ContextPass; 2] = [check_events_emitted, check_commands_issued];

/// Versions: each event's version chain, then its former names.
const VERSION_PASSES: [ContextPass; 2] = [check_event_versions, check_former_names];

/// The problems found so far, shared by every pass, and the names seen so far per kind.
#[derive(Default)]
struct Report {
    /// Every problem found, in the order found.
    problems: Vec<Problem>,
    /// The names already used, per kind, across the whole model (fields excluded).
    seen: BTreeMap<ElementKind, BTreeSet<String>>,
    /// The former event names claimed so far, each with the event that claimed it first.
    former: BTreeMap<String, String>,
}

impl Report {
    /// Records a problem at `path`.
    fn add(&mut self, path: impl Into<String>, kind: ProblemKind) {
        self.problems.push(Problem {
            path: path.into(),
            kind,
        });
    }

    /// Checks an element's name: not empty, and not used by another element of its kind
    /// anywhere in the model.
    fn name(&mut self, path: &str, kind: ElementKind, name: &str) {
        let seen = self.seen.entry(kind).or_default();
        if let Some(problem) = name_problem(kind, name, seen) {
            self.add(path, problem);
        }
    }

    /// Checks the names of the elements of one kind listed under `key` in a context.
    fn names<'a>(
        &mut self,
        context: &BoundedContext,
        key: &str,
        kind: ElementKind,
        names: impl IntoIterator<Item = &'a str>,
    ) {
        let cp = context_path(context);
        for name in names {
            self.name(&format!("{cp}.{key}[{name}]"), kind, name);
        }
    }

    /// Checks the fields of the command or event at `path`: names not empty and unique among
    /// these fields, types known.
    fn fields(&mut self, path: &str, fields: &[Field]) {
        let mut seen = BTreeSet::new();
        for f in fields {
            let here = format!("{path}.fields[{}]", f.name);
            if let Some(problem) = name_problem(ElementKind::Field, &f.name, &mut seen) {
                self.add(&here, problem);
            }
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

/// What is wrong with `name` given the names of its kind in `seen` (empty, or already there);
/// a new non-empty name is added to `seen`.
fn name_problem(kind: ElementKind, name: &str, seen: &mut BTreeSet<String>) -> Option<ProblemKind> {
    if name.trim().is_empty() {
        Some(ProblemKind::EmptyName { kind })
    } else if !seen.insert(name.to_owned()) {
        Some(ProblemKind::Duplicate {
            kind,
            name: name.to_owned(),
        })
    } else {
        None
    }
}

/// A reference to a `kind` named `name` that does not exist.
fn unknown(kind: ElementKind, name: &str) -> ProblemKind {
    ProblemKind::UnknownReference {
        kind,
        name: name.to_owned(),
    }
}

/// The path of a context, e.g. `contexts[sales]`.
fn context_path(context: &BoundedContext) -> String {
    format!("contexts[{}]", context.name)
}

/// Whether the model has an event named `name`.
fn has_event(model: &Model, name: &str) -> bool {
    model.event(name).is_some()
}

/// Whether some aggregate of the model has a command named `name`.
fn has_command(model: &Model, name: &str) -> bool {
    model.aggregates().any(|(_, a)| a.command(name).is_some())
}

/// Name pass: the context's own name.
fn check_context_name(_: &Model, context: &BoundedContext, r: &mut Report) {
    r.name(&context_path(context), ElementKind::Context, &context.name);
}

/// Name pass: each aggregate's name, then each of its commands' name and fields.
fn check_aggregate_names(_: &Model, context: &BoundedContext, r: &mut Report) {
    let cp = context_path(context);
    for a in &context.aggregates {
        let ap = format!("{cp}.aggregates[{}]", a.name);
        r.name(&ap, ElementKind::Aggregate, &a.name);
        for cmd in &a.commands {
            let p = format!("{ap}.commands[{}]", cmd.name);
            r.name(&p, ElementKind::Command, &cmd.name);
            r.fields(&p, &cmd.fields);
        }
    }
}

/// Name pass: each event's name and fields.
fn check_event_names(_: &Model, context: &BoundedContext, r: &mut Report) {
    let cp = context_path(context);
    for e in &context.events {
        let p = format!("{cp}.events[{}]", e.name);
        r.name(&p, ElementKind::Event, &e.name);
        r.fields(&p, &e.fields);
    }
}

/// Name pass: the policies' names.
fn check_policy_names(_: &Model, context: &BoundedContext, r: &mut Report) {
    let names = context.policies.iter().map(|p| p.name.as_str());
    r.names(context, "policies", ElementKind::Policy, names);
}

/// Name pass: the read models' names.
fn check_read_model_names(_: &Model, context: &BoundedContext, r: &mut Report) {
    let names = context.read_models.iter().map(|m| m.name.as_str());
    r.names(context, "read_models", ElementKind::ReadModel, names);
}

/// Name pass: the external systems' names.
fn check_external_system_names(_: &Model, context: &BoundedContext, r: &mut Report) {
    let names = context.external_systems.iter().map(|x| x.name.as_str());
    r.names(
        context,
        "external_systems",
        ElementKind::ExternalSystem,
        names,
    );
}

/// Name pass: the actors' (roles') names.
fn check_actor_names(_: &Model, context: &BoundedContext, r: &mut Report) {
    let names = context.actors.iter().map(|a| a.name.as_str());
    r.names(context, "actors", ElementKind::Actor, names);
}

/// Reference pass: the events each command emits exist.
fn check_command_emits(model: &Model, context: &BoundedContext, r: &mut Report) {
    let cp = context_path(context);
    for a in &context.aggregates {
        for cmd in &a.commands {
            for (i, e) in cmd.emits.iter().enumerate() {
                if !has_event(model, e) {
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
}

/// Reference pass: each policy's triggering event, target aggregate and its command, and the
/// target field on the triggering event.
fn check_policy_references(model: &Model, context: &BoundedContext, r: &mut Report) {
    let cp = context_path(context);
    for p in &context.policies {
        let pp = format!("{cp}.policies[{}]", p.name);
        if !has_event(model, &p.when) {
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
            Some(_) => {}
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
        if let Some(within) = &p.within
            && p.deadline().is_none()
        {
            r.add(
                format!("{pp}.within"),
                ProblemKind::InvalidDeadline {
                    within: within.clone(),
                },
            );
        }
        if p.within.is_none() && !p.unless.is_empty() {
            r.add(format!("{pp}.unless"), ProblemKind::UnlessWithoutDeadline);
        }
        for (i, e) in p.unless.iter().enumerate() {
            if !has_event(model, e) {
                r.add(format!("{pp}.unless[{i}]"), unknown(ElementKind::Event, e));
            }
        }
    }
}

/// Reference pass: the events each read model consumes exist.
fn check_read_model_consumes(model: &Model, context: &BoundedContext, r: &mut Report) {
    let cp = context_path(context);
    for m in &context.read_models {
        for (i, e) in m.consumes.iter().enumerate() {
            if !has_event(model, e) {
                r.add(
                    format!("{cp}.read_models[{}].consumes[{i}]", m.name),
                    unknown(ElementKind::Event, e),
                );
            }
        }
    }
}

/// Reference pass: the events each external system consumes and the commands it issues exist.
fn check_external_system_references(model: &Model, context: &BoundedContext, r: &mut Report) {
    let cp = context_path(context);
    for x in &context.external_systems {
        for (i, e) in x.consumes.iter().enumerate() {
            if !has_event(model, e) {
                r.add(
                    format!("{cp}.external_systems[{}].consumes[{i}]", x.name),
                    unknown(ElementKind::Event, e),
                );
            }
        }
        for (i, cmd) in x.issues.iter().enumerate() {
            if !has_command(model, cmd) {
                r.add(
                    format!("{cp}.external_systems[{}].issues[{i}]", x.name),
                    unknown(ElementKind::Command, cmd),
                );
            }
        }
    }
}

/// Reference pass: the commands each actor (role) issues exist.
fn check_actor_issues(model: &Model, context: &BoundedContext, r: &mut Report) {
    let cp = context_path(context);
    for actor in &context.actors {
        for (i, cmd) in actor.issues.iter().enumerate() {
            if !has_command(model, cmd) {
                r.add(
                    format!("{cp}.actors[{}].issues[{i}]", actor.name),
                    unknown(ElementKind::Command, cmd),
                );
            }
        }
    }
}

/// Reachability pass: each event is emitted by some command of some aggregate.
fn check_events_emitted(model: &Model, context: &BoundedContext, r: &mut Report) {
    let cp = context_path(context);
    for e in &context.events {
        let emitted = model
            .aggregates()
            .flat_map(|(_, a)| &a.commands)
            .any(|cmd| cmd.emits.contains(&e.name));
        if !emitted {
            r.add(
                format!("{cp}.events[{}]", e.name),
                ProblemKind::EventNeverEmitted {
                    name: e.name.clone(),
                },
            );
        }
    }
}

/// Reachability pass: each command is issued by an actor, an external system, or a policy
/// whose target aggregate has it.
fn check_commands_issued(model: &Model, context: &BoundedContext, r: &mut Report) {
    let cp = context_path(context);
    for a in &context.aggregates {
        for cmd in &a.commands {
            if !is_issued(model, &cmd.name) {
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

/// Whether an actor, an external system or a policy issues the command `name`. A policy counts
/// only when its target aggregate exists and has a command of that name.
fn is_issued(model: &Model, name: &str) -> bool {
    model.contexts.iter().any(|c| {
        c.policies.iter().any(|p| {
            p.issue == name
                && model
                    .aggregate(&p.to)
                    .is_some_and(|a| a.command(&p.issue).is_some())
        }) || c
            .external_systems
            .iter()
            .any(|x| x.issues.iter().any(|i| i == name))
            || c.actors.iter().any(|a| a.issues.iter().any(|i| i == name))
    })
}

/// Model pass: policies that trigger each other in a loop, each cycle reported once at its
/// first policy.
fn check_policy_cycles(model: &Model, r: &mut Report) {
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
