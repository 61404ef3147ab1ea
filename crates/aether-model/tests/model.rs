//! Loading, validation and diagrams of EventStorming models.

// Test code: a failed expectation panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use aether_model::{
    Aggregate, BoundedContext, Command, DomainEvent, ElementKind, EventVersion, FIELD_TYPES, Field,
    Format, FormerName, Model, Note, Policy, ProblemKind, ReadModel, Role,
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
        (
            "    aggregates: [{ name: G, commands: [{ name: Do, emits: [E] }] }]\n    events: [{ name: E, version: 0 }]\n",
            "contexts[c].events[E].version",
            ProblemKind::InvalidEventVersion { event: "E".into() },
        ),
        (
            "    aggregates: [{ name: G, commands: [{ name: Do, emits: [E] }] }]\n    events: [{ name: E, version: 2, previous: [{ version: 1 }, { version: 2 }] }]\n",
            "contexts[c].events[E].previous[1]",
            ProblemKind::PreviousVersionOutOfRange {
                event: "E".into(),
                version: 2,
                current: 2,
            },
        ),
        (
            "    aggregates: [{ name: G, commands: [{ name: Do, emits: [E] }] }]\n    events: [{ name: E, previous: [{ version: 0 }] }]\n",
            "contexts[c].events[E].previous[0]",
            ProblemKind::PreviousVersionOutOfRange {
                event: "E".into(),
                version: 0,
                current: 1,
            },
        ),
        (
            "    aggregates: [{ name: G, commands: [{ name: Do, emits: [E] }] }]\n    events: [{ name: E, version: 2, previous: [{ version: 1 }, { version: 1 }] }]\n",
            "contexts[c].events[E].previous[1]",
            ProblemKind::DuplicatePreviousVersion {
                event: "E".into(),
                version: 1,
            },
        ),
        (
            "    aggregates: [{ name: G, commands: [{ name: Do, emits: [E] }] }]\n    events: [{ name: E, version: 3, previous: [{ version: 1 }] }]\n",
            "contexts[c].events[E].previous",
            ProblemKind::MissingPreviousVersions {
                event: "E".into(),
                current: 3,
                missing: vec![2..=2],
            },
        ),
        (
            "    aggregates: [{ name: G, commands: [{ name: Do, emits: [E] }] }]\n    events: [{ name: E, version: 2, previous: [{ version: 1, fields: [{ name: at, type: date }] }] }]\n",
            "contexts[c].events[E].previous[0].fields[at]",
            ProblemKind::UnknownFieldType {
                field: "at".into(),
                ty: "date".into(),
            },
        ),
        (
            "    aggregates: [{ name: G, commands: [{ name: Do, emits: [E, F] }] }]\n    events: [{ name: E }, { name: F, formerly: [{ name: E }] }]\n",
            "contexts[c].events[F].formerly[E]",
            ProblemKind::FormerNameIsLive {
                event: "F".into(),
                former: "E".into(),
            },
        ),
        (
            "    aggregates: [{ name: G, commands: [{ name: Do, emits: [E] }] }]\n    events: [{ name: E, formerly: [{ name: Old, versions: 0 }] }]\n",
            "contexts[c].events[E].formerly[Old]",
            ProblemKind::InvalidFormerVersions {
                event: "E".into(),
                former: "Old".into(),
                versions: 0,
            },
        ),
        (
            "    aggregates: [{ name: G, commands: [{ name: Do, emits: [E, F] }] }]\n    events: [{ name: E, formerly: [{ name: Old }] }, { name: F, formerly: [{ name: Old, versions: 2 }] }]\n",
            "contexts[c].events[F].formerly[Old]",
            ProblemKind::FormerNameClaimedTwice {
                former: "Old".into(),
                event: "F".into(),
                first: "E".into(),
            },
        ),
        (
            "    aggregates: [{ name: G, commands: [{ name: Do, emits: [E] }] }]\n    events: [{ name: E, formerly: [{ name: \"\" }] }]\n",
            "contexts[c].events[E].formerly[]",
            ProblemKind::EmptyName {
                kind: ElementKind::Event,
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

/// A model whose `MoneyDeposited` is at version 3 (versions 1 and 2 declared) and was once
/// called `Credited` (versions 1 and 2 stored), and whose `AccountOpened` is at version 1.
const VERSIONED: &str = r#"
name: bank
contexts:
  - name: accounts
    actors: [{ name: Teller, issues: [Open, Deposit] }]
    aggregates:
      - name: Account
        commands:
          - { name: Open, emits: [AccountOpened] }
          - { name: Deposit, fields: [{ name: amount, type: money }], emits: [MoneyDeposited] }
    events:
      - name: AccountOpened
      - name: MoneyDeposited
        version: 3
        fields: [{ name: amount, type: money }]
        previous:
          - version: 1
            fields: [{ name: amount, type: string }]
            note: amount was a string
          - version: 2
            fields: [{ name: amount, type: number }]
        formerly:
          - { name: Credited, versions: 2 }
          - { name: FundsAdded }
"#;

#[test]
fn a_versioned_model_loads_validates_and_lists_its_upcast_steps() {
    let model = Model::parse(VERSIONED, Format::Yaml).unwrap();
    model.validate().unwrap();
    let opened = model.event("AccountOpened").unwrap();
    assert_eq!(opened.current_version(), 1);
    assert!(opened.previous.is_empty() && opened.formerly.is_empty());
    assert_eq!(opened.upcast_steps(), []);
    let deposited = model.event("MoneyDeposited").unwrap();
    assert_eq!(deposited.current_version(), 3);
    assert_eq!(
        deposited.previous[0],
        EventVersion {
            version: 1,
            fields: vec![Field {
                name: "amount".into(),
                ty: "string".into(),
                required: true,
            }],
            note: Some("amount was a string".into()),
        }
    );
    assert_eq!(
        deposited.formerly,
        [
            FormerName {
                name: "Credited".into(),
                versions: 2,
            },
            FormerName {
                name: "FundsAdded".into(),
                versions: 1,
            },
        ]
    );
    let steps = deposited.upcast_steps();
    let steps: Vec<(&str, u32)> = steps.iter().map(|(t, v)| (t.as_str(), *v)).collect();
    assert_eq!(
        steps,
        [
            ("MoneyDeposited", 1),
            ("MoneyDeposited", 2),
            ("Credited", 1),
            ("Credited", 2),
            ("FundsAdded", 1),
        ]
    );
}

#[test]
fn a_versioned_model_round_trips_through_every_format() {
    let model = Model::parse(VERSIONED, Format::Yaml).unwrap();
    for format in [Format::Yaml, Format::Json, Format::Toml] {
        let text = model.to_text(format).unwrap();
        let back = Model::parse(&text, format).unwrap_or_else(|e| panic!("{format}: {e}\n{text}"));
        assert_eq!(back, model, "{format}");
    }
    let yaml = model.to_text(Format::Yaml).unwrap();
    assert!(yaml.contains("version: 3"), "{yaml}");
    assert!(yaml.contains("versions: 2"), "{yaml}");
    // Defaults stay out of the text: an event's version 1 and a former name's `versions: 1`.
    let defaults = "name: m\ncontexts:\n  - name: c\n    events: [{ name: E, version: 1, formerly: [{ name: Old, versions: 1 }] }]\n";
    let model = Model::parse(defaults, Format::Yaml).unwrap();
    for format in [Format::Yaml, Format::Json, Format::Toml] {
        let text = model.to_text(format).unwrap();
        assert!(!text.contains("version"), "{format}:\n{text}");
        assert!(text.contains("formerly"), "{format}:\n{text}");
        assert_eq!(Model::parse(&text, format).unwrap(), model, "{format}");
    }
}

#[test]
fn models_without_versions_serialize_as_before() {
    let model = example();
    for format in [Format::Yaml, Format::Json, Format::Toml] {
        let text = model.to_text(format).unwrap();
        for key in ["version", "previous", "formerly"] {
            assert!(!text.contains(key), "{format} has `{key}`:\n{text}");
        }
    }
    for e in model.contexts.iter().flat_map(|c| &c.events) {
        assert_eq!(e.current_version(), 1);
        assert_eq!(e.upcast_steps(), []);
    }
}

#[test]
fn version_problems_read_well() {
    let text = VERSIONED
        .replace("version: 3", "version: 5")
        .replace("{ name: FundsAdded }", "{ name: AccountOpened }");
    let err = Model::parse(&text, Format::Yaml)
        .unwrap()
        .validate()
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(
            "contexts[accounts].events[MoneyDeposited].previous: event `MoneyDeposited` is at version 5 but versions 3 and 4 are not declared in `previous`"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "contexts[accounts].events[MoneyDeposited].formerly[AccountOpened]: event `MoneyDeposited` lists former name `AccountOpened`, but `AccountOpened` is a live event of the model"
        ),
        "{text}"
    );
    assert_eq!(err.problems.len(), 2, "{text}");

    let messages = [
        (
            ProblemKind::MissingPreviousVersions {
                event: "MoneyDeposited".into(),
                current: 3,
                missing: vec![2..=2],
            },
            "event `MoneyDeposited` is at version 3 but version 2 is not declared in `previous`",
        ),
        (
            ProblemKind::MissingPreviousVersions {
                event: "E".into(),
                current: 9,
                missing: vec![1..=1, 3..=4, 6..=8],
            },
            "event `E` is at version 9 but versions 1, 3, 4 and 6 to 8 are not declared in `previous`",
        ),
        (
            ProblemKind::InvalidEventVersion { event: "E".into() },
            "event `E` has version 0: versions start at 1",
        ),
        (
            ProblemKind::PreviousVersionOutOfRange {
                event: "E".into(),
                version: 4,
                current: 3,
            },
            "event `E` is at version 3 but lists previous version 4 (previous versions: 1 to 2)",
        ),
        (
            ProblemKind::PreviousVersionOutOfRange {
                event: "E".into(),
                version: 1,
                current: 1,
            },
            "event `E` is at version 1 but lists previous version 1 (previous versions: none)",
        ),
        (
            ProblemKind::DuplicatePreviousVersion {
                event: "E".into(),
                version: 2,
            },
            "event `E` lists previous version 2 twice",
        ),
        (
            ProblemKind::InvalidFormerVersions {
                event: "E".into(),
                former: "Old".into(),
                versions: 0,
            },
            "event `E` lists former name `Old` with versions 0: a former name has between 1 and 1000 stored versions",
        ),
        (
            ProblemKind::FormerNameClaimedTwice {
                former: "Old".into(),
                event: "F".into(),
                first: "E".into(),
            },
            "former name `Old` of event `F` is already claimed by event `E`",
        ),
    ];
    for (kind, message) in messages {
        assert_eq!(kind.to_string(), message);
    }
}

#[test]
fn a_missing_chain_is_reported_in_runs_even_for_a_huge_version() {
    let text = "name: m\ncontexts:\n  - name: c\n    actors: [{ name: A, issues: [Do] }]\n    aggregates: [{ name: G, commands: [{ name: Do, emits: [E] }] }]\n    events: [{ name: E, version: 4000000000, previous: [{ version: 2 }] }]\n";
    let problems = Model::parse(text, Format::Yaml)
        .unwrap()
        .validate()
        .unwrap_err()
        .problems;
    assert_eq!(
        problems.iter().map(|p| &p.kind).collect::<Vec<_>>(),
        [&ProblemKind::MissingPreviousVersions {
            event: "E".into(),
            current: 4_000_000_000,
            missing: vec![1..=1, 3..=3_999_999_999],
        }]
    );
}

#[test]
fn former_names_are_claimed_once_across_contexts() {
    let text = "name: m\ncontexts:\n  - name: a\n    actors: [{ name: A, issues: [Do] }]\n    aggregates: [{ name: G, commands: [{ name: Do, emits: [E, F] }] }]\n    events: [{ name: E, formerly: [{ name: Old }, { name: Old }] }]\n  - name: b\n    events: [{ name: F, formerly: [{ name: Old }] }]\n";
    let problems = Model::parse(text, Format::Yaml)
        .unwrap()
        .validate()
        .unwrap_err()
        .problems;
    let found: Vec<(&str, &ProblemKind)> = problems
        .iter()
        .map(|p| (p.path.as_str(), &p.kind))
        .collect();
    let twice = |event: &str| ProblemKind::FormerNameClaimedTwice {
        former: "Old".into(),
        event: event.into(),
        first: "E".into(),
    };
    assert_eq!(
        found,
        [
            ("contexts[a].events[E].formerly[Old]", &twice("E")),
            ("contexts[b].events[F].formerly[Old]", &twice("F")),
        ]
    );
}

#[test]
fn diagrams_label_a_versioned_event_with_its_version() {
    let model = Model::parse(VERSIONED, Format::Yaml).unwrap();
    let mermaid = model.to_mermaid();
    assert!(
        mermaid.contains("[\"MoneyDeposited v3\"]:::event"),
        "{mermaid}"
    );
    assert!(mermaid.contains("[\"AccountOpened\"]:::event"), "{mermaid}");
    assert!(model.to_dot().contains("label=\"MoneyDeposited v3\""));
    assert_eq!(mermaid_nodes(&mermaid), model.element_count());
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
                .map(|i| {
                    // Event i is at version 1 + i % 3 with its whole chain declared; each odd one
                    // was once called `Old<ci>_<i>`.
                    let version = 1 + (i % 3) as u32;
                    DomainEvent {
                        name: ev(i),
                        version,
                        fields: vec![field(i)],
                        previous: (1..version)
                            .map(|v| EventVersion {
                                version: v,
                                fields: vec![field(i + v as usize)],
                                note: (v == 1).then(|| format!("first shape of {}", ev(i))),
                            })
                            .collect(),
                        formerly: (i % 2 == 1)
                            .then(|| FormerName {
                                name: format!("Old{ci}_{i}"),
                                versions: version,
                            })
                            .into_iter()
                            .collect(),
                    }
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
