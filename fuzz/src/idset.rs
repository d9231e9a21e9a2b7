//! The `idset` target: serialized id sets from outside (Redis shipments, a state file's set).

use verve::ids::{from_key, IdSet};

/// Most ids a serialized set may claim per byte. A dense segment is a roaring bitmap, whose
/// densest piece is a run container: at least 10 bytes (4 of description, 2 of run count, 4
/// for one run) for at most 65,536 ids, 6,553.6 a byte (measured: 5,617 at most, three full
/// containers in 35 bytes). A packed block is far below that (a 13-byte header for 4096
/// consecutive ids, 315 a byte). Anything more would be an expansion the decoder promises
/// not to allow.
pub const MAX_IDS_PER_BYTE: u64 = 65_536 / 10 + 1;

/// A serialized id set from outside (a shipment read from Redis, the id set of a state
/// file), in the compact format. Checked: no panic; what `IdSet::deserialize`
/// accepts claims at most [`MAX_IDS_PER_BYTE`] ids a byte, its keys ascend strictly and
/// number `len()`, and it serializes to bytes that read back as the same set.
pub fn check_idset(data: &[u8]) -> Result<(), String> {
    let Ok(set) = IdSet::deserialize(data) else {
        return Ok(());
    };
    ensure!(
        set.len() <= MAX_IDS_PER_BYTE * data.len() as u64,
        "{} ids from {} bytes",
        set.len(),
        data.len()
    );
    let mut count = 0u64;
    let mut previous: Option<u64> = None;
    for key in set.keys() {
        ensure!(
            previous.is_none_or(|p| p < key),
            "key {key} after {previous:?}"
        );
        previous = Some(key);
        count += 1;
    }
    ensure!(count == set.len(), "{count} keys, len() {}", set.len());
    if let Some(last) = previous {
        ensure!(
            set.contains(from_key(last)),
            "the last key is not contained"
        );
    }
    let mut bytes = Vec::new();
    set.serialize_into(&mut bytes);
    ensure!(
        bytes.len() == set.serialized_size(),
        "serialized {} bytes, serialized_size {}",
        bytes.len(),
        set.serialized_size()
    );
    let back = IdSet::deserialize(&bytes).map_err(|e| format!("re-decode: {e}"))?;
    ensure!(
        back == set,
        "the set changed through serialize and deserialize"
    );
    Ok(())
}
