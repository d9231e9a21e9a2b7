//! The leader's merge: a window's count is the number of ids in the union of every shipment
//! in its list (see [`store`]), read page by page, decoded, and counted by one k-way merge
//! of them all ([`count_union`]): the union itself is never built, only its size is needed.
//! Also the shipment's encoding, which this reads back: an id set in its compact format.
//!
//! What Redis holds is untrusted: a shipment too long to be verve's, or that is not an id
//! set, is skipped and counted ([`Skipped`]), and costs no other shipment.

use crate::cluster::store::{self, Blob, Keys};
use crate::ids::{count_union, IdSet};

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

/// How many distinct ids the shipments a window's list holds now have together, and what was
/// skipped: the leader's count without the freeze that comes first (tools). Shipments in the
/// compact format and in roaring's portable format (what earlier versions shipped) are both
/// read.
pub fn count_of_shipments(
    con: &mut dyn redis::ConnectionLike,
    keys: &Keys,
    window_start: u64,
) -> store::Result<(u64, Skipped)> {
    let count = store::shipments(con, keys, window_start)?;
    count_of_shipments_pausing(con, keys, window_start, count, &mut |_| Ok(true))
        .map(|u| u.expect("never stopped"))
}

/// How many distinct ids the first `count` shipments of a window's list have together, with
/// [`store::fetch`]'s `between`; `None` if it stopped. The decoded shipments are all held
/// until the count: about what the list holds in Redis (5-6 bytes per random 64-bit id).
pub fn count_of_shipments_pausing(
    con: &mut dyn redis::ConnectionLike,
    keys: &Keys,
    window_start: u64,
    count: u64,
    between: &mut dyn FnMut(&mut dyn redis::ConnectionLike) -> store::Result<bool>,
) -> store::Result<Option<(u64, Skipped)>> {
    let read = read_shipments(con, keys, window_start, count, between)?;
    Ok(read.map(|(sets, skipped)| (count_union(&sets), skipped)))
}

/// The union itself of every shipment a window's list holds now, and what was skipped: for
/// tests and tools that look at the ids (the leader only counts them).
pub fn union_of_shipments(
    con: &mut dyn redis::ConnectionLike,
    keys: &Keys,
    window_start: u64,
) -> store::Result<(IdSet, Skipped)> {
    let count = store::shipments(con, keys, window_start)?;
    let (sets, skipped) =
        read_shipments(con, keys, window_start, count, &mut |_| Ok(true))?.expect("never stopped");
    Ok((IdSet::union_all(sets), skipped))
}

/// The first `count` shipments of a window's list, decoded; `None` if `between` stopped.
fn read_shipments(
    con: &mut dyn redis::ConnectionLike,
    keys: &Keys,
    window_start: u64,
    count: u64,
    between: &mut dyn FnMut(&mut dyn redis::ConnectionLike) -> store::Result<bool>,
) -> store::Result<Option<(Vec<IdSet>, Skipped)>> {
    let mut sets = Vec::new();
    let mut skipped = Skipped::default();
    let whole = store::fetch(
        con,
        keys,
        window_start,
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
