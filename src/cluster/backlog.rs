//! The cluster backlog: the sealed windows this instance still holds, keyed by window start,
//! until the cluster has reported them. Each window is in one [`Phase`], and moves between
//! phases only through the methods of [`Held`], one per event (a connection, a stored or
//! refused shipment, a count line written); the cluster thread ([`crate::cluster::node`])
//! does the Redis work and tells the window what came of it.
//!
//! A window's trouble with its keys in Redis (see [`Trouble`]) is apart from its phase: any
//! window may meet it, and it only delays the window, or after [`WINDOW_TRIES`] has it
//! reported by this instance alone.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::budget::Charge;
use crate::ids::IdSet;
use crate::report::{Scope, WindowReport};
use crate::sink::SealedWindow;

/// A window whose keys made a Redis operation fail is tried again after this long: a key
/// that an operator is replacing, or a script that was killed, gets a chance to be right.
pub const WINDOW_RETRY_EVERY: Duration = Duration::from_secs(1);
/// Failed tries after which a window is given up and reported by this instance alone: a
/// broken window costs a few seconds, and never holds up the windows after it.
pub const WINDOW_TRIES: u32 = 3;

/// Where a held window stands with the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Its last shipment is not stored on the current connection: it waits in the backlog
    /// (and counts against `--cluster-backlog`). `stored_before`: one was stored on an
    /// earlier connection, so a refusal now means the window was frozen after it arrived,
    /// not that this instance's ids are missing from the count.
    Unshipped { stored_before: bool },
    /// Its last shipment is in Redis: stored on this connection, or stored earlier and its
    /// whole re-shipment refused because the window is frozen or done. It may be led.
    Shipped,
    /// Its only last shipment was refused: the window's leader had read it before, and this
    /// instance's ids are not in the cluster's count. Reported by this instance alone.
    Refused,
    /// This instance led the window and wrote its count line with `count`, but has not
    /// marked it done in Redis yet: it marks it, and never writes the line again.
    /// `shipped` as for [`Phase::Shipped`]: a reconnect ships the window again first.
    Reported { count: u64, shipped: bool },
}

/// A window's failed tries on its keys in Redis, and when the next may be.
#[derive(Debug, Clone)]
pub struct Trouble {
    pub tries: u32,
    /// The last failure, on one line.
    pub why: String,
    pub retry_at: Instant,
}

/// A sealed window this instance still holds: until the cluster has reported it.
pub struct Held {
    pub window_start: u64,
    pub end_ms: u64,
    /// All of this instance's ids of the window: a reconnect ships them again.
    pub ids: IdSet,
    /// What the next shipment must carry; `None`: all of `ids`.
    unsent: Option<IdSet>,
    pub endpoints: Vec<String>,
    phase: Phase,
    trouble: Option<Trouble>,
    /// Taken up from the cluster's registry (see [`crate::cluster::orphans`]): this instance
    /// holds none of the window's ids, so it has nothing to ship, and never reports the
    /// window alone.
    adopted: bool,
    /// The `--max-memory` bytes `ids` and `unsent` hold, given back when the window goes.
    _charge: Charge,
}

impl Held {
    /// A window the collector sealed; `drained_here`: every shipment of its ids made while
    /// it was open went out on the current connection, so only the rest need go.
    pub fn sealed(sealed: SealedWindow, end_ms: u64, drained_here: bool) -> Held {
        Held {
            window_start: sealed.window_start,
            end_ms,
            ids: sealed.ids,
            unsent: if drained_here { sealed.unshipped } else { None },
            endpoints: sealed.endpoints,
            phase: Phase::Unshipped {
                stored_before: false,
            },
            trouble: None,
            adopted: false,
            _charge: sealed.charge,
        }
    }

    /// A window whose holders are all gone, taken up to be led from what Redis holds: no ids
    /// or endpoints of this instance, nothing to ship (see [`crate::cluster::orphans`]).
    pub fn adopt(window_start: u64, end_ms: u64) -> Held {
        Held {
            window_start,
            end_ms,
            ids: IdSet::new(),
            unsent: Some(IdSet::new()),
            endpoints: Vec::new(),
            phase: Phase::Shipped,
            trouble: None,
            adopted: true,
            _charge: Charge::default(),
        }
    }

    /// See [`Held::adopt`].
    pub fn is_adopted(&self) -> bool {
        self.adopted
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The report of this window with this instance's ids alone (`scope=local`), for a
    /// window the cluster could not count; or, for one this instance already reported with
    /// the cluster's count, that count: its line is written, and a second one with fewer
    /// ids would contradict it.
    pub fn alone(self) -> Result<WindowReport, u64> {
        if let Phase::Reported { count, .. } = self.phase {
            return Err(count);
        }
        Ok(WindowReport {
            window_start: self.window_start,
            unique_count: self.ids.len(),
            endpoints: self.endpoints,
            scope: Scope::Local,
        })
    }

    /// The ids the next shipment carries.
    pub fn to_ship(&self) -> &IdSet {
        self.unsent.as_ref().unwrap_or(&self.ids)
    }

    /// Its last shipment is in Redis as far as this connection knows (refused ones too: they
    /// wait for nothing more from Redis).
    pub fn is_shipped(&self) -> bool {
        match self.phase {
            Phase::Unshipped { .. } => false,
            Phase::Shipped | Phase::Refused => true,
            Phase::Reported { shipped, .. } => shipped,
        }
    }

    /// A last shipment of this instance was stored, on some connection.
    pub fn stored_before(&self) -> bool {
        match self.phase {
            Phase::Unshipped { stored_before } => stored_before,
            Phase::Shipped | Phase::Reported { .. } => true,
            Phase::Refused => false,
        }
    }

    /// The count this instance wrote for the window and has still to mark done.
    pub fn reported(&self) -> Option<u64> {
        match self.phase {
            Phase::Reported { count, .. } => Some(count),
            _ => None,
        }
    }

    /// A new connection: Redis may have restarted empty, so the window is shipped again,
    /// whole (an adopted window has nothing to ship).
    pub fn reconnected(&mut self) {
        if self.adopted {
            return;
        }
        self.unsent = None;
        self.phase = match self.phase {
            Phase::Shipped => Phase::Unshipped {
                stored_before: true,
            },
            Phase::Reported { count, .. } => Phase::Reported {
                count,
                shipped: false,
            },
            other => other,
        };
    }

    /// Its last shipment was stored: only ids drained later would still have to go.
    pub fn stored(&mut self) {
        self.unsent = Some(IdSet::new());
        self.phase = match self.phase {
            Phase::Reported { count, .. } => Phase::Reported {
                count,
                shipped: true,
            },
            _ => Phase::Shipped,
        };
    }

    /// Its last shipment was refused, the window being frozen or done. `found_stored`: Redis
    /// holds a last shipment of this instance that this one did not know of (its answer was
    /// lost with a connection). True when the window is now [`Phase::Refused`]: its ids are
    /// not in the cluster's count.
    ///
    /// A window whose last shipment was stored before is not refused: that shipment was in
    /// before the freeze, so the leader's read holds it. It stays until its `done` mark is
    /// seen: its leader may have lost Redis between the freeze and the mark, and then this
    /// instance, or the leader itself, must be able to take the window over.
    pub fn refused(&mut self, found_stored: bool) -> bool {
        self.phase = match self.phase {
            Phase::Reported { count, .. } => Phase::Reported {
                count,
                shipped: true,
            },
            Phase::Unshipped {
                stored_before: false,
            } if !found_stored => Phase::Refused,
            _ => Phase::Shipped,
        };
        self.phase == Phase::Refused
    }

    /// This instance, leading the window, wrote its count line with `count`.
    pub fn counted(&mut self, count: u64) {
        self.phase = Phase::Reported {
            count,
            shipped: true,
        };
    }

    /// Whether the window may be led now: shipped, not refused, not waiting out a retry.
    pub fn may_lead(&self, now: Instant) -> bool {
        self.is_shipped() && self.phase != Phase::Refused && self.may_try(now)
    }

    /// Whether the window is not waiting out a retry after trouble with its keys.
    pub fn may_try(&self, now: Instant) -> bool {
        self.trouble.as_ref().is_none_or(|t| t.retry_at <= now)
    }

    /// An operation on its keys failed with `why`: tried again after [`WINDOW_RETRY_EVERY`].
    /// Returns the tries so far.
    pub fn failed(&mut self, why: String, now: Instant) -> u32 {
        let tries = self.trouble.as_ref().map_or(0, |t| t.tries) + 1;
        self.trouble = Some(Trouble {
            tries,
            why,
            retry_at: now + WINDOW_RETRY_EVERY,
        });
        tries
    }

    /// The trouble of a window that failed [`WINDOW_TRIES`] times, which is given up.
    pub fn given_up(&self) -> Option<&Trouble> {
        self.trouble.as_ref().filter(|t| t.tries >= WINDOW_TRIES)
    }
}

/// The held windows, oldest first, each found by its start.
#[derive(Default)]
pub struct Backlog {
    windows: BTreeMap<u64, Held>,
}

impl Backlog {
    /// Holds `held`; gives it back if a window with its start is held already (the
    /// collector seals each window once, so only a bug does that).
    #[must_use]
    pub fn hold(&mut self, held: Held) -> Option<Held> {
        if self.windows.contains_key(&held.window_start) {
            return Some(held);
        }
        self.windows.insert(held.window_start, held);
        None
    }

    /// The held windows' starts, oldest first: a list to walk while windows go.
    pub fn starts(&self) -> Vec<u64> {
        self.windows.keys().copied().collect()
    }

    pub fn get(&self, start: u64) -> Option<&Held> {
        self.windows.get(&start)
    }

    pub fn get_mut(&mut self, start: u64) -> Option<&mut Held> {
        self.windows.get_mut(&start)
    }

    /// Lets the window go: its ids and their budget bytes are freed with it.
    pub fn remove(&mut self, start: u64) -> Option<Held> {
        self.windows.remove(&start)
    }

    /// The oldest window for which `pred` holds.
    pub fn oldest(&self, pred: impl Fn(&Held) -> bool) -> Option<u64> {
        self.windows
            .values()
            .find(|h| pred(h))
            .map(|h| h.window_start)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Held> {
        self.windows.values()
    }

    /// A new connection: every window goes again, whole (see [`Held::reconnected`]).
    pub fn reconnected(&mut self) {
        self.windows.values_mut().for_each(Held::reconnected);
    }

    /// The windows that wait for their last shipment: what `--cluster-backlog` bounds.
    pub fn unshipped(&self) -> usize {
        self.windows.values().filter(|h| !h.is_shipped()).count()
    }

    pub fn len(&self) -> usize {
        self.windows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }
}

/// The windows a stopping instance left to the others, kept until they are on Redis's disk
/// (see `cluster/linger.rs`).
pub struct Lingering {
    windows: Vec<Held>,
    /// When the last of them was shipped (again).
    shipped_at: Option<Instant>,
    /// How long they are kept after that: `LINGER`, or in tests long enough to fail Redis
    /// meanwhile.
    linger: Duration,
}

impl Lingering {
    pub fn new(linger: Duration) -> Lingering {
        Lingering {
            windows: Vec::new(),
            shipped_at: None,
            linger,
        }
    }

    /// Keeps `held`, handed over (and so shipped) at `now`.
    pub fn push(&mut self, held: Held, now: Instant) {
        self.windows.push(held);
        self.shipped_at = Some(now);
    }

    pub fn windows(&self) -> &[Held] {
        &self.windows
    }

    /// When the last window was handed over; `None`: none was.
    pub fn shipped_at(&self) -> Option<Instant> {
        self.shipped_at
    }

    pub fn linger(&self) -> Duration {
        self.linger
    }

    /// Lets them go: the ids and their budget bytes are freed.
    pub fn clear(&mut self) {
        self.windows.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(start: u64) -> Held {
        let sealed = SealedWindow {
            window: start / 60,
            window_start: start,
            ids: IdSet::from_ids(0..3),
            unshipped: Some(IdSet::from_ids(2..3)),
            endpoints: Vec::new(),
            charge: Charge::default(),
        };
        Held::sealed(sealed, (start + 60) * 1000, true)
    }

    const NEW: Phase = Phase::Unshipped {
        stored_before: false,
    };

    #[test]
    fn a_window_reported_once_is_never_reported_alone_even_after_a_reconnect() {
        // Not counted by the cluster: reported alone, with this instance's ids.
        let report = held(60).alone().unwrap();
        assert_eq!((report.unique_count, report.scope), (3, Scope::Local));
        // Counted and its line written, the `done` mark not yet in Redis, then cut off and
        // back (so no longer shipped, and counted against the backlog): still never alone.
        let mut h = held(120);
        h.counted(7);
        h.reconnected();
        assert!(!h.is_shipped());
        assert_eq!(h.alone().map(|r| r.unique_count), Err(7));
    }

    #[test]
    fn a_stored_window_is_shipped_again_whole_after_a_reconnect() {
        let mut h = held(60);
        assert_eq!(h.phase(), NEW);
        assert_eq!(h.to_ship().len(), 1, "only what the drains did not ship");
        h.stored();
        assert_eq!(h.phase(), Phase::Shipped);
        assert!(h.is_shipped() && h.to_ship().is_empty());
        h.reconnected();
        let again = Phase::Unshipped {
            stored_before: true,
        };
        assert_eq!(h.phase(), again);
        assert_eq!(h.to_ship().len(), 3);
        assert!(!h.is_shipped() && h.stored_before());
    }

    #[test]
    fn a_refused_first_shipment_is_refused_but_a_refused_reshipment_is_not() {
        let mut first = held(60);
        assert!(first.refused(false));
        assert_eq!(first.phase(), Phase::Refused);
        assert!(first.is_shipped() && !first.may_lead(Instant::now()));

        // Its answer lost with the connection, the first shipment is found in Redis.
        let mut lost_reply = held(60);
        assert!(!lost_reply.refused(true));
        assert_eq!(lost_reply.phase(), Phase::Shipped);

        let mut again = held(60);
        again.stored();
        again.reconnected();
        assert!(!again.refused(false), "stored before the freeze: kept");
        assert_eq!(again.phase(), Phase::Shipped);
        assert!(again.may_lead(Instant::now()));
    }

    #[test]
    fn a_window_whose_count_line_is_written_keeps_its_count_through_reconnects() {
        let mut h = held(60);
        h.stored();
        h.counted(7);
        assert_eq!(h.reported(), Some(7));
        h.reconnected();
        assert!(!h.is_shipped() && !h.may_lead(Instant::now()));
        assert!(!h.refused(false), "never reported alone once counted");
        assert_eq!(
            h.phase(),
            Phase::Reported {
                count: 7,
                shipped: true
            }
        );
        h.reconnected();
        h.stored();
        assert_eq!(h.reported(), Some(7));
        assert!(h.may_lead(Instant::now()));
    }

    #[test]
    fn trouble_delays_a_window_and_gives_it_up_after_the_tries() {
        let mut h = held(60);
        h.stored();
        let now = Instant::now();
        for try_ in 1..WINDOW_TRIES {
            assert_eq!(h.failed(format!("bad {try_}"), now), try_);
            assert!(!h.may_lead(now) && h.given_up().is_none());
            assert!(h.may_lead(now + WINDOW_RETRY_EVERY));
        }
        h.failed("last".into(), now);
        assert_eq!(h.given_up().map(|t| t.why.as_str()), Some("last"));
    }

    #[test]
    fn the_backlog_finds_windows_by_start_whatever_goes_before_them() {
        let mut b = Backlog::default();
        for start in [180, 60, 120] {
            assert!(b.hold(held(start)).is_none());
        }
        assert!(b.hold(held(120)).is_some(), "a window held twice");
        assert_eq!(b.starts(), vec![60, 120, 180]);
        b.get_mut(120).unwrap().stored();
        assert_eq!(b.unshipped(), 2);
        assert_eq!(b.oldest(|h| !h.is_shipped()), Some(60));
        assert!(b.remove(60).is_some());
        assert_eq!(b.get(120).unwrap().phase(), Phase::Shipped);
        assert_eq!(b.oldest(|h| !h.is_shipped()), Some(180));
        b.reconnected();
        assert_eq!(b.unshipped(), 2);
        assert_eq!(b.len(), 2);
    }
}
