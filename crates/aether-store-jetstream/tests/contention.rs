//! Several OS processes, each with its own store, racing on the same hot actors: conflicts and
//! nothing else, every acknowledged append stored once, reads working during and after, and no
//! server-side state left behind (the consumer count returns to its baseline). Also under a low
//! account consumer limit, and with 10,000 actors activated at once.
//!
//! The racers are this test binary run again (`race_child`, selected by `AETHER_RACE_CHILD`).

// Test code: a failed expectation panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::io::Write as _;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aether_core::{Event, EventStore, EventStoreWithErrors, StoreError};
use aether_store_jetstream::{JetStreamConfig, JetStreamEventStore};
use aether_testkit::nats::NatsServer;
use futures::StreamExt;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const CHILD_ENV: &str = "AETHER_RACE_CHILD";
const STORE: &str = "events";
/// The hot actors both processes write.
const HOT_ACTORS: usize = 5;
const RACE: Duration = Duration::from_secs(10);
/// Writers per process.
const WRITERS: usize = 4;

fn ev(actor: &str, version: u64) -> Event {
    Event::builder(actor, "Raced")
        .version(version)
        .payload(&version)
        .build()
        .unwrap()
}

fn actor(i: usize) -> String {
    format!("hot-{i}")
}

/// What one racing process reports on its last stdout line.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Report {
    acked: u64,
    conflicts: u64,
    errors: u64,
    reads: u64,
    read_errors: u64,
    first_error: Option<String>,
}

/// A server whose (only) account may hold at most `max_consumers` consumers, for clients that
/// connect without credentials. Returns the server and its config file (kept alive with it).
async fn server_with_consumer_limit(max_consumers: u32) -> (NatsServer, tempfile::NamedTempFile) {
    let mut conf = tempfile::NamedTempFile::new().unwrap();
    write!(
        conf,
        "accounts {{\n  APP {{\n    jetstream {{ max_consumers: {max_consumers} }}\n    \
         users [ {{ user: app, password: app }} ]\n  }}\n}}\nno_auth_user: app\n"
    )
    .unwrap();
    let path = conf.path().display().to_string();
    let server = NatsServer::start_with("aether-limits", vec!["-c".into(), path])
        .await
        .expect("start nats-server with an account consumer limit");
    (server, conf)
}

async fn open(client: async_nats::Client) -> JetStreamEventStore {
    JetStreamEventStore::with_config(client, STORE, JetStreamConfig::default())
        .await
        .expect("open the store")
}

/// The number of consumers on the store's stream, as the server reports it.
async fn consumer_count(js: &async_nats::jetstream::Context, stream: &str) -> usize {
    let mut stream = js.get_stream(stream).await.expect("stream");
    stream
        .info()
        .await
        .expect("stream info")
        .state
        .consumer_count
}

/// Runs `processes` racers against `url` for [`RACE`]; returns their reports, the event ids
/// they say were acknowledged, and the highest consumer count sampled meanwhile.
async fn race(url: &str, processes: usize, stream: &str) -> (Vec<Report>, Vec<String>, usize) {
    let client = async_nats::connect(url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let dir = tempfile::tempdir().unwrap();
    let mut children = Vec::new();
    for p in 0..processes {
        let ids = dir.path().join(format!("acked-{p}"));
        let spec = format!("{url}|{}", ids.display());
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "race_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, spec)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn a racer");
        let stdout = child.stdout.take().unwrap();
        children.push((child, BufReader::new(stdout).lines(), ids));
    }
    // Sample the consumer count while they race.
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (js, done, stream) = (js.clone(), done.clone(), stream.to_owned());
        tokio::spawn(async move {
            let mut max = 0;
            let mut samples = Vec::new();
            while !done.load(Ordering::Relaxed) {
                let n = consumer_count(&js, &stream).await;
                max = max.max(n);
                samples.push(n);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            eprintln!("consumer count every 250 ms during the race: {samples:?}");
            max
        })
    };
    let mut reports = Vec::new();
    let mut acked = Vec::new();
    for (mut child, mut lines, ids) in children {
        let mut report = None;
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(json) = line.split("RACE ").nth(1) {
                report = Some(serde_json::from_str::<Report>(json).unwrap());
            }
        }
        assert!(child.wait().await.unwrap().success(), "a racer failed");
        let report = report.expect("the racer printed its report");
        let text = std::fs::read_to_string(&ids).unwrap();
        acked.extend(text.lines().map(str::to_owned));
        assert_eq!(
            text.lines().count() as u64,
            report.acked,
            "the racer wrote every id it reported"
        );
        reports.push(report);
    }
    done.store(true, Ordering::Relaxed);
    let max = sampler.await.unwrap();
    (reports, acked, max)
}

/// Checks what the race left: every acknowledged id stored exactly once and nothing else, every
/// actor readable by a fresh store without a skipped record, and the consumer count back at its
/// baseline within a second.
async fn check_after(client: async_nats::Client, acked: &[String], baseline: usize) {
    let js = async_nats::jetstream::new(client.clone());
    let store = open(client).await;
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let n = consumer_count(&js, store.stream_name()).await;
        if n <= baseline {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{n} consumers remain a second after the load stopped (baseline {baseline})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut stored: HashMap<String, u32> = HashMap::new();
    let mut total = 0;
    for i in 0..HOT_ACTORS {
        let read = store.get_events_with_errors(&actor(i), 0).await.unwrap();
        assert!(read.errors.is_empty(), "skipped records: {:?}", read.errors);
        let versions: Vec<u64> = read.events.iter().map(Event::version).collect();
        assert!(
            versions.windows(2).all(|w| w[0] < w[1]),
            "versions increase"
        );
        total += read.events.len();
        for e in &read.events {
            *stored.entry(e.id().to_string()).or_default() += 1;
        }
        // The plain read works too.
        assert_eq!(
            store.get_events(&actor(i), 0).await.unwrap().len(),
            read.events.len()
        );
    }
    let info = js
        .get_stream(store.stream_name())
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    assert_eq!(
        info as usize, total,
        "every stored record is a readable event"
    );
    assert_eq!(
        total,
        acked.len(),
        "as many records as acknowledged appends"
    );
    for id in acked {
        assert_eq!(
            stored.get(id),
            Some(&1),
            "acknowledged event {id} stored once"
        );
    }
}

fn assert_clean(reports: &[Report]) {
    for r in reports {
        assert_eq!(r.errors, 0, "append errors: {:?}", r.first_error);
        assert_eq!(r.read_errors, 0, "read errors: {:?}", r.first_error);
        assert!(r.acked > 0 && r.reads > 0, "the racer worked: {r:?}");
    }
    assert!(
        reports.iter().map(|r| r.conflicts).sum::<u64>() > 0,
        "the processes raced (conflicts): {reports:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_racing_on_hot_actors_meet_conflicts_only() {
    let server = NatsServer::start().await.expect("start nats-server");
    let client = server.connect().await.unwrap();
    let store = open(client.clone()).await;
    let js = async_nats::jetstream::new(client.clone());
    let baseline = consumer_count(&js, store.stream_name()).await;
    let (reports, acked, max) = race(&server.url(), 2, store.stream_name()).await;
    eprintln!("race on one server: {reports:?}, at most {max} consumers");
    assert_clean(&reports);
    check_after(client, &acked, baseline).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_race_holds_under_a_low_account_consumer_limit() {
    let (server, _conf) = server_with_consumer_limit(2).await;
    let client = server.connect().await.unwrap();
    let store = open(client.clone()).await;
    let (reports, acked, max) = race(&server.url(), 2, store.stream_name()).await;
    eprintln!("race under max_consumers 2: {reports:?}, at most {max} consumers");
    assert_clean(&reports);
    assert!(max <= 2, "the server's limit held ({max})");
    check_after(client, &acked, 0).await;
}

/// Activating 10,000 actors at once (their snapshots and histories read concurrently, some long
/// enough for a consumer) under an account limit of 2 consumers: every read succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_activations_at_once_stay_within_the_server_limits() {
    const ACTORS: usize = 10_000;
    const LONG: usize = 20;
    const LONG_EVENTS: u64 = 900;
    let (server, _conf) = server_with_consumer_limit(2).await;
    let client = server.connect().await.unwrap();
    let store = Arc::new(open(client.clone()).await);
    // Seed: most actors with 1 event, a few with a history long enough for a replay consumer.
    let seeding = Instant::now();
    let seeded = futures::stream::iter(0..ACTORS)
        .map(|i| {
            let store = store.clone();
            async move {
                let id = format!("act-{i}");
                if i < LONG {
                    store
                        .save_events((1..=LONG_EVENTS).map(|v| ev(&id, v)).collect())
                        .await
                } else {
                    store.save_event(ev(&id, 1)).await
                }
            }
        })
        .buffer_unordered(256)
        .filter_map(|r| futures::future::ready(r.err()))
        .collect::<Vec<_>>()
        .await;
    assert!(
        seeded.is_empty(),
        "seeding failed {} times: {:?}",
        seeded.len(),
        seeded.first()
    );
    eprintln!("seeded {ACTORS} actors in {:?}", seeding.elapsed());
    let fresh = Arc::new(open(server.connect().await.unwrap()).await);
    let started = Instant::now();
    let reads = futures::future::join_all((0..ACTORS).map(|i| {
        let fresh = fresh.clone();
        async move {
            let id = format!("act-{i}");
            let snapshot = aether_core::SnapshotStore::get_latest_snapshot(&*fresh, &id).await?;
            assert!(snapshot.is_none());
            fresh.get_events(&id, 0).await.map(|e| e.len())
        }
    }))
    .await;
    eprintln!(
        "10,000 activations at once: {:?} (consumers now {})",
        started.elapsed(),
        consumer_count(
            &async_nats::jetstream::new(client.clone()),
            fresh.stream_name()
        )
        .await
    );
    let failed: Vec<&StoreError> = reads.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} reads failed, first: {}",
        failed.len(),
        failed[0]
    );
    for (i, r) in reads.iter().enumerate() {
        let want = if i < LONG { LONG_EVENTS as usize } else { 1 };
        assert_eq!(r.as_ref().ok(), Some(&want), "actor act-{i}");
    }
    let js = async_nats::jetstream::new(client);
    assert_eq!(consumer_count(&js, fresh.stream_name()).await, 0);
}

/// One racing process: `WRITERS` tasks appending to the hot actors with refresh-and-retry, and a
/// reader replaying them, for [`RACE`]. Prints `RACE <json report>`; writes acknowledged ids to
/// the file named in the spec. Does nothing unless started by [`race`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a child process of the race tests"]
async fn race_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (url, ids_path) = spec.split_once('|').unwrap();
    let client = async_nats::connect(url).await.unwrap();
    let store = Arc::new(open(client).await);
    let deadline = Instant::now() + RACE;
    let conflicts = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (store, conflicts, errors) = (store.clone(), conflicts.clone(), errors.clone());
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut turn = w;
            while Instant::now() < deadline {
                turn += 1;
                let id = actor(turn % HOT_ACTORS);
                let mut version = match store.get_latest_version(&id).await {
                    Ok(v) => v,
                    Err(e) => {
                        errors
                            .lock()
                            .unwrap()
                            .push(format!("latest version: {e:?}"));
                        continue;
                    }
                };
                loop {
                    let event = ev(&id, version + 1);
                    let event_id = event.id();
                    match store.save_event(event).await {
                        Ok(()) => {
                            acked.push(event_id.to_string());
                            break;
                        }
                        Err(StoreError::VersionConflict(c)) => {
                            conflicts.fetch_add(1, Ordering::Relaxed);
                            version = c.current_version;
                        }
                        Err(e) => {
                            errors.lock().unwrap().push(format!("append: {e:?}"));
                            break;
                        }
                    }
                }
            }
            acked
        }));
    }
    let reader = {
        let (store, errors) = (store.clone(), errors.clone());
        tokio::spawn(async move {
            let mut reads = 0u64;
            let mut read_errors = 0u64;
            let mut turn = 0;
            while Instant::now() < deadline {
                turn += 1;
                let id = actor(turn % HOT_ACTORS);
                // Alternately the whole history (long: a consumer) and its tail (direct gets).
                let from = if turn % 2 == 0 {
                    0
                } else {
                    store.cached_version(&id).unwrap_or(0).saturating_sub(5)
                };
                match store.get_events(&id, from).await {
                    Ok(_) => reads += 1,
                    Err(e) => {
                        read_errors += 1;
                        errors.lock().unwrap().push(format!("read: {e:?}"));
                    }
                }
            }
            (reads, read_errors)
        })
    };
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    let (reads, read_errors) = reader.await.unwrap();
    std::fs::write(
        ids_path,
        acked.join("\n") + if acked.is_empty() { "" } else { "\n" },
    )
    .unwrap();
    let errors = errors.lock().unwrap();
    let report = Report {
        acked: acked.len() as u64,
        conflicts: conflicts.load(Ordering::Relaxed),
        errors: errors.len() as u64 - read_errors,
        reads,
        read_errors,
        first_error: errors.first().cloned(),
    };
    println!("RACE {}", serde_json::to_string(&report).unwrap());
}
