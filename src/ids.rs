//! The set of distinct ids of one window: a roaring treemap over an order-preserving map of
//! `i64` onto `u64`, with 32-bit roaring bitmaps in front for the ids most clients send
//! (`0..2^32`), because they skip the treemap's B-tree lookup on every insert, split in
//! [`HOT_PARTS`] by the ids' top bits (see [`Hot`]). `benches/hot_path.rs` measures each
//! choice against the plain alternative.

use roaring::{MultiOps, RoaringBitmap, RoaringTreemap};

/// Flips the sign bit, so that `i64::MIN..=i64::MAX` maps monotonically onto `0..=u64::MAX`.
/// Order preservation keeps nearby ids in the same roaring container, whatever their sign.
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

/// The high 32 bits of the key of every id in `0..2^32`: those ids go to the fast bitmap.
const HOT_HIGH: u32 = 0x8000_0000;

/// Bitmaps the ids `0..2^32` are split into, by their top 8 bits.
pub const HOT_PARTS: usize = 256;

/// The ids `0..2^32`, as [`HOT_PARTS`] roaring bitmaps, part `i` holding the ids whose top 8
/// bits are `i`.
///
/// Why not one bitmap: a roaring bitmap keeps its containers (one per 65 536 ids) in one
/// sorted vector. Random ids make up to 65 536 of them, so every insert binary-searches a
/// 2 MB vector (cache misses all the way down), and each new container shifts half of it
/// (`Vec::insert`): in a fresh window that memmove was 7-10% of verve's CPU under wrk
/// (`scripts/flamegraph.sh`). Split, a part holds at most 256 containers (8 KiB), picked by
/// one shift. `benches/hot_path.rs` (`insert`) compares the two.
#[derive(Default, Clone, Debug)]
pub struct Hot {
    /// Empty until the first insert (a window without ids allocates nothing), then
    /// [`HOT_PARTS`] long.
    parts: Vec<RoaringBitmap>,
}

impl Hot {
    #[inline]
    fn part(&mut self, value: u32) -> &mut RoaringBitmap {
        if self.parts.is_empty() {
            self.parts.resize_with(HOT_PARTS, RoaringBitmap::new);
        }
        &mut self.parts[(value >> 24) as usize]
    }

    #[inline]
    pub fn insert(&mut self, value: u32) -> bool {
        self.part(value).insert(value)
    }

    pub fn contains(&self, value: u32) -> bool {
        self.parts
            .get((value >> 24) as usize)
            .is_some_and(|p| p.contains(value))
    }

    /// Inserts the low halves of ascending keys that share their high half (the hot range of
    /// [`BatchedIdSet`]'s sorted batch), each run of one part with one roaring `extend`.
    pub fn extend_sorted(&mut self, keys: &[u64]) {
        let top = |k: &u64| (*k as u32) >> 24;
        for run in keys.chunk_by(|a, b| top(a) == top(b)) {
            self.part(run[0] as u32)
                .extend(run.iter().map(|&k| k as u32));
        }
    }

    pub fn len(&self) -> u64 {
        self.parts.iter().map(RoaringBitmap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.parts.iter().all(RoaringBitmap::is_empty)
    }

    /// Adds every value of `other`, part by part, each with `&a | &b` (see
    /// [`IdSet::union_with`] for why not `|=`), calling `pause` after each part.
    pub fn union_with(&mut self, other: &Hot, pause: &mut dyn FnMut()) {
        if other.parts.is_empty() {
            return;
        }
        if self.parts.is_empty() {
            self.parts = other.parts.clone();
            return;
        }
        for (mine, theirs) in self.parts.iter_mut().zip(&other.parts) {
            if theirs.is_empty() {
                continue;
            } else if mine.is_empty() {
                *mine = theirs.clone();
            } else {
                *mine = &*mine | theirs;
            }
            pause();
        }
    }

    /// Removes every value of `other`, part by part (roaring's in-place `-=` keeps the
    /// container order: linear).
    fn subtract(&mut self, other: &Hot) {
        for (mine, theirs) in self.parts.iter_mut().zip(&other.parts) {
            if !mine.is_empty() && !theirs.is_empty() {
                *mine -= theirs;
            }
        }
    }

    /// Frees the parts one at a time, calling `pause` after each.
    fn release(mut self, pause: &mut dyn FnMut()) {
        while let Some(part) = self.parts.pop() {
            let had_any = !part.is_empty();
            drop(part);
            if had_any {
                pause();
            }
        }
    }

    /// One bitmap of all the parts (for serialization). Appending the parts in order only
    /// ever adds containers at the end of the vector: linear.
    pub fn to_bitmap(&self) -> RoaringBitmap {
        let mut all = RoaringBitmap::new();
        for part in &self.parts {
            all |= part;
        }
        all
    }

    /// The inverse of [`Hot::to_bitmap`].
    pub fn from_bitmap(bitmap: &RoaringBitmap) -> Hot {
        let mut hot = Hot::default();
        for value in bitmap.iter() {
            hot.insert(value);
        }
        hot
    }

    /// Every value, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.parts.iter().flat_map(|p| p.iter())
    }
}

impl PartialEq for Hot {
    fn eq(&self, other: &Hot) -> bool {
        let empty = RoaringBitmap::new();
        (0..HOT_PARTS)
            .all(|i| self.parts.get(i).unwrap_or(&empty) == other.parts.get(i).unwrap_or(&empty))
    }
}

/// Distinct ids, exact. `hot` and `rest` never hold the same key, so the cardinality is the
/// sum of theirs.
#[derive(Default, Clone, Debug, PartialEq)]
pub struct IdSet {
    /// Low 32 bits of keys whose high half is [`HOT_HIGH`] (ids `0..2^32`).
    hot: Hot,
    /// Every other key.
    rest: RoaringTreemap,
}

impl IdSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `id`; true when it was not there yet.
    #[inline]
    pub fn insert(&mut self, id: i64) -> bool {
        let key = to_key(id);
        if (key >> 32) as u32 == HOT_HIGH {
            self.hot.insert(key as u32)
        } else {
            self.rest.insert(key)
        }
    }

    pub fn contains(&self, id: i64) -> bool {
        let key = to_key(id);
        if (key >> 32) as u32 == HOT_HIGH {
            self.hot.contains(key as u32)
        } else {
            self.rest.contains(key)
        }
    }

    /// The number of distinct ids.
    pub fn len(&self) -> u64 {
        self.hot.len() + self.rest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hot.is_empty() && self.rest.is_empty()
    }

    /// Adds every id of `other`.
    ///
    /// The 32-bit half is merged with `&a | &b`, a linear walk over both container lists
    /// into a new one. roaring's in-place `|=` inserts each container the left side lacks
    /// with `Vec::insert`, quadratic in the number of containers: with random ids (tens of
    /// thousands of containers, before the split into parts) that took 0.3-0.4 s per window
    /// here.
    pub fn union_with(&mut self, other: &IdSet) {
        self.hot.union_with(&other.hot, &mut || {});
        // The treemap's `|=` goes through its B-tree: no quadratic step.
        self.rest |= &other.rest;
    }

    /// Removes every id of `other`: what a shipment adds to what was shipped before.
    pub fn subtract(&mut self, other: &IdSet) {
        self.hot.subtract(&other.hot);
        self.rest -= &other.rest;
    }

    /// The union of many sets (one per shard), merged pairwise with [`IdSet::union_with`].
    /// roaring's `MultiOps::union` is not used: it turns every container into an 8 KiB bitmap
    /// while it works, which for the sparse containers of random ids cost ~0.5 s and ~300 MB
    /// per window at 250 000 ids (measured; `benches/hot_path.rs` compares them).
    pub fn union_all(sets: Vec<IdSet>) -> IdSet {
        IdSet::union_all_pausing(sets, &mut || {})
    }

    /// [`IdSet::union_all`], calling `pause` between the pieces of work (one bitmap part
    /// each, well under a millisecond at 10M ids) and freeing the merged shards the same way.
    /// The collector passes `std::thread::yield_now`: on a machine whose every core runs a
    /// may worker, a 50 ms merge in one piece held a worker off its core for a whole
    /// scheduler slice (a 4.6 ms stall in `perf/merge_stall.sh`); yielding between pieces
    /// lets a woken worker run at once.
    pub fn union_all_pausing(sets: Vec<IdSet>, pause: &mut dyn FnMut()) -> IdSet {
        let mut parts = sets.into_iter();
        let mut acc = parts.next().unwrap_or_default();
        for part in parts {
            acc.hot.union_with(&part.hot, pause);
            acc.rest |= &part.rest;
            part.release(pause);
        }
        acc
    }

    /// Frees the set a piece at a time, calling `pause` between pieces (see
    /// [`IdSet::union_all_pausing`]).
    pub fn release(self, pause: &mut dyn FnMut()) {
        self.hot.release(pause);
        drop(self.rest);
        pause();
    }

    /// The same union with roaring's `MultiOps` (kept for the benchmark that justifies
    /// [`IdSet::union_all`]).
    pub fn union_all_multiops(sets: Vec<IdSet>) -> IdSet {
        let (hots, rests): (Vec<Hot>, Vec<RoaringTreemap>) =
            sets.into_iter().map(|s| (s.hot, s.rest)).unzip();
        let mut hot = Hot::default();
        if hots.iter().any(|h| !h.parts.is_empty()) {
            // Part by part, as `union_all` does, so that only the union itself differs.
            hot.parts = (0..HOT_PARTS)
                .map(|i| hots.iter().filter_map(|h| h.parts.get(i)).union())
                .collect();
        }
        IdSet {
            hot,
            rest: rests.union(),
        }
    }

    /// One treemap over the keys of [`to_key`]: the form that is serialized (roaring's portable
    /// format per 32-bit half) when a window is shipped elsewhere.
    pub fn to_treemap(&self) -> RoaringTreemap {
        let mut all = self.rest.clone();
        if !self.hot.is_empty() {
            all |= RoaringTreemap::from_bitmaps([(HOT_HIGH, self.hot.to_bitmap())]);
        }
        all
    }

    /// The inverse of [`IdSet::to_treemap`].
    pub fn from_treemap(tree: RoaringTreemap) -> IdSet {
        let mut set = IdSet::new();
        for (high, bitmap) in tree.bitmaps() {
            if high == HOT_HIGH {
                set.hot = Hot::from_bitmap(bitmap);
            } else {
                set.rest |= RoaringTreemap::from_bitmaps([(high, bitmap.clone())]);
            }
        }
        set
    }

    /// Heap bytes the set would take serialized: a close stand-in for its memory footprint.
    pub fn serialized_size(&self) -> usize {
        self.hot.to_bitmap().serialized_size() + self.rest.serialized_size()
    }

    /// Every id, ascending.
    pub fn iter(&self) -> impl Iterator<Item = i64> + '_ {
        // `rest` keys below HOT_HIGH come first, then `hot`, then the rest above it.
        let below = self.rest.iter().take_while(|k| (k >> 32) < HOT_HIGH as u64);
        let hot = self
            .hot
            .iter()
            .map(|low| ((HOT_HIGH as u64) << 32) | low as u64);
        let above = self.rest.iter().skip_while(|k| (k >> 32) < HOT_HIGH as u64);
        below.chain(hot).chain(above).map(from_key)
    }
}

/// Ids buffered before they are inserted: see [`BatchedIdSet`].
pub const BATCH: usize = 2048;

/// An [`IdSet`] that takes inserts in batches. A single roaring insert of a random id does a
/// binary search over up to 65 536 containers, most of them cache misses (measured: 14% of
/// verve's CPU under wrk with random u32 ids). Buffering [`BATCH`] keys and inserting them
/// sorted turns those searches into a walk over neighbouring containers
/// (`benches/hot_path.rs` compares the two). The buffer is flushed before anything reads the
/// set, so the set is always exact when it is looked at.
#[derive(Debug, Default, Clone)]
pub struct BatchedIdSet {
    set: IdSet,
    /// Keys ([`to_key`]) not inserted yet; at most [`BATCH`].
    pending: Vec<u64>,
}

impl BatchedIdSet {
    pub fn new() -> Self {
        Self::default()
    }

    #[inline]
    pub fn insert(&mut self, id: i64) {
        if self.pending.capacity() == 0 {
            // Once per window and shard, not per request.
            self.pending.reserve_exact(BATCH);
        }
        self.pending.push(to_key(id));
        if self.pending.len() >= BATCH {
            self.flush();
        }
    }

    /// Inserts the buffered keys, sorted: the keys of the hot range form one contiguous run.
    pub fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        self.pending.sort_unstable();
        let hot_start = self
            .pending
            .partition_point(|k| ((k >> 32) as u32) < HOT_HIGH);
        let hot_end = self
            .pending
            .partition_point(|k| ((k >> 32) as u32) <= HOT_HIGH);
        self.set.rest.extend(&self.pending[..hot_start]);
        self.set
            .hot
            .extend_sorted(&self.pending[hot_start..hot_end]);
        self.set.rest.extend(&self.pending[hot_end..]);
        self.pending.clear();
    }

    /// Adds every id of `other` (a window resumed from a state file).
    pub fn union_with(&mut self, other: &IdSet) {
        self.set.union_with(other);
    }

    /// The exact set (flushes first).
    pub fn set(&mut self) -> &IdSet {
        self.flush();
        &self.set
    }

    /// Takes the exact set out, leaving this one empty but keeping its batch buffer, so the
    /// next insert does not allocate a new one (cluster mode drains a shard every second).
    pub fn take_set(&mut self) -> IdSet {
        self.flush();
        std::mem::take(&mut self.set)
    }

    pub fn into_set(mut self) -> IdSet {
        self.flush();
        self.set
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty() && self.set.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_set_hands_out_every_id_and_keeps_the_batch_buffer() {
        let mut b = BatchedIdSet::new();
        for id in [5, -1, 1 << 40, 5] {
            b.insert(id);
        }
        let taken = b.take_set();
        assert_eq!(taken.iter().collect::<Vec<_>>(), [-1, 5, 1 << 40]);
        assert!(b.is_empty());
        assert!(
            b.pending.capacity() >= BATCH,
            "no new buffer on the next insert"
        );
        b.insert(7);
        assert_eq!(b.into_set().iter().collect::<Vec<_>>(), [7]);
    }

    #[test]
    fn subtract_leaves_only_the_ids_the_other_set_lacks() {
        let mut a = IdSet::new();
        let mut b = IdSet::new();
        for id in [1, 2, 3, 1 << 40, -7, u32::MAX as i64, 70_000] {
            a.insert(id);
        }
        for id in [2, 1 << 40, 70_000, 99, -8] {
            b.insert(id);
        }
        a.subtract(&b);
        assert_eq!(a.iter().collect::<Vec<_>>(), [-7, 1, 3, u32::MAX as i64]);
        a.subtract(&IdSet::new());
        assert_eq!(a.len(), 4);
    }

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
        assert_eq!(to_key(i64::MIN), 0);
        assert_eq!(to_key(i64::MAX), u64::MAX);
    }

    #[test]
    fn counts_distinct_ids_on_both_paths() {
        let mut set = IdSet::new();
        for id in [
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
        ] {
            set.insert(id);
        }
        assert_eq!(set.len(), 7);
        assert!(set.contains(-1) && set.contains(1 << 32) && !set.contains(2));
        let all: Vec<i64> = set.iter().collect();
        assert_eq!(
            all,
            vec![i64::MIN, -1, 0, 1, u32::MAX as i64, 1 << 32, i64::MAX]
        );
    }

    #[test]
    fn hot_parts_split_at_the_top_bits_and_join_back() {
        let values = [
            0,
            1,
            0x00ff_ffff,
            0x0100_0000,
            0x7fff_ffff,
            0xff00_0000,
            u32::MAX,
        ];
        let mut hot = Hot::default();
        assert_eq!(hot, Hot::default());
        for v in values {
            assert!(hot.insert(v));
        }
        assert!(!hot.insert(u32::MAX));
        assert_eq!(hot.len(), values.len() as u64);
        assert_eq!(hot.iter().collect::<Vec<_>>(), values);
        let one = hot.to_bitmap();
        assert_eq!(one.iter().collect::<Vec<_>>(), values);
        assert_eq!(Hot::from_bitmap(&one), hot);
        let mut sorted = Hot::default();
        let keys: Vec<u64> = values
            .iter()
            .map(|&v| (HOT_HIGH as u64) << 32 | v as u64)
            .collect();
        sorted.extend_sorted(&keys);
        assert_eq!(sorted, hot);
        // Allocated but emptied parts equal never-allocated ones.
        let mut emptied = Hot::default();
        emptied.insert(5);
        emptied.parts[0].remove(5);
        assert_eq!(emptied, Hot::default());
        assert!(emptied.is_empty() && !emptied.contains(5) && !Hot::default().contains(5));
    }

    #[test]
    fn union_all_equals_pairwise_union() {
        let mut a = IdSet::new();
        let mut b = IdSet::new();
        let mut c = IdSet::new();
        for i in 0..1000i64 {
            a.insert(i * 3);
            b.insert(i * 5 - 2000);
            c.insert(i64::MAX - i);
        }
        let mut pairwise = a.clone();
        pairwise.union_with(&b);
        pairwise.union_with(&c);
        let all = IdSet::union_all(vec![a.clone(), b.clone(), c.clone()]);
        assert_eq!(all, pairwise);
        assert_eq!(IdSet::union_all_multiops(vec![a, b, c]), pairwise);
        assert!(IdSet::union_all(vec![]).is_empty());
        assert_eq!(all.len(), pairwise.iter().count() as u64);
    }

    #[test]
    fn batched_inserts_equal_direct_ones() {
        let mut direct = IdSet::new();
        let mut batched = BatchedIdSet::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for i in 0..(3 * BATCH as i64 + 17) {
            // A mix of hot, negative, huge and repeated ids, in no order.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let id = match i % 5 {
                0 => (x % (1 << 32)) as i64,
                1 => -((x % 1000) as i64),
                2 => x as i64,
                3 => i % 100,
                _ => (1 << 32) + (x % 5000) as i64,
            };
            direct.insert(id);
            batched.insert(id);
        }
        assert!(!batched.is_empty());
        assert_eq!(batched.set(), &direct);
        assert_eq!(batched.into_set(), direct);
        assert!(BatchedIdSet::new().is_empty());
    }

    #[test]
    fn treemap_round_trip_keeps_every_id() {
        let mut set = IdSet::new();
        for id in [i64::MIN, -5, 0, 7, u32::MAX as i64, 1 << 40, i64::MAX] {
            set.insert(id);
        }
        let tree = set.to_treemap();
        assert_eq!(tree.len(), set.len());
        let mut bytes = Vec::new();
        tree.serialize_into(&mut bytes).unwrap();
        let back = IdSet::from_treemap(RoaringTreemap::deserialize_from(&bytes[..]).unwrap());
        assert_eq!(back, set);
    }
}
