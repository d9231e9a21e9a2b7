//! Partitions: every id belongs to exactly one of [`PARTITIONS`] disjoint partitions, by a
//! fixed function of the id alone, so that an id lands in the same partition on every
//! instance. A window's count is then the sum of its partitions' counts, and each partition
//! can be counted by a different process (cluster mode spreads them over its instances and
//! its Redis Cluster nodes).
//!
//! A key ([`to_key`](super::to_key)) is cut into its high bits, the partition's *value*
//! (`key >> PARTITION_BITS`), and its low [`PARTITION_BITS`] bits, which choose the partition
//! once mixed with a hash of the value. Distinct keys give distinct `(partition, value)` pairs
//! and back ([`key_of`]), so a partition's distinct values are exactly its distinct ids, and
//! counting values is counting ids. Why this function:
//! - **Nothing is lost in size.** Random 64-bit ids fall `2^64 / n` apart, and so do a
//!   partition's `n / PARTITIONS` values within their `2^64 / PARTITIONS` range: a
//!   partition's set costs as many bits per id as the whole set did. A partition chosen by
//!   a hash of the whole key (and values kept whole) would spend `PARTITION_BITS` more bits
//!   on every id.
//! - **Dense ids stay dense.** Of the `PARTITIONS` keys that share a value, exactly one falls
//!   in each partition (the low bits are mixed with a function of the value only, a
//!   bijection for each value): sequential ids give every partition one value in a row, a
//!   run of consecutive values, which the id set stores in a few bits each.
//! - **Spread whatever the ids look like.** Plain low bits would put ids that are all
//!   multiples of 16 in one partition; the hash of the value spreads those too.

use super::set::{Builder, IdSet};

/// Bits of the key that choose the partition.
pub const PARTITION_BITS: u32 = 4;

/// How many partitions a window's ids are cut into.
pub const PARTITIONS: usize = 1 << PARTITION_BITS;

const LOW: u64 = PARTITIONS as u64 - 1;

/// A hash of `value` in [`PARTITION_BITS`] bits (Fibonacci hashing: the top bits of a
/// multiplication by 2^64 / φ).
#[inline]
fn mix(value: u64) -> u64 {
    value.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - PARTITION_BITS)
}

/// The partition of `key` and the key's value within it.
#[inline]
pub fn partition_of(key: u64) -> (usize, u64) {
    let value = key >> PARTITION_BITS;
    (((key & LOW) ^ mix(value)) as usize, value)
}

/// The key whose partition is `partition` and value `value`: the inverse of
/// [`partition_of`].
#[inline]
pub fn key_of(partition: usize, value: u64) -> u64 {
    debug_assert!(partition < PARTITIONS && value >> (64 - PARTITION_BITS) == 0);
    (value << PARTITION_BITS) | ((partition as u64 ^ mix(value)) & LOW)
}

/// The values of `set`'s keys, one set per partition (indexed by partition). As the keys
/// ascend their values do too, and a partition gets at most one key per value, so each
/// partition's values come in strictly ascending order and are built in one pass.
pub fn split(set: &IdSet) -> Vec<IdSet> {
    let mut parts: Vec<Builder> = (0..PARTITIONS).map(|_| Builder::default()).collect();
    for key in set.keys() {
        let (p, value) = partition_of(key);
        parts[p].push(value);
    }
    parts.into_iter().map(Builder::into_set).collect()
}

/// The set of ids whose partition values `parts` holds (indexed by partition): the inverse
/// of [`split`], for tests and tools.
pub fn join(parts: &[IdSet]) -> IdSet {
    let mut keys: Vec<u64> = parts
        .iter()
        .enumerate()
        .flat_map(|(p, set)| set.keys().map(move |v| key_of(p, v)))
        .collect();
    keys.sort_unstable();
    IdSet::from_sorted_keys(&keys)
}

#[cfg(test)]
mod tests {
    use super::super::testing::stream;
    use super::super::to_key;
    use super::*;

    #[test]
    fn every_key_has_one_partition_and_comes_back_from_it() {
        for key in stream(7)
            .take(100_000)
            .chain([0, 1, 15, 16, u64::MAX, u64::MAX - 15, 1 << 63])
        {
            let (p, value) = partition_of(key);
            assert!(p < PARTITIONS);
            assert_eq!(key_of(p, value), key, "{key}");
        }
    }

    #[test]
    fn splitting_keeps_every_id_once_and_the_parts_add_up() {
        let ids: Vec<i64> = stream(11).take(50_000).map(|k| k as i64).collect();
        let set = IdSet::from_ids(ids.iter().copied().chain(-500..500));
        let parts = split(&set);
        assert_eq!(parts.len(), PARTITIONS);
        assert_eq!(parts.iter().map(IdSet::len).sum::<u64>(), set.len());
        assert_eq!(join(&parts), set);
        for (p, part) in parts.iter().enumerate() {
            assert!(part.keys().all(|v| partition_of(key_of(p, v)).0 == p));
        }
    }

    /// How evenly `ids` spread: the largest partition's share of them, times `PARTITIONS`
    /// (1.0 is a perfect spread).
    fn skew(ids: impl Iterator<Item = i64>) -> f64 {
        let parts = split(&IdSet::from_ids(ids));
        let total: u64 = parts.iter().map(IdSet::len).sum();
        let max = parts.iter().map(IdSet::len).max().unwrap();
        max as f64 * PARTITIONS as f64 / total as f64
    }

    #[test]
    fn sequential_random_and_strided_ids_all_spread_over_every_partition() {
        assert!(skew(0..100_000) <= 1.01, "sequential");
        assert!(
            skew(stream(3).take(100_000).map(|k| k as i64)) <= 1.1,
            "random"
        );
        assert!(skew((0..100_000).map(|i| i * 16)) <= 1.1, "multiples of 16");
        assert!(
            skew((0..100_000).map(|i| i * 1024)) <= 1.1,
            "multiples of 1024"
        );
    }

    #[test]
    fn dense_ids_stay_dense_and_random_ones_cost_no_more_bits() {
        // Sequential ids: each partition holds a run of consecutive values, a few bytes.
        let dense = IdSet::from_ids(0..1_000_000);
        let parts = split(&dense);
        for part in &parts {
            let values: Vec<u64> = part.keys().collect();
            assert!(values.windows(2).all(|w| w[1] == w[0] + 1));
        }
        let part_bytes: usize = parts.iter().map(IdSet::serialized_size).sum();
        assert!(part_bytes < 16 * 1024, "{part_bytes} bytes");
        // Random 64-bit ids: the parts together take about what the whole set takes.
        let random = IdSet::from_ids(stream(5).take(200_000).map(|k| k as i64));
        let whole = random.serialized_size() as f64;
        let parts: usize = split(&random).iter().map(IdSet::serialized_size).sum();
        assert!(parts as f64 <= whole * 1.03, "{parts} vs {whole}");
        assert_eq!(partition_of(to_key(0)).1, to_key(0) >> PARTITION_BITS);
    }
}
