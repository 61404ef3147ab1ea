//! Handling version conflicts by hand on the raw store — the Go examples' retry patterns in
//! Rust. (The actor runtime does this for you: see `bank_account.rs`.)
//!
//! Every pattern runs with four writers racing on one actor; each must land all its events.
//!
//! Run with `cargo run --example retry_patterns`.

use std::sync::Arc;
use std::time::Duration;

use aether::store::memory::InMemoryEventStore;
use aether::{Event, EventStore, StoreError};
use tokio::sync::mpsc;

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
