//! The cluster thread: one plain OS thread per instance that does all of its Redis work:
//! heartbeats, shipping (during the window and at its close), the backlog, and leading
//! windows. It owns the reporters in cluster mode: only the leader of a window writes its
//! count line and calls its endpoints.
//!
//! Each tick (every [`TICK`]) it:
//! 1. reconnects if Redis was lost (every [`RECONNECT_EVERY`]); a new connection re-ships
//!    every window it still holds in full, since Redis may have restarted empty;
//! 2. heartbeats every [`HEARTBEAT_EVERY`], and checks that the prefix is still claimed for
//!    this key layout and this `--interval`;
//! 3. every [`SHIP_EVERY`], drains the open window's new ids from the shards and ships them,
//!    which bounds what a hard crash loses to that interval;
//! 4. ships the last part of each sealed window, oldest first;
//! 5. with Kafka, tends the records of reported windows that the broker has not acknowledged
//!    yet (see [`RecordHandoff`]): renews its own, takes over those whose owner is gone;
//! 6. asks to lead each shipped window; the leader reports it once it is ready (see
//!    `Node::ready`): it freezes the window, reads every shipment, checks the endpoints,
//!    writes the count line, then marks the window done. An instance that finds a window
//!    done by another leader hands that count to the history of reported windows
//!    ([`crate::status`]), so that every instance lists the cluster's counts.
//!
//! Windows that cannot be shipped wait, with all their ids, in the backlog (at most
//! `--cluster-backlog`); the oldest one past that is reported by this instance alone, with
//! `scope=local` and a warning.
//!
//! **What Redis holds is untrusted.** A Redis error that is about the keys a command touched
//! (a key of another type, a value verve does not write; see [`conn::is_outage`]) costs that
//! window alone: it is logged, counted in `verve_redis_errors_total`, tried again every
//! [`WINDOW_RETRY_EVERY`], and after [`WINDOW_TRIES`] failures the window is reported by this
//! instance alone (`scope=local`) while later windows go on. Only an outage (Redis
//! unreachable, loading, refusing this user, ...) makes every window wait. Trouble with the
//! deployment's shared keys (`P:live`, `P:interval`, `P:layout`) is logged and counted but
//! stops no window: without heartbeats the leader waits for the grace.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, Sender};

use crate::clock::{rfc3339_secs, Clock};
use crate::cluster::backlog::{Backlog, Held, Lingering, Phase};
use crate::cluster::conn::{self, Redis};
use crate::cluster::done_marks::DoneMarks;
use crate::cluster::failure::Failure;
use crate::cluster::handoff::Records;
use crate::cluster::keys::LAYOUT;
use crate::cluster::merge::Counter;
use crate::cluster::orphans::Orphans;
use crate::cluster::presence::{self, Layout};
use crate::cluster::store::{self, Interval};
use crate::cluster::tally::Tally;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::report::{count_log, Reporter, Scope};
use crate::shards::Shards;
use crate::sink::{SealedWindow, WindowSink};
use crate::status::Status;

pub use crate::cluster::backlog::{WINDOW_RETRY_EVERY, WINDOW_TRIES};
pub use crate::cluster::handoff::RecordHandoff;
pub use crate::cluster::settings::{
    key_ttl, Settings, HEARTBEAT_EVERY, LEASE, LINGER, LIVE_TTL, RECONNECT_EVERY, SHIP_EVERY, TICK,
};

/// What the cluster thread shares with the rest of the process.
pub struct Shared {
    /// The workers' id shards: the open window's ids are shipped from them as they come.
    pub shards: Arc<Shards>,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
}

/// What [`ClusterSink::start`] takes beyond what it needs in every setting: each has a
/// default ([`Extras::default`]).
pub struct Extras {
    /// How a partition's tally is counted: [`Tally::count`], or in tests a count that
    /// lasts as long as the test wants.
    pub counter: Counter,
    /// The Kafka producer's side of record hand-overs, when `--kafka-brokers` is set.
    pub records: Option<Box<dyn RecordHandoff>>,
    /// The status page this instance serves: the windows the cluster reported join its
    /// history, and it shows the link to Redis (`None`: no page, in tests).
    pub status: Option<Arc<Status>>,
    /// How long a stopping instance keeps the windows it handed over: [`LINGER`], or in
    /// tests long enough to fail Redis meanwhile.
    pub linger: Duration,
}

impl Default for Extras {
    fn default() -> Extras {
        Extras {
            counter: Tally::count,
            records: None,
            status: None,
            linger: LINGER,
        }
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
        shared: Shared,
        reporter: Box<dyn Reporter>,
        health: &Health,
        extras: Extras,
    ) -> std::io::Result<ClusterSink> {
        let Shared {
            shards,
            clock,
            metrics,
        } = shared;
        let (tx, rx) = unbounded();
        let node = Node {
            settings,
            counter: extras.counter,
            records: extras.records.map(Records::new),
            status: extras.status,
            done_marks: DoneMarks::default(),
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
            drain_warned: None,
            backlog: Backlog::default(),
            published_backlog: 0,
            left: false,
            late_warned: None,
            shared_key_warned: false,
            orphans: Orphans::default(),
            lingering: Lingering::new(extras.linger),
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
            count_log::write_count_line(
                log::Level::Error,
                w.window_start,
                w.ids.len(),
                Scope::Local,
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

/// The cluster thread's state. Its jobs live beside it: shipping in `cluster/ship.rs`,
/// leading in `cluster/lead.rs`.
pub(crate) struct Node {
    pub(crate) settings: Settings,
    /// How a partition's tally is counted ([`Tally::count`] but in tests).
    pub(crate) counter: Counter,
    /// See [`RecordHandoff`]; `None` without Kafka.
    pub(crate) records: Option<Records>,
    /// Windows this instance reported or saw reported: their `done` marks go back after
    /// every connect.
    pub(crate) done_marks: DoneMarks,
    pub(crate) shards: Arc<Shards>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) reporter: Box<dyn Reporter>,
    pub(crate) metrics: Arc<Metrics>,
    /// See [`Extras::status`].
    pub(crate) status: Option<Arc<Status>>,
    pub(crate) redis: Option<Redis>,
    /// Counts connections: shipments made on an earlier one may be gone.
    pub(crate) generation: u64,
    pub(crate) connected_at_ms: u64,
    pub(crate) next_connect: Instant,
    pub(crate) outage_since: Option<Instant>,
    pub(crate) next_heartbeat: Instant,
    pub(crate) next_drain: Instant,
    /// `(window, generation)`: every id drained from that open window so far was shipped
    /// on that connection.
    pub(crate) open_shipped: Option<(u64, u64)>,
    /// The last open window whose failed shipment was logged (once per window).
    pub(crate) drain_warned: Option<u64>,
    /// Sealed windows not reported yet.
    pub(crate) backlog: Backlog,
    /// What this thread added to `verve_backlog_windows`.
    pub(crate) published_backlog: u64,
    /// Stopping: this instance has left the live set.
    pub(crate) left: bool,
    /// The last window whose late shipment was warned about (once per window).
    pub(crate) late_warned: Option<u64>,
    /// Trouble with `P:live`, `P:interval` or `P:layout` was logged; cleared by the next
    /// heartbeat that works, so that each bout is logged once.
    pub(crate) shared_key_warned: bool,
    /// Looking for windows whose holders are all gone (see [`crate::cluster::orphans`]).
    pub(crate) orphans: Orphans,
    /// Shutdown: the windows handed over, kept until Redis has them on disk.
    pub(crate) lingering: Lingering,
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
        let end_ms = self.settings.windows.end_ms(sealed.window);
        if let Some(twice) = self
            .backlog
            .hold(Held::sealed(sealed, end_ms, drained_here))
        {
            // Only a bug seals a window twice: its ids are still counted, not dropped.
            self.report_held_alone(twice, "it was sealed twice");
        }
    }

    fn step(&mut self, stopping: bool) {
        if self.redis.is_none() && Instant::now() >= self.next_connect {
            self.connect();
        }
        if self.redis.is_some() {
            match self.work(stopping) {
                Ok(()) => self.redis_link(true),
                Err(e) => self.drop_connection(e),
            }
        }
        while let Some(start) = self.backlog.oldest(|h| h.phase() == Phase::Refused) {
            self.report_alone(
                start,
                "its leader had read the window before this instance's last shipment reached \
                 Redis, which refused it (this instance started after the cluster reported \
                 the window, or its clock or shipping is later than --cluster-grace allows)",
            );
        }
        self.give_up();
        self.overflow();
        self.publish_backlog();
    }

    pub(crate) fn connect(&mut self) {
        match conn::connect(&self.settings.target) {
            Ok(redis) => {
                self.redis = Some(redis);
                self.generation += 1;
                self.connected_at_ms = self.clock.now_ms();
                self.next_heartbeat = Instant::now();
                // What was drained since the last shipment that Redis stored is shipped at
                // once, with everything Redis may have lost: a hard crash then loses no
                // more than usual.
                self.next_drain = Instant::now();
                // Redis may have restarted empty: everything held goes again, whole, and
                // the windows known to be reported get their `done` marks back first.
                self.backlog.reconnected();
                let now = self.clock.now_ms();
                let restored = match self.redis.as_mut() {
                    Some(redis) => self.done_marks.restore(redis.con(), &self.settings, now),
                    None => Ok(()),
                };
                if let Err(e) = restored {
                    self.drop_connection(e);
                }
            }
            Err(e) => self.drop_connection(e),
        }
    }

    /// Shows on the status page whether the connection to Redis works.
    fn redis_link(&self, up: bool) {
        if let Some(status) = &self.status {
            status.redis_link(up);
        }
    }

    /// A failed Redis operation: drops the connection, to connect again later. Logged once
    /// per outage.
    pub(crate) fn drop_connection(&mut self, e: anyhow::Error) {
        self.metrics.redis_errors.fetch_add(1, Relaxed);
        self.redis_link(false);
        self.redis = None;
        self.next_connect = Instant::now() + RECONNECT_EVERY;
        if self.outage_since.is_none() {
            self.outage_since = Some(Instant::now());
            log::warn!(
                "Redis {} is unavailable ({}): requests are still answered; up to {} sealed \
                 windows wait in the backlog until it is back",
                self.settings.target.display(),
                conn::describe(&e),
                self.settings.backlog
            );
        }
    }

    /// Window `start`'s keys made `doing` fail: counted, logged, tried again later (an
    /// outage is returned instead, for [`Node::drop_connection`]).
    pub(crate) fn window_failed(
        &mut self,
        start: u64,
        doing: &str,
        e: store::Error,
    ) -> anyhow::Result<()> {
        let why = match Failure::from(e) {
            Failure::Outage(e) => return Err(e),
            Failure::Keys(why) => why,
        };
        self.metrics.redis_errors.fetch_add(1, Relaxed);
        let Some(held) = self.backlog.get_mut(start) else {
            return Ok(());
        };
        let tries = held.failed(why.clone(), Instant::now());
        log::warn!(
            "window {}: {doing} failed ({why}); try {tries} of {WINDOW_TRIES} (is another \
             program writing to {}?)",
            rfc3339_secs(start),
            self.settings.keys.window_keys(start)
        );
        Ok(())
    }

    /// Trouble with a key the whole deployment shares (`P:live`, `P:interval`, `P:layout`):
    /// counted, and logged once per bout; no window waits for it (an outage is returned
    /// instead).
    pub(crate) fn shared_key_failed(&mut self, doing: &str, e: store::Error) -> anyhow::Result<()> {
        let why = match Failure::from(e) {
            Failure::Outage(e) => return Err(e),
            Failure::Keys(why) => why,
        };
        self.metrics.redis_errors.fetch_add(1, Relaxed);
        if !self.shared_key_warned {
            self.shared_key_warned = true;
            log::error!(
                "{doing} failed ({why}): is another program writing under --redis-prefix {}? \
                 Windows are still reported, by each leader once --cluster-grace has passed",
                self.settings.keys.prefix()
            );
        }
        Ok(())
    }

    /// The Redis part of a tick, job by job (see the module comment). `Err` is an outage.
    fn work(&mut self, stopping: bool) -> anyhow::Result<()> {
        let now = Instant::now();
        if !stopping && now >= self.next_heartbeat {
            self.next_heartbeat = now + HEARTBEAT_EVERY;
            self.heartbeat()?;
        }
        self.outage_over();
        if !stopping && now >= self.next_drain {
            self.next_drain = now + SHIP_EVERY;
            self.ship_open_window()?;
        }
        self.ship_sealed_windows(now)?;
        if let (Some(records), Some(redis)) = (self.records.as_mut(), self.redis.as_mut()) {
            if records.due(now) {
                records.tend(redis.con(), &self.settings, self.clock.now_ms())?;
            }
        }
        if stopping {
            self.leave_once_shipped()?;
        } else {
            self.adopt_orphans()?;
        }
        self.lead(stopping)
    }

    /// Says that an outage is over, once the first heartbeat went through (stopping: once
    /// what it handed over is shipped again) rather than at the connect: a Redis that takes
    /// connections but cannot be used (the prefix claimed for another interval or key
    /// layout) is still one outage, logged once.
    pub(crate) fn outage_over(&mut self) {
        if let Some(since) = self.outage_since.take() {
            log::info!(
                "Redis {} is back after {:.1} s; shipping {} held windows",
                self.settings.target.display(),
                since.elapsed().as_secs_f64(),
                self.backlog.len()
            );
        }
    }

    /// Shutdown: once every held window is shipped, leaves the live set, so that leaders
    /// stop waiting for this instance at once.
    fn leave_once_shipped(&mut self) -> anyhow::Result<()> {
        if self.left || !self.backlog.iter().all(Held::is_shipped) {
            return Ok(());
        }
        if let Some(redis) = self.redis.as_mut() {
            if let Err(e) = store::leave(redis.con(), &self.settings.keys, &self.settings.instance)
            {
                self.shared_key_failed("leaving the live set", e)?;
            }
        }
        self.left = true;
        Ok(())
    }

    /// Heartbeats, and checks that the prefix is still claimed for this key layout and this
    /// `--interval` (the claims may have expired during an outage, and instances of another
    /// layout or interval taken the prefix). The layout is claimed before the heartbeat, so
    /// that an instance of this layout is never in the live set while `P:layout` is missing
    /// (see [`presence::layout_in_use`]), and never in the live set of instances that stored
    /// another layout there. The release before layouts is told by `P:interval` alone, after
    /// the heartbeat, as another interval is.
    fn heartbeat(&mut self) -> anyhow::Result<()> {
        let Some(redis) = self.redis.as_mut() else {
            return Ok(());
        };
        let con = redis.con();
        let keys = &self.settings.keys;
        let key_ttl = self.settings.key_ttl().as_millis() as u64;
        let layout = presence::claim_layout(con, keys, key_ttl);
        if let Ok(Layout::Other(theirs)) = &layout {
            return Err(anyhow::anyhow!(
                "instances of key layout {theirs} now use --redis-prefix {}; this one (layout \
                 {LAYOUT}) keeps off Redis until they are gone",
                keys.prefix()
            ));
        }
        let ttl = LIVE_TTL.as_millis() as u64;
        let beat = store::heartbeat(con, keys, &self.settings.instance, ttl);
        let interval = self.settings.windows.length().as_secs();
        let claim = store::claim_interval(con, keys, interval, key_ttl);
        let fine = layout.is_ok() && beat.is_ok() && claim.is_ok();
        if let Err(e) = layout {
            self.shared_key_failed("checking the key layout stored in Redis", e)?;
        }
        if let Err(e) = beat {
            self.shared_key_failed("the heartbeat", e)?;
        }
        match claim {
            Ok(Interval::Same) => {}
            Ok(Interval::Other(theirs)) => {
                return Err(anyhow::anyhow!(
                    "instances with --interval {theirs} now use --redis-prefix {}; this one \
                     (--interval {interval}) keeps off Redis until they are gone",
                    self.settings.keys.prefix()
                ))
            }
            Ok(Interval::OtherLayout {
                layout,
                interval: theirs,
            }) => {
                return Err(anyhow::anyhow!(
                    "instances of key layout {layout} with --interval {theirs} now use \
                     --redis-prefix {}; this one (layout {LAYOUT}, --interval {interval}) keeps \
                     off Redis until they are gone",
                    self.settings.keys.prefix()
                ))
            }
            Err(e) => self.shared_key_failed("checking the interval stored in Redis", e)?,
        }
        if fine {
            self.shared_key_warned = false;
        }
        Ok(())
    }

    pub(crate) fn drop_window(&mut self, start: u64) {
        // Its ids and their budget bytes are freed here.
        self.backlog.remove(start);
    }

    /// Windows whose keys failed [`WINDOW_TRIES`] times: reported by this instance alone
    /// (its lease, if it holds one, given up so that another instance may try), or, when
    /// its count line is written already, let go without the `done` mark.
    fn give_up(&mut self) {
        while let Some(start) = self.backlog.oldest(|h| h.given_up().is_some()) {
            let Some(held) = self.backlog.get(start) else {
                return;
            };
            let trouble = held.given_up().map(|t| t.why.clone()).unwrap_or_default();
            let reported = held.reported();
            if held.is_adopted() {
                self.orphans.given_up(start);
            }
            if let Some(redis) = self.redis.as_mut() {
                // Best effort: the lease expires on its own otherwise.
                let _ = store::release(
                    redis.con(),
                    &self.settings.keys,
                    start,
                    &self.settings.instance,
                );
            }
            if let Some(count) = reported {
                log::error!(
                    "window {}: reported with count {count} but not marked done in Redis \
                     ({trouble}); another instance may report it too",
                    rfc3339_secs(start)
                );
                self.drop_window(start);
            } else {
                self.report_alone(
                    start,
                    &format!(
                        "its keys in Redis are not what verve writes ({trouble}), {WINDOW_TRIES} \
                         tries"
                    ),
                );
            }
        }
    }

    /// Past `--cluster-backlog` unshipped windows, the oldest is reported by this instance
    /// alone; so is a window the cluster never reported before its keys expired.
    fn overflow(&mut self) {
        let now = self.clock.now_ms();
        let ttl = self.settings.key_ttl().as_millis() as u64;
        let expired = self
            .backlog
            .oldest(|h| h.is_shipped() && now > h.end_ms + ttl);
        if let Some(start) = expired {
            if let Some(count) = self.backlog.get(start).and_then(Held::reported) {
                log::error!(
                    "window {}: reported with count {count} but never marked done in Redis \
                     before its keys expired",
                    rfc3339_secs(start)
                );
                self.drop_window(start);
            } else {
                self.report_alone(
                    start,
                    "the cluster did not report it before its keys expired",
                );
            }
        }
        while self.backlog.unshipped() > self.settings.backlog {
            let Some(oldest) = self.backlog.oldest(|h| !h.is_shipped()) else {
                break;
            };
            self.report_alone(
                oldest,
                "it fell off the --cluster-backlog before Redis came back",
            );
        }
    }

    /// Reports window `start` with this instance's ids only (`scope=local`).
    fn report_alone(&mut self, start: u64, why: &str) {
        if let Some(held) = self.backlog.remove(start) {
            self.report_held_alone(held, why);
        }
    }

    fn report_held_alone(&mut self, held: Held, why: &str) {
        let window = rfc3339_secs(held.window_start);
        if held.is_adopted() && held.reported().is_none() {
            // None of its ids are this instance's: a line of its own would say 0. It stays
            // registered in Redis, so a holder, or another instance, can still report it.
            log::error!("window {window}: {why}; this instance, which took it up, lets it go");
            return;
        }
        let report = match held.alone() {
            Ok(report) => report,
            Err(count) => {
                // Only the `done` mark is missing, so the lease may let another instance
                // report it too: said here.
                log::error!(
                    "window {window}: {why}; reported with count {count} but never marked \
                     done in Redis: another instance may report it too"
                );
                return;
            }
        };
        log::warn!(
            "window {window}: {why}; reporting this instance's {} ids alone (scope=local)",
            report.unique_count
        );
        self.metrics.cluster_local_windows.fetch_add(1, Relaxed);
        self.reporter.report(&report);
    }

    fn publish_backlog(&mut self) {
        let now = self.backlog.unshipped() as u64;
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
        while !self.backlog.is_empty() && Instant::now() < deadline {
            self.step(true);
            if self.backlog.is_empty() {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            std::thread::sleep(TICK.min(left));
        }
        if let Some(redis) = self.redis.as_mut() {
            if !self.left {
                let _ = store::leave(redis.con(), &self.settings.keys, &self.settings.instance);
            }
        }
        self.linger(deadline);
        while let Some(start) = self.backlog.oldest(|h| !h.is_shipped()) {
            self.report_alone(start, "Redis was unavailable at shutdown");
        }
        for held in self.backlog.iter() {
            if let Some(count) = held.reported() {
                log::error!(
                    "window {}: reported with count {count} but never marked done in Redis \
                     before shutdown: another instance may report it too",
                    rfc3339_secs(held.window_start)
                );
                continue;
            }
            log::warn!(
                "window {} is in Redis but no instance is left to report it; the next instance \
                 of this cluster to start takes it up, if its keys have not expired by then",
                rfc3339_secs(held.window_start)
            );
        }
        self.publish_backlog();
        self.reporter.finish(deadline);
        if let (Some(records), Some(redis)) = (self.records.as_mut(), self.redis.as_mut()) {
            records.hand_over(redis.con(), &self.settings);
        }
    }
}
