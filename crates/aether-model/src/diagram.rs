//! Diagrams of a model in EventStorming colours: Mermaid and Graphviz DOT.
//!
//! One node per element (commands blue, events orange, aggregates yellow, policies purple, read
//! models green, external systems pink, actors pale yellow, notes grey), one cluster per
//! bounded context, and the EventStorming flow as edges: actor / external system -> command ->
//! aggregate -> event -> policy -> command, event -> read model / external system. An event
//! past version 1 is labelled with its version (`MoneyDeposited v3`).

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::model::Model;

/// The kind of a node, with its EventStorming colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NodeKind {
    /// Blue.
    Command,
    /// Orange.
    Event,
    /// Yellow.
    Aggregate,
    /// Purple.
    Policy,
    /// Green.
    ReadModel,
    /// Pink.
    ExternalSystem,
    /// Pale yellow.
    Actor,
    /// Grey.
    Note,
}

impl NodeKind {
    /// Fill colour.
    pub fn colour(self) -> &'static str {
        match self {
            NodeKind::Command => "#a7c7e7",
            NodeKind::Event => "#ffb347",
            NodeKind::Aggregate => "#fff176",
            NodeKind::Policy => "#c9a0dc",
            NodeKind::ReadModel => "#a8e6a1",
            NodeKind::ExternalSystem => "#f8bbd0",
            NodeKind::Actor => "#fff9c4",
            NodeKind::Note => "#e0e0e0",
        }
    }

    fn class(self) -> &'static str {
        match self {
            NodeKind::Command => "command",
            NodeKind::Event => "event",
            NodeKind::Aggregate => "aggregate",
            NodeKind::Policy => "policy",
            NodeKind::ReadModel => "readModel",
            NodeKind::ExternalSystem => "external",
            NodeKind::Actor => "actor",
            NodeKind::Note => "note",
        }
    }

    const ALL: [NodeKind; 8] = [
        NodeKind::Command,
        NodeKind::Event,
        NodeKind::Aggregate,
        NodeKind::Policy,
        NodeKind::ReadModel,
        NodeKind::ExternalSystem,
        NodeKind::Actor,
        NodeKind::Note,
    ];
}

/// A model as a graph: nodes (with their context) and edges, ready to print.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    /// Nodes: id `n<i>`, kind, label, context index (`None` for model-level notes).
    pub nodes: Vec<(NodeKind, String, Option<usize>)>,
    /// Edges between node indexes.
    pub edges: Vec<(usize, usize)>,
    /// Context names, by index.
    pub contexts: Vec<String>,
}

impl Graph {
    /// Builds the graph of `model`. Unknown references (in an invalid model) draw no edge.
    pub fn of(model: &Model) -> Self {
        let mut g = Graph::default();
        let mut events: HashMap<&str, usize> = HashMap::new();
        let mut commands: HashMap<&str, usize> = HashMap::new();
        let mut aggregates: HashMap<&str, usize> = HashMap::new();
        let add = |g: &mut Graph, kind, label: &str, ctx| {
            g.nodes.push((kind, label.to_owned(), ctx));
            g.nodes.len() - 1
        };
        for (ci, c) in model.contexts.iter().enumerate() {
            g.contexts.push(c.name.clone());
            for e in &c.events {
                let label = if e.version > 1 {
                    format!("{} v{}", e.name, e.version)
                } else {
                    e.name.clone()
                };
                let n = add(&mut g, NodeKind::Event, &label, Some(ci));
                events.entry(&e.name).or_insert(n);
            }
            for a in &c.aggregates {
                let n = add(&mut g, NodeKind::Aggregate, &a.name, Some(ci));
                aggregates.entry(&a.name).or_insert(n);
                for cmd in &a.commands {
                    let m = add(&mut g, NodeKind::Command, &cmd.name, Some(ci));
                    commands.entry(&cmd.name).or_insert(m);
                }
            }
        }
        for (ci, c) in model.contexts.iter().enumerate() {
            for a in &c.aggregates {
                let Some(&an) = aggregates.get(a.name.as_str()) else {
                    continue;
                };
                for cmd in &a.commands {
                    let Some(&cn) = commands.get(cmd.name.as_str()) else {
                        continue;
                    };
                    g.edges.push((cn, an));
                    for e in &cmd.emits {
                        if let Some(&en) = events.get(e.as_str()) {
                            g.edges.push((an, en));
                        }
                    }
                }
            }
            for p in &c.policies {
                let pn = add(&mut g, NodeKind::Policy, &p.name, Some(ci));
                if let Some(&en) = events.get(p.when.as_str()) {
                    g.edges.push((en, pn));
                }
                if let Some(&cn) = commands.get(p.issue.as_str()) {
                    g.edges.push((pn, cn));
                }
            }
            for m in &c.read_models {
                let mn = add(&mut g, NodeKind::ReadModel, &m.name, Some(ci));
                for e in &m.consumes {
                    if let Some(&en) = events.get(e.as_str()) {
                        g.edges.push((en, mn));
                    }
                }
            }
            for x in &c.external_systems {
                let xn = add(&mut g, NodeKind::ExternalSystem, &x.name, Some(ci));
                for cmd in &x.issues {
                    if let Some(&cn) = commands.get(cmd.as_str()) {
                        g.edges.push((xn, cn));
                    }
                }
                for e in &x.consumes {
                    if let Some(&en) = events.get(e.as_str()) {
                        g.edges.push((en, xn));
                    }
                }
            }
            for r in &c.actors {
                let rn = add(&mut g, NodeKind::Actor, &r.name, Some(ci));
                for cmd in &r.issues {
                    if let Some(&cn) = commands.get(cmd.as_str()) {
                        g.edges.push((rn, cn));
                    }
                }
            }
            for note in &c.notes {
                add(&mut g, NodeKind::Note, &note.text, Some(ci));
            }
        }
        for note in &model.notes {
            add(&mut g, NodeKind::Note, &note.text, None);
        }
        g
    }
}

fn mermaid_label(s: &str) -> String {
    s.replace('"', "#quot;").replace('\n', " ")
}

fn dot_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Model {
    /// A Mermaid flowchart of the model.
    pub fn to_mermaid(&self) -> String {
        let g = Graph::of(self);
        let mut out = String::from("flowchart LR\n");
        for kind in NodeKind::ALL {
            let _ = writeln!(
                out,
                "  classDef {} fill:{},stroke:#555,color:#000",
                kind.class(),
                kind.colour()
            );
        }
        let node = |out: &mut String, i: usize, indent: &str| {
            let (kind, label, _) = &g.nodes[i];
            let _ = writeln!(
                out,
                "{indent}n{i}[\"{}\"]:::{}",
                mermaid_label(label),
                kind.class()
            );
        };
        for (ci, name) in g.contexts.iter().enumerate() {
            let _ = writeln!(out, "  subgraph c{ci}[\"{}\"]", mermaid_label(name));
            for i in (0..g.nodes.len()).filter(|&i| g.nodes[i].2 == Some(ci)) {
                node(&mut out, i, "    ");
            }
            out.push_str("  end\n");
        }
        for i in (0..g.nodes.len()).filter(|&i| g.nodes[i].2.is_none()) {
            node(&mut out, i, "  ");
        }
        for (from, to) in &g.edges {
            let _ = writeln!(out, "  n{from} --> n{to}");
        }
        out
    }

    /// A Graphviz DOT digraph of the model (render with `dot -Tsvg`).
    pub fn to_dot(&self) -> String {
        let g = Graph::of(self);
        let mut out = format!(
            "digraph \"{}\" {{\n  rankdir=LR;\n  node [shape=box, style=\"filled,rounded\", fontname=\"Helvetica\"];\n",
            dot_label(&self.name)
        );
        let node = |out: &mut String, i: usize, indent: &str| {
            let (kind, label, _) = &g.nodes[i];
            let shape = if *kind == NodeKind::Note {
                "note"
            } else {
                "box"
            };
            let _ = writeln!(
                out,
                "{indent}n{i} [label=\"{}\", fillcolor=\"{}\", shape={shape}];",
                dot_label(label),
                kind.colour()
            );
        };
        for (ci, name) in g.contexts.iter().enumerate() {
            let _ = writeln!(
                out,
                "  subgraph cluster_{ci} {{\n    label=\"{}\";\n    style=dashed;",
                dot_label(name)
            );
            for i in (0..g.nodes.len()).filter(|&i| g.nodes[i].2 == Some(ci)) {
                node(&mut out, i, "    ");
            }
            out.push_str("  }\n");
        }
        for i in (0..g.nodes.len()).filter(|&i| g.nodes[i].2.is_none()) {
            node(&mut out, i, "  ");
        }
        for (from, to) in &g.edges {
            let _ = writeln!(out, "  n{from} -> n{to};");
        }
        out.push_str("}\n");
        out
    }
}
