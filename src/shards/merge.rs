//! The collector's side of the shards: the merged set of each window not sealed yet, and
//! what the collector and the cluster thread do with it: absorb what the shards buffered
//! (about once a second), hand out what the state file or the cluster lacks, seal a window
//! at its boundary, put a saved window back after a restart.

use std::collections::{BTreeMap, HashSet};
use std::mem;
use std::sync::atomic::Ordering::Relaxed;

use super::{lock, Shards};
use crate::budget::Charge;
use crate::endpoints::{canonicalize, Admit};
use crate::ids::{Builder, IdSet, Levels, Shape};

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
pub(super) struct Merged {
    /// With a state file: ids taken from the shards and saved, not merged into `ids` yet
    /// (the next absorb does, about once a second); and the bytes they had reserved.
    recent: Vec<IdSet>,
    recent_reserved: u64,
    /// Endpoints an [`Shards::unsaved`] handed out already.
    saved_endpoints: HashSet<String>,
    /// The merged ids, in disjoint levels so that an absorb costs what it adds, not what
    /// the window holds (see [`Levels`]); one set again at the seal.
    pub(super) ids: Levels,
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
pub(super) struct MergedWindows {
    pub(super) windows: BTreeMap<u64, Merged>,
    /// Windows up to this one are sealed: absorbing or draining them does nothing.
    pub(super) sealed_upto: Option<u64>,
    /// The shape of each window's levels (tests use small ones).
    pub(super) shape: Shape,
}

impl MergedWindows {
    /// The merged ids of `window`, created empty if there are none yet.
    fn window(&mut self, window: u64) -> &mut Merged {
        let shape = self.shape;
        self.windows.entry(window).or_insert_with(|| Merged {
            ids: Levels::with_shape(shape),
            ..Merged::default()
        })
    }
}

impl Shards {
    /// Puts a saved window's ids and endpoints back (a restart inside the window, see
    /// [`crate::state`]), before any request is served. Returns the endpoints refused now: the
    /// allow-list or `--max-endpoints` may have changed since they were admitted. The ids
    /// are charged to the budget even past it: they were answered `ok` before the restart.
    pub fn restore(&self, window: u64, ids: IdSet, endpoints: &[String]) -> Vec<String> {
        {
            let mut merged = lock(&self.merged);
            let m = merged.window(window);
            m.ids.insert_set(ids);
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

    /// Merges `runs` into `m`; in cluster mode after the first drain, the ids the window
    /// did not hold yet also into the unshipped ids.
    fn merge(&self, m: &mut Merged, runs: Vec<IdSet>, reserved: u64) {
        let (runs, reserved) = m.with_recent(runs, reserved);
        match m.unshipped.take() {
            None => {
                m.ids.absorb(runs, None);
            }
            Some(unshipped) => {
                let mut fresh = Builder::default();
                m.ids.absorb(runs, Some(&mut fresh));
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
        let m = merged.window(window);
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
        // The window is out of the map and marked sealed (an absorb, drain or save of it now
        // does nothing): making its levels one set, which takes time in proportion to the
        // window, need not hold up the cluster thread's drains of the next one.
        drop(merged);
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
        // One set again: the reporters, the cluster backlog and `scope=local` read it whole.
        sealed.ids = mem::take(&mut m.ids).into_set();
        sealed.unshipped = m.unshipped.take();
        let bytes =
            sealed.ids.heap_bytes() + sealed.unshipped.as_ref().map_or(0, IdSet::heap_bytes);
        self.memory.charge(bytes as u64);
        self.memory.release(m.charged);
        // After every shard is sealed no request can add an endpoint to this window: a
        // request admits its endpoint while it holds its shard's lock.
        sealed.endpoints = self.table.take(window);
        sealed.charge = Charge::new(&self.memory, bytes as u64);
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
        let m = merged.window(window);
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
    ///
    /// Merges in progress between the levels of a window are finished first, so that each
    /// level is written as one set: this rewrites the whole window anyway.
    pub fn saved_sets(&self) -> Vec<(u64, Vec<Vec<u8>>)> {
        let mut merged = lock(&self.merged);
        let sealed_upto = merged.sealed_upto;
        merged
            .windows
            .iter_mut()
            .filter(|(w, _)| sealed_upto.is_none_or(|s| **w > s))
            .map(|(&w, m)| {
                m.ids.settle();
                self.settle(m, 0);
                let sets = m
                    .ids
                    .sets()
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
            _ => m.ids.to_set(),
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
}

#[cfg(test)]
mod tests {
    use super::super::testing::{count, shards, unique};
    use super::*;
    use crate::endpoints::EndpointPolicy;

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

    /// Shards whose windows keep their ids in small levels, so that a test sees many levels
    /// and merges in progress.
    fn small_levels(n: usize) -> Shards {
        let s = Shards::new(n, EndpointPolicy::default(), 10);
        lock(&s.merged).shape = crate::ids::Shape {
            first: 200,
            growth: 3,
            min_step: 20,
            levels: 16,
        };
        s
    }

    #[test]
    fn across_many_absorbs_and_levels_counts_are_exact_and_drains_hand_out_each_id_once() {
        use std::collections::BTreeSet;
        let s = small_levels(3);
        let mut recorded = BTreeSet::new();
        let mut shipped = BTreeSet::new();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for round in 0..150u64 {
            for i in 0..(40 + round % 60) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // Random ids over the whole range, dense ones, and repeats of both.
                let id = match i % 4 {
                    0 => x as i64,
                    1 => (x % 5000) as i64 - 2500,
                    _ => *recorded.iter().nth((x % 97) as usize).unwrap_or(&7),
                };
                s.record((i % 3) as usize, 2, id, None).unwrap();
                recorded.insert(id);
            }
            if round % 3 == 0 {
                let drained = s.drain(2, false).unwrap();
                for id in drained.ids.iter() {
                    assert!(shipped.insert(id), "round {round}: {id} handed out twice");
                }
                assert_eq!(
                    shipped, recorded,
                    "round {round}: a drain hands out every new id"
                );
            } else {
                assert_eq!(unique(&s, 2), recorded.len() as u64, "round {round}");
            }
        }
        let depth = lock(&s.merged).windows[&2].ids.depth();
        assert!(depth >= 4, "{depth} levels");
        let sealed = s.seal(2);
        assert!(
            sealed.ids.iter().eq(recorded.iter().copied()),
            "the seal is the union"
        );
        let unshipped: Vec<i64> = sealed.unshipped.unwrap().iter().collect();
        let expected: Vec<i64> = recorded.difference(&shipped).copied().collect();
        assert_eq!(unshipped, expected);
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
}
