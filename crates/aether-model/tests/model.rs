//! Loading, validation and diagrams of EventStorming models.

// Test code: a failed expectation panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use aether_model::{
    Aggregate, BoundedContext, Command, DomainEvent, ElementKind, FIELD_TYPES, Field, Format,
    Model, Note, Policy, ProblemKind, ReadModel, Role,
};
use proptest::prelude::*;

fn example_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/model/order_fulfilment.yaml")
}

fn example() -> Model {
    Model::load(example_path()).unwrap()
}

#[test]
fn the_example_model_is_valid() {
    let model = example();
    model.validate().unwrap();
    assert_eq!(model.contexts.len(), 2);
    assert_eq!(model.policies().count(), 3);
}

#[test]
fn the_example_round_trips_through_every_format() {
    let model = example();
    for format in [Format::Yaml, Format::Json, Format::Toml] {
        let text = model.to_text(format).unwrap();
        let back = Model::parse(&text, format).unwrap_or_else(|e| panic!("{format}: {e}\n{text}"));
        assert_eq!(back, model, "{format}");
    }
}

#[test]
fn parse_errors_name_file_line_and_field() {
    let dir = tempdir();
    let yaml = dir.join("bad.yaml");
    std::fs::write(
        &yaml,
        "name: shop\ncontexts:\n  - name: sales\n    aggregates:\n      - name: Order\n        commands: 7\n",
    )
    .unwrap();
    let err = Model::load(&yaml).unwrap_err();
    let at = err.location().unwrap();
    assert_eq!(at.file.as_deref(), Some(yaml.as_path()));
    assert_eq!(at.line, Some(6), "{err}");
    assert_eq!(at.field, "contexts[0].aggregates[0].commands", "{err}");

    let json = r#"{"name": "shop", "contexts": [{"name": "sales", "events": [{"name": "E", "fields": [{"name": "f", "type": "string", "required": "yes"}]}]}]}"#;
    let err = Model::parse(json, Format::Json).unwrap_err();
    let at = err.location().unwrap();
    assert_eq!(at.line, Some(1));
    assert_eq!(
        at.field, "contexts[0].events[0].fields[0].required",
        "{err}"
    );

    let toml = "name = \"shop\"\n\n[[contexts]]\nname = \"sales\"\nsurprise = 1\n";
    let err = Model::parse(toml, Format::Toml).unwrap_err();
    let at = err.location().unwrap();
    assert_eq!(at.line, Some(5), "{err}");
    assert!(err.to_string().contains("surprise"), "{err}");

    let unknown = dir.join("model.txt");
    std::fs::write(&unknown, "name: x").unwrap();
    assert!(
        Model::load(&unknown)
            .unwrap_err()
            .to_string()
            .contains("unknown model format")
    );
}

fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("aether-model-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// One broken model per problem kind; each must report exactly this path and kind.
#[test]
fn every_problem_kind_is_reported_with_its_path() {
    let base = "name: m\ncontexts:\n  - name: c\n    actors: [{ name: A, issues: [Do] }]\n";
    let cases: Vec<(&str, &str, ProblemKind)> = vec![
        (
            "    aggregates: [{ name: G, commands: [{ name: Do, emits: [Nope] }] }]\n",
            "contexts[c].aggregates[G].commands[Do].emits[0]",
            ProblemKind::UnknownReference {
                kind: ElementKind::Event,
                name: "Nope".into(),
            },
        ),
        (
            "    aggregates: [{ name: G, commands: [{ name: Do, emits: [E] }] }]\n    events: [{ name: E }, { name: E }]\n",
            "contexts[c].events[E]",
            ProblemKind::Duplicate {
                kind: ElementKind::Event,
                name: "E".into(),
            },
        ),
        (
            "    aggregates: [{ name: G, commands: [{ name: Do, emits: [E] }] }]\n    events: [{ name: E }, { name: Lonely }]\n",
            "contexts[c].events[Lonely]",
            ProblemKind::EventNeverEmitted {
                name: "Lonely".into(),
            },
        ),
        (
            "    aggregates: [{ name: G, commands: [{ name: Do, emits: [E] }, { name: Orphan, emits: [E] }] }]\n    events: [{ name: E }]\n",
            "contexts[c].aggregates[G].commands[Orphan]",
            ProblemKind::CommandNeverIssued {
                name: "Orphan".into(),
            },
        ),
        (
            "    aggregates: [{ name: G, commands: [{ name: Do, emits: [E] }, { name: Again, emits: [E] }] }]\n    events: [{ name: E }]\n    policies: [{ name: Loop, when: E, issue: Again, to: G }]\n",
            "contexts[c].policies[Loop]",
            ProblemKind::PolicyCycle {
                policies: vec!["Loop".into(), "Loop".into()],
            },
        ),
        (
            "    aggregates: [{ name: G, commands: [{ name: Do, emits: [E], fields: [{ name: when, type: datetime }] }] }]\n    events: [{ name: E }]\n",
            "contexts[c].aggregates[G].commands[Do].fields[when]",
            ProblemKind::UnknownFieldType {
                field: "when".into(),
                ty: "datetime".into(),
            },
        ),
        (
            "    aggregates: [{ name: G, commands: [{ name: Do, emits: [E] }] }]\n    events: [{ name: E }]\n    policies: [{ name: P, when: E, issue: Do, to: Ghost }]\n",
            "contexts[c].policies[P].to",
            ProblemKind::UnknownReference {
                kind: ElementKind::Aggregate,
                name: "Ghost".into(),
            },
        ),
        (
            "    aggregates: [{ name: G, commands: [{ name: Do, emits: [E] }] }]\n    events: [{ name: E }]\n    read_models: [{ name: R, consumes: [Missing] }]\n",
            "contexts[c].read_models[R].consumes[0]",
            ProblemKind::UnknownReference {
                kind: ElementKind::Event,
                name: "Missing".into(),
            },
        ),
        (
            "    aggregates: [{ name: G, commands: [{ name: Do, emits: [E] }, { name: Next, emits: [F] }] }]\n    events: [{ name: E }, { name: F }]\n    policies: [{ name: P, when: E, issue: Next, to: G, target_field: order }]\n",
            "contexts[c].policies[P].target_field",
            ProblemKind::UnknownTargetField {
                event: "E".into(),
                field: "order".into(),
            },
        ),
        (
            "    aggregates: [{ name: G, commands: [{ name: Do, emits: [E] }] }]\n    events: [{ name: E }]\n    read_models: [{ name: \" \" }]\n",
            "contexts[c].read_models[ ]",
            ProblemKind::EmptyName {
                kind: ElementKind::ReadModel,
            },
        ),
    ];
    for (rest, path, kind) in cases {
        let text = format!("{base}{rest}");
        let model = Model::parse(&text, Format::Yaml).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let problems = model.validate().unwrap_err().problems;
        assert!(
            problems.iter().any(|p| p.path == path && p.kind == kind),
            "expected {path}: {kind}\ngot: {problems:#?}\nmodel:\n{text}"
        );
        // A cycle is also a valid-looking model otherwise; everything else is the only problem.
        if !matches!(kind, ProblemKind::PolicyCycle { .. }) {
            assert_eq!(problems.len(), 1, "{problems:#?}\n{text}");
        }
    }
}

#[test]
fn all_problems_are_reported_at_once() {
    let text = "name: m\ncontexts:\n  - name: c\n    aggregates: [{ name: G, commands: [{ name: Do, emits: [X, Y] }] }]\n";
    let err = Model::parse(text, Format::Yaml)
        .unwrap()
        .validate()
        .unwrap_err();
    // Two unknown events and a command nobody issues.
    assert_eq!(err.problems.len(), 3, "{err}");
    assert!(
        err.to_string()
            .contains("contexts[c].aggregates[G].commands[Do].emits[1]: unknown event `Y`")
    );
}

#[test]
fn diagrams_use_eventstorming_colours_and_one_node_per_element() {
    let model = example();
    let mermaid = model.to_mermaid();
    assert!(mermaid.starts_with("flowchart LR"));
    assert!(mermaid.contains("classDef command fill:#a7c7e7"));
    assert!(mermaid.contains("classDef event fill:#ffb347"));
    assert_eq!(mermaid_nodes(&mermaid), model.element_count());
    let dot = model.to_dot();
    assert!(dot.starts_with("digraph"));
    assert_eq!(dot_nodes(&dot), model.element_count());
}

fn mermaid_nodes(text: &str) -> usize {
    text.lines()
        .filter(|l| l.trim_start().starts_with('n') && l.contains("[\"") && l.contains(":::"))
        .count()
}

fn dot_nodes(text: &str) -> usize {
    text.lines()
        .filter(|l| l.trim_start().starts_with('n') && l.contains("[label="))
        .count()
}

/// Valid models by construction: command i emits event i, policies only go from event i to a
/// command j > i (no cycles), every command is issued by a role, every event is emitted.
fn valid_model() -> impl Strategy<Value = Model> {
    let context = (
        1usize..5,
        proptest::collection::vec((0usize..5, 0usize..5), 0..4),
        0usize..3,
        0usize..3,
    );
    proptest::collection::vec(context, 1..4).prop_map(|contexts| {
        let mut model = Model::new("generated");
        for (ci, (commands, policies, read_models, notes)) in contexts.into_iter().enumerate() {
            let mut c = BoundedContext {
                name: format!("ctx{ci}"),
                ..Default::default()
            };
            let cmd = |i: usize| format!("Cmd{ci}_{i}");
            let ev = |i: usize| format!("Evt{ci}_{i}");
            let field = |i: usize| Field {
                name: format!("f{i}"),
                ty: FIELD_TYPES[i % FIELD_TYPES.len()].to_owned(),
                required: i.is_multiple_of(2),
            };
            c.aggregates.push(Aggregate {
                name: format!("Agg{ci}"),
                commands: (0..commands)
                    .map(|i| Command {
                        name: cmd(i),
                        fields: vec![field(i)],
                        emits: vec![ev(i)],
                    })
                    .collect(),
                ..Default::default()
            });
            c.events = (0..commands)
                .map(|i| DomainEvent {
                    name: ev(i),
                    fields: vec![field(i)],
                })
                .collect();
            c.actors.push(Role {
                name: format!("Role{ci}"),
                issues: (0..commands).map(cmd).collect(),
            });
            for (pi, (from, to)) in policies.into_iter().enumerate() {
                let (from, to) = (from % commands, to % commands);
                if from < to {
                    c.policies.push(Policy {
                        name: format!("Pol{ci}_{pi}"),
                        when: ev(from),
                        issue: cmd(to),
                        to: format!("Agg{ci}"),
                        ..Default::default()
                    });
                }
            }
            c.read_models = (0..read_models)
                .map(|i| ReadModel {
                    name: format!("View{ci}_{i}"),
                    consumes: vec![ev(i % commands)],
                })
                .collect();
            c.notes = (0..notes)
                .map(|i| Note {
                    text: format!("note \"{i}\""),
                    about: None,
                })
                .collect();
            model.contexts.push(c);
        }
        model
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn generated_valid_models_validate_and_draw_one_node_per_element(model in valid_model()) {
        prop_assert!(model.validate().is_ok(), "{:?}", model.validate());
        prop_assert_eq!(mermaid_nodes(&model.to_mermaid()), model.element_count());
        prop_assert_eq!(dot_nodes(&model.to_dot()), model.element_count());
        for format in [Format::Yaml, Format::Json, Format::Toml] {
            let back = Model::parse(&model.to_text(format).unwrap(), format).unwrap();
            prop_assert_eq!(&back, &model);
        }
    }
}
