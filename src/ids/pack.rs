//! Bit packing: a block of ascending keys stored as its first key and the gaps between
//! consecutive keys, each in the fewest bits that hold the block's largest gap, and how
//! sorted keys are cut into blocks.

/// Most bits of packed gaps in one block (1 KiB). Large enough that a block's 40-byte header
/// is spread over ~150 random 64-bit ids (0.3 bytes each), small enough that a merge which
/// touches one id of a block re-packs little.
pub const BLOCK_BITS: usize = 8192;

/// Most keys in one block: reached only by dense ids, whose gaps take 0-2 bits. Bounds the
/// work of decoding a block to find one key ([`IdSet::contains`](super::IdSet::contains)).
pub const BLOCK_KEYS: usize = 4096;

/// Bits needed to hold `gap`.
#[inline]
pub(super) fn bits_of(gap: u64) -> u8 {
    (64 - gap.leading_zeros()) as u8
}

/// 64-bit words that hold `count` values of `width` bits.
#[inline]
pub(super) fn words_for(count: usize, width: u8) -> usize {
    (count * width as usize).div_ceil(64)
}

/// The `index`-th `width`-bit value packed in `words`.
#[inline]
pub(super) fn unpack(words: &[u64], index: usize, width: u8) -> u64 {
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
pub(super) fn pack(values: impl Iterator<Item = u64>, count: usize, width: u8) -> Box<[u64]> {
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
pub(super) struct Block {
    pub(super) first: u64,
    pub(super) last: u64,
    /// Keys in the block, at least 1 and at most [`BLOCK_KEYS`].
    pub(super) len: u32,
    pub(super) width: u8,
    /// `len - 1` gaps (`key[i] - key[i - 1] - 1`).
    pub(super) gaps: Box<[u64]>,
}

impl Block {
    /// Packs `keys` (strictly ascending, not empty) with the gap width they need.
    pub(super) fn from_keys(keys: &[u64]) -> Block {
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

    pub(super) fn keys(&self) -> BlockKeys<'_> {
        BlockKeys {
            block: self,
            next: 0,
            key: self.first,
        }
    }

    /// Appends every key of the block to `out`, ascending: a bit cursor over the gaps, the
    /// fastest way through a whole block.
    pub(super) fn decode_into(&self, out: &mut Vec<u64>) {
        let len = self.len as usize;
        out.reserve(len);
        let width = usize::from(self.width);
        if width == 0 {
            out.extend((0..self.len).map(|i| self.first + u64::from(i)));
            return;
        }
        let mask = if width >= 64 {
            u64::MAX
        } else {
            (1 << width) - 1
        };
        let (mut key, mut bit) = (self.first, 0);
        out.push(key);
        for _ in 1..len {
            let (at, off) = (bit / 64, bit % 64);
            let mut gap = self.gaps[at] >> off;
            if off + width > 64 {
                gap |= self.gaps[at + 1] << (64 - off);
            }
            key += (gap & mask) + 1;
            out.push(key);
            bit += width;
        }
    }

    pub(super) fn contains(&self, key: u64) -> bool {
        key >= self.first && key <= self.last && self.keys().any(|k| k == key)
    }
}

/// The keys of one block, ascending.
pub(super) struct BlockKeys<'a> {
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
pub(super) fn block_ends(keys: &[u64]) -> impl Iterator<Item = (usize, usize)> + '_ {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::testing::stream;

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
            // The same values as the gaps of a block (keys from 0), decoded whole.
            if width < 56 {
                let mut keys = vec![7u64];
                for &v in &values {
                    keys.push(keys[keys.len() - 1] + v + 1);
                }
                let block = Block::from_keys(&keys);
                let mut decoded = Vec::new();
                block.decode_into(&mut decoded);
                assert_eq!(decoded, keys, "width {width}");
            }
        }
    }
}
