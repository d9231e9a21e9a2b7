//! The cluster thread: one plain OS thread per instance that does all of its Redis work:
//! heartbeats, shipping (during the window and at its close), the backlog, and leading
//! windows. It owns the reporters in cluster mode: only the leader of a window writes its
//! count line and calls its endpoints.
//!
//! Each tick (every [`TICK`]) it:
//! 1. reconnects if Redis was lost (every [`RECONNECT_EVERY`]); a new connection re-ships
//!    every window it still holds in full, since Redis may have restarted empty;
//! 2. heartbeats every [`HEARTBEAT_EVERY`];
//! 3. every [`SHIP_EVERY`], drains the open window's new ids from the shards and ships them,
//!    which bounds what a hard crash loses to that interval;
//! 4. ships the last part of each sealed window, oldest first;
//! 5. asks to lead each shipped window; the leader reports it once it is ready (see
//!    `Node::ready`), then marks it done.
//!
//! Windows that cannot be shipped wait, with all their ids, in the backlog (at most
//! `--cluster-backlog`); the oldest one past that is reported by this instance alone, with
//! `scope=local` and a warning.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, Sender};
use redis::RedisResult;

use crate::budget::Charge;
use crate::clock::{rfc3339_secs, Clock, Windows};
use crate::cluster::conn::{self, Redis, Target};
use crate::cluster::store::{self, Keys, Lead, Shipment, Shipped};
use crate::health::Health;
use crate::ids::{IdSet, Union};
use crate::metrics::Metrics;
use crate::report::{Reporter, Scope, WindowReport};
use crate::shards::Shards;
use crate::sink::{SealedWindow, WindowSink};

/// How often the thread looks at its windows and the channel.
pub const TICK: Duration = Duration::from_millis(100);
/// How often the open window's new ids are shipped: what a hard crash can lose.
pub const SHIP_EVERY: Duration = Duration::from_secs(1);
pub const HEARTBEAT_EVERY: Duration = Duration::from_millis(500);
/// An instance silent for this long is not waited for. Well above the heartbeat period,
/// so that a slow Redis reply (up to [`conn::IO_TIMEOUT`]) or a long merge does not make a
/// working instance look dead.
pub const LIVE_TTL: Duration = Duration::from_secs(5);
/// A leader that stops renewing its lease (it died, or hangs) is replaced after this long.
pub const LEASE: Duration = Duration::from_secs(5);
pub const RECONNECT_EVERY: Duration = Duration::from_millis(500);

/// What the cluster thread needs to know.
#[derive(Debug, Clone)]
pub struct Settings {
    pub target: Target,
    pub keys: Keys,
    /// `--instance-id`.
    pub instance: String,
    /// `--cluster-grace`.
    pub grace: Duration,
    /// `--cluster-backlog`.
    pub backlog: usize,
    pub windows: Windows,
}

impl Settings {
    /// How long a window's keys live: long enough that a window shipped late from a full
    /// backlog still finds its `done` mark (and is refused rather than reported twice).
    fn key_ttl(&self) -> Duration {
        self.windows.len() * (self.backlog as u32 + 3) + self.grace + Duration::from_secs(60)
    }
}

enum Msg {
    Sealed(SealedWindow),
    Stop(Instant),
}

/// The [`WindowSink`] of cluster mode: hands sealed windows to the cluster thread, so the
/// collector never waits on Redis.
pub struct ClusterSink {
    tx: Sender<Msg>,
    thread: Option<JoinHandle<()>>,
}

impl ClusterSink {
    /// Starts the cluster thread; `reporter` receives the windows this instance leads (and
    /// those it has to report alone).
    pub fn start(
        settings: Settings,
        shards: Arc<Shards>,
        clock: Arc<dyn Clock>,
        reporter: Box<dyn Reporter>,
        metrics: Arc<Metrics>,
        health: &Health,
    ) -> std::io::Result<ClusterSink> {
        let (tx, rx) = unbounded();
        let node = Node {
            s: settings,
            shards,
            clock,
            reporter,
            metrics,
            redis: None,
            generation: 0,
            connected_at_ms: 0,
            next_connect: Instant::now(),
            outage_since: None,
            next_heartbeat: Instant::now(),
            next_drain: Instant::now() + SHIP_EVERY,
            open_shipped: None,
            windows: VecDeque::new(),
            published_backlog: 0,
            left: false,
            late_warned: None,
        };
        let guard = health.guard("verve-cluster");
        let thread = std::thread::Builder::new()
            .name("verve-cluster".into())
            .spawn(move || {
                let _guard = guard;
                node.run(rx)
            })?;
        Ok(ClusterSink {
            tx,
            thread: Some(thread),
        })
    }
}

impl WindowSink for ClusterSink {
    fn accept(&mut self, sealed: SealedWindow) {
        if let Err(e) = self.tx.send(Msg::Sealed(sealed)) {
            // Only if the thread died (a bug): say so rather than lose the window quietly.
            let Msg::Sealed(w) = e.0 else { return };
            log::error!(
                target: crate::report::count_log::TARGET,
                "window_start={} unique_count={} scope=local",
                rfc3339_secs(w.window_start),
                w.ids.len()
            );
        }
    }

    fn finish(&mut self, deadline: Instant) {
        let _ = self.tx.send(Msg::Stop(deadline));
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                log::error!("the cluster thread panicked");
            }
        }
    }
}

/// A sealed window this instance still holds: until the cluster has reported it.
struct Held {
    window_start: u64,
    end_ms: u64,
    /// All of this instance's ids of the window: a reconnect ships them again.
    ids: IdSet,
    /// What the next shipment must carry; `None`: all of `ids`.
    unsent: Option<IdSet>,
    endpoints: Vec<String>,
    /// The last shipment is stored, on the current connection.
    shipped: bool,
    /// ... on any connection.
    ever_shipped: bool,
    /// This instance wrote the window's count line with this count but could not mark it
    /// done yet: it does not write it again.
    reported: Option<u64>,
    /// The cluster had reported the window before any of this instance's ids reached Redis.
    refused: bool,
    /// The `--max-memory` bytes `ids` and `unsent` hold, given back when the window goes.
    _charge: Charge,
}

/// The cluster thread's state.
struct Node {
    s: Settings,
    shards: Arc<Shards>,
    clock: Arc<dyn Clock>,
    reporter: Box<dyn Reporter>,
    metrics: Arc<Metrics>,
    redis: Option<Redis>,
    /// Counts connections: shipments made on an earlier one may be gone.
    generation: u64,
    connected_at_ms: u64,
    next_connect: Instant,
    outage_since: Option<Instant>,
    next_heartbeat: Instant,
    next_drain: Instant,
    /// `(window, generation)`: every id drained from that open window so far was shipped
    /// on that connection.
    open_shipped: Option<(u64, u64)>,
    /// Sealed windows not reported yet, oldest first.
    windows: VecDeque<Held>,
    /// What this thread added to `verve_backlog_windows`.
    published_backlog: u64,
    /// Stopping: this instance has left the live set.
    left: bool,
    /// The last window whose late shipment was warned about (once per window).
    late_warned: Option<u64>,
}

/// Serializes `ids` for a shipment, in the id set's compact format
/// ([`IdSet::serialize_into`]); nothing for an empty set.
pub fn serialize(ids: &IdSet) -> Vec<u8> {
    let mut bytes = Vec::new();
    if !ids.is_empty() {
        ids.serialize_into(&mut bytes);
    }
    bytes
}

/// The union of a window's shipments (the leader's merge), and how many shipments could not
/// be read. Shipments in the compact format and in roaring's portable format (what earlier
/// versions shipped) are both read.
pub fn union_of_shipments(
    con: &mut dyn redis::ConnectionLike,
    keys: &Keys,
    window_start: u64,
) -> RedisResult<(IdSet, u64)> {
    union_of_shipments_pausing(con, keys, window_start, &mut |_| Ok(true))
        .map(|u| u.expect("never stopped"))
}

/// [`union_of_shipments`] with [`store::fetch_pausing`]'s `between`; `None` if it stopped.
pub fn union_of_shipments_pausing(
    con: &mut dyn redis::ConnectionLike,
    keys: &Keys,
    window_start: u64,
    between: &mut dyn FnMut(&mut dyn redis::ConnectionLike) -> RedisResult<bool>,
) -> RedisResult<Option<(IdSet, u64)>> {
    let mut union = Union::default();
    let mut unreadable = 0;
    let whole = store::fetch_pausing(
        con,
        keys,
        window_start,
        &mut |blob| match IdSet::deserialize(blob) {
            Ok(set) => union.add(set),
            Err(_) => unreadable += 1,
        },
        between,
    )?;
    Ok(whole.then(|| (union.into_set(), unreadable)))
}

impl Node {
    fn run(mut self, rx: Receiver<Msg>) {
        loop {
            match rx.recv_timeout(TICK) {
                Ok(Msg::Sealed(sealed)) => self.hold(sealed),
                Ok(Msg::Stop(deadline)) => return self.stop(deadline),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return self.stop(Instant::now() + Duration::from_secs(1))
                }
            }
            self.step(false);
        }
    }

    /// A window sealed by the collector joins the held windows.
    fn hold(&mut self, sealed: SealedWindow) {
        // The drains' shipments stand only if they all went out on this connection.
        let drained_here =
            self.redis.is_some() && self.open_shipped == Some((sealed.window, self.generation));
        let unsent = if drained_here { sealed.unshipped } else { None };
        self.windows.push_back(Held {
            window_start: sealed.window_start,
            end_ms: self.s.windows.end_ms(sealed.window),
            ids: sealed.ids,
            unsent,
            endpoints: sealed.endpoints,
            shipped: false,
            ever_shipped: false,
            reported: None,
            refused: false,
            _charge: sealed.charge,
        });
    }

    fn step(&mut self, stopping: bool) {
        if self.redis.is_none() && Instant::now() >= self.next_connect {
            self.connect();
        }
        if self.redis.is_some() {
            if let Err(e) = self.work(stopping) {
                self.lost(e.into());
            }
        }
        while let Some(i) = self.windows.iter().position(|h| h.refused) {
            self.report_alone(
                i,
                "the cluster had reported it before this instance's ids reached Redis (this \
                 instance started after the cluster reported it, or its clock is off by more \
                 than --cluster-grace)",
            );
        }
        self.overflow();
        self.publish_backlog();
    }

    fn connect(&mut self) {
        match conn::connect(&self.s.target) {
            Ok(redis) => {
                self.redis = Some(redis);
                self.generation += 1;
                self.connected_at_ms = self.clock.now_ms();
                self.next_heartbeat = Instant::now();
                // Redis may have restarted empty: everything held goes again, whole.
                for held in &mut self.windows {
                    held.shipped = false;
                    held.unsent = None;
                }
                if let Some(since) = self.outage_since.take() {
                    log::info!(
                        "Redis {} is back after {:.1} s; shipping {} held windows",
                        self.s.target.display(),
                        since.elapsed().as_secs_f64(),
                        self.windows.len()
                    );
                }
            }
            Err(e) => self.lost(e),
        }
    }

    /// A failed Redis operation: drop the connection and retry later. Logged once per outage.
    fn lost(&mut self, e: anyhow::Error) {
        self.metrics.redis_errors.fetch_add(1, Relaxed);
        self.redis = None;
        self.next_connect = Instant::now() + RECONNECT_EVERY;
        if self.outage_since.is_none() {
            self.outage_since = Some(Instant::now());
            log::warn!(
                "Redis {} is unavailable ({}): requests are still answered; up to {} sealed \
                 windows wait in the backlog until it is back",
                self.s.target.display(),
                conn::describe(&e),
                self.s.backlog
            );
        }
    }

    /// The Redis part of a tick.
    fn work(&mut self, stopping: bool) -> RedisResult<()> {
        let Some(redis) = self.redis.as_mut() else {
            return Ok(());
        };
        let con = redis.con();
        let keys = &self.s.keys;
        let instance = self.s.instance.as_str();
        let ttl_ms = self.s.key_ttl().as_millis() as u64;
        let now = Instant::now();
        if !stopping && now >= self.next_heartbeat {
            let ms = self.clock.now_ms();
            store::heartbeat(con, keys, instance, ms, LIVE_TTL.as_millis() as u64)?;
            self.next_heartbeat = now + HEARTBEAT_EVERY;
        }
        if !stopping && now >= self.next_drain {
            self.next_drain = now + SHIP_EVERY;
            let window = self
                .shards
                .open_window(self.s.windows.index_of(self.clock.now_ms()));
            let everything = self.open_shipped != Some((window, self.generation));
            if let Some(drained) = self.shards.drain(window, everything) {
                if !drained.ids.is_empty() || !drained.endpoints.is_empty() {
                    let bytes = serialize(&drained.ids);
                    let shipment = Shipment {
                        window_start: self.s.windows.start_secs(window),
                        instance,
                        ids: &bytes,
                        endpoints: &drained.endpoints,
                        last: false,
                        ttl_ms,
                    };
                    let shipped = store::ship(con, keys, &shipment)?;
                    self.metrics.cluster_shipments.fetch_add(1, Relaxed);
                    self.metrics
                        .cluster_shipped_bytes
                        .fetch_add(bytes.len() as u64, Relaxed);
                    if shipped == Shipped::TooLate
                        && self.late_warned != Some(shipment.window_start)
                    {
                        self.late_warned = Some(shipment.window_start);
                        late(&self.metrics, shipment.window_start, drained.ids.len());
                    }
                }
                self.open_shipped = Some((window, self.generation));
            }
        }
        // The last shipment of each sealed window, oldest first.
        let mut i = 0;
        while i < self.windows.len() {
            let held = &mut self.windows[i];
            if held.shipped {
                i += 1;
                continue;
            }
            let bytes = serialize(held.unsent.as_ref().unwrap_or(&held.ids));
            let shipped = store::ship(
                con,
                keys,
                &Shipment {
                    window_start: held.window_start,
                    instance,
                    ids: &bytes,
                    endpoints: &held.endpoints,
                    last: true,
                    ttl_ms,
                },
            )?;
            self.metrics.cluster_shipments.fetch_add(1, Relaxed);
            self.metrics
                .cluster_shipped_bytes
                .fetch_add(bytes.len() as u64, Relaxed);
            match shipped {
                Shipped::Stored => {
                    held.shipped = true;
                    held.ever_shipped = true;
                    held.unsent = Some(IdSet::new());
                    i += 1;
                }
                Shipped::TooLate if !held.ever_shipped && held.reported.is_none() => {
                    // Reported already, without any of this instance's ids: they are not lost
                    // silently but reported alone, after this tick (see `step`).
                    if self.late_warned != Some(held.window_start) {
                        self.late_warned = Some(held.window_start);
                        late(&self.metrics, held.window_start, held.ids.len());
                    }
                    held.refused = true;
                    held.shipped = true;
                    i += 1;
                }
                Shipped::TooLate => {
                    // Reported already, and this instance's ids had got there in time.
                    self.windows.remove(i).expect("index in range");
                }
            }
        }
        if stopping && !self.left && self.windows.iter().all(|h| h.shipped) {
            // Leaders stop waiting for this instance at once.
            store::leave(con, keys, instance)?;
            self.left = true;
        }
        self.lead(stopping)
    }

    /// Asks to lead each shipped window and reports those it leads that are ready.
    fn lead(&mut self, stopping: bool) -> RedisResult<()> {
        let lease_ms = LEASE.as_millis() as u64;
        let mut i = 0;
        while i < self.windows.len() {
            if !self.windows[i].shipped || self.windows[i].refused {
                i += 1;
                continue;
            }
            let start = self.windows[i].window_start;
            let Some(redis) = self.redis.as_mut() else {
                return Ok(());
            };
            let con = redis.con();
            let (keys, instance) = (&self.s.keys, self.s.instance.as_str());
            if stopping && self.left {
                let others =
                    store::live(con, keys, self.clock.now_ms(), LIVE_TTL.as_millis() as u64)?;
                if !others.is_empty() {
                    // Left to the instances still running; they need not wait for the lease.
                    store::release(con, keys, start, instance)?;
                    log::info!(
                        "window {} is left to {} other live instances",
                        rfc3339_secs(start),
                        others.len()
                    );
                    self.drop_window(i);
                    continue;
                }
            }
            match store::lead(con, keys, start, instance, lease_ms)? {
                Lead::Done(_) => {
                    self.drop_window(i);
                    continue;
                }
                Lead::Waiting => {}
                Lead::Leading => {
                    if let Some(count) = self.windows[i].reported {
                        self.finish(i, count)?;
                        continue;
                    }
                    if self.ready(i, stopping)? && self.report(i)? {
                        continue;
                    }
                }
            }
            i += 1;
        }
        Ok(())
    }

    /// Whether the leader may report window `i` now: every live instance has made its last
    /// shipment of it, or `--cluster-grace` has passed since it closed. Right after a
    /// (re)connect the live set is not trusted for a grace period: after an outage the other
    /// instances need time to come back, heartbeat and ship. At shutdown, an instance that is
    /// the last one alive reports at once, as a single instance does.
    fn ready(&mut self, i: usize, stopping: bool) -> RedisResult<bool> {
        if stopping && self.left {
            return Ok(true);
        }
        let held = &self.windows[i];
        let now = self.clock.now_ms();
        let grace = self.s.grace.as_millis() as u64;
        if now < held.end_ms || now < self.connected_at_ms + grace {
            return Ok(false);
        }
        if now >= held.end_ms + grace {
            return Ok(true);
        }
        let Some(redis) = self.redis.as_mut() else {
            return Ok(false);
        };
        let con = redis.con();
        let live = store::live(con, &self.s.keys, now, LIVE_TTL.as_millis() as u64)?;
        let shipped = store::shipped(con, &self.s.keys, held.window_start)?;
        Ok(live.iter().all(|i| shipped.binary_search(i).is_ok()))
    }

    /// The leader's report: union of every shipment, the count line and the endpoint calls
    /// (through the reporters), then the `done` mark. True when the window is finished with.
    fn report(&mut self, i: usize) -> RedisResult<bool> {
        let Some(redis) = self.redis.as_mut() else {
            return Ok(false);
        };
        let con = redis.con();
        let (keys, instance) = (&self.s.keys, self.s.instance.as_str());
        let start = self.windows[i].window_start;
        // A merge of many shipments can take a while (1.4 s for 10 x 1M ids in 600
        // shipments): keep the lease and the heartbeat fresh meanwhile.
        let mut last = Instant::now();
        let clock = &self.clock;
        let mut between = |con: &mut dyn redis::ConnectionLike| -> RedisResult<bool> {
            if last.elapsed() < HEARTBEAT_EVERY {
                return Ok(true);
            }
            last = Instant::now();
            let ttl = LIVE_TTL.as_millis() as u64;
            store::heartbeat(con, keys, instance, clock.now_ms(), ttl)?;
            store::renew(con, keys, start, instance, LEASE.as_millis() as u64)
        };
        let Some((union, unreadable)) = union_of_shipments_pausing(con, keys, start, &mut between)?
        else {
            return Ok(false); // lost the lease meanwhile
        };
        if unreadable > 0 {
            self.metrics.redis_errors.fetch_add(unreadable, Relaxed);
            log::error!(
                "window {}: {unreadable} shipments in Redis are not id sets and were \
                 skipped (is another program writing under --redis-prefix?)",
                rfc3339_secs(start)
            );
        }
        let endpoints = store::endpoints(con, keys, start)?;
        // The last check before the count goes out: still the leader, still not reported.
        if !store::renew(con, keys, start, instance, LEASE.as_millis() as u64)? {
            return Ok(false);
        }
        let count = union.len();
        drop(union);
        self.reporter.report(&WindowReport {
            window_start: start,
            unique_count: count,
            endpoints,
            scope: Scope::Global,
        });
        self.windows[i].reported = Some(count);
        self.finish(i, count)?;
        Ok(true)
    }

    /// Marks window `i` done and lets it go.
    fn finish(&mut self, i: usize, count: u64) -> RedisResult<()> {
        let Some(redis) = self.redis.as_mut() else {
            return Ok(());
        };
        let start = self.windows[i].window_start;
        let ttl_ms = self.s.key_ttl().as_millis() as u64;
        let kept = store::finish(
            redis.con(),
            &self.s.keys,
            start,
            &self.s.instance,
            count,
            ttl_ms,
        )?;
        if !kept {
            log::warn!(
                "window {}: the lease ran out while this instance reported it; another \
                 instance may report it too",
                rfc3339_secs(start)
            );
        }
        self.drop_window(i);
        Ok(())
    }

    fn drop_window(&mut self, i: usize) {
        // Its ids and their budget bytes are freed here.
        self.windows.remove(i);
    }

    /// Past `--cluster-backlog` unshipped windows, the oldest is reported by this instance
    /// alone; so is a window the cluster never reported before its keys expired.
    fn overflow(&mut self) {
        let now = self.clock.now_ms();
        let ttl = self.s.key_ttl().as_millis() as u64;
        let expired = self
            .windows
            .iter()
            .position(|h| h.shipped && now > h.end_ms + ttl);
        if let Some(i) = expired {
            self.report_alone(i, "the cluster did not report it before its keys expired");
        }
        while self.windows.iter().filter(|h| !h.shipped).count() > self.s.backlog {
            let oldest = self
                .windows
                .iter()
                .position(|h| !h.shipped)
                .expect("counted above");
            self.report_alone(
                oldest,
                "it fell off the --cluster-backlog before Redis came back",
            );
        }
    }

    /// Reports window `i` with this instance's ids only (`scope=local`).
    fn report_alone(&mut self, i: usize, why: &str) {
        let Some(held) = self.windows.remove(i) else {
            return;
        };
        log::warn!(
            "window {}: {why}; reporting this instance's {} ids alone (scope=local)",
            rfc3339_secs(held.window_start),
            held.ids.len()
        );
        self.metrics.cluster_local_windows.fetch_add(1, Relaxed);
        self.reporter.report(&WindowReport {
            window_start: held.window_start,
            unique_count: held.ids.len(),
            endpoints: held.endpoints,
            scope: Scope::Local,
        });
    }

    fn publish_backlog(&mut self) {
        let now = self.windows.iter().filter(|h| !h.shipped).count() as u64;
        if now > self.published_backlog {
            self.metrics
                .backlog_windows
                .fetch_add(now - self.published_backlog, Relaxed);
        } else {
            self.metrics
                .backlog_windows
                .fetch_sub(self.published_backlog - now, Relaxed);
        }
        self.published_backlog = now;
    }

    /// Shutdown: ship what is held, leave the live set, report what this instance leads if
    /// it is the last one alive, until `deadline`. A window still unshipped then is reported
    /// alone (`scope=local`): nothing counted is dropped silently.
    fn stop(mut self, deadline: Instant) {
        while !self.windows.is_empty() && Instant::now() < deadline {
            self.step(true);
            if self.windows.is_empty() {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            std::thread::sleep(TICK.min(left));
        }
        if let Some(redis) = self.redis.as_mut() {
            if !self.left {
                let _ = store::leave(redis.con(), &self.s.keys, &self.s.instance);
            }
        }
        while let Some(i) = self.windows.iter().position(|h| !h.shipped) {
            self.report_alone(i, "Redis was unavailable at shutdown");
        }
        for held in &self.windows {
            log::warn!(
                "window {} is in Redis but no instance is left to report it; the next instance \
                 of this cluster will not see it",
                rfc3339_secs(held.window_start)
            );
        }
        self.publish_backlog();
        self.reporter.finish(deadline);
    }
}

/// A shipment refused because its window had been reported: those ids are not in the
/// cluster's count. Said, and counted.
fn late(metrics: &Metrics, window_start: u64, ids: u64) {
    if ids == 0 {
        return;
    }
    metrics.cluster_late_windows.fetch_add(1, Relaxed);
    log::warn!(
        "window {}: {ids} ids reached Redis after the cluster reported the window and are not \
         in its count (this instance started after the report, or its clock or shipping is \
         later than --cluster-grace allows)",
        rfc3339_secs(window_start)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_union_of_many_sets_is_exact_whatever_their_number() {
        for k in [0u64, 1, 2, 3, 7, 8, 9, 100] {
            let mut union = Union::default();
            for i in 0..k {
                // Overlapping runs, some above 2^32.
                union.add(IdSet::from_ids(
                    (i as i64 * 10..i as i64 * 10 + 20).chain([(i as i64 + 1) << 40]),
                ));
            }
            let expected = if k == 0 { 0 } else { k * 10 + 10 + k };
            let got = union.into_set();
            assert_eq!(got.len(), expected, "k = {k}");
        }
    }
}
