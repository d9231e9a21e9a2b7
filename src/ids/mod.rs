//! The set of distinct ids of one window: exact, and compact whatever the ids look like.
//!
//! Ids are mapped onto `u64` keys in order ([`to_key`]) and kept sorted, in blocks of
//! bit-packed gaps ([`IdSet`]). A block stores its first key and, for every later key, the
//! gap to the one before it in the fewest bits that hold the block's largest gap. So a set
//! costs about as many bits per id as the ids are far apart: 64-bit hashes (gaps of about
//! `2^64 / n`) take 5-7 bytes each, random 32-bit ids 1.5-2.5 bytes, sequential ids (gap 0)
//! nothing but the block headers. A roaring treemap, which this replaced, spends a whole
//! 32-bit bitmap on an id that shares its high half with no other: about 250 bytes per
//! 64-bit hash. `perf/RESULTS.md` has the measurements, `benches/ids.rs` the comparisons.
//!
//! Blocks are immutable once built: sets grow by merging ([`IdSet::union`], [`Union`]),
//! which walks both sides in order and moves the blocks the other side does not touch. The
//! request path never merges: it appends to an [`IdBuffer`], whose sorted runs the collector
//! merges into the open window's [`Levels`] off the request path: disjoint sets of growing
//! size, merged into one another in bounded steps, so that a merge costs in proportion to
//! the new ids and not to the window; the window becomes one set when it is sealed.
//!
//! Files: `pack.rs` the bit-packed blocks, `set.rs` the set and its algebra, `levels.rs` the
//! open window's levels (`stepped.rs` their merges, `absent.rs` the check of new ids against
//! them), `codec/` the compact wire format, `partition.rs` the fixed cut of ids into disjoint
//! partitions, `buffer.rs` the request path's buffer, `bytes.rs` the reader of untrusted
//! bytes that the codec and the state file share.

mod absent;
mod buffer;
pub(crate) mod bytes;
mod codec;
mod levels;
mod pack;
pub mod partition;
mod set;
mod stepped;

pub use buffer::{IdBuffer, BATCH};
pub use codec::{
    DecodeError, DENSEST_IDS_PER_BYTE, MAX_BLOCK_BYTES, MAX_DECODED_IDS, MAX_SEGMENT_BYTES,
};
pub use levels::{Levels, Shape, FIRST_LEVEL_IDS, GROWTH, LEVELS, MIN_STEP_KEYS};
pub use pack::{BLOCK_BITS, BLOCK_KEYS};
pub use set::{count_union, Builder, IdSet, Union};

/// Flips the sign bit, so that `i64::MIN..=i64::MAX` maps monotonically onto `0..=u64::MAX`.
/// Order preservation keeps nearby ids next to each other, whatever their sign.
///
/// ```
/// use verve::ids::{from_key, to_key};
/// assert!(to_key(-1) < to_key(0));
/// assert_eq!((to_key(i64::MIN), to_key(i64::MAX)), (0, u64::MAX));
/// assert_eq!(from_key(to_key(-42)), -42);
/// ```
#[inline]
pub fn to_key(id: i64) -> u64 {
    (id as u64) ^ (1 << 63)
}

/// The inverse of [`to_key`].
#[inline]
pub fn from_key(key: u64) -> i64 {
    (key ^ (1 << 63)) as i64
}

/// Inputs shared by the tests of the submodules.
#[cfg(test)]
mod testing {
    /// A deterministic xorshift stream.
    pub(super) fn stream(seed: u64) -> impl Iterator<Item = u64> {
        let mut x = seed | 1;
        std::iter::from_fn(move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            Some(x)
        })
    }

    pub(super) fn sorted(ids: &[i64]) -> Vec<i64> {
        let mut v = ids.to_vec();
        v.sort_unstable();
        v.dedup();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_map_preserves_order_over_the_whole_range() {
        let ids = [
            i64::MIN,
            i64::MIN + 1,
            -(1 << 32),
            -1,
            0,
            1,
            u32::MAX as i64,
            1 << 32,
            i64::MAX,
        ];
        for pair in ids.windows(2) {
            assert!(to_key(pair[0]) < to_key(pair[1]), "{pair:?}");
        }
        for id in ids {
            assert_eq!(from_key(to_key(id)), id);
        }
    }
}
