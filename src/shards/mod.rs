//! Per-worker id shards: where the request path records ids, and where the collector merges
//! and seals each window.
//!
//! **Why a lock, and why it is not contended.** A may coroutine can resume on another worker
//! thread after any yield (work stealing, a timer, a channel wake-up), so a `thread_local!`
//! shard held across a yield would be unsound. Instead each batch of requests picks its
//! shard when it starts, from the thread running it ([`Shards::current`]: a per-thread index
//! read once and kept only until the next yield), and the shard sits behind its own `Mutex`,
//! held only for one insert, never across a yield. Each may worker thread thus has a shard of
//! its own: only that worker and, about once a second, the collector ever take its lock, and
//! an uncontended futex lock is one atomic compare-and-swap. Should a coroutine migrate
//! between picking the shard and inserting (it cannot: nothing in between yields), the lock
//! would still make it correct, only slower.
//!
//! **Merged off the request path.** A shard only buffers ids ([`IdBuffer`](crate::ids::IdBuffer): appends, and a
//! sort and pack per batch). The collector takes what the shards buffered at least once a
//! second ([`Shards::absorb`]) and merges it into the window's levels
//! ([`Levels`](crate::ids::Levels)), which only the collector and the cluster thread touch.
//! An absorb costs in proportion to the ids it adds, not to the window: the levels are
//! disjoint sets merged into one another in bounded steps. So the request path never waits
//! on a merge, the `verve_window_unique_ids` gauge is the exact number of distinct ids merged
//! (a scrape reads an atomic), and sealing a window merges at most the last second's ids,
//! then makes the levels one set.
//!
//! **Exact windows.** The connection reads the clock when a read returns and passes the
//! window index in; a shard holds one slot per window it has seen, so a request that read the
//! clock just before a boundary still lands in the old window even if another request has
//! already opened the new one. The collector waits [`crate::collector::SETTLE`] past each
//! boundary, then seals the window: it takes that window's slot from every shard and marks
//! the window collected.
//!
//! **A record for a collected window** counts in the oldest window not collected yet, and is
//! answered `ok`. It happens in two ways. Its thread was descheduled for longer than the
//! settling delay between reading the clock and recording: the request arrived a moment
//! before the boundary and counts a moment after it. Or the wall clock was stepped back
//! across a boundary (NTP, an operator): the instant the request arrived is then ambiguous,
//! since the clock reads a time the service has already reported, and the window that is
//! really open is the one after the last sealed one. The collector keeps that window open
//! until the clock passes its end, so it counts everything received while the clock catches
//! up, and its count line comes when its end has been reached by the clock. Refusing such
//! requests instead would answer every one of them 503 for as long as the step, up to a whole
//! window. Either way it is counted in `verve_late_ids_total` and logged with the next
//! window's report. After [`Shards::close`] (shutdown) every record is refused.
//!
//! **Memory.** Each record reserves its id's bytes from the shard's allowance, drawn from
//! the shared [`IdMemory`] budget; past the budget the record is refused (see
//! [`crate::budget`]).
//!
//! Files: `shard.rs` one worker's shard, `merge.rs` the merged windows, their absorb, drain
//! and seal; this file the shards as a whole and the request path's [`Shards::record`].

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crossbeam_utils::CachePadded;

use crate::budget::{IdMemory, RESERVE_PER_ID};
use crate::endpoints::{canonicalize, Admit, EndpointPolicy, EndpointTable};
use crate::query::QueryError;
use merge::MergedWindows;
use shard::Shard;

mod merge;
mod shard;

pub use merge::{Absorbed, Drained, Sealed, Unsaved};

/// What happened to a recorded id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Counted in its window (and its endpoint, if any, will be called).
    Counted,
    /// Counted, but the window's endpoint table is full: the endpoint will not be called.
    EndpointTableFull,
    /// Not counted: the service is shutting down.
    Closed,
    /// Not counted: `--max-memory` is spent.
    OverBudget,
}

/// Spellings of endpoints a shard remembers per window, per allowed endpoint: enough for
/// the few spellings real clients use (a trailing `#fragment`, host case), bounded so that
/// a client inventing spellings of one URL cannot grow the cache (past it, a spelling takes
/// the slow path: a URL parse and the shared table).
const SPELLINGS_PER_ENDPOINT: usize = 4;

/// All shards, plus the shared endpoint rules and table, and the merged windows.
#[derive(Debug)]
pub struct Shards {
    shards: Box<[CachePadded<Mutex<Shard>>]>,
    policy: EndpointPolicy,
    table: EndpointTable,
    /// Most endpoint spellings a slot caches.
    cache_cap: usize,
    /// Taken before any shard lock, by the collector and the cluster thread only: never on
    /// the request path.
    merged: Mutex<MergedWindows>,
    memory: Arc<IdMemory>,
    /// A state file saves what the shards record ([`Shards::unsaved`]), so a seal hands out
    /// what was not saved yet ([`Sealed::unsaved`]).
    durable: std::sync::atomic::AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave a half-inserted set that matters more
    // than losing the service: keep counting.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shards {
    /// Shards without a memory budget.
    pub fn new(count: usize, policy: EndpointPolicy, max_endpoints: usize) -> Self {
        Shards::with_memory(count, policy, max_endpoints, IdMemory::unlimited())
    }

    pub fn with_memory(
        count: usize,
        policy: EndpointPolicy,
        max_endpoints: usize,
        memory: Arc<IdMemory>,
    ) -> Self {
        Shards {
            shards: (0..count.max(1))
                .map(|_| CachePadded::new(Mutex::new(Shard::default())))
                .collect(),
            policy,
            table: EndpointTable::new(max_endpoints),
            cache_cap: max_endpoints.saturating_mul(SPELLINGS_PER_ENDPOINT),
            merged: Mutex::new(MergedWindows::default()),
            memory,
            durable: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// With `--state-file`: seals hand out the ids not saved yet, serialized.
    pub fn set_durable(&self) {
        self.durable.store(true, Relaxed);
    }

    pub fn len(&self) -> usize {
        self.shards.len()
    }

    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
    }

    /// The memory budget the shards record against.
    pub fn memory(&self) -> &Arc<IdMemory> {
        &self.memory
    }

    /// The endpoint rules requests are checked against (`--endpoint-allow`): in cluster mode
    /// the leader checks endpoints read from Redis against them too.
    pub fn policy(&self) -> &EndpointPolicy {
        &self.policy
    }

    /// `--max-endpoints`: the most distinct endpoints a window may have.
    pub fn max_endpoints(&self) -> usize {
        self.table.max()
    }

    /// The shard of the calling thread (see the module doc). Threads are numbered in the
    /// order they first ask, so the first `len()` threads to record (the may workers) each get
    /// a shard of their own. The index must not be kept across a yield; a stale one is still
    /// correct, only possibly contended.
    #[inline]
    pub fn current(&self) -> usize {
        use std::cell::Cell;
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        thread_local! {
            static INDEX: Cell<usize> = const { Cell::new(usize::MAX) };
        }
        let index = INDEX.with(|i| {
            let mut index = i.get();
            if index == usize::MAX {
                index = NEXT.fetch_add(1, Relaxed);
                i.set(index);
            }
            index
        });
        index % self.shards.len()
    }

    /// Records `id` in `window` on `shard`, with the already percent-decoded `endpoint`. An
    /// endpoint that is not a valid, allowed URL refuses the whole request (the id is not
    /// counted); a full endpoint table still counts the id.
    #[inline]
    pub fn record(
        &self,
        shard: usize,
        window: u64,
        id: i64,
        endpoint: Option<&str>,
    ) -> Result<Recorded, QueryError> {
        let mut guard = lock(&self.shards[shard % self.shards.len()]);
        let s = &mut *guard;
        if s.closed {
            return Ok(Recorded::Closed);
        }
        // A window already sealed: the clock was stepped back across a boundary, or this
        // thread was held up past the settling delay between its clock read and now. The
        // request counts in the oldest window not sealed, which the collector keeps open
        // until the clock passes its end (see the module doc).
        let window = match s.collected_upto {
            Some(c) if window <= c => {
                s.late += 1;
                c + 1
            }
            _ => window,
        };
        if s.allowance < RESERVE_PER_ID {
            // Once per few thousand ids: the only touch of the shared budget.
            s.allowance += self.memory.draw();
            if s.allowance < RESERVE_PER_ID {
                s.refused += 1;
                return Ok(Recorded::OverBudget);
            }
        }
        let cache_cap = self.cache_cap;
        let slot = s.slot(window);
        let mut outcome = Recorded::Counted;
        if let Some(endpoint) = endpoint {
            if !slot.endpoints.contains(endpoint) {
                // First sighting in this window on this shard: the slow path (parse, policy,
                // shared table), at most once per spelling, window and shard while the
                // cache has room.
                let url = canonicalize(endpoint, &self.policy)?;
                match self.table.admit(window, url.as_str()) {
                    Admit::Full => outcome = Recorded::EndpointTableFull,
                    Admit::Added | Admit::Known => {
                        if slot.endpoints.len() < cache_cap {
                            slot.endpoints.insert(endpoint.into());
                        }
                    }
                }
            }
        }
        slot.ids.insert(id);
        slot.reserved += RESERVE_PER_ID;
        s.allowance -= RESERVE_PER_ID;
        Ok(outcome)
    }

    /// Refuses every later record (shutdown). The windows still open are sealed afterwards
    /// with [`Shards::seal`], so a request is either counted and reported or refused.
    pub fn close(&self) {
        for shard in self.shards.iter() {
            lock(shard).closed = true;
        }
    }

    /// The windows after `window` that any shard or merged set holds ids or endpoints for,
    /// in order: at shutdown, the collector seals them after the open one.
    pub fn windows_with_ids_after(&self, window: u64) -> Vec<u64> {
        let mut held: Vec<u64> = lock(&self.merged)
            .windows
            .range(window.saturating_add(1)..)
            .filter(|(_, m)| !m.ids.is_empty())
            .map(|(w, _)| *w)
            .collect();
        for shard in self.shards.iter() {
            let s = lock(shard);
            held.extend(
                s.older
                    .iter()
                    .chain([&s.current])
                    .filter(|slot| slot.window > window && !slot.is_empty())
                    .map(|slot| slot.window),
            );
        }
        held.sort_unstable();
        held.dedup();
        held
    }

    /// The window a thread other than the collector should treat as open, given the
    /// clock's: the clock's own, or, when the clock was stepped back behind a window already
    /// sealed, the oldest one not sealed (where [`Shards::record`] puts such requests).
    pub fn open_window(&self, clock_window: u64) -> u64 {
        lock(&self.merged)
            .sealed_upto
            .map_or(clock_window, |sealed| clock_window.max(sealed + 1))
    }
}

/// Helpers shared by the tests of the shard modules.
#[cfg(test)]
mod testing {
    use super::{Sealed, Shards};
    use crate::endpoints::EndpointPolicy;

    pub(super) fn shards(n: usize) -> Shards {
        Shards::new(n, EndpointPolicy::default(), 2)
    }

    pub(super) fn count(sealed: &Sealed) -> u64 {
        sealed.ids.len()
    }

    pub(super) fn unique(s: &Shards, window: u64) -> u64 {
        s.absorb(window).unwrap().unique
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{count, shards, unique};
    use super::*;
    use crate::clock::{Clock, ManualClock, Windows};
    use std::time::Duration;

    #[test]
    fn each_id_counts_in_the_window_its_request_arrived_in() {
        let clock = ManualClock::new(59_000);
        let windows = Windows::new(60);
        let s = shards(2);
        let w0 = windows.index_of(clock.now_ms());
        s.record(0, w0, 1, None).unwrap();
        s.record(1, w0, 2, None).unwrap();
        // A request read the clock just before the boundary...
        clock.set(59_999);
        let before = windows.index_of(clock.now_ms());
        // ...and others arrive after it, on both shards, before the first is recorded.
        clock.set(60_000);
        let w1 = windows.index_of(clock.now_ms());
        assert_eq!(w1, w0 + 1);
        s.record(0, w1, 1, None).unwrap();
        s.record(1, w1, 3, None).unwrap();
        assert_eq!(s.record(0, before, 4, None), Ok(Recorded::Counted));
        s.record(1, w0, 2, None).unwrap();
        clock.advance(Duration::from_millis(200));
        let sealed0 = s.seal(w0);
        assert_eq!(count(&sealed0), 3, "ids 1, 2 and 4 before the boundary");
        assert_eq!(sealed0.late, 0);
        s.record(0, w1, 5, None).unwrap();
        clock.set(120_000);
        s.record(1, windows.index_of(clock.now_ms()), 9, None)
            .unwrap();
        let sealed1 = s.seal(w1);
        assert_eq!(count(&sealed1), 3, "ids 1, 3 and 5 after it");
        assert_eq!(count(&s.seal(w1 + 1)), 1);
    }

    #[test]
    fn a_record_after_its_window_was_sealed_counts_in_the_oldest_open_window() {
        let s = shards(2);
        s.record(0, 10, 1, None).unwrap();
        assert_eq!(count(&s.seal(10)), 1);
        assert_eq!(s.open_window(10), 11);
        assert_eq!(s.open_window(12), 12);
        assert_eq!(
            s.record(0, 10, 2, Some("http://a.test/")),
            Ok(Recorded::Counted)
        );
        assert_eq!(s.record(1, 9, 2, None), Ok(Recorded::Counted));
        assert_eq!(s.record(1, 11, 3, None), Ok(Recorded::Counted));
        let next = s.seal(11);
        assert_eq!(next.late, 2);
        assert_eq!(next.ids.iter().collect::<Vec<_>>(), [2, 3]);
        assert_eq!(next.endpoints, ["http://a.test/"]);
    }

    #[test]
    fn each_thread_gets_its_own_shard_and_keeps_it() {
        let s = Arc::new(shards(1024));
        let mine = s.current();
        assert_eq!(s.current(), mine);
        let theirs: Vec<usize> = (0..4)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || (s.current(), s.current()))
                    .join()
                    .unwrap()
            })
            .map(|(a, b)| {
                assert_eq!(a, b);
                a
            })
            .collect();
        let mut all = theirs.clone();
        all.push(mine);
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 5, "{theirs:?} and {mine}");
    }

    #[test]
    fn an_empty_window_seals_to_zero() {
        let s = shards(3);
        let sealed = s.seal(42);
        assert!(sealed.ids.is_empty() && sealed.unshipped.is_none());
        assert_eq!(count(&sealed), 0);
        assert!(sealed.endpoints.is_empty());
    }

    #[test]
    fn duplicates_across_shards_count_once() {
        let s = shards(4);
        for shard in 0..4 {
            for id in [i64::MIN, -1, 0, 1, i64::MAX] {
                s.record(shard, 3, id, None).unwrap();
            }
        }
        assert_eq!(unique(&s, 3), 5);
        assert_eq!(count(&s.seal(3)), 5);
    }

    #[test]
    fn close_refuses_later_records_but_keeps_what_was_counted() {
        let s = shards(2);
        s.record(0, 5, 1, None).unwrap();
        s.record(1, 6, 2, None).unwrap();
        s.close();
        assert_eq!(s.record(0, 6, 3, None), Ok(Recorded::Closed));
        assert_eq!(s.windows_with_ids_after(4), [5, 6]);
        assert_eq!(s.windows_with_ids_after(5), [6]);
        assert_eq!(count(&s.seal(5)), 1);
        assert_eq!(count(&s.seal(6)), 1);
    }

    #[test]
    fn endpoints_are_collected_per_window_and_bounded() {
        let s = shards(2);
        assert_eq!(
            s.record(0, 1, 1, Some("http://a.test/x")),
            Ok(Recorded::Counted)
        );
        assert_eq!(
            s.record(1, 1, 2, Some("http://a.test/x")),
            Ok(Recorded::Counted)
        );
        assert_eq!(
            s.record(1, 1, 3, Some("http://A.test/x#f")),
            Ok(Recorded::Counted)
        );
        assert_eq!(
            s.record(0, 1, 4, Some("http://b.test/")),
            Ok(Recorded::Counted)
        );
        // The third distinct endpoint does not fit (max 2); the id still counts.
        assert_eq!(
            s.record(0, 1, 5, Some("http://c.test/")),
            Ok(Recorded::EndpointTableFull)
        );
        assert_eq!(
            s.record(0, 1, 6, Some("ftp://c.test/")),
            Err(QueryError::BadEndpoint)
        );
        assert_eq!(
            s.record(0, 2, 7, Some("http://c.test/")),
            Ok(Recorded::Counted)
        );
        let sealed = s.seal(1);
        assert_eq!(
            count(&sealed),
            5,
            "the id with the refused endpoint is not counted"
        );
        assert_eq!(sealed.endpoints, vec!["http://a.test/x", "http://b.test/"]);
        assert_eq!(s.seal(2).endpoints, vec!["http://c.test/"]);
    }

    #[test]
    fn past_the_budget_ids_are_refused_and_every_counted_one_is_kept() {
        use crate::budget::GRANT_BYTES;
        let memory = IdMemory::new(2 * GRANT_BYTES);
        let s = Shards::with_memory(2, EndpointPolicy::default(), 10, memory.clone());
        let mut counted = Vec::new();
        let mut refused = 0;
        for id in 0..40_000i64 {
            match s
                .record((id % 2) as usize, 1, id * 7_919_000_001, None)
                .unwrap()
            {
                Recorded::Counted => counted.push(id * 7_919_000_001),
                Recorded::OverBudget => refused += 1,
                other => panic!("{other:?}"),
            }
        }
        assert!(refused > 0 && !counted.is_empty());
        assert!(memory.used() <= memory.limit());
        let absorbed = s.absorb(1).unwrap();
        assert_eq!(absorbed.refused, refused);
        assert_eq!(memory.refused(), refused);
        assert_eq!(absorbed.unique, counted.len() as u64);
        // The merge gave back the reservations: the set takes less than they did, so
        // there is room again.
        assert!(memory.used() < memory.limit());
        assert_eq!(s.record(0, 1, 5, None), Ok(Recorded::Counted));
        let sealed = s.seal(1);
        assert_eq!(sealed.ids.len(), counted.len() as u64 + 1);
        assert!(counted.iter().all(|&id| sealed.ids.contains(id)));
        assert!(sealed.charge.bytes() >= sealed.ids.heap_bytes() as u64);
        let held = memory.used();
        drop(sealed);
        assert!(
            memory.used() < held,
            "dropping the sealed window frees its bytes"
        );
    }

    #[test]
    fn the_endpoint_cache_of_a_slot_is_bounded() {
        let s = Shards::new(1, EndpointPolicy::default(), 1);
        // Many spellings of one endpoint: all admitted, but only a few cached.
        for i in 0..100 {
            let spelling = format!("http://a.test/x#{i}");
            assert_eq!(s.record(0, 1, i, Some(&spelling)), Ok(Recorded::Counted));
        }
        let cached = lock(&s.shards[0]).current.endpoints.len();
        assert_eq!(cached, SPELLINGS_PER_ENDPOINT);
        assert_eq!(s.seal(1).endpoints, ["http://a.test/x"]);
    }
}
