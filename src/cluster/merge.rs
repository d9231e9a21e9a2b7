//! Counting a partition: its count is the number of values in the union of every shipment in
//! its list (see [`parts`]), read page by page, decoded, and counted by one k-way merge of
//! them all ([`count_union`]): the union itself is never built, only its size is needed. A
//! window's count is the sum of its partitions'. Also the shipment's encoding, which this
//! reads back: an id set in its compact format.
//!
//! What Redis holds is untrusted: a shipment too long to be verve's, or that is not an id
//! set, is skipped and counted ([`Skipped`]), and costs no other shipment.
//!
//! The count runs on a helper thread while the caller's thread goes on calling `between`
//! (the counter's lease renewal and heartbeat): a large count takes longer than the lease,
//! and a counter that stopped renewing would lose the partition to another instance, and
//! look dead to the others, for no fault of its own.

use std::time::Duration;

use crossbeam_channel::{bounded, RecvTimeoutError};

use crate::cluster::keys::{Keys, PartitionKeys};
use crate::cluster::parts;
use crate::cluster::store::{self, Blob};
use crate::ids::partition::{self, PARTITIONS};
use crate::ids::{count_union, IdSet};

/// How the leader counts the distinct ids of a window's shipments: [`count_union`], or in
/// tests one that takes as long as the test wants.
pub type Counter = fn(&[IdSet]) -> u64;

/// How often `between` is offered a turn while the count runs (it decides itself whether
/// there is anything to do: the cluster thread renews every half second).
const COUNT_PAUSE: Duration = Duration::from_millis(100);

/// Serializes `ids` for one shipment, in the id set's compact format
/// ([`IdSet::serialize_into`]); nothing for an empty set.
pub fn serialize(ids: &IdSet) -> Vec<u8> {
    let mut bytes = Vec::new();
    if !ids.is_empty() {
        ids.serialize_into(&mut bytes);
    }
    bytes
}

/// Shipments of a window that were not read: too long to be verve's, or not an id set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Skipped {
    pub oversized: u64,
    pub unreadable: u64,
}

impl Skipped {
    pub fn total(&self) -> u64 {
        self.oversized + self.unreadable
    }
}

/// How many distinct ids the shipments of a window's partitions hold now, and what was
/// skipped: the cluster's count without the freeze that comes first (tests and tools).
pub fn count_of_shipments(
    con: &mut dyn redis::ConnectionLike,
    keys: &Keys,
    window_start: u64,
) -> store::Result<(u64, Skipped)> {
    let (mut total, mut skipped) = (0, Skipped::default());
    for p in 0..PARTITIONS {
        let part = keys.partition(window_start, p);
        let n = parts::shipments(con, &part)?;
        let (count, s) = count_partition_with(con, &part, n, &mut |_| Ok(true), count_union)?
            .expect("never stopped");
        total += count;
        skipped.oversized += s.oversized;
        skipped.unreadable += s.unreadable;
    }
    Ok((total, skipped))
}

/// How many distinct values the first `count` shipments of a partition's list hold
/// together, counted by `counter` on a helper thread while `between` is called every 100 ms
/// (see the module comment); `None` if `between` said stop. The decoded shipments are all
/// held until the count: about what the list holds in Redis.
pub fn count_partition_with(
    con: &mut dyn redis::ConnectionLike,
    keys: &PartitionKeys,
    count: u64,
    between: &mut dyn FnMut(&mut dyn redis::ConnectionLike) -> store::Result<bool>,
    counter: Counter,
) -> store::Result<Option<(u64, Skipped)>> {
    let Some((sets, skipped)) = read_shipments(con, keys, count, between)? else {
        return Ok(None);
    };
    let counted = count_pausing(&sets, counter, con, between)?;
    Ok(counted.map(|n| (n, skipped)))
}

/// `counter(sets)` on a helper thread, `between` called meanwhile; `None` if `between` said
/// stop (the lease is lost): the count is still waited for, so that its memory is freed
/// before the caller goes on, and `between` still called, for the heartbeats. An error of
/// `between` (an outage) ends the calls and is returned once the count is over.
fn count_pausing(
    sets: &[IdSet],
    counter: Counter,
    con: &mut dyn redis::ConnectionLike,
    between: &mut dyn FnMut(&mut dyn redis::ConnectionLike) -> store::Result<bool>,
) -> store::Result<Option<u64>> {
    if sets.is_empty() {
        return Ok(Some(0));
    }
    let (tx, rx) = bounded(1);
    std::thread::scope(|scope| {
        let helper = std::thread::Builder::new()
            .name("verve-count".into())
            .spawn_scoped(scope, move || {
                let _ = tx.send(counter(sets));
            });
        if helper.is_err() {
            // No thread to be had: count here, as before a helper existed.
            return Ok(Some(counter(sets)));
        }
        let (mut stopped, mut failed) = (false, None);
        loop {
            match rx.recv_timeout(COUNT_PAUSE) {
                Ok(n) => {
                    return match failed {
                        Some(e) => Err(e),
                        None => Ok((!stopped).then_some(n)),
                    }
                }
                Err(RecvTimeoutError::Timeout) if failed.is_none() => match between(con) {
                    Ok(true) => {}
                    Ok(false) => stopped = true,
                    Err(e) => failed = Some(e),
                },
                Err(RecvTimeoutError::Timeout) => {}
                // The helper panicked: the scope's end passes the panic on.
                Err(RecvTimeoutError::Disconnected) => return Ok(None),
            }
        }
    })
}

/// The ids themselves that the shipments of a window's partitions hold now, and what was
/// skipped: for tests and tools that look at the ids (the cluster only counts them).
pub fn union_of_shipments(
    con: &mut dyn redis::ConnectionLike,
    keys: &Keys,
    window_start: u64,
) -> store::Result<(IdSet, Skipped)> {
    let mut sets = Vec::with_capacity(PARTITIONS);
    let mut skipped = Skipped::default();
    for p in 0..PARTITIONS {
        let part = keys.partition(window_start, p);
        let n = parts::shipments(con, &part)?;
        let (shipments, s) =
            read_shipments(con, &part, n, &mut |_| Ok(true))?.expect("never stopped");
        sets.push(IdSet::union_all(shipments));
        skipped.oversized += s.oversized;
        skipped.unreadable += s.unreadable;
    }
    Ok((partition::join(&sets), skipped))
}

/// The first `count` shipments of a partition's list, decoded; `None` if `between` stopped.
fn read_shipments(
    con: &mut dyn redis::ConnectionLike,
    keys: &PartitionKeys,
    count: u64,
    between: &mut dyn FnMut(&mut dyn redis::ConnectionLike) -> store::Result<bool>,
) -> store::Result<Option<(Vec<IdSet>, Skipped)>> {
    let mut sets = Vec::new();
    let mut skipped = Skipped::default();
    let whole = parts::fetch(
        con,
        keys,
        count,
        &mut |blob| match blob {
            Blob::Shipment(bytes) => match IdSet::deserialize(bytes) {
                Ok(set) => sets.push(set),
                Err(_) => skipped.unreadable += 1,
            },
            Blob::Oversized(_) => skipped.oversized += 1,
        },
        between,
    )?;
    Ok(whole.then_some((sets, skipped)))
}
