//! Leading a window: the lease, whether the window is ready (every live instance shipped it,
//! or the grace passed), the leader's report (freeze the window and its partitions, add the
//! partitions' counts, check the endpoints, write the count line, mark it done), counting
//! partitions (the leader and every other instance that holds the window, each partition by
//! whoever wins its lease: see [`crate::cluster::parts`]), and the hand-over of windows at
//! shutdown.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use crate::clock::rfc3339_secs;
use crate::cluster::backlog::Held;
use crate::cluster::conn;
use crate::cluster::failure::outage_only;
use crate::cluster::keys::{Keys, PartitionKeys};
use crate::cluster::merge::{count_partition_with, Read};
use crate::cluster::node::Node;
use crate::cluster::orphans;
use crate::cluster::parts;
use crate::cluster::settings::{HEARTBEAT_EVERY, LEASE, LIVE_TTL, SHIP_EVERY};
use crate::cluster::ship::OpenWindow;
use crate::cluster::store::{self, Lead};
use crate::endpoints;
use crate::ids::partition::PARTITIONS;
use crate::report::{callback, Scope, WindowReport};

impl Node {
    /// Asks to lead each shipped window and reports those it leads that are ready.
    pub(crate) fn lead(&mut self, stopping: bool) -> anyhow::Result<()> {
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
                    if let Some(status) = &self.status {
                        status.record(start, count);
                    }
                    // Taken up as an orphan: whoever reported it may not have unregistered it
                    // (Redis lost that).
                    if self.backlog.get(start).is_some_and(Held::is_adopted) {
                        if let Err(e) = orphans::settle(redis.con(), &self.settings.keys, start) {
                            outage_only(e)?;
                        }
                    }
                    self.done_marks.remember(start, end_ms, count);
                    if let Some(records) = self.records.as_mut() {
                        records.watch(start, end_ms);
                    }
                    self.drop_window(start);
                    continue;
                }
                // Another instance leads it: once it froze the window, help count it.
                Ok(Lead::Waiting) => self.help_count(start).map(|()| false),
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
                    Err(e) => outage_only(e)?,
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
            outage_only(e)?;
        }
        log::info!(
            "window {} is left to {} other live instances",
            rfc3339_secs(start),
            others.len()
        );
        self.handed_over(start);
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

    /// The leader's report: freeze the window and its partitions, add the partitions'
    /// counts, check the endpoints, write the count line and queue the calls (through the
    /// reporters), then the `done` mark. True when the window is finished with; false while
    /// some partition is still being counted (by another instance), and when the lease was
    /// lost: the next tick tries again.
    fn report(&mut self, start: u64) -> store::Result<bool> {
        let Some(count) = self.count_window(start)? else {
            return Ok(false);
        };
        let Some(redis) = self.redis.as_mut() else {
            return Ok(false);
        };
        let con = redis.con();
        let (keys, instance) = (&self.settings.keys, self.settings.instance.as_str());
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

    /// Freezes the window, then each partition (from here on no list changes: no shipment
    /// that Redis accepted can be missed by a count), counts the partitions this instance
    /// wins, and adds the partitions' counts once every one is recorded. `None`: some are
    /// still being counted, or the lease was lost.
    fn count_window(&mut self, start: u64) -> store::Result<Option<u64>> {
        let Some(redis) = self.redis.as_mut() else {
            return Ok(None);
        };
        let con = redis.con();
        let (keys, instance) = (&self.settings.keys, self.settings.instance.as_str());
        let ttl_ms = self.settings.key_ttl().as_millis() as u64;
        if !store::freeze(con, keys, start, instance, ttl_ms)? {
            return Ok(None);
        }
        let parts: Vec<PartitionKeys> = (0..PARTITIONS).map(|p| keys.partition(start, p)).collect();
        for part in &parts {
            parts::freeze(con, part, ttl_ms)?;
        }
        self.count_partitions(start, true)?;
        let Some(redis) = self.redis.as_mut() else {
            return Ok(None);
        };
        let counts = parts::counts(redis.con(), &parts)?;
        if counts.iter().any(Option::is_none) {
            return Ok(None);
        }
        Ok(Some(counts.into_iter().flatten().sum()))
    }

    /// A window another instance leads: once it is frozen, counts the partitions this
    /// instance wins.
    fn help_count(&mut self, start: u64) -> store::Result<()> {
        let Some(redis) = self.redis.as_mut() else {
            return Ok(());
        };
        if store::is_frozen(redis.con(), &self.settings.keys, start)? {
            self.count_partitions(start, false)?;
        }
        Ok(())
    }

    /// Counts each partition of window `start` whose lease this instance wins, one after
    /// the other, until none is left to win. Instances start at different partitions (by a
    /// hash of their name), so that at first each takes a different one. `leading`: this
    /// instance leads the window, whose lease it renews meanwhile.
    fn count_partitions(&mut self, start: u64, leading: bool) -> store::Result<()> {
        let first = name_hash(&self.settings.instance) % PARTITIONS;
        let lease_ms = LEASE.as_millis() as u64;
        for i in 0..PARTITIONS {
            let part = self
                .settings
                .keys
                .partition(start, (first + i) % PARTITIONS);
            let Some(redis) = self.redis.as_mut() else {
                return Ok(());
            };
            if let parts::Lead::Counting(n) =
                parts::lead(redis.con(), &part, &self.settings.instance, lease_ms)?
            {
                self.count_partition(start, &part, n, leading)?;
            }
        }
        Ok(())
    }

    /// Counts one partition whose lease this instance holds (its list holds `n` shipments)
    /// and records its count, keeping the leases, the heartbeat and the open window's
    /// shipping going meanwhile.
    fn count_partition(
        &mut self,
        start: u64,
        part: &PartitionKeys,
        n: u64,
        leading: bool,
    ) -> store::Result<()> {
        let Some(redis) = self.redis.as_mut() else {
            return Ok(());
        };
        let con = redis.con();
        let (keys, instance) = (&self.settings.keys, self.settings.instance.as_str());
        let ttl_ms = self.settings.key_ttl().as_millis() as u64;
        // A read of many shipments takes a while, and so does the count (on a helper thread,
        // see `merge`): the leases and the heartbeat stay fresh meanwhile. An instance that
        // has left the live set (stopping) does not heartbeat: it would put itself back, and
        // take itself for another live instance to leave its next window to (`hand_over`).
        // So does the shipping of the open window (not when stopping: it is sealed then).
        let mut duties = Duties {
            open: OpenWindow {
                settings: &self.settings,
                shards: &self.shards,
                clock: &*self.clock,
                metrics: &self.metrics,
                generation: self.generation,
                shipped: &mut self.open_shipped,
                late_warned: &mut self.late_warned,
                drain_warned: &mut self.drain_warned,
            },
            next_drain: &mut self.next_drain,
            next_turn: &mut self.next_heartbeat,
            left: self.left,
            keys,
            instance,
            window: leading.then_some(start),
            part,
        };
        let read = Read {
            keys: part,
            shipments: n,
            memory: self.shards.memory(),
        };
        let read = count_partition_with(con, &read, &mut |con| duties.between(con), self.counter)?;
        let Some((count, skipped)) = read else {
            return Ok(()); // lost the lease meanwhile: another instance counts it
        };
        // A count shorter than a turn of the duties gives them none: one now, if due, so
        // that counting many partitions in a row never starves them.
        if !duties.between(con)? {
            return Ok(());
        }
        if skipped.total() > 0 {
            self.metrics
                .redis_errors
                .fetch_add(skipped.total(), Relaxed);
            log::error!(
                "window {}: skipped {} shipments in Redis that are not id sets and {} longer \
                 than {} bytes, and refused {} whose ids would not fit --max-memory, in {} \
                 (is another program writing under --redis-prefix {}?)",
                rfc3339_secs(start),
                skipped.unreadable,
                skipped.oversized,
                store::MAX_SHIPMENT_BYTES,
                skipped.too_large,
                part.ids,
                keys.prefix()
            );
        }
        if parts::counted(con, part, instance, count, ttl_ms)? {
            self.metrics
                .cluster_partitions_counted
                .fetch_add(1, Relaxed);
        }
        Ok(())
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
                    endpoints::EndpointLine::not_made(&window_start, raw, reason).log();
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
        let mark = store::DoneMark {
            window_start: start,
            instance: &self.settings.instance,
            count,
            ttl_ms,
        };
        let record_lease_ms = self.records.is_some().then_some(LEASE.as_millis() as u64);
        let kept =
            store::mark_done_with_record(redis.con(), &self.settings.keys, &mark, record_lease_ms)?;
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
        self.done_marks.remember(start, end_ms, count);
        if let Some(records) = self.records.as_mut() {
            records.own(start, end_ms);
        }
        self.drop_window(start);
        // Reported: no instance need take it up. A failure leaves it registered, and whoever
        // looks at it next finds it reported.
        if let Some(redis) = self.redis.as_mut() {
            match orphans::settle(redis.con(), &self.settings.keys, start) {
                Err(store::Error::Redis(e)) if conn::is_outage(&e) => return Err(e.into()),
                Err(_) => {
                    self.metrics.redis_errors.fetch_add(1, Relaxed);
                }
                Ok(()) => {}
            }
        }
        Ok(true)
    }
}

/// A hash of an instance's name, the same on every instance and run (FNV-1a).
fn name_hash(name: &str) -> usize {
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    hash as usize
}

/// What the cluster thread keeps doing while it counts a partition (see
/// [`Node::count_partition`]).
struct Duties<'a> {
    open: OpenWindow<'a>,
    next_drain: &'a mut Instant,
    /// When the next turn is due: the node's heartbeat schedule, kept across the counts of
    /// every partition (and window) of a tick, so that counting partition after partition
    /// never goes longer than a heartbeat period without the duties.
    next_turn: &'a mut Instant,
    /// Stopping, and off the live set: no heartbeat, no shipping.
    left: bool,
    keys: &'a Keys,
    instance: &'a str,
    /// The window whose lease this instance holds, when it leads it.
    window: Option<u64>,
    part: &'a PartitionKeys,
}

impl Duties<'_> {
    /// Every [`HEARTBEAT_EVERY`]: the heartbeat, the open window's shipping when due, and
    /// the leases. False when the partition's lease is lost: the count stops.
    fn between(&mut self, con: &mut dyn redis::ConnectionLike) -> store::Result<bool> {
        let now = Instant::now();
        if now < *self.next_turn {
            return Ok(true);
        }
        *self.next_turn = now + HEARTBEAT_EVERY;
        let lease_ms = LEASE.as_millis() as u64;
        // A heartbeat that fails on the shared key must not cost this window.
        if !self.left {
            let ttl = LIVE_TTL.as_millis() as u64;
            if let Err(store::Error::Redis(e)) =
                store::heartbeat(con, self.keys, self.instance, ttl)
            {
                if conn::is_outage(&e) {
                    return Err(e.into());
                }
            }
            if now >= *self.next_drain {
                *self.next_drain = now + SHIP_EVERY;
                self.open.ship(con)?;
            }
        }
        if let Some(start) = self.window {
            // Losing the window's lease does not make this partition's count useless: the
            // successor adds it.
            store::renew(con, self.keys, start, self.instance, lease_ms)?;
        }
        parts::renew(con, self.part, self.instance, lease_ms)
    }
}
