//! Handling version conflicts by hand on the raw store — the Go examples' retry patterns in
//! Rust. (The actor runtime does this for you: see `bank_account.rs`.)
//!
//! Every pattern runs with four writers racing on one actor; each must land all its events.
//!
//! Run with `cargo run --example retry_patterns`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use aether::store::memory::InMemoryEventStore;
use aether::{Event, EventStore, StoreError};
use tokio::sync::mpsc;
use tokio::time::Instant;

use breaker::CircuitBreaker;

const WRITERS: u64 = 4;
const EVENTS_EACH: u64 = 25;

type Store = Arc<InMemoryEventStore>;
/// A pattern's own failure (gave up, thrashing) or the store's.
type Failure = Box<dyn std::error::Error + Send + Sync>;

/// One attempt: read the version, append the next one.
async fn attempt(store: &Store, actor: &str, kind: &str) -> Result<u64, StoreError> {
    let version = store.get_latest_version(actor).await? + 1;
    let event = Event::new(actor, kind, version, &version)
        .map_err(|e| StoreError::backend("encoding an event", e))?;
    store.save_event(event).await.map(|()| version)
}

/// A small random share of `base`, without a random-number crate.
fn jitter(base: Duration, percent: u32) -> Duration {
    use std::hash::{BuildHasher, RandomState};
    let nanos = u64::try_from(base.as_nanos()).unwrap_or(u64::MAX);
    let span = nanos / 100 * u64::from(percent);
    Duration::from_nanos(if span == 0 {
        0
    } else {
        RandomState::new().hash_one(nanos) % span
    })
}

/// Simple: retry on conflict with exponential backoff; any other error is final.
async fn simple(store: &Store, actor: &str) -> Result<u64, Failure> {
    let mut backoff = Duration::from_micros(100);
    for _ in 0..10 {
        match attempt(store, actor, "Simple").await {
            Err(e) if e.is_version_conflict() => {
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
            done => return Ok(done?),
        }
    }
    Err("gave up after 10 attempts".into())
}

/// Detailed: read the conflict's versions; stop ("circuit breaker") if the actor does not
/// move between two conflicts, which would mean thrashing rather than progress.
async fn detailed(store: &Store, actor: &str) -> Result<u64, Failure> {
    let mut last_seen = None;
    for n in 0..20u32 {
        match attempt(store, actor, "Detailed").await {
            Err(e) if e.is_version_conflict() => {
                let current = e.as_version_conflict().map(|c| c.current_version);
                if current.is_some() && current == last_seen {
                    return Err(format!("thrashing at version {current:?}").into());
                }
                last_seen = current;
                tokio::time::sleep(Duration::from_micros(50) * (n + 1)).await;
            }
            done => return Ok(done?),
        }
    }
    Err("gave up after 20 attempts".into())
}

/// Jitter: exponential backoff plus a random share, so racing writers spread out.
async fn with_jitter(store: &Store, actor: &str) -> Result<u64, Failure> {
    let mut backoff = Duration::from_micros(100);
    for _ in 0..10 {
        match attempt(store, actor, "Jitter").await {
            Err(e) if e.is_version_conflict() => {
                tokio::time::sleep(backoff + jitter(backoff, 50)).await;
                backoff = (backoff * 2).min(Duration::from_millis(20));
            }
            done => return Ok(done?),
        }
    }
    Err("gave up after 10 attempts".into())
}

/// Adaptive: the further the actor moved past us, the longer the wait.
async fn adaptive(store: &Store, actor: &str) -> Result<u64, Failure> {
    for _ in 0..20 {
        match attempt(store, actor, "Adaptive").await {
            Err(e) if e.is_version_conflict() => {
                let gap = e
                    .as_version_conflict()
                    .map(|c| c.current_version.saturating_sub(c.attempted_version) + 1)
                    .unwrap_or(1);
                let wait = match gap {
                    0..=3 => Duration::from_micros(50),
                    4..=10 => Duration::from_micros(50 * gap),
                    _ => Duration::from_micros(200 * gap),
                };
                tokio::time::sleep(wait).await;
            }
            done => return Ok(done?),
        }
    }
    Err("gave up after 20 attempts".into())
}

/// Eventual consistency: a conflicting write goes to a retry queue a background worker drains.
async fn through_a_queue(store: &Store, actor: &str) -> Result<u64, Failure> {
    let (tx, mut rx) = mpsc::channel::<u32>(EVENTS_EACH as usize);
    let worker = {
        let store = store.clone();
        let actor = actor.to_owned();
        tokio::spawn(async move {
            let mut landed = 0;
            while let Some(failures) = rx.recv().await {
                match with_jitter(&store, &actor).await {
                    Ok(_) => landed += 1,
                    Err(e) => eprintln!("queued write failed after {failures} tries: {e}"),
                }
            }
            landed
        })
    };
    let mut direct = 0;
    for _ in 0..EVENTS_EACH {
        match attempt(store, actor, "Queued").await {
            Ok(_) => direct += 1,
            Err(e) if e.is_version_conflict() => {
                tx.send(1).await.map_err(|_| "retry queue closed")?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    drop(tx);
    let queued = worker.await?;
    Ok(direct + queued)
}

mod breaker {
    //! The Go example's `CircuitBreaker`, as a small state machine.

    use std::time::Duration;

    use tokio::time::Instant;

    /// When a [`CircuitBreaker`] opens and closes. The default is the Go example's.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) struct Config {
        /// Failures in a row that open a closed breaker (Go: 5).
        pub(crate) failure_threshold: u32,
        /// Successes in a row that close a half-open breaker (Go: 3).
        pub(crate) success_threshold: u32,
        /// How long an open breaker refuses calls before it lets trial calls through (Go: 30 s).
        pub(crate) open_for: Duration,
    }

    impl Default for Config {
        fn default() -> Self {
            Self {
                failure_threshold: 5,
                success_threshold: 3,
                open_for: Duration::from_secs(30),
            }
        }
    }

    /// Where a [`CircuitBreaker`] is.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum State {
        /// Calls go through; `failures` is how many failed in a row so far.
        Closed { failures: u32 },
        /// Calls are refused until `until`.
        Open { until: Instant },
        /// Trial calls go through; `successes` is how many succeeded in a row so far.
        HalfOpen { successes: u32 },
    }

    /// How often a [`CircuitBreaker`] changed state, and how many calls it refused.
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub(crate) struct Stats {
        /// Times it opened (from closed, or again from half-open).
        pub(crate) opened: u32,
        /// Times it turned half-open.
        pub(crate) half_opened: u32,
        /// Times it closed again.
        pub(crate) closed: u32,
        /// Calls refused while open.
        pub(crate) refused: u64,
    }

    /// A circuit breaker: stops calls to something that keeps failing, so that it is not made
    /// worse by every caller retrying at once, and probes carefully before letting everyone
    /// back.
    ///
    /// - **Closed:** calls go through; `failure_threshold` failures in a row open the breaker (a
    ///   success starts the count again).
    /// - **Open:** calls are refused for `open_for`, without being tried.
    /// - **Half-open:** after `open_for`, trial calls go through; `success_threshold` successes
    ///   in a row close the breaker, and a single failure opens it again.
    ///
    /// The clock is an argument (`now`), so the state machine is tested without sleeping.
    /// Results reported while the breaker is open (of calls that started before it opened) are
    /// ignored.
    #[derive(Debug)]
    pub(crate) struct CircuitBreaker {
        config: Config,
        state: State,
        stats: Stats,
    }

    impl CircuitBreaker {
        /// A closed breaker.
        pub(crate) fn new(config: Config) -> Self {
            Self {
                config,
                state: State::Closed { failures: 0 },
                stats: Stats::default(),
            }
        }

        /// The current state (an open breaker turns half-open only when asked for a permit).
        pub(crate) fn state(&self) -> State {
            self.state
        }

        /// The transitions and refusals so far.
        pub(crate) fn stats(&self) -> Stats {
            self.stats
        }

        /// May a call go through at `now`? An open breaker whose `open_for` has passed turns
        /// half-open and says yes; one still open says how long it stays open.
        pub(crate) fn permit(&mut self, now: Instant) -> Result<(), Duration> {
            match self.state {
                State::Closed { .. } | State::HalfOpen { .. } => Ok(()),
                State::Open { until } if now >= until => {
                    self.state = State::HalfOpen { successes: 0 };
                    self.stats.half_opened += 1;
                    Ok(())
                }
                State::Open { until } => {
                    self.stats.refused += 1;
                    Err(until - now)
                }
            }
        }

        /// A permitted call succeeded.
        pub(crate) fn record_success(&mut self) {
            match self.state {
                State::Closed { .. } => self.state = State::Closed { failures: 0 },
                State::HalfOpen { successes } if successes + 1 >= self.config.success_threshold => {
                    self.state = State::Closed { failures: 0 };
                    self.stats.closed += 1;
                }
                State::HalfOpen { successes } => {
                    self.state = State::HalfOpen {
                        successes: successes + 1,
                    };
                }
                State::Open { .. } => {}
            }
        }

        /// A permitted call failed at `now`.
        pub(crate) fn record_failure(&mut self, now: Instant) {
            match self.state {
                State::Closed { failures } if failures + 1 < self.config.failure_threshold => {
                    self.state = State::Closed {
                        failures: failures + 1,
                    };
                }
                State::Closed { .. } | State::HalfOpen { .. } => {
                    self.state = State::Open {
                        until: now + self.config.open_for,
                    };
                    self.stats.opened += 1;
                }
                State::Open { .. } => {}
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        const SECOND: Duration = Duration::from_secs(1);

        fn fail(breaker: &mut CircuitBreaker, now: Instant, times: u32) {
            for _ in 0..times {
                assert_eq!(breaker.permit(now), Ok(()));
                breaker.record_failure(now);
            }
        }

        #[test]
        fn the_default_is_the_go_examples() {
            let config = Config::default();
            assert_eq!(config.failure_threshold, 5);
            assert_eq!(config.success_threshold, 3);
            assert_eq!(config.open_for, 30 * SECOND);
        }

        #[test]
        fn closed_open_half_open_closed() {
            let t0 = Instant::now();
            let mut breaker = CircuitBreaker::new(Config::default());

            // Closed: failures in a row count, a success starts again.
            fail(&mut breaker, t0, 4);
            assert_eq!(breaker.state(), State::Closed { failures: 4 });
            breaker.record_success();
            assert_eq!(breaker.state(), State::Closed { failures: 0 });

            // The fifth failure in a row opens it.
            fail(&mut breaker, t0, 4);
            assert_eq!(breaker.state(), State::Closed { failures: 4 });
            fail(&mut breaker, t0, 1);
            assert_eq!(
                breaker.state(),
                State::Open {
                    until: t0 + 30 * SECOND
                }
            );

            // Open: refused for 30 s, with the time left; late results change nothing.
            assert_eq!(breaker.permit(t0), Err(30 * SECOND));
            assert_eq!(breaker.permit(t0 + 29 * SECOND), Err(SECOND));
            breaker.record_success();
            breaker.record_failure(t0 + 29 * SECOND);
            assert_eq!(
                breaker.state(),
                State::Open {
                    until: t0 + 30 * SECOND
                }
            );

            // After 30 s: half-open, and three successes in a row close it.
            assert_eq!(breaker.permit(t0 + 30 * SECOND), Ok(()));
            assert_eq!(breaker.state(), State::HalfOpen { successes: 0 });
            breaker.record_success();
            breaker.record_success();
            assert_eq!(breaker.state(), State::HalfOpen { successes: 2 });
            assert_eq!(breaker.permit(t0 + 31 * SECOND), Ok(()));
            breaker.record_success();
            assert_eq!(breaker.state(), State::Closed { failures: 0 });

            assert_eq!(
                breaker.stats(),
                Stats {
                    opened: 1,
                    half_opened: 1,
                    closed: 1,
                    refused: 2,
                }
            );
        }

        #[test]
        fn a_failure_in_half_open_opens_it_again() {
            let t0 = Instant::now();
            let mut breaker = CircuitBreaker::new(Config::default());
            fail(&mut breaker, t0, 5);
            let t1 = t0 + 30 * SECOND;
            assert_eq!(breaker.permit(t1), Ok(()));
            breaker.record_success();
            breaker.record_success();
            assert_eq!(breaker.state(), State::HalfOpen { successes: 2 });

            // One failure is enough, and the new open period starts at that failure.
            let t2 = t1 + SECOND;
            breaker.record_failure(t2);
            assert_eq!(
                breaker.state(),
                State::Open {
                    until: t2 + 30 * SECOND
                }
            );
            assert_eq!(breaker.permit(t2 + 29 * SECOND), Err(SECOND));

            // And half-open starts counting from zero.
            assert_eq!(breaker.permit(t2 + 30 * SECOND), Ok(()));
            assert_eq!(breaker.state(), State::HalfOpen { successes: 0 });
            let stats = breaker.stats();
            assert_eq!((stats.opened, stats.half_opened, stats.closed), (2, 2, 0));
        }
    }
}

/// A hot spell on an actor, for the circuit-breaker run: another service appends `remaining`
/// more events, each one right between one of our reads and our append, so each of those
/// appends conflicts. (In production, a hot actor's other writers do this by themselves.)
#[derive(Debug)]
struct HotSpell {
    remaining: AtomicU64,
}

impl HotSpell {
    /// Whether the other service gets in first this time.
    fn strikes(&self) -> bool {
        self.remaining
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

/// The other service's append: it retries its own conflicts until its event lands.
async fn import(store: &Store, actor: &str) -> Result<u64, StoreError> {
    let mut result = attempt(store, actor, "Imported").await;
    for _ in 1..100 {
        match result {
            Err(e) if e.is_version_conflict() => result = attempt(store, actor, "Imported").await,
            done => return done,
        }
    }
    result
}

/// [`attempt`], during a hot spell.
async fn attempt_in(hot: &HotSpell, store: &Store, actor: &str) -> Result<u64, StoreError> {
    let version = store.get_latest_version(actor).await? + 1;
    if hot.strikes() {
        // The other service's event lands first, at `version` or later.
        import(store, actor).await?;
    }
    let event = Event::new(actor, "Breaker", version, &version)
        .map_err(|e| StoreError::backend("encoding an event", e))?;
    store.save_event(event).await.map(|()| version)
}

fn lock(breaker: &Mutex<CircuitBreaker>) -> MutexGuard<'_, CircuitBreaker> {
    breaker.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Circuit breaker: all writers of the actor share one breaker; a version conflict is a
/// failure. While it is open nobody touches the actor: the Go example returns "circuit breaker
/// open - not retrying", here the writer waits until trial calls are allowed, so its event
/// still lands.
async fn with_breaker(
    breaker: &Mutex<CircuitBreaker>,
    hot: &HotSpell,
    store: &Store,
    actor: &str,
) -> Result<u64, Failure> {
    let mut attempts = 0;
    loop {
        let permit = lock(breaker).permit(Instant::now());
        if let Err(still_open) = permit {
            tokio::time::sleep(still_open).await;
            continue;
        }
        attempts += 1;
        match attempt_in(hot, store, actor).await {
            Ok(version) => {
                lock(breaker).record_success();
                return Ok(version);
            }
            Err(e) if e.is_version_conflict() && attempts < 20 => {
                lock(breaker).record_failure(Instant::now());
                tokio::time::sleep(Duration::from_micros(100)).await;
            }
            Err(e) if e.is_version_conflict() => {
                return Err(format!("gave up after {attempts} attempts").into());
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The circuit breaker's race: the writers race through a hot spell, then on. The breaker must
/// open, half-open and close again, and every event must land.
///
/// Every attempt fails while the hot spell lasts, and no attempt can succeed before it ends.
/// It lasts `failure_threshold + WRITERS` attempts; at most `WRITERS` of them are still in
/// flight when it ends, so at least `failure_threshold` failures in a row are recorded first:
/// the breaker opens whatever the interleaving. The rest of the spell meets half-open trial
/// calls, each failure opening the breaker again.
async fn breaker_race() -> Result<(), Failure> {
    let config = breaker::Config {
        // The default is the Go example's 30 s; keep the example fast.
        open_for: Duration::from_millis(20),
        ..breaker::Config::default()
    };
    let imported = u64::from(config.failure_threshold) + WRITERS;
    let store: Store = Arc::new(InMemoryEventStore::new());
    let breaker = Arc::new(Mutex::new(CircuitBreaker::new(config)));
    let hot = Arc::new(HotSpell {
        remaining: AtomicU64::new(imported),
    });
    let writers: Vec<_> = (0..WRITERS)
        .map(|_| {
            let (store, breaker, hot) = (store.clone(), breaker.clone(), hot.clone());
            tokio::spawn(async move {
                for _ in 0..EVENTS_EACH {
                    with_breaker(&breaker, &hot, &store, "account").await?;
                }
                Ok::<_, Failure>(())
            })
        })
        .collect();
    for w in writers {
        w.await??;
    }
    // If the race ended with the breaker still open or half-open, a lone writer (no contention,
    // so every permitted call succeeds) brings it through half-open to closed: the last state
    // change is certain, not left to the interleaving.
    let mut extra = 0;
    while lock(&breaker).stats().closed == 0 && extra < 10 {
        with_breaker(&breaker, &hot, &store, "account").await?;
        extra += 1;
    }
    let version = store.get_latest_version("account").await?;
    let ours = store
        .get_events("account", 0)
        .await?
        .iter()
        .filter(|e| e.event_type() == "Breaker")
        .count() as u64;
    let (stats, state) = {
        let breaker = lock(&breaker);
        (breaker.stats(), breaker.state())
    };
    let state = match state {
        breaker::State::Closed { .. } => "closed",
        breaker::State::Open { .. } => "open",
        breaker::State::HalfOpen { .. } => "half-open",
    };
    println!(
        "{:>10}: {WRITERS} writers x {EVENTS_EACH} events (+{imported} imported) -> version {version}; \
         opened {}x, half-opened {}x, closed {}x, {} calls held back; now {state}",
        "breaker", stats.opened, stats.half_opened, stats.closed, stats.refused
    );
    if ours != WRITERS * EVENTS_EACH + extra || version != WRITERS * EVENTS_EACH + extra + imported
    {
        return Err("breaker: lost writes".into());
    }
    if stats.opened == 0 || stats.half_opened == 0 || stats.closed == 0 {
        return Err(format!("breaker: did not open, half-open and close again: {stats:?}").into());
    }
    Ok(())
}

async fn race<F, Fut>(name: &str, write: F) -> Result<(), Failure>
where
    F: Fn(Store, String) -> Fut + Copy + Send + 'static,
    Fut: std::future::Future<Output = Result<u64, Failure>> + Send,
{
    let store: Store = Arc::new(InMemoryEventStore::new());
    let writers: Vec<_> = (0..WRITERS)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                for _ in 0..EVENTS_EACH {
                    write(store.clone(), "account".to_owned()).await?;
                }
                Ok::<_, Failure>(())
            })
        })
        .collect();
    for w in writers {
        w.await??;
    }
    let version = store.get_latest_version("account").await?;
    println!("{name:>10}: {WRITERS} writers x {EVENTS_EACH} events -> version {version}");
    if version != WRITERS * EVENTS_EACH {
        return Err(format!("{name}: lost writes").into());
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Failure> {
    race("simple", |s, a| async move { simple(&s, &a).await }).await?;
    race("detailed", |s, a| async move { detailed(&s, &a).await }).await?;
    race("jitter", |s, a| async move { with_jitter(&s, &a).await }).await?;
    race("adaptive", |s, a| async move { adaptive(&s, &a).await }).await?;
    breaker_race().await?;

    // The queue pattern writes EVENTS_EACH per call; run it once per writer.
    let store: Store = Arc::new(InMemoryEventStore::new());
    let writers: Vec<_> = (0..WRITERS)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { through_a_queue(&store, "account").await })
        })
        .collect();
    let mut landed = 0;
    for w in writers {
        landed += w.await??;
    }
    let version = store.get_latest_version("account").await?;
    println!(
        "{:>10}: {landed} events landed -> version {version}",
        "queue"
    );
    if version != WRITERS * EVENTS_EACH {
        return Err("queue: lost writes".into());
    }
    Ok(())
}
