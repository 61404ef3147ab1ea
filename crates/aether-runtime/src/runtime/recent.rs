//! The commands (by id) an actor has folded into its state, so that a command sent again is
//! recognised: the last `REMEMBERED_COMMANDS` of them, with an index by id hash.

use std::collections::VecDeque;

use aether_core::{CommandId, CommandRecord};

/// A command folded into the state: its id, the hash of the id, its first and last version.
pub(super) struct Applied1 {
    pub(super) hash: u64,
    pub(super) id: CommandId,
    first: u64,
    last: u64,
}

/// The last commands (by id) folded into an actor's state, oldest first, and a count of their
/// id hashes, so that an unknown id (the common case) is told in one lookup.
#[derive(Default)]
pub(super) struct RecentCommands {
    pub(super) list: VecDeque<Applied1>,
    hashes: std::collections::HashMap<u64, u32, std::hash::BuildHasherDefault<Prehashed>>,
}

/// A `Hasher` for keys that are already hashes.
#[derive(Default)]
struct Prehashed(u64);

impl std::hash::Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed; this fold is never on the hot path.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Allocated only for actors that see command ids.
pub(super) type Recent = Option<Box<RecentCommands>>;

/// Only compared in this process's memory (the string is compared too), never stored.
pub(super) fn id_hash(id: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(id.as_bytes())
}

impl RecentCommands {
    pub(super) fn from_snapshot(records: Vec<CommandRecord>) -> Self {
        let mut recent = Self::default();
        for r in records.into_iter().take(crate::REMEMBERED_COMMANDS) {
            let hash = id_hash(&r.id);
            *recent.hashes.entry(hash).or_default() += 1;
            recent.list.push_back(Applied1 {
                hash,
                id: CommandId::from(r.id),
                first: r.first,
                last: r.last,
            });
        }
        recent
    }

    pub(super) fn to_snapshot(&self) -> Vec<CommandRecord> {
        self.list
            .iter()
            .map(|r| CommandRecord::new(&*r.id, r.first, r.last))
            .collect()
    }

    pub(super) fn find(&self, hash: u64, id: &str) -> Option<CommandRecord> {
        if !self.hashes.contains_key(&hash) {
            return None;
        }
        self.list
            .iter()
            .rev()
            .find(|r| r.hash == hash && &*r.id == id)
            .map(|r| CommandRecord::new(&*r.id, r.first, r.last))
    }
}

/// Notes that the events at `first..=last` were caused by command `id` (hash `hash`).
pub(super) fn remember(recent: &mut Recent, hash: u64, id: &CommandId, first: u64, last: u64) {
    let recent = recent.get_or_insert_with(Default::default);
    if let Some(prev) = recent.list.back_mut()
        && prev.hash == hash
        && prev.id == *id
    {
        prev.last = last;
        return;
    }
    if recent.list.len() >= crate::REMEMBERED_COMMANDS
        && let Some(old) = recent.list.pop_front()
        && let std::collections::hash_map::Entry::Occupied(mut e) = recent.hashes.entry(old.hash)
    {
        *e.get_mut() -= 1;
        if *e.get() == 0 {
            e.remove();
        }
    }
    *recent.hashes.entry(hash).or_default() += 1;
    recent.list.push_back(Applied1 {
        hash,
        id: id.clone(),
        first,
        last,
    });
}
