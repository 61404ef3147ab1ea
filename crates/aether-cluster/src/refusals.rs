//! Permission refusals of the cluster's requests: with a [`PermissionWatch`]
//! (`ClusterConfig::permissions`), each request races the server's refusals that concern it, and
//! a refused one ends at once with the refusal (naming the subject) instead of timing out: a
//! refused request is never answered.
//!
//! A refusal concerns a request of the cluster when it refuses:
//! - a publish to a bucket key (`$KV.aether-cluster-<cluster>.<key>`), to a JetStream subject
//!   naming the bucket's stream (`$JS.API.STREAM.INFO.KV_aether-cluster-<cluster>`,
//!   `$JS.API.DIRECT.GET.KV_aether-cluster-<cluster>.$KV.aether-cluster-<cluster>.<key>`, ...)
//!   or, while joining, to `$JS.API.INFO` (asked when creating the bucket): a request on one key
//!   is concerned only by refusals of that key or of the bucket as a whole;
//! - a publish to the exact subject of a request to another node (`aether-cluster.<cluster>.call.<node>`,
//!   `aether-cluster.<cluster>.handoff.<node>`);
//! - the subscription to the connection's reply inbox, which loses every reply (remembered for
//!   the connection: the client subscribes it once).

use std::future::Future;

use aether_nats::permissions::{Operation, PermissionWatch, Refusal, Watcher, inbox_prefix};

use crate::kv::bucket_name;

/// What a bucket request touches, for [`Guard::concerns_bucket`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Scope<'a> {
    /// Joining: the bucket as a whole, any key, and `$JS.API.INFO`.
    Join,
    /// The bucket's stream, not one key (its watch).
    Stream,
    /// One key (and the stream it is in).
    Key(&'a str),
}

/// The subjects a refusal must name to concern the cluster's requests (see the module docs).
#[derive(Debug)]
pub(crate) struct Guard {
    watch: PermissionWatch,
    inbox_prefix: String,
    /// `$KV.aether-cluster-<cluster>.`
    kv_prefix: String,
    /// `KV_aether-cluster-<cluster>`
    kv_stream: String,
}

impl Guard {
    pub(crate) fn new(watch: PermissionWatch, client: &async_nats::Client, cluster: &str) -> Self {
        let bucket = bucket_name(cluster);
        Self {
            watch,
            inbox_prefix: inbox_prefix(client),
            kv_prefix: format!("$KV.{bucket}."),
            kv_stream: format!("KV_{bucket}"),
        }
    }

    /// Whether `refusal` concerns a request of `scope`.
    pub(crate) fn concerns_bucket(&self, refusal: &Refusal, scope: Scope<'_>) -> bool {
        if refusal.is_reply_inbox(&self.inbox_prefix) {
            return true;
        }
        if refusal.operation != Operation::Publish {
            return false;
        }
        let subject = refusal.subject.as_str();
        let of_key = |k: &str| match scope {
            Scope::Join => true,
            Scope::Stream => false,
            Scope::Key(want) => want == k,
        };
        if let Some(k) = subject.strip_prefix(self.kv_prefix.as_str()) {
            return of_key(k);
        }
        if !subject.starts_with("$JS.") {
            return false;
        }
        if subject == "$JS.API.INFO" {
            return matches!(scope, Scope::Join);
        }
        // A direct get names the key after the stream: `...KV_<bucket>.$KV.<bucket>.<key>`.
        if let Some((_, k)) = subject.split_once(self.kv_prefix.as_str()) {
            return of_key(k);
        }
        subject.split('.').any(|t| t == self.kv_stream)
    }

    /// Whether `refusal` concerns a request to `subject` (another node's call or handoff
    /// subject).
    pub(crate) fn concerns_request(&self, refusal: &Refusal, subject: &str) -> bool {
        refusal.is_reply_inbox(&self.inbox_prefix) || refusal.is(Operation::Publish, subject)
    }

    /// Whether `refusal` refuses the subscription to `subject`.
    pub(crate) fn refuses_subscription(refusal: &Refusal, subject: &str) -> bool {
        refusal.is(Operation::Subscribe, subject)
    }

    /// A watcher of the refusals heard from now on.
    pub(crate) fn watcher(&self) -> Watcher {
        self.watch.watcher()
    }

    /// Runs `request`, unless the server refuses something `matches` accepts first (or refused
    /// this connection's reply inbox already): then the refusal.
    pub(crate) async fn watch<T>(
        &self,
        matches: impl Fn(&Refusal) -> bool,
        request: impl Future<Output = T>,
    ) -> Result<T, Refusal> {
        if let Some(refused) = self.watch.replies_refused(&self.inbox_prefix) {
            return Err(refused);
        }
        self.watch.guard(matches, request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> Guard {
        let bucket = bucket_name("c1");
        Guard {
            watch: PermissionWatch::new(),
            inbox_prefix: "_INBOX_a".to_owned(),
            kv_prefix: format!("$KV.{bucket}."),
            kv_stream: format!("KV_{bucket}"),
        }
    }

    #[test]
    fn a_refusal_concerns_the_requests_that_need_its_subject() {
        let g = guard();
        let publish = |s: &str| Refusal::new(Operation::Publish, s);
        let subscribe = |s: &str| Refusal::new(Operation::Subscribe, s);
        let me = Scope::Key("nodes.n1");
        assert!(g.concerns_bucket(&publish("$KV.aether-cluster-c1.nodes.n1"), me));
        assert!(!g.concerns_bucket(&publish("$KV.aether-cluster-c1.nodes.n2"), me));
        assert!(!g.concerns_bucket(&publish("$KV.aether-cluster-c1.leader"), me));
        assert!(g.concerns_bucket(&publish("$KV.aether-cluster-c1.leader"), Scope::Join));
        assert!(g.concerns_bucket(
            &publish("$JS.API.DIRECT.GET.KV_aether-cluster-c1.$KV.aether-cluster-c1.nodes.n1"),
            me
        ));
        assert!(!g.concerns_bucket(
            &publish("$JS.API.DIRECT.GET.KV_aether-cluster-c1.$KV.aether-cluster-c1.leader"),
            me
        ));
        assert!(g.concerns_bucket(&publish("$JS.API.STREAM.INFO.KV_aether-cluster-c1"), me));
        assert!(g.concerns_bucket(
            &publish("$JS.API.STREAM.CREATE.KV_aether-cluster-c1"),
            Scope::Join
        ));
        assert!(g.concerns_bucket(&publish("$JS.API.INFO"), Scope::Join));
        assert!(!g.concerns_bucket(&publish("$JS.API.INFO"), me));
        // Another cluster's bucket, or one whose name only starts the same.
        assert!(!g.concerns_bucket(&publish("$KV.aether-cluster-c12.nodes.n1"), Scope::Join));
        assert!(!g.concerns_bucket(
            &publish("$JS.API.STREAM.INFO.KV_aether-cluster-c12"),
            Scope::Join
        ));
        assert!(!g.concerns_bucket(&publish("$JS.API.STREAM.INFO.events"), Scope::Join));
        assert!(!g.concerns_bucket(&publish("aether-cluster.c1.call.n2"), Scope::Join));
        // The reply inbox, not another subscription.
        assert!(g.concerns_bucket(&subscribe("_INBOX_a.x.*"), me));
        assert!(!g.concerns_bucket(&subscribe("_INBOX_b.x.*"), me));
        assert!(!g.concerns_bucket(&subscribe("$KV.aether-cluster-c1.>"), Scope::Join));
        // The watch: the stream, not a key.
        let watch = Scope::Stream;
        assert!(g.concerns_bucket(
            &publish("$JS.API.CONSUMER.CREATE.KV_aether-cluster-c1"),
            watch
        ));
        assert!(g.concerns_bucket(&publish("$JS.FC.KV_aether-cluster-c1.x.y"), watch));
        assert!(!g.concerns_bucket(&publish("$KV.aether-cluster-c1.leader"), watch));
        assert!(!g.concerns_bucket(&publish("$JS.API.INFO"), watch));
        assert!(g.concerns_bucket(&subscribe("_INBOX_a.x"), watch));

        let call = "aether-cluster.c1.call.n2";
        assert!(g.concerns_request(&publish(call), call));
        assert!(!g.concerns_request(&publish("aether-cluster.c1.call.n3"), call));
        assert!(!g.concerns_request(&subscribe(call), call));
        assert!(g.concerns_request(&subscribe("_INBOX_a.x.*"), call));
        assert!(Guard::refuses_subscription(&subscribe(call), call));
        assert!(!Guard::refuses_subscription(&publish(call), call));
    }
}
