//! Per-worker id shards: where the request path records ids, and where the collector seals
//! each window.
//!
//! **Why a lock, and why it is not contended.** A may coroutine can resume on another worker
//! thread after any yield (work stealing, a timer, a channel wake-up), so a `thread_local!`
//! shard held across a yield would be unsound. Instead each batch of requests picks its
//! shard when it starts, from the thread running it ([`Shards::current`]: a per-thread index
//! read once and kept only until the next yield), and the shard sits behind its own `Mutex`,
//! held only for one insert, never across a yield. Each may worker thread thus has a shard of
//! its own: only that worker and, once per window, the collector ever take its lock, and an
//! uncontended futex lock is one atomic compare-and-swap. Should a coroutine migrate between
//! picking the shard and inserting (it cannot: nothing in between yields), the lock would
//! still make it correct, only slower. (An earlier design picked the shard from the socket,
//! `fd % workers`, the worker that polls it; but may's work stealing runs a connection on the
//! other worker often enough that the lock was contended ~1 500 times a second under wrk, and
//! a contended lock parks the whole worker thread.)
//!
//! **Exact windows.** The connection reads the clock when a read returns and passes the
//! window index in; a shard holds one slot per window it has seen, so a request that read the
//! clock just before a boundary still lands in the old window even if another request has
//! already opened the new one. The collector waits [`crate::collector::SETTLE`] past each
//! boundary, then seals the window: it takes that window's slot from every shard and marks
//! the window collected. A record for a collected window (its thread was descheduled for
//! longer than the settling delay between reading the clock and recording) is not counted
//! anywhere: it is refused, so the client gets a 503 `failed` and may retry, and it is counted
//! in `verve_late_ids_total` and logged with the next window's report. It is never silently
//! dropped. After [`Shards::close`] (shutdown) every record is refused the same way.

use std::cell::Cell;
use std::collections::{BTreeMap, HashSet};
use std::mem;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard, PoisonError, TryLockError};

use crossbeam_utils::CachePadded;

use crate::endpoints::{canonicalize, Admit, EndpointPolicy, EndpointTable};
use crate::ids::{BatchedIdSet, IdSet};
use crate::query::QueryError;

/// What happened to a recorded id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Counted in its window (and its endpoint, if any, will be called).
    Counted,
    /// Counted, but the window's endpoint table is full: the endpoint will not be called.
    EndpointTableFull,
    /// Not counted: the window was already sealed by the collector.
    Late,
    /// Not counted: the service is shutting down.
    Closed,
}

/// One window's share of one shard.
#[derive(Debug, Default)]
struct Slot {
    window: u64,
    ids: BatchedIdSet,
    /// Decoded endpoints this shard already admitted to the window's table: lets repeats
    /// skip the URL parse and the shared table lock.
    endpoints: HashSet<Box<str>>,
}

impl Slot {
    fn new(window: u64) -> Self {
        Slot {
            window,
            ..Slot::default()
        }
    }

    fn is_empty(&self) -> bool {
        self.ids.is_empty() && self.endpoints.is_empty()
    }
}

#[derive(Debug, Default)]
struct Shard {
    /// The newest window this shard has seen.
    current: Slot,
    /// Older windows not collected yet: normally empty, briefly one entry after a boundary.
    older: Vec<Slot>,
    /// Windows up to and including this one have been sealed; records for them are late.
    collected_upto: Option<u64>,
    /// Set once at shutdown: nothing more is recorded.
    closed: bool,
    /// Records refused as late since the collector last asked.
    late: u64,
}

impl Shard {
    fn slot(&mut self, window: u64) -> &mut Slot {
        if window > self.current.window {
            let previous = mem::replace(&mut self.current, Slot::new(window));
            if !previous.is_empty() {
                self.older.push(previous);
            }
            return &mut self.current;
        }
        if window == self.current.window {
            return &mut self.current;
        }
        let at = match self.older.iter().position(|s| s.window == window) {
            Some(at) => at,
            None => {
                self.older.push(Slot::new(window));
                self.older.len() - 1
            }
        };
        &mut self.older[at]
    }

    /// Takes the ids recorded in `window` so far, leaving its slot (and its endpoint cache) in
    /// place: the request path goes on recording into an empty set.
    ///
    /// The slot's batch (at most [`crate::ids::BATCH`] ids) is flushed here, under the lock,
    /// so that its buffer stays with the slot: the request path never allocates a new one.
    fn take_ids(&mut self, window: u64) -> Vec<IdSet> {
        let current = (self.current.window == window).then_some(&mut self.current);
        current
            .into_iter()
            .chain(self.older.iter_mut().filter(|o| o.window == window))
            .map(|slot| slot.ids.take_set())
            .collect()
    }

    /// Marks `window` collected and removes its slot, and any older one, which can never be
    /// recorded again. The caller flushes and frees them after releasing the lock, so the
    /// worker that owns this shard waits only for the removal.
    fn take(&mut self, window: u64) -> (Option<Slot>, Vec<Slot>) {
        self.collected_upto = Some(self.collected_upto.map_or(window, |c| c.max(window)));
        let mut taken = None;
        if self.current.window == window {
            taken = Some(mem::replace(&mut self.current, Slot::new(window)));
        }
        let mut stale = Vec::new();
        let mut i = 0;
        while i < self.older.len() {
            if self.older[i].window <= window {
                let slot = self.older.swap_remove(i);
                if slot.window == window {
                    taken = Some(slot);
                } else {
                    stale.push(slot);
                }
            } else {
                i += 1;
            }
        }
        (taken, stale)
    }
}

/// What the collector gets when it seals a window.
#[derive(Debug, Default)]
pub struct Sealed {
    /// One set per shard.
    pub parts: Vec<IdSet>,
    /// Records refused as late (for any window) since the previous seal.
    pub late: u64,
    /// The distinct endpoints named in the window.
    pub endpoints: Vec<String>,
    /// The ids earlier [`Shards::drain`]s of the window handed out (cluster mode); `parts`
    /// hold only what was recorded after the last drain.
    pub drained: IdSet,
}

/// What a [`Shards::drain`] hands out.
#[derive(Debug, Default)]
pub struct Drained {
    /// Ids of the window no earlier drain handed out (or, with `everything`, all so far).
    pub ids: IdSet,
    /// Endpoints of the window no earlier drain handed out (or all so far).
    pub endpoints: Vec<String>,
}

/// What the drains of each window not sealed yet have handed out so far: normally the open
/// window only, and for the settling delay after a boundary also the one before it (the
/// cluster thread drains the new window while the old one waits for its seal).
#[derive(Debug, Default)]
struct DrainLog {
    windows: BTreeMap<u64, WindowDrains>,
    /// Windows up to this one are sealed: draining them hands out nothing.
    sealed_upto: Option<u64>,
}

#[derive(Debug, Default)]
struct WindowDrains {
    ids: IdSet,
    endpoints: HashSet<String>,
}

/// All shards, plus the shared endpoint rules and table.
#[derive(Debug)]
pub struct Shards {
    shards: Box<[CachePadded<Mutex<Shard>>]>,
    policy: EndpointPolicy,
    table: EndpointTable,
    /// Taken before any shard lock, by the collector and the cluster thread only.
    drains: Mutex<DrainLog>,
}

fn lock(m: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    // A panic while holding the lock cannot leave a half-inserted bitmap that matters more
    // than losing the service: keep counting.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shards {
    pub fn new(count: usize, policy: EndpointPolicy, max_endpoints: usize) -> Self {
        Shards {
            shards: (0..count.max(1))
                .map(|_| CachePadded::new(Mutex::new(Shard::default())))
                .collect(),
            policy,
            table: EndpointTable::new(max_endpoints),
            drains: Mutex::new(DrainLog::default()),
        }
    }

    pub fn len(&self) -> usize {
        self.shards.len()
    }

    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
    }

    /// The shard of the calling thread (see the module doc). Threads are numbered in the
    /// order they first ask, so the first `len()` threads to record (the may workers) each get
    /// a shard of their own. The index must not be kept across a yield; a stale one is still
    /// correct, only possibly contended.
    #[inline]
    pub fn current(&self) -> usize {
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
        let mut s = lock(&self.shards[shard % self.shards.len()]);
        if s.closed {
            return Ok(Recorded::Closed);
        }
        if s.collected_upto.is_some_and(|c| window <= c) {
            s.late += 1;
            return Ok(Recorded::Late);
        }
        let slot = s.slot(window);
        let mut outcome = Recorded::Counted;
        if let Some(endpoint) = endpoint {
            if !slot.endpoints.contains(endpoint) {
                // First sighting in this window on this shard: the slow path (parse, policy,
                // shared table), at most once per endpoint, window and shard.
                let url = canonicalize(endpoint, &self.policy)?;
                match self.table.admit(window, url.as_str()) {
                    Admit::Full => outcome = Recorded::EndpointTableFull,
                    Admit::Added | Admit::Known => {
                        slot.endpoints.insert(endpoint.into());
                    }
                }
            }
        }
        slot.ids.insert(id);
        Ok(outcome)
    }

    /// Puts a saved window's ids and endpoints back (a restart inside the window, see
    /// [`crate::state`]), before any request is served. Returns the endpoints refused now: the
    /// allow-list or `--max-endpoints` may have changed since they were admitted.
    pub fn restore(&self, window: u64, ids: &IdSet, endpoints: &[String]) -> Vec<String> {
        lock(&self.shards[0]).slot(window).ids.union_with(ids);
        endpoints
            .iter()
            .filter(|e| {
                let admitted = canonicalize(e, &self.policy)
                    .is_ok_and(|url| self.table.admit(window, url.as_str()) != Admit::Full);
                !admitted
            })
            .cloned()
            .collect()
    }

    /// Seals `window` on every shard and returns its ids and endpoints. Called by the
    /// collector only, in window order, after the settling delay.
    pub fn seal(&self, window: u64) -> Sealed {
        let mut sealed = Sealed::default();
        let mut drains = self.drains.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(log) = drains.windows.remove(&window) {
            sealed.drained = log.ids;
        }
        // Older logs cannot be sealed any more (windows are sealed in order).
        drains.windows.retain(|w, _| *w > window);
        drains.sealed_upto = Some(drains.sealed_upto.map_or(window, |s| s.max(window)));
        for shard in self.shards.iter() {
            let (taken, stale) = {
                let mut s = lock(shard);
                sealed.late += mem::take(&mut s.late);
                s.take(window)
            };
            sealed
                .parts
                .push(taken.map(|slot| slot.ids.into_set()).unwrap_or_default());
            drop(stale);
        }
        // After every shard is sealed no request can add an endpoint to this window: a
        // request admits its endpoint while it holds its shard's lock.
        sealed.endpoints = self.table.take(window);
        sealed
    }

    /// Cluster mode, during a window: takes what the shards recorded in `window` since the
    /// last drain and returns the ids and endpoints no earlier drain returned (with
    /// `everything`, all of them so far: a shipment to a Redis that may have lost the earlier
    /// ones). `None` once the window is sealed. Each worker's lock is held only to swap its
    /// set for an empty one; the union and the difference are computed outside it.
    pub fn drain(&self, window: u64, everything: bool) -> Option<Drained> {
        let mut drains = self.drains.lock().unwrap_or_else(PoisonError::into_inner);
        if drains.sealed_upto.is_some_and(|s| window <= s) {
            return None;
        }
        let mut parts = Vec::new();
        for shard in self.shards.iter() {
            let taken = lock(shard).take_ids(window);
            parts.extend(taken);
        }
        let log = drains.windows.entry(window).or_default();
        let mut fresh = IdSet::union_all_pausing(parts, &mut std::thread::yield_now);
        fresh.subtract(&log.ids);
        log.ids.union_with(&fresh);
        let mut endpoints = Vec::new();
        for endpoint in self.table.snapshot(window) {
            if everything || !log.endpoints.contains(&endpoint) {
                endpoints.push(endpoint.clone());
            }
            log.endpoints.insert(endpoint);
        }
        let ids = if everything { log.ids.clone() } else { fresh };
        Some(Drained { ids, endpoints })
    }

    /// Refuses every later record (shutdown). The windows still open are sealed afterwards
    /// with [`Shards::seal`], so a request is either counted and reported or refused.
    pub fn close(&self) {
        for shard in self.shards.iter() {
            lock(shard).closed = true;
        }
    }

    /// The newest window any shard holds ids for: at shutdown, the collector seals every
    /// window up to it.
    pub fn newest_window(&self) -> Option<u64> {
        self.shards
            .iter()
            .filter_map(|shard| {
                let s = lock(shard);
                let newest_older = s
                    .older
                    .iter()
                    .filter(|o| !o.is_empty())
                    .map(|o| o.window)
                    .max();
                let current = (!s.current.is_empty()).then_some(s.current.window);
                newest_older.max(current)
            })
            .max()
    }

    /// Distinct ids recorded so far in `window` (the `verve_window_unique_ids` gauge). Each
    /// shard's part is copied under its lock and merged after the lock is released, so a
    /// scrape delays a worker only by the copy (a few milliseconds at millions of ids), not by
    /// the union; scrapes are rare.
    ///
    /// Called from a connection coroutine: the drain log's lock, which the cluster thread
    /// holds while it drains (a millisecond or so each second), is only tried, and `pause`
    /// (a coroutine yield) runs between tries instead of blocking the worker thread.
    pub fn unique_so_far(&self, window: u64, pause: &mut dyn FnMut()) -> u64 {
        let drains = loop {
            match self.drains.try_lock() {
                Ok(guard) => break guard,
                Err(TryLockError::Poisoned(p)) => break p.into_inner(),
                Err(TryLockError::WouldBlock) => pause(),
            }
        };
        let mut acc = IdSet::new();
        for shard in self.shards.iter() {
            let parts: Vec<IdSet> = {
                let mut s = lock(shard);
                let s = &mut *s;
                let current = (s.current.window == window).then_some(&mut s.current);
                current
                    .into_iter()
                    .chain(s.older.iter_mut().filter(|o| o.window == window))
                    .map(|slot| slot.ids.set().clone())
                    .collect()
            };
            for part in &parts {
                acc.union_with(part);
            }
        }
        // Cluster mode: add what drains took out of the shards, without copying it.
        if let Some(log) = drains.windows.get(&window) {
            acc.subtract(&log.ids);
            return acc.len() + log.ids.len();
        }
        acc.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock, Windows};
    use std::sync::Arc;
    use std::time::Duration;

    fn shards(n: usize) -> Shards {
        Shards::new(n, EndpointPolicy::default(), 2)
    }

    fn count(sealed: &Sealed) -> u64 {
        IdSet::union_all(sealed.parts.clone()).len()
    }

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
    fn a_record_after_its_window_was_sealed_is_refused_and_counted_as_late() {
        let s = shards(2);
        s.record(0, 10, 1, None).unwrap();
        assert_eq!(count(&s.seal(10)), 1);
        assert_eq!(s.record(0, 10, 2, None), Ok(Recorded::Late));
        assert_eq!(s.record(1, 9, 2, None), Ok(Recorded::Late));
        assert_eq!(s.record(1, 11, 3, None), Ok(Recorded::Counted));
        let next = s.seal(11);
        assert_eq!(next.late, 2);
        assert_eq!(count(&next), 1);
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
        assert_eq!(sealed.parts.len(), 3);
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
        assert_eq!(s.unique_so_far(3, &mut || {}), 5);
        assert_eq!(count(&s.seal(3)), 5);
    }

    #[test]
    fn drains_hand_out_each_id_once_and_the_seal_still_sees_the_whole_window() {
        let s = Shards::new(2, EndpointPolicy::default(), 10);
        s.record(0, 7, 1, Some("http://a.test/")).unwrap();
        s.record(1, 7, 2, None).unwrap();
        let first = s.drain(7, false).unwrap();
        assert_eq!(first.ids.iter().collect::<Vec<_>>(), [1, 2]);
        assert_eq!(first.endpoints, ["http://a.test/"]);
        // Repeats of drained ids are not handed out again; new ones and a new endpoint are.
        s.record(0, 7, 2, None).unwrap();
        s.record(1, 7, 3, Some("http://a.test/")).unwrap();
        s.record(1, 7, 4, Some("http://b.test/")).unwrap();
        s.record(0, 8, 99, None).unwrap(); // the next window is not touched
        assert_eq!(s.unique_so_far(7, &mut || {}), 4);
        let second = s.drain(7, false).unwrap();
        assert_eq!(second.ids.iter().collect::<Vec<_>>(), [3, 4]);
        assert_eq!(second.endpoints, ["http://b.test/"]);
        // Everything: what a fresh Redis must be sent again.
        s.record(0, 7, 5, None).unwrap();
        let all = s.drain(7, true).unwrap();
        assert_eq!(all.ids.iter().collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
        assert_eq!(all.endpoints.len(), 2);
        s.record(1, 7, 6, None).unwrap();
        // The next window opens and is drained before this one is sealed.
        s.record(0, 8, 98, None).unwrap();
        let early = s.drain(8, false).unwrap();
        assert_eq!(early.ids.iter().collect::<Vec<_>>(), [98, 99]);
        let sealed = s.seal(7);
        assert_eq!(sealed.drained.iter().collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
        assert_eq!(
            count(&sealed),
            1,
            "only 6 was recorded after the last drain"
        );
        assert_eq!(sealed.endpoints, ["http://a.test/", "http://b.test/"]);
        assert!(s.drain(7, false).is_none(), "sealed");
        assert!(s.drain(8, false).unwrap().ids.is_empty(), "drained already");
        assert_eq!(s.seal(8).drained.len(), 2);
    }

    #[test]
    fn close_refuses_later_records_but_keeps_what_was_counted() {
        let s = shards(2);
        s.record(0, 5, 1, None).unwrap();
        s.record(1, 6, 2, None).unwrap();
        s.close();
        assert_eq!(s.record(0, 6, 3, None), Ok(Recorded::Closed));
        assert_eq!(s.newest_window(), Some(6));
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
    fn restore_puts_ids_back_and_refuses_endpoints_no_longer_allowed() {
        let policy = EndpointPolicy::new(&["kept.test"]).unwrap();
        let s = Shards::new(2, policy, 10);
        let mut ids = IdSet::new();
        ids.insert(1);
        ids.insert(-7);
        let refused = s.restore(
            3,
            &ids,
            &["http://kept.test/a".into(), "http://gone.test/b".into()],
        );
        assert_eq!(refused, ["http://gone.test/b"]);
        s.record(1, 3, 1, None).unwrap();
        s.record(1, 3, 2, None).unwrap();
        let sealed = s.seal(3);
        assert_eq!(IdSet::union_all(sealed.parts).len(), 3);
        assert_eq!(sealed.endpoints, ["http://kept.test/a"]);
    }
}
