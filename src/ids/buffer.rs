//! What the request path records ids into: a small buffer packed into runs, which the
//! collector merges off the request path.

use super::{to_key, IdSet};

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
    use crate::ids::testing::{sorted, stream};

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
}
