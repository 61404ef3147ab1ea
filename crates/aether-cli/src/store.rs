//! `aether store info | check | dump | load`.

use std::collections::BTreeMap;

use aether_core::history::{self, Line};
use aether_core::{EventStore, wire};
use aether_store_jetstream::{layout, stream_problems};
use serde_json::json;

use crate::cli::StoreCommand;
use crate::connect::Context;
use crate::failure::Failure;
use crate::output::Output;
use crate::scan;

pub(crate) async fn run(command: StoreCommand, ctx: &Context, out: &Output) -> Result<(), Failure> {
    match command {
        StoreCommand::Info => info(ctx, out).await,
        StoreCommand::Check => check(ctx, out).await,
        StoreCommand::Dump { actor_prefix } => dump(ctx, out, actor_prefix.as_deref()).await,
        StoreCommand::Load { file } => load(ctx, out, &file).await,
    }
}

async fn info(ctx: &Context, out: &Output) -> Result<(), Failure> {
    let mut stream = ctx.stream().await?;
    let info = stream
        .info()
        .await
        .map_err(|e| Failure::nats(format!("reading stream {}", ctx.stream), e))?;
    let config = &info.config;
    let problems = stream_problems(config);
    let snapshots = layout::snapshot_bucket(&ctx.stream);
    let has_snapshots = ctx.js.get_key_value(&snapshots).await.is_ok();
    if out.json {
        out.json_line(&json!({
            "stream": ctx.stream,
            "subjects": config.subjects,
            "messages": info.state.messages,
            "actors": info.state.subjects_count,
            "bytes": info.state.bytes,
            "first_sequence": info.state.first_sequence,
            "last_sequence": info.state.last_sequence,
            "replicas": config.num_replicas,
            "storage": format!("{:?}", config.storage).to_lowercase(),
            "max_age_secs": config.max_age.as_secs(),
            "consumers": info.state.consumer_count,
            "snapshot_bucket": has_snapshots.then_some(snapshots),
            "compatible": problems.is_empty(),
            "problems": problems,
        }));
    } else {
        out.fields(&[
            ("stream", ctx.stream.clone()),
            ("subjects", config.subjects.join(", ")),
            ("events", info.state.messages.to_string()),
            ("actors", info.state.subjects_count.to_string()),
            ("bytes", info.state.bytes.to_string()),
            (
                "sequences",
                format!(
                    "{}..={}",
                    info.state.first_sequence, info.state.last_sequence
                ),
            ),
            ("replicas", config.num_replicas.to_string()),
            ("storage", format!("{:?}", config.storage).to_lowercase()),
            (
                "max age",
                if config.max_age.is_zero() {
                    "forever".to_owned()
                } else {
                    format!("{} s", config.max_age.as_secs())
                },
            ),
            ("consumers", info.state.consumer_count.to_string()),
            (
                "snapshots",
                if has_snapshots {
                    snapshots
                } else {
                    "none".to_owned()
                },
            ),
            (
                "compatible",
                if problems.is_empty() {
                    "yes".to_owned()
                } else {
                    format!("NO: {}", problems.join("; "))
                },
            ),
        ]);
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Failure::Problems(format!(
            "stream {} is not what an Aether store expects",
            ctx.stream
        )))
    }
}

/// A problem or a note found by `check`, at a stream sequence.
struct Finding {
    sequence: u64,
    kind: &'static str,
    detail: String,
}

async fn check(ctx: &Context, out: &Output) -> Result<(), Failure> {
    let prefix = layout::subject_prefix(&ctx.stream);
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    let (mut problems, mut gaps) = (Vec::new(), Vec::new());
    let read = scan::all(ctx, "checking", |record| {
        let at = record.sequence;
        let mut problem = |kind, detail: String| {
            problems.push(Finding {
                sequence: at,
                kind,
                detail,
            });
        };
        let event = match wire::decode_event_shared(&record.payload) {
            Ok(event) => event,
            Err(e) => {
                problem("malformed", format!("{} on {}", e, record.subject));
                return Ok(true);
            }
        };
        let token = record.subject.strip_prefix(&prefix).unwrap_or_default();
        if layout::actor_from_token(token).as_deref() != Some(event.actor_id()) {
            problem(
                "subject",
                format!(
                    "event of actor {:?} stored on {}",
                    event.actor_id(),
                    record.subject
                ),
            );
        }
        let version = event.version();
        let before = last
            .insert(event.actor_id().to_owned(), version)
            .unwrap_or(0);
        if version <= before {
            problem(
                "order",
                format!(
                    "actor {:?}: version {version} after version {before}",
                    event.actor_id()
                ),
            );
        } else if version > before + 1 {
            gaps.push(Finding {
                sequence: at,
                kind: "gap",
                detail: format!(
                    "actor {:?}: version {version} after version {before}",
                    event.actor_id()
                ),
            });
        }
        Ok(true)
    })
    .await?;
    if out.json {
        for f in problems.iter().chain(&gaps) {
            out.json_line(&json!({"sequence": f.sequence, "kind": f.kind, "detail": f.detail}));
        }
        out.json_line(&json!({
            "records": read, "actors": last.len(), "problems": problems.len(), "gaps": gaps.len()
        }));
    } else {
        let rows: Vec<Vec<String>> = problems
            .iter()
            .chain(&gaps)
            .map(|f| vec![f.sequence.to_string(), f.kind.to_owned(), f.detail.clone()])
            .collect();
        if !rows.is_empty() {
            out.table(&["sequence", "kind", "detail"], &rows);
        }
        out.line(format!(
            "{read} records, {} actors: {} problems, {} gaps (gaps are allowed)",
            last.len(),
            problems.len(),
            gaps.len()
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Failure::Problems(format!("{} problems", problems.len())))
    }
}

async fn dump(ctx: &Context, out: &Output, prefix: Option<&str>) -> Result<(), Failure> {
    let mut skipped = Vec::new();
    scan::all(ctx, "dumping", |record| {
        match wire::decode_event_shared(&record.payload) {
            Ok(event) if prefix.is_none_or(|p| event.actor_id().starts_with(p)) => {
                match history::to_line(&event) {
                    Ok(line) => out.line(line),
                    Err(e) => skipped.push(format!("record {}: {e}", record.sequence)),
                }
            }
            Ok(_) => {}
            Err(e) => skipped.push(format!("record {}: {e}", record.sequence)),
        }
        Ok(true)
    })
    .await?;
    if skipped.is_empty() {
        return Ok(());
    }
    for s in &skipped {
        eprintln!("aether: skipped {s}");
    }
    Err(Failure::Problems(format!(
        "{} records skipped (not events)",
        skipped.len()
    )))
}

async fn load(ctx: &Context, out: &Output, file: &std::path::Path) -> Result<(), Failure> {
    let lines = if file.as_os_str() == "-" {
        history::read(std::io::stdin().lock())
    } else {
        history::read_file(file)
    }
    .map_err(|e| Failure::Input(e.to_string()))?;
    let store = ctx.open_store().await?;
    let mut actors = std::collections::BTreeSet::new();
    let mut loaded = 0u64;
    let events = lines.into_iter().filter_map(|line| match line {
        Line::Event(event) => Some(event),
        _ => None,
    });
    for (n, event) in events.enumerate() {
        let actor = event.actor_id().to_owned();
        store.save_event(event).await.map_err(|e| {
            if e.is_version_conflict() {
                Failure::Problems(format!("event {} of the file: {e}", n + 1))
            } else {
                Failure::nats(format!("appending event {} of the file", n + 1), e)
            }
        })?;
        actors.insert(actor);
        loaded += 1;
    }
    if out.json {
        out.json_line(&json!({"events": loaded, "actors": actors.len(), "stream": ctx.stream}));
    } else {
        out.line(format!(
            "loaded {loaded} events of {} actors into {}",
            actors.len(),
            ctx.stream
        ));
    }
    Ok(())
}
