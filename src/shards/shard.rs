//! One worker's shard: a slot per window it has recorded into (normally one, briefly two
//! after a boundary), the ids buffered in each, and what the collector takes out of it.
//! Only its worker and, about once a second, the collector take its lock.

use std::collections::HashSet;
use std::mem;

use crate::ids::{IdBuffer, IdSet};

/// One window's share of one shard.
#[derive(Debug, Default)]
pub(super) struct Slot {
    pub(super) window: u64,
    pub(super) ids: IdBuffer,
    /// Decoded endpoints this shard already admitted to the window's table: lets repeats
    /// skip the URL parse and the shared table lock. At most `Shards::cache_cap` entries.
    pub(super) endpoints: HashSet<Box<str>>,
    /// Bytes reserved for the ids in `ids` (see [`crate::budget`]).
    pub(super) reserved: u64,
}

impl Slot {
    pub(super) fn new(window: u64) -> Self {
        Slot {
            window,
            ..Slot::default()
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.ids.is_empty() && self.endpoints.is_empty()
    }
}

#[derive(Debug, Default)]
pub(super) struct Shard {
    /// The newest window this shard has seen.
    pub(super) current: Slot,
    /// Older windows not collected yet: normally empty, briefly one entry after a boundary.
    pub(super) older: Vec<Slot>,
    /// Windows up to and including this one have been sealed; records for them go to the
    /// next one.
    pub(super) collected_upto: Option<u64>,
    /// Set once at shutdown: nothing more is recorded.
    pub(super) closed: bool,
    /// Records whose window was already sealed (counted in the next one) since the
    /// collector last asked.
    pub(super) late: u64,
    /// Records refused for want of memory since the collector last asked.
    pub(super) refused: u64,
    /// Budget bytes drawn and not reserved by an id yet.
    pub(super) allowance: u64,
}

impl Shard {
    pub(super) fn slot(&mut self, window: u64) -> &mut Slot {
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
    pub(super) fn take_runs(&mut self, window: u64, into: &mut Vec<IdSet>) -> u64 {
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
    pub(super) fn take(&mut self, window: u64) -> (Option<Slot>, Vec<Slot>) {
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
