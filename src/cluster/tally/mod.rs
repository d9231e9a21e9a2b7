//! Counting one partition's shipments: a streaming, exact tally of the distinct values in
//! every shipment added, in memory bounded by those distinct values (not by how many
//! shipments repeat them), charged to `--max-memory`.
//!
//! Shipments come one at a time, straight from Redis, and are untrusted. A small scattered
//! one (a per-second delta of random ids: about a thousand values in a few kilobytes) is
//! decoded straight into a flat buffer of values, without building a set; a full buffer is
//! radix-sorted, cleared of repeats and kept as a *run*: 6 bytes a value (`Wide`: written
//! with a copy, read with a load, where a set packs and unpacks each gap bit by bit), or a
//! packed set when its values spread over the whole 64 bits. A dense or large shipment is
//! decoded into a set of its own, a run already (dense values stay compact: a block per 4096
//! consecutive values). Runs are grouped in size tiers: `FAN` runs of one tier are merged
//! into a set of the next, so repeats across runs are dropped as the runs grow, a value is
//! re-packed once per tier it climbs, and a tally of a few buffers' worth merges nothing
//! before its count. The count is one k-way merge of the runs and the sorted buffer that
//! builds nothing, branch-free in which run holds the least value (a binary heap, as
//! [`crate::ids::count_union`] uses over every shipment, mispredicts about once a value on
//! random ones).
//!
//! Before anything is expanded, a shipment's header tells how many values it holds: one that
//! could not fit what the budget has left, even at the densest the set format gets
//! ([`DENSEST_IDS_PER_BYTE`]), or whose bytes alone are more than what is left, is refused
//! unread ([`Skipped::too_large`]): a few bytes of roaring run containers can stand for
//! billions of values. Everything the tally holds (the buffer and its sort's scratch, the
//! runs, a merge's output while it is built) is charged to the budget while it lives.
//!
//! Measured in `benches/tally.rs` (`perf/RESULTS.md`, "Partition tally").

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{bounded, RecvTimeoutError};

use crate::budget::IdMemory;
use crate::cluster::store::{self, Blob};
use crate::ids::{DecodeError, IdSet, DENSEST_IDS_PER_BYTE};

/// Values the flat buffer holds before it is sorted into a run: 2 MiB, and as much again for
/// the sort's scratch (both grown as needed, so a small partition takes little). Large
/// enough that a partition of a window of 10 x 1M random ids (625K values) is two runs and
/// the buffer, whose count then merges three streams: half the buffer was measured 15-35%
/// slower (five streams), a quarter 2.5x slower (eight runs: a merge before the count). The
/// peak heap of that partition's tally is 1.8x its shipments' bytes (`benches/tally.rs`).
#[cfg(not(test))]
pub const BUFFER_VALUES: usize = 1 << 18;
/// Small in unit tests, so that a few thousand values go through every stage.
#[cfg(test)]
pub const BUFFER_VALUES: usize = 1 << 12;

/// A shipment goes into the buffer only if it holds at most this many values (a quarter of
/// the buffer, so that flushing before it wastes little; a larger one is a sorted run
/// already) ...
const BUFFERED_MAX_VALUES: u64 = BUFFER_VALUES as u64 / 4;

/// ... and takes at least this many bytes per value: scattered values, which a set packs
/// little better than the shipment did. Denser ones take less as the set they decode to
/// than as 8-byte values in the buffer.
const BUFFERED_MIN_BYTES_PER_VALUE: u64 = 2;

/// Runs of one size tier merged into one when there are this many: a tier's runs are up to
/// this many times larger than the tier's below. So at most `FAN - 1` runs per tier, and
/// the count at the end merges a few runs per tier; and a value is re-packed once per tier
/// it climbs (none for a partition of under `FAN` buffers). Each run is a set of distinct
/// values, so, repeats or not, the runs hold at most about `2 * FAN` times the distinct
/// values (`FAN - 1` runs of the top tier, each at most all of them, and the tiers below,
/// together at most `FAN` times the top tier's floor).
const FAN: usize = 8;

/// Values a merge stream decodes from a run at a time.
const CHUNK: usize = 256;

/// How often `between` is offered a turn while [`finish_pausing`] counts.
const COUNT_PAUSE: Duration = Duration::from_millis(100);

/// Shipments that were not counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Skipped {
    /// Longer than a shipment can be ([`store::MAX_SHIPMENT_BYTES`]), not read.
    pub oversized: u64,
    /// Not an id set.
    pub unreadable: u64,
    /// An id set whose values could not fit what the memory budget had left, refused before
    /// it was expanded (or, for a set that lied about its size, as soon as it was found out).
    pub too_large: u64,
}

impl Skipped {
    pub fn total(&self) -> u64 {
        self.oversized + self.unreadable + self.too_large
    }
}

/// The distinct values of one partition's shipments, added one at a time (see the module
/// doc).
pub struct Tally {
    memory: Arc<IdMemory>,
    /// Bytes charged to `memory` now, given back on drop.
    charged: u64,
    /// Values of small scattered shipments, unsorted, repeats included; at most
    /// [`BUFFER_VALUES`]. Allocated at the first such shipment.
    buffer: Vec<u64>,
    /// The radix sort's scratch, as large as `buffer`.
    scratch: Vec<u64>,
    /// Sorted runs of distinct values, each with its size tier ([`tier_of`]); in no order.
    runs: Vec<(u32, Run)>,
    skipped: Skipped,
}

impl Tally {
    /// An empty tally; everything it holds is charged to `memory` (the instance's
    /// `--max-memory` budget) and given back when it is dropped.
    pub fn new(memory: Arc<IdMemory>) -> Tally {
        Tally {
            memory,
            charged: 0,
            buffer: Vec::new(),
            scratch: Vec::new(),
            runs: Vec::new(),
            skipped: Skipped::default(),
        }
    }

    /// Adds what [`parts::fetch`](crate::cluster::parts::fetch) read: a shipment's bytes ([`Tally::add`]), or the length
    /// of one too long to have been read.
    pub fn add_blob(&mut self, blob: Blob<'_>) {
        match blob {
            Blob::Shipment(bytes) => self.add(bytes),
            Blob::Oversized(_) => self.skipped.oversized += 1,
        }
    }

    /// Adds one shipment: untrusted bytes, an id set of the partition's values in the
    /// compact format ([`IdSet::serialize_into`]). One that is not, or whose values could
    /// not fit what the budget has left, is skipped and counted ([`Tally::skipped`]), and
    /// refused before it is expanded.
    pub fn add(&mut self, shipment: &[u8]) {
        let len = match IdSet::declared_len(shipment) {
            Ok(0) => {
                // Nothing to add, but it must still be an id set.
                if IdSet::deserialize_bounded(shipment, 0).is_err() {
                    self.skipped.unreadable += 1;
                }
                return;
            }
            Ok(len) => len,
            Err(_) => {
                self.skipped.unreadable += 1;
                return;
            }
        };
        let left = self.memory.limit().saturating_sub(self.memory.used());
        // The least the values can take once decoded: at their densest, or, scattered,
        // about their bytes in the shipment.
        if len / DENSEST_IDS_PER_BYTE > left || shipment.len() as u64 > left {
            self.skipped.too_large += 1;
            return;
        }
        let buffered = len <= BUFFERED_MAX_VALUES
            && shipment.len() as u64 >= len * BUFFERED_MIN_BYTES_PER_VALUE;
        if buffered {
            if self.buffer.len() + len as usize > BUFFER_VALUES {
                self.flush();
            }
            let capacity = self.buffer.capacity();
            if self.buffer.len() + len as usize > capacity {
                // Grown by doubling, so that a small partition takes a small buffer.
                let grown = (self.buffer.len() + len as usize)
                    .max(capacity * 2)
                    .min(BUFFER_VALUES);
                self.buffer.reserve_exact(grown - self.buffer.len());
                self.recharge();
            }
            if IdSet::deserialize_keys_into(shipment, len, &mut self.buffer).is_err() {
                self.skipped.unreadable += 1;
            }
            return;
        }
        let max_values = left.saturating_mul(DENSEST_IDS_PER_BYTE);
        match IdSet::deserialize_bounded(shipment, max_values) {
            Ok(set) => self.push_run(Run::Set(set)),
            Err(DecodeError::TooMany(_) | DecodeError::TooLarge(_)) => self.skipped.too_large += 1,
            Err(_) => self.skipped.unreadable += 1,
        }
    }

    /// What was skipped so far.
    pub fn skipped(&self) -> Skipped {
        self.skipped
    }

    /// Bytes the tally holds now, all charged to the budget.
    pub fn heap_bytes(&self) -> u64 {
        let runs: usize = self.runs.iter().map(|(_, r)| r.heap_bytes()).sum();
        ((self.buffer.capacity() + self.scratch.capacity()) * 8 + runs) as u64
    }

    /// The exact number of distinct values of every shipment added. Costs a pass over the
    /// values held (see [`finish_pausing`] to keep a lease meanwhile).
    pub fn finish(mut self) -> u64 {
        self.seal();
        self.count()
    }

    /// Sorts the buffer into a run ([`Tally::push_run`]).
    fn flush(&mut self) {
        if self.buffer.is_empty() {
            return;
        }
        sort(&mut self.buffer, &mut self.scratch);
        self.buffer.dedup();
        let run = Run::of(&self.buffer);
        self.buffer.clear();
        self.push_run(run);
    }

    /// Sorts the buffer, and frees the scratch: all that is left before the count, which
    /// reads the buffer as it is.
    fn seal(&mut self) {
        if !self.buffer.is_empty() {
            sort(&mut self.buffer, &mut self.scratch);
            self.buffer.dedup();
        }
        self.scratch = Vec::new();
        self.recharge();
    }

    /// Adds `run`, then merges the runs of its tier into one if there are [`FAN`] of them,
    /// and so on up.
    fn push_run(&mut self, run: Run) {
        if run.len() == 0 {
            return;
        }
        let mut tier = tier_of(run.len());
        self.runs.push((tier, run));
        self.recharge();
        while self.runs.iter().filter(|(t, _)| *t == tier).count() >= FAN {
            let (merging, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.runs)
                .into_iter()
                .partition(|(t, _)| *t == tier);
            self.runs = kept;
            let merging: Vec<Run> = merging.into_iter().map(|(_, r)| r).collect();
            // The merge's output is charged while it is built: at most all its inputs.
            let output: usize = merging.iter().map(Run::heap_bytes).sum();
            self.memory.charge(output as u64);
            self.charged += output as u64;
            let merged = merge(&merging, &[]);
            drop(merging);
            tier = tier_of(merged.len());
            self.runs.push((tier, Run::Set(merged)));
            self.recharge();
        }
    }

    /// Charges or gives back what the tally holds now against what was charged.
    fn recharge(&mut self) {
        let now = self.heap_bytes();
        if now > self.charged {
            self.memory.charge(now - self.charged);
        } else {
            self.memory.release(self.charged - now);
        }
        self.charged = now;
    }

    /// The distinct values of the runs and the buffer, once sealed: what
    /// [`finish_pausing_with`] hands its counter ([`Tally::count`] but in tests).
    pub fn count(&self) -> u64 {
        match (&self.runs[..], self.buffer.len()) {
            ([], n) => return n as u64,
            ([(_, only)], 0) => return only.len(),
            _ => {}
        }
        let runs: Vec<&Run> = self.runs.iter().map(|(_, r)| r).collect();
        merge_of(&runs, &self.buffer).count()
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        self.memory.release(self.charged);
    }
}

/// The size tier of a run of `len` values: 0 below [`FAN`] buffers' worth, 1 below `FAN^2`,
/// and so on.
fn tier_of(len: u64) -> u32 {
    let (mut tier, mut ceiling) = (0, BUFFER_VALUES as u64 * FAN as u64);
    while len >= ceiling {
        tier += 1;
        ceiling = ceiling.saturating_mul(FAN as u64);
    }
    tier
}

/// The union of `runs` and of `sorted` (ascending, no repeats), as a set.
fn merge(runs: &[Run], sorted: &[u64]) -> IdSet {
    let refs: Vec<&Run> = runs.iter().collect();
    let mut out = crate::ids::Builder::default();
    merge_of(&refs, sorted).each(|k| out.push(k));
    out.into_set()
}

/// A sorted run of distinct values: a set, or, for the scattered values of a buffer, the
/// cheaper [`Wide`].
enum Run {
    Set(IdSet),
    Wide(Wide),
}

impl Run {
    /// The run of `values` (ascending, no repeats).
    fn of(values: &[u64]) -> Run {
        match Wide::of(values) {
            Some(wide) => Run::Wide(wide),
            None => Run::Set(IdSet::from_sorted_keys(values)),
        }
    }

    fn len(&self) -> u64 {
        match self {
            Run::Set(set) => set.len(),
            Run::Wide(wide) => wide.len as u64,
        }
    }

    fn heap_bytes(&self) -> usize {
        match self {
            Run::Set(set) => set.heap_bytes(),
            Run::Wide(wide) => wide.lows.capacity() + wide.highs.capacity() * 8,
        }
    }
}

/// Sorted distinct values in 6 bytes each: their low 48 bits, and their high 16 bits once
/// per stretch of values that share them. For scattered values as compact as a set packs
/// them (random 60-bit values, a quarter million of them: 6.1 bytes each, against 5.7 as a
/// set), written with a copy and read with a load and a mask, where a set packs and unpacks
/// each value's gap bit by bit: a buffer's run costs a fifth of the time.
struct Wide {
    /// Each value's low 48 bits, little-endian, then 2 bytes of padding so that every value
    /// reads as one 8-byte load.
    lows: Vec<u8>,
    /// Each stretch's high 16 bits, and the index of its first value; ascending.
    highs: Vec<(u16, u32)>,
    len: usize,
}

/// Values per distinct high half a [`Wide`] run needs at least, so that its `highs` take at
/// most half a byte per value; sparser ones (values spread over the whole 64 bits, not a
/// partition's 60) are packed as a set.
const WIDE_MIN_VALUES_PER_HIGH: usize = 16;

impl Wide {
    /// `values` (ascending, no repeats) as a wide run, or `None` if they have too many high
    /// halves (or are more than `u32` indexes).
    fn of(values: &[u64]) -> Option<Wide> {
        let len = values.len();
        if u32::try_from(len).is_err() {
            return None;
        }
        let mut stretches = 0;
        let mut high = None;
        for &v in values {
            if high != Some(v >> 48) {
                stretches += 1;
                high = Some(v >> 48);
            }
        }
        if stretches * WIDE_MIN_VALUES_PER_HIGH > len {
            return None;
        }
        let mut highs = Vec::with_capacity(stretches);
        let mut lows = vec![0u8; len * 6 + 2];
        for (i, &v) in values.iter().enumerate() {
            let high = (v >> 48) as u16;
            if highs.last().is_none_or(|&(h, _)| h != high) {
                highs.push((high, i as u32));
            }
            // All 8 bytes in one store: the next value's overwrites the top 2 (the last
            // value's land in the padding, read back masked off).
            lows[i * 6..i * 6 + 8].copy_from_slice(&v.to_le_bytes());
        }
        Some(Wide { lows, highs, len })
    }

    fn keys(&self) -> WideKeys<'_> {
        WideKeys {
            wide: self,
            next: 0,
            stretch: 0,
            high: 0,
            stretch_end: 0,
        }
    }
}

/// Reads a [`Wide`] run's values in order.
struct WideKeys<'a> {
    wide: &'a Wide,
    /// Index of the next value.
    next: usize,
    /// Index in `highs` of the next stretch.
    stretch: usize,
    /// The current stretch's high 16 bits, in place, and the index where it ends.
    high: u64,
    stretch_end: usize,
}

impl WideKeys<'_> {
    fn fill(&mut self, chunk: &mut [u64]) -> usize {
        const LOW: u64 = (1 << 48) - 1;
        let lows = &self.wide.lows;
        let mut n = 0;
        while n < chunk.len() && self.next < self.wide.len {
            if self.next == self.stretch_end {
                let highs = &self.wide.highs;
                self.high = u64::from(highs[self.stretch].0) << 48;
                self.stretch += 1;
                self.stretch_end = highs
                    .get(self.stretch)
                    .map_or(self.wide.len, |&(_, start)| start as usize);
            }
            // Values of this stretch that fit the chunk, read without another check.
            let take = (self.stretch_end - self.next).min(chunk.len() - n);
            for (i, slot) in chunk[n..n + take].iter_mut().enumerate() {
                let at = (self.next + i) * 6;
                let bytes: [u8; 8] = lows[at..at + 8].try_into().expect("8 bytes");
                *slot = self.high | (u64::from_le_bytes(bytes) & LOW);
            }
            n += take;
            self.next += take;
        }
        n
    }
}

/// Sorts `values`, with `scratch` as large as they are: a least-significant-digit radix sort
/// (no comparisons, so no mispredicted branches on random values) over only the top bits in
/// which they differ, enough of them to tell nearly all values apart (`log2(n)` and
/// [`SPARE_BITS`] more); then the few runs of values that share those bits, if any, sorted
/// by comparison. Half the passes of a radix sort over every bit for random 64-bit values,
/// and never worse than a comparison sort, however the values are spread.
fn sort(values: &mut Vec<u64>, scratch: &mut Vec<u64>) {
    const DIGIT: u32 = 12;
    const BUCKETS: usize = 1 << DIGIT;
    /// Bits sorted on beyond `log2(n)`: values then share them about once in `2^SPARE_BITS`.
    const SPARE_BITS: u32 = 6;
    let n = values.len();
    if n < 256 {
        values.sort_unstable();
        return;
    }
    let (lo, hi) = values
        .iter()
        .fold((u64::MAX, 0), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    // Bits above the highest one in which some values differ are the same in all.
    let bits = 64 - (lo ^ hi).leading_zeros();
    let wanted = (usize::BITS - n.leading_zeros() + SPARE_BITS).min(bits);
    let passes = wanted.div_ceil(DIGIT);
    // The lowest bit sorted on.
    let low = bits.saturating_sub(passes * DIGIT);
    scratch.clear();
    scratch.resize(n, 0);
    for pass in 0..passes {
        let shift = low + pass * DIGIT;
        let digit = |v: u64| ((v >> shift) as usize) & (BUCKETS - 1);
        let mut starts = [0u32; BUCKETS];
        for &v in values.iter() {
            starts[digit(v)] += 1;
        }
        let mut sum = 0;
        for s in starts.iter_mut() {
            (*s, sum) = (sum, sum + *s);
        }
        for &v in values.iter() {
            let d = digit(v);
            scratch[starts[d] as usize] = v;
            starts[d] += 1;
        }
        std::mem::swap(values, scratch);
    }
    if low > 0 {
        // Values equal in the bits sorted on are next to each other, in no order.
        let mut start = 0;
        for i in 1..=n {
            if i == n || values[i] >> low != values[start] >> low {
                match i - start {
                    0 | 1 => {}
                    2 => {
                        if values[start] > values[start + 1] {
                            values.swap(start, start + 1);
                        }
                    }
                    _ => values[start..i].sort_unstable(),
                }
                start = i;
            }
        }
    }
}

/// A k-way merge of sorted runs of distinct values, each read a chunk at a time, and of one
/// sorted slice read in place: every step takes the least head and moves past it in every
/// run that has it, with no branch that depends on which run it was (runs of random values
/// interleave at random, and a heap mispredicts about once a value). For the few runs a
/// tally holds: a step costs a few instructions per run.
struct Merge<'a, I> {
    streams: Vec<Stream<I>>,
    /// The sorted slice, then `u64::MAX`: the end mark of every stream.
    slice: &'a [u64],
    /// Whether some run or the slice holds `u64::MAX` as a value.
    has_max: bool,
}

/// One run's values: `chunk[at..filled]` not taken yet, then `u64::MAX` at `chunk[filled]`.
struct Stream<I> {
    keys: I,
    chunk: [u64; CHUNK + 1],
    at: usize,
    filled: usize,
}

/// What a [`Stream`] reads a run's values from, a chunk at a time.
trait Fill {
    /// Writes the next values into `chunk`, as many as fit; returns how many (0 at the end).
    fn fill(&mut self, chunk: &mut [u64]) -> usize;
}

impl<I: Fill> Stream<I> {
    fn new(keys: I, has_max: &mut bool) -> Stream<I> {
        let mut s = Stream {
            keys,
            chunk: [u64::MAX; CHUNK + 1],
            at: 0,
            filled: 0,
        };
        s.refill(has_max);
        s
    }

    /// Reads the next chunk; at the end, leaves only the end mark.
    fn refill(&mut self, has_max: &mut bool) {
        let mut n = self.keys.fill(&mut self.chunk[..CHUNK]);
        // Keys ascend: `u64::MAX` can only be a run's last.
        if n > 0 && self.chunk[n - 1] == u64::MAX {
            *has_max = true;
            n -= 1;
        }
        self.chunk[n] = u64::MAX;
        (self.at, self.filled) = (0, n);
    }
}

/// A run's values, read from a set or from a [`Wide`] run.
enum RunKeys<'a, S> {
    Set(S),
    Wide(WideKeys<'a>),
}

impl<S: Iterator<Item = u64>> Fill for RunKeys<'_, S> {
    fn fill(&mut self, chunk: &mut [u64]) -> usize {
        match self {
            RunKeys::Set(keys) => {
                let mut n = 0;
                for (slot, k) in chunk.iter_mut().zip(keys) {
                    *slot = k;
                    n += 1;
                }
                n
            }
            RunKeys::Wide(keys) => keys.fill(chunk),
        }
    }
}

/// The merge of `runs` and `sorted` (ascending, no repeats).
fn merge_of<'a>(runs: &[&'a Run], sorted: &'a [u64]) -> Merge<'a, impl Fill + 'a> {
    let mut has_max = sorted.last() == Some(&u64::MAX);
    let slice = if has_max {
        &sorted[..sorted.len() - 1]
    } else {
        sorted
    };
    let streams = runs
        .iter()
        .filter(|r| r.len() > 0)
        .map(|r| {
            let keys = match r {
                Run::Set(set) => RunKeys::Set(set.keys()),
                Run::Wide(wide) => RunKeys::Wide(wide.keys()),
            };
            Stream::new(keys, &mut has_max)
        })
        .collect();
    Merge {
        streams,
        slice,
        has_max,
    }
}

impl<I: Fill> Merge<'_, I> {
    /// Calls `f` with every distinct value, ascending.
    fn each(self, mut f: impl FnMut(u64)) {
        let Merge {
            streams,
            slice,
            mut has_max,
        } = self;
        // The loop over the streams unrolled for the few a tally usually holds.
        match streams.len() {
            0 => each_of::<I, 0>(&mut [], slice, &mut has_max, &mut f),
            1 => each_of::<I, 1>(&mut array(streams), slice, &mut has_max, &mut f),
            2 => each_of::<I, 2>(&mut array(streams), slice, &mut has_max, &mut f),
            3 => each_of::<I, 3>(&mut array(streams), slice, &mut has_max, &mut f),
            4 => each_of::<I, 4>(&mut array(streams), slice, &mut has_max, &mut f),
            _ => each_of_any(&mut { streams }, slice, &mut has_max, &mut f),
        }
        if has_max {
            f(u64::MAX);
        }
    }

    /// The number of distinct values.
    fn count(self) -> u64 {
        let mut n = 0;
        self.each(|_| n += 1);
        n
    }
}

fn array<T, const N: usize>(v: Vec<T>) -> [T; N] {
    v.try_into().ok().expect("as many as matched")
}

/// The merge loop of [`Merge::each`] over `N` streams (see there), their heads kept in
/// registers.
#[inline(always)]
fn each_of<I: Fill, const N: usize>(
    streams: &mut [Stream<I>; N],
    slice: &[u64],
    has_max: &mut bool,
    f: &mut impl FnMut(u64),
) {
    let mut at = 0;
    let mut head = slice.first().copied().unwrap_or(u64::MAX);
    let mut heads = [0u64; N];
    for (h, s) in heads.iter_mut().zip(streams.iter()) {
        *h = s.chunk[s.at];
    }
    loop {
        let least = heads.iter().fold(head, |m, &h| m.min(h));
        if least == u64::MAX {
            break;
        }
        f(least);
        at += usize::from(head == least);
        head = slice.get(at).copied().unwrap_or(u64::MAX);
        for (h, s) in heads.iter_mut().zip(streams.iter_mut()) {
            s.at += usize::from(*h == least);
            if s.at == s.filled && s.filled > 0 {
                s.refill(has_max);
            }
            *h = s.chunk[s.at];
        }
    }
}

/// The merge loop of [`Merge::each`] (see there).
#[inline(always)]
fn each_of_any<I: Fill>(
    streams: &mut [Stream<I>],
    slice: &[u64],
    has_max: &mut bool,
    f: &mut impl FnMut(u64),
) {
    let mut at = 0;
    loop {
        let head = slice.get(at).copied().unwrap_or(u64::MAX);
        let least = streams.iter().fold(head, |m, s| m.min(s.chunk[s.at]));
        if least == u64::MAX {
            break;
        }
        f(least);
        at += usize::from(head == least);
        for s in streams.iter_mut() {
            s.at += usize::from(s.chunk[s.at] == least);
            if s.at == s.filled && s.filled > 0 {
                s.refill(has_max);
            }
        }
    }
}

/// [`Tally::finish`], its count on a helper thread while `between(con)` is called every
/// 100 ms (the leader's lease renewal and heartbeats: counting a large partition may take
/// longer than the lease); `None` if `between` said stop. The count is still waited for
/// then, so that the tally's memory is freed before the caller goes on, and `between` still
/// called, for the heartbeats. An error of `between` (an outage) ends the calls and is
/// returned once the count is over.
pub fn finish_pausing(
    tally: Tally,
    con: &mut dyn redis::ConnectionLike,
    between: &mut dyn FnMut(&mut dyn redis::ConnectionLike) -> store::Result<bool>,
) -> store::Result<Option<u64>> {
    finish_pausing_with(tally, con, between, Tally::count)
}

/// [`finish_pausing`] with the count done by `count` (in tests, one that takes as long as
/// the test wants). Any tally that holds a value is counted on the helper thread, even a
/// small one: its sort is short, and a test's counter must never hold up the caller.
pub fn finish_pausing_with(
    mut tally: Tally,
    con: &mut dyn redis::ConnectionLike,
    between: &mut dyn FnMut(&mut dyn redis::ConnectionLike) -> store::Result<bool>,
    count: fn(&Tally) -> u64,
) -> store::Result<Option<u64>> {
    tally.seal();
    if tally.runs.is_empty() && tally.buffer.is_empty() {
        return Ok(Some(0));
    }
    let tally = &tally;
    let (tx, rx) = bounded(1);
    std::thread::scope(|scope| {
        let helper = std::thread::Builder::new()
            .name("verve-tally".into())
            .spawn_scoped(scope, move || {
                let _ = tx.send(count(tally));
            });
        if helper.is_err() {
            // No thread to be had: count here.
            return Ok(Some(count(tally)));
        }
        let (mut stopped, mut failed) = (false, None);
        loop {
            match rx.recv_timeout(COUNT_PAUSE) {
                Ok(n) => {
                    return match failed {
                        Some(e) => Err(e),
                        None => Ok((!stopped).then_some(n)),
                    }
                }
                Err(RecvTimeoutError::Timeout) if failed.is_none() => match between(con) {
                    Ok(true) => {}
                    Ok(false) => stopped = true,
                    Err(e) => failed = Some(e),
                },
                Err(RecvTimeoutError::Timeout) => {}
                // The helper panicked: the scope's end passes the panic on.
                Err(RecvTimeoutError::Disconnected) => return Ok(None),
            }
        }
    })
}

#[cfg(test)]
mod tests;
