//! Riding out a store outage: an operation that failed in a way that clears by itself (a NATS
//! server restarting, a stream between leaders) is tried again, with a backoff, until it
//! succeeds, fails otherwise, or `RetryPolicy::transient_budget` is spent. Appends (the same
//! events, same ids) and activations (the same reads) both go through it.

use std::time::Duration;

use aether_core::Backoff;
use tokio::time::Instant;

/// Waits between tries: 50 ms doubling to 1 s, 50 % jitter.
const SCHEDULE: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));

/// `first` is the outcome of the operation's first try, begun at `started`. While it is a
/// transient failure and `budget` since `started` is not spent: waits (never past the budget),
/// tells `on_retry` the failure and the retry's number, and tries `again`. Returns the first
/// outcome that is not tried again.
pub(super) async fn through_outages<T, E, Fut>(
    budget: Duration,
    started: Instant,
    first: Result<T, E>,
    is_transient: impl Fn(&E) -> bool,
    mut on_retry: impl FnMut(&E, u32),
    mut again: impl FnMut() -> Fut,
) -> Result<T, E>
where
    Fut: Future<Output = Result<T, E>>,
{
    let schedule = SCHEDULE.jitter_percent(50);
    let mut retries = 0;
    let mut result = first;
    loop {
        match result {
            Err(e) if is_transient(&e) && started.elapsed() < budget => {
                retries += 1;
                on_retry(&e, retries);
                let left = budget.saturating_sub(started.elapsed());
                tokio::time::sleep(schedule.delay(retries).min(left)).await;
                result = again().await;
            }
            other => return other,
        }
    }
}
