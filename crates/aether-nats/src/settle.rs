//! The one policy for "try again while a freshly formed NATS cluster settles": setting up a
//! stream or a bucket is idempotent, and a cluster that just formed (or lost a peer for a moment)
//! answers for a while with timeouts, no responders, "no suitable peers for placement", or
//! "temporarily unavailable".

use std::future::Future;
use std::time::Duration;

use aether_core::Backoff;

use crate::classify::{Class, NatsError, class_of};
use crate::codes::is_cluster_settling;
use crate::publish::NO_RESPONDERS;

/// How long setup is tried again by default while the cluster settles.
pub const SETTLE_PATIENCE: Duration = Duration::from_secs(30);

/// The waits between attempts: from 50 ms, doubling to 1 s, a fifth of each at random (nodes
/// starting together should not ask together).
pub const SETTLE_BACKOFF: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));

/// Whether `err` says "the cluster is still settling; the same request may succeed shortly":
/// a timeout, nobody answering, or a refusal that clears once the cluster settles
/// ([`is_cluster_settling`]: no suitable peers yet, temporarily unavailable, no meta leader).
pub fn is_settling<E: NatsError>(err: &E) -> bool {
    matches!(class_of(err), Class::Timeout | Class::Unavailable)
        || err.code().is_some_and(is_cluster_settling)
}

/// Runs `attempt` until it succeeds, fails for another reason than the cluster settling
/// ([`is_settling`]), or `patience` has passed; returns the last outcome. Only for idempotent
/// requests (creating a stream or bucket with a fixed configuration, a probe).
///
/// `what` names the request in the warning logged before each retry.
pub async fn while_settling<T, E, F, Fut>(
    what: &str,
    patience: Duration,
    mut attempt: F,
) -> Result<T, E>
where
    E: NatsError,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + patience;
    let backoff = SETTLE_BACKOFF.jitter_percent(20);
    let mut retry = 0;
    loop {
        match attempt().await {
            Err(e) if is_settling(&e) => {
                retry += 1;
                let wait = backoff.delay(retry);
                if tokio::time::Instant::now() + wait >= deadline {
                    return Err(e);
                }
                tracing::warn!(error = %e, "{what}: the NATS cluster is not ready yet; trying again");
                tokio::time::sleep(wait).await;
            }
            other => return other,
        }
    }
}

/// Runs `attempt` until it is answered, sending it again while nobody serves it
/// ([`Class::Unavailable`]: no responders, a replica or leader still starting, a cluster
/// settling), for at most `patience`, waiting [`NO_RESPONDERS`] between attempts; returns the
/// last outcome. Only for requests that are safe to send twice: reads, and compare-and-set
/// writes (which a second copy cannot apply twice).
///
/// Seen on a 3-server cluster: the first read of a bucket created a moment earlier on another
/// server finds no replica serving direct gets yet.
pub async fn while_unanswered<T, E, F, Fut>(patience: Duration, mut attempt: F) -> Result<T, E>
where
    E: NatsError,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let started = tokio::time::Instant::now();
    let mut retry = 1;
    loop {
        match attempt().await {
            Err(e) if class_of(&e) == Class::Unavailable => {
                let wait = NO_RESPONDERS.delay(retry);
                if started.elapsed() + wait >= patience {
                    return Err(e);
                }
                tokio::time::sleep(wait).await;
                retry += 1;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_nats::RequestErrorKind;

    #[tokio::test]
    async fn settling_failures_are_retried_others_are_not() {
        let mut calls = 0;
        let out: Result<u32, async_nats::RequestError> =
            while_settling("probe", Duration::from_secs(5), || {
                calls += 1;
                let n = calls;
                async move {
                    if n < 3 {
                        Err(async_nats::RequestError::new(
                            RequestErrorKind::NoResponders,
                        ))
                    } else {
                        Ok(n)
                    }
                }
            })
            .await;
        assert_eq!(out.ok(), Some(3));

        let mut calls = 0;
        let out: Result<u32, async_nats::RequestError> =
            while_settling("probe", Duration::from_secs(5), || {
                calls += 1;
                async { Err(async_nats::RequestError::new(RequestErrorKind::Other)) }
            })
            .await;
        assert!(out.is_err());
        assert_eq!(
            calls, 1,
            "a failure that is not the cluster settling is returned at once"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn unanswered_requests_are_sent_again_within_patience() {
        let mut calls = 0;
        let out: Result<u32, async_nats::RequestError> =
            while_unanswered(Duration::from_secs(1), || {
                calls += 1;
                let n = calls;
                async move {
                    if n < 4 {
                        Err(async_nats::RequestError::new(
                            RequestErrorKind::NoResponders,
                        ))
                    } else {
                        Ok(n)
                    }
                }
            })
            .await;
        assert_eq!(out.ok(), Some(4));

        // A timeout may have been applied: never sent again.
        let mut calls = 0;
        let out: Result<u32, async_nats::RequestError> =
            while_unanswered(Duration::from_secs(1), || {
                calls += 1;
                async { Err(async_nats::RequestError::new(RequestErrorKind::TimedOut)) }
            })
            .await;
        assert!(out.is_err());
        assert_eq!(calls, 1);

        // Nobody ever answers: the last failure, within patience.
        let started = tokio::time::Instant::now();
        let out: Result<(), async_nats::RequestError> =
            while_unanswered(Duration::from_secs(1), || async {
                Err(async_nats::RequestError::new(
                    RequestErrorKind::NoResponders,
                ))
            })
            .await;
        assert!(out.is_err());
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn patience_runs_out() {
        let started = tokio::time::Instant::now();
        let out: Result<(), async_nats::RequestError> =
            while_settling("probe", Duration::from_secs(3), || async {
                Err(async_nats::RequestError::new(RequestErrorKind::TimedOut))
            })
            .await;
        assert!(out.is_err());
        assert!(started.elapsed() < Duration::from_secs(3));
        assert!(started.elapsed() >= Duration::from_secs(1));
    }
}
