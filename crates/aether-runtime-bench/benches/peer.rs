//! Aether's runtime on the JetStream store against the closest Rust peer, eventsourced 0.27 +
//! eventsourced-nats 0.16, and against raw async-nats doing the same writes by hand, on one
//! R1 file-store nats-server, in the same run.
//!
//! | row | workload | raw limits |
//! | --- | --- | --- |
//! | a | one entity, 10k commands one after another | a JetStream publish with the same bytes and headers and the expected last subject sequence, awaited one at a time |
//! | b | 100 entities x 100 commands: entities concurrent, each entity's commands in order | the same checked chains written by hand; the same publishes pipelined (no check) |
//! | c | 1,000 entities x 10 commands | the same checked chains, each first reading its entity's last record (one JetStream direct get of the subject's last message; none for a new entity); the same publishes pipelined (no check) |
//! | d | rehydrate one entity of 10k events (no snapshot) | an ordered consumer reading the same subject |
//!
//! Every command emits `Deposited { amount, memo }` (a 150-character memo), the same entity logic
//! on both sides. Rounds are interleaved (the order rotates every round) on one server; each cell
//! is the median of the rounds with the spread (min-max), and beside throughput the client's CPU
//! time per command (`getrusage`, user + system, the whole bench process: the server is another
//! process). Histories for row d are written before the first round, so every read meets a
//! settled stream.
//!
//! The peer needs feature `peer` (its build script needs `protoc`):
//! `cargo xtask bench -p aether-runtime-bench --bench peer` turns it on and provides `protoc`.
//! Without it, the rows show Aether and the raw limits only. `AETHER_PEER_ROUNDS` sets the rounds
//! (15 by default), a first argument such as `b,c` the rows. Without `--bench` (as `cargo test
//! --all-targets` runs it) it is a smoke run with small sizes and one round. With
//! `AETHER_BENCH_QUICK` (`cargo xtask bench --report --quick`) the sizes are a tenth (1,000
//! sequential commands, 20 x 20, 200 x 5, 2,000 events) and the rounds 9; with
//! `AETHER_BENCH_ROWS` set the rows are also handed to the benchmark report.

#![allow(missing_docs)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // benchmark set-up

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use aether_core::{Event, EventStore, wire};
use aether_runtime::{Actor, Runtime};
use aether_store_jetstream::{JetStreamConfig, JetStreamEventStore, layout};
use aether_testkit::bench::{Better, Figure, ReportRow, Spread, quick, record_row};
use aether_testkit::nats::NatsServer;
use async_nats::HeaderMap;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::push::OrderedConfig;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{DirectGetErrorKind, Stream};
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

/// Set without `--bench`: a smoke run, not a measurement.
static SMOKE: AtomicBool = AtomicBool::new(false);

fn smoke() -> bool {
    SMOKE.load(Ordering::Relaxed)
}

const MEMO: &str = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor \
                    incididunt ut labore et dolore magna aliqua. Ut enim ad minim veniam, quis.";

// ---------- the entity, on both sides ----------

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Account {
    balance: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum AccountEvent {
    Deposited { amount: u64, memo: String },
}

fn deposited(amount: u64) -> AccountEvent {
    AccountEvent::Deposited {
        amount,
        memo: MEMO.to_owned(),
    }
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

impl Actor for Account {
    const TYPE: &'static str = "account";
    type Command = u64;
    type Event = AccountEvent;
    type Error = Never;

    fn handle(&self, amount: &u64) -> Result<Vec<AccountEvent>, Never> {
        Ok(vec![deposited(*amount)])
    }

    fn apply(&mut self, AccountEvent::Deposited { amount, .. }: &AccountEvent) {
        self.balance += amount;
    }
}

#[cfg(feature = "peer")]
mod peer {
    use std::num::NonZeroUsize;

    use eventsourced::binarize::serde_json::SerdeJsonBinarize;
    use eventsourced::snapshot_store::noop::NoopSnapshotStore;
    use eventsourced::{Command, CommandEffect, EntityRef, EventSourced, EventSourcedExt};
    use eventsourced_nats::{NatsEventLog, NatsEventLogConfig};

    use super::{AccountEvent, Never, deposited};

    #[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
    pub(super) struct PeerAccount {
        balance: u64,
    }

    impl EventSourced for PeerAccount {
        type Id = String;
        type Event = AccountEvent;
        const TYPE_NAME: &'static str = "account";

        fn handle_event(self, AccountEvent::Deposited { amount, .. }: AccountEvent) -> Self {
            Self {
                balance: self.balance + amount,
            }
        }
    }

    #[derive(Debug)]
    pub(super) struct Deposit(pub(super) u64);

    impl Command<PeerAccount> for Deposit {
        type Reply = u64;
        type Error = Never;

        fn handle_command(
            self,
            _id: &String,
            _state: &PeerAccount,
        ) -> CommandEffect<PeerAccount, u64, Never> {
            CommandEffect::emit_and_reply(deposited(self.0), |s: &PeerAccount| s.balance)
        }
    }

    pub(super) type Log = NatsEventLog<String>;

    pub(super) async fn log(url: &str) -> Log {
        NatsEventLog::new(NatsEventLogConfig {
            server_addr: url.to_owned(),
            event_stream_name: "peer".to_owned(),
            setup: true,
            ..Default::default()
        })
        .await
        .unwrap()
    }

    pub(super) async fn spawn(log: &Log, id: String) -> EntityRef<PeerAccount> {
        PeerAccount::default()
            .entity()
            .spawn(
                id,
                None,
                NonZeroUsize::MIN,
                log.clone(),
                NoopSnapshotStore::<String>::new(),
                SerdeJsonBinarize,
            )
            .await
            .unwrap()
    }

    pub(super) async fn commands(log: &Log, id: String, n: u64) {
        let entity = spawn(log, id).await;
        for _ in 0..n {
            entity.handle_command(Deposit(1)).await.unwrap().unwrap();
        }
    }

    pub(super) async fn rehydrate(log: &Log, id: String) {
        spawn(log, id).await;
    }

    pub(super) fn encode(event: &AccountEvent) -> bytes::Bytes {
        eventsourced::binarize::serde_json::to_bytes(event).unwrap()
    }
}

// ---------- measuring ----------

/// `--features mimalloc`: the whole bench (both sides) on mimalloc, to measure what an
/// application's allocator choice gives (the library never picks one).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Client CPU time (user + system) of this process so far.
fn cpu_now() -> Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    let usage = getrusage(UsageWho::RUSAGE_SELF).unwrap();
    let tv =
        |t: nix::sys::time::TimeVal| Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1000);
    tv(usage.user_time()) + tv(usage.system_time())
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    wall: Duration,
    cpu: Duration,
}

async fn measure<F: Future<Output = ()>>(work: F) -> Sample {
    let (cpu, wall) = (cpu_now(), Instant::now());
    work.await;
    Sample {
        wall: wall.elapsed(),
        cpu: cpu_now() - cpu,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Who {
    Aether,
    /// Aether without `Nats-Msg-Id` on single appends (the default).
    AetherNoIds,
    Peer,
    /// The same checks written by hand.
    Raw,
    /// The same checks by hand, without `Nats-Msg-Id`.
    RawNoIds,
    /// The same publishes pipelined, no check.
    Pipelined,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Row {
    A,
    B,
    C,
    D,
}

#[derive(Debug, Clone, Copy)]
struct Sizes {
    sequential: u64,
    wide: (u64, u64),
    many: (u64, u64),
    history: u64,
}

impl Sizes {
    fn get() -> Self {
        if smoke() {
            Self {
                sequential: 200,
                wide: (10, 10),
                many: (50, 4),
                history: 500,
            }
        } else if quick() {
            Self {
                sequential: 1_000,
                wide: (20, 20),
                many: (200, 5),
                history: 2_000,
            }
        } else {
            Self {
                sequential: 10_000,
                wide: (100, 100),
                many: (1_000, 10),
                history: 10_000,
            }
        }
    }

    /// Commands (rows a-c) or events (row d) per run of `row`.
    fn units(&self, row: Row) -> u64 {
        match row {
            Row::A => self.sequential,
            Row::B => self.wide.0 * self.wide.1,
            Row::C => self.many.0 * self.many.1,
            Row::D => self.history,
        }
    }
}

// ---------- the contestants ----------

struct Bench {
    server: NatsServer,
    js: async_nats::jetstream::Context,
    /// The store's stream, for the raw chains that read each entity first (row c).
    stream: Stream,
    store: Arc<JetStreamEventStore>,
    runtime: Runtime<Account>,
    /// The same, on a store with the default `message_ids(false)`.
    runtime_no_ids: Runtime<Account>,
    /// The encoded event Aether stores, for the raw publishes.
    body: Bytes,
    #[cfg(feature = "peer")]
    log: peer::Log,
    sizes: Sizes,
}

/// What a hand-written writer would send: the event id as `Nats-Msg-Id` (when `ids`), the version
/// and the event type.
fn headers(version: u64, ids: bool) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if ids {
        headers.insert("Nats-Msg-Id", uuid::Uuid::now_v7().to_string().as_str());
    }
    headers.insert(layout::HEADER_VERSION, version.to_string().as_str());
    headers.insert(layout::HEADER_EVENT_TYPE, "Deposited");
    headers
}

/// The subject's last record as (stream sequence, version), read the cheapest raw way: one
/// JetStream direct get of the subject's last message; (0, 0) when the subject holds none (a new
/// entity).
async fn last_record(stream: &Stream, subject: &str) -> (u64, u64) {
    match stream.direct_get_last_for_subject(subject).await {
        Ok(msg) => {
            let version = msg
                .headers
                .get(layout::HEADER_VERSION)
                .and_then(|v| v.as_str().parse().ok())
                .expect("every record carries its version header");
            (msg.sequence, version)
        }
        Err(e) if matches!(e.kind(), DirectGetErrorKind::NotFound) => (0, 0),
        Err(e) => panic!("reading the last record of {subject}: {e}"),
    }
}

/// One entity's commands by hand: publish, await the ack, the next with the expected last
/// subject sequence (what every event-sourced write needs, without a framework). With `read`
/// (row c) the chain first reads the entity's last record ([`last_record`]) and starts from its
/// sequence and version, as a writer that decides each command against the stored state must;
/// without it, it starts blind at sequence 0.
async fn raw_chain(
    js: async_nats::jetstream::Context,
    subject: String,
    body: Bytes,
    n: u64,
    ids: bool,
    read: Option<Stream>,
) {
    let (mut last, base) = match read {
        Some(stream) => last_record(&stream, &subject).await,
        None => (0, 0),
    };
    for version in base + 1..=base + n {
        let msg = PublishMessage::build()
            .payload(body.clone())
            .headers(headers(version, ids))
            .expected_last_subject_sequence(last);
        let ack = js
            .send_publish(subject.clone(), msg)
            .await
            .unwrap()
            .await
            .unwrap();
        last = ack.sequence;
    }
}

/// The same publishes with no check and no waiting between them, up to `window` acks
/// outstanding (async-nats allows 5,000 in flight per context; a sender waiting for a permit
/// while it holds unawaited acks would wait forever).
async fn raw_pipelined(
    js: async_nats::jetstream::Context,
    subject: String,
    body: Bytes,
    n: u64,
    window: usize,
) {
    let mut acks = std::collections::VecDeque::with_capacity(window);
    for version in 1..=n {
        if acks.len() == window {
            let ack: async_nats::jetstream::context::PublishAckFuture = acks.pop_front().unwrap();
            ack.await.unwrap();
        }
        let msg = PublishMessage::build()
            .payload(body.clone())
            .headers(headers(version, true));
        acks.push_back(js.send_publish(subject.clone(), msg).await.unwrap());
    }
    for ack in acks {
        ack.await.unwrap();
    }
}

impl Bench {
    async fn new() -> Self {
        let server = NatsServer::start().await.unwrap();
        let client = server.connect().await.unwrap();
        let js = async_nats::jetstream::new(client.clone());
        // With ids (the opt-in), beside the default without them (`runtime_no_ids`).
        let store = Arc::new(
            JetStreamEventStore::with_config(
                client.clone(),
                "bench",
                JetStreamConfig::default().message_ids(true),
            )
            .await
            .unwrap(),
        );
        let runtime = Runtime::<Account>::builder(store.clone()).build();
        let no_ids = JetStreamEventStore::with_config(
            client,
            "bench",
            JetStreamConfig::default().message_ids(false),
        )
        .await
        .unwrap();
        let runtime_no_ids = Runtime::<Account>::builder(Arc::new(no_ids)).build();
        let stream = js.get_stream(store.stream_name()).await.unwrap();
        let sample = Event::new("sample", "Deposited", 1, &deposited(1)).unwrap();
        let body = Bytes::from(wire::encode_event(&sample).unwrap());
        #[cfg(feature = "peer")]
        let log = peer::log(&server.url()).await;
        Self {
            server,
            js,
            stream,
            store,
            runtime,
            runtime_no_ids,
            body,
            #[cfg(feature = "peer")]
            log,
            sizes: Sizes::get(),
        }
    }

    fn contestants(row: Row) -> Vec<Who> {
        let mut all = vec![Who::Aether];
        if row != Row::D {
            all.push(Who::AetherNoIds);
        }
        if cfg!(feature = "peer") {
            all.push(Who::Peer);
        }
        all.push(Who::Raw);
        if row != Row::D {
            all.push(Who::RawNoIds);
        }
        if matches!(row, Row::B | Row::C) {
            all.push(Who::Pipelined);
        }
        all
    }

    /// Writes row d's history on every side before any round, so every read meets a settled
    /// stream.
    async fn write_histories(&self) {
        let n = self.sizes.history;
        let events: Vec<Event> = (1..=n)
            .map(|v| Event::new("history", "Deposited", v, &deposited(1)).unwrap())
            .collect();
        for chunk in events.chunks(100) {
            self.store.save_events(chunk.to_vec()).await.unwrap();
        }
        eprintln!("history written: aether");
        #[cfg(feature = "peer")]
        {
            let body = peer::encode(&deposited(1));
            raw_pipelined(self.js.clone(), "peer.account.history".into(), body, n, 256).await;
            eprintln!("history written: peer");
        }
        // Settled: the server answers a read of the last record.
        let stream = self.js.get_stream(self.store.stream_name()).await.unwrap();
        stream
            .get_last_raw_message_by_subject(&self.store.subject_for("history"))
            .await
            .unwrap();
    }

    /// Runs `entities` x `each` commands for `who`, entities concurrently; with `read_first`,
    /// the raw checked chains read each entity's last record before their first write.
    async fn commands(
        &self,
        who: Who,
        tag: &str,
        entities: u64,
        each: u64,
        read_first: bool,
    ) -> Sample {
        let mut tasks = Vec::with_capacity(entities as usize);
        let started = measure(async {
            for e in 0..entities {
                let id = format!("{tag}-{e}");
                let task: tokio::task::JoinHandle<()> = match who {
                    Who::Aether | Who::AetherNoIds => {
                        let runtime = if who == Who::Aether {
                            &self.runtime
                        } else {
                            &self.runtime_no_ids
                        };
                        let actor = runtime.actor(id.as_str());
                        tokio::spawn(async move {
                            for _ in 0..each {
                                actor.ask(1).await.unwrap();
                            }
                        })
                    }
                    #[cfg(feature = "peer")]
                    Who::Peer => {
                        let log = self.log.clone();
                        tokio::spawn(async move { peer::commands(&log, id, each).await })
                    }
                    #[cfg(not(feature = "peer"))]
                    Who::Peer => unreachable!("the peer is built with feature `peer`"),
                    Who::Raw | Who::RawNoIds => tokio::spawn(raw_chain(
                        self.js.clone(),
                        self.store.subject_for(&id),
                        self.body.clone(),
                        each,
                        who == Who::Raw,
                        read_first.then(|| self.stream.clone()),
                    )),
                    Who::Pipelined => tokio::spawn(raw_pipelined(
                        self.js.clone(),
                        self.store.subject_for(&id),
                        self.body.clone(),
                        each,
                        (4_000 / entities as usize).max(1),
                    )),
                };
                tasks.push(task);
            }
            for task in tasks.drain(..) {
                task.await.unwrap();
            }
        });
        started.await
    }

    async fn rehydrate(&self, who: Who) -> Sample {
        let n = self.sizes.history;
        match who {
            Who::Aether | Who::AetherNoIds => {
                // A fresh runtime: activation reads the whole history.
                let runtime = Runtime::<Account>::builder(self.store.clone()).build();
                let sample = measure(async {
                    let (state, version) = runtime.capture_state("history").await.unwrap();
                    assert_eq!((state.balance, version), (n, n));
                })
                .await;
                runtime.shutdown().await;
                sample
            }
            #[cfg(feature = "peer")]
            Who::Peer => measure(peer::rehydrate(&self.log, "history".to_owned())).await,
            #[cfg(not(feature = "peer"))]
            Who::Peer => unreachable!("the peer is built with feature `peer`"),
            Who::Raw | Who::RawNoIds | Who::Pipelined => {
                let stream = self.js.get_stream(self.store.stream_name()).await.unwrap();
                let subject = self.store.subject_for("history");
                measure(async {
                    let mut messages = stream
                        .create_consumer(OrderedConfig {
                            deliver_subject: self.js.client().new_inbox(),
                            filter_subject: subject,
                            deliver_policy: DeliverPolicy::All,
                            ..Default::default()
                        })
                        .await
                        .unwrap()
                        .messages()
                        .await
                        .unwrap();
                    for _ in 0..n {
                        messages.next().await.unwrap().unwrap();
                    }
                })
                .await
            }
        }
    }

    async fn run(&self, row: Row, who: Who, round: usize) -> Sample {
        let tag = format!("{row:?}-{who:?}-{round}");
        let s = self.sizes;
        match row {
            Row::A => self.commands(who, &tag, 1, s.sequential, false).await,
            Row::B => self.commands(who, &tag, s.wide.0, s.wide.1, false).await,
            Row::C => self.commands(who, &tag, s.many.0, s.many.1, true).await,
            Row::D => self.rehydrate(who).await,
        }
    }
}

// ---------- reporting ----------

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Cell {
    rate: f64,
    low: f64,
    high: f64,
    cpu_us: f64,
}

fn cell(samples: &[Sample], units: u64) -> Cell {
    let rates: Vec<f64> = samples
        .iter()
        .map(|s| units as f64 / s.wall.as_secs_f64())
        .collect();
    let cpu: Vec<f64> = samples
        .iter()
        .map(|s| s.cpu.as_secs_f64() * 1e6 / units as f64)
        .collect();
    Cell {
        rate: median(rates.clone()),
        low: rates.iter().copied().fold(f64::INFINITY, f64::min),
        high: rates.iter().copied().fold(0.0, f64::max),
        cpu_us: median(cpu),
    }
}

fn rate(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.1}k", v / 1000.0)
    } else {
        format!("{v:.0}")
    }
}

fn report(results: &BTreeMap<(Row, Who), Vec<Sample>>, sizes: Sizes, rounds: usize) {
    let what = |row: Row| match row {
        Row::A => format!("a: one entity, {} sequential commands", sizes.sequential),
        Row::B => format!("b: {} entities x {} commands", sizes.wide.0, sizes.wide.1),
        Row::C => format!("c: {} entities x {} commands", sizes.many.0, sizes.many.1),
        Row::D => format!("d: rehydrate one entity of {} events", sizes.history),
    };
    if quick() {
        println!("\n(quick run: a tenth of the sizes, {rounds} rounds)");
    }
    println!(
        "\nmedian of {rounds} rounds (min-max); commands/s for a-c, events/s for d; client CPU \
         in us per command (per event for d). `raw checked`: the same publishes, headers and \
         expected-sequence chain written by hand with async-nats (row c's chains first read \
         each entity's last record, one direct get); ids: with `Nats-Msg-Id` \
         (`JetStreamConfig::message_ids(true)`) or without (Aether's default; the peer sends none)\n"
    );
    println!(
        "| workload | ids | Aether | eventsourced-nats | raw checked | raw pipelined | Aether / peer | Aether / raw checked | CPU us: Aether / peer / raw |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for row in [Row::A, Row::B, Row::C, Row::D] {
        let units = sizes.units(row);
        let get = |who: Who| results.get(&(row, who)).map(|s| cell(s, units));
        let show = |c: &Option<Cell>| {
            c.as_ref().map_or("-".to_owned(), |c| {
                format!("{} ({}-{})", rate(c.rate), rate(c.low), rate(c.high))
            })
        };
        let ratio = |x: &Option<Cell>, y: &Option<Cell>| match (x, y) {
            (Some(x), Some(y)) => format!("{:.2}x", x.rate / y.rate),
            _ => "-".to_owned(),
        };
        let cpu = |c: &Option<Cell>| {
            c.as_ref()
                .map_or("-".to_owned(), |c| format!("{:.1}", c.cpu_us))
        };
        let peer = get(Who::Peer);
        let pipelined = get(Who::Pipelined);
        for (ids, ours, raw) in [
            ("on", Who::Aether, Who::Raw),
            ("off", Who::AetherNoIds, Who::RawNoIds),
        ] {
            let (a, r) = (get(ours), get(raw));
            if a.is_none() && r.is_none() {
                continue;
            }
            println!(
                "| {} | {ids} | {} | {} | {} | {} | {} | {} | {} / {} / {} |",
                what(row),
                show(&a),
                show(&peer),
                show(&r),
                if ids == "on" {
                    show(&pipelined)
                } else {
                    "-".to_owned()
                },
                ratio(&a, &peer),
                ratio(&a, &r),
                cpu(&a),
                cpu(&peer),
                cpu(&r),
            );
        }
    }
}

/// Hands rows a-d to the benchmark report: Aether as it is by default (no `Nats-Msg-Id` on
/// single appends) against the peer and against the same writes or reads by hand. The ratio is
/// that of the median rates, as in the table; the spread is the min-max of per-round ratios
/// (both sides ran in the same round).
fn record(results: &BTreeMap<(Row, Who), Vec<Sample>>, sizes: Sizes) {
    for row in [Row::A, Row::B, Row::C, Row::D] {
        let (ours, raw) = if row == Row::D {
            (Who::Aether, Who::Raw)
        } else {
            (Who::AetherNoIds, Who::RawNoIds)
        };
        let Some(a) = results.get(&(row, ours)) else {
            continue;
        };
        let units = sizes.units(row);
        let (path, unit) = match row {
            Row::A => (
                format!("a: one entity, {} sequential commands", sizes.sequential),
                "commands/s",
            ),
            Row::B => (
                format!(
                    "b: {} entities x {} commands, concurrent",
                    sizes.wide.0, sizes.wide.1
                ),
                "commands/s",
            ),
            Row::C => (
                format!(
                    "c: {} entities x {} commands, concurrent",
                    sizes.many.0, sizes.many.1
                ),
                "commands/s",
            ),
            Row::D => (
                format!("d: rehydrate one entity of {} events", sizes.history),
                "events/s",
            ),
        };
        let raw_name = match row {
            Row::D => "raw ordered consumer, same subject",
            Row::C => "raw checked chain reading each entity once first, same headers and bytes",
            _ => "raw checked chain, same headers and bytes",
        };
        let letter = format!("{row:?}").to_lowercase();
        for (id, who, name) in [
            ("eventsourced", Who::Peer, "eventsourced-nats 0.16"),
            ("raw", raw, raw_name),
        ] {
            let Some(b) = results.get(&(row, who)) else {
                continue;
            };
            let (ca, cb) = (cell(a, units), cell(b, units));
            let per_round: Vec<f64> = a
                .iter()
                .zip(b)
                .map(|(a, b)| b.wall.as_secs_f64() / a.wall.as_secs_f64())
                .collect();
            let report_row = ReportRow::new(
                format!("peer.{letter}.{id}"),
                path.clone(),
                Better::Higher,
                Figure::new(ca.rate, unit),
                name,
                Figure::new(cb.rate, unit),
            )
            .spread(Spread::of_rounds(&per_round))
            .cpu_us(ca.cpu_us, cb.cpu_us);
            record_row(&report_row);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    SMOKE.store(!args.iter().any(|a| a == "--bench"), Ordering::Relaxed);
    let only: Option<String> = args.iter().skip(1).find(|a| !a.starts_with('-')).cloned();
    let rounds: usize = if smoke() {
        1
    } else {
        std::env::var("AETHER_PEER_ROUNDS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(if quick() { 9 } else { 15 })
    };
    if !cfg!(feature = "peer") {
        eprintln!(
            "note: built without feature `peer`: eventsourced-nats is left out \
             (`cargo xtask bench -p aether-runtime-bench --bench peer` builds it)"
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let bench = Bench::new().await;
        bench.write_histories().await;
        let rows: Vec<Row> = [Row::A, Row::B, Row::C, Row::D]
            .into_iter()
            .filter(|r| {
                only.as_deref().is_none_or(|o| {
                    o.split(',')
                        .any(|o| format!("{r:?}").eq_ignore_ascii_case(o))
                })
            })
            .collect();
        let mut results: BTreeMap<(Row, Who), Vec<Sample>> = BTreeMap::new();
        for round in 0..rounds {
            for &row in &rows {
                let mut order = Bench::contestants(row);
                // For profiling one side: AETHER_PEER_ONLY=aether|peer|raw|pipelined.
                if let Ok(who) = std::env::var("AETHER_PEER_ONLY") {
                    order.retain(|w| format!("{w:?}").eq_ignore_ascii_case(&who));
                }
                let k = round % order.len();
                order.rotate_left(k);
                for who in order {
                    let sample = bench.run(row, who, round).await;
                    if std::env::var_os("AETHER_PEER_VERBOSE").is_some() {
                        eprintln!(
                            "{row:?} {who:?}: {:?} wall, {:?} cpu",
                            sample.wall, sample.cpu
                        );
                    }
                    results.entry((row, who)).or_default().push(sample);
                }
            }
            eprintln!("round {} of {rounds} done", round + 1);
        }
        report(&results, bench.sizes, rounds);
        record(&results, bench.sizes);
        drop(bench.server);
    });
}
