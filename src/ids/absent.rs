//! Which of a batch of new ids a level lacks, decoding as little of its blocks as it can.

use super::pack::Block;

/// Drops from `keys` (ascending) those `blocks` (ascending, disjoint) hold: a merge-walk
/// that skips the blocks no key falls in (galloping over them) and decodes a block only as
/// far as the keys that fall in it: those in its lower half from its first key up, the
/// others from its last key down (gaps have a fixed width, so they read as well backwards),
/// which halves what is read when one key falls in a block, the usual case in a large level.
pub(super) fn retain_absent(blocks: &[Block], keys: &mut Vec<u64>) {
    if blocks.is_empty() || keys.is_empty() {
        return;
    }
    let (mut kept, mut i, mut at) = (0, 0, 0);
    // A cursor `PREFETCH_AHEAD` keys ahead, which asks for the blocks it finds to be
    // fetched: in a large level every key falls in a block of its own, and waiting for each
    // block's first bytes in turn would cost more than decoding them.
    let mut scout = 0;
    while i < keys.len() {
        if let Some(&ahead) = keys.get(i + PREFETCH_AHEAD) {
            scout = seek(blocks, scout.max(at), ahead);
            if let Some(block) = blocks.get(scout) {
                prefetch(block, ahead);
            }
        }
        let key = keys[i];
        at = seek(blocks, at, key);
        let Some(block) = blocks.get(at) else {
            // Past the last block: the rest are all absent.
            keys.copy_within(i.., kept);
            kept += keys.len() - i;
            break;
        };
        if key < block.first {
            keys[kept] = key;
            kept += 1;
            i += 1;
            continue;
        }
        let mut end = i + 1;
        while end < keys.len() && keys[end] <= block.last {
            end += 1;
        }
        kept = retain_in_block(block, keys, (i, end), kept);
        i = end;
    }
    keys.truncate(kept);
}

/// How many keys ahead [`retain_absent`] asks for blocks to be fetched: enough for a few
/// fetches from memory to overlap.
const PREFETCH_AHEAD: usize = 16;

/// 64-bit words in a cache line.
const WORDS_PER_LINE: usize = 8;

/// Asks for the end of `block` that a scan for `key` starts from to be fetched into the
/// cache; a hint, which changes nothing else.
#[inline]
fn prefetch(block: &Block, key: u64) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let gaps = &block.gaps;
        let middle = block.first + (block.last - block.first) / 2;
        // The first or last quarter of the gaps, where the scan reads on average.
        let lines = gaps.len().div_ceil(4 * WORDS_PER_LINE);
        for line in 0..lines {
            let word = if key <= middle {
                line * WORDS_PER_LINE
            } else {
                gaps.len() - 1 - line * WORDS_PER_LINE
            };
            // SAFETY: a prefetch reads nothing and faults on no address; SSE, which it
            // needs, is part of every x86_64 target.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(&gaps[word]).cast()) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (block, key);
}

/// [`retain_absent`] for `keys[from..end]`, which all fall within `block`: writes those the
/// block lacks, ascending, from `keys[kept]` on (`kept <= from`); returns the new `kept`.
fn retain_in_block(
    block: &Block,
    keys: &mut [u64],
    (from, end): (usize, usize),
    kept: usize,
) -> usize {
    let middle = block.first + (block.last - block.first) / 2;
    let split = from + keys[from..end].partition_point(|&k| k <= middle);
    // The upper part, from the last key down: the absent ones are written from `end` down,
    // never over a key not looked at yet.
    let mut down = Scan::new(block, Direction::Down);
    let mut write = end;
    for j in (split..end).rev() {
        let key = keys[j];
        if !down.reach(key) {
            write -= 1;
            keys[write] = key;
        }
    }
    let mut up = Scan::new(block, Direction::Up);
    let mut kept = kept;
    for j in from..split {
        let key = keys[j];
        if !up.reach(key) {
            keys[kept] = key;
            kept += 1;
        }
    }
    keys.copy_within(write..end, kept);
    kept + (end - write)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// From the block's first key up.
    Up,
    /// From its last key down.
    Down,
}

/// One block decoded from either end, only as far as asked: a cursor over its packed gaps.
struct Scan<'a> {
    gaps: &'a [u64],
    width: usize,
    mask: u64,
    direction: Direction,
    /// Gaps not read yet.
    left: u32,
    /// Up: where the next gap starts, in bits. Down: where the last gap not read yet ends.
    bit: usize,
    /// The key reached.
    key: u64,
}

impl Scan<'_> {
    fn new(block: &Block, direction: Direction) -> Scan<'_> {
        let width = usize::from(block.width);
        let left = block.len.saturating_sub(1);
        let (bit, key) = match direction {
            Direction::Up => (0, block.first),
            Direction::Down => (left as usize * width, block.last),
        };
        Scan {
            gaps: &block.gaps,
            width,
            mask: if width >= 64 {
                u64::MAX
            } else {
                (1 << width) - 1
            },
            direction,
            left,
            bit,
            key,
        }
    }

    /// Moves to the nearest key of the block at or past `target` (up: at or above it; down:
    /// at or below it; the block's end at most); true if that is `target`. Targets come in
    /// the scan's direction.
    #[inline]
    fn reach(&mut self, target: u64) -> bool {
        let up = self.direction == Direction::Up;
        if self.width == 0 {
            // Consecutive keys: no gap to read.
            let distance = if up {
                target.saturating_sub(self.key)
            } else {
                self.key.saturating_sub(target)
            };
            let step = distance.min(u64::from(self.left));
            self.key = if up { self.key + step } else { self.key - step };
            self.left -= step as u32;
            return self.key == target;
        }
        // In locals, so that the loops keep them in registers.
        let (gaps, width, mask) = (self.gaps, self.width, self.mask);
        let (mut key, mut bit, mut left) = (self.key, self.bit, self.left);
        if up {
            while key < target && left > 0 {
                key += gap_at(gaps, bit, width, mask) + 1;
                bit += width;
                left -= 1;
            }
        } else {
            while key > target && left > 0 {
                bit -= width;
                key -= gap_at(gaps, bit, width, mask) + 1;
                left -= 1;
            }
        }
        (self.key, self.bit, self.left) = (key, bit, left);
        key == target
    }
}

/// The `width`-bit gap (`mask` its low bits) packed from bit `bit` of `gaps`.
#[inline]
fn gap_at(gaps: &[u64], bit: usize, width: usize, mask: u64) -> u64 {
    let (at, off) = (bit / 64, bit % 64);
    let mut gap = gaps[at] >> off;
    if off + width > 64 {
        gap |= gaps[at + 1] << (64 - off);
    }
    gap & mask
}

/// The first block from `from` on whose last key is at least `key` (`blocks.len()` if
/// none), galloping: the keys looked up ascend, so the answer is usually near `from`.
fn seek(blocks: &[Block], from: usize, key: u64) -> usize {
    let n = blocks.len();
    if from >= n || blocks[from].last >= key {
        return from;
    }
    // Every block before `lo` ends below `key`; block `hi`, if any, does not.
    let (mut lo, mut hi, mut step) = (from + 1, from + 1, 1);
    while hi < n && blocks[hi].last < key {
        lo = hi + 1;
        hi = lo + step;
        step *= 2;
    }
    let hi = hi.min(n);
    lo + blocks[lo..hi].partition_point(|b| b.last < key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::testing::stream;
    use crate::ids::IdSet;

    #[test]
    fn retain_absent_keeps_exactly_the_keys_the_blocks_lack() {
        // Sparse over the whole range, medium, dense enough for gap-less blocks.
        for (seed, shift) in [(1u64, 0u32), (2, 20), (3, 40), (4, 50)] {
            let mut held: Vec<u64> = stream(seed).take(20_000).map(|k| k >> shift).collect();
            held.sort_unstable();
            held.dedup();
            let set = IdSet::from_sorted_keys(&held);
            let mut probe: Vec<u64> = held
                .iter()
                .step_by(3)
                .copied()
                .chain(stream(seed + 9).take(5000).map(|k| k >> shift))
                .chain([0, u64::MAX >> shift, held[0], held[held.len() - 1]])
                .collect();
            probe.sort_unstable();
            probe.dedup();
            let expected: Vec<u64> = probe
                .iter()
                .copied()
                .filter(|k| held.binary_search(k).is_err())
                .collect();
            retain_absent(&set.blocks, &mut probe);
            assert_eq!(probe, expected, "shift {shift}");
        }
    }

    #[test]
    fn seek_finds_the_first_block_reaching_the_key() {
        let keys: Vec<u64> = (0..20_000).map(|k| k * 1000).collect();
        let set = IdSet::from_sorted_keys(&keys);
        let blocks = &set.blocks;
        for from in [0, 1, 5, blocks.len() / 2] {
            for key in [0, 999, 1000, 5_000_000, 12_345_678, 19_999_000, 20_000_000] {
                let expected = from + blocks[from..].partition_point(|b| b.last < key);
                assert_eq!(seek(blocks, from, key), expected, "from {from} key {key}");
            }
        }
    }
}
