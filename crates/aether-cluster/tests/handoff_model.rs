//! The shard handoff protocol of docs/cluster.md ("Handoff, step by step") as a model, checked
//! exhaustively with stateright: 2-3 nodes, 2 shards, a few commands, a leader that moves shards
//! (bounded number of maps), nodes that learn maps late (a paused node is one that has not
//! learned), lossy messages (calls, answers and handoff confirmations can be lost, calls are
//! re-sent with the same command id), and the handoff timeout firing at any moment.
//!
//! Actors remember command ids for a time (the runtime's `CommandMemory` horizon, 60 s), longer
//! than a caller re-sends a call (the call timeout, 30 s): modelled as a `Forget` of a command's
//! id from every actor's memory, possible once its caller stopped re-sending and no copy of the
//! call is in flight — and at any moment of a node's own work on it (a node paused mid-command
//! for longer than the horizon). A node's folded events are not its memory: a conflict loser
//! looks for its command among the events it folds in, forgotten or not.
//!
//! Checked: at most one node serves a shard per map epoch, no command is applied twice, and every
//! command acknowledged to a caller is applied exactly once. The same model without the
//! command-id check on a lost conflict must violate "no command applied twice" — evidence that
//! the model reaches the double-serve race the check exists for — and so must a memory that
//! forgets while copies may still come (a window of a count of commands, which a busy actor
//! passes within a call timeout).

// Test code: a failed expectation panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;

use stateright::{Checker, Model, Property};

type Node = u8;
type Shard = u8;
type Cmd = u8;

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
enum Serve {
    NotMine,
    /// Waiting for the previous owner's confirmation.
    Pending(Node),
    Serving,
    /// Lost in the map; the command in progress finishes first.
    Draining,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct NodeState {
    /// Index of the map this node applied (it may lag behind the newest).
    seen: usize,
    serve: Vec<Serve>,
    /// Per shard: how many stored events this node folded into its actor (None: not active).
    folded: Vec<Option<usize>>,
    /// Per shard: the command the actor is handling and the store length it decided on.
    work: Vec<Option<(Cmd, usize)>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
enum Msg {
    Call { cmd: Cmd, to: Node },
    Answer { cmd: Cmd },
    Confirm { shard: Shard, from: Node, to: Node },
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct State {
    /// Every map published so far (owner per shard); the last is the newest.
    maps: Vec<Vec<Node>>,
    nodes: Vec<NodeState>,
    /// Per shard (one actor each): the ids of the commands whose events are stored, in order.
    store: Vec<Vec<Cmd>>,
    net: BTreeSet<Msg>,
    /// Per command: sends left, acknowledged.
    calls: Vec<(u8, bool)>,
    /// Per command: its id has left every actor's memory (the horizon passed).
    forgotten: Vec<bool>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
enum Action {
    Send(Cmd, Node),
    Lose(Msg),
    Deliver(Msg),
    Publish(Shard, Node),
    Learn(Node),
    FinishDrain(Node, Shard),
    HandoffTimeout(Node, Shard),
    Append(Node, Shard),
    /// The horizon passed for the command's id: every actor's memory drops it.
    Forget(Cmd),
}

/// When an actor's memory may drop a command's id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Forgetting {
    /// Never (an unbounded memory).
    Never,
    /// After a time longer than its caller re-sends: once no copy of the call can come.
    AfterTheHorizon,
    /// At any moment after it was applied (a count of commands, passed by a busy actor).
    Anytime,
}

struct Handoff {
    nodes: u8,
    shards: u8,
    /// The shard each command is for.
    commands: Vec<Shard>,
    sends: u8,
    max_maps: usize,
    /// Whether a node checks the command id before deciding (the protection under test).
    dedupe: bool,
    /// Whether the loser of a conflict checks the events it folded in for its command id.
    conflict_check: bool,
    /// When command ids leave the actors' memory.
    forgetting: Forgetting,
}

impl Handoff {
    /// `nodes` x `shards`, one command per entry of `commands` (its shard), each sent at most
    /// twice, up to `max_maps` maps, with both command-id checks on and ids forgotten after the
    /// horizon.
    fn new(nodes: u8, shards: u8, commands: Vec<Shard>, max_maps: usize) -> Self {
        Self {
            nodes,
            shards,
            commands,
            sends: 2,
            max_maps,
            dedupe: true,
            conflict_check: true,
            forgetting: Forgetting::AfterTheHorizon,
        }
    }

    fn shard_of(&self, cmd: Cmd) -> Shard {
        self.commands[cmd as usize]
    }
}

fn owner(state: &State, map: usize, shard: Shard) -> Node {
    state.maps[map][shard as usize]
}

/// Passivates the actor of `shard` on `node` and tells the new owner.
fn hand_off(state: &mut State, node: Node, shard: Shard) {
    let n = &mut state.nodes[node as usize];
    n.folded[shard as usize] = None;
    n.serve[shard as usize] = Serve::NotMine;
    let to = owner(state, state.nodes[node as usize].seen, shard);
    if to != node {
        state.net.insert(Msg::Confirm {
            shard,
            from: node,
            to,
        });
    }
}

impl Model for Handoff {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        let first: Vec<Node> = (0..self.shards).map(|s| s % self.nodes).collect();
        let nodes = (0..self.nodes)
            .map(|n| NodeState {
                seen: 0,
                serve: first
                    .iter()
                    .map(|o| {
                        if *o == n {
                            Serve::Serving
                        } else {
                            Serve::NotMine
                        }
                    })
                    .collect(),
                folded: vec![None; self.shards as usize],
                work: vec![None; self.shards as usize],
            })
            .collect();
        vec![State {
            maps: vec![first],
            nodes,
            store: vec![Vec::new(); self.shards as usize],
            net: BTreeSet::new(),
            calls: vec![(self.sends, false); self.commands.len()],
            forgotten: vec![false; self.commands.len()],
        }]
    }

    fn actions(&self, state: &State, actions: &mut Vec<Action>) {
        for (cmd, (left, acked)) in state.calls.iter().enumerate() {
            if *left == 0 || *acked {
                continue;
            }
            // The caller routes by any map it may have seen: stale maps included.
            let shard = self.shard_of(cmd as Cmd);
            let owners: BTreeSet<Node> = (0..state.maps.len())
                .map(|m| owner(state, m, shard))
                .collect();
            for to in owners {
                actions.push(Action::Send(cmd as Cmd, to));
            }
        }
        for msg in &state.net {
            actions.push(Action::Deliver(msg.clone()));
            actions.push(Action::Lose(msg.clone()));
        }
        for (cmd, forgotten) in state.forgotten.iter().enumerate() {
            let cmd = cmd as Cmd;
            let applied = state.store[self.shard_of(cmd) as usize].contains(&cmd);
            let (left, acked) = state.calls[cmd as usize];
            let may_come = (left > 0 && !acked)
                || state
                    .net
                    .iter()
                    .any(|m| matches!(m, Msg::Call { cmd: c, .. } if *c == cmd));
            let forget = match self.forgetting {
                Forgetting::Never => false,
                Forgetting::AfterTheHorizon => applied && !may_come,
                Forgetting::Anytime => applied,
            };
            if forget && !forgotten {
                actions.push(Action::Forget(cmd));
            }
        }
        if state.maps.len() < self.max_maps {
            let newest = state.maps.len() - 1;
            for shard in 0..self.shards {
                for to in 0..self.nodes {
                    if owner(state, newest, shard) != to {
                        actions.push(Action::Publish(shard, to));
                    }
                }
            }
        }
        for (i, n) in state.nodes.iter().enumerate() {
            let node = i as Node;
            if n.seen + 1 < state.maps.len() + 1 && n.seen < state.maps.len() - 1 {
                actions.push(Action::Learn(node));
            }
            for shard in 0..self.shards {
                let s = shard as usize;
                if n.serve[s] == Serve::Draining && n.work[s].is_none() {
                    actions.push(Action::FinishDrain(node, shard));
                }
                if matches!(n.serve[s], Serve::Pending(_)) {
                    actions.push(Action::HandoffTimeout(node, shard));
                }
                if n.work[s].is_some() {
                    actions.push(Action::Append(node, shard));
                }
            }
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut state = last.clone();
        match action {
            Action::Send(cmd, to) => {
                state.calls[cmd as usize].0 -= 1;
                state.net.insert(Msg::Call { cmd, to });
            }
            Action::Lose(msg) => {
                state.net.remove(&msg);
            }
            Action::Publish(shard, to) => {
                let mut next = state.maps.last()?.clone();
                next[shard as usize] = to;
                state.maps.push(next);
            }
            Action::Learn(node) => {
                let n = node as usize;
                let before = state.nodes[n].seen;
                let now = before + 1;
                state.nodes[n].seen = now;
                for shard in 0..self.shards {
                    let s = shard as usize;
                    let mine = owner(&state, now, shard) == node;
                    let serve = state.nodes[n].serve[s];
                    match (mine, serve) {
                        (true, Serve::NotMine) => {
                            let from = owner(&state, before, shard);
                            state.nodes[n].serve[s] = if from == node {
                                Serve::Serving
                            } else {
                                Serve::Pending(from)
                            };
                        }
                        (false, Serve::Serving | Serve::Pending(_)) => {
                            if state.nodes[n].work[s].is_some() {
                                state.nodes[n].serve[s] = Serve::Draining;
                            } else {
                                hand_off(&mut state, node, shard);
                            }
                        }
                        _ => {}
                    }
                }
            }
            Action::FinishDrain(node, shard) => hand_off(&mut state, node, shard),
            Action::HandoffTimeout(node, shard) => {
                state.nodes[node as usize].serve[shard as usize] = Serve::Serving;
            }
            Action::Deliver(msg) => {
                state.net.remove(&msg);
                match msg {
                    Msg::Answer { cmd } => state.calls[cmd as usize].1 = true,
                    Msg::Confirm { shard, from, to } => {
                        let serve = &mut state.nodes[to as usize].serve[shard as usize];
                        if *serve == Serve::Pending(from) {
                            *serve = Serve::Serving;
                        }
                    }
                    Msg::Call { cmd, to } => {
                        let shard = self.shard_of(cmd);
                        let s = shard as usize;
                        let stored = state.store[s].clone();
                        let n = &mut state.nodes[to as usize];
                        // Not owner, moving, or busy: the caller is told to retry (modelled as
                        // the call being lost; the caller re-sends with the same id).
                        if n.serve[s] != Serve::Serving || n.work[s].is_some() {
                            return Some(state);
                        }
                        // Activation folds the stored events (and learns their command ids, until
                        // the horizon passes).
                        let folded = *n.folded[s].get_or_insert(stored.len());
                        let known =
                            stored[..folded].contains(&cmd) && !state.forgotten[cmd as usize];
                        if self.dedupe && known {
                            state.net.insert(Msg::Answer { cmd });
                        } else {
                            n.work[s] = Some((cmd, folded));
                        }
                    }
                }
            }
            Action::Forget(cmd) => state.forgotten[cmd as usize] = true,
            Action::Append(node, shard) => {
                let s = shard as usize;
                let (cmd, decided) = state.nodes[node as usize].work[s]?;
                let len = state.store[s].len();
                let n = &mut state.nodes[node as usize];
                if len == decided {
                    // The store's version check passes: the events are written.
                    state.store[s].push(cmd);
                    n.folded[s] = Some(len + 1);
                    n.work[s] = None;
                    state.net.insert(Msg::Answer { cmd });
                } else {
                    // Conflict: fold in the other writer's events, then decide again — unless
                    // they hold this command (looked for among them, not in the memory).
                    n.folded[s] = Some(len);
                    if self.conflict_check && state.store[s][decided..].contains(&cmd) {
                        n.work[s] = None;
                        state.net.insert(Msg::Answer { cmd });
                    } else {
                        n.work[s] = Some((cmd, len));
                    }
                }
            }
        }
        Some(state)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always(
                "at most one node serves a shard per map epoch",
                |m: &Handoff, s: &State| {
                    (0..m.shards).all(|shard| {
                        (0..s.maps.len()).all(|epoch| {
                            s.nodes
                                .iter()
                                .filter(|n| {
                                    n.seen == epoch && n.serve[shard as usize] == Serve::Serving
                                })
                                .count()
                                <= 1
                        })
                    })
                },
            ),
            Property::always("no command is applied twice", |_: &Handoff, s: &State| {
                s.store.iter().all(|log| {
                    let unique: BTreeSet<_> = log.iter().collect();
                    unique.len() == log.len()
                })
            }),
            Property::always(
                "an acknowledged command is applied exactly once",
                |m: &Handoff, s: &State| {
                    s.calls.iter().enumerate().all(|(cmd, (_, acked))| {
                        !*acked
                            || s.store[m.shard_of(cmd as Cmd) as usize]
                                .iter()
                                .filter(|c| **c == cmd as Cmd)
                                .count()
                                == 1
                    })
                },
            ),
            Property::sometimes(
                "two nodes serve one shard at once (old and new epoch)",
                |m: &Handoff, s: &State| {
                    (0..m.shards).any(|shard| {
                        s.nodes
                            .iter()
                            .filter(|n| n.serve[shard as usize] == Serve::Serving)
                            .count()
                            >= 2
                    })
                },
            ),
            Property::sometimes(
                "a command is forgotten while a node works on it",
                |m: &Handoff, s: &State| {
                    s.forgotten.iter().enumerate().any(|(cmd, forgotten)| {
                        let shard = m.shard_of(cmd as Cmd) as usize;
                        *forgotten
                            && s.nodes
                                .iter()
                                .any(|n| n.work[shard].is_some_and(|(c, _)| c == cmd as Cmd))
                    })
                },
            ),
            Property::sometimes(
                "a command is acknowledged after its shard moved",
                |m: &Handoff, s: &State| {
                    s.calls.iter().enumerate().any(|(cmd, (_, acked))| {
                        let shard = m.shard_of(cmd as Cmd);
                        *acked
                            && s.maps
                                .iter()
                                .any(|map| map[shard as usize] != s.maps[0][shard as usize])
                    })
                },
            ),
        ]
    }
}

fn check(model: Handoff) -> impl Checker<Handoff> {
    model.checker().spawn_bfs().join()
}

#[test]
fn two_nodes_two_shards_the_handoff_is_safe() {
    let checker = check(Handoff::new(2, 2, vec![0, 1], 3));
    checker.assert_properties();
    println!("2 nodes: {} states", checker.unique_state_count());
}

#[test]
fn three_nodes_two_shards_the_handoff_is_safe() {
    let checker = check(Handoff::new(3, 2, vec![0, 1], 2));
    checker.assert_properties();
    println!("3 nodes: {} states", checker.unique_state_count());
}

#[test]
fn without_the_command_id_check_a_command_is_applied_twice() {
    let checker = check(Handoff {
        dedupe: false,
        conflict_check: false,
        forgetting: Forgetting::Never,
        ..Handoff::new(2, 1, vec![0], 2)
    });
    let path = checker.assert_any_discovery("no command is applied twice");
    println!("counterexample: {:?}", path.into_actions());
}

/// The exact race of the issue: the old owner decided before it was deposed, the new owner
/// applied the re-sent copy; the old owner's append loses, and unless it looks for its command
/// id among the events it folds in, it applies the command a second time.
#[test]
fn a_conflict_loser_that_does_not_look_for_its_command_applies_it_twice() {
    let checker = check(Handoff {
        dedupe: true,
        conflict_check: false,
        forgetting: Forgetting::Never,
        ..Handoff::new(2, 1, vec![0], 2)
    });
    let path = checker.assert_any_discovery("no command is applied twice");
    let actions = path.into_actions();
    println!("counterexample: {actions:?}");
    assert!(
        actions
            .iter()
            .filter(|a| matches!(a, Action::Append(..)))
            .count()
            >= 3,
        "the counterexample goes through a lost conflict: {actions:?}"
    );
}

/// A memory that may drop an id while copies of the call can still come — a window of the last
/// N commands, which a busy actor passes well within a call timeout — lets a late copy be
/// applied again. Remembering for longer than callers re-send (the horizon) is what the safe
/// checks above rely on.
#[test]
fn forgetting_while_copies_may_still_come_applies_a_command_twice() {
    let checker = check(Handoff {
        forgetting: Forgetting::Anytime,
        ..Handoff::new(2, 1, vec![0], 2)
    });
    let path = checker.assert_any_discovery("no command is applied twice");
    let actions = path.into_actions();
    println!("counterexample: {actions:?}");
    assert!(
        actions.iter().any(|a| matches!(a, Action::Forget(_))),
        "the counterexample forgets the id: {actions:?}"
    );
}
