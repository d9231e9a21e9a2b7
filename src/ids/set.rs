//! The id set and its algebra: building it from keys, membership, union (of two, of many,
//! and counting one without building it) and difference.

use std::fmt;

use super::pack::{bits_of, block_ends, pack, unpack, Block, BLOCK_BITS, BLOCK_KEYS};
use super::{from_key, to_key};

/// Distinct ids, exact: sorted blocks of packed gaps (see the module doc). Equal sets compare
/// equal however their blocks are cut.
#[derive(Clone, Default)]
pub struct IdSet {
    pub(super) blocks: Vec<Block>,
    /// Keys in all blocks.
    pub(super) len: u64,
    /// Packed gap words in all blocks (for [`IdSet::heap_bytes`] in O(1)).
    pub(super) words: usize,
}

impl fmt::Debug for IdSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdSet({} ids in {} blocks)", self.len, self.blocks.len())
    }
}

impl PartialEq for IdSet {
    fn eq(&self, other: &IdSet) -> bool {
        self.len == other.len && self.keys().eq(other.keys())
    }
}

impl Eq for IdSet {}

impl IdSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// The set of `keys` ([`to_key`] values), which must ascend strictly.
    pub fn from_sorted_keys(keys: &[u64]) -> IdSet {
        debug_assert!(keys.windows(2).all(|p| p[0] < p[1]));
        let mut set = IdSet::new();
        for (start, end) in block_ends(keys) {
            set.push_block(Block::from_keys(&keys[start..end]));
        }
        set
    }

    /// The set of any ids, in any order, repeats allowed.
    pub fn from_ids(ids: impl IntoIterator<Item = i64>) -> IdSet {
        let mut keys: Vec<u64> = ids.into_iter().map(to_key).collect();
        keys.sort_unstable();
        keys.dedup();
        IdSet::from_sorted_keys(&keys)
    }

    pub(super) fn push_block(&mut self, block: Block) {
        debug_assert!(self.blocks.last().is_none_or(|b| b.last < block.first));
        self.len += u64::from(block.len);
        self.words += block.gaps.len();
        self.blocks.push(block);
    }

    /// The number of distinct ids.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Heap bytes the set holds: block headers (with the vector's spare capacity) and packed
    /// gaps. Allocator overhead is not included: `perf/RESULTS.md` compares this with RSS.
    pub fn heap_bytes(&self) -> usize {
        self.blocks.capacity() * std::mem::size_of::<Block>() + self.words * 8
    }

    /// Every key ([`to_key`]), ascending.
    pub fn keys(&self) -> impl Iterator<Item = u64> + '_ {
        self.blocks.iter().flat_map(Block::keys)
    }

    /// Every id, ascending.
    pub fn iter(&self) -> impl Iterator<Item = i64> + '_ {
        self.keys().map(from_key)
    }

    pub fn contains(&self, id: i64) -> bool {
        let key = to_key(id);
        let at = self.blocks.partition_point(|b| b.last < key);
        self.blocks.get(at).is_some_and(|b| b.contains(key))
    }

    /// Adds `id`; true when it was not there yet. Re-packs the set: for tests and small sets
    /// (the request path appends to an [`IdBuffer`](super::IdBuffer) instead).
    pub fn insert(&mut self, id: i64) -> bool {
        if self.contains(id) {
            return false;
        }
        let one = IdSet::from_sorted_keys(&[to_key(id)]);
        *self = IdSet::union(std::mem::take(self), one, None);
        true
    }

    /// `a ∪ b`, taking both apart: blocks of one side that no key of the other falls within
    /// are moved, not re-packed. With `fresh`, the keys of `b` that `a` lacks are also added
    /// there (what a cluster shipment has not carried yet).
    pub fn union(a: IdSet, b: IdSet, mut fresh: Option<&mut Builder>) -> IdSet {
        if b.is_empty() {
            return a;
        }
        if a.is_empty() {
            if let Some(fresh) = fresh {
                for block in &b.blocks {
                    fresh.push_block(block.clone());
                }
            }
            return b;
        }
        let mut out = Builder::with_blocks(a.blocks.len() + b.blocks.len());
        let (mut xs, mut ys) = (Cursor::new(a.blocks), Cursor::new(b.blocks));
        loop {
            match (xs.peek(), ys.peek()) {
                (None, None) => break,
                (Some(x), y) => {
                    if y.is_none_or(|y| xs.block_before(y)) {
                        if let Some(block) = xs.take_block() {
                            out.push_block(block);
                            continue;
                        }
                    }
                    match y {
                        Some(y) if y < x => {
                            if let Some(f) = fresh.as_deref_mut() {
                                f.push(y);
                            }
                            out.push(y);
                            ys.advance();
                        }
                        Some(y) if y == x => {
                            out.push(x);
                            xs.advance();
                            ys.advance();
                        }
                        _ => {
                            out.push(x);
                            xs.advance();
                        }
                    }
                }
                (None, Some(y)) => {
                    if let Some(block) = ys.take_block() {
                        if let Some(f) = fresh.as_deref_mut() {
                            f.push_block(block.clone());
                        }
                        out.push_block(block);
                    } else {
                        if let Some(f) = fresh.as_deref_mut() {
                            f.push(y);
                        }
                        out.push(y);
                        ys.advance();
                    }
                }
            }
            // A block of `b` that no key of `a` falls within is moved whole as well.
            if let (Some(x), Some(_)) = (xs.peek(), ys.peek()) {
                if ys.block_before(x) {
                    let block = ys.take_block().expect("at a block start");
                    if let Some(f) = fresh.as_deref_mut() {
                        f.push_block(block.clone());
                    }
                    out.push_block(block);
                }
            }
        }
        out.into_set()
    }

    /// Adds every id of `other`.
    pub fn union_with(&mut self, other: &IdSet) {
        *self = IdSet::union(std::mem::take(self), other.clone(), None);
    }

    /// Removes every id of `other`.
    pub fn subtract(&mut self, other: &IdSet) {
        if self.is_empty() || other.is_empty() {
            return;
        }
        let mut out = Builder::with_blocks(self.blocks.len());
        let mut theirs = other.keys().peekable();
        for key in self.keys() {
            while theirs.next_if(|&k| k < key).is_some() {}
            if theirs.peek() != Some(&key) {
                out.push(key);
            }
        }
        *self = out.into_set();
    }

    /// The union of many sets (one per shard, or one per shipment), merged in pairs of
    /// similar size with [`Union`].
    pub fn union_all(sets: impl IntoIterator<Item = IdSet>) -> IdSet {
        let mut union = Union::default();
        for set in sets {
            union.add(set);
        }
        union.into_set()
    }
}

/// Walks a set's blocks in order, key by key, handing out untouched blocks whole.
struct Cursor {
    blocks: std::vec::IntoIter<Block>,
    block: Option<Block>,
    /// Index in `block` of the next key.
    next: u32,
    /// That key.
    key: u64,
}

impl Cursor {
    fn new(blocks: Vec<Block>) -> Cursor {
        let mut blocks = blocks.into_iter();
        let block = blocks.next();
        let key = block.as_ref().map_or(0, |b| b.first);
        Cursor {
            blocks,
            block,
            next: 0,
            key,
        }
    }

    #[inline]
    fn peek(&self) -> Option<u64> {
        self.block.as_ref().map(|_| self.key)
    }

    /// True at the start of a block that ends before `key`.
    #[inline]
    fn block_before(&self, key: u64) -> bool {
        self.next == 0 && self.block.as_ref().is_some_and(|b| b.last < key)
    }

    /// The current block, if the cursor is at its start.
    fn take_block(&mut self) -> Option<Block> {
        if self.next != 0 {
            return None;
        }
        let block = std::mem::replace(&mut self.block, self.blocks.next());
        self.key = self.block.as_ref().map_or(0, |b| b.first);
        block
    }

    #[inline]
    fn advance(&mut self) {
        let Some(b) = &self.block else { return };
        self.next += 1;
        if self.next < b.len {
            self.key += unpack(&b.gaps, self.next as usize - 1, b.width) + 1;
        } else {
            self.block = self.blocks.next();
            self.next = 0;
            self.key = self.block.as_ref().map_or(0, |b| b.first);
        }
    }
}

/// Builds a set from ascending keys (repeats are skipped) and whole blocks, cutting blocks
/// the way [`IdSet::from_sorted_keys`] does.
#[derive(Default)]
pub struct Builder {
    set: IdSet,
    /// The open block: its first and last key, and its gaps so far.
    first: u64,
    last: u64,
    open: bool,
    gaps: Vec<u64>,
    /// Gap width the open block needs so far.
    width: u8,
}

impl Builder {
    pub(super) fn with_blocks(capacity: usize) -> Builder {
        Builder {
            set: IdSet {
                blocks: Vec::with_capacity(capacity),
                ..IdSet::default()
            },
            ..Builder::default()
        }
    }

    /// Adds `key`, which must not be below any key added before.
    #[inline]
    pub fn push(&mut self, key: u64) {
        if !self.open {
            debug_assert!(self.set.blocks.last().is_none_or(|b| b.last < key));
            if self.gaps.capacity() == 0 {
                self.gaps.reserve(BLOCK_KEYS);
            }
            (self.first, self.last, self.open) = (key, key, true);
            return;
        }
        if key == self.last {
            return;
        }
        debug_assert!(key > self.last);
        let gap = key - self.last - 1;
        let w = self.width.max(bits_of(gap));
        let gaps = self.gaps.len() + 1;
        if gaps * w as usize > BLOCK_BITS || gaps + 1 > BLOCK_KEYS {
            self.seal();
            (self.first, self.last, self.open) = (key, key, true);
            return;
        }
        self.width = w;
        self.last = key;
        self.gaps.push(gap);
    }

    /// Adds the keys `first..=last`, all above the keys added before. A run of at least
    /// [`BLOCK_KEYS`] keys closes the open block and is cut into blocks of consecutive keys
    /// (width 0) made whole, without walking its keys; its last `< BLOCK_KEYS` keys, and a
    /// shorter run, fill the open block with zero gaps as many at a time as it takes. So
    /// decoding a dense segment costs its runs and blocks, not a step per id: a few bytes of
    /// roaring run containers may stand for billions.
    pub(super) fn push_run(&mut self, first: u64, last: u64) {
        debug_assert!(first <= last);
        let full = BLOCK_KEYS as u64 - 1;
        let mut key = first;
        if last - key >= full {
            self.seal();
            while last - key >= full {
                self.set.push_block(Block {
                    first: key,
                    last: key + full,
                    len: BLOCK_KEYS as u32,
                    width: 0,
                    gaps: Box::new([]),
                });
                if key + full == last {
                    return;
                }
                key += full + 1;
            }
        }
        // The run's first key may open a block or leave a gap; the rest follow with gap 0,
        // added as many at a time as the open block takes (its width is unchanged by them).
        // Counted as keys left after the last one added, so that `last` may be `u64::MAX`.
        self.push(key);
        let mut left = last - key;
        while left > 0 {
            let room = self.zero_gaps_room();
            if room == 0 {
                self.push(self.last + 1);
                left -= 1;
                continue;
            }
            let take = room.min(left);
            self.gaps.resize(self.gaps.len() + take as usize, 0);
            self.last += take;
            left -= take;
        }
    }

    /// How many more keys, each right after the last, the open block takes (0 when none is
    /// open): the cut rule of [`Builder::push`] for a gap of 0.
    fn zero_gaps_room(&self) -> u64 {
        if !self.open {
            return 0;
        }
        let by_keys = BLOCK_KEYS - 1 - self.gaps.len();
        let by_bits = match self.width {
            0 => usize::MAX,
            w => (BLOCK_BITS / w as usize).saturating_sub(self.gaps.len()),
        };
        by_keys.min(by_bits) as u64
    }

    /// Heap bytes of what is built so far, the open block's gaps included.
    pub(super) fn heap_bytes(&self) -> usize {
        self.set.heap_bytes() + self.gaps.capacity() * 8
    }

    fn seal(&mut self) {
        if self.open {
            self.set.push_block(Block {
                first: self.first,
                last: self.last,
                len: self.gaps.len() as u32 + 1,
                width: self.width,
                gaps: pack(self.gaps.iter().copied(), self.gaps.len(), self.width),
            });
            self.gaps.clear();
            self.width = 0;
            self.open = false;
        }
    }

    /// Adds a whole block whose keys are all above the keys added before. A small open block
    /// (under a quarter of [`BLOCK_BITS`]) takes the block's keys instead, so that repeated
    /// merges do not leave a trail of small blocks between untouched ones.
    pub(super) fn push_block(&mut self, block: Block) {
        let open_bits = self.gaps.len() * self.width as usize;
        if self.open && open_bits < BLOCK_BITS / 4 {
            for key in block.keys() {
                self.push(key);
            }
            return;
        }
        self.seal();
        self.set.push_block(block);
    }

    /// The set built.
    pub fn into_set(mut self) -> IdSet {
        self.seal();
        self.set
    }
}

/// A union of many sets in `O(n log k)` (n ids, k sets): sets are merged in pairs of similar
/// size, like the runs of a merge sort, each merge linear. Folding them one by one into an
/// accumulator would copy the accumulator for every set: with a cluster shipment per instance
/// per second, quadratic in the shipments.
#[derive(Default)]
pub struct Union {
    /// Partial unions, each of about twice as many sets as the next.
    stack: Vec<(u32, IdSet)>,
}

impl Union {
    pub fn add(&mut self, set: IdSet) {
        let mut item = (0u32, set);
        while let Some(top) = self.stack.last() {
            if top.0 != item.0 {
                break;
            }
            let (rank, top) = self.stack.pop().expect("just looked");
            item = (rank + 1, IdSet::union(top, item.1, None));
        }
        self.stack.push(item);
    }

    /// The union of every set added.
    pub fn into_set(mut self) -> IdSet {
        let mut acc = self.stack.pop().map(|(_, s)| s).unwrap_or_default();
        while let Some((_, set)) = self.stack.pop() {
            acc = IdSet::union(set, acc, None);
        }
        acc
    }
}

/// How many distinct ids `sets` hold together: a k-way merge of their keys that counts and
/// builds nothing. The cluster's leader needs only this number of a window's shipments, and
/// it costs a fraction of building the union with [`Union`], which packs every key again at
/// each of its `log2 k` levels (`examples/leader_merge`, `perf/RESULTS.md`).
pub fn count_union(sets: &[IdSet]) -> u64 {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    match sets {
        [] => return 0,
        [only] => return only.len(),
        _ => {}
    }
    let mut keys: Vec<_> = sets.iter().map(IdSet::keys).collect();
    // The smallest next key of each set, with the set it came from.
    let mut heads: BinaryHeap<Reverse<(u64, usize)>> = keys
        .iter_mut()
        .enumerate()
        .filter_map(|(i, it)| it.next().map(|k| Reverse((k, i))))
        .collect();
    let mut count = 0u64;
    let mut last = None;
    while let Some(mut head) = heads.peek_mut() {
        let Reverse((key, i)) = *head;
        if last != Some(key) {
            count += 1;
            last = Some(key);
        }
        match keys[i].next() {
            // Replacing the top in place sifts once, where pop + push would sift twice.
            Some(next) => *head = Reverse((next, i)),
            None => {
                std::collections::binary_heap::PeekMut::pop(head);
            }
        }
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::testing::{sorted, stream};

    #[test]
    fn counts_distinct_ids_at_the_ends_of_the_range() {
        let ids = [
            0,
            1,
            1,
            u32::MAX as i64,
            1 << 32,
            -1,
            -1,
            i64::MIN,
            i64::MAX,
            i64::MAX,
        ];
        let set = IdSet::from_ids(ids);
        assert_eq!(set.len(), 7);
        assert!(set.contains(-1) && set.contains(1 << 32) && !set.contains(2));
        assert_eq!(set.iter().collect::<Vec<_>>(), sorted(&ids));
        let mut one_by_one = IdSet::new();
        for id in ids {
            one_by_one.insert(id);
        }
        assert_eq!(one_by_one, set);
    }

    #[test]
    fn blocks_respect_their_bounds_for_every_distribution() {
        let dense: Vec<u64> = (1000..1000 + 3 * BLOCK_KEYS as u64).collect();
        let mut sparse: Vec<u64> = stream(3).take(10_000).collect();
        sparse.sort_unstable();
        sparse.dedup();
        let mut u32s: Vec<u64> = stream(5).take(10_000).map(|k| k >> 32).collect();
        u32s.sort_unstable();
        u32s.dedup();
        for keys in [dense, sparse, u32s] {
            let set = IdSet::from_sorted_keys(&keys);
            assert_eq!(set.keys().collect::<Vec<_>>(), keys);
            assert_eq!(set.len(), keys.len() as u64);
            for b in &set.blocks {
                assert!(b.len as usize <= BLOCK_KEYS);
                assert!((b.len as usize - 1) * b.width as usize <= BLOCK_BITS);
                assert_eq!(b.keys().last(), Some(b.last));
            }
        }
        // Sequential ids cost only the headers: 4096 keys a block, no gap bits.
        let seq = IdSet::from_sorted_keys(&(0..100_000).collect::<Vec<_>>());
        assert_eq!(seq.words, 0);
        assert_eq!(seq.blocks.len(), 100_000usize.div_ceil(BLOCK_KEYS));
    }

    #[test]
    fn union_equals_the_union_of_the_keys_and_reports_what_is_new() {
        for (seed, spread) in [(1u64, 64u32), (2, 40), (3, 20), (4, 0)] {
            let a: Vec<i64> = stream(seed)
                .take(5000)
                .map(|k| (k >> (64 - spread.max(1))) as i64 - 77)
                .collect();
            let b: Vec<i64> = stream(seed + 100)
                .take(3000)
                .map(|k| (k >> (64 - spread.max(1))) as i64)
                .chain(a.iter().step_by(3).copied())
                .collect();
            let mut fresh = Builder::default();
            let u = IdSet::union(
                IdSet::from_ids(a.clone()),
                IdSet::from_ids(b.clone()),
                Some(&mut fresh),
            );
            let all: Vec<i64> = a.iter().chain(&b).copied().collect();
            assert_eq!(
                u.iter().collect::<Vec<_>>(),
                sorted(&all),
                "spread {spread}"
            );
            assert_eq!(u.len(), sorted(&all).len() as u64);
            let new: Vec<i64> = sorted(&b)
                .into_iter()
                .filter(|id| !a.contains(id))
                .collect();
            assert_eq!(fresh.into_set().iter().collect::<Vec<_>>(), new);
        }
    }

    #[test]
    fn union_moves_untouched_blocks_and_stays_compact_over_many_merges() {
        let mut acc = IdSet::new();
        let mut all = Vec::new();
        for round in 0..50u64 {
            let ids: Vec<i64> = stream(round + 11).take(997).map(|k| k as i64).collect();
            all.extend(&ids);
            acc = IdSet::union(acc, IdSet::from_ids(ids), None);
        }
        assert_eq!(acc.iter().collect::<Vec<_>>(), sorted(&all));
        let packed_once = IdSet::from_ids(all);
        assert!(
            acc.blocks.len() <= packed_once.blocks.len() * 2,
            "{} blocks after 50 merges, {} packed at once",
            acc.blocks.len(),
            packed_once.blocks.len()
        );
        // Disjoint ranges: every block is moved, none re-packed.
        let low = IdSet::from_sorted_keys(&(0..10_000).map(|k| k * 3).collect::<Vec<_>>());
        let high = IdSet::from_sorted_keys(&(1 << 40..(1 << 40) + 10_000).collect::<Vec<_>>());
        let blocks = low.blocks.len() + high.blocks.len();
        let u = IdSet::union(high, low, None);
        assert_eq!(u.blocks.len(), blocks);
        assert_eq!(u.len(), 20_000);
    }

    #[test]
    fn subtract_leaves_only_the_ids_the_other_set_lacks() {
        let mut a = IdSet::from_ids([1, 2, 3, 1 << 40, -7, u32::MAX as i64, 70_000]);
        let b = IdSet::from_ids([2, 1 << 40, 70_000, 99, -8]);
        a.subtract(&b);
        assert_eq!(a.iter().collect::<Vec<_>>(), [-7, 1, 3, u32::MAX as i64]);
        a.subtract(&IdSet::new());
        assert_eq!(a.len(), 4);
    }

    #[test]
    fn the_union_of_many_sets_is_exact_whatever_their_number() {
        for k in [0u64, 1, 2, 3, 7, 8, 9, 100] {
            let mut union = Union::default();
            for i in 0..k {
                // Overlapping runs, some above 2^32.
                union.add(IdSet::from_ids(
                    (i as i64 * 10..i as i64 * 10 + 20).chain([(i as i64 + 1) << 40]),
                ));
            }
            let expected = if k == 0 { 0 } else { k * 10 + 10 + k };
            let got = union.into_set();
            assert_eq!(got.len(), expected, "k = {k}");
        }
    }

    #[test]
    fn counting_the_union_equals_building_it() {
        // Overlapping sets of every kind: dense, sparse over the whole range, repeats of one
        // another, empty, one id at either end of the key space.
        let mut sets: Vec<IdSet> = (0..9u64)
            .map(|s| match s % 3 {
                0 => IdSet::from_ids(stream(s + 7).take(3000).map(|k| (k % 50_000) as i64)),
                1 => IdSet::from_ids(stream(s + 7).take(3000).map(|k| k as i64)),
                _ => IdSet::from_ids((s as i64 * 1000..s as i64 * 1000 + 2500).map(|i| i - 4000)),
            })
            .collect();
        sets.push(sets[1].clone());
        sets.push(IdSet::new());
        sets.push(IdSet::from_ids([i64::MIN, i64::MAX]));
        for k in 0..=sets.len() {
            let expected = IdSet::union_all(sets[..k].to_vec()).len();
            assert_eq!(count_union(&sets[..k]), expected, "the first {k} sets");
        }
    }

    #[test]
    fn union_all_equals_pairwise_union() {
        let sets: Vec<IdSet> = (0..13u64)
            .map(|s| IdSet::from_ids(stream(s + 40).take(700).map(|k| (k % 100_000) as i64)))
            .collect();
        let mut pairwise = IdSet::new();
        for s in &sets {
            pairwise.union_with(s);
        }
        assert_eq!(IdSet::union_all(sets), pairwise);
        assert!(IdSet::union_all(Vec::new()).is_empty());
    }
}
