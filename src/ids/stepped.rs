//! A merge of two disjoint sets done in steps, so that merging two levels of a window
//! ([`Levels`](super::Levels)) never takes one piece of work as large as the levels.

use std::mem;

use super::pack::Block;
use super::set::{Builder, IdSet};

/// Consumed blocks a merge input holds before it gives their headers back (when they are at
/// least half of it): the copy that costs is amortized over as many blocks merged.
const SHRINK_AFTER_BLOCKS: usize = 1024;

/// A merge of two disjoint sets in key order, done in steps: input blocks the other input
/// does not reach are moved whole, the others decoded and their keys re-packed; each input
/// block is freed once consumed.
pub(super) struct Merge {
    /// The level above's ids (the smaller input) and this level's.
    pub(super) upper: Side,
    pub(super) lower: Side,
    /// The merged keys so far (closed into whole blocks after each step).
    pub(super) out: Builder,
    /// Ids in both inputs (they are disjoint): the level's length throughout.
    pub(super) len: u64,
    /// Ids the upper input came with: each new id pays for `len / incoming` keys of work.
    pub(super) incoming: u64,
}

impl Merge {
    pub(super) fn new(upper: IdSet, lower: IdSet) -> Merge {
        let blocks = upper.blocks.len() + lower.blocks.len();
        Merge {
            len: upper.len() + lower.len(),
            incoming: upper.len(),
            upper: Side::new(upper),
            lower: Side::new(lower),
            out: Builder::with_blocks(blocks),
        }
    }

    pub(super) fn heap_bytes(&self) -> usize {
        self.out.heap_bytes() + self.upper.heap_bytes() + self.lower.heap_bytes()
    }

    /// Merges about `budget` keys (a block moved whole counts 1); true once both inputs are
    /// consumed.
    pub(super) fn step(&mut self, budget: u64) -> bool {
        let Merge {
            upper, lower, out, ..
        } = self;
        let mut work = 0u64;
        while work < budget {
            let (side, limit) = match (upper.head(), lower.head()) {
                (None, None) => break,
                (Some(_), None) => (&mut *upper, None),
                (None, Some(_)) => (&mut *lower, None),
                (Some(x), Some(y)) if x < y => (&mut *upper, Some(y)),
                (Some(x), Some(_)) => (&mut *lower, Some(x)),
            };
            work += side.emit_below(limit, out);
        }
        // Whole blocks only between steps: new ids are checked against them.
        out.seal();
        upper.head().is_none() && lower.head().is_none()
    }

    pub(super) fn into_set(self) -> IdSet {
        debug_assert!(self.upper.head().is_none() && self.lower.head().is_none());
        self.out.into_set()
    }
}

/// One input of a [`Merge`], consumed in order.
pub(super) struct Side {
    /// Blocks before `at` are consumed and freed (empty placeholders); `words` and `len`
    /// count only what is left.
    pub(super) set: IdSet,
    at: usize,
    /// The keys of block `at` once it is touched (empty while it may still move whole).
    keys: Vec<u64>,
    /// The next of `keys` to merge.
    pos: usize,
}

impl Side {
    fn new(set: IdSet) -> Side {
        Side {
            set,
            at: 0,
            keys: Vec::new(),
            pos: 0,
        }
    }

    /// The smallest key not merged yet.
    fn head(&self) -> Option<u64> {
        match self.keys.get(self.pos) {
            Some(&key) => Some(key),
            None => self.set.blocks.get(self.at).map(|b| b.first),
        }
    }

    /// The blocks not consumed yet: the touched one whole (its merged keys are in the
    /// output too, which is harmless for membership).
    pub(super) fn remaining(&self) -> &[Block] {
        &self.set.blocks[self.at.min(self.set.blocks.len())..]
    }

    pub(super) fn heap_bytes(&self) -> usize {
        self.set.heap_bytes() + self.keys.capacity() * 8
    }

    /// Hands `out` what this side has below `limit` in block `at` (the whole block, moved,
    /// if it is untouched and ends below `limit`); returns the work done.
    fn emit_below(&mut self, limit: Option<u64>, out: &mut Builder) -> u64 {
        if self.keys.is_empty() {
            let block = &self.set.blocks[self.at];
            if limit.is_none_or(|l| block.last < l) {
                let block = self.take_block();
                out.push_block(block);
                return 1;
            }
            block.decode_into(&mut self.keys);
            self.pos = 0;
        }
        let rest = &self.keys[self.pos..];
        let count = limit.map_or(rest.len(), |l| rest.partition_point(|&k| k < l));
        for &key in &rest[..count] {
            out.push(key);
        }
        self.pos += count;
        if self.pos == self.keys.len() {
            drop(self.take_block());
            self.keys.clear();
            self.pos = 0;
        }
        (count as u64).max(1)
    }

    /// Takes block `at` out, leaving an empty placeholder (its gaps are freed with it).
    fn take_block(&mut self) -> Block {
        let spent = Block {
            first: 0,
            last: 0,
            len: 0,
            width: 0,
            gaps: Box::default(),
        };
        let block = mem::replace(&mut self.set.blocks[self.at], spent);
        self.set.words -= block.gaps.len();
        self.set.len -= u64::from(block.len);
        self.at += 1;
        // Gives back the consumed half of the block headers (40 bytes each, 0.3 bytes per
        // random 64-bit id) as the merge goes, instead of holding them to its end alongside
        // the output's.
        if self.at >= SHRINK_AFTER_BLOCKS && self.at * 2 >= self.set.blocks.len() {
            self.set.blocks.drain(..self.at);
            self.set.blocks.shrink_to_fit();
            self.at = 0;
        }
        block
    }
}

#[cfg(test)]
mod tests {
    use super::super::absent::retain_absent;
    use super::*;
    use crate::ids::testing::stream;

    #[test]
    fn a_long_merge_gives_back_consumed_headers_and_finds_every_id_meanwhile() {
        let a = IdSet::from_ids(stream(31).take(200_000).map(|k| k as i64));
        let b = IdSet::from_ids(stream(32).take(400_000).map(|k| k as i64));
        let expected = IdSet::union(a.clone(), b.clone(), None);
        let probes: Vec<u64> = expected.keys().step_by(97).collect();
        let lower_headers = b.blocks.capacity();
        let mut merge = Merge::new(a, b);
        let (mut steps, mut gave_back) = (0, false);
        while !merge.step(20_000) {
            steps += 1;
            let mut missing = probes.clone();
            retain_absent(&merge.out.built().blocks, &mut missing);
            retain_absent(merge.upper.remaining(), &mut missing);
            retain_absent(merge.lower.remaining(), &mut missing);
            assert!(
                missing.is_empty(),
                "step {steps}: {} ids not found",
                missing.len()
            );
            gave_back |= merge.lower.set.blocks.capacity() < lower_headers;
        }
        assert!(steps > 10 && gave_back, "{steps} steps");
        assert_eq!(merge.into_set(), expected);
    }
}
