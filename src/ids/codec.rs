//! The compact wire format of an id set (Redis shipments, journal records, state files):
//! its blocks as they are, and runs of consecutive ids as roaring bitmaps; and its reader,
//! which treats the bytes as untrusted.

use super::bytes::{Reader, Truncated};
use super::pack::{unpack, words_for, Block, BLOCK_KEYS};
use super::set::{Builder, IdSet};

impl IdSet {
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
    /// | | kind 0, a block: first key ([`to_key`](super::to_key), 8 bytes), keys in the block (4 bytes, 1 to [`BLOCK_KEYS`]), gap width in bits (1 byte, 0 to 64), `ceil((keys - 1) * width / 64)` words of packed gaps, low bits first (8 bytes each) |
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
    /// or of gap-less blocks can stand for billions of ids). So is a set that, while it is
    /// built, takes more heap than `max_ids` ids could at their densest
    /// ([`DENSEST_IDS_PER_BYTE`]): runs of consecutive ids with a gap between each keep
    /// under the id bound while taking far more memory, and building them costs time in
    /// proportion; this stops that work at the memory the bound stands for.
    pub fn deserialize_bounded(bytes: &[u8], max_ids: u64) -> Result<IdSet, DecodeError> {
        let max_heap = (max_ids / DENSEST_IDS_PER_BYTE).saturating_add(HEAP_SLACK_BYTES);
        let mut sink = SetSink {
            out: Builder::default(),
            max_heap,
        };
        decode(bytes, max_ids, &mut sink)?;
        Ok(sink.out.into_set())
    }

    /// The number of ids a set in the compact format says it holds, read from its header
    /// alone (nothing else is checked: the rest may still be refused by
    /// [`IdSet::deserialize_bounded`]); 0 for empty bytes. What a reader can tell before it
    /// expands anything.
    pub fn declared_len(bytes: &[u8]) -> Result<u64, DecodeError> {
        if bytes.is_empty() {
            return Ok(0);
        }
        let mut r = header(bytes)?;
        Ok(r.u64()?)
    }

    /// Appends the keys of a set in the compact format to `out`, ascending, checked as
    /// [`IdSet::deserialize_bounded`] checks them, and returns how many: for a reader that
    /// only counts keys and wants them in a flat buffer, without building a set. A set of
    /// more than `max_ids` ids is refused before anything is appended; on any error `out`
    /// is left as it was.
    pub fn deserialize_keys_into(
        bytes: &[u8],
        max_ids: u64,
        out: &mut Vec<u64>,
    ) -> Result<u64, DecodeError> {
        let before = out.len();
        let mut sink = KeySink { out };
        let decoded = decode(bytes, max_ids, &mut sink);
        if decoded.is_err() {
            out.truncate(before);
        }
        decoded
    }
}

/// Where [`decode`] puts what it reads.
trait Sink {
    /// The capacity for the segments to come, as read from the header.
    fn reserve(&mut self, segments: usize, len: u64);
    /// Reads one block (after its kind byte) and, if its keys are all above `previous`
    /// (the last key before it), takes it; returns its last key and number of keys.
    fn block(
        &mut self,
        r: &mut Reader<'_>,
        previous: Option<u64>,
    ) -> Result<(u64, u32), DecodeError>;
    /// Keys `first..=last`, above every key before.
    fn run(&mut self, first: u64, last: u64) -> Result<(), DecodeError>;
}

/// Builds the set ([`IdSet::deserialize_bounded`]).
struct SetSink {
    out: Builder,
    /// Most heap the set may take while it is built.
    max_heap: u64,
}

impl Sink for SetSink {
    fn reserve(&mut self, segments: usize, _: u64) {
        self.out = Builder::with_blocks(segments);
    }

    fn block(
        &mut self,
        r: &mut Reader<'_>,
        previous: Option<u64>,
    ) -> Result<(u64, u32), DecodeError> {
        let block = read_block(r)?;
        if previous.is_some_and(|p| block.first <= p) {
            return Err(DecodeError::Order);
        }
        let span = (block.last, block.len);
        self.out.push_block(block);
        Ok(span)
    }

    fn run(&mut self, first: u64, last: u64) -> Result<(), DecodeError> {
        self.out.push_run(first, last);
        if self.out.heap_bytes() as u64 > self.max_heap {
            return Err(DecodeError::TooLarge(self.max_heap));
        }
        Ok(())
    }
}

/// Appends the keys to a vector ([`IdSet::deserialize_keys_into`]).
struct KeySink<'a> {
    out: &'a mut Vec<u64>,
}

impl Sink for KeySink<'_> {
    fn reserve(&mut self, _: usize, len: u64) {
        // `len` is at most the caller's bound, checked before this is called.
        self.out.reserve(len as usize);
    }

    /// The block's keys appended as its gaps are unpacked, in one pass over its words,
    /// without building it.
    fn block(
        &mut self,
        r: &mut Reader<'_>,
        previous: Option<u64>,
    ) -> Result<(u64, u32), DecodeError> {
        let (first, count, width) = read_block_header(r)?;
        if previous.is_some_and(|p| first <= p) {
            return Err(DecodeError::Order);
        }
        let packed = r.take(words_for(count as usize - 1, width) * 8)?;
        if width == 0 {
            // Consecutive keys: `count` is at most `BLOCK_KEYS`.
            let last = first
                .checked_add(u64::from(count) - 1)
                .ok_or(DecodeError::Order)?;
            self.out.extend(first..=last);
            return Ok((last, count));
        }
        let w = u32::from(width);
        let mask = u64::MAX >> (64 - w);
        let word = |i: usize| -> u64 {
            packed
                .get(i * 8..i * 8 + 8)
                .map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
        };
        self.out.push(first);
        let (mut key, mut at, mut bit) = (first, 0usize, 0u32);
        let mut current = word(0);
        for _ in 1..count {
            let mut gap = current >> bit;
            if bit + w > 64 {
                gap |= word(at + 1) << (64 - bit);
            }
            bit += w;
            if bit >= 64 {
                bit -= 64;
                at += 1;
                current = word(at);
            }
            key = key
                .checked_add(gap & mask)
                .and_then(|k| k.checked_add(1))
                .ok_or(DecodeError::Order)?;
            self.out.push(key);
        }
        Ok((key, count))
    }

    fn run(&mut self, first: u64, last: u64) -> Result<(), DecodeError> {
        // At most the declared count: checked before the segment's runs are walked.
        self.out.extend(first..=last);
        Ok(())
    }
}

/// Checks the magic and the version; the reader is left at the id count.
fn header(bytes: &[u8]) -> Result<Reader<'_>, DecodeError> {
    if !bytes.starts_with(MAGIC) {
        return Err(DecodeError::Magic);
    }
    let mut r = Reader::new(bytes);
    r.take(MAGIC.len())?;
    let version = r.take(4)?;
    if version != [FORMAT_VERSION, 0, 0, 0] {
        return Err(DecodeError::Version(version[0]));
    }
    Ok(r)
}

/// Reads a set in the compact format into `sink` (see [`IdSet::deserialize_bounded`] for
/// the checks) and returns its number of ids.
fn decode(bytes: &[u8], max_ids: u64, sink: &mut impl Sink) -> Result<u64, DecodeError> {
    if bytes.is_empty() {
        return Ok(0);
    }
    let mut r = header(bytes)?;
    let len = r.u64()?;
    if len > max_ids {
        return Err(DecodeError::TooMany(len));
    }
    let segments = r.u32()? as usize;
    if segments > r.len() / (SEGMENT_KIND_BYTES + DENSE_HEADER_BYTES) {
        return Err(DecodeError::Truncated);
    }
    sink.reserve(segments, len);
    // The last key read, and how many ids the segments hold so far (never above `len`).
    let mut previous: Option<u64> = None;
    let mut seen: u64 = 0;
    for _ in 0..segments {
        match r.u8()? {
            KIND_PACKED => {
                let (last, count) = sink.block(&mut r, previous)?;
                seen += u64::from(count);
                if seen > len {
                    return Err(DecodeError::Count);
                }
                previous = Some(last);
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
                let mut runs = bitmap.iter();
                while let Some(run) = runs.next_range() {
                    sink.run(
                        high << 32 | u64::from(*run.start()),
                        high << 32 | u64::from(*run.end()),
                    )?;
                }
            }
            kind => return Err(DecodeError::Kind(kind)),
        }
    }
    if !r.is_empty() {
        return Err(DecodeError::Trailing(r.len()));
    }
    if seen != len {
        return Err(DecodeError::Count);
    }
    Ok(len)
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

/// One block's header (after its kind byte), checked: its first key, number of keys and
/// gap width.
fn read_block_header(r: &mut Reader<'_>) -> Result<(u64, u32, u8), DecodeError> {
    let first = r.u64()?;
    let count = r.u32()?;
    let width = r.u8()?;
    if count == 0 || count as usize > BLOCK_KEYS || width > 64 {
        return Err(DecodeError::Block);
    }
    Ok((first, count, width))
}

/// One block of the compact format (after its kind byte), checked.
fn read_block(r: &mut Reader<'_>) -> Result<Block, DecodeError> {
    let (first, count, width) = read_block_header(r)?;
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

/// The densest the compact id format gets in memory, ids per heap byte: a block of 4096
/// consecutive ids takes its 32-byte header and no gap words. A set that would decode to
/// more ids than a memory budget's bytes times this could never fit in the budget; and a
/// set bounded to `n` ids is bounded to `n /` this many heap bytes.
pub const DENSEST_IDS_PER_BYTE: u64 = 128;

/// Heap bytes a decoded set may take beyond `max_ids / DENSEST_IDS_PER_BYTE`: room for the
/// block table reserved up front and the block being built.
const HEAP_SLACK_BYTES: u64 = 1 << 20;

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
    #[error("id set taking more than {0} bytes of memory, more than its ids allow")]
    TooLarge(u64),
}

impl From<Truncated> for DecodeError {
    fn from(_: Truncated) -> DecodeError {
        DecodeError::Truncated
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::testing::stream;

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

    /// One dense segment of the keys `high << 32 | low` for each `low` in `ranges`, as a
    /// whole set in the compact format.
    fn dense(high: u32, ranges: &[std::ops::RangeInclusive<u32>]) -> Vec<u8> {
        let mut bitmap = roaring::RoaringBitmap::new();
        for r in ranges {
            bitmap.insert_range(r.clone());
        }
        bitmap.optimize();
        let mut bytes = Vec::new();
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&[FORMAT_VERSION, 0, 0, 0]);
        bytes.extend_from_slice(&bitmap.len().to_le_bytes());
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.push(KIND_DENSE);
        bytes.extend_from_slice(&high.to_le_bytes());
        bytes.extend_from_slice(&(bitmap.serialized_size() as u32).to_le_bytes());
        bitmap.serialize_into(&mut bytes).unwrap();
        bytes
    }

    #[test]
    fn dense_runs_of_every_length_decode_to_their_ids() {
        // Runs shorter than, as long as and longer than a block, next to each other.
        let ranges = [
            0..=0,
            2..=4096,
            5000..=9095,
            9097..=13193,
            20_000..=40_000,
            u32::MAX - 5..=u32::MAX,
        ];
        let set = IdSet::deserialize(&dense(7, &ranges)).unwrap();
        let ids = ranges
            .iter()
            .flat_map(|r| r.clone())
            .map(|low| crate::ids::from_key(7 << 32 | u64::from(low)));
        assert_eq!(set, IdSet::from_ids(ids));
        assert!(set.blocks.iter().all(|b| b.len as usize <= BLOCK_KEYS));
    }

    #[test]
    fn runs_that_end_at_the_last_key_decode_to_their_ids() {
        // Keys up to u64::MAX (the id i64::MAX): counting on past the last key would wrap.
        for ranges in [
            vec![u32::MAX - 5..=u32::MAX],
            vec![0..=0, u32::MAX..=u32::MAX],
            vec![u32::MAX - 10_000..=u32::MAX],
        ] {
            let bytes = dense(u32::MAX, &ranges);
            let set = IdSet::deserialize(&bytes).unwrap();
            let keys: Vec<u64> = ranges
                .iter()
                .flat_map(|r| r.clone())
                .map(|low| u64::from(u32::MAX) << 32 | u64::from(low))
                .collect();
            assert_eq!(set.keys().collect::<Vec<_>>(), keys);
            let mut flat = Vec::new();
            assert_eq!(
                IdSet::deserialize_keys_into(&bytes, u64::MAX, &mut flat),
                Ok(keys.len() as u64)
            );
            assert_eq!(flat, keys);
        }
        assert!(IdSet::from_ids([i64::MAX - 1, i64::MAX]).contains(i64::MAX));
    }

    #[test]
    fn declared_len_reads_the_header_alone() {
        let mut bytes = Vec::new();
        IdSet::from_ids(0..1000).serialize_into(&mut bytes);
        assert_eq!(IdSet::declared_len(&bytes), Ok(1000));
        assert_eq!(
            IdSet::declared_len(&bytes[..16]),
            Ok(1000),
            "the rest is not read"
        );
        assert_eq!(IdSet::declared_len(&[]), Ok(0));
        assert_eq!(IdSet::declared_len(b"garbage!"), Err(DecodeError::Magic));
        assert_eq!(
            IdSet::declared_len(&bytes[..10]),
            Err(DecodeError::Truncated)
        );
        let mut version = bytes.clone();
        version[4] = 3;
        assert_eq!(IdSet::declared_len(&version), Err(DecodeError::Version(3)));
    }

    #[test]
    fn keys_decode_into_a_buffer_as_the_set_holds_them_or_not_at_all() {
        let sets = [
            IdSet::from_ids([i64::MIN, -5, 0, 7, u32::MAX as i64, 1 << 40, i64::MAX]),
            IdSet::from_ids(stream(77).take(20_000).map(|k| k as i64)),
            IdSet::from_ids((0..50_000).chain(stream(3).take(500).map(|k| k as i64))),
            IdSet::from_ids(stream(9).take(5000).map(|k| (k >> 40) as i64)),
        ];
        for set in sets {
            let mut bytes = Vec::new();
            set.serialize_into(&mut bytes);
            let mut out = vec![42];
            assert_eq!(
                IdSet::deserialize_keys_into(&bytes, set.len(), &mut out),
                Ok(set.len())
            );
            assert_eq!(out[0], 42);
            assert!(out[1..].iter().copied().eq(set.keys()));
            // Over the bound, or cut anywhere: nothing is appended.
            let mut out = vec![42];
            assert_eq!(
                IdSet::deserialize_keys_into(&bytes, set.len() - 1, &mut out),
                Err(DecodeError::TooMany(set.len()))
            );
            for cut in [bytes.len() - 1, bytes.len() / 2, 30] {
                assert!(IdSet::deserialize_keys_into(&bytes[..cut], u64::MAX, &mut out).is_err());
                assert_eq!(out, [42]);
            }
        }
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
        let mut out = Vec::new();
        assert_eq!(
            IdSet::deserialize_keys_into(&wrap, 10, &mut out),
            Err(DecodeError::Order)
        );
        assert!(out.is_empty());
    }

    #[test]
    fn a_long_run_decodes_to_whole_blocks_without_walking_its_ids() {
        // 2^28 consecutive ids in a few bytes: made block by block (walking them one by one
        // took minutes in a debug build).
        let bytes = dense(u32::MAX, &[0..=(1 << 28) - 1]);
        assert!(bytes.len() < 100_000, "{} bytes", bytes.len());
        let set = IdSet::deserialize(&bytes).unwrap();
        assert_eq!(set.len(), 1 << 28);
        assert_eq!(set.blocks.len(), (1 << 28) / BLOCK_KEYS);
        assert!(set.blocks.iter().all(|b| b.width == 0 && b.gaps.is_empty()));
        assert_eq!(set.keys().next(), Some(u64::from(u32::MAX) << 32));
        assert_eq!(
            set.blocks.last().unwrap().last,
            (u64::from(u32::MAX) << 32) + (1 << 28) - 1
        );
    }

    #[test]
    fn runs_decode_to_the_blocks_that_id_by_id_building_makes() {
        // Runs of every short length with gaps of every width between them: filling the
        // open block with zero gaps in bulk must cut blocks where pushing each id does.
        let mut ranges = Vec::new();
        let mut low = 3u32;
        for n in 0..600u32 {
            let len = (n * 37) % 700 + 1;
            ranges.push(low..=low + len - 1);
            low += len + 1 + (n * n) % 5000;
        }
        let set = IdSet::deserialize(&dense(1, &ranges)).unwrap();
        let keys: Vec<u64> = ranges
            .iter()
            .flat_map(|r| r.clone())
            .map(|low| 1 << 32 | u64::from(low))
            .collect();
        let mut by_key = Builder::default();
        for &k in &keys {
            by_key.push(k);
        }
        let by_key = by_key.into_set();
        let shape = |s: &IdSet| -> Vec<(u64, u64, u32, u8)> {
            s.blocks
                .iter()
                .map(|b| (b.first, b.last, b.len, b.width))
                .collect()
        };
        assert_eq!(shape(&set), shape(&by_key));
        assert_eq!(set, by_key);
    }

    #[test]
    fn runs_that_keep_under_the_id_bound_but_not_its_memory_are_refused_while_built() {
        // Runs of 4095 ids one apart: under the bound of ids a 1 MiB budget could hold at
        // their densest, but at about 7 ids a byte they would take over 10 MiB. Decoding stops
        // at the memory the bound stands for instead of building them all.
        let max_ids = (1u64 << 20) * DENSEST_IDS_PER_BYTE;
        let ranges: Vec<_> = (0..20_000u32).map(|n| n * 4096..=n * 4096 + 4094).collect();
        let bytes = dense(2, &ranges);
        let len = 20_000 * 4095;
        assert!(len < max_ids);
        assert!(bytes.len() < 1 << 20, "{} bytes", bytes.len());
        let max_heap = max_ids / DENSEST_IDS_PER_BYTE + HEAP_SLACK_BYTES;
        assert_eq!(
            IdSet::deserialize_bounded(&bytes, max_ids),
            Err(DecodeError::TooLarge(max_heap))
        );
        // The same runs fit a bound twenty times as large.
        assert_eq!(
            IdSet::deserialize_bounded(&bytes, max_ids * 20).map(|s| s.len()),
            Ok(len)
        );
    }
}
