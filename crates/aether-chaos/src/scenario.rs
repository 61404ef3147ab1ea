//! The scenarios: each starts from a running world under load, injects its faults, and returns
//! how long each fault took to be noticed and to heal. The world is then audited (see
//! [`crate::audit`]) whatever a scenario returns.

use std::time::Duration;

use tokio::time::Instant;

use crate::hostile;
use crate::world::{NODES, World};

/// Every scenario, in the order `run` takes them (`fuzz` needs no world: see [`crate::fuzz`]).
pub(crate) const ALL: [&str; 6] = [
    "steady",
    "nats-faults",
    "node-faults",
    "partitions",
    "hostile",
    "fuzz",
];

/// How long a scenario may wait for the cluster to serve every node again after a fault.
const RECOVERY: Duration = Duration::from_secs(90);

/// One injected fault and its timings.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Fault {
    /// What was done.
    pub(crate) what: String,
    /// From the fault to the first sign of it (a member reported failed, a connection lost, a
    /// new leader); `None` when nothing had to notice.
    pub(crate) detect_ms: Option<u64>,
    /// From the fault to when every running node had a command started after the fault
    /// acknowledged.
    pub(crate) recover_ms: Option<u64>,
}

/// How long each scenario holds its load and faults.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    /// `--quick`: the short version CI runs.
    pub(crate) quick: bool,
    /// `--steady SECS`: how long the steady scenario runs (hours, for a soak), instead of 20 s
    /// quick or 300 s full.
    pub(crate) steady: Option<u64>,
}

impl Plan {
    fn pick(&self, quick: u64, full: u64) -> Duration {
        Duration::from_secs(if self.quick { quick } else { full })
    }
}

/// Whether the scenario needs its nodes behind proxies.
pub(crate) fn proxied(name: &str) -> bool {
    name == "partitions"
}

/// Runs scenario `name` on `world` (already under load).
pub(crate) async fn run(name: &str, world: &mut World, plan: Plan) -> Result<Vec<Fault>, String> {
    match name {
        "steady" => steady(world, plan).await,
        "nats-faults" => nats_faults(world, plan).await,
        "node-faults" => node_faults(world, plan).await,
        "partitions" => partitions(world, plan).await,
        "hostile" => hostile::run(world, plan).await,
        other => Err(format!("no scenario {other:?}; known: {ALL:?}")),
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Holds the fault for `d`: the scenario's content, not a synchronisation.
async fn hold(d: Duration) {
    tokio::time::sleep(d).await;
}

/// Waits until every running node is served again after `at`, and records the fault.
async fn recovered(
    world: &World,
    what: impl Into<String>,
    at: Instant,
    detect: Option<Duration>,
) -> Result<Fault, String> {
    let what = what.into();
    let recover = world
        .ledger
        .served_again(&world.live(), at, RECOVERY)
        .await
        .map_err(|e| format!("{what}: {e}"))?;
    eprintln!(
        "  {what}: detected {}, recovered in {} ms",
        detect.map_or("-".into(), |d| format!("in {} ms", ms(d))),
        ms(recover)
    );
    Ok(Fault {
        what,
        detect_ms: detect.map(ms),
        recover_ms: Some(ms(recover)),
    })
}

/// The time from `at` to the first line after it that `pred` accepts, if one comes within
/// `within`.
async fn noticed(
    world: &World,
    at: Instant,
    within: Duration,
    pred: impl Fn(&crate::ledger::Said) -> bool,
) -> Option<Duration> {
    world
        .ledger
        .first_after("", at, within, pred)
        .await
        .ok()
        .map(|s| s.at - at)
}

/// Scenario 1: steady load; memory and handles are sampled by the world and judged by the runner.
async fn steady(_world: &mut World, plan: Plan) -> Result<Vec<Fault>, String> {
    let d = plan.steady.map_or(plan.pick(20, 300), Duration::from_secs);
    hold(d).await;
    Ok(Vec::new())
}

/// Scenario 2: kill -9 and restart NATS servers under load: each alone, then two, then (full) all three.
async fn nats_faults(world: &mut World, plan: Plan) -> Result<Vec<Fault>, String> {
    let mut faults = Vec::new();
    let mut rounds: Vec<Vec<usize>> = vec![vec![0], vec![1], vec![2], vec![0, 1]];
    if !plan.quick {
        rounds.push(vec![1, 2]);
        rounds.push(vec![0, 1, 2]);
    }
    if plan.quick {
        rounds.remove(2);
    }
    for servers in rounds {
        let what = format!("kill -9 of server(s) {servers:?}");
        let at = Instant::now();
        for &s in &servers {
            world
                .nats
                .node_mut(s)
                .kill()
                .await
                .map_err(|e| format!("killing server {s}: {e}"))?;
        }
        let detect = noticed(world, at, Duration::from_secs(5), |s| {
            s.line == "NATS disconnected"
        })
        .await;
        hold(plan.pick(3, 8)).await;
        let restarts = world
            .nats
            .nodes_mut()
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| servers.contains(i))
            .map(|(_, server)| server.restart());
        futures::future::try_join_all(restarts)
            .await
            .map_err(|e| format!("restarting servers {servers:?}: {e}"))?;
        world
            .nats
            .wait_for_jetstream(Duration::from_secs(60))
            .await
            .map_err(|e| format!("JetStream after restarting {servers:?}: {e}"))?;
        faults.push(recovered(world, what, at, detect).await?);
    }
    Ok(faults)
}

/// The node that is not `a` and not `b`.
fn other(a: usize, b: usize) -> usize {
    (0..NODES).find(|i| *i != a && *i != b).unwrap_or(0)
}

fn failed_by_other(i: usize) -> impl Fn(&crate::ledger::Said) -> bool {
    let id = World::node_id(i);
    move |s| s.node != id && s.line == format!("EVENT failed {id}")
}

/// Scenario 3: SIGSTOP/SIGCONT and kill -9 of Aether nodes, the leader and not, during a shard move and
/// during a graceful leave.
async fn node_faults(world: &mut World, plan: Plan) -> Result<Vec<Fault>, String> {
    let mut faults = Vec::new();
    let leader = world.leader().unwrap_or(0);
    let follower = other(leader, leader);

    // A pause past the failure timeout (6 s): the others fail it, its shards move; on resume it
    // is fenced (its stale writes refused by the store's check) and joins again.
    let at = world.signal(follower, true)?;
    let detect = noticed(
        world,
        at,
        Duration::from_secs(20),
        failed_by_other(follower),
    )
    .await;
    hold(plan.pick(3, 10)).await;
    world.signal(follower, false)?;
    faults.push(
        recovered(
            world,
            "SIGSTOP of a follower past the failure timeout, then SIGCONT",
            at,
            detect,
        )
        .await?,
    );

    // kill -9 of the leader, then a restart.
    let leader = world.leader().unwrap_or(0);
    let at = world.kill9(leader).await?;
    let detect = noticed(world, at, Duration::from_secs(20), |s| {
        s.line.starts_with("EVENT leader ")
    })
    .await;
    world.spawn(leader).await?;
    world.load_on(leader).await?;
    faults.push(recovered(world, "kill -9 of the leader", at, detect).await?);

    // kill -9 in the middle of a shard move: a node restarts (the leader moves shards to it)
    // and another is killed as the new map appears.
    let (mover, victim) = (0, 1);
    world.kill9(mover).await?;
    // The first map that gives the restarted node shards moves them to it: the victim is killed
    // as another node reports it (the maps in between, without the mover, do not count).
    let since = Instant::now();
    world.spawn(mover).await?;
    let mover_id = World::node_id(mover);
    world
        .ledger
        .first_after(
            "a map giving the restarted node shards",
            since,
            Duration::from_secs(30),
            move |s| {
                let mut words = s.line.split(' ');
                s.node != mover_id
                    && words.next() == Some("EVENT")
                    && words.next() == Some("map")
                    && words.nth(1).is_some_and(|counts| {
                        counts.split(',').any(|c| {
                            c.strip_prefix(mover_id.as_str())
                                .is_some_and(|r| r.starts_with('='))
                        })
                    })
            },
        )
        .await?;
    let at = world.kill9(victim).await?;
    world.load_on(mover).await?;
    let detect = noticed(world, at, Duration::from_secs(20), failed_by_other(victim)).await;
    world.spawn(victim).await?;
    world.load_on(victim).await?;
    faults.push(recovered(world, "kill -9 of a node during a shard move", at, detect).await?);

    // kill -9 of one node while another leaves gracefully.
    let (leaver, victim) = (2, 0);
    let at = Instant::now();
    let leaving = world.leave_start(leaver).await?;
    world.kill9(victim).await?;
    world.leave_finish(leaver, leaving).await?;
    let detect = noticed(world, at, Duration::from_secs(20), failed_by_other(victim)).await;
    world.spawn(victim).await?;
    world.load_on(victim).await?;
    world.spawn(leaver).await?;
    world.load_on(leaver).await?;
    faults.push(
        recovered(
            world,
            "kill -9 of a node during another's graceful leave",
            at,
            detect,
        )
        .await?,
    );
    Ok(faults)
}

/// Scenario 4: partitions through the proxies: a node cut off from every server (half-open links: the
/// connections stay up, silent), the leader cut off, a node cut from two of three servers, and
/// a slow, jittery link.
async fn partitions(world: &mut World, plan: Plan) -> Result<Vec<Fault>, String> {
    let mut faults = Vec::new();
    let cut = |world: &World, node: usize, servers: &[usize], on: bool| -> Result<(), String> {
        for &s in servers {
            let proxy = world.proxy(node, s)?;
            if on { proxy.cut() } else { proxy.heal() }
        }
        Ok(())
    };

    // A follower cut off from every server past the failure timeout: the majority fails it and
    // takes its shards; the cut-off node's calls fail (it cannot write), nothing forks.
    let leader = world.leader().unwrap_or(0);
    let node = other(leader, leader);
    let at = Instant::now();
    cut(world, node, &[0, 1, 2], true)?;
    let detect = noticed(world, at, Duration::from_secs(20), failed_by_other(node)).await;
    hold(plan.pick(4, 10)).await;
    cut(world, node, &[0, 1, 2], false)?;
    faults.push(recovered(world, "a follower cut off from all servers", at, detect).await?);

    // The leader cut off: another node takes the lease.
    let leader = world.leader().unwrap_or(0);
    let id = World::node_id(leader);
    let at = Instant::now();
    cut(world, leader, &[0, 1, 2], true)?;
    let detect = noticed(world, at, Duration::from_secs(20), move |s| {
        s.node != id && s.line.starts_with("EVENT leader ")
    })
    .await;
    hold(plan.pick(4, 10)).await;
    cut(world, leader, &[0, 1, 2], false)?;
    faults.push(recovered(world, "the leader cut off from all servers", at, detect).await?);

    // Cut from two of three servers: a node on one of them moves to the third (the cluster
    // layer forces a reconnect when heartbeats go unanswered); no member is failed.
    let node = 1;
    let id = World::node_id(node);
    let at = Instant::now();
    cut(world, node, &[0, 1], true)?;
    let detect = noticed(world, at, Duration::from_secs(10), move |s| {
        s.node == id && s.line == "NATS connected"
    })
    .await;
    hold(plan.pick(4, 10)).await;
    cut(world, node, &[0, 1], false)?;
    faults.push(recovered(world, "a node cut from 2 of 3 servers", at, detect).await?);
    let id = World::node_id(node);
    let failed = world
        .ledger
        .said_matching(|s| s.at >= at && s.line == format!("EVENT failed {id}"));
    if let Some(f) = failed.first() {
        return Err(format!(
            "{id}, cut from 2 of 3 servers, was reported failed by {}: it should have moved",
            f.node
        ));
    }

    // 50 ms +- 30 ms on every link of one node.
    let node = 2;
    let at = Instant::now();
    for s in 0..3 {
        world
            .proxy(node, s)?
            .delay(Duration::from_millis(50), Duration::from_millis(30));
    }
    let fault = recovered(
        world,
        "50 ms + up to 30 ms jitter on one node's links",
        at,
        None,
    )
    .await?;
    hold(plan.pick(3, 10)).await;
    for s in 0..3 {
        world.proxy(node, s)?.delay(Duration::ZERO, Duration::ZERO);
    }
    faults.push(fault);
    Ok(faults)
}
