//! Kafka records handed over between instances: the leader's record of a window stays
//! pending in Redis until its broker acknowledged it; its owner renews its claim, and an
//! instance that finds the owner gone produces the record instead ([`RecordHandoff`],
//! [`Records`]).

use std::collections::VecDeque;
use std::time::Instant;

use crate::clock::rfc3339_secs;
use crate::cluster::failure::Failure;
use crate::cluster::settings::{Settings, HEARTBEAT_EVERY, LEASE};
use crate::cluster::store::{self, RecordClaim};

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

/// The records this instance tends, with its producer's side of the hand-overs.
pub struct Records {
    producer: Box<dyn RecordHandoff>,
    /// `(window_start, end_ms)`: windows whose pending record this instance's producer
    /// holds, renewed every [`HEARTBEAT_EVERY`] until acknowledged.
    owned: Vec<(u64, u64)>,
    /// `(window_start, end_ms)`: windows reported by another instance, whose record this one
    /// takes over if its owner goes before the broker acknowledged it.
    watched: VecDeque<(u64, u64)>,
    next: Instant,
}

/// A window's trouble with its record's keys costs that record alone (logged); an outage is
/// returned.
fn record_failed(e: store::Error, start: u64) -> anyhow::Result<()> {
    match Failure::from(e) {
        Failure::Outage(e) => Err(e),
        Failure::Keys(why) => {
            log::warn!(
                "window {}: its Kafka record hand-over: {why}",
                rfc3339_secs(start)
            );
            Ok(())
        }
    }
}

impl Records {
    pub fn new(producer: Box<dyn RecordHandoff>) -> Records {
        Records {
            producer,
            owned: Vec::new(),
            watched: VecDeque::new(),
            next: Instant::now(),
        }
    }

    /// This instance reported the window: its producer holds the record.
    pub fn own(&mut self, window_start: u64, end_ms: u64) {
        self.owned.push((window_start, end_ms));
    }

    /// Another instance reported the window: its record is watched until acknowledged.
    pub fn watch(&mut self, window_start: u64, end_ms: u64) {
        self.watched.push_back((window_start, end_ms));
    }

    /// Whether the records are due to be tended (every [`HEARTBEAT_EVERY`]).
    pub fn due(&mut self, now: Instant) -> bool {
        if now < self.next {
            return false;
        }
        self.next = now + HEARTBEAT_EVERY;
        true
    }

    /// Records the broker acknowledged are forgotten in Redis; those this instance owns are
    /// renewed; those of windows reported by others whose owner is gone are taken over and
    /// produced here. `now_ms` by the instance's clock. `Err` is an outage.
    pub fn tend(
        &mut self,
        con: &mut dyn redis::ConnectionLike,
        settings: &Settings,
        now_ms: u64,
    ) -> anyhow::Result<()> {
        for start in self.producer.acknowledged() {
            if let Err(e) = store::record_acknowledged(con, &settings.keys, start) {
                record_failed(e, start)?;
            }
            self.owned.retain(|&(w, _)| w != start);
            self.watched.retain(|&(w, _)| w != start);
        }
        let ttl = settings.key_ttl().as_millis() as u64;
        self.owned.retain(|&(_, end)| now_ms <= end + ttl);
        self.watched.retain(|&(_, end)| now_ms <= end + ttl);
        self.renew_owned(con, settings)?;
        self.take_over_watched(con, settings)
    }

    /// Renews the claims on this instance's records; forgets those taken over by another
    /// instance (this one stalled) or acknowledged.
    fn renew_owned(
        &mut self,
        con: &mut dyn redis::ConnectionLike,
        settings: &Settings,
    ) -> anyhow::Result<()> {
        let lease_ms = LEASE.as_millis() as u64;
        let mut keep = Vec::with_capacity(self.owned.len());
        let mut outage = Ok(());
        for &(start, end) in &self.owned {
            match store::claim_record(con, &settings.keys, start, &settings.instance, lease_ms) {
                Ok(RecordClaim::Mine | RecordClaim::Taken(_)) => keep.push((start, end)),
                Ok(RecordClaim::Held | RecordClaim::Gone) => {}
                Err(e) => {
                    keep.push((start, end));
                    outage = record_failed(e, start);
                    if outage.is_err() {
                        break;
                    }
                }
            }
        }
        if outage.is_ok() {
            self.owned = keep;
        }
        outage
    }

    /// Claims the records of windows reported by others whose owner is gone, and produces
    /// them.
    fn take_over_watched(
        &mut self,
        con: &mut dyn redis::ConnectionLike,
        settings: &Settings,
    ) -> anyhow::Result<()> {
        let lease_ms = LEASE.as_millis() as u64;
        let mut i = 0;
        while i < self.watched.len() {
            let (start, end) = self.watched[i];
            match store::claim_record(con, &settings.keys, start, &settings.instance, lease_ms) {
                Ok(RecordClaim::Held) => i += 1,
                Ok(RecordClaim::Gone) => {
                    self.watched.remove(i);
                }
                Ok(RecordClaim::Mine) => {
                    self.watched.remove(i);
                    self.owned.push((start, end));
                }
                Ok(RecordClaim::Taken(count)) => {
                    log::warn!(
                        "window {}: its leader went before the Kafka broker acknowledged its \
                         record; producing it here (count {count})",
                        rfc3339_secs(start)
                    );
                    self.producer.produce(start, count);
                    self.watched.remove(i);
                    self.owned.push((start, end));
                }
                Err(e) => {
                    i += 1;
                    record_failed(e, start)?;
                }
            }
        }
        Ok(())
    }

    /// Shutdown, once the producer has finished: what it acknowledged is forgotten in
    /// Redis, and the records it still held are given up, so that a running instance takes
    /// them over at once rather than after [`LEASE`].
    pub fn hand_over(&mut self, con: &mut dyn redis::ConnectionLike, settings: &Settings) {
        for start in self.producer.acknowledged() {
            let _ = store::record_acknowledged(con, &settings.keys, start);
            self.owned.retain(|&(w, _)| w != start);
        }
        for &(start, _) in &self.owned {
            let _ = store::release_record(con, &settings.keys, start, &settings.instance);
            log::warn!(
                "window {}: its Kafka record was not acknowledged before this instance stopped; \
                 left to the other instances",
                rfc3339_secs(start)
            );
        }
        self.owned.clear();
    }
}
