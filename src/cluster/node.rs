//! The cluster thread: one plain OS thread per instance that does all of its Redis work:
//! heartbeats, shipping (during the window and at its close), the backlog, and leading
//! windows. It owns the reporters in cluster mode: only the leader of a window writes its
//! count line and calls its endpoints.
//!
//! Each tick (every [`TICK`]) it:
//! 1. reconnects if Redis was lost (every [`RECONNECT_EVERY`]); a new connection re-ships
//!    every window it still holds in full, since Redis may have restarted empty;
//! 2. heartbeats every [`HEARTBEAT_EVERY`], and checks that the prefix is still claimed for
//!    this `--interval`;
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
//! deployment's shared keys (`P:live`, `P:interval`) is logged and counted but stops no
//! window: without heartbeats the leader waits for the grace.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, Sender};

use crate::clock::{rfc3339_secs, Clock, Windows};
use crate::cluster::backlog::{Backlog, Held, Phase};
use crate::cluster::conn::{self, Redis, Target};
use crate::cluster::merge::{count_of_shipments_with, Counter};
use crate::cluster::store::{self, Interval, Keys, Lead, Shipment, Shipped};
use crate::endpoints;
use crate::health::Health;
use crate::ids::{count_union, IdSet};
use crate::metrics::Metrics;
use crate::report::{callback, count_log, Reporter, Scope, WindowReport};
use crate::shards::Shards;
use crate::sink::{SealedWindow, WindowSink};

/// How often the thread looks at its windows and the channel.
pub const TICK: Duration = Duration::from_millis(100);
/// How often the open window's new ids are shipped: what a hard crash can lose. Below a
/// second by the thread's [`TICK`] and room for the shipment itself, so that an id answered
/// `ok` is in Redis within a second, as the README promises.
pub const SHIP_EVERY: Duration = Duration::from_millis(800);
pub const HEARTBEAT_EVERY: Duration = Duration::from_millis(500);
/// An instance silent for this long is not waited for. Well above the heartbeat period,
/// so that a slow Redis reply (up to [`conn::IO_TIMEOUT`]) or a long merge does not make a
/// working instance look dead.
pub const LIVE_TTL: Duration = Duration::from_secs(5);
/// A leader that stops renewing its lease (it died, or hangs) is replaced after this long.
pub const LEASE: Duration = Duration::from_secs(5);
pub const RECONNECT_EVERY: Duration = Duration::from_millis(500);
pub use crate::cluster::backlog::{WINDOW_RETRY_EVERY, WINDOW_TRIES};

/// How long a window's keys live: long enough that a window shipped late from a full
/// backlog still finds its `done` mark (and is refused rather than reported twice). The
/// claim on the prefix (`P:interval`) lives as long after the last heartbeat, so that no
/// instance with another interval starts while those keys are there.
pub fn key_ttl(window: Duration, backlog: usize, grace: Duration) -> Duration {
    window * (backlog as u32 + 3) + grace + Duration::from_secs(60)
}

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
    /// See [`key_ttl`].
    pub fn key_ttl(&self) -> Duration {
        key_ttl(self.windows.length(), self.backlog, self.grace)
    }
}

/// A Kafka producer as the cluster thread sees it, to hand records over between instances:
/// the leader's record of a window stays pending in Redis (`record`, `record-owner`) until
/// its broker acknowledged it, and an instance that finds its owner gone (dead, stopped,
/// stalled past [`LEASE`]) produces it instead. At least once: a record its owner's producer
/// still delivers after the hand-over comes twice, with the same key and count.
pub trait RecordHandoff: Send {
    /// Produces the record of a window that this instance did not report (its owner is
    /// gone): the same key and value as its leader's, and nothing else (no count line, no
    /// endpoint call).
    fn produce(&mut self, window_start: u64, count: u64);

    /// The windows whose record (from this instance's reports, or produced through
    /// [`RecordHandoff::produce`]) the broker acknowledged since the last call.
    fn acknowledged(&mut self) -> Vec<u64>;
}

impl RecordHandoff for crate::report::kafka::Handoff {
    fn produce(&mut self, window_start: u64, count: u64) {
        crate::report::kafka::Handoff::produce(self, window_start, count);
    }

    fn acknowledged(&mut self) -> Vec<u64> {
        crate::report::kafka::Handoff::acknowledged(self)
    }
}

/// What [`ClusterSink::start_with`] adds to [`ClusterSink::start`].
pub struct Extras {
    /// How the leader counts a window's shipments: [`count_union`], or in tests a count
    /// that lasts as long as the test wants.
    pub counter: Counter,
    /// The Kafka producer's side of record hand-overs, when `--kafka-brokers` is set.
    pub records: Option<Box<dyn RecordHandoff>>,
}

impl Default for Extras {
    fn default() -> Extras {
        Extras {
            counter: count_union,
            records: None,
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
        shards: Arc<Shards>,
        clock: Arc<dyn Clock>,
        reporter: Box<dyn Reporter>,
        metrics: Arc<Metrics>,
        health: &Health,
    ) -> std::io::Result<ClusterSink> {
        let extras = Extras::default();
        Self::start_with(settings, shards, clock, reporter, metrics, health, extras)
    }

    /// [`ClusterSink::start`] with [`Extras`].
    pub fn start_with(
        settings: Settings,
        shards: Arc<Shards>,
        clock: Arc<dyn Clock>,
        reporter: Box<dyn Reporter>,
        metrics: Arc<Metrics>,
        health: &Health,
        extras: Extras,
    ) -> std::io::Result<ClusterSink> {
        let (tx, rx) = unbounded();
        let node = Node {
            settings,
            counter: extras.counter,
            records: extras.records,
            owned_records: Vec::new(),
            watched_records: VecDeque::new(),
            next_records: Instant::now(),
            known_done: VecDeque::new(),
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

/// How a store operation failed, as the cluster thread treats it.
enum Failure {
    /// Redis cannot be used now (see [`conn::is_outage`]): drop the connection, retry later.
    Outage(anyhow::Error),
    /// About the keys the operation touched, said on one line: charged to their window.
    Keys(String),
}

fn failure(e: store::Error) -> Failure {
    match e {
        store::Error::Redis(r) if conn::is_outage(&r) => Failure::Outage(r.into()),
        other => Failure::Keys(one_line(&other.to_string())),
    }
}

/// `text` with every run of white space (a Redis error may hold line breaks) as one space.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A window this instance knows the cluster reported, with its global count: its `done`
/// mark is written again after every (re)connect while its keys would still live, in case
/// Redis lost it (see [`store::restore_done`]).
struct KnownDone {
    window_start: u64,
    end_ms: u64,
    count: u64,
}

/// The most reported windows remembered for [`KnownDone`]: far more than live at once with
/// any `--interval`, `--cluster-backlog` and `--cluster-grace` that make sense.
const MAX_KNOWN_DONE: usize = 10_000;

/// The cluster thread's state.
struct Node {
    settings: Settings,
    /// How the leader counts a window's shipments ([`count_union`] but in tests).
    counter: Counter,
    /// See [`RecordHandoff`]; `None` without Kafka.
    records: Option<Box<dyn RecordHandoff>>,
    /// `(window_start, end_ms)`: windows whose pending record this instance's producer
    /// holds, renewed every [`HEARTBEAT_EVERY`] until acknowledged.
    owned_records: Vec<(u64, u64)>,
    /// `(window_start, end_ms)`: windows reported by another instance, whose record this one
    /// takes over if its owner goes before the broker acknowledged it.
    watched_records: VecDeque<(u64, u64)>,
    next_records: Instant,
    /// Windows this instance reported or saw reported, newest last, until their keys would
    /// have expired.
    known_done: VecDeque<KnownDone>,
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
    /// The last open window whose failed shipment was logged (once per window).
    drain_warned: Option<u64>,
    /// Sealed windows not reported yet.
    backlog: Backlog,
    /// What this thread added to `verve_backlog_windows`.
    published_backlog: u64,
    /// Stopping: this instance has left the live set.
    left: bool,
    /// The last window whose late shipment was warned about (once per window).
    late_warned: Option<u64>,
    /// Trouble with `P:live` or `P:interval` was logged; cleared by the next heartbeat that
    /// works, so that each bout is logged once.
    shared_key_warned: bool,
}

/// The shipments that carry `ids` and `endpoints`, each at most
/// [`store::MAX_SHIPMENT_BYTES`] (id set parts, endpoint chunks), paired up in order; at
/// least one, so that an empty last shipment still marks the instance done.
fn shipments_of<'a>(ids: &IdSet, endpoints: &'a [String]) -> Vec<(Vec<u8>, &'a [String])> {
    let parts = ids.serialize_parts(store::MAX_SHIPMENT_BYTES);
    let mut chunks = Vec::new();
    let (mut from, mut bytes) = (0, 0);
    for (i, e) in endpoints.iter().enumerate() {
        if bytes + e.len() > store::MAX_SHIPMENT_BYTES && i > from {
            chunks.push(&endpoints[from..i]);
            (from, bytes) = (i, 0);
        }
        bytes += e.len();
    }
    if from < endpoints.len() {
        chunks.push(&endpoints[from..]);
    }
    let n = parts.len().max(chunks.len()).max(1);
    let mut parts = parts.into_iter();
    (0..n)
        .map(|i| {
            (
                parts.next().unwrap_or_default(),
                chunks.get(i).copied().unwrap_or(&[]),
            )
        })
        .collect()
}

/// Ships `ids` and `endpoints` of the window starting at `window_start`, in as many
/// shipments as their size needs; `last` goes with the final one, so the instance is marked
/// done only once all of them are stored. `TooLate` as soon as one is refused. A failure
/// part way leaves some parts stored: shipping again repeats them, which the union absorbs.
#[allow(clippy::too_many_arguments)]
fn ship_window(
    con: &mut dyn redis::ConnectionLike,
    keys: &Keys,
    metrics: &Metrics,
    instance: &str,
    window_start: u64,
    ids: &IdSet,
    endpoints: &[String],
    last: bool,
    ttl_ms: u64,
) -> store::Result<Shipped> {
    let shipments = shipments_of(ids, endpoints);
    let n = shipments.len();
    for (k, (bytes, endpoints)) in shipments.iter().enumerate() {
        let shipped = store::ship(
            con,
            keys,
            &Shipment {
                window_start,
                instance,
                ids: bytes,
                endpoints,
                last: last && k + 1 == n,
                ttl_ms,
            },
        )?;
        metrics.cluster_shipments.fetch_add(1, Relaxed);
        metrics
            .cluster_shipped_bytes
            .fetch_add(bytes.len() as u64, Relaxed);
        if shipped == Shipped::TooLate {
            return Ok(Shipped::TooLate);
        }
    }
    Ok(Shipped::Stored)
}

/// What shipping the open window takes, borrowed from the [`Node`] field by field: the
/// leader's long read and count ship it too, so that a hard crash of the leader still loses
/// at most [`SHIP_EVERY`] of ids.
struct OpenWindow<'a> {
    settings: &'a Settings,
    shards: &'a Shards,
    clock: &'a dyn Clock,
    metrics: &'a Metrics,
    generation: u64,
    /// [`Node::open_shipped`].
    shipped: &'a mut Option<(u64, u64)>,
    late_warned: &'a mut Option<u64>,
    drain_warned: &'a mut Option<u64>,
}

impl OpenWindow<'_> {
    /// Drains the open window's new ids from the shards and ships them. `Err` is an outage.
    fn ship(&mut self, con: &mut dyn redis::ConnectionLike) -> store::Result<()> {
        // The open window: the clock's, or a later one still open if the clock stepped back.
        let window = self
            .shards
            .open_window(self.settings.windows.index_of(self.clock.now_ms()));
        let everything = *self.shipped != Some((window, self.generation));
        let Some(drained) = self.shards.drain(window, everything) else {
            return Ok(());
        };
        if !drained.ids.is_empty() || !drained.endpoints.is_empty() {
            let start = self.settings.windows.start_secs(window);
            let shipped = ship_window(
                con,
                &self.settings.keys,
                self.metrics,
                &self.settings.instance,
                start,
                &drained.ids,
                &drained.endpoints,
                false,
                self.settings.key_ttl().as_millis() as u64,
            );
            match shipped {
                Ok(Shipped::Stored) => {}
                Ok(Shipped::TooLate) => {
                    if *self.late_warned != Some(start) {
                        *self.late_warned = Some(start);
                        late(self.metrics, start, drained.ids.len());
                    }
                }
                Err(store::Error::Redis(e)) if conn::is_outage(&e) => return Err(e.into()),
                Err(e) => {
                    // The drained ids are not shipped: the next drain and the window's last
                    // shipment carry everything again.
                    *self.shipped = None;
                    self.metrics.redis_errors.fetch_add(1, Relaxed);
                    if *self.drain_warned != Some(window) {
                        *self.drain_warned = Some(window);
                        log::warn!(
                            "window {}: shipping the open window's ids failed ({}); the \
                             window's last shipment tries again with all of them",
                            rfc3339_secs(start),
                            one_line(&e.to_string())
                        );
                    }
                    return Ok(());
                }
            }
        }
        *self.shipped = Some((window, self.generation));
        Ok(())
    }
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
                Ok(()) => self.metrics.status.redis_link(true, self.clock.now_ms()),
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

    fn connect(&mut self) {
        match conn::connect(&self.settings.target) {
            Ok(redis) => {
                self.redis = Some(redis);
                self.generation += 1;
                self.connected_at_ms = self.clock.now_ms();
                self.next_heartbeat = Instant::now();
                // Redis may have restarted empty: everything held goes again, whole, and
                // the windows known to be reported get their `done` marks back first.
                self.backlog.reconnected();
                if let Err(e) = self.restore_done_marks() {
                    self.drop_connection(e);
                }
            }
            Err(e) => self.drop_connection(e),
        }
    }

    /// Writes the `done` mark of each window in [`Node::known_done`] whose keys would still
    /// live, where it is missing: an instance that had not seen the mark before Redis lost
    /// it then finds it, rather than report the window again with what it re-shipped. Done
    /// on every connect, before any shipment: the others trust nothing for a grace period
    /// after they connect (see `Node::ready`), which leaves the instances that know the time
    /// to put the marks back. `Err` is an outage.
    fn restore_done_marks(&mut self) -> anyhow::Result<()> {
        let now = self.clock.now_ms();
        let ttl = self.settings.key_ttl().as_millis() as u64;
        self.known_done.retain(|k| now <= k.end_ms + ttl);
        let Some(redis) = self.redis.as_mut() else {
            return Ok(());
        };
        for known in &self.known_done {
            let left = (known.end_ms + ttl).saturating_sub(now);
            match store::restore_done(
                redis.con(),
                &self.settings.keys,
                known.window_start,
                known.count,
                left,
            ) {
                Ok(true) => log::warn!(
                    "window {}: its done mark (count {}) was missing from Redis, which must have \
                     lost data; written again so that no instance reports the window twice",
                    rfc3339_secs(known.window_start),
                    known.count
                ),
                Ok(false) => {}
                Err(e) => {
                    if let Failure::Outage(e) = failure(e) {
                        return Err(e);
                    }
                }
            }
        }
        Ok(())
    }

    /// Remembers that the cluster reported window `start` with `count` (see [`KnownDone`]).
    fn known_reported(&mut self, start: u64, count: u64) {
        let Some(held) = self.backlog.get(start) else {
            return;
        };
        if self.known_done.len() >= MAX_KNOWN_DONE {
            self.known_done.pop_front();
        }
        self.known_done.push_back(KnownDone {
            window_start: held.window_start,
            end_ms: held.end_ms,
            count,
        });
    }

    /// A failed Redis operation: drops the connection, to connect again later. Logged once
    /// per outage.
    fn drop_connection(&mut self, e: anyhow::Error) {
        self.metrics.redis_errors.fetch_add(1, Relaxed);
        self.metrics.status.redis_link(false, self.clock.now_ms());
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
    fn window_failed(&mut self, start: u64, doing: &str, e: store::Error) -> anyhow::Result<()> {
        let why = match failure(e) {
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

    /// Trouble with a key the whole deployment shares (`P:live`, `P:interval`): counted, and
    /// logged once per bout; no window waits for it (an outage is returned instead).
    fn shared_key_failed(&mut self, doing: &str, e: store::Error) -> anyhow::Result<()> {
        let why = match failure(e) {
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
        if now >= self.next_records {
            self.next_records = now + HEARTBEAT_EVERY;
            self.tend_records()?;
        }
        if stopping {
            self.leave_once_shipped()?;
        }
        self.lead(stopping)
    }

    /// Says that an outage is over, once the first heartbeat went through rather than at the
    /// connect: a Redis that takes connections but cannot be used (the prefix claimed for
    /// another interval) is still one outage, logged once.
    fn outage_over(&mut self) {
        if let Some(since) = self.outage_since.take() {
            log::info!(
                "Redis {} is back after {:.1} s; shipping {} held windows",
                self.settings.target.display(),
                since.elapsed().as_secs_f64(),
                self.backlog.len()
            );
        }
    }

    /// The last shipment of each sealed window not shipped yet (on this connection), oldest
    /// first, except windows waiting out a retry after trouble with their keys.
    fn ship_sealed_windows(&mut self, now: Instant) -> anyhow::Result<()> {
        let ttl_ms = self.settings.key_ttl().as_millis() as u64;
        for start in self.backlog.starts() {
            let Some(held) = self.backlog.get(start) else {
                continue;
            };
            if held.is_shipped() || !held.may_try(now) {
                continue;
            }
            let Some(redis) = self.redis.as_mut() else {
                return Ok(());
            };
            let shipped = ship_window(
                redis.con(),
                &self.settings.keys,
                &self.metrics,
                &self.settings.instance,
                start,
                held.to_ship(),
                &held.endpoints,
                true,
                ttl_ms,
            );
            // Refused, but a last shipment of this instance is in Redis already: one whose
            // answer was lost with the connection. It was stored before the freeze (the
            // mark goes with it, and a frozen window takes no shipment), so the leader's read
            // holds it, as after a refused re-shipment.
            let shipped = match shipped {
                Ok(Shipped::TooLate) if !held.stored_before() => store::has_shipped(
                    redis.con(),
                    &self.settings.keys,
                    start,
                    &self.settings.instance,
                )
                .map(|stored| (Shipped::TooLate, stored)),
                other => other.map(|shipped| (shipped, false)),
            };
            let (shipped, found_stored) = match shipped {
                Ok(shipped) => shipped,
                Err(e) => {
                    self.window_failed(start, "shipping", e)?;
                    continue;
                }
            };
            let Some(held) = self.backlog.get_mut(start) else {
                continue;
            };
            // A refused first shipment is not in the cluster's count: the window is reported
            // alone, after this tick (see `step`), not lost silently. A refused re-shipment
            // keeps the window until its `done` mark is seen (see `Held::refused`).
            if shipped == Shipped::Stored {
                held.stored();
            } else if held.refused(found_stored) && self.late_warned != Some(start) {
                self.late_warned = Some(start);
                late(&self.metrics, start, held.ids.len());
            }
        }
        Ok(())
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

    /// Heartbeats, and checks that the prefix is still claimed for this `--interval` (it
    /// may have expired during an outage, and instances with another interval taken it).
    fn heartbeat(&mut self) -> anyhow::Result<()> {
        let Some(redis) = self.redis.as_mut() else {
            return Ok(());
        };
        let con = redis.con();
        let keys = &self.settings.keys;
        let ttl = LIVE_TTL.as_millis() as u64;
        let beat = store::heartbeat(con, keys, &self.settings.instance, ttl);
        let interval = self.settings.windows.length().as_secs();
        let claim = store::claim_interval(
            con,
            keys,
            interval,
            self.settings.key_ttl().as_millis() as u64,
        );
        let fine = beat.is_ok() && claim.is_ok();
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
            Err(e) => self.shared_key_failed("checking the interval stored in Redis", e)?,
        }
        if fine {
            self.shared_key_warned = false;
        }
        Ok(())
    }

    /// Drains the open window's new ids from the shards and ships them.
    fn ship_open_window(&mut self) -> anyhow::Result<()> {
        let Some(redis) = self.redis.as_mut() else {
            return Ok(());
        };
        let mut open = OpenWindow {
            settings: &self.settings,
            shards: &self.shards,
            clock: &*self.clock,
            metrics: &self.metrics,
            generation: self.generation,
            shipped: &mut self.open_shipped,
            late_warned: &mut self.late_warned,
            drain_warned: &mut self.drain_warned,
        };
        Ok(open.ship(redis.con())?)
    }

    /// Asks to lead each shipped window and reports those it leads that are ready.
    fn lead(&mut self, stopping: bool) -> anyhow::Result<()> {
        let lease_ms = LEASE.as_millis() as u64;
        let now = Instant::now();
        for start in self.backlog.starts() {
            let Some(held) = self.backlog.get(start) else {
                continue;
            };
            if !held.may_lead(now) {
                continue;
            }
            let (end_ms, reported) = (held.end_ms, held.reported());
            if stopping && self.left && self.hand_over(start)? {
                continue;
            }
            let Some(redis) = self.redis.as_mut() else {
                return Ok(());
            };
            let led = store::lead(
                redis.con(),
                &self.settings.keys,
                start,
                &self.settings.instance,
                lease_ms,
            );
            let outcome = match led {
                Ok(Lead::Done(count)) => {
                    // The cluster's count, as its leader left it: this instance's
                    // `/api/verve/windows` lists it too.
                    self.metrics.status.record(&self.metrics, start, count);
                    self.known_reported(start, count);
                    if self.records.is_some() {
                        self.watched_records.push_back((start, end_ms));
                    }
                    self.drop_window(start);
                    continue;
                }
                Ok(Lead::Waiting) => Ok(false),
                Ok(Lead::Leading) => match reported {
                    Some(count) => self.mark_done(start, count),
                    None => match self.ready(start, stopping) {
                        Ok(true) => self.report(start),
                        other => other,
                    },
                },
                Err(e) => Err(e),
            };
            if let Err(e) = outcome {
                self.window_failed(start, "leading", e)?;
            }
        }
        Ok(())
    }

    /// Shutdown, once this instance has left the live set: window `start` is left to the
    /// instances still running that will lead it, which need not wait for its lease. True
    /// when it was (the window is gone here); false when no such instance is alive, or the
    /// live set cannot be read or trusted, so that this instance reports the window (a repeat
    /// is better than a gap).
    fn hand_over(&mut self, start: u64) -> anyhow::Result<bool> {
        let Some(end_ms) = self.backlog.get(start).map(|h| h.end_ms) else {
            return Ok(false);
        };
        let Some(redis) = self.redis.as_mut() else {
            return Ok(false);
        };
        let live_ms = LIVE_TTL.as_millis() as u64;
        let mut others = match store::live(redis.con(), &self.settings.keys, live_ms) {
            Ok(others) => others.unwrap_or_default(),
            Err(e) => {
                self.shared_key_failed("reading the live set", e)?;
                Vec::new()
            }
        };
        // Itself, if a heartbeat got in after it left: not someone to leave the window to.
        others.retain(|name| *name != self.settings.instance);
        let Some(redis) = self.redis.as_mut() else {
            return Ok(false);
        };
        // A window that has ended goes only to instances that hold it: those that made their
        // last shipment of it. One that started after the window ended (restarted during a
        // rolling deploy) is live but never leads it, and the window would never be reported.
        // A window still open goes to any live instance: each will seal it at its end.
        if self.clock.now_ms() >= end_ms {
            let mut holders = Vec::with_capacity(others.len());
            for other in others {
                match store::has_shipped(redis.con(), &self.settings.keys, start, &other) {
                    Ok(true) => holders.push(other),
                    Ok(false) => {}
                    Err(e) => {
                        if let Failure::Outage(e) = failure(e) {
                            return Err(e);
                        }
                    }
                }
            }
            others = holders;
        }
        if others.is_empty() {
            return Ok(false);
        }
        if let Err(e) = store::release(
            redis.con(),
            &self.settings.keys,
            start,
            &self.settings.instance,
        ) {
            if let Failure::Outage(e) = failure(e) {
                return Err(e);
            }
        }
        log::info!(
            "window {} is left to {} other live instances",
            rfc3339_secs(start),
            others.len()
        );
        self.drop_window(start);
        Ok(true)
    }

    /// Whether the leader may report window `start` now: every live instance has made its last
    /// shipment of it, or `--cluster-grace` has passed since it closed. Right after a
    /// (re)connect the live set is not trusted for a grace period: after an outage the other
    /// instances need time to come back, heartbeat and ship. At shutdown, an instance that is
    /// the last one alive reports at once, as a single instance does.
    fn ready(&mut self, start: u64, stopping: bool) -> store::Result<bool> {
        if stopping && self.left {
            return Ok(true);
        }
        let Some(held) = self.backlog.get(start) else {
            return Ok(false);
        };
        let now = self.clock.now_ms();
        let grace = self.settings.grace.as_millis() as u64;
        if now < held.end_ms || now < self.connected_at_ms + grace {
            return Ok(false);
        }
        if now >= held.end_ms + grace {
            return Ok(true);
        }
        let Some(redis) = self.redis.as_mut() else {
            return Ok(false);
        };
        let live = store::live(
            redis.con(),
            &self.settings.keys,
            LIVE_TTL.as_millis() as u64,
        );
        let live = match live {
            Ok(Some(live)) => live,
            // Too many to trust: wait for the grace.
            Ok(None) => return Ok(false),
            Err(store::Error::Redis(e)) if conn::is_outage(&e) => return Err(e.into()),
            Err(e) => {
                // The shared live set, not this window's keys: wait for the grace.
                let _ = self.shared_key_failed("reading the live set", e);
                return Ok(false);
            }
        };
        let Some(redis) = self.redis.as_mut() else {
            return Ok(false);
        };
        let con = redis.con();
        for instance in &live {
            if !store::has_shipped(con, &self.settings.keys, start, instance)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The leader's report: freeze the window, union every shipment, check the endpoints,
    /// write the count line and queue the calls (through the reporters), then the `done`
    /// mark. True when the window is finished with.
    fn report(&mut self, start: u64) -> store::Result<bool> {
        let Some(redis) = self.redis.as_mut() else {
            return Ok(false);
        };
        let con = redis.con();
        let (keys, instance) = (&self.settings.keys, self.settings.instance.as_str());
        let ttl_ms = self.settings.key_ttl().as_millis() as u64;
        // From here on the window's list does not change: no shipment that Redis accepted
        // can be missed by the read below, nor deleted unread by `mark_done`.
        let Some(count) = store::freeze(con, keys, start, instance, ttl_ms)? else {
            return Ok(false); // lost the lease meanwhile
        };
        let count = store::check_shipments(keys, start, count)?;
        // A read of many shipments takes a while (1.4 s for 10 x 1M ids in 600 shipments),
        // and so does the count (on a helper thread, see `merge`): the lease and the
        // heartbeat stay fresh meanwhile. An instance that has left the live set (stopping)
        // does not heartbeat: it would put itself back, and take itself for another live
        // instance to leave its next window to (`hand_over`).
        // So does the shipping of the open window (not when stopping: it is sealed then).
        let mut last = Instant::now();
        let left = self.left;
        let mut open = OpenWindow {
            settings: &self.settings,
            shards: &self.shards,
            clock: &*self.clock,
            metrics: &self.metrics,
            generation: self.generation,
            shipped: &mut self.open_shipped,
            late_warned: &mut self.late_warned,
            drain_warned: &mut self.drain_warned,
        };
        let next_drain = &mut self.next_drain;
        let mut between = |con: &mut dyn redis::ConnectionLike| -> store::Result<bool> {
            if last.elapsed() < HEARTBEAT_EVERY {
                return Ok(true);
            }
            last = Instant::now();
            let ttl = LIVE_TTL.as_millis() as u64;
            // A heartbeat that fails on the shared key must not cost this window.
            if !left {
                if let Err(store::Error::Redis(e)) = store::heartbeat(con, keys, instance, ttl) {
                    if conn::is_outage(&e) {
                        return Err(e.into());
                    }
                }
                if last >= *next_drain {
                    *next_drain = last + SHIP_EVERY;
                    open.ship(con)?;
                }
            }
            store::renew(con, keys, start, instance, LEASE.as_millis() as u64)
        };
        let read = count_of_shipments_with(con, keys, start, count, &mut between, self.counter)?;
        let Some((count, skipped)) = read else {
            return Ok(false); // lost the lease meanwhile
        };
        if skipped.total() > 0 {
            self.metrics
                .redis_errors
                .fetch_add(skipped.total(), Relaxed);
            log::error!(
                "window {}: skipped {} shipments in Redis that are not id sets and {} longer \
                 than {} bytes (is another program writing under --redis-prefix {}?)",
                rfc3339_secs(start),
                skipped.unreadable,
                skipped.oversized,
                store::MAX_SHIPMENT_BYTES,
                keys.prefix()
            );
        }
        let stored = store::endpoints(con, keys, start, self.shards.max_endpoints())?;
        // The last check before the count goes out: still the leader, still not reported.
        if !store::renew(con, keys, start, instance, LEASE.as_millis() as u64)? {
            return Ok(false);
        }
        let endpoints = self.checked_endpoints(start, &stored);
        self.reporter.report(&WindowReport {
            window_start: start,
            unique_count: count,
            endpoints,
            scope: Scope::Global,
        });
        if let Some(held) = self.backlog.get_mut(start) {
            held.counted(count);
        }
        self.mark_done(start, count)
    }

    /// The endpoints read from Redis that pass the checks a client's endpoint passes (this
    /// instance's `--endpoint-allow`, the URL rules, no `unique_count=`), canonical, sorted.
    /// Each refused one is logged with its reason and never called; so is the number of
    /// those past `--max-endpoints`, which were not read.
    fn checked_endpoints(&self, start: u64, stored: &store::StoredEndpoints) -> Vec<String> {
        let window_start = rfc3339_secs(start);
        let mut urls = Vec::with_capacity(stored.members.len());
        for raw in &stored.members {
            match endpoints::check_untrusted(raw, self.shards.policy()) {
                Ok(url) => urls.push(String::from(url)),
                Err(reason) => {
                    self.metrics.endpoint_calls.refused.fetch_add(1, Relaxed);
                    log::warn!(
                        target: callback::TARGET,
                        "window_start={window_start} endpoint={} error={reason}",
                        endpoints::sanitize_for_log(raw)
                    );
                }
            }
        }
        let unread = stored.total.saturating_sub(stored.members.len() as u64);
        if unread > 0 {
            self.metrics
                .endpoint_calls
                .refused
                .fetch_add(unread, Relaxed);
            log::warn!(
                target: callback::TARGET,
                "window_start={window_start}: {unread} more endpoints in Redis than \
                 --max-endpoints {} are not called",
                self.shards.max_endpoints()
            );
        }
        urls.sort();
        urls.dedup();
        urls
    }

    /// Marks window `start` done and lets it go (true).
    fn mark_done(&mut self, start: u64, count: u64) -> store::Result<bool> {
        let Some(end_ms) = self.backlog.get(start).map(|h| h.end_ms) else {
            return Ok(false);
        };
        let Some(redis) = self.redis.as_mut() else {
            return Ok(false);
        };
        let ttl_ms = self.settings.key_ttl().as_millis() as u64;
        let kept = store::mark_done_with_record(
            redis.con(),
            &self.settings.keys,
            start,
            &self.settings.instance,
            count,
            ttl_ms,
            self.records.is_some().then_some(LEASE.as_millis() as u64),
        )?;
        if !kept {
            // Kept until the mark is seen: this instance marks it once it leads it again, or
            // sees the `done` of the instance that took it over.
            log::warn!(
                "window {}: the lease ran out while this instance reported it; another \
                 instance may report it too",
                rfc3339_secs(start)
            );
            return Ok(false);
        }
        self.known_reported(start, count);
        if self.records.is_some() {
            self.owned_records.push((start, end_ms));
        }
        self.drop_window(start);
        Ok(true)
    }

    /// Kafka record hand-overs (see [`RecordHandoff`]): records the broker acknowledged are
    /// forgotten in Redis; those this instance owns are renewed; those of windows reported
    /// by others whose owner is gone are taken over and produced here. A window's trouble
    /// with its keys costs that record alone (logged); `Err` is an outage.
    fn tend_records(&mut self) -> anyhow::Result<()> {
        let (Some(records), Some(redis)) = (self.records.as_mut(), self.redis.as_mut()) else {
            return Ok(());
        };
        let con = redis.con();
        let keys = &self.settings.keys;
        let instance = self.settings.instance.as_str();
        let lease_ms = LEASE.as_millis() as u64;
        let now = self.clock.now_ms();
        let ttl = self.settings.key_ttl().as_millis() as u64;
        let outage = |e: store::Error, start: u64| -> anyhow::Result<()> {
            match failure(e) {
                Failure::Outage(e) => Err(e),
                Failure::Keys(why) => {
                    log::warn!(
                        "window {}: its Kafka record hand-over: {why}",
                        rfc3339_secs(start)
                    );
                    Ok(())
                }
            }
        };
        for start in records.acknowledged() {
            if let Err(e) = store::record_acknowledged(con, keys, start) {
                outage(e, start)?;
            }
            self.owned_records.retain(|&(w, _)| w != start);
            self.watched_records.retain(|&(w, _)| w != start);
        }
        self.owned_records.retain(|&(_, end)| now <= end + ttl);
        self.watched_records.retain(|&(_, end)| now <= end + ttl);
        let mut keep = Vec::with_capacity(self.owned_records.len());
        for &(start, end) in &self.owned_records {
            match store::claim_record(con, keys, start, instance, lease_ms) {
                Ok(store::RecordClaim::Mine | store::RecordClaim::Taken(_)) => {
                    keep.push((start, end))
                }
                // Taken over by another instance (this one stalled), or acknowledged.
                Ok(store::RecordClaim::Held | store::RecordClaim::Gone) => {}
                Err(e) => {
                    keep.push((start, end));
                    outage(e, start)?;
                }
            }
        }
        self.owned_records = keep;
        let mut i = 0;
        while i < self.watched_records.len() {
            let (start, end) = self.watched_records[i];
            match store::claim_record(con, keys, start, instance, lease_ms) {
                Ok(store::RecordClaim::Held) => i += 1,
                Ok(store::RecordClaim::Gone) => {
                    self.watched_records.remove(i);
                }
                Ok(store::RecordClaim::Mine) => {
                    self.watched_records.remove(i);
                    self.owned_records.push((start, end));
                }
                Ok(store::RecordClaim::Taken(count)) => {
                    log::warn!(
                        "window {}: its leader went before the Kafka broker acknowledged its \
                         record; producing it here (count {count})",
                        rfc3339_secs(start)
                    );
                    records.produce(start, count);
                    self.watched_records.remove(i);
                    self.owned_records.push((start, end));
                }
                Err(e) => {
                    i += 1;
                    outage(e, start)?;
                }
            }
        }
        Ok(())
    }

    /// Shutdown, once the producer has finished: what it acknowledged is forgotten in
    /// Redis, and the records it still held are given up, so that a running instance takes
    /// them over at once rather than after [`LEASE`].
    fn hand_over_records(&mut self) {
        let (Some(records), Some(redis)) = (self.records.as_mut(), self.redis.as_mut()) else {
            return;
        };
        let acknowledged = records.acknowledged();
        let con = redis.con();
        for start in acknowledged {
            let _ = store::record_acknowledged(con, &self.settings.keys, start);
            self.owned_records.retain(|&(w, _)| w != start);
        }
        for &(start, _) in &self.owned_records {
            let _ = store::release_record(con, &self.settings.keys, start, &self.settings.instance);
            log::warn!(
                "window {}: its Kafka record was not acknowledged before this instance stopped; \
                 left to the other instances",
                rfc3339_secs(start)
            );
        }
        self.owned_records.clear();
    }

    fn drop_window(&mut self, start: u64) {
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
        while let Some(start) = self.backlog.oldest(|h| !h.is_shipped()) {
            self.report_alone(start, "Redis was unavailable at shutdown");
        }
        for held in self.backlog.iter() {
            log::warn!(
                "window {} is in Redis but no instance is left to report it; the next instance \
                 of this cluster will not see it",
                rfc3339_secs(held.window_start)
            );
        }
        self.publish_backlog();
        self.reporter.finish(deadline);
        self.hand_over_records();
    }
}

/// A shipment refused because its window had been read or reported: those ids are not in
/// the cluster's count. Said, and counted.
fn late(metrics: &Metrics, window_start: u64, ids: u64) {
    if ids == 0 {
        return;
    }
    metrics.cluster_late_windows.fetch_add(1, Relaxed);
    log::warn!(
        "window {}: {ids} ids reached Redis after the cluster's leader had read the window and \
         are not in its count (this instance started after the report, or its clock or \
         shipping is later than --cluster-grace allows)",
        rfc3339_secs(window_start)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipments_stay_within_the_size_redis_readers_accept_and_carry_everything() {
        // About 5 bytes per id spread over the whole range: more than one shipment's worth.
        let ids = IdSet::from_ids(
            (0..2_000_000i64).map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15u64 as i64)),
        );
        let endpoints: Vec<String> = (0..6_000)
            .map(|i| format!("http://h{i}.test/{}", "p".repeat(2_000)))
            .collect();
        let shipments = shipments_of(&ids, &endpoints);
        assert!(shipments.len() >= 2, "{} shipments", shipments.len());
        let mut sets = Vec::new();
        let mut carried = Vec::new();
        for (bytes, chunk) in &shipments {
            assert!(bytes.len() <= store::MAX_SHIPMENT_BYTES);
            let chunk_bytes: usize = chunk.iter().map(String::len).sum();
            assert!(chunk_bytes <= store::MAX_SHIPMENT_BYTES);
            sets.push(IdSet::deserialize(bytes).unwrap());
            carried.extend_from_slice(chunk);
        }
        assert_eq!(IdSet::union_all(sets), ids);
        assert_eq!(carried, endpoints);
        // Nothing to carry is still one (empty) shipment: a last one marks the instance done.
        let none = shipments_of(&IdSet::new(), &[]);
        assert_eq!(none.len(), 1);
        assert!(none[0].0.is_empty() && none[0].1.is_empty());
    }
}
