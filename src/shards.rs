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
//! **Merged off the request path.** A shard only buffers ids ([`IdBuffer`]: appends, and a
//! sort and pack per batch). The collector takes what the shards buffered at least once a
//! second ([`Shards::absorb`]) and merges it into the window's set, which only the collector
//! and the cluster thread touch. So the request path never waits on a merge, the
//! `verve_window_unique_ids` gauge is the merged set's length (a scrape reads an atomic),
//! and sealing a window merges at most the last second's ids.
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

use std::collections::{BTreeMap, HashSet};
use std::mem;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crossbeam_utils::CachePadded;

use crate::budget::{Charge, IdMemory, RESERVE_PER_ID};
use crate::endpoints::{canonicalize, Admit, EndpointPolicy, EndpointTable};
use crate::ids::{Builder, IdBuffer, IdSet};
use crate::query::QueryError;

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

/// One window's share of one shard.
#[derive(Debug, Default)]
struct Slot {
    window: u64,
    ids: IdBuffer,
    /// Decoded endpoints this shard already admitted to the window's table: lets repeats
    /// skip the URL parse and the shared table lock. At most `Shards::cache_cap` entries.
    endpoints: HashSet<Box<str>>,
    /// Bytes reserved for the ids in `ids` (see [`crate::budget`]).
    reserved: u64,
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
    /// Windows up to and including this one have been sealed; records for them go to the
    /// next one.
    collected_upto: Option<u64>,
    /// Set once at shutdown: nothing more is recorded.
    closed: bool,
    /// Records whose window was already sealed (counted in the next one) since the
    /// collector last asked.
    late: u64,
    /// Records refused for want of memory since the collector last asked.
    refused: u64,
    /// Budget bytes drawn and not reserved by an id yet.
    allowance: u64,
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

    /// Moves the runs recorded in `window` so far to `into`, leaving the slot (its buffer
    /// and endpoint cache) in place; returns the bytes their ids had reserved.
    ///
    /// The slot's batch (at most [`crate::ids::BATCH`] ids) is packed here, under the lock,
    /// so that its buffer stays with the slot: the request path never allocates a new one.
    fn take_runs(&mut self, window: u64, into: &mut Vec<IdSet>) -> u64 {
        let current = (self.current.window == window).then_some(&mut self.current);
        let mut reserved = 0;
        for slot in current
            .into_iter()
            .chain(self.older.iter_mut().filter(|o| o.window == window))
        {
            slot.ids.take_runs(into);
            reserved += mem::take(&mut slot.reserved);
        }
        reserved
    }

    /// Marks `window` collected and removes its slot, and any older one, which can never be
    /// recorded again. The caller packs and frees them after releasing the lock, so the
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
    /// Every id of the window on this instance.
    pub ids: IdSet,
    /// Cluster mode, once the window was drained: the ids no drain handed out (`None`: no
    /// drain ran, so none of `ids` was handed out).
    pub unshipped: Option<IdSet>,
    /// Records whose window was already sealed, counted in the oldest open window instead
    /// (for any window) since the previous seal.
    pub late: u64,
    /// Records refused for want of memory (any window) since the previous absorb or seal.
    pub refused: u64,
    /// The distinct endpoints named in the window.
    pub endpoints: Vec<String>,
    /// The budget bytes `ids` and `unshipped` hold until they are dropped.
    pub charge: Charge,
    /// With a state file ([`Shards::set_durable`]): the ids that no [`Shards::unsaved`]
    /// handed out yet, serialized (empty when there are none).
    pub unsaved: Vec<u8>,
}

/// What a [`Shards::drain`] hands out.
#[derive(Debug, Default)]
pub struct Drained {
    /// Ids of the window no earlier drain handed out (or, with `everything`, all so far).
    pub ids: IdSet,
    /// Endpoints of the window no earlier drain handed out (or all so far).
    pub endpoints: Vec<String>,
}

/// What an [`Shards::absorb`] found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Absorbed {
    /// Distinct ids of the window so far.
    pub unique: u64,
    /// Records refused for want of memory (any window) since the previous absorb or seal.
    pub refused: u64,
}

/// What [`Shards::unsaved`] hands out: what the state file lacks of a window.
#[derive(Debug, Default)]
pub struct Unsaved {
    /// Ids recorded since the last call, serialized (empty when none), possibly with some
    /// already saved: the journal's records are a union.
    pub ids: Vec<u8>,
    /// Endpoints first named since the last call.
    pub endpoints: Vec<String>,
}

/// The merged ids of one window not sealed yet.
#[derive(Debug, Default)]
struct Merged {
    /// With a state file: ids taken from the shards and saved, not merged into `ids` yet
    /// (the next absorb does, about once a second); and the bytes they had reserved.
    recent: Vec<IdSet>,
    recent_reserved: u64,
    /// Endpoints an [`Shards::unsaved`] handed out already.
    saved_endpoints: HashSet<String>,
    ids: IdSet,
    /// Cluster mode, from the first drain on: the ids merged since the last drain.
    unshipped: Option<IdSet>,
    /// Endpoints a drain handed out already.
    drained_endpoints: HashSet<String>,
    /// Budget bytes charged for `ids` and `unshipped`.
    charged: u64,
}

impl Merged {
    fn bytes(&self) -> u64 {
        (self.ids.heap_bytes() + self.unshipped.as_ref().map_or(0, IdSet::heap_bytes)) as u64
    }

    /// `runs` and the saved ids waiting to be merged, with the bytes they reserved.
    fn with_recent(&mut self, mut runs: Vec<IdSet>, reserved: u64) -> (Vec<IdSet>, u64) {
        runs.append(&mut self.recent);
        (runs, reserved + mem::take(&mut self.recent_reserved))
    }
}

/// The merged sets of each window not sealed yet: normally the open window only, and for
/// the settling delay after a boundary also the one before it.
#[derive(Debug, Default)]
struct MergedWindows {
    windows: BTreeMap<u64, Merged>,
    /// Windows up to this one are sealed: absorbing or draining them does nothing.
    sealed_upto: Option<u64>,
}

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

    /// Puts a saved window's ids and endpoints back (a restart inside the window, see
    /// [`crate::state`]), before any request is served. Returns the endpoints refused now: the
    /// allow-list or `--max-endpoints` may have changed since they were admitted. The ids
    /// are charged to the budget even past it: they were answered `ok` before the restart.
    pub fn restore(&self, window: u64, ids: IdSet, endpoints: &[String]) -> Vec<String> {
        {
            let mut merged = lock(&self.merged);
            let m = merged.windows.entry(window).or_default();
            m.ids = IdSet::union(mem::take(&mut m.ids), ids, None);
            self.settle(m, 0);
        }
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

    /// Charges the growth of `m`'s sets to the budget and gives back what the merged ids
    /// had `reserved`.
    fn settle(&self, m: &mut Merged, reserved: u64) {
        let bytes = m.bytes();
        self.memory.charge(bytes);
        self.memory.release(m.charged + reserved);
        m.charged = bytes;
    }

    /// Merges `runs` into `m`; in cluster mode after the first drain, also into the
    /// unshipped ids.
    fn merge(&self, m: &mut Merged, runs: Vec<IdSet>, reserved: u64) {
        let (runs, reserved) = m.with_recent(runs, reserved);
        let recent = IdSet::union_all(runs);
        let ids = mem::take(&mut m.ids);
        match m.unshipped.take() {
            None => m.ids = IdSet::union(ids, recent, None),
            Some(unshipped) => {
                let mut fresh = Builder::default();
                m.ids = IdSet::union(ids, recent, Some(&mut fresh));
                m.unshipped = Some(IdSet::union(unshipped, fresh.into_set(), None));
            }
        }
        self.settle(m, reserved);
    }

    /// Takes what every shard buffered for `window` and merges it into the window's set
    /// (with a state file, what [`Shards::unsaved`] took since the last absorb instead).
    /// The collector calls it about once a second for the open window; `None` once the
    /// window is sealed. Each worker's lock is held only to pack its last batch and move its
    /// runs out; the merge runs outside every shard lock.
    pub fn absorb(&self, window: u64) -> Option<Absorbed> {
        let mut merged = lock(&self.merged);
        if merged.sealed_upto.is_some_and(|s| window <= s) {
            return None;
        }
        let mut runs = Vec::new();
        let mut reserved = 0;
        let mut refused = 0;
        // With a state file the shards' ids reach the set only through `unsaved`, which
        // saves them first: an id merged unsaved would be missing from the file.
        let durable = self.durable.load(Relaxed);
        for shard in self.shards.iter() {
            let mut s = lock(shard);
            if !durable {
                reserved += s.take_runs(window, &mut runs);
            }
            refused += mem::take(&mut s.refused);
        }
        self.memory.count_refused(refused);
        let m = merged.windows.entry(window).or_default();
        self.merge(m, runs, reserved);
        Some(Absorbed {
            unique: m.ids.len(),
            refused,
        })
    }

    /// Seals `window` on every shard and returns its ids and endpoints. Called by the
    /// collector only, in window order, after the settling delay.
    pub fn seal(&self, window: u64) -> Sealed {
        let mut sealed = Sealed::default();
        let mut merged = lock(&self.merged);
        merged.sealed_upto = Some(merged.sealed_upto.map_or(window, |s| s.max(window)));
        let mut m = merged.windows.remove(&window).unwrap_or_default();
        // Older windows cannot be sealed any more (windows are sealed in order).
        let older: Vec<u64> = merged.windows.range(..window).map(|(w, _)| *w).collect();
        for w in older {
            if let Some(old) = merged.windows.remove(&w) {
                self.memory.release(old.charged);
            }
        }
        let mut slots = Vec::new();
        let mut refused = 0;
        for shard in self.shards.iter() {
            let mut s = lock(shard);
            sealed.late += mem::take(&mut s.late);
            refused += mem::take(&mut s.refused);
            let (taken, stale) = s.take(window);
            drop(s);
            slots.extend(taken);
            for slot in stale {
                self.memory.release(slot.reserved);
            }
        }
        self.memory.count_refused(refused);
        sealed.refused = refused;
        let mut runs = Vec::new();
        let mut reserved = 0;
        for mut slot in slots {
            slot.ids.take_runs(&mut runs);
            reserved += slot.reserved;
        }
        if self.durable.load(Relaxed) {
            let last = IdSet::union_all(runs);
            if !last.is_empty() {
                last.serialize_into(&mut sealed.unsaved);
            }
            runs = vec![last];
        }
        self.merge(&mut m, runs, reserved);
        // After every shard is sealed no request can add an endpoint to this window: a
        // request admits its endpoint while it holds its shard's lock.
        sealed.endpoints = self.table.take(window);
        sealed.charge = Charge::new(&self.memory, mem::take(&mut m.charged));
        sealed.ids = m.ids;
        sealed.unshipped = m.unshipped;
        sealed
    }

    /// With a state file, about twice a second for each window not sealed: takes what the
    /// shards recorded in `window` since the last call and returns it serialized, with the
    /// endpoints first named since, for the journal. The ids are merged into the window's
    /// set at the next absorb; only their union (the last half second's, small) is built
    /// here, so the cost does not grow with the window. `None` once the window is sealed.
    pub fn unsaved(&self, window: u64) -> Option<Unsaved> {
        let mut merged = lock(&self.merged);
        if merged.sealed_upto.is_some_and(|s| window <= s) {
            return None;
        }
        let mut runs = Vec::new();
        let mut reserved = 0;
        for shard in self.shards.iter() {
            reserved += lock(shard).take_runs(window, &mut runs);
        }
        let m = merged.windows.entry(window).or_default();
        let mut unsaved = Unsaved::default();
        let recent = IdSet::union_all(runs);
        if !recent.is_empty() {
            recent.serialize_into(&mut unsaved.ids);
            m.recent.push(recent);
        }
        m.recent_reserved += reserved;
        for endpoint in self.table.snapshot(window) {
            if !m.saved_endpoints.contains(&endpoint) {
                m.saved_endpoints.insert(endpoint.clone());
                unsaved.endpoints.push(endpoint);
            }
        }
        Some(unsaved)
    }

    /// Every id of each window not sealed that the state file holds, serialized (the merged
    /// set and the saved ids not merged yet), with the window: what a rewrite of the file
    /// needs. Ids the shards still buffer are not saved yet, and not included.
    pub fn saved_sets(&self) -> Vec<(u64, Vec<Vec<u8>>)> {
        let merged = lock(&self.merged);
        merged
            .windows
            .iter()
            .filter(|(w, _)| merged.sealed_upto.is_none_or(|s| **w > s))
            .map(|(&w, m)| {
                let sets = [&m.ids]
                    .into_iter()
                    .chain(&m.recent)
                    .filter(|set| !set.is_empty())
                    .map(|set| {
                        let mut bytes = Vec::with_capacity(set.serialized_size());
                        set.serialize_into(&mut bytes);
                        bytes
                    })
                    .collect();
                (w, sets)
            })
            .collect()
    }

    /// Cluster mode, during a window: merges what the shards recorded in `window` and returns
    /// the ids and endpoints no earlier drain returned (with `everything`, all of them so
    /// far: a shipment to a Redis that may have lost the earlier ones). `None` once the
    /// window is sealed.
    pub fn drain(&self, window: u64, everything: bool) -> Option<Drained> {
        self.absorb(window)?;
        let mut merged = lock(&self.merged);
        let m = merged.windows.get_mut(&window)?;
        let ids = match m.unshipped.replace(IdSet::new()) {
            Some(unshipped) if !everything => unshipped,
            // The first drain hands out everything so far.
            _ => m.ids.clone(),
        };
        self.settle(m, 0);
        let mut endpoints = Vec::new();
        for endpoint in self.table.snapshot(window) {
            if everything || !m.drained_endpoints.contains(&endpoint) {
                endpoints.push(endpoint.clone());
            }
            m.drained_endpoints.insert(endpoint);
        }
        Some(Drained { ids, endpoints })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock, Windows};
    use std::time::Duration;

    fn shards(n: usize) -> Shards {
        Shards::new(n, EndpointPolicy::default(), 2)
    }

    fn count(sealed: &Sealed) -> u64 {
        sealed.ids.len()
    }

    fn unique(s: &Shards, window: u64) -> u64 {
        s.absorb(window).unwrap().unique
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
        assert_eq!(unique(&s, 7), 4);
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
        assert_eq!(count(&sealed), 6);
        assert_eq!(
            sealed.unshipped.unwrap().iter().collect::<Vec<_>>(),
            [6],
            "only 6 was recorded after the last drain"
        );
        assert_eq!(sealed.endpoints, ["http://a.test/", "http://b.test/"]);
        assert!(s.drain(7, false).is_none(), "sealed");
        assert!(s.drain(8, false).unwrap().ids.is_empty(), "drained already");
        let eight = s.seal(8);
        assert_eq!(count(&eight), 2);
        assert!(eight.unshipped.unwrap().is_empty());
        // A window no drain touched has no unshipped part: all of it is unshipped.
        s.record(0, 9, 1, None).unwrap();
        assert_eq!(s.seal(9).unshipped, None);
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
    fn restore_puts_ids_back_and_refuses_endpoints_no_longer_allowed() {
        let policy = EndpointPolicy::new(&["kept.test"]).unwrap();
        let s = Shards::new(2, policy, 10);
        let ids = IdSet::from_ids([1, -7]);
        let refused = s.restore(
            3,
            ids,
            &["http://kept.test/a".into(), "http://gone.test/b".into()],
        );
        assert_eq!(refused, ["http://gone.test/b"]);
        s.record(1, 3, 1, None).unwrap();
        s.record(1, 3, 2, None).unwrap();
        let sealed = s.seal(3);
        assert_eq!(sealed.ids.len(), 3);
        assert_eq!(sealed.endpoints, ["http://kept.test/a"]);
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
    fn absorbing_merges_off_the_request_path_and_sealing_sees_everything() {
        let s = shards(2);
        for id in 0..5000 {
            s.record((id % 2) as usize, 4, id % 3000, None).unwrap();
        }
        assert_eq!(unique(&s, 4), 3000);
        for id in 2000..6000 {
            s.record((id % 2) as usize, 4, id, None).unwrap();
        }
        assert_eq!(unique(&s, 4), 6000);
        assert_eq!(count(&s.seal(4)), 6000);
        assert!(s.absorb(4).is_none(), "sealed");
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
