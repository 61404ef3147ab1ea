//! The stable hash every Aether process agrees on: XXH3-64 (seed 0) of the UTF-8 bytes.
//!
//! XXH3 is a specified algorithm with published test vectors, implemented by a well-kept crate
//! (`xxhash-rust`) and available in every mainstream language, so a router written in Go, Python
//! or Java computes the same shard for an actor id. `std`'s `DefaultHasher` is never used: its
//! output may change between Rust releases and is randomly keyed per process.

use xxhash_rust::xxh3::xxh3_64;

/// A shard number, `0..shard_count`.
pub type ShardId = u32;

/// XXH3-64 (seed 0) of `bytes`. Fixed forever: golden values are pinned by tests.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    xxh3_64(bytes)
}

/// The shard an actor id belongs to: `xxh3_64(actor_id UTF-8 bytes) % shard_count`.
///
/// `shard_count` must be at least 1 (a [`ClusterConfig`](crate::ClusterConfig) guarantees it);
/// 0 is treated as 1 rather than dividing by zero.
///
/// ```
/// use aether_cluster::shard_for;
/// let shard = shard_for("order-42", 1024);
/// assert!(shard < 1024);
/// assert_eq!(shard, shard_for("order-42", 1024)); // same in every process, on every platform
/// ```
pub fn shard_for(actor_id: &str, shard_count: u32) -> ShardId {
    let n = u64::from(shard_count.max(1));
    // The remainder is below shard_count, which fits in u32.
    u32::try_from(stable_hash(actor_id.as_bytes()) % n).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Golden values: if one of these changes, every deployed cluster would route differently.
    #[test]
    fn the_stable_hash_never_drifts() {
        // XXH3-64 of the empty input, from the xxHash specification's test vectors.
        assert_eq!(stable_hash(b""), 0x2D06_8005_38D3_94C2);
        // The rest cross-checked with Python's `xxhash` package (xxh3_64_intdigest).
        assert_eq!(stable_hash(b"order-42"), 0x79cc_a591_0b9a_ce3c);
        assert_eq!(stable_hash("kunde-ü".as_bytes()), 0xe202_8683_bdbc_d0f3);
        assert_eq!(shard_for("order-42", 1024), 572);
    }

    #[test]
    fn zero_shards_is_one_shard() {
        assert_eq!(shard_for("a", 0), 0);
    }
}
