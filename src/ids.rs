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
//! merges into the window's set off the request path.

use std::fmt;

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

/// Most bits of packed gaps in one block (1 KiB). Large enough that a block's 40-byte header
/// is spread over ~150 random 64-bit ids (0.3 bytes each), small enough that a merge which
/// touches one id of a block re-packs little.
pub const BLOCK_BITS: usize = 8192;

/// Most keys in one block: reached only by dense ids, whose gaps take 0-2 bits. Bounds the
/// work of decoding a block to find one key ([`IdSet::contains`]).
pub const BLOCK_KEYS: usize = 4096;

/// Bits needed to hold `gap`.
#[inline]
fn bits_of(gap: u64) -> u8 {
    (64 - gap.leading_zeros()) as u8
}

/// 64-bit words that hold `count` values of `width` bits.
#[inline]
fn words_for(count: usize, width: u8) -> usize {
    (count * width as usize).div_ceil(64)
}

/// The `index`-th `width`-bit value packed in `words`.
#[inline]
fn unpack(words: &[u64], index: usize, width: u8) -> u64 {
    if width == 0 {
        return 0;
    }
    let w = width as usize;
    let bit = index * w;
    let (at, off) = (bit / 64, bit % 64);
    let mut v = words[at] >> off;
    if off + w > 64 {
        v |= words[at + 1] << (64 - off);
    }
    if w < 64 {
        v & ((1u64 << w) - 1)
    } else {
        v
    }
}

/// Packs `count` values of at most `width` bits, low bits first, into exactly
/// [`words_for`] words: a running 64-bit accumulator, so each value costs a shift and an or.
fn pack(values: impl Iterator<Item = u64>, count: usize, width: u8) -> Box<[u64]> {
    let mut words = Vec::with_capacity(words_for(count, width));
    if width > 0 {
        let w = u32::from(width);
        let (mut acc, mut filled) = (0u64, 0u32);
        for v in values.take(count) {
            acc |= v << filled;
            let total = filled + w;
            if total >= 64 {
                words.push(acc);
                // The bits of `v` that did not fit (none when it ended on the word's edge).
                acc = if total == 64 { 0 } else { v >> (64 - filled) };
                filled = total - 64;
            } else {
                filled = total;
            }
        }
        if filled > 0 {
            words.push(acc);
        }
    }
    debug_assert_eq!(words.len(), words_for(count, width));
    words.into_boxed_slice()
}

/// Ascending keys, from `first` to `last`: `first`, then each gap minus one, packed at
/// `width` bits.
#[derive(Clone, Debug)]
struct Block {
    first: u64,
    last: u64,
    /// Keys in the block, at least 1 and at most [`BLOCK_KEYS`].
    len: u32,
    width: u8,
    /// `len - 1` gaps (`key[i] - key[i - 1] - 1`).
    gaps: Box<[u64]>,
}

impl Block {
    /// Packs `keys` (strictly ascending, not empty) with the gap width they need.
    fn from_keys(keys: &[u64]) -> Block {
        let gaps = || keys.windows(2).map(|p| p[1] - p[0] - 1);
        let width = gaps().map(bits_of).max().unwrap_or(0);
        Block {
            first: keys[0],
            last: keys[keys.len() - 1],
            len: keys.len() as u32,
            width,
            gaps: pack(gaps(), keys.len() - 1, width),
        }
    }

    fn keys(&self) -> BlockKeys<'_> {
        BlockKeys {
            block: self,
            next: 0,
            key: self.first,
        }
    }

    fn contains(&self, key: u64) -> bool {
        key >= self.first && key <= self.last && self.keys().any(|k| k == key)
    }
}

/// The keys of one block, ascending.
struct BlockKeys<'a> {
    block: &'a Block,
    /// Index of the next key to hand out.
    next: u32,
    /// The key handed out last (`first` before the first).
    key: u64,
}

impl Iterator for BlockKeys<'_> {
    type Item = u64;

    #[inline]
    fn next(&mut self) -> Option<u64> {
        let b = self.block;
        if self.next == 0 {
            self.next = 1;
            return Some(b.first);
        }
        if self.next >= b.len {
            return None;
        }
        let gap = unpack(&b.gaps, self.next as usize - 1, b.width);
        self.key += gap + 1;
        self.next += 1;
        Some(self.key)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = (self.block.len - self.next) as usize;
        (left, Some(left))
    }
}

/// Splits ascending `keys` greedily into blocks: each takes keys while its gaps fit
/// [`BLOCK_BITS`] at the widest gap's width and it holds at most [`BLOCK_KEYS`].
fn block_ends(keys: &[u64]) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut i = 0;
    std::iter::from_fn(move || {
        if i >= keys.len() {
            return None;
        }
        let start = i;
        let mut width = 0u8;
        i += 1;
        while i < keys.len() {
            let w = width.max(bits_of(keys[i] - keys[i - 1] - 1));
            let gaps = i - start;
            if gaps * w as usize > BLOCK_BITS || gaps + 1 > BLOCK_KEYS {
                break;
            }
            width = w;
            i += 1;
        }
        Some((start, i))
    })
}

/// Distinct ids, exact: sorted blocks of packed gaps (see the module doc). Equal sets compare
/// equal however their blocks are cut.
#[derive(Clone, Default)]
pub struct IdSet {
    blocks: Vec<Block>,
    /// Keys in all blocks.
    len: u64,
    /// Packed gap words in all blocks (for [`IdSet::heap_bytes`] in O(1)).
    words: usize,
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

    fn push_block(&mut self, block: Block) {
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
    /// (the request path appends to an [`IdBuffer`] instead).
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

    /// Bytes of [`IdSet::serialize_into`]'s output.
    pub fn serialized_size(&self) -> usize {
        HEADER_BYTES + self.segments().map(|s| s.size()).sum::<usize>()
    }

    /// The set cut into what the compact format writes: each block as it is, except that
    /// runs of consecutive ids under one high half (`key >> 32`) become one roaring bitmap
    /// wherever roaring's portable format, with its run containers, is smaller (a million
    /// consecutive ids: 16 run containers, about 200 bytes, against 245 block headers).
    fn segments(&self) -> impl Iterator<Item = Segment<'_>> + '_ {
        let mut i = 0;
        std::iter::from_fn(move || {
            let block = self.blocks.get(i)?;
            let high = block.first >> 32;
            // Consecutive runs (width 0) that stay under one high half.
            let mut end = i;
            while end - i < DENSE_MAX_BLOCKS
                && self
                    .blocks
                    .get(end)
                    .is_some_and(|b| b.width == 0 && b.first >> 32 == high && b.last >> 32 == high)
            {
                end += 1;
            }
            if end > i + 1 {
                let mut bitmap = roaring::RoaringBitmap::new();
                for b in &self.blocks[i..end] {
                    bitmap.insert_range(b.first as u32..=b.last as u32);
                }
                bitmap.optimize();
                let packed = (end - i) * BLOCK_HEADER_BYTES;
                if DENSE_HEADER_BYTES + bitmap.serialized_size() < packed {
                    i = end;
                    return Some(Segment::Dense(high as u32, bitmap));
                }
            }
            i += 1;
            Some(Segment::Packed(block))
        })
    }

    /// Appends the set in its compact, versioned format:
    ///
    /// | bytes | field (integers little-endian) |
    /// | --- | --- |
    /// | 4 | magic `VRVI` |
    /// | 1 | format version, 2 (any other is refused) |
    /// | 3 | zero |
    /// | 8 | number of ids |
    /// | 4 | number of segments, then per segment a kind byte and: |
    /// | | kind 0, a block: first key ([`to_key`], 8 bytes), keys in the block (4 bytes, 1 to [`BLOCK_KEYS`]), gap width in bits (1 byte, 0 to 64), `ceil((keys - 1) * width / 64)` words of packed gaps, low bits first (8 bytes each) |
    /// | | kind 1, dense ids: the high 32 bits of their keys (4 bytes), the length of what follows (4 bytes), the low 32 bits as a roaring bitmap in roaring's portable format |
    ///
    /// Keys ascend strictly across segments.
    pub fn serialize_into(&self, out: &mut Vec<u8>) {
        out.reserve(self.serialized_size());
        let segments: Vec<Segment<'_>> = self.segments().collect();
        write_segments(&segments, self.len, out);
    }

    /// The set in parts of at most `max_bytes` each, cut between segments: each part is a
    /// set of its own in the compact format, and their union is the set. For stores that
    /// bound the size of one value; no part for the empty set.
    ///
    /// # Panics
    /// If `max_bytes` is below [`MAX_SEGMENT_BYTES`] plus the header: a segment is never cut.
    pub fn serialize_parts(&self, max_bytes: usize) -> Vec<Vec<u8>> {
        assert!(
            max_bytes >= HEADER_BYTES + MAX_SEGMENT_BYTES,
            "{max_bytes} bytes"
        );
        let mut parts = Vec::new();
        let mut part: Vec<Segment<'_>> = Vec::new();
        let (mut bytes, mut len) = (HEADER_BYTES, 0u64);
        for segment in self.segments() {
            let size = segment.size();
            debug_assert!(size <= MAX_SEGMENT_BYTES);
            if bytes + size > max_bytes && !part.is_empty() {
                let mut out = Vec::with_capacity(bytes);
                write_segments(&part, len, &mut out);
                parts.push(out);
                part.clear();
                (bytes, len) = (HEADER_BYTES, 0);
            }
            bytes += size;
            len += segment.len();
            part.push(segment);
        }
        if !part.is_empty() {
            let mut out = Vec::with_capacity(bytes);
            write_segments(&part, len, &mut out);
            parts.push(out);
        }
        parts
    }

    /// [`IdSet::deserialize_bounded`] with the bound [`MAX_DECODED_IDS`].
    pub fn deserialize(bytes: &[u8]) -> Result<IdSet, DecodeError> {
        IdSet::deserialize_bounded(bytes, MAX_DECODED_IDS)
    }

    /// Reads a set written by [`IdSet::serialize_into`]; empty bytes are the empty set. The
    /// bytes are untrusted: every size is checked against what is left before anything is
    /// allocated, keys must ascend strictly across the whole set, and a set of more than
    /// `max_ids` ids is refused before it is expanded (a few bytes of roaring run containers
    /// or of gap-less blocks can stand for billions of ids).
    pub fn deserialize_bounded(bytes: &[u8], max_ids: u64) -> Result<IdSet, DecodeError> {
        if bytes.is_empty() {
            return Ok(IdSet::new());
        }
        if !bytes.starts_with(MAGIC) {
            return Err(DecodeError::Magic);
        }
        let mut r = Bytes(bytes);
        r.take(MAGIC.len())?;
        let version = r.take(4)?;
        if version != [FORMAT_VERSION, 0, 0, 0] {
            return Err(DecodeError::Version(version[0]));
        }
        let len = r.u64()?;
        if len > max_ids {
            return Err(DecodeError::TooMany(len));
        }
        let segments = r.u32()? as usize;
        if segments > r.0.len() / (SEGMENT_KIND_BYTES + DENSE_HEADER_BYTES) {
            return Err(DecodeError::Truncated);
        }
        let mut out = Builder::with_blocks(segments);
        // The last key read, and how many ids the segments hold so far (never above `len`).
        let mut previous: Option<u64> = None;
        let mut seen: u64 = 0;
        for _ in 0..segments {
            match r.take(1)?[0] {
                KIND_PACKED => {
                    let block = read_block(&mut r)?;
                    if previous.is_some_and(|p| block.first <= p) {
                        return Err(DecodeError::Order);
                    }
                    seen += u64::from(block.len);
                    if seen > len {
                        return Err(DecodeError::Count);
                    }
                    previous = Some(block.last);
                    out.push_block(block);
                }
                KIND_DENSE => {
                    let high = u64::from(r.u32()?);
                    let size = r.u32()? as usize;
                    let bitmap = roaring::RoaringBitmap::deserialize_from(r.take(size)?)
                        .map_err(|_| DecodeError::Roaring)?;
                    let (Some(min), Some(max)) = (bitmap.min(), bitmap.max()) else {
                        return Err(DecodeError::Block);
                    };
                    if previous.is_some_and(|p| (high << 32 | u64::from(min)) <= p) {
                        return Err(DecodeError::Order);
                    }
                    seen += bitmap.len();
                    if seen > len {
                        return Err(DecodeError::Count);
                    }
                    previous = Some(high << 32 | u64::from(max));
                    for low in &bitmap {
                        out.push(high << 32 | u64::from(low));
                    }
                }
                kind => return Err(DecodeError::Kind(kind)),
            }
        }
        if !r.0.is_empty() {
            return Err(DecodeError::Trailing(r.0.len()));
        }
        let set = out.into_set();
        if set.len != len {
            return Err(DecodeError::Count);
        }
        Ok(set)
    }
}

/// Writes `segments`, which hold `len` keys, in the compact format
/// ([`IdSet::serialize_into`]).
fn write_segments(segments: &[Segment<'_>], len: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[FORMAT_VERSION, 0, 0, 0]);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&(segments.len() as u32).to_le_bytes());
    for segment in segments {
        match segment {
            Segment::Packed(b) => {
                out.push(KIND_PACKED);
                out.extend_from_slice(&b.first.to_le_bytes());
                out.extend_from_slice(&b.len.to_le_bytes());
                out.push(b.width);
                for w in b.gaps.iter() {
                    out.extend_from_slice(&w.to_le_bytes());
                }
            }
            Segment::Dense(high, bitmap) => {
                out.push(KIND_DENSE);
                out.extend_from_slice(&high.to_le_bytes());
                out.extend_from_slice(&(bitmap.serialized_size() as u32).to_le_bytes());
                bitmap
                    .serialize_into(&mut *out)
                    .expect("writing to a Vec cannot fail");
            }
        }
    }
}

/// One block of the compact format (after its kind byte), checked.
fn read_block(r: &mut Bytes<'_>) -> Result<Block, DecodeError> {
    let first = r.u64()?;
    let count = r.u32()?;
    let width = r.take(1)?[0];
    if count == 0 || count as usize > BLOCK_KEYS || width > 64 {
        return Err(DecodeError::Block);
    }
    let packed = r.take(words_for(count as usize - 1, width) * 8)?;
    let gaps: Box<[u64]> = packed
        .chunks_exact(8)
        .map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")))
        .collect();
    // The last key, checked for overflow (a crafted gap could wrap around). Gaps of width 0
    // are all 0: the keys are consecutive, and 13 bytes may claim 4096 of them, so they are
    // not walked one by one.
    let last = if width == 0 {
        first.checked_add(u64::from(count) - 1)
    } else {
        (0..count as usize - 1).try_fold(first, |last, i| {
            last.checked_add(unpack(&gaps, i, width))
                .and_then(|k| k.checked_add(1))
        })
    }
    .ok_or(DecodeError::Order)?;
    Ok(Block {
        first,
        last,
        len: count,
        width,
        gaps,
    })
}

/// What the compact format writes for a stretch of the set.
enum Segment<'a> {
    Packed(&'a Block),
    /// The high 32 bits of the keys, and their low halves.
    Dense(u32, roaring::RoaringBitmap),
}

impl Segment<'_> {
    /// Bytes it takes serialized, its kind byte included.
    fn size(&self) -> usize {
        SEGMENT_KIND_BYTES
            + match self {
                Segment::Packed(b) => BLOCK_HEADER_BYTES + b.gaps.len() * 8,
                Segment::Dense(_, bitmap) => DENSE_HEADER_BYTES + bitmap.serialized_size(),
            }
    }

    /// Ids it holds.
    fn len(&self) -> u64 {
        match self {
            Segment::Packed(b) => u64::from(b.len),
            Segment::Dense(_, bitmap) => bitmap.len(),
        }
    }
}

/// Most ids [`IdSet::deserialize`] expands a set to: far more than a window of the
/// busiest instance holds (2^32 ids take ~25 GB even packed), few enough that a crafted
/// run of a few bytes cannot ask for unbounded memory. Callers that know a tighter bound
/// (the memory budget) use [`IdSet::deserialize_bounded`].
pub const MAX_DECODED_IDS: u64 = 1 << 32;

/// The most bytes one block takes serialized: [`BLOCK_KEYS`] keys, 64-bit gaps.
pub const MAX_BLOCK_BYTES: usize = BLOCK_HEADER_BYTES + (BLOCK_KEYS - 1) * 8;
/// The most bytes one segment takes serialized: a block at its largest (a dense segment
/// holds at most `DENSE_MAX_BLOCKS` runs, a few kilobytes as roaring run containers).
pub const MAX_SEGMENT_BYTES: usize = SEGMENT_KIND_BYTES + MAX_BLOCK_BYTES;
/// Most runs (width-0 blocks) one dense segment takes: keeps it far below
/// [`MAX_SEGMENT_BYTES`] (each run adds at most one 4-byte run and a share of a container
/// header), so that [`IdSet::serialize_parts`] can always cut between segments.
const DENSE_MAX_BLOCKS: usize = 1024;

/// Magic of the compact format ([`IdSet::serialize_into`]).
const MAGIC: &[u8; 4] = b"VRVI";
const FORMAT_VERSION: u8 = 2;
const KIND_PACKED: u8 = 0;
const KIND_DENSE: u8 = 1;
/// Magic and version, id count, segment count.
const HEADER_BYTES: usize = 4 + 4 + 8 + 4;
const SEGMENT_KIND_BYTES: usize = 1;
/// First key, key count, width.
const BLOCK_HEADER_BYTES: usize = 8 + 4 + 1;
/// High half, bitmap length.
const DENSE_HEADER_BYTES: usize = 4 + 4;
/// Why bytes are not a serialized id set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not an id set (bad magic)")]
    Magic,
    #[error("truncated id set")]
    Truncated,
    #[error("id set format version {0} is not known")]
    Version(u8),
    #[error("id set block with a bad key count or width")]
    Block,
    #[error("id set keys out of order")]
    Order,
    #[error("id set count does not match its blocks")]
    Count,
    #[error("{0} bytes after the id set")]
    Trailing(usize),
    #[error("not a roaring bitmap")]
    Roaring,
    #[error("id set segment of unknown kind {0}")]
    Kind(u8),
    #[error("id set of {0} ids, more than allowed")]
    TooMany(u64),
}

/// Reads fixed fields off the front of a byte slice.
struct Bytes<'a>(&'a [u8]);

impl<'a> Bytes<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.0.len() {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
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
    fn with_blocks(capacity: usize) -> Builder {
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
    fn push_block(&mut self, block: Block) {
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

/// Ids buffered before they are packed: see [`IdBuffer`].
pub const BATCH: usize = 2048;

/// What the request path records into: ids appended to a buffer of [`BATCH`] keys, which,
/// when full, is sorted, cleared of repeats and packed into a run (a small [`IdSet`]). The
/// collector takes the runs at least once a second ([`IdBuffer::take_runs`]) and merges them
/// into the window's set, so the request path never merges and never touches a large set:
/// an id costs an append, and a sort and a pack of its batch, a few nanoseconds each
/// (`benches/ids.rs`). Repeats across runs cost memory until the next merge: at most what
/// the clients send in that second.
#[derive(Debug, Default)]
pub struct IdBuffer {
    /// Keys ([`to_key`]) not packed yet; at most [`BATCH`].
    pending: Vec<u64>,
    runs: Vec<IdSet>,
    /// Heap bytes of `runs`' sets.
    run_bytes: usize,
}

impl IdBuffer {
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

    /// Packs the buffered keys into a run.
    pub fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        self.pending.sort_unstable();
        self.pending.dedup();
        let run = IdSet::from_sorted_keys(&self.pending);
        self.pending.clear();
        self.run_bytes += run.heap_bytes();
        self.runs.push(run);
    }

    /// Moves every run (the buffer packed first) to `into`. The buffer and the run list
    /// keep their capacity, so the request path does not allocate them again.
    pub fn take_runs(&mut self, into: &mut Vec<IdSet>) {
        self.flush();
        into.append(&mut self.runs);
        self.run_bytes = 0;
    }

    /// The union of everything recorded, taking the buffer apart (tests, examples).
    pub fn into_set(mut self) -> IdSet {
        let mut runs = Vec::new();
        self.take_runs(&mut runs);
        IdSet::union_all(runs)
    }

    /// Heap bytes held: the buffer and the runs.
    pub fn heap_bytes(&self) -> usize {
        self.pending.capacity() * 8 + self.run_bytes + self.runs.capacity() * 48
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty() && self.runs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic xorshift stream.
    fn stream(seed: u64) -> impl Iterator<Item = u64> {
        let mut x = seed | 1;
        std::iter::from_fn(move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            Some(x)
        })
    }

    fn sorted(ids: &[i64]) -> Vec<i64> {
        let mut v = ids.to_vec();
        v.sort_unstable();
        v.dedup();
        v
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
    }

    #[test]
    fn packing_round_trips_every_width() {
        for width in 0..=64u8 {
            let max = if width == 64 {
                u64::MAX
            } else {
                (1u64 << width) - 1
            };
            let values: Vec<u64> = stream(width as u64 + 7)
                .take(200)
                .map(|v| v & max)
                .chain([0, max])
                .collect();
            let words = pack(values.iter().copied(), values.len(), width);
            assert_eq!(words.len(), words_for(values.len(), width));
            for (i, &v) in values.iter().enumerate() {
                assert_eq!(unpack(&words, i, width), v, "width {width} index {i}");
            }
        }
    }

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

    #[test]
    fn the_buffer_packs_runs_and_hands_them_out_keeping_its_capacity() {
        let mut buf = IdBuffer::new();
        let ids: Vec<i64> = stream(9)
            .take(3 * BATCH + 17)
            .enumerate()
            .map(|(i, k)| match i % 4 {
                0 => (k % (1 << 32)) as i64,
                1 => -((k % 1000) as i64),
                2 => k as i64,
                _ => (i % 100) as i64,
            })
            .collect();
        for &id in &ids {
            buf.insert(id);
        }
        assert!(!buf.is_empty() && buf.heap_bytes() > 0);
        let mut runs = Vec::new();
        buf.take_runs(&mut runs);
        assert_eq!(runs.len(), 4);
        assert!(buf.is_empty());
        assert!(
            buf.pending.capacity() >= BATCH,
            "no new buffer on the next insert"
        );
        assert_eq!(
            IdSet::union_all(runs).iter().collect::<Vec<_>>(),
            sorted(&ids)
        );
        buf.insert(7);
        assert_eq!(buf.into_set().iter().collect::<Vec<_>>(), [7]);
    }

    #[test]
    fn serialization_round_trips() {
        let sets = [
            IdSet::new(),
            IdSet::from_ids([i64::MIN, -5, 0, 7, u32::MAX as i64, 1 << 40, i64::MAX]),
            IdSet::from_ids(stream(77).take(20_000).map(|k| k as i64)),
            IdSet::from_ids(0..50_000),
        ];
        for set in sets {
            let mut bytes = Vec::new();
            set.serialize_into(&mut bytes);
            assert_eq!(bytes.len(), set.serialized_size());
            assert_eq!(IdSet::deserialize(&bytes).unwrap(), set);
        }
        assert_eq!(IdSet::deserialize(&[]).unwrap(), IdSet::new());
    }

    #[test]
    fn parts_are_bounded_and_add_up_to_the_set() {
        let set = IdSet::from_ids(
            stream(5)
                .take(30_000)
                .map(|k| k as i64)
                .chain(0..20_000)
                .chain([i64::MIN, i64::MAX]),
        );
        for max in [HEADER_BYTES + MAX_SEGMENT_BYTES, 50_000, 1 << 20] {
            let parts = set.serialize_parts(max);
            assert!(parts.iter().all(|p| p.len() <= max), "max {max}");
            let sets: Vec<IdSet> = parts
                .iter()
                .map(|p| IdSet::deserialize(p).unwrap())
                .collect();
            assert_eq!(IdSet::union_all(sets), set, "max {max}");
        }
        assert_eq!(
            set.serialize_parts(1 << 20).len(),
            1,
            "small enough for one"
        );
        assert!(IdSet::new().serialize_parts(1 << 20).is_empty());
    }

    #[test]
    fn a_roaring_treemap_is_not_an_id_set() {
        // Roaring's portable treemap format, whatever it holds, is refused unread.
        let mut tree = roaring::RoaringTreemap::new();
        tree.insert_range(0..2u64 << 32);
        tree.optimize();
        let mut bytes = Vec::new();
        tree.serialize_into(&mut bytes).unwrap();
        assert_eq!(IdSet::deserialize(&bytes), Err(DecodeError::Magic));
    }

    #[test]
    fn random_64_bit_ids_serialize_well_under_ten_bytes_each() {
        let set = IdSet::from_ids(stream(1234).take(100_000).map(|k| k as i64));
        let per_id = set.serialized_size() as f64 / set.len() as f64;
        assert!(per_id < 8.0, "{per_id} bytes per id");
    }

    #[test]
    fn malformed_bytes_are_refused_without_panicking() {
        let mut good = Vec::new();
        IdSet::from_ids([1, 5, 1 << 50]).serialize_into(&mut good);
        for cut in 0..good.len() {
            assert!(
                IdSet::deserialize(&good[..cut]).is_err() || cut == 0,
                "cut {cut}"
            );
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(IdSet::deserialize(&trailing), Err(DecodeError::Trailing(1)));
        let mut version = good.clone();
        version[4] = 9;
        assert_eq!(IdSet::deserialize(&version), Err(DecodeError::Version(9)));
        let mut count = good.clone();
        count[8] = 4;
        assert_eq!(IdSet::deserialize(&count), Err(DecodeError::Count));
        // A block that claims more blocks than the bytes can hold allocates nothing.
        let mut blocks = good.clone();
        blocks[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(IdSet::deserialize(&blocks), Err(DecodeError::Truncated));
        // A gap that would wrap past u64::MAX.
        let mut wrap = Vec::new();
        wrap.extend_from_slice(MAGIC);
        wrap.extend_from_slice(&[FORMAT_VERSION, 0, 0, 0]);
        wrap.extend_from_slice(&2u64.to_le_bytes());
        wrap.extend_from_slice(&1u32.to_le_bytes());
        wrap.push(KIND_PACKED);
        wrap.extend_from_slice(&(u64::MAX - 1).to_le_bytes());
        wrap.extend_from_slice(&2u32.to_le_bytes());
        wrap.push(64);
        wrap.extend_from_slice(&5u64.to_le_bytes());
        assert_eq!(IdSet::deserialize(&wrap), Err(DecodeError::Order));
        // Blocks out of order.
        let a = IdSet::from_ids([10]);
        let b = IdSet::from_ids([5]);
        let mut two = IdSet::new();
        two.push_block(a.blocks[0].clone());
        two.blocks.push(b.blocks[0].clone());
        two.len += 1;
        let mut bytes = Vec::new();
        two.serialize_into(&mut bytes);
        assert_eq!(IdSet::deserialize(&bytes), Err(DecodeError::Order));
        assert_eq!(IdSet::deserialize(b"garbage!"), Err(DecodeError::Magic));
        let mut kind = good.clone();
        kind[20] = 7;
        assert_eq!(IdSet::deserialize(&kind), Err(DecodeError::Kind(7)));
    }

    #[test]
    fn dense_runs_ship_as_roaring_bitmaps_and_everything_else_as_blocks() {
        // A million consecutive ids, a run elsewhere, and scattered ids around them.
        let ids: Vec<i64> = (0..1_000_000)
            .chain(5_000_000_000..5_000_010_000)
            .chain(stream(8).take(1000).map(|k| k as i64))
            .collect();
        let set = IdSet::from_ids(ids.iter().copied());
        let kinds: Vec<u8> = set
            .segments()
            .map(|s| match s {
                Segment::Packed(_) => KIND_PACKED,
                Segment::Dense(..) => KIND_DENSE,
            })
            .collect();
        assert_eq!(kinds.iter().filter(|&&k| k == KIND_DENSE).count(), 2);
        assert!(kinds.contains(&KIND_PACKED));
        let mut bytes = Vec::new();
        set.serialize_into(&mut bytes);
        assert_eq!(bytes.len(), set.serialized_size());
        assert_eq!(IdSet::deserialize(&bytes).unwrap(), set);
        // The million consecutive ids take a few hundred bytes, not 245 block headers.
        let run = IdSet::from_ids(0..1_000_000);
        assert!(run.serialized_size() < 400, "{}", run.serialized_size());
    }

    #[test]
    fn a_set_larger_than_allowed_is_refused_before_it_is_expanded() {
        let run = IdSet::from_ids(0..1_000_000);
        let mut bytes = Vec::new();
        run.serialize_into(&mut bytes);
        assert_eq!(
            IdSet::deserialize_bounded(&bytes, 999_999),
            Err(DecodeError::TooMany(1_000_000))
        );
        assert_eq!(IdSet::deserialize_bounded(&bytes, 1_000_000).unwrap(), run);
        // A declared count below what the segments hold stops the expansion too.
        let mut lying = bytes.clone();
        lying[8..16].copy_from_slice(&10u64.to_le_bytes());
        assert_eq!(IdSet::deserialize(&lying), Err(DecodeError::Count));
    }

    #[test]
    fn blocks_of_consecutive_keys_decode_without_walking_them() {
        let set = IdSet::from_ids(-5_000..1_000_000);
        let mut bytes = Vec::new();
        set.serialize_into(&mut bytes);
        assert!(set.blocks.iter().all(|b| b.width == 0));
        assert_eq!(IdSet::deserialize(&bytes).unwrap(), set);
        // A width-0 block whose last key would pass u64::MAX.
        let mut wrap = Vec::new();
        wrap.extend_from_slice(MAGIC);
        wrap.extend_from_slice(&[FORMAT_VERSION, 0, 0, 0]);
        wrap.extend_from_slice(&4096u64.to_le_bytes());
        wrap.extend_from_slice(&1u32.to_le_bytes());
        wrap.push(KIND_PACKED);
        wrap.extend_from_slice(&(u64::MAX - 10).to_le_bytes());
        wrap.extend_from_slice(&4096u32.to_le_bytes());
        wrap.push(0);
        assert_eq!(IdSet::deserialize(&wrap), Err(DecodeError::Order));
    }
}
