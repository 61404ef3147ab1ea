//! Permission refusals of the store's calls: with a [`PermissionWatch`]
//! (`JetStreamConfig::permissions`), each call races the server's refusals that concern it, and a
//! refused one fails at once with [`StoreError::PermissionDenied`] naming the subject instead of
//! timing out (a refused request is never answered).
//!
//! A refusal concerns a call of this store when it refuses a publish to the actor's subject
//! (`ae.<stream>.<actor>`) or snapshot key (`$KV.<stream>-snapshots.<actor>`), to a JetStream
//! subject naming the store's stream or bucket (`$JS.API.STREAM.INFO.<stream>`,
//! `$JS.API.DIRECT.GET.KV_<bucket>.…`, `$JS.ACK.<stream>.…`, …) or, when opening, to
//! `$JS.API.INFO`; or the subscription to the connection's reply inbox, which loses every reply
//! (remembered for the connection: the client subscribes it once).

use std::future::Future;

use aether_core::StoreError;
use aether_nats::permissions::{Operation, PermissionWatch, Refusal, Watcher, inbox_prefix};
use futures::{Stream, StreamExt};

use crate::layout;

/// The subjects a refusal must name to concern this store (see the module docs).
#[derive(Debug)]
pub(super) struct Guard {
    watch: PermissionWatch,
    inbox_prefix: String,
    /// `ae.<stream>.`
    events_prefix: String,
    stream: String,
    /// `KV_<stream>-snapshots`
    kv_stream: String,
    /// `$KV.<stream>-snapshots.`
    kv_prefix: String,
}

impl Guard {
    pub(super) fn new(watch: PermissionWatch, client: &async_nats::Client, stream: &str) -> Self {
        let bucket = layout::snapshot_bucket(stream);
        Self {
            watch,
            inbox_prefix: inbox_prefix(client),
            events_prefix: layout::subject_prefix(stream),
            stream: stream.to_owned(),
            kv_stream: format!("KV_{bucket}"),
            kv_prefix: format!("$KV.{bucket}."),
        }
    }

    /// Whether `refusal` concerns a call on the actor whose token is `token` (`None`: a call on
    /// the store as a whole, such as opening it).
    fn concerns(&self, refusal: &Refusal, token: Option<&str>) -> bool {
        if refusal.is_reply_inbox(&self.inbox_prefix) {
            return true;
        }
        if refusal.operation != Operation::Publish {
            return false;
        }
        let subject = refusal.subject.as_str();
        let of_actor = |t: &str| token.is_none_or(|a| a == t);
        if let Some(t) = subject.strip_prefix(self.events_prefix.as_str()) {
            return of_actor(t);
        }
        if let Some(k) = subject.strip_prefix(self.kv_prefix.as_str()) {
            return of_actor(k);
        }
        // The account's info is asked for only when creating the snapshot bucket (opening).
        (token.is_none() && subject == "$JS.API.INFO")
            || (subject.starts_with("$JS.")
                && subject
                    .split('.')
                    .any(|t| t == self.stream || t == self.kv_stream))
    }

    /// Runs `call` on the actor with token `token`, unless the server refuses a subject it
    /// needs first (or refused this connection's reply inbox already): then the refusal.
    pub(super) async fn watch<T>(
        &self,
        token: Option<&str>,
        call: impl Future<Output = T>,
    ) -> Result<T, Refusal> {
        if let Some(refused) = self.watch.replies_refused(&self.inbox_prefix) {
            return Err(refused);
        }
        self.watch.guard(|r| self.concerns(r, token), call).await
    }

    /// [`Self::watch`] for a call that fails with a [`StoreError`]: a refusal becomes
    /// [`StoreError::PermissionDenied`] with `context`.
    pub(super) async fn call<T>(
        &self,
        token: Option<&str>,
        context: impl FnOnce() -> String,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match self.watch(token, call).await {
            Ok(out) => out,
            Err(refusal) => Err(refusal.store_error(context())),
        }
    }

    /// `stream` (a read of the actor with token `token`), ended by a refusal that concerns it:
    /// the refusal is its last item, as [`StoreError::PermissionDenied`] with `context`.
    pub(super) fn stream<T: Send + 'static>(
        guard: &std::sync::Arc<Guard>,
        token: String,
        context: String,
        stream: impl Stream<Item = Result<T, StoreError>> + Send + Unpin + 'static,
    ) -> impl Stream<Item = Result<T, StoreError>> + Send + 'static {
        struct State<S> {
            guard: std::sync::Arc<Guard>,
            watcher: Watcher,
            token: String,
            context: String,
            stream: S,
            first: bool,
        }
        // Made now, before the read sends anything.
        let watcher = guard.watch.watcher();
        let start = State {
            guard: guard.clone(),
            watcher,
            token,
            context,
            stream,
            first: true,
        };
        futures::stream::unfold(Some(start), |state| async move {
            let mut state = state?;
            if std::mem::take(&mut state.first)
                && let Some(refused) = state.guard.watch.replies_refused(&state.guard.inbox_prefix)
            {
                return Some((Err(refused.store_error(state.context)), None));
            }
            let State {
                guard,
                watcher,
                token,
                stream,
                ..
            } = &mut state;
            let next = {
                let refused = watcher.refusal(|r| guard.concerns(r, Some(token.as_str())));
                let refused = std::pin::pin!(refused);
                match futures::future::select(stream.next(), refused).await {
                    futures::future::Either::Left((item, _)) => Ok(item),
                    futures::future::Either::Right((refusal, _)) => Err(refusal),
                }
            };
            match next {
                Ok(Some(item)) => Some((item, Some(state))),
                Ok(None) => None,
                Err(refusal) => Some((Err(refusal.store_error(state.context)), None)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> Guard {
        Guard {
            watch: PermissionWatch::new(),
            inbox_prefix: "_INBOX_a".to_owned(),
            events_prefix: layout::subject_prefix("events_a"),
            stream: "events_a".to_owned(),
            kv_stream: "KV_events_a-snapshots".to_owned(),
            kv_prefix: "$KV.events_a-snapshots.".to_owned(),
        }
    }

    #[test]
    fn a_refusal_concerns_the_calls_that_need_its_subject() {
        let g = guard();
        let publish = |s: &str| Refusal::new(Operation::Publish, s);
        let order = Some("order-1");
        assert!(g.concerns(&publish("ae.events_a.order-1"), order));
        assert!(!g.concerns(&publish("ae.events_a.order-2"), order));
        assert!(g.concerns(&publish("ae.events_a.order-2"), None));
        assert!(g.concerns(&publish("$KV.events_a-snapshots.order-1"), order));
        assert!(!g.concerns(&publish("$KV.events_a-snapshots.order-2"), order));
        assert!(g.concerns(&publish("$JS.API.STREAM.INFO.events_a"), None));
        assert!(g.concerns(&publish("$JS.API.DIRECT.GET.events_a"), order));
        assert!(g.concerns(
            &publish("$JS.API.DIRECT.GET.KV_events_a-snapshots.$KV.events_a-snapshots.order-1"),
            order
        ));
        assert!(g.concerns(&publish("$JS.API.INFO"), None));
        assert!(!g.concerns(&publish("$JS.API.INFO"), order));
        assert!(g.concerns(&publish("$JS.ACK.events_a.c.1.2.3.4.5"), order));
        // Another store's subjects, or a stream whose name only starts the same.
        assert!(!g.concerns(&publish("$JS.API.STREAM.INFO.events_b"), None));
        assert!(!g.concerns(&publish("$JS.API.STREAM.INFO.events_ab"), None));
        assert!(!g.concerns(&publish("aether.events_a"), None));
        // The reply inbox, not another subscription.
        let subscribe = |s: &str| Refusal::new(Operation::Subscribe, s);
        assert!(g.concerns(&subscribe("_INBOX_a.x.*"), order));
        assert!(!g.concerns(&subscribe("_INBOX_b.x.*"), order));
        assert!(!g.concerns(&subscribe("ae.events_a.order-1"), order));
    }
}
