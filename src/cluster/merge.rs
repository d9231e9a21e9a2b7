//! Counting a partition: its count is the number of distinct values in the union of every
//! shipment in its list (see [`parts`]), read page by page and streamed into a [`Tally`],
//! whose memory is bounded by the partition's distinct values (not by how many shipments
//! carried them) and charged to `--max-memory`; the union itself is never built, only its
//! size is needed. A window's count is the sum of its partitions'. Also the shipment's
//! encoding, which the tally reads back: an id set in its compact format.
//!
//! What Redis holds is untrusted: a shipment too long to be verve's, that is not an id set,
//! or whose values could not fit what the budget has left (refused before it is expanded),
//! is skipped and counted ([`Skipped`]), and costs no other shipment.
//!
//! The count runs on a helper thread while the caller's thread goes on calling `between`
//! (the counter's lease renewal and heartbeat, see [`finish_pausing_with`]): a large count
//! takes longer than the lease, and a counter that stopped renewing would lose the
//! partition to another instance, and look dead to the others, for no fault of its own.

use std::sync::Arc;

use crate::budget::IdMemory;
use crate::cluster::keys::{Keys, PartitionKeys};
use crate::cluster::parts;
use crate::cluster::store::{self, Blob};
use crate::cluster::tally::{finish_pausing_with, Tally};
use crate::ids::partition::{self, PARTITIONS};
use crate::ids::IdSet;

pub use crate::cluster::tally::Skipped;

/// How a partition's tally is counted once every shipment is in: [`Tally::count`], or in
/// tests one that takes as long as the test wants.
pub type Counter = fn(&Tally) -> u64;

/// Serializes `ids` for one shipment, in the id set's compact format
/// ([`IdSet::serialize_into`]); nothing for an empty set.
pub fn serialize(ids: &IdSet) -> Vec<u8> {
    let mut bytes = Vec::new();
    if !ids.is_empty() {
        ids.serialize_into(&mut bytes);
    }
    bytes
}

/// How many distinct ids the shipments of a window's partitions hold now, and what was
/// skipped: the cluster's count without the freeze that comes first (tests and tools; no
/// memory budget).
pub fn count_of_shipments(
    con: &mut dyn redis::ConnectionLike,
    keys: &Keys,
    window_start: u64,
) -> store::Result<(u64, Skipped)> {
    let (mut total, mut skipped) = (0, Skipped::default());
    let memory = IdMemory::unlimited();
    for p in 0..PARTITIONS {
        let part = keys.partition(window_start, p);
        let n = parts::shipments(con, &part)?;
        let read = Read {
            keys: &part,
            shipments: n,
            memory: &memory,
        };
        let (count, s) = count_partition_with(con, &read, &mut |_| Ok(true), Tally::count)?
            .expect("never stopped");
        total += count;
        skipped.oversized += s.oversized;
        skipped.unreadable += s.unreadable;
        skipped.too_large += s.too_large;
    }
    Ok((total, skipped))
}

/// What a partition's count reads, and the memory budget it is held to.
#[derive(Debug, Clone, Copy)]
pub struct Read<'a> {
    pub keys: &'a PartitionKeys,
    /// How many shipments its list holds (from [`parts::lead`] or [`parts::freeze`]).
    pub shipments: u64,
    /// `--max-memory`: what the tally holds is charged there.
    pub memory: &'a Arc<IdMemory>,
}

/// How many distinct values the shipments `read` names hold together, counted by `counter`
/// on a helper thread while `between` is called every 100 ms (see the module comment), with
/// what was skipped; `None` if `between` said stop.
pub fn count_partition_with(
    con: &mut dyn redis::ConnectionLike,
    read: &Read<'_>,
    between: &mut dyn FnMut(&mut dyn redis::ConnectionLike) -> store::Result<bool>,
    counter: Counter,
) -> store::Result<Option<(u64, Skipped)>> {
    let mut tally = Tally::new(read.memory.clone());
    let whole = parts::fetch(
        con,
        read.keys,
        read.shipments,
        &mut |blob| tally.add_blob(blob),
        between,
    )?;
    if !whole {
        return Ok(None);
    }
    let skipped = tally.skipped();
    let counted = finish_pausing_with(tally, con, between, counter)?;
    Ok(counted.map(|n| (n, skipped)))
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
        let mut shipments = Vec::new();
        parts::fetch(
            con,
            &part,
            n,
            &mut |blob| match blob {
                Blob::Shipment(bytes) => match IdSet::deserialize(bytes) {
                    Ok(set) => shipments.push(set),
                    Err(_) => skipped.unreadable += 1,
                },
                Blob::Oversized(_) => skipped.oversized += 1,
            },
            &mut |_| Ok(true),
        )?;
        sets.push(IdSet::union_all(shipments));
    }
    Ok((partition::join(&sets), skipped))
}
