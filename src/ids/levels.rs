//! The open window's ids as a few disjoint levels of growing size, so that merging a second's
//! new ids costs in proportion to those ids, not to the window.
//!
//! **Why.** Merging new ids into one [`IdSet`] re-packs every block a new id falls into: once
//! the set has more blocks than an absorb has ids, each new id re-packs a whole block (about
//! 150 random 64-bit ids), and the block vector is rebuilt besides. A daily window of 100M
//! ids would spend most of every second merging.
//!
//! **How.** Like the levels of an LSM tree. Level 0 takes each absorb's new ids at once (it
//! is small: [`FIRST_LEVEL_IDS`]); level `i` holds up to `first * growth^i` ids, and the last
//! of [`LEVELS`] has no limit. A level over its size is merged into the next one, and that
//! merge is cut into steps: each absorb advances every merge in progress by a bounded amount
//! of work ([`Merge::step`]) in proportion to the new ids (each new id pays for `merge size /
//! incoming size` keys, so a merge ends before the level above it can fill up again, and
//! never in one piece). A merge walks its two inputs in key order, moves the blocks the other
//! input does not reach whole, and frees each input block as soon as it is consumed, so a
//! merge in progress holds each id once. While it runs, its level is the merged part plus
//! what is left of both inputs. Rejected: a resumable merge of the new ids into one set
//! (still one block re-packed per new id, 150 keys of work each: 15M keys a second at 100K
//! ids a second), and blocks updated in place with a small unpacked buffer each (8 bytes per
//! buffered id, more than the 6 an id may take).
//!
//! **Exact.** The levels are disjoint: an absorb first drops the ids some level already
//! holds (a merge-walk over each level's blocks that skips whole blocks and decodes only
//! those a new id falls into, from the nearer end, [`retain_absent`]), then adds only the
//! truly new ones. So the distinct count is the sum of the levels' lengths, and the ids an
//! absorb reports are exactly those the window did not hold (what a cluster drain ships).
//!
//! **What an absorb costs.** Uniting the new ids' sorted runs; checking them against each
//! level, which for a level with more blocks than new ids (about 15M random 64-bit ids) is a
//! fetch and a quarter block's decode per id, and for a smaller level at most the level's
//! size; merging them into level 0; and the merge steps (about `growth + 1` keys per new id
//! per level, and `window / 16M` for the last one). Up to 100M ids that is bounded by about
//! two large levels' checks and 2M keys of merging a second, whatever the window holds; past
//! that the last level's merges grow with the window (raise [`LEVELS`] for larger windows).
//! The check waits on memory for every id in a large level: at 100M ids it is most of the
//! absorb's time (`perf/RESULTS.md`).
//! `perf/RESULTS.md` has the measurements, `benches/window.rs` the comparison with one set.
//!
//! **Bytes.** Ids in a smaller level sit further apart, so their gaps take more bits; most
//! ids are in the largest level and the levels cost about as much as one set
//! (`perf/RESULTS.md`). The seal merges the levels into one set ([`Levels::into_set`]),
//! freeing each input block as it goes.

use std::fmt;
use std::mem;

use super::absent::retain_absent;
use super::pack::BLOCK_KEYS;
use super::set::{Builder, IdSet};
use super::stepped::Merge;
use super::to_key;

/// Keys checked against the levels at a time (a few more: whole blocks are decoded): an
/// 8 KiB buffer.
const CHECK_CHUNK: usize = 1024;

/// Most ids level 0 holds before it is merged into level 1. A window of up to a million ids
/// stays one set, as before the levels: no merge between levels, nothing for the seal to
/// merge, and the same bytes per id. Merging an absorb's new ids into it re-packs up to
/// about twice this many keys (while level 1 is busy): about 10 ms.
pub const FIRST_LEVEL_IDS: u64 = 1 << 20;

/// Each level holds this many times the ids of the one above it. Larger: fewer levels, so
/// fewer to check new ids against and fewer bits lost to the sparser small levels, but each
/// id is re-packed more often (about `GROWTH` times per level, on average half of it).
pub const GROWTH: u64 = 4;

/// Levels at most: the last one has no size limit and takes the level above it whole when
/// that one is full. Every level a new id is checked against costs a fetch of the block the
/// id falls in once the level has more blocks than an absorb has ids (about 15M random
/// 64-bit ids): a last level without limit keeps a window of 100M ids to one such level and
/// one of at most 16M (`FIRST_LEVEL_IDS * GROWTH^2`), where levels growing without end
/// would make two or three large ones. The price is that merging into the last level
/// re-packs it once per 16M new ids: 7 keys per new id at 100M, which the steps pay for.
pub const LEVELS: usize = 4;

/// Keys a merge in progress advances by at each absorb besides what the new ids pay for, so
/// that merges end when traffic stops: about a ms of work.
pub const MIN_STEP_KEYS: u64 = 1 << 16;

/// How large the levels are and how fast merges advance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Most ids of level 0.
    pub first: u64,
    /// Each level's size over the one above it (at least 2).
    pub growth: u64,
    /// Keys a merge advances by at each absorb, new ids or not (at least 1).
    pub min_step: u64,
    /// Levels at most (at least 2): the last one has no size limit.
    pub levels: usize,
}

impl Default for Shape {
    fn default() -> Shape {
        Shape {
            first: FIRST_LEVEL_IDS,
            growth: GROWTH,
            min_step: MIN_STEP_KEYS,
            levels: LEVELS,
        }
    }
}

impl Shape {
    /// Most ids level `level` holds before it is merged into the next.
    fn capacity(&self, level: usize) -> u64 {
        if level + 1 >= self.levels.max(2) {
            return u64::MAX;
        }
        let growth = self.growth.max(2);
        let power = growth.saturating_pow(u32::try_from(level).unwrap_or(u32::MAX));
        self.first.max(1).saturating_mul(power)
    }
}

/// The distinct ids of one window, in disjoint levels (see the module doc).
#[derive(Default)]
pub struct Levels {
    /// Level 0 first; level 0 is never a merge in progress.
    levels: Vec<Level>,
    /// Ids in all levels: as they are disjoint, the distinct count.
    len: u64,
    shape: Shape,
}

impl fmt::Debug for Levels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lens: Vec<u64> = self.levels.iter().map(Level::len).collect();
        write!(f, "Levels({} ids: {lens:?})", self.len)
    }
}

/// One level: a set, or a merge in progress of the level above into this one.
enum Level {
    Set(IdSet),
    Merging(Box<Merge>),
}

impl Level {
    fn len(&self) -> u64 {
        match self {
            Level::Set(set) => set.len(),
            Level::Merging(merge) => merge.len,
        }
    }

    fn heap_bytes(&self) -> usize {
        match self {
            Level::Set(set) => set.heap_bytes(),
            Level::Merging(merge) => mem::size_of::<Merge>() + merge.heap_bytes(),
        }
    }

    /// Drops from `keys` (ascending) those the level holds.
    fn retain_absent(&self, keys: &mut Vec<u64>) {
        match self {
            Level::Set(set) => retain_absent(&set.blocks, keys),
            Level::Merging(merge) => {
                retain_absent(&merge.out.built().blocks, keys);
                retain_absent(merge.upper.remaining(), keys);
                retain_absent(merge.lower.remaining(), keys);
            }
        }
    }

    /// The level as one set, finishing its merge if one is in progress.
    fn into_set(self) -> IdSet {
        match self {
            Level::Set(set) => set,
            Level::Merging(mut merge) => {
                merge.step(u64::MAX);
                merge.into_set()
            }
        }
    }
}

impl Levels {
    pub fn new() -> Levels {
        Levels::default()
    }

    /// Levels of another shape (tests use small ones, to see many levels and merges).
    pub fn with_shape(shape: Shape) -> Levels {
        Levels {
            shape,
            ..Levels::default()
        }
    }

    /// The number of distinct ids.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many levels there are (some possibly empty, or merges in progress).
    pub fn depth(&self) -> usize {
        self.levels.len()
    }

    /// How many merges are in progress.
    pub fn merging(&self) -> usize {
        let merging = |l: &&Level| matches!(l, Level::Merging(_));
        self.levels.iter().filter(merging).count()
    }

    /// Heap bytes the levels hold, merges in progress included (their output so far, what
    /// is left of their inputs, their buffers): what the memory budget charges.
    pub fn heap_bytes(&self) -> usize {
        let levels = self.levels.capacity() * mem::size_of::<Level>();
        levels + self.levels.iter().map(Level::heap_bytes).sum::<usize>()
    }

    pub fn contains(&self, id: i64) -> bool {
        let mut keys = vec![to_key(id)];
        for level in &self.levels {
            level.retain_absent(&mut keys);
        }
        keys.is_empty()
    }

    /// Adds the ids of `sets` and returns how many the levels did not hold yet; with
    /// `fresh`, also adds those to it (what a cluster shipment has not carried yet). Costs
    /// in proportion to the ids of `sets` (uniting them, checking them against each level,
    /// merging them into level 0 and paying for a step of each merge in progress), not to
    /// the ids held.
    pub fn absorb(&mut self, sets: Vec<IdSet>, fresh: Option<&mut Builder>) -> u64 {
        // Packed, not as a vector of keys: at a small window, or with dense ids, 8 bytes per
        // new id held for a moment would be a good part of the bytes per id.
        let batch = IdSet::union_all(sets);
        let batch = if self.levels.len() > 1 {
            self.absent(batch)
        } else {
            batch
        };
        self.add(batch, fresh)
    }

    /// The ids of `batch` that no level but level 0 holds (level 0 is checked by the union
    /// that adds them to it, which re-packs it anyway), a chunk of keys at a time; each
    /// block of `batch` is freed once decoded, so the two are not held whole at once.
    fn absent(&self, batch: IdSet) -> IdSet {
        let mut absent = Builder::default();
        let mut chunk = Vec::with_capacity(CHECK_CHUNK + BLOCK_KEYS);
        let mut blocks = batch.blocks.into_iter().peekable();
        while blocks.peek().is_some() {
            chunk.clear();
            while chunk.len() < CHECK_CHUNK {
                let Some(block) = blocks.next() else { break };
                block.decode_into(&mut chunk);
            }
            for level in self.levels.iter().skip(1) {
                level.retain_absent(&mut chunk);
            }
            for &key in &chunk {
                absent.push(key);
            }
        }
        absent.into_set()
    }

    /// Adds `batch`, which no level but level 0 holds any of, to level 0; returns how many
    /// ids were new.
    fn add(&mut self, batch: IdSet, fresh: Option<&mut Builder>) -> u64 {
        let added = match self.levels.first_mut() {
            Some(Level::Set(first)) => {
                let before = first.len();
                *first = IdSet::union(mem::take(first), batch, fresh);
                first.len() - before
            }
            // Level 0 is never a merge: merges land on the level below their input.
            Some(Level::Merging(_)) => unreachable_level().len(),
            None => {
                if let Some(fresh) = fresh {
                    for block in &batch.blocks {
                        fresh.push_block(block.clone());
                    }
                }
                let added = batch.len();
                self.levels.push(Level::Set(batch));
                added
            }
        };
        self.len += added;
        self.schedule();
        self.advance(added);
        self.schedule();
        added
    }

    /// Adds every id of `set` (a window put back after a restart): placed whole when the
    /// levels are empty, otherwise absorbed.
    pub fn insert_set(&mut self, set: IdSet) {
        if !self.is_empty() {
            self.absorb(vec![set], None);
            return;
        }
        self.len = set.len();
        self.levels = vec![Level::Set(set)];
        self.schedule();
    }

    /// Starts a merge for each level over its size whose next level is not merging already;
    /// a level over its size above an empty one moves down whole instead.
    fn schedule(&mut self) {
        let mut i = 0;
        while i < self.levels.len() {
            let over = matches!(&self.levels[i], Level::Set(s) if s.len() > self.shape.capacity(i));
            if over {
                if i + 1 == self.levels.len() {
                    self.levels.push(Level::Set(IdSet::new()));
                }
                match &mut self.levels[i + 1] {
                    Level::Set(next) if next.is_empty() => self.levels.swap(i, i + 1),
                    Level::Set(next) => {
                        let lower = mem::take(next);
                        let upper = match &mut self.levels[i] {
                            Level::Set(set) => mem::take(set),
                            Level::Merging(_) => unreachable_level(),
                        };
                        self.levels[i + 1] = Level::Merging(Box::new(Merge::new(upper, lower)));
                    }
                    // It waits: the merge below ends before this level is much over its size.
                    Level::Merging(_) => {}
                }
            }
            i += 1;
        }
    }

    /// Advances each merge in progress: by what `fresh` new ids pay for, plus the minimum
    /// step.
    fn advance(&mut self, fresh: u64) {
        let min_step = self.shape.min_step.max(1);
        for level in &mut self.levels {
            let Level::Merging(merge) = level else {
                continue;
            };
            let per_id = merge.len.div_ceil(merge.incoming.max(1));
            let budget = min_step.saturating_add(fresh.saturating_mul(per_id));
            if merge.step(budget) {
                let done = mem::replace(level, Level::Set(IdSet::new()));
                *level = Level::Set(done.into_set());
            }
        }
    }

    /// Finishes every merge in progress (before the levels are written out whole).
    pub fn settle(&mut self) {
        for level in &mut self.levels {
            if let Level::Merging(_) = level {
                let merge = mem::replace(level, Level::Set(IdSet::new()));
                *level = Level::Set(merge.into_set());
            }
        }
    }

    /// The levels' sets, not empty, once [`Levels::settle`]d (a merge in progress is left
    /// out: settle first).
    pub fn sets(&self) -> impl Iterator<Item = &IdSet> + '_ {
        self.levels.iter().filter_map(|level| match level {
            Level::Set(set) if !set.is_empty() => Some(set),
            _ => None,
        })
    }

    /// Every id, as one set, keeping the levels (merges in progress are finished first).
    pub fn to_set(&mut self) -> IdSet {
        self.settle();
        IdSet::union_all(self.sets().cloned())
    }

    /// Every id, as one set: the levels are merged from the smallest up, each input block
    /// freed once consumed, so this holds about the ids' bytes once, not twice.
    pub fn into_set(self) -> IdSet {
        let mut all = IdSet::new();
        for level in self.levels {
            let set = level.into_set();
            all = match (all.is_empty(), set.is_empty()) {
                (true, _) => set,
                (false, true) => all,
                (false, false) => {
                    let mut merge = Merge::new(all, set);
                    merge.step(u64::MAX);
                    merge.into_set()
                }
            };
        }
        all
    }
}

/// What a match on a level that cannot be a merge in progress (level 0, or a level over its
/// size) does in that arm.
#[cold]
fn unreachable_level() -> IdSet {
    debug_assert!(false, "a merge in progress where a set must be");
    IdSet::new()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::from_key;
    use crate::ids::pack::Block;
    use crate::ids::testing::stream;
    use std::collections::BTreeSet;

    fn small() -> Shape {
        Shape {
            first: 300,
            growth: 4,
            min_step: 50,
            levels: 16,
        }
    }

    /// Absorbs `batches` one by one, checking each absorb's new ids and the count against
    /// a `BTreeSet`, and the whole set every few absorbs; returns the most levels and
    /// merges in progress seen.
    fn against_reference(levels: &mut Levels, batches: &[Vec<i64>]) -> (usize, usize) {
        let mut reference = BTreeSet::new();
        let (mut depth, mut merging) = (0, 0);
        for (round, batch) in batches.iter().enumerate() {
            let expected: BTreeSet<i64> = batch
                .iter()
                .copied()
                .filter(|id| !reference.contains(id))
                .collect();
            // Each batch in two runs, as shards hand them over, overlapping.
            let cut = (batch.len() / 2 + 1).min(batch.len());
            let runs = vec![
                IdSet::from_ids(batch[..cut].iter().copied()),
                IdSet::from_ids(batch[cut.saturating_sub(2)..].iter().copied()),
            ];
            let mut fresh = Builder::default();
            let added = levels.absorb(runs, Some(&mut fresh));
            let fresh = fresh.into_set();
            assert_eq!(added, fresh.len(), "round {round}");
            assert_eq!(
                fresh.iter().collect::<Vec<_>>(),
                expected.iter().copied().collect::<Vec<_>>(),
                "round {round}: the new ids, each once"
            );
            reference.extend(expected);
            assert_eq!(levels.len(), reference.len() as u64, "round {round}");
            let held: u64 = levels.levels.iter().map(Level::len).sum();
            assert_eq!(held, levels.len(), "round {round}: the levels are disjoint");
            depth = depth.max(levels.depth());
            merging = merging.max(levels.merging());
            if round % 7 == 3 {
                let probe = batch[0];
                assert!(levels.contains(probe));
                assert_eq!(levels.contains(probe ^ 1), reference.contains(&(probe ^ 1)));
                let whole = levels.to_set();
                assert!(whole.iter().eq(reference.iter().copied()), "round {round}");
            }
        }
        (depth, merging)
    }

    #[test]
    fn random_ids_count_exactly_across_many_absorbs_and_levels() {
        let mut levels = Levels::with_shape(small());
        let mut ids = stream(17).map(|k| k as i64);
        let mut seen: Vec<i64> = Vec::new();
        let batches: Vec<Vec<i64>> = (0..120)
            .map(|round| {
                let mut batch: Vec<i64> = ids.by_ref().take(97 + round % 50).collect();
                // Some ids again: from earlier batches, and repeats within the batch.
                batch.extend(seen.iter().step_by(13).take(40).copied());
                batch.extend(batch.clone().iter().take(5));
                seen.extend(&batch);
                batch
            })
            .collect();
        let (depth, merging) = against_reference(&mut levels, &batches);
        assert!(depth >= 4, "{depth} levels");
        assert!(merging >= 1, "merges in progress across absorbs");
        let all: BTreeSet<i64> = seen.into_iter().collect();
        let len = levels.len();
        let sealed = levels.into_set();
        assert_eq!(sealed.len(), len);
        assert!(
            sealed.iter().eq(all.iter().copied()),
            "the seal is the union"
        );
    }

    #[test]
    fn dense_ids_count_exactly_across_many_absorbs_and_levels() {
        let mut levels = Levels::with_shape(small());
        // Overlapping runs of consecutive ids, around zero (keys either side of 2^63) and
        // at the ends of the range, plus every third id of a wide stretch.
        let batches: Vec<Vec<i64>> = (0..90i64)
            .map(|round| {
                let start = round * 150 - 4000;
                let mut batch: Vec<i64> = (start..start + 300).collect();
                batch.extend((0..60).map(|i| (round * 60 + i) * 3));
                batch.push(if round % 2 == 0 { i64::MIN } else { i64::MAX });
                batch
            })
            .collect();
        let (depth, _) = against_reference(&mut levels, &batches);
        assert!(depth >= 3, "{depth} levels");
        let reference: BTreeSet<i64> = batches.iter().flatten().copied().collect();
        assert!(levels.into_set().iter().eq(reference.iter().copied()));
    }

    #[test]
    fn a_merge_advances_by_steps_and_its_bytes_are_what_it_holds() {
        let shape = Shape {
            first: 1000,
            growth: 4,
            min_step: 1,
            levels: 16,
        };
        let mut levels = Levels::with_shape(shape);
        let mut ids = stream(5).map(|k| k as i64);
        // Fill past level 0 until a merge starts, then absorb one id at a time: each
        // absorb advances the merge by a bounded step, so it takes many absorbs.
        let mut absorbs_merging = 0;
        for _ in 0..5000 {
            let batch: Vec<i64> = ids
                .by_ref()
                .take(if absorbs_merging > 0 { 1 } else { 250 })
                .collect();
            levels.absorb(vec![IdSet::from_ids(batch)], None);
            if levels.merging() > 0 {
                absorbs_merging += 1;
                let bytes = levels.heap_bytes();
                let packed = IdSet::union_all(vec![levels_clone(&levels)]).heap_bytes();
                assert!(
                    bytes >= packed / 2,
                    "{bytes} heap bytes for {packed} packed"
                );
            } else if absorbs_merging > 0 {
                break;
            }
        }
        assert!(
            absorbs_merging > 3,
            "the merge took {absorbs_merging} absorbs"
        );
        assert_eq!(levels.merging(), 0, "and it ended");
    }

    /// The ids of `levels` as one set, without finishing a merge in progress.
    fn levels_clone(levels: &Levels) -> IdSet {
        let mut keys = Vec::new();
        for level in &levels.levels {
            match level {
                Level::Set(set) => keys.extend(set.keys()),
                Level::Merging(m) => {
                    keys.extend(m.out.built().keys());
                    for side in [&m.upper, &m.lower] {
                        keys.extend(side.remaining().iter().flat_map(Block::keys));
                    }
                }
            }
        }
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len() as u64, levels.len());
        IdSet::from_sorted_keys(&keys)
    }

    #[test]
    fn the_last_level_takes_everything_past_the_others() {
        let shape = Shape {
            levels: 3,
            ..small()
        };
        let mut levels = Levels::with_shape(shape);
        let mut ids = stream(23).map(|k| k as i64);
        let batches: Vec<Vec<i64>> = (0..60).map(|_| ids.by_ref().take(200).collect()).collect();
        let (depth, merging) = against_reference(&mut levels, &batches);
        assert_eq!((depth, levels.len()), (3, 12_000));
        assert!(merging >= 1);
        let last = levels.levels[2].len();
        assert!(last > shape.capacity(1) * 2, "{levels:?}");
    }

    #[test]
    fn a_restored_set_is_placed_whole_or_absorbed() {
        let mut levels = Levels::with_shape(small());
        let big = IdSet::from_ids(stream(9).take(5000).map(|k| k as i64));
        levels.insert_set(big.clone());
        assert_eq!(levels.len(), 5000);
        assert!(levels.depth() >= 3, "moved down whole: {levels:?}");
        assert_eq!(levels.merging(), 0);
        let more = IdSet::from_ids(big.iter().step_by(2).chain([1, 2, 3]));
        levels.insert_set(more);
        assert_eq!(levels.len(), 5003);
        let keys: Vec<u64> = levels.into_set().keys().collect();
        assert_eq!(keys.len(), 5003);
        assert!(keys.windows(2).all(|p| p[0] < p[1]));
        assert_eq!(from_key(keys[0]), big.iter().next().unwrap().min(1));
    }
}
