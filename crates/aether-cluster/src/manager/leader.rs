//! Leadership: competing for the lease, renewing it, stepping down before it can lapse,
//! following the liveness keys (`manager/liveness.rs`), and publishing shard maps fenced by the
//! lease revision.

#[allow(clippy::wildcard_imports)]
use super::*;

impl Inner {
    /// Competes for the lease whenever nobody seems to hold it, and leads while this node does.
    pub(super) async fn leader_task(self: Arc<Self>, bucket: Bucket) {
        let ttl = self.lease_ttl();
        loop {
            if self.cancel.is_cancelled() {
                return;
            }
            // Compete when nobody seems to lead -- or when the view still names this node, which
            // no longer holds a valid lease (it stepped down; the key may linger until its TTL).
            let compete = match &self.read_view().leader {
                None => true,
                Some(l) => l.node_id == self.config.node_id && self.valid_lease().is_none(),
            };
            if compete {
                self.compete(&bucket, ttl).await;
            }
            tokio::select! {
                () = self.cancel.cancelled() => return,
                () = self.leader_gone.notified() => {}
                () = tokio::time::sleep(ttl / 3) => {}
            }
        }
    }

    /// One attempt to win the lease; leads until it is lost if the attempt succeeds.
    async fn compete(&self, bucket: &Bucket, ttl: Duration) {
        let sent = Instant::now();
        let lease = LeaseRecord {
            node: self.config.node_id.clone(),
            term: None,
        };
        match bucket.create(KEY_LEADER, encode(&lease), Some(ttl)).await {
            Ok(revision) => {
                let held = HeldLease {
                    term: revision,
                    revision,
                    valid_until: sent + lease_validity(ttl),
                };
                self.lead(bucket, held).await;
            }
            Err(WriteError::Exists | WriteError::WrongRevision) => {
                // A value that is not a lease (written by something else, maybe without a TTL)
                // would block the election forever: write over it -- but only once it has stood
                // for a whole lease TTL, so that a leader whose lease it overwrote has certainly
                // stepped down (its next renewal is refused, and its validity ends within 90 % of
                // the TTL after its last one): never two leaders at once.
                if let Ok(Some(entry)) = bucket.entry(KEY_LEADER).await
                    && entry.operation == Operation::Put
                    && decode::<LeaseRecord>(&entry.value).is_err()
                    && self.garbage_lease_stood(entry.revision, ttl)
                {
                    tracing::warn!(cluster = %self.config.cluster_name, "the leader key holds no lease; replacing it");
                    if let Ok(revision) = bucket
                        .update(KEY_LEADER, encode(&lease), entry.revision, Some(ttl))
                        .await
                    {
                        let held = HeldLease {
                            term: revision,
                            revision,
                            valid_until: sent + lease_validity(ttl),
                        };
                        self.lead(bucket, held).await;
                    }
                }
            }
            Err(WriteError::Refused(refusal)) => {
                self.note_refused(&self.metrics.refused_lease, "lease", &refusal);
            }
            Err(e) => {
                tracing::warn!(node = %self.config.node_id, error = %e, "competing for the lease failed")
            }
        }
    }

    /// Whether the undecodable lease at `revision` has been seen for at least `ttl`.
    fn garbage_lease_stood(&self, revision: u64, ttl: Duration) -> bool {
        let mut seen = lock(&self.garbage_lease);
        match *seen {
            Some((r, since)) if r == revision => since.elapsed() >= ttl,
            _ => {
                *seen = Some((revision, Instant::now()));
                false
            }
        }
    }

    /// Gives up leadership: `is_leader()` is false from here on; if the lease may still be this
    /// node's on the server, hands it back (best effort) so others need not wait for its TTL.
    async fn step_down(&self, bucket: &Bucket, held: &HeldLease, reason: &str, hand_back: bool) {
        *lock(&self.lease) = None;
        self.metrics.is_leader.set(0.0);
        tracing::warn!(node = %self.config.node_id, term = held.term, reason, "stepped down");
        self.emit(ClusterEvent::SteppedDown {
            term: held.term,
            reason: reason.to_owned(),
        });
        if hand_back {
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                bucket.delete(KEY_LEADER, held.revision),
            )
            .await;
        }
    }

    /// Holds the lease until it is lost, lapses or the node stops: docs/cluster.md's "Holding it",
    /// one [`Lead`] state at a time.
    async fn lead(&self, bucket: &Bucket, held: HeldLease) {
        let term = held.term;
        *lock(&self.lease) = Some(held);
        self.metrics.is_leader.set(1.0);
        tracing::info!(node = %self.config.node_id, term, "became leader");
        self.emit(ClusterEvent::BecameLeader { term });
        let mut reign = Reign::new(held, self.lease_ttl());
        let reign_loop = async {
            let mut state = Lead::CatchUp;
            while !matches!(state, Lead::Over) {
                state = self.lead_step(bucket, &mut reign, state).await;
            }
        };
        // The liveness follow runs as long as the term, and stops with it.
        tokio::select! {
            () = reign_loop => {}
            () = self.follow_liveness(bucket) => {}
        }
    }

    async fn lead_step(&self, bucket: &Bucket, reign: &mut Reign, state: Lead) -> Lead {
        match state {
            Lead::CatchUp => self.catch_up(reign).await,
            Lead::Wait => self.wait_for_work(reign).await,
            Lead::Renew => self.renew(bucket, reign).await,
            Lead::Rebalance => self.rebalance_step(bucket, reign).await,
            Lead::StepDown { reason, hand_back } => {
                self.step_down(bucket, &reign.held, reason, hand_back).await;
                Lead::Over
            }
            Lead::Over => Lead::Over,
        }
    }

    /// Waits until the view has applied the lease's own revision: every earlier map write is
    /// before it in the stream, so the view then holds the map in force, the base.
    async fn catch_up(&self, reign: &mut Reign) -> Lead {
        let revision = reign.held.revision;
        let caught_up = tokio::time::timeout_at(reign.held.valid_until, async {
            loop {
                let notified = self.view_changed.notified();
                if self.read_view().revision >= revision || self.cancel.is_cancelled() {
                    return;
                }
                tokio::select! {
                    () = notified => {}
                    () = self.cancel.cancelled() => return,
                }
            }
        })
        .await;
        if self.cancel.is_cancelled() {
            return Lead::StepDown {
                reason: "node stopped",
                hand_back: true,
            };
        }
        if caught_up.is_err() {
            return Lead::StepDown {
                reason: "could not load the cluster state in time",
                hand_back: true,
            };
        }
        reign.base = self.read_view().map.clone();
        reign.next_renewal = Instant::now() + renewal_interval(reign.ttl);
        reign.rebalance_at = Some(Instant::now());
        Lead::Wait
    }

    /// Waits for the first of: a stop, the end of the lease's validity, the next renewal, a
    /// membership change (which schedules a rebalance) and a due rebalance.
    async fn wait_for_work(&self, reign: &mut Reign) -> Lead {
        // `select!` builds a disabled branch's future too: this stands in for "no rebalance due".
        let far = Instant::now() + Duration::from_secs(3600);
        tokio::select! {
            biased;
            () = self.cancel.cancelled() => {
                // Hand the lease back so another node takes over without waiting for the TTL.
                let valid = Instant::now() < reign.held.valid_until;
                Lead::StepDown { reason: "node stopped", hand_back: valid }
            }
            () = tokio::time::sleep_until(reign.held.valid_until) => {
                Lead::StepDown { reason: "lease not renewed in time", hand_back: true }
            }
            () = tokio::time::sleep_until(reign.next_renewal) => Lead::Renew,
            () = self.membership_changed.notified() => {
                let at = Instant::now() + self.config.rebalance_delay;
                reign.rebalance_at = Some(reign.rebalance_at.map_or(at, |r| r.min(at)));
                Lead::Wait
            }
            () = tokio::time::sleep_until(reign.rebalance_at.unwrap_or(far)), if reign.rebalance_at.is_some() => {
                reign.rebalance_at = None;
                Lead::Rebalance
            }
        }
    }

    /// Renews the lease; adopts a renewal whose ack was lost; steps down when the lease is gone.
    async fn renew(&self, bucket: &Bucket, reign: &mut Reign) -> Lead {
        let ttl = reign.ttl;
        let term = reign.held.term;
        let sent = Instant::now();
        let lease = LeaseRecord {
            node: self.config.node_id.clone(),
            term: Some(term),
        };
        let renewal = bucket.update(KEY_LEADER, encode(&lease), reign.held.revision, Some(ttl));
        // Bounded by the renewal interval (not async-nats's 5 s ack wait), so a lost ack leaves
        // time for more attempts before the lease's validity ends.
        let give_up = reign.held.valid_until.min(sent + renewal_interval(ttl));
        let retry_soon = || Instant::now() + Duration::from_millis(200).min(renewal_interval(ttl));
        match tokio::time::timeout_at(give_up, renewal).await {
            Ok(Ok(revision)) => {
                reign.held.revision = revision;
                reign.held.valid_until = sent + lease_validity(ttl);
                reign.next_renewal = sent + renewal_interval(ttl);
                *lock(&self.lease) = Some(reign.held);
            }
            Ok(Err(WriteError::WrongRevision | WriteError::Exists)) => {
                match self.own_lease_revision(bucket, term).await {
                    // An earlier renewal landed though its ack was lost: adopt it.
                    Ok(Some(revision)) => {
                        reign.held.revision = revision;
                        reign.next_renewal = Instant::now() + Duration::from_millis(100);
                    }
                    Ok(None) => {
                        return Lead::StepDown {
                            reason: "lease lost: it expired or another node holds it",
                            hand_back: false,
                        };
                    }
                    Err(WriteError::Refused(refusal)) => {
                        self.note_refused(&self.metrics.refused_lease, "lease", &refusal);
                        reign.next_renewal = retry_soon();
                    }
                    Err(e) => {
                        tracing::warn!(node = %self.config.node_id, error = %e, "reading the lease failed; retrying");
                        reign.next_renewal = retry_soon();
                    }
                }
            }
            Ok(Err(WriteError::Refused(refusal))) => {
                self.note_refused(&self.metrics.refused_lease, "lease", &refusal);
                reign.next_renewal = retry_soon();
            }
            Ok(Err(e)) => {
                tracing::warn!(node = %self.config.node_id, error = %e, "lease renewal failed; retrying");
                reign.next_renewal = retry_soon();
            }
            Err(_) => {
                tracing::warn!(node = %self.config.node_id, "lease renewal got no ack in time; retrying");
                reign.next_renewal = Instant::now();
            }
        }
        Lead::Wait
    }

    /// Publishes a new map if the members' placement changed; on a refused (fenced) write,
    /// adopts a renewal whose ack was lost or steps down.
    async fn rebalance_step(&self, bucket: &Bucket, reign: &mut Reign) -> Lead {
        // A map whose ack was lost may still have landed: the view then holds it (only this
        // leader writes maps in its term), and the next epoch follows it.
        if let Some(seen) = self.read_view().map.clone()
            && reign.base.as_ref().is_none_or(|b| seen.epoch() > b.epoch())
        {
            reign.base = Some(seen);
        }
        let published = self
            .rebalance(
                bucket,
                &reign.held,
                reign.base.as_deref(),
                &mut reign.attempted_epoch,
            )
            .await;
        match published {
            Ok(Some(map)) => reign.base = Some(map),
            Ok(None) => {}
            Err(RebalanceError::Fenced) => {
                match self.own_lease_revision(bucket, reign.held.term).await {
                    // The lease moved on only by this node's own renewal whose ack was lost.
                    Ok(Some(revision)) if revision != reign.held.revision => {
                        reign.held.revision = revision;
                        reign.rebalance_at = Some(Instant::now());
                    }
                    Ok(_) => {
                        return Lead::StepDown {
                            reason: "the server refused a shard map: the lease moved on",
                            hand_back: false,
                        };
                    }
                    Err(e) => {
                        tracing::warn!(node = %self.config.node_id, error = %e, "reading the lease failed; retrying");
                        reign.rebalance_at = Some(Instant::now() + Duration::from_millis(200));
                    }
                }
            }
            Err(RebalanceError::Refused(refusal)) => {
                self.note_refused(&self.metrics.refused_map, "map", &refusal);
                reign.rebalance_at = Some(Instant::now() + Duration::from_millis(500));
            }
            Err(RebalanceError::Other(e)) => {
                tracing::warn!(node = %self.config.node_id, error = %e, "publishing the shard map failed; retrying");
                reign.rebalance_at = Some(Instant::now() + Duration::from_millis(500));
            }
        }
        Lead::Wait
    }

    /// The revision of this node's lease for `term`, if it is still there.
    async fn own_lease_revision(
        &self,
        bucket: &Bucket,
        term: u64,
    ) -> Result<Option<u64>, WriteError> {
        let entry = bucket.entry(KEY_LEADER).await?;
        Ok(entry
            .filter(|e| e.operation == Operation::Put)
            .and_then(|e| {
                let lease: LeaseRecord = decode(&e.value).ok()?;
                let their_term = lease.term.unwrap_or(e.revision);
                (lease.node == self.config.node_id && their_term == term).then_some(e.revision)
            }))
    }

    /// Computes the map for the current members and publishes it if it differs from `base`.
    async fn rebalance(
        &self,
        bucket: &Bucket,
        held: &HeldLease,
        base: Option<&ShardMap>,
        attempted_epoch: &mut u64,
    ) -> Result<Option<Arc<ShardMap>>, RebalanceError> {
        let cfg = &self.config;
        let members: Vec<NodeRecord> = {
            // Each member's current load, from its liveness key, where the leader has it.
            let loads = lock(&self.live_loads);
            self.read_view()
                .members
                .values()
                .filter(|m| m.status == NodeStatus::Active)
                .map(|m| {
                    let mut m = m.clone();
                    m.load = loads.get(&m.id).copied().unwrap_or(m.load);
                    m
                })
                .collect()
        };
        let mut owners = if members.is_empty() {
            Vec::new()
        } else {
            cfg.placement.assign(cfg.shard_count, &members, base)
        };
        let valid = if members.is_empty() {
            owners.is_empty()
        } else {
            owners.len() == cfg.shard_count as usize
                && owners.iter().all(|o| members.iter().any(|m| *m.id == **o))
        };
        if !valid {
            tracing::error!(strategy = ?cfg.placement, "placement strategy returned an invalid assignment; using consistent hashing");
            owners = ConsistentHashPlacement::default().assign(cfg.shard_count, &members, base);
        }
        if base.is_some_and(|b| b.owners() == owners.as_slice()) {
            return Ok(None);
        }
        let Some(epoch) = base
            .map_or(0, ShardMap::epoch)
            .max(*attempted_epoch)
            .checked_add(1)
        else {
            return Err(RebalanceError::Other(
                "the shard map epoch is exhausted (someone wrote epoch u64::MAX)".into(),
            ));
        };
        *attempted_epoch = epoch;
        let map = Arc::new(ShardMap::new(
            epoch,
            held.term,
            cfg.node_id.as_str(),
            cfg.shard_count,
            owners,
        ));
        // Between the decision (the lease valid by this node's clock) and the write, a pause
        // can outlast the lease: the fence makes the server refuse the map then.
        #[cfg(feature = "fault-injection")]
        cfg.faults.at_map_write().await;
        let write = bucket.fenced_put(
            KEY_SHARD_MAP,
            map.encode().into(),
            KEY_LEADER,
            held.revision,
        );
        match tokio::time::timeout_at(held.valid_until, write).await {
            Ok(Ok(_)) => {
                let moved = base.map_or(map.owners().len(), |b| b.plan_to(&map).len());
                self.metrics.rebalances.increment(1);
                self.metrics.shards_moved.increment(moved as u64);
                tracing::info!(node = %cfg.node_id, epoch, term = held.term, moved, members = members.len(), "published a shard map");
                Ok(Some(map))
            }
            Ok(Err(WriteError::WrongRevision)) => Err(RebalanceError::Fenced),
            Ok(Err(WriteError::Refused(refusal))) => Err(RebalanceError::Refused(refusal)),
            Ok(Err(e)) => Err(RebalanceError::Other(e.to_string())),
            Err(_) => Err(RebalanceError::Other("timed out".into())),
        }
    }
}

/// How long a lease may be acted on after the renewal that was *sent* at the start: 90 % of the
/// TTL. The server removes it no earlier than the TTL after it stored the write, which is after
/// the send, so the node stops acting before anyone else can win the lease.
fn lease_validity(ttl: Duration) -> Duration {
    ttl * 9 / 10
}

/// How often the leader renews: a fifth of the TTL, so it keeps the lease through an outage of
/// up to 70 % of the TTL (JetStream's stream-leader election, for one).
fn renewal_interval(ttl: Duration) -> Duration {
    ttl / 5
}

enum RebalanceError {
    Fenced,
    /// The server refused the write for the user's permissions (with a permission watch).
    Refused(Refusal),
    Other(String),
}

/// Where a leader stands in its term; [`Inner::lead_step`] moves it on.
enum Lead {
    /// Won the lease: wait until the view holds the map in force.
    CatchUp,
    /// Leading: wait for the next thing to do.
    Wait,
    /// Renew the lease now.
    Renew,
    /// Recompute the map and publish it if the owners changed.
    Rebalance,
    /// Give the lease up; `hand_back`: delete it, as it may still be this node's on the server.
    StepDown {
        reason: &'static str,
        hand_back: bool,
    },
    /// No longer leading.
    Over,
}

/// What a leader keeps for its term.
struct Reign {
    held: HeldLease,
    ttl: Duration,
    /// The map in force: the last one this leader published, or a newer one its view holds.
    base: Option<Arc<ShardMap>>,
    /// The highest epoch this leader tried to publish: a write whose ack was lost may have
    /// landed, so a retry never reuses its epoch.
    attempted_epoch: u64,
    /// Set once caught up, like `rebalance_at`.
    next_renewal: Instant,
    /// When the next rebalance is due, if one is.
    rebalance_at: Option<Instant>,
}

impl Reign {
    fn new(held: HeldLease, ttl: Duration) -> Self {
        Self {
            held,
            ttl,
            base: None,
            attempted_epoch: 0,
            next_renewal: held.valid_until,
            rebalance_at: None,
        }
    }
}
