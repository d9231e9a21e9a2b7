//! Shipping: a window's ids and endpoints cut into shipments Redis readers accept, the open
//! window's new ids drained from the shards every
//! [`SHIP_EVERY`](crate::cluster::settings::SHIP_EVERY), and the last shipment of
//! each sealed window the cluster thread holds.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use crate::clock::{rfc3339_secs, Clock};
use crate::cluster::conn;
use crate::cluster::node::Node;
use crate::cluster::orphans;
use crate::cluster::parts;
use crate::cluster::settings::Settings;
use crate::cluster::store::{self, Shipment, Shipped};
use crate::ids::{partition, IdSet};
use crate::logging::sanitize;
use crate::metrics::Metrics;
use crate::shards::Shards;

/// The endpoint chunks that carry `endpoints`, each at most [`store::MAX_SHIPMENT_BYTES`]
/// (one endpoint longer than that alone), in order; at least one, so that an empty last
/// shipment still marks the instance done.
pub fn endpoint_chunks(endpoints: &[String]) -> Vec<&[String]> {
    let mut chunks = Vec::new();
    let (mut from, mut bytes) = (0, 0);
    for (i, e) in endpoints.iter().enumerate() {
        if bytes + e.len() > store::MAX_SHIPMENT_BYTES && i > from {
            chunks.push(&endpoints[from..i]);
            (from, bytes) = (i, 0);
        }
        bytes += e.len();
    }
    chunks.push(&endpoints[from..]);
    chunks
}

/// The shipments that carry `ids`, one partition's values at a time: for each partition
/// ([`partition::split`]), its parts of at most `max_bytes` (id set parts cut between
/// blocks; [`store::MAX_SHIPMENT_BYTES`] when shipping), nothing for an empty partition.
pub fn partition_shipments(ids: &IdSet, max_bytes: usize) -> Vec<(usize, Vec<u8>)> {
    partition::split(ids)
        .iter()
        .enumerate()
        .filter(|(_, part)| !part.is_empty())
        .flat_map(|(p, part)| {
            part.serialize_parts(max_bytes)
                .into_iter()
                .map(move |bytes| (p, bytes))
        })
        .collect()
}

/// One window's ids and endpoints to ship.
pub struct Load<'a> {
    pub window_start: u64,
    pub ids: &'a IdSet,
    pub endpoints: &'a [String],
    /// The instance's last shipment of the window: marks it done once stored.
    pub last: bool,
    /// Registers the window as not reported yet first (see [`crate::cluster::orphans`]):
    /// with the first shipment of it on a connection, and with the last.
    pub register: bool,
}

/// Ships a [`Load`]: each partition's ids to its list, then the endpoints and, with `last`,
/// the mark that this instance shipped everything, so the instance is marked done only once
/// all of its ids are stored. `TooLate` as soon as one shipment is refused. A failure part
/// way leaves some parts stored: shipping again repeats them, which the union absorbs.
pub fn ship_window(
    con: &mut dyn redis::ConnectionLike,
    settings: &Settings,
    metrics: &Metrics,
    load: Load<'_>,
) -> store::Result<Shipped> {
    let ttl_ms = settings.key_ttl().as_millis() as u64;
    // Before any of its ids, so that no shipment is in Redis unregistered. A registry that
    // is not verve's costs only the adoption of orphaned windows, which says so.
    if load.register {
        match orphans::register(con, &settings.keys, load.window_start, ttl_ms) {
            Err(store::Error::Redis(e)) if conn::is_outage(&e) => return Err(e.into()),
            Err(_) => {
                metrics.redis_errors.fetch_add(1, Relaxed);
            }
            Ok(()) => {}
        }
    }
    for (p, bytes) in partition_shipments(load.ids, store::MAX_SHIPMENT_BYTES) {
        let keys = settings.keys.partition(load.window_start, p);
        let shipped = parts::ship(con, &keys, &bytes, ttl_ms)?;
        metrics.cluster_shipments.fetch_add(1, Relaxed);
        metrics
            .cluster_shipped_bytes
            .fetch_add(bytes.len() as u64, Relaxed);
        if shipped == Shipped::TooLate {
            return Ok(Shipped::TooLate);
        }
    }
    if load.endpoints.is_empty() && !load.last {
        return Ok(Shipped::Stored);
    }
    let chunks = endpoint_chunks(load.endpoints);
    let n = chunks.len();
    for (k, endpoints) in chunks.into_iter().enumerate() {
        let shipped = store::ship(
            con,
            &settings.keys,
            &Shipment {
                window_start: load.window_start,
                instance: &settings.instance,
                endpoints,
                last: load.last && k + 1 == n,
                ttl_ms,
            },
        )?;
        if shipped == Shipped::TooLate {
            return Ok(Shipped::TooLate);
        }
    }
    Ok(Shipped::Stored)
}

/// What shipping the open window takes, borrowed from the cluster thread's state field by field: the
/// leader's long read and count ship it too, so that a hard crash of the leader still loses
/// at most [`SHIP_EVERY`](crate::cluster::settings::SHIP_EVERY) of ids.
pub(crate) struct OpenWindow<'a> {
    pub settings: &'a Settings,
    pub shards: &'a Shards,
    pub clock: &'a dyn Clock,
    pub metrics: &'a Metrics,
    pub generation: u64,
    /// [`Node::open_shipped`].
    pub shipped: &'a mut Option<(u64, u64)>,
    pub late_warned: &'a mut Option<u64>,
    pub drain_warned: &'a mut Option<u64>,
}

impl OpenWindow<'_> {
    /// Drains the open window's new ids from the shards and ships them; and first those of
    /// the window before it, while the collector has not sealed it yet (the settling delay
    /// after a boundary). Right after a reconnect that window's ids since its last shipment
    /// would otherwise reach Redis only with its seal, and a hard crash before the seal
    /// would lose more than a second of them. `Err` is an outage.
    pub fn ship(&mut self, con: &mut dyn redis::ConnectionLike) -> store::Result<()> {
        // The open window: the clock's, or a later one still open if the clock stepped back.
        let window = self
            .shards
            .open_window(self.settings.windows.index_of(self.clock.now_ms()));
        // Every drain made on this connection took the window before too, while it was open
        // or unsealed: only its new ids need go.
        let here = self.shipped.is_some_and(|(_, g)| g == self.generation);
        if window > 0 && !self.drain_and_ship(con, window - 1, !here)? {
            return Ok(());
        }
        let everything = *self.shipped != Some((window, self.generation));
        if self.drain_and_ship(con, window, everything)? {
            *self.shipped = Some((window, self.generation));
        }
        Ok(())
    }

    /// Drains `window` (with `everything`: all its ids so far) and ships what it gives. False
    /// when the shipment failed on the window's keys: the next drain and the window's last
    /// shipment carry everything again. `Ok(true)` also when the window is sealed already
    /// (nothing to drain).
    fn drain_and_ship(
        &mut self,
        con: &mut dyn redis::ConnectionLike,
        window: u64,
        everything: bool,
    ) -> store::Result<bool> {
        let Some(drained) = self.shards.drain(window, everything) else {
            return Ok(true);
        };
        if drained.ids.is_empty() && drained.endpoints.is_empty() {
            return Ok(true);
        }
        let start = self.settings.windows.start_secs(window);
        let load = Load {
            window_start: start,
            ids: &drained.ids,
            endpoints: &drained.endpoints,
            last: false,
            register: everything,
        };
        match ship_window(con, self.settings, self.metrics, load) {
            Ok(Shipped::Stored) => Ok(true),
            Ok(Shipped::TooLate) => {
                if *self.late_warned != Some(start) {
                    *self.late_warned = Some(start);
                    late(self.metrics, start, drained.ids.len());
                }
                Ok(true)
            }
            Err(store::Error::Redis(e)) if conn::is_outage(&e) => Err(e.into()),
            Err(e) => {
                *self.shipped = None;
                self.metrics.redis_errors.fetch_add(1, Relaxed);
                if *self.drain_warned != Some(window) {
                    *self.drain_warned = Some(window);
                    log::warn!(
                        "window {}: shipping the open window's ids failed ({}); the \
                         window's last shipment tries again with all of them",
                        rfc3339_secs(start),
                        sanitize(&e.to_string())
                    );
                }
                Ok(false)
            }
        }
    }
}

impl Node {
    /// The last shipment of each sealed window not shipped yet (on this connection), oldest
    /// first, except windows waiting out a retry after trouble with their keys.
    pub(crate) fn ship_sealed_windows(&mut self, now: Instant) -> anyhow::Result<()> {
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
            let load = Load {
                window_start: start,
                ids: held.to_ship(),
                endpoints: &held.endpoints,
                last: true,
                register: true,
            };
            let shipped = ship_window(redis.con(), &self.settings, &self.metrics, load);
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

    /// Drains the open window's new ids from the shards and ships them.
    pub(crate) fn ship_open_window(&mut self) -> anyhow::Result<()> {
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
}

/// A shipment refused because its window had been read or reported: those ids are not in
/// the cluster's count. Said, and counted.
pub fn late(metrics: &Metrics, window_start: u64, ids: u64) {
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
        // About 5 bytes per id spread over the whole range: several shipments' worth of
        // 64 KiB in every partition.
        let ids = IdSet::from_ids(
            (0..300_000i64).map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15u64 as i64)),
        );
        let max = 64 << 10;
        let endpoints: Vec<String> = (0..6_000)
            .map(|i| format!("http://h{i}.test/{}", "p".repeat(2_000)))
            .collect();
        let shipments = partition_shipments(&ids, max);
        assert!(
            shipments.len() > partition::PARTITIONS,
            "{}",
            shipments.len()
        );
        let mut parts = vec![Vec::new(); partition::PARTITIONS];
        for (p, bytes) in &shipments {
            assert!(bytes.len() <= max);
            parts[*p].push(IdSet::deserialize(bytes).unwrap());
        }
        let parts: Vec<IdSet> = parts.into_iter().map(IdSet::union_all).collect();
        assert_eq!(partition::join(&parts), ids);
        let chunks = endpoint_chunks(&endpoints);
        assert!(chunks.len() >= 2);
        let mut carried = Vec::new();
        for chunk in chunks {
            assert!(chunk.iter().map(String::len).sum::<usize>() <= store::MAX_SHIPMENT_BYTES);
            carried.extend_from_slice(chunk);
        }
        assert_eq!(carried, endpoints);
        // Nothing to carry: no id shipment, and one (empty) endpoint chunk, so that a last
        // shipment marks the instance done.
        assert!(partition_shipments(&IdSet::new(), max).is_empty());
        let none = endpoint_chunks(&[]);
        assert_eq!(none.len(), 1);
        assert!(none[0].is_empty());
    }
}
