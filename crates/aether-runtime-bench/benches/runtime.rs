//! aether-runtime against kameo, ractor, actix, cqrs-es and a raw tokio actor, in the same run.
//!
//! | group | what | baselines |
//! | --- | --- | --- |
//! | `ask_multi_thread` | one ask round trip to a counter actor whose handler emits nothing, 2-worker runtime | raw mpsc + oneshot, kameo, ractor, actix (actor on its own arbiter thread) |
//! | `ask_current_thread` | the same on a current-thread runtime (actix: its own system on this thread) | same |
//! | `tell_100_actors` | 1M tells round-robin over 100 actors, timed until the last is handled | same |
//! | `commands_memory_store` | 10k commands over 1,000 actors, one event each, memory store, 10 callers | cqrs-es with its `MemStore` |
//! | `activation_100k` | activating an actor with 100k events: snapshot at 99k vs none | the same actor without snapshot |
//!
//! Memory per idle actor is measured after the criterion groups, each peer in a fresh child
//! process (RSS growth over 100k actors).
//!
//! Run with `cargo xtask bench -p aether-runtime-bench`. With `AETHER_BENCH_ROWS` set
//! (`cargo xtask bench --report`) it also hands its rows to the benchmark report;
//! `AETHER_BENCH_QUICK` shortens criterion's measurements and sends 200k tells (not 1M).

#![allow(missing_docs)] // criterion_group! generates an undocumented public fn
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // benchmark set-up

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use aether_core::{ActorSnapshot, Event, EventStore, SnapshotStore};
use aether_runtime::{Actor as AetherActor, Runtime, SnapshotPolicy};
use aether_store_memory::InMemoryEventStore;
use aether_testkit::bench::{Better, Figure, ReportRow, quick, record_row};
use criterion::{Criterion, Throughput, criterion_group};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc, oneshot};

const TELL_ACTORS: usize = 100;
const COMMAND_ACTORS: usize = 1000;
const COMMANDS_EACH: usize = 10;
const CALLERS: usize = 10;
const HISTORY: u64 = 100_000;
const MEMORY_ACTORS: usize = 100_000;
/// The design's budget for an idle active actor, state aside (the counter has none).
const IDLE_ACTOR_BUDGET: f64 = 2048.0;

/// Tells per iteration of `tell_100_actors`: 1M, 200k in a quick run.
fn tells() -> u64 {
    if quick() { 200_000 } else { 1_000_000 }
}

// ---------- the counter, five ways ----------

/// Counts handled tells, and wakes the bench when the target is reached.
#[derive(Debug)]
struct Handled {
    count: AtomicU64,
    target: AtomicU64,
    done: Notify,
}

impl Handled {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            count: AtomicU64::new(0),
            target: AtomicU64::new(u64::MAX),
            done: Notify::new(),
        })
    }

    fn hit(&self) {
        let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        if n == self.target.load(Ordering::Relaxed) {
            self.done.notify_one();
        }
    }

    fn arm(&self, target: u64) {
        self.count.store(0, Ordering::Relaxed);
        self.target.store(target, Ordering::Relaxed);
    }
}

static HANDLED: std::sync::OnceLock<Arc<Handled>> = std::sync::OnceLock::new();

fn handled() -> &'static Arc<Handled> {
    HANDLED.get_or_init(Handled::new)
}

// Aether: the handler emits nothing, so nothing is persisted.
#[derive(Debug, Default, Serialize, Deserialize)]
struct AetherCounter;

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

#[derive(Debug, Clone, Copy)]
enum Count {
    Ask,
    Tell,
}

impl AetherActor for AetherCounter {
    const TYPE: &'static str = "counter";
    type Command = Count;
    type Event = ();
    type Error = Never;

    fn handle(&self, command: &Count) -> Result<Vec<()>, Never> {
        if let Count::Tell = command {
            handled().hit();
        }
        Ok(Vec::new())
    }

    fn apply(&mut self, (): &()) {}
}

fn aether_counter() -> Runtime<AetherCounter> {
    Runtime::builder(Arc::new(InMemoryEventStore::new()))
        .max_active(1_000_000)
        .build()
}

// Raw: a tokio task with a bounded mpsc mailbox and a oneshot per ask.
enum RawMsg {
    Ask(oneshot::Sender<u64>),
    Tell,
}

fn raw_counter() -> mpsc::Sender<RawMsg> {
    let (tx, mut rx) = mpsc::channel::<RawMsg>(64);
    tokio::spawn(async move {
        let mut n = 0u64;
        while let Some(m) = rx.recv().await {
            n += 1;
            match m {
                RawMsg::Ask(reply) => {
                    let _ = reply.send(n);
                }
                RawMsg::Tell => handled().hit(),
            }
        }
    });
    tx
}

// kameo
#[derive(kameo::Actor)]
struct KameoCounter {
    n: u64,
}

struct KAsk;
struct KTell;

impl kameo::message::Message<KAsk> for KameoCounter {
    type Reply = u64;
    async fn handle(&mut self, _: KAsk, _: &mut kameo::message::Context<Self, Self::Reply>) -> u64 {
        self.n += 1;
        self.n
    }
}

impl kameo::message::Message<KTell> for KameoCounter {
    type Reply = ();
    async fn handle(&mut self, _: KTell, _: &mut kameo::message::Context<Self, Self::Reply>) {
        self.n += 1;
        handled().hit();
    }
}

fn kameo_counter() -> kameo::actor::ActorRef<KameoCounter> {
    use kameo::Actor as _;
    KameoCounter::spawn(KameoCounter { n: 0 })
}

// ractor
struct RactorCounter;

enum RMsg {
    Ask(ractor::RpcReplyPort<u64>),
    Tell,
}

impl ractor::Actor for RactorCounter {
    type Msg = RMsg;
    type State = u64;
    type Arguments = ();

    async fn pre_start(
        &self,
        _: ractor::ActorRef<RMsg>,
        (): (),
    ) -> Result<u64, ractor::ActorProcessingErr> {
        Ok(0)
    }

    async fn handle(
        &self,
        _: ractor::ActorRef<RMsg>,
        msg: RMsg,
        n: &mut u64,
    ) -> Result<(), ractor::ActorProcessingErr> {
        *n += 1;
        match msg {
            RMsg::Ask(reply) => {
                let _ = reply.send(*n);
            }
            RMsg::Tell => handled().hit(),
        }
        Ok(())
    }
}

async fn ractor_counter() -> ractor::ActorRef<RMsg> {
    let (actor, _handle) = ractor::Actor::spawn(None, RactorCounter, ()).await.unwrap();
    actor
}

// actix
struct ActixCounter(u64);

impl actix::Actor for ActixCounter {
    type Context = actix::Context<Self>;
}

struct AAsk;
impl actix::Message for AAsk {
    type Result = u64;
}
struct ATell;
impl actix::Message for ATell {
    type Result = ();
}

impl actix::Handler<AAsk> for ActixCounter {
    type Result = u64;
    fn handle(&mut self, _: AAsk, _: &mut Self::Context) -> u64 {
        self.0 += 1;
        self.0
    }
}

impl actix::Handler<ATell> for ActixCounter {
    type Result = ();
    fn handle(&mut self, _: ATell, _: &mut Self::Context) {
        self.0 += 1;
        handled().hit();
    }
}

/// `n` actix counters on an arbiter thread of their own (actix actors do not run on tokio's
/// multi-thread scheduler).
fn actix_on_own_thread(n: usize) -> Vec<actix::Addr<ActixCounter>> {
    use actix::Actor as _;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let system = actix::System::new();
        system.block_on(async move {
            tx.send((0..n).map(|_| ActixCounter(0).start()).collect::<Vec<_>>())
                .unwrap();
        });
        system.run().unwrap();
    });
    rx.recv().unwrap()
}

// ---------- ask ----------

fn multi_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Times `$iters` sequential runs of `$body` (with `$s` bound to `&$state`) in a task spawned
/// on `$rt`, so the caller is a runtime task like the actor (not the thread blocking on it).
macro_rules! timed {
    ($rt:expr, $iters:expr, $state:expr, |$s:ident| $body:expr) => {{
        let state = $state.clone();
        let iters = $iters;
        $rt.block_on(async move {
            tokio::spawn(async move {
                let $s = &state;
                let start = Instant::now();
                for _ in 0..iters {
                    $body;
                }
                start.elapsed()
            })
            .await
            .unwrap()
        })
    }};
}

fn ask_group(c: &mut Criterion, name: &str, make_rt: fn() -> tokio::runtime::Runtime) {
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Elements(1));
    {
        let rt = make_rt();
        let tx = rt.block_on(async { raw_counter() });
        g.bench_function("raw", |b| {
            b.iter_custom(|iters| {
                timed!(rt, iters, tx, |tx| {
                    let (reply, rx) = oneshot::channel();
                    tx.send(RawMsg::Ask(reply)).await.unwrap();
                    black_box(rx.await.unwrap());
                })
            })
        });
    }
    {
        let rt = make_rt();
        let runtime = rt.block_on(async { aether_counter() });
        let actor = Arc::new(runtime.actor("counter"));
        g.bench_function("aether", |b| {
            b.iter_custom(|iters| {
                timed!(rt, iters, actor, |actor| {
                    black_box(actor.ask(Count::Ask).await.unwrap());
                })
            })
        });
        rt.block_on(runtime.shutdown());
    }
    {
        let rt = make_rt();
        let actor = rt.block_on(async { kameo_counter() });
        g.bench_function("kameo", |b| {
            b.iter_custom(|iters| {
                timed!(rt, iters, actor, |actor| {
                    black_box(actor.ask(KAsk).await.unwrap());
                })
            })
        });
    }
    {
        let rt = make_rt();
        let actor = rt.block_on(ractor_counter());
        g.bench_function("ractor", |b| {
            b.iter_custom(|iters| {
                timed!(rt, iters, actor, |actor| {
                    black_box(ractor::call!(actor, RMsg::Ask).unwrap());
                })
            })
        });
        actor.stop(None);
    }
    if name == "ask_multi_thread" {
        let rt = make_rt();
        let addr = actix_on_own_thread(1).remove(0);
        g.bench_function("actix", |b| {
            b.iter_custom(|iters| {
                timed!(rt, iters, addr, |addr| {
                    black_box(addr.send(AAsk).await.unwrap());
                })
            })
        });
    } else {
        g.bench_function("actix", |b| {
            b.iter_custom(|iters| {
                use actix::Actor as _;
                actix::System::new().block_on(async move {
                    let addr = ActixCounter(0).start();
                    let start = Instant::now();
                    for _ in 0..iters {
                        black_box(addr.send(AAsk).await.unwrap());
                    }
                    start.elapsed()
                })
            })
        });
    }
    g.finish();
}

fn ask_multi(c: &mut Criterion) {
    ask_group(c, "ask_multi_thread", multi_thread);
}

fn ask_current(c: &mut Criterion) {
    ask_group(c, "ask_current_thread", current_thread);
}

// ---------- tell ----------

/// Sends `tells()` messages round-robin over `$targets` with `$send` (from a runtime task) and
/// waits until all are handled.
macro_rules! timed_tells {
    ($rt:expr, $iters:expr, $targets:expr, |$t:ident| $send:expr) => {{
        let targets = Arc::new($targets.clone());
        let mut total = Duration::ZERO;
        for _ in 0..$iters {
            let h = handled();
            h.arm(tells());
            let targets = targets.clone();
            total += $rt.block_on(async move {
                tokio::spawn(async move {
                    let h = handled();
                    let done = h.done.notified();
                    tokio::pin!(done);
                    done.as_mut().enable();
                    let start = Instant::now();
                    for i in 0..tells() as usize {
                        let $t = &targets[i % TELL_ACTORS];
                        $send;
                    }
                    done.await;
                    start.elapsed()
                })
                .await
                .unwrap()
            });
        }
        total
    }};
}

fn tell(c: &mut Criterion) {
    let mut g = c.benchmark_group("tell_100_actors");
    g.throughput(Throughput::Elements(tells()));
    g.sample_size(10);
    let rt = multi_thread();
    {
        let txs: Vec<_> = rt.block_on(async { (0..TELL_ACTORS).map(|_| raw_counter()).collect() });
        g.bench_function("raw", |b| {
            b.iter_custom(|iters| {
                timed_tells!(rt, iters, txs, |tx| tx.send(RawMsg::Tell).await.unwrap())
            })
        });
    }
    {
        let runtime = rt.block_on(async { aether_counter() });
        let actors: Vec<_> = (0..TELL_ACTORS)
            .map(|i| runtime.actor(format!("c{i}")))
            .collect();
        g.bench_function("aether", |b| {
            b.iter_custom(|iters| {
                timed_tells!(rt, iters, actors, |a| a.tell(Count::Tell).await.unwrap())
            })
        });
        rt.block_on(runtime.shutdown());
    }
    {
        let actors: Vec<_> =
            rt.block_on(async { (0..TELL_ACTORS).map(|_| kameo_counter()).collect() });
        g.bench_function("kameo", |b| {
            b.iter_custom(|iters| timed_tells!(rt, iters, actors, |a| a.tell(KTell).await.unwrap()))
        });
    }
    {
        let actors: Vec<_> = rt.block_on(async {
            let mut v = Vec::new();
            for _ in 0..TELL_ACTORS {
                v.push(ractor_counter().await);
            }
            v
        });
        g.bench_function("ractor", |b| {
            b.iter_custom(|iters| timed_tells!(rt, iters, actors, |a| a.cast(RMsg::Tell).unwrap()))
        });
    }
    {
        let addrs = actix_on_own_thread(TELL_ACTORS);
        g.bench_function("actix", |b| {
            b.iter_custom(|iters| timed_tells!(rt, iters, addrs, |a| a.do_send(ATell)))
        });
    }
    g.finish();
}

// ---------- commands on the memory store: aether vs cqrs-es ----------

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Account {
    balance: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum AccountEvent {
    Deposited { cents: u64 },
}

#[derive(Debug, Clone, Copy)]
struct Deposit(u64);

#[derive(Debug, thiserror::Error)]
#[error("zero deposit")]
struct ZeroDeposit;

impl AetherActor for Account {
    const TYPE: &'static str = "account";
    type Command = Deposit;
    type Event = AccountEvent;
    type Error = ZeroDeposit;

    fn handle(&self, Deposit(cents): &Deposit) -> Result<Vec<AccountEvent>, ZeroDeposit> {
        if *cents == 0 {
            return Err(ZeroDeposit);
        }
        Ok(vec![AccountEvent::Deposited { cents: *cents }])
    }

    fn apply(&mut self, AccountEvent::Deposited { cents }: &AccountEvent) {
        self.balance += cents;
    }
}

impl cqrs_es::DomainEvent for AccountEvent {
    fn event_type(&self) -> String {
        "Deposited".to_owned()
    }
    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

#[async_trait::async_trait]
impl cqrs_es::Aggregate for Account {
    type Command = Deposit;
    type Event = AccountEvent;
    type Error = ZeroDeposit;
    type Services = ();

    fn aggregate_type() -> String {
        "account".to_owned()
    }

    async fn handle(&self, command: Deposit, (): &()) -> Result<Vec<AccountEvent>, ZeroDeposit> {
        AetherActor::handle(self, &command)
    }

    fn apply(&mut self, event: AccountEvent) {
        AetherActor::apply(self, &event);
    }
}

fn commands(c: &mut Criterion) {
    let total = (COMMAND_ACTORS * COMMANDS_EACH) as u64;
    let mut g = c.benchmark_group("commands_memory_store");
    g.throughput(Throughput::Elements(total));
    g.sample_size(10);
    let rt = multi_thread();
    g.bench_function("cqrs-es", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut elapsed = Duration::ZERO;
                for _ in 0..iters {
                    let cqrs = Arc::new(cqrs_es::CqrsFramework::new(
                        cqrs_es::mem_store::MemStore::<Account>::default(),
                        vec![],
                        (),
                    ));
                    let start = Instant::now();
                    let callers: Vec<_> = (0..CALLERS)
                        .map(|caller| {
                            let cqrs = cqrs.clone();
                            tokio::spawn(async move {
                                for round in 0..COMMANDS_EACH {
                                    for a in (caller..COMMAND_ACTORS).step_by(CALLERS) {
                                        cqrs.execute(
                                            &format!("acct-{a}"),
                                            Deposit(round as u64 + 1),
                                        )
                                        .await
                                        .unwrap();
                                    }
                                }
                            })
                        })
                        .collect();
                    for c in callers {
                        c.await.unwrap();
                    }
                    elapsed += start.elapsed();
                }
                elapsed
            })
        })
    });
    g.bench_function("aether", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut elapsed = Duration::ZERO;
                for _ in 0..iters {
                    let runtime =
                        Runtime::<Account>::builder(Arc::new(InMemoryEventStore::new())).build();
                    let start = Instant::now();
                    let callers: Vec<_> = (0..CALLERS)
                        .map(|caller| {
                            let runtime = runtime.clone();
                            tokio::spawn(async move {
                                let actors: Vec<_> = (caller..COMMAND_ACTORS)
                                    .step_by(CALLERS)
                                    .map(|a| runtime.actor(format!("acct-{a}")))
                                    .collect();
                                for round in 0..COMMANDS_EACH {
                                    for a in &actors {
                                        a.ask(Deposit(round as u64 + 1)).await.unwrap();
                                    }
                                }
                            })
                        })
                        .collect();
                    for c in callers {
                        c.await.unwrap();
                    }
                    elapsed += start.elapsed();
                    runtime.shutdown().await;
                }
                elapsed
            })
        })
    });
    g.finish();
}

// ---------- activation: snapshot at 99k vs full replay of 100k ----------

fn activation(c: &mut Criterion) {
    let mut g = c.benchmark_group("activation_100k");
    g.sample_size(10);
    let rt = multi_thread();
    let store = Arc::new(InMemoryEventStore::new());
    rt.block_on(async {
        let mut state = Account::default();
        for chunk in (1..=HISTORY).collect::<Vec<_>>().chunks(1000) {
            let batch: Vec<Event> = chunk
                .iter()
                .map(|&v| {
                    Event::builder("long", "Deposited")
                        .version(v)
                        .payload(&AccountEvent::Deposited { cents: 1 })
                        .build()
                        .unwrap()
                })
                .collect();
            store.save_events(batch).await.unwrap();
        }
        for _ in 0..HISTORY - 1000 {
            AetherActor::apply(&mut state, &AccountEvent::Deposited { cents: 1 });
        }
        store
            .save_snapshot(ActorSnapshot::new("long", HISTORY - 1000, &state).unwrap())
            .await
            .unwrap();
    });
    let rt = &rt;
    let run = |runtime: Runtime<Account>| {
        move |b: &mut criterion::Bencher<'_>| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut elapsed = Duration::ZERO;
                    for _ in 0..iters {
                        let start = Instant::now();
                        runtime.create_vm("long").await.unwrap();
                        let (state, version) = runtime.capture_state("long").await.unwrap();
                        elapsed += start.elapsed();
                        assert_eq!((state.balance, version), (HISTORY, HISTORY));
                        runtime.stop_vm("long").await;
                    }
                    elapsed
                })
            })
        }
    };
    let without = Runtime::<Account>::builder(store.clone())
        .snapshot_policy(SnapshotPolicy::off())
        .build();
    g.bench_function("baseline", run(without));
    let with = Runtime::<Account>::builder(store.clone())
        .snapshots(store.clone())
        .snapshot_policy(SnapshotPolicy::off())
        .build();
    g.bench_function("aether", run(with));
    g.finish();
}

// ---------- memory per idle actor (child processes) ----------

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// In a child process: spawn `MEMORY_ACTORS` idle actors of `peer` and print bytes per actor.
fn memory_child(peer: &str) {
    let rt = multi_thread();
    let before;
    let after;
    match peer {
        "raw" => {
            let keep = rt.block_on(async {
                tokio::task::yield_now().await;
                let b = rss_bytes();
                let v: Vec<_> = (0..MEMORY_ACTORS).map(|_| raw_counter()).collect();
                tokio::task::yield_now().await;
                (b, v)
            });
            before = keep.0;
            after = rss_bytes();
            black_box(&keep.1);
        }
        "aether" => {
            let (b, runtime) = rt.block_on(async {
                let runtime =
                    Runtime::<AetherCounter>::builder(Arc::new(InMemoryEventStore::new()))
                        .max_active(MEMORY_ACTORS * 2)
                        .build();
                let b = rss_bytes();
                for i in 0..MEMORY_ACTORS {
                    runtime.create_vm(&format!("a{i}")).await.unwrap();
                }
                // Every actor has finished activating once it answers.
                for i in (0..MEMORY_ACTORS).step_by(1000) {
                    runtime.ask(&format!("a{i}"), Count::Ask).await.unwrap();
                }
                (b, runtime)
            });
            before = b;
            after = rss_bytes();
            black_box(runtime.active_count());
        }
        "kameo" => {
            let keep = rt.block_on(async {
                let b = rss_bytes();
                let v: Vec<_> = (0..MEMORY_ACTORS).map(|_| kameo_counter()).collect();
                for a in v.iter().step_by(1000) {
                    a.ask(KAsk).await.unwrap();
                }
                (b, v)
            });
            before = keep.0;
            after = rss_bytes();
            black_box(&keep.1);
        }
        "ractor" => {
            let keep = rt.block_on(async {
                let b = rss_bytes();
                let mut v = Vec::with_capacity(MEMORY_ACTORS);
                for _ in 0..MEMORY_ACTORS {
                    v.push(ractor_counter().await);
                }
                (b, v)
            });
            before = keep.0;
            after = rss_bytes();
            black_box(&keep.1);
        }
        "actix" => {
            before = rss_bytes();
            let addrs = actix_on_own_thread(MEMORY_ACTORS);
            rt.block_on(async {
                for a in addrs.iter().step_by(1000) {
                    a.send(AAsk).await.unwrap();
                }
            });
            after = rss_bytes();
            black_box(&addrs);
        }
        other => panic!("unknown peer {other}"),
    }
    println!(
        "{}",
        after.saturating_sub(before) as f64 / MEMORY_ACTORS as f64
    );
}

/// Prints the table and returns each peer's bytes per actor (those that parsed).
fn memory_table() -> Vec<(&'static str, f64)> {
    println!(
        "\n== memory per idle actor (RSS growth over {MEMORY_ACTORS} actors, fresh process) =="
    );
    println!("| peer | bytes per actor |");
    println!("| --- | --- |");
    let exe = std::env::current_exe().unwrap();
    let mut measured = Vec::new();
    for peer in ["raw", "aether", "kameo", "ractor", "actix"] {
        let out = std::process::Command::new(&exe)
            .args(["--memory-child", peer])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        println!("| {peer} | {} |", text.trim());
        if let Ok(bytes) = text.trim().parse::<f64>() {
            measured.push((peer, bytes));
        }
    }
    measured
}

/// Criterion's settings; shorter measurements in a quick run.
fn config() -> Criterion {
    if quick() {
        Criterion::default()
            .sample_size(10)
            .measurement_time(Duration::from_millis(800))
            .warm_up_time(Duration::from_millis(300))
    } else {
        Criterion::default()
            .sample_size(20)
            .measurement_time(Duration::from_secs(3))
            .warm_up_time(Duration::from_secs(1))
    }
}

criterion_group! {
    name = benches;
    config = config();
    targets = ask_multi, ask_current, tell, commands, activation
}

fn mean_ns(group: &str, function: &str) -> Option<f64> {
    aether_testkit::bench::mean_ns(&[group, function])
}

/// Hands the criterion rows to the benchmark report (estimates written since `since`).
fn record(since: SystemTime) {
    let est =
        |group: &str, function: &str| aether_testkit::bench::estimate(&[group, function], since);
    for (group, label, target) in [
        ("ask_multi_thread", "2-worker tokio runtime", "multi"),
        (
            "ask_current_thread",
            "current-thread tokio runtime",
            "current",
        ),
    ] {
        let Some(ours) = est(group, "aether") else {
            continue;
        };
        let path = format!("local ask round trip, {label}");
        if let Some(raw) = est(group, "raw") {
            record_row(&ReportRow::criterion_time(
                format!("runtime.ask.{target}.raw"),
                path.clone(),
                1.0,
                ours,
                "raw tokio mpsc + oneshot actor",
                raw,
            ));
        }
        if let Some((peer, t)) = fastest(group, &["kameo", "ractor", "actix"], since) {
            record_row(&ReportRow::criterion_time(
                format!("runtime.ask.{target}.peers"),
                path,
                1.0,
                ours,
                format!("fastest peer ({peer})"),
                t,
            ));
        }
    }
    let group = "tell_100_actors";
    if let Some(ours) = est(group, "aether") {
        let path = format!("tell over {TELL_ACTORS} actors, {} tells", tells());
        let units = tells() as f64;
        if let Some(raw) = est(group, "raw") {
            record_row(&ReportRow::criterion_rate(
                "runtime.tell.raw",
                path.clone(),
                units,
                "tells",
                ours,
                "raw tokio mpsc actor",
                raw,
            ));
        }
        if let Some((peer, t)) = fastest(group, &["kameo", "ractor", "actix"], since) {
            record_row(&ReportRow::criterion_rate(
                "runtime.tell.peers",
                path,
                units,
                "tells",
                ours,
                format!("fastest peer ({peer})"),
                t,
            ));
        }
    }
    let group = "commands_memory_store";
    if let (Some(ours), Some(peer)) = (est(group, "aether"), est(group, "cqrs-es")) {
        record_row(&ReportRow::criterion_rate(
            "runtime.commands.cqrs_es",
            format!(
                "commands on the memory store, {} over {COMMAND_ACTORS} actors, {CALLERS} callers",
                COMMAND_ACTORS * COMMANDS_EACH
            ),
            (COMMAND_ACTORS * COMMANDS_EACH) as f64,
            "commands",
            ours,
            "cqrs-es with its MemStore",
            peer,
        ));
    }
    let group = "activation_100k";
    if let (Some(ours), Some(without)) = (est(group, "aether"), est(group, "baseline")) {
        record_row(&ReportRow::criterion_rate(
            "runtime.activation.snapshot",
            format!(
                "activation of a {}k-event actor with a snapshot at {}k (memory store)",
                HISTORY / 1000,
                (HISTORY - 1000) / 1000
            ),
            1.0,
            "activations",
            ours,
            "the same actor without snapshot (full replay)",
            without,
        ));
    }
}

/// The peer with the lowest mean time in `group`, if any ran.
fn fastest(
    group: &str,
    peers: &[&'static str],
    since: SystemTime,
) -> Option<(&'static str, aether_testkit::bench::Estimate)> {
    peers
        .iter()
        .filter_map(|&p| aether_testkit::bench::estimate(&[group, p], since).map(|e| (p, e)))
        .min_by(|a, b| a.1.mean.total_cmp(&b.1.mean))
}

/// Hands the idle-actor memory row to the benchmark report: Aether against the design's budget,
/// the peers measured in the same run in the note.
fn record_memory(measured: &[(&str, f64)]) {
    let Some(&(_, ours)) = measured.iter().find(|(p, _)| *p == "aether") else {
        return;
    };
    let others: Vec<String> = measured
        .iter()
        .filter(|(p, _)| *p != "aether")
        .map(|(p, b)| format!("{p} {b:.0} B"))
        .collect();
    record_row(
        &ReportRow::new(
            "runtime.memory.idle",
            format!("memory per idle active actor (RSS growth over {MEMORY_ACTORS} actors)"),
            Better::Lower,
            Figure::new(ours, "B"),
            "budget: 2 KiB plus state (the counter has none)",
            Figure::new(IDLE_ACTOR_BUDGET, "B"),
        )
        .note(format!("same run: {}", others.join(", "))),
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--memory-child") {
        memory_child(args.get(i + 1).map(String::as_str).unwrap_or(""));
        return;
    }
    let started = SystemTime::now();
    benches();
    Criterion::default().configure_from_args().final_summary();
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    record(started);
    println!(
        "\n== aether-runtime vs peers (same run; time per operation, ratio = peer time / aether time) =="
    );
    if quick() {
        println!("(quick run: shorter measurements, {} tells)", tells());
    }
    println!("| group | aether | raw | kameo | ractor | actix | cqrs-es | snapshot-less |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for (group, per) in [
        ("ask_multi_thread", 1.0),
        ("ask_current_thread", 1.0),
        ("tell_100_actors", tells() as f64),
        (
            "commands_memory_store",
            (COMMAND_ACTORS * COMMANDS_EACH) as f64,
        ),
        ("activation_100k", 1.0),
    ] {
        let Some(ours) = mean_ns(group, "aether") else {
            continue;
        };
        let cell = |peer: &str| match mean_ns(group, peer) {
            Some(t) => format!("{:.0} ns ({:.2}x)", t / per, t / ours),
            None => "-".to_owned(),
        };
        println!(
            "| {group} | {:.0} ns | {} | {} | {} | {} | {} | {} |",
            ours / per,
            cell("raw"),
            cell("kameo"),
            cell("ractor"),
            cell("actix"),
            cell("cqrs-es"),
            cell("baseline"),
        );
    }
    let measured = memory_table();
    record_memory(&measured);
}
