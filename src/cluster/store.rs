//! The Redis side of a window in cluster mode, as a whole: its endpoints and last-shipment
//! marks, the per-window lease, the freeze and the `done` mark, each an atomic command or
//! script on the keys that [`Keys`] names. Its ids live in its partitions' lists, whose
//! shipments, freeze, leases and counts are [`crate::cluster::parts`]'s; the deployment's
//! shared keys are [`crate::cluster::presence`]'s. Blocking calls on a `redis` connection:
//! only the cluster thread uses this, never a coroutine.
//!
//! A window's count is the sum of its partitions' counts, each the cardinality of the union
//! of every shipment in the partition's list. Shipments are deltas (ids the instance had not
//! shipped yet) but nothing depends on that: a shipment repeated after a timeout, a full
//! re-shipment after Redis lost data, or an instance that restarted inside the window only
//! add ids already there. Shipping is at-least-once, and the union makes it exact.
//!
//! **No stored shipment goes unread.** The leader freezes the window ([`freeze`]: one script
//! that checks its lease and sets `frozen`), then each partition, before any partition is
//! read; the ship scripts refuse a window or a partition that is frozen or done. So every
//! shipment that was answered [`Shipped::Stored`] is in the lists that are then counted, and
//! every later one is answered [`Shipped::TooLate`], which its instance reports alone
//! (`scope=local`). A successor that takes over a frozen window counts the same, unchanged
//! lists.
//!
//! **Redis is untrusted input.** Another program, or another deployment, may write under the
//! prefix. Every read is bounded before anything is allocated on this side (shipments by
//! [`MAX_SHIPMENT_BYTES`] and [`MAX_SHIPMENTS_PER_WINDOW`], endpoints by the caller's maximum
//! and [`MAX_ENDPOINT_BYTES`], the live set by [`MAX_LIVE_READ`]), the scripts check key
//! types before they write (so a shipment is stored whole or not at all), and a value that
//! verve would not have written is an [`Error::Malformed`] naming the key, which the cluster
//! thread charges to that window alone.
//!
//! `{...}` is a Redis Cluster hash tag: all keys of one window live in one slot (and those of
//! each partition in one of their own), so each step is one atomic script, on Redis Cluster
//! too. Every key carries an expiry and disappears on its own; a partition's ids go as soon
//! as it is counted.

use std::collections::BTreeSet;

use redis::ConnectionLike;

use crate::cluster::error::malformed;
pub use crate::cluster::error::{Error, Result};
pub use crate::cluster::keys::{parse_count, Keys};
pub use crate::cluster::presence::{
    claim_interval, heartbeat, leave, live, Interval, MAX_LIVE_READ,
};

/// The most bytes one stored shipment may have. The shipper cuts larger id sets (and
/// endpoint lists) into several shipments of at most this (an id set's parts are cut between
/// its blocks, each at most 33 KiB); the leader skips a longer one unread, as something
/// verve did not write. 8 MiB is about two million random 64-bit ids, more than a saturated
/// instance takes in a second, and crosses a 100 Mbit/s link well within
/// [`crate::cluster::conn::IO_TIMEOUT`].
pub const MAX_SHIPMENT_BYTES: usize = 8 << 20;

/// The most shipments one window's list may hold. An instance ships at most once a second
/// (plus its last shipment, and whole re-shipments after reconnects): a day-long window
/// (the longest `--interval`) shipped every second by ten instances is 864,000. A longer
/// list is not verve's: the window is not read (it costs that window only).
pub const MAX_SHIPMENTS_PER_WINDOW: u64 = 1_000_000;

/// The longest endpoint verve stores: what a request may name
/// ([`crate::query::MAX_ENDPOINT_BYTES`], checked again on its canonical form). A longer
/// member of an endpoint set is read cut to one byte more, so that it is refused as too long.
pub const MAX_ENDPOINT_BYTES: usize = crate::query::MAX_ENDPOINT_BYTES;

/// Endpoint set members asked for per `SSCAN` step: small replies, few round trips.
const ENDPOINT_SCAN_COUNT: usize = 512;

/// The window's part of one shipment of one instance: the endpoints named (the ids go to
/// the partitions' lists, [`crate::cluster::parts::ship`], before this), and whether it is
/// the instance's last shipment of the window.
#[derive(Debug, Clone, Copy)]
pub struct Shipment<'a> {
    pub window_start: u64,
    pub instance: &'a str,
    pub endpoints: &'a [String],
    /// True for the instance's last shipment of the window: it has nothing more (every
    /// partition's ids of it are stored).
    pub last: bool,
    /// How long the window's keys live, in ms.
    pub ttl_ms: u64,
}

/// What became of a shipment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shipped {
    Stored,
    /// The window's leader had frozen the window (or one of its partitions) for its count,
    /// or reported it: this shipment was not stored (the parts of the same load shipped
    /// before it may have been), and its instance reports its ids alone (`scope=local`).
    TooLate,
}

/// The window's part of a shipment, atomically (a script, not a `MULTI` pipeline: the sync
/// Redis Cluster connection of the `redis` crate does not pipeline, and a script runs on the
/// node of its keys, which share the window's slot). Refused once the window is frozen or
/// done, so that the leader reads every endpoint and last-shipment mark stored. A `done`
/// that is not a count, or a key of another type, is answered with a code before anything
/// is written: scripts are not rolled back. Endpoints are added 1000 at a time (Lua's
/// `unpack` has a stack limit).
///
/// Answers: 1 stored, 0 too late, -1 `done` malformed, -2/-3 `endpoints`/`shipped` of another
/// type.
const SHIP: &str = r"
local done = redis.call('GET', KEYS[3])
if done then
  if #done <= 20 and string.match(done, '^%d+$') then
    return 0
  end
  return -1
end
if redis.call('EXISTS', KEYS[4]) == 1 then
  return 0
end
for i = 1, 2 do
  local t = redis.call('TYPE', KEYS[i]).ok
  if t ~= 'none' and t ~= 'set' then
    return -1 - i
  end
end
if #ARGV > 3 then
  for i = 4, #ARGV, 1000 do
    redis.call('SADD', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
  end
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
if ARGV[2] == '1' then
  redis.call('SADD', KEYS[2], ARGV[3])
  redis.call('PEXPIRE', KEYS[2], ARGV[1])
end
return 1
";

/// Ships the window's part of `s`: its endpoints join the window's set, and a last shipment
/// marks the instance as done with the window, all or nothing.
pub fn ship(con: &mut dyn ConnectionLike, keys: &Keys, s: &Shipment<'_>) -> Result<Shipped> {
    let w = s.window_start;
    let script = redis::Script::new(SHIP);
    let mut call = script.prepare_invoke();
    call.key(keys.endpoints(w))
        .key(keys.shipped(w))
        .key(keys.done(w))
        .key(keys.frozen(w))
        .arg(s.ttl_ms)
        .arg(if s.last { "1" } else { "0" })
        .arg(s.instance);
    for endpoint in s.endpoints {
        call.arg(endpoint);
    }
    match call.invoke::<i64>(con)? {
        1 => Ok(Shipped::Stored),
        0 => Ok(Shipped::TooLate),
        -1 => Err(malformed(keys.done(w), "is not a count")),
        -2 => Err(malformed(keys.endpoints(w), "is not a set")),
        _ => Err(malformed(keys.shipped(w), "is not a set")),
    }
}

/// Where a window stands for one instance asking to lead it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lead {
    /// Reported already, with this global count.
    Done(u64),
    /// The asking instance leads it (the lease was free, or is its own and was renewed).
    Leading,
    /// Another instance leads it.
    Waiting,
}

/// Done check, lease take-over and renewal in one step: the lease is taken with `SET NX PX`,
/// so a successor gets it only once the leader stopped renewing it for `lease_ms`. A `done`
/// is returned cut to 21 bytes: enough to tell a count from something else.
const LEAD: &str = r"
local done = redis.call('GET', KEYS[2])
if done then
  return {'done', string.sub(done, 1, 21)}
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {'lead'}
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {'lead'}
end
return {'wait'}
";

/// Asks to lead the window for `lease_ms` (see [`Lead`]). A `done` that is not a count is
/// [`Error::Malformed`]: it is not taken for a report.
pub fn lead(
    con: &mut dyn ConnectionLike,
    keys: &Keys,
    window_start: u64,
    instance: &str,
    lease_ms: u64,
) -> Result<Lead> {
    let answer: Vec<Vec<u8>> = redis::Script::new(LEAD)
        .key(keys.lease(window_start))
        .key(keys.done(window_start))
        .arg(instance)
        .arg(lease_ms)
        .invoke(con)?;
    match answer.first().map(Vec::as_slice) {
        Some(b"done") => answer
            .get(1)
            .and_then(|c| parse_count(c))
            .map(Lead::Done)
            .ok_or_else(|| malformed(keys.done(window_start), "is not a count")),
        Some(b"lead") => Ok(Lead::Leading),
        _ => Ok(Lead::Waiting),
    }
}

/// Renews the lease only while `instance` still holds it and the window is not done.
const RENEW: &str = r"
if redis.call('EXISTS', KEYS[2]) == 0 and redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// Extends the lease by `lease_ms` if `instance` still holds it and the window is not
/// reported; false when it has lost it. The leader's last check before it writes the count.
pub fn renew(
    con: &mut dyn ConnectionLike,
    keys: &Keys,
    window_start: u64,
    instance: &str,
    lease_ms: u64,
) -> Result<bool> {
    let renewed: i64 = redis::Script::new(RENEW)
        .key(keys.lease(window_start))
        .key(keys.done(window_start))
        .arg(instance)
        .arg(lease_ms)
        .invoke(con)?;
    Ok(renewed == 1)
}

/// Gives the lease up if `instance` holds it.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Gives up the lead of the window (a graceful stop, or a window this instance cannot
/// read), so that a successor need not wait for the lease to expire.
pub fn release(
    con: &mut dyn ConnectionLike,
    keys: &Keys,
    window_start: u64,
    instance: &str,
) -> Result<()> {
    redis::Script::new(RELEASE)
        .key(keys.lease(window_start))
        .arg(instance)
        .invoke::<i64>(con)?;
    Ok(())
}

/// While `instance` holds the lease and the window is not done: the `frozen` mark. -1 when
/// `instance` does not lead the window.
const FREEZE: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] or redis.call('EXISTS', KEYS[2]) == 1 then
  return -1
end
redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[2])
return 1
";

/// The leader's step before its count: from here on the window's endpoints and last-shipment
/// marks no longer change (every such shipment is refused, [`Shipped::TooLate`]); the leader
/// then freezes each partition ([`crate::cluster::parts::freeze`]). False when `instance` no
/// longer leads the window. Freezing again (a successor, or a retry) is harmless.
pub fn freeze(
    con: &mut dyn ConnectionLike,
    keys: &Keys,
    window_start: u64,
    instance: &str,
    ttl_ms: u64,
) -> Result<bool> {
    let n: i64 = redis::Script::new(FREEZE)
        .key(keys.lease(window_start))
        .key(keys.done(window_start))
        .key(keys.frozen(window_start))
        .arg(instance)
        .arg(ttl_ms)
        .invoke(con)?;
    Ok(n == 1)
}

/// Whether the window's leader has frozen it: the instances that hold it may count its
/// partitions.
pub fn is_frozen(con: &mut dyn ConnectionLike, keys: &Keys, window_start: u64) -> Result<bool> {
    Ok(redis::cmd("EXISTS")
        .arg(keys.frozen(window_start))
        .query::<i64>(con)?
        == 1)
}

/// Marks the window reported while `instance` holds the lease, and drops its endpoints (the
/// partitions' lists went as each was counted).
const MARK_DONE: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('DEL', KEYS[3], KEYS[4])
if ARGV[4] ~= '' then
  redis.call('SET', KEYS[5], ARGV[2], 'PX', ARGV[3])
  redis.call('SET', KEYS[6], ARGV[1], 'PX', ARGV[4])
end
return 1
";

/// Marks the window reported with its global `count` (kept for `ttl_ms`, so that a late
/// shipment is refused rather than reported twice) and frees its ids. False when `instance`
/// no longer held the lease: another instance may report the window too.
pub fn mark_done(
    con: &mut dyn ConnectionLike,
    keys: &Keys,
    window_start: u64,
    instance: &str,
    count: u64,
    ttl_ms: u64,
) -> Result<bool> {
    let mark = DoneMark {
        window_start,
        instance,
        count,
        ttl_ms,
    };
    mark_done_with_record(con, keys, &mark, None)
}

/// What a window's `done` mark says and how long it is kept (see [`mark_done`]).
#[derive(Debug, Clone, Copy)]
pub struct DoneMark<'a> {
    pub window_start: u64,
    /// The instance that leads the window and must still hold its lease.
    pub instance: &'a str,
    /// The window's global count.
    pub count: u64,
    pub ttl_ms: u64,
}

/// [`mark_done`] of `mark`, and with `record_lease_ms`, in the same step: the window's Kafka record is
/// pending (`record`), held by `instance`'s producer (`record-owner`, for that long unless
/// renewed, see [`claim_record`]). If the instance dies or stops before the broker
/// acknowledged the record, another instance takes the record over and produces it.
pub fn mark_done_with_record(
    con: &mut dyn ConnectionLike,
    keys: &Keys,
    mark: &DoneMark<'_>,
    record_lease_ms: Option<u64>,
) -> Result<bool> {
    let window_start = mark.window_start;
    let marked: i64 = redis::Script::new(MARK_DONE)
        .key(keys.lease(window_start))
        .key(keys.done(window_start))
        .key(keys.endpoints(window_start))
        .key(keys.frozen(window_start))
        .key(keys.record(window_start))
        .key(keys.record_owner(window_start))
        .arg(mark.instance)
        .arg(mark.count)
        .arg(mark.ttl_ms)
        .arg(record_lease_ms.map(|ms| ms.to_string()).unwrap_or_default())
        .invoke(con)?;
    Ok(marked == 1)
}

/// Where a window's pending Kafka record stands for one instance claiming it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordClaim {
    /// No record pending: acknowledged (or the window was reported without Kafka).
    Gone,
    /// Its owner had stopped renewing it: this instance now owns it and must produce it,
    /// with this count.
    Taken(u64),
    /// This instance owns it (renewed).
    Mine,
    /// Another instance owns it.
    Held,
}

/// Claims (or renews) the ownership of a window's pending record, in one step.
const CLAIM_RECORD: &str = r"
local count = redis.call('GET', KEYS[1])
if not count then
  return {'gone'}
end
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  return {'mine'}
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {'taken', string.sub(count, 1, 21)}
end
return {'held'}
";

/// Claims the window's pending Kafka record for `instance` for `lease_ms`, or renews its
/// claim (see [`RecordClaim`]). A record count that is not a count is [`Error::Malformed`].
pub fn claim_record(
    con: &mut dyn ConnectionLike,
    keys: &Keys,
    window_start: u64,
    instance: &str,
    lease_ms: u64,
) -> Result<RecordClaim> {
    let answer: Vec<Vec<u8>> = redis::Script::new(CLAIM_RECORD)
        .key(keys.record(window_start))
        .key(keys.record_owner(window_start))
        .arg(instance)
        .arg(lease_ms)
        .invoke(con)?;
    match answer.first().map(Vec::as_slice) {
        Some(b"gone") => Ok(RecordClaim::Gone),
        Some(b"mine") => Ok(RecordClaim::Mine),
        Some(b"taken") => answer
            .get(1)
            .and_then(|c| parse_count(c))
            .map(RecordClaim::Taken)
            .ok_or_else(|| malformed(keys.record(window_start), "is not a count")),
        _ => Ok(RecordClaim::Held),
    }
}

/// Forgets a window's pending record, whoever owns it: the broker acknowledged it.
const RECORD_ACKNOWLEDGED: &str = r"
return redis.call('DEL', KEYS[1], KEYS[2])
";

/// The broker acknowledged the window's record (produced by `instance`): nobody needs to
/// produce it again.
pub fn record_acknowledged(
    con: &mut dyn ConnectionLike,
    keys: &Keys,
    window_start: u64,
) -> Result<()> {
    redis::Script::new(RECORD_ACKNOWLEDGED)
        .key(keys.record(window_start))
        .key(keys.record_owner(window_start))
        .invoke::<i64>(con)?;
    Ok(())
}

/// Gives up the ownership of a window's pending record (this instance stops with it not
/// acknowledged), so that another instance takes it over at once.
pub fn release_record(
    con: &mut dyn ConnectionLike,
    keys: &Keys,
    window_start: u64,
    instance: &str,
) -> Result<()> {
    redis::Script::new(RELEASE)
        .key(keys.record_owner(window_start))
        .arg(instance)
        .invoke::<i64>(con)?;
    Ok(())
}

/// Writes a window's `done` mark again, with the global `count` it was reported with, unless
/// a `done` (or any value) is there already: for an instance that knows the window was
/// reported, after Redis may have restarted empty or failed over to a replica that lacked the
/// mark. Without it, an instance that had not yet seen the mark would ship the window again
/// and, after the grace, report it a second time with a partial count. True if written.
pub fn restore_done(
    con: &mut dyn ConnectionLike,
    keys: &Keys,
    window_start: u64,
    count: u64,
    ttl_ms: u64,
) -> Result<bool> {
    let set: Option<String> = redis::cmd("SET")
        .arg(keys.done(window_start))
        .arg(count)
        .arg("NX")
        .arg("PX")
        .arg(ttl_ms.max(1))
        .query(con)?;
    Ok(set.is_some())
}

/// One element of a partition's list, as [`crate::cluster::parts::fetch`] hands it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blob<'a> {
    /// A shipment's bytes, at most [`MAX_SHIPMENT_BYTES`]: still to be decoded.
    Shipment(&'a [u8]),
    /// Something longer than [`MAX_SHIPMENT_BYTES`] (this many bytes), not read.
    Oversized(u64),
}

/// Whether `instance` made its last shipment of the window.
pub fn has_shipped(
    con: &mut dyn ConnectionLike,
    keys: &Keys,
    window_start: u64,
    instance: &str,
) -> Result<bool> {
    Ok(redis::cmd("SISMEMBER")
        .arg(keys.shipped(window_start))
        .arg(instance)
        .query(con)?)
}

/// What [`endpoints`] read of a window's endpoint set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredEndpoints {
    /// Distinct members, sorted, at most the maximum asked for, each at most
    /// [`MAX_ENDPOINT_BYTES`] + 1 bytes (a longer one is cut there). Raw bytes: whatever
    /// wrote them, they are checked as a client's endpoint would be before any is called.
    pub members: Vec<Vec<u8>>,
    /// Members in the set, read or not.
    pub total: u64,
}

/// One `SSCAN` step, each member cut to `ARGV[3]` bytes: the cursor, then the members.
const SCAN_ENDPOINTS: &str = r"
local r = redis.call('SSCAN', KEYS[1], ARGV[1], 'COUNT', ARGV[2])
local cut = tonumber(ARGV[3])
local out = {r[1]}
for _, m in ipairs(r[2]) do
  out[#out + 1] = string.sub(m, 1, cut)
end
return out
";

/// The endpoints named anywhere in the cluster during the window: at most `max` of them
/// (the instance's `--max-endpoints`), read a step at a time so that a set of any size costs
/// a bounded reply.
pub fn endpoints(
    con: &mut dyn ConnectionLike,
    keys: &Keys,
    window_start: u64,
    max: usize,
) -> Result<StoredEndpoints> {
    let key = keys.endpoints(window_start);
    let total: u64 = redis::cmd("SCARD").arg(&key).query(con)?;
    let script = redis::Script::new(SCAN_ENDPOINTS);
    let mut members = BTreeSet::new();
    let mut cursor = b"0".to_vec();
    while members.len() < max {
        let step: Vec<Vec<u8>> = script
            .key(&key)
            .arg(&cursor)
            .arg(ENDPOINT_SCAN_COUNT)
            .arg(MAX_ENDPOINT_BYTES + 1)
            .invoke(con)?;
        let Some((next, found)) = step.split_first() else {
            return Err(malformed(key, "gave an empty SSCAN reply"));
        };
        // SSCAN may hand a member out twice; the set removes repeats.
        members.extend(found.iter().take(max - members.len()).cloned());
        if next.as_slice() == b"0" {
            break;
        }
        cursor = next.clone();
    }
    Ok(StoredEndpoints {
        members: members.into_iter().collect(),
        total,
    })
}
