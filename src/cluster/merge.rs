//! The leader's merge: a window's count is the number of ids in the union of every shipment
//! in its list (see [`store`]), read page by page and merged in pairs of similar size
//! ([`Union`]) so that many small shipments (one per instance per second) cost `O(n log k)`,
//! not a copy of the whole union per shipment. Also the shipment's encoding, which this
//! reads back: an id set in its compact format.
//!
//! What Redis holds is untrusted: a shipment too long to be verve's, or that is not an id
//! set, is skipped and counted ([`Skipped`]), and costs no other shipment.

use crate::cluster::store::{self, Blob, Keys};
use crate::ids::{IdSet, Union};

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

/// The union of every shipment a window's list holds now (tests and tools: the leader
/// freezes the window first, see [`union_of_shipments_pausing`]), and what was skipped.
/// Shipments in the compact format and in roaring's portable format (what earlier versions
/// shipped) are both read.
pub fn union_of_shipments(
    con: &mut dyn redis::ConnectionLike,
    keys: &Keys,
    window_start: u64,
) -> store::Result<(IdSet, Skipped)> {
    let count = store::shipments(con, keys, window_start)?;
    union_of_shipments_pausing(con, keys, window_start, count, &mut |_| Ok(true))
        .map(|u| u.expect("never stopped"))
}

/// The union of the first `count` shipments of a window's list, with [`store::fetch`]'s
/// `between`; `None` if it stopped.
pub fn union_of_shipments_pausing(
    con: &mut dyn redis::ConnectionLike,
    keys: &Keys,
    window_start: u64,
    count: u64,
    between: &mut dyn FnMut(&mut dyn redis::ConnectionLike) -> store::Result<bool>,
) -> store::Result<Option<(IdSet, Skipped)>> {
    let mut union = Union::default();
    let mut skipped = Skipped::default();
    let whole = store::fetch(
        con,
        keys,
        window_start,
        count,
        &mut |blob| match blob {
            Blob::Shipment(bytes) => match IdSet::deserialize(bytes) {
                Ok(set) => union.add(set),
                Err(_) => skipped.unreadable += 1,
            },
            Blob::Oversized(_) => skipped.oversized += 1,
        },
        between,
    )?;
    Ok(whole.then(|| (union.into_set(), skipped)))
}
