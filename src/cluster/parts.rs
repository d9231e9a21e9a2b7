//! The Redis side of a window's partitions ([`crate::ids::partition`]): each partition's
//! shipments, its freeze, the lease of the instance counting it and its count, each an atomic
//! script on the partition's keys ([`PartitionKeys`], one slot on Redis Cluster). The window
//! as a whole (its last-shipment marks, endpoints, lease, `done`) is [`crate::cluster::store`]'s.
//!
//! **How a window is counted.** Every instance ships each partition's values of its ids to
//! that partition's list ([`ship`]). The window's leader, once the window is ready, freezes
//! the window and then every partition ([`freeze`]): from then on each list no longer
//! changes, and a shipment to it is refused ([`Shipped::TooLate`]) and reported by its
//! instance alone, as before partitions existed. Every instance that holds the window then
//! competes for the partitions' leases ([`lead`]); the one that wins a partition reads its
//! list, counts its distinct values, and records the count ([`counted`], which also frees the
//! list). The leader adds the partitions' counts once all are there ([`counts`]): each is
//! read from its own key, written once, so a count that arrives late, or twice (a counter
//! that lost its lease mid-count and a successor), is never added twice. A counter that dies
//! mid-count stops renewing its lease, and another instance takes the partition over.
//!
//! What Redis holds is untrusted, as in [`crate::cluster::store`]: every read is bounded, a key
//! of another type is an [`Error::Malformed`](crate::cluster::error::Error::Malformed) naming it, and the count of a partition is
//! parsed like a `done` mark.

use redis::{ConnectionLike, Value};

use crate::cluster::error::{malformed, Result};
use crate::cluster::keys::{parse_count, PartitionKeys};
use crate::cluster::store::{Blob, Shipped, MAX_SHIPMENTS_PER_WINDOW, MAX_SHIPMENT_BYTES};

/// Stores one shipment of a partition unless the partition is frozen. Answers: 1 stored, 0
/// too late, -1 `ids` of another type.
const SHIP: &str = r"
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
local t = redis.call('TYPE', KEYS[1]).ok
if t ~= 'none' and t ~= 'list' then
  return -1
end
redis.call('RPUSH', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
";

/// Appends `ids` (a partition's values, serialized, at most [`MAX_SHIPMENT_BYTES`]) to the
/// partition's list, unless the partition is frozen ([`Shipped::TooLate`]).
pub fn ship(
    con: &mut dyn ConnectionLike,
    keys: &PartitionKeys,
    ids: &[u8],
    ttl_ms: u64,
) -> Result<Shipped> {
    let answer: i64 = redis::Script::new(SHIP)
        .key(&keys.ids)
        .key(&keys.frozen)
        .arg(ttl_ms)
        .arg(ids)
        .invoke(con)?;
    match answer {
        1 => Ok(Shipped::Stored),
        0 => Ok(Shipped::TooLate),
        _ => Err(malformed(keys.ids.clone(), "is not a list")),
    }
}

/// Freezes the partition (for `ARGV[1]` ms) and returns its list's length; -1 when the list
/// is of another type.
const FREEZE: &str = r"
local t = redis.call('TYPE', KEYS[1]).ok
if t ~= 'none' and t ~= 'list' then
  return -1
end
redis.call('SET', KEYS[2], '1', 'PX', ARGV[1])
return redis.call('LLEN', KEYS[1])
";

/// Freezes the partition: from now on its list does not change, and every shipment to it is
/// refused. Returns how many shipments it holds. The window's leader calls it, after freezing
/// the window, for every partition; freezing again (a successor, a retry) is harmless.
pub fn freeze(con: &mut dyn ConnectionLike, keys: &PartitionKeys, ttl_ms: u64) -> Result<u64> {
    let n: i64 = redis::Script::new(FREEZE)
        .key(&keys.ids)
        .key(&keys.frozen)
        .arg(ttl_ms)
        .invoke(con)?;
    let n = u64::try_from(n).map_err(|_| malformed(keys.ids.clone(), "is not a list"))?;
    check_shipments(keys, n)
}

/// `n` if a list of `n` shipments may be read.
fn check_shipments(keys: &PartitionKeys, n: u64) -> Result<u64> {
    if n > MAX_SHIPMENTS_PER_WINDOW {
        return Err(malformed(
            keys.ids.clone(),
            "holds more shipments than MAX_SHIPMENTS_PER_WINDOW",
        ));
    }
    Ok(n)
}

/// Where a partition stands for one instance asking to count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lead {
    /// Counted already, with this count.
    Counted(u64),
    /// Not frozen yet: its window's leader has not decided the window is ready.
    Open,
    /// The asking instance counts it: its list holds this many shipments.
    Counting(u64),
    /// Another instance counts it.
    Held,
}

/// Count check, freeze check and lease in one step; a count is returned cut to 21 bytes.
const LEAD: &str = r"
local c = redis.call('GET', KEYS[2])
if c then
  return {'counted', string.sub(c, 1, 21)}
end
if redis.call('EXISTS', KEYS[3]) == 0 then
  return {'open'}
end
local t = redis.call('TYPE', KEYS[4]).ok
if t ~= 'none' and t ~= 'list' then
  return {'bad'}
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) or redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {'lead', tostring(redis.call('LLEN', KEYS[4]))}
end
return {'held'}
";

/// Asks to count the partition, with a lease of `lease_ms` (see [`Lead`]).
pub fn lead(
    con: &mut dyn ConnectionLike,
    keys: &PartitionKeys,
    instance: &str,
    lease_ms: u64,
) -> Result<Lead> {
    let answer: Vec<Vec<u8>> = redis::Script::new(LEAD)
        .key(&keys.lease)
        .key(&keys.count)
        .key(&keys.frozen)
        .key(&keys.ids)
        .arg(instance)
        .arg(lease_ms)
        .invoke(con)?;
    let number = |what: &str| {
        answer
            .get(1)
            .and_then(|c| parse_count(c))
            .ok_or_else(|| malformed(what.to_owned(), "is not a count"))
    };
    match answer.first().map(Vec::as_slice) {
        Some(b"counted") => Ok(Lead::Counted(number(&keys.count)?)),
        Some(b"open") => Ok(Lead::Open),
        Some(b"lead") => Ok(Lead::Counting(check_shipments(keys, number(&keys.ids)?)?)),
        Some(b"bad") => Err(malformed(keys.ids.clone(), "is not a list")),
        _ => Ok(Lead::Held),
    }
}

/// Renews the lease only while `instance` still holds it and the partition is not counted.
const RENEW: &str = r"
if redis.call('EXISTS', KEYS[2]) == 0 and redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// Extends `instance`'s lease on the partition by `lease_ms`; false when it has lost it (or
/// the partition was counted by another instance meanwhile).
pub fn renew(
    con: &mut dyn ConnectionLike,
    keys: &PartitionKeys,
    instance: &str,
    lease_ms: u64,
) -> Result<bool> {
    let renewed: i64 = redis::Script::new(RENEW)
        .key(&keys.lease)
        .key(&keys.count)
        .arg(instance)
        .arg(lease_ms)
        .invoke(con)?;
    Ok(renewed == 1)
}

/// Records the partition's count while `instance` holds its lease, unless one is recorded
/// already (the first stands: both were read from the same frozen list), and frees the list
/// and the lease.
const COUNTED: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[3])
redis.call('DEL', KEYS[1], KEYS[3])
return 1
";

/// Records `count` as the partition's count (kept `ttl_ms`), frees its shipments and gives
/// the lease back. False when `instance` no longer held the lease: the count is not
/// recorded, and the instance that took the partition over records its own.
pub fn counted(
    con: &mut dyn ConnectionLike,
    keys: &PartitionKeys,
    instance: &str,
    count: u64,
    ttl_ms: u64,
) -> Result<bool> {
    let done: i64 = redis::Script::new(COUNTED)
        .key(&keys.lease)
        .key(&keys.count)
        .key(&keys.ids)
        .arg(instance)
        .arg(count)
        .arg(ttl_ms)
        .invoke(con)?;
    Ok(done == 1)
}

/// Gives the partition's lease up if `instance` holds it (it cannot count it).
pub fn release(con: &mut dyn ConnectionLike, keys: &PartitionKeys, instance: &str) -> Result<()> {
    redis::Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end \
         return 0",
    )
    .key(&keys.lease)
    .arg(instance)
    .invoke::<i64>(con)?;
    Ok(())
}

/// A partition's count, cut to 21 bytes (enough to tell a count from something else), so
/// that a value of any length costs a bounded reply; nil when there is none.
const COUNT: &str = r"
local c = redis.call('GET', KEYS[1])
if c then
  return string.sub(c, 1, 21)
end
return false
";

/// The recorded count of each partition (`None`: not counted yet), in partition order.
pub fn counts(con: &mut dyn ConnectionLike, parts: &[PartitionKeys]) -> Result<Vec<Option<u64>>> {
    let script = redis::Script::new(COUNT);
    parts
        .iter()
        .map(|keys| {
            let raw: Option<Vec<u8>> = script.key(&keys.count).invoke(con)?;
            raw.map(|c| {
                parse_count(&c).ok_or_else(|| malformed(keys.count.clone(), "is not a count"))
            })
            .transpose()
        })
        .collect()
}

/// How many shipments the partition's list holds now (for reads that do not freeze it:
/// tests and tools).
pub fn shipments(con: &mut dyn ConnectionLike, keys: &PartitionKeys) -> Result<u64> {
    let n: u64 = redis::cmd("LLEN").arg(&keys.ids).query(con)?;
    check_shipments(keys, n)
}

/// Shipments asked for per read: with [`FETCH_PAGE_BYTES`], bounds what one reply holds. A
/// partition's shipments are small (a second of one instance's ids, over the partitions), so
/// a page holds many: each round trip carries about a megabyte.
const FETCH_PAGE: u64 = 256;

/// A page's reply stops once it holds this many bytes of shipments (it holds at least one):
/// the reader never holds more than this plus [`MAX_SHIPMENT_BYTES`] of raw replies.
const FETCH_PAGE_BYTES: usize = 4 << 20;

/// A page of the list: at most `FETCH_PAGE` elements and, past the first, at most
/// `FETCH_PAGE_BYTES`; an element longer than `MAX_SHIPMENT_BYTES` is replaced by its
/// length, so it never crosses the network. One `LRANGE` per element rather than one for the
/// page: the script copies only the elements it returns. Not `LINDEX`: the Redis users that
/// deployments give verve (docs/cluster.md) may run `LRANGE` and not `LINDEX`.
const FETCH: &str = r"
local key, first, last = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2])
local max, budget = tonumber(ARGV[3]), tonumber(ARGV[4])
local out, bytes = {}, 0
for i = first, last do
  local blob = redis.call('LRANGE', key, i, i)[1]
  if not blob then
    break
  end
  local n = #blob
  if n > max then
    out[#out + 1] = n
  else
    if #out > 0 and bytes + n > budget then
      break
    end
    out[#out + 1] = blob
    bytes = bytes + n
  end
end
return out
";

/// Calls `each` with the first `count` shipments of the partition's list (from [`lead`] or
/// [`shipments`]), a page at a time, and `between` with the connection after each page: a
/// long read can renew leases and heartbeat on the way. `between` returning false stops the
/// read (false). A list that turns out shorter (another instance counted the partition and
/// freed it) ends the read early; the count is then not recorded ([`counted`] fails).
pub fn fetch(
    con: &mut dyn ConnectionLike,
    keys: &PartitionKeys,
    count: u64,
    each: &mut dyn FnMut(Blob<'_>),
    between: &mut dyn FnMut(&mut dyn ConnectionLike) -> Result<bool>,
) -> Result<bool> {
    let script = redis::Script::new(FETCH);
    let mut at = 0u64;
    while at < count {
        let last = (at + FETCH_PAGE).min(count) - 1;
        let page: Vec<Value> = script
            .key(&keys.ids)
            .arg(at)
            .arg(last)
            .arg(MAX_SHIPMENT_BYTES)
            .arg(FETCH_PAGE_BYTES)
            .invoke(con)?;
        if page.is_empty() {
            return Ok(true);
        }
        for element in &page {
            match element {
                Value::BulkString(bytes) => each(Blob::Shipment(bytes)),
                Value::Int(n) => each(Blob::Oversized(u64::try_from(*n).unwrap_or(0))),
                _ => {
                    return Err(malformed(
                        keys.ids.clone(),
                        "holds a reply that is not a shipment",
                    ))
                }
            }
        }
        at += page.len() as u64;
        if at < count && !between(con)? {
            return Ok(false);
        }
    }
    Ok(true)
}
