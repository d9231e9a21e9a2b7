//! The Redis side of a window in cluster mode: its shipments, its lease, the freeze, the
//! leader's reads and the `done` mark, each an atomic command or script on the keys that
//! [`Keys`] names (the deployment's shared keys are [`crate::cluster::presence`]'s). Blocking
//! calls on a `redis` connection: only the cluster thread uses
//! this, never a coroutine.
//!
//! A window's count is the cardinality of the union of every shipment in its list. Shipments
//! are deltas (ids the instance had not shipped yet) but nothing depends on that: a shipment
//! repeated after a timeout, a full re-shipment after Redis lost data, or an instance that
//! restarted inside the window only add ids already there. Shipping is at-least-once, and
//! the union makes it exact.
//!
//! **No stored shipment goes unread.** The leader freezes the window ([`freeze`]: one script
//! that checks its lease, sets `frozen` and returns the list's length) before it reads the
//! list, and the ship script refuses a window that is frozen or done. So every shipment that
//! was answered [`Shipped::Stored`] is in the list the leader then reads, and every later one
//! is answered [`Shipped::TooLate`], which its instance reports alone (`scope=local`): none
//! is stored after the read and deleted unseen by [`mark_done`]. A successor that takes over a
//! frozen window reads the same, unchanged list.
//!
//! **Redis is untrusted input.** Another program, or another deployment, may write under the
//! prefix. Every read is bounded before anything is allocated on this side (shipments by
//! [`MAX_SHIPMENT_BYTES`] and [`MAX_SHIPMENTS_PER_WINDOW`], endpoints by the caller's maximum
//! and [`MAX_ENDPOINT_BYTES`], the live set by [`MAX_LIVE_READ`]), the scripts check key
//! types before they write (so a shipment is stored whole or not at all), and a value that
//! verve would not have written is an [`Error::Malformed`] naming the key, which the cluster
//! thread charges to that window alone.
//!
//! `{wS}` is a Redis Cluster hash tag: all keys of one window live in one slot, so each
//! shipment, lease step and report is one atomic script, on Redis Cluster too. Every key
//! carries an expiry and disappears on its own; the ids go as soon as the window is
//! reported.

use std::collections::BTreeSet;

use redis::{ConnectionLike, Value};

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

/// Shipments asked for per read: with [`FETCH_PAGE_BYTES`], bounds what one reply holds.
const FETCH_PAGE: u64 = 8;

/// A page's reply stops once it holds this many bytes of shipments (it holds at least one):
/// the leader never holds more than this plus [`MAX_SHIPMENT_BYTES`] of raw replies.
const FETCH_PAGE_BYTES: usize = 16 << 20;

/// The longest endpoint verve stores: what a request may name
/// ([`crate::query::MAX_ENDPOINT_BYTES`], checked again on its canonical form). A longer
/// member of an endpoint set is read cut to one byte more, so that it is refused as too long.
pub const MAX_ENDPOINT_BYTES: usize = crate::query::MAX_ENDPOINT_BYTES;

/// Endpoint set members asked for per `SSCAN` step: small replies, few round trips.
const ENDPOINT_SCAN_COUNT: usize = 512;

/// One shipment of one instance's ids of a window.
#[derive(Debug, Clone, Copy)]
pub struct Shipment<'a> {
    pub window_start: u64,
    pub instance: &'a str,
    /// Ids, an id set's compact serialization ([`crate::ids::IdSet::serialize_into`]), at
    /// most [`MAX_SHIPMENT_BYTES`]; empty when there are none to add.
    pub ids: &'a [u8],
    pub endpoints: &'a [String],
    /// True for the instance's last shipment of the window: it has nothing more.
    pub last: bool,
    /// How long the window's keys live, in ms.
    pub ttl_ms: u64,
}

/// What became of a shipment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shipped {
    Stored,
    /// The window's leader had begun its final read (or reported the window): the shipment
    /// was not stored, and its ids are not in the cluster's count.
    TooLate,
}

/// The shipment, atomically (a script, not a `MULTI` pipeline: the sync Redis Cluster
/// connection of the `redis` crate does not pipeline, and a script runs on the node of its
/// keys, which share the window's slot). Refused once the window is frozen or done, so that
/// the leader's read covers every stored shipment. A `done` that is not a count, or a key
/// of another type, is answered with a code before anything is written: scripts are not
/// rolled back, and a half-stored shipment (ids without the `shipped` mark) would be wrong.
/// Endpoints are added 1000 at a time (Lua's `unpack` has a stack limit).
///
/// Answers: 1 stored, 0 too late, -1 `done` malformed, -2/-3/-4 `ids`/`endpoints`/`shipped`
/// of another type.
const SHIP: &str = r"
local done = redis.call('GET', KEYS[4])
if done then
  if #done <= 20 and string.match(done, '^%d+$') then
    return 0
  end
  return -1
end
if redis.call('EXISTS', KEYS[5]) == 1 then
  return 0
end
local wanted = {'list', 'set', 'set'}
for i = 1, 3 do
  local t = redis.call('TYPE', KEYS[i]).ok
  if t ~= 'none' and t ~= wanted[i] then
    return -1 - i
  end
end
if ARGV[4] ~= '' then
  redis.call('RPUSH', KEYS[1], ARGV[4])
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
if #ARGV > 4 then
  for i = 5, #ARGV, 1000 do
    redis.call('SADD', KEYS[2], unpack(ARGV, i, math.min(i + 999, #ARGV)))
  end
  redis.call('PEXPIRE', KEYS[2], ARGV[1])
end
if ARGV[2] == '1' then
  redis.call('SADD', KEYS[3], ARGV[3])
  redis.call('PEXPIRE', KEYS[3], ARGV[1])
end
return 1
";

/// Ships `s`: its ids join the window's list, its endpoints the window's set, and a last
/// shipment marks the instance as done with the window, all or nothing.
pub fn ship(con: &mut dyn ConnectionLike, keys: &Keys, s: &Shipment<'_>) -> Result<Shipped> {
    let w = s.window_start;
    let script = redis::Script::new(SHIP);
    let mut call = script.prepare_invoke();
    call.key(keys.ids(w))
        .key(keys.endpoints(w))
        .key(keys.shipped(w))
        .key(keys.done(w))
        .key(keys.frozen(w))
        .arg(s.ttl_ms)
        .arg(if s.last { "1" } else { "0" })
        .arg(s.instance)
        .arg(s.ids);
    for endpoint in s.endpoints {
        call.arg(endpoint);
    }
    match call.invoke::<i64>(con)? {
        1 => Ok(Shipped::Stored),
        0 => Ok(Shipped::TooLate),
        -1 => Err(malformed(keys.done(w), "is not a count")),
        -2 => Err(malformed(keys.ids(w), "is not a list")),
        -3 => Err(malformed(keys.endpoints(w), "is not a set")),
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

/// While `instance` holds the lease and the window is not done: the length of the list
/// (first, so that a list of another type fails before anything is written), then the
/// `frozen` mark. -1 when `instance` does not lead the window.
const FREEZE: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] or redis.call('EXISTS', KEYS[2]) == 1 then
  return -1
end
local n = redis.call('LLEN', KEYS[4])
redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[2])
return n
";

/// The leader's step before its final read: from here on every shipment of the window is
/// refused ([`Shipped::TooLate`]), so the list holds exactly the shipments the leader will
/// read. Returns how many there are, or `None` when `instance` no longer leads the window.
/// Freezing again (a successor, or a retry) is harmless: the list no longer changes.
pub fn freeze(
    con: &mut dyn ConnectionLike,
    keys: &Keys,
    window_start: u64,
    instance: &str,
    ttl_ms: u64,
) -> Result<Option<u64>> {
    let n: i64 = redis::Script::new(FREEZE)
        .key(keys.lease(window_start))
        .key(keys.done(window_start))
        .key(keys.frozen(window_start))
        .key(keys.ids(window_start))
        .arg(instance)
        .arg(ttl_ms)
        .invoke(con)?;
    Ok(u64::try_from(n).ok())
}

/// Marks the window reported while `instance` holds the lease, and drops its ids. The list
/// holds only what the leader read: it was frozen before the read (see [`freeze`]).
const MARK_DONE: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('DEL', KEYS[3], KEYS[4], KEYS[5])
if ARGV[4] ~= '' then
  redis.call('SET', KEYS[6], ARGV[2], 'PX', ARGV[3])
  redis.call('SET', KEYS[7], ARGV[1], 'PX', ARGV[4])
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
        .key(keys.ids(window_start))
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

/// How many shipments the window's list holds, checked against
/// [`MAX_SHIPMENTS_PER_WINDOW`] (for reads that do not freeze the window: tests and tools).
pub fn shipments(con: &mut dyn ConnectionLike, keys: &Keys, window_start: u64) -> Result<u64> {
    let n: u64 = redis::cmd("LLEN").arg(keys.ids(window_start)).query(con)?;
    check_shipments(keys, window_start, n)
}

/// `n` if a list of `n` shipments may be read.
pub fn check_shipments(keys: &Keys, window_start: u64, n: u64) -> Result<u64> {
    if n > MAX_SHIPMENTS_PER_WINDOW {
        return Err(malformed(
            keys.ids(window_start),
            "holds more shipments than MAX_SHIPMENTS_PER_WINDOW",
        ));
    }
    Ok(n)
}

/// One element of a window's list, as [`fetch`] hands it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blob<'a> {
    /// A shipment's bytes, at most [`MAX_SHIPMENT_BYTES`]: still to be decoded.
    Shipment(&'a [u8]),
    /// Something longer than [`MAX_SHIPMENT_BYTES`] (this many bytes), not read.
    Oversized(u64),
}

/// A page of the list: at most `FETCH_PAGE` elements and, past the first, at most
/// `FETCH_PAGE_BYTES`; an element longer than `MAX_SHIPMENT_BYTES` is replaced by its
/// length, so it never crosses the network. One `LRANGE` per element rather than one for the
/// page: the script copies only the elements it returns (one `LRANGE` of 8 shipments of 6 MB
/// copied 48 MB into Lua to return 12 MB, and made reading 10 x 1M random 64-bit ids take
/// 0.8 s instead of 0.2 s). Not `LINDEX`: the Redis users that deployments give verve
/// (docs/cluster.md) may run `LRANGE` and not `LINDEX`.
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

/// Calls `each` with the first `count` shipments of the window's list (from [`freeze`] or
/// [`shipments`]), a page at a time, and `between` with the connection after each page: a
/// long read can renew the lease and heartbeat on the way. `between` returning false stops
/// the read (false). A list that turns out shorter (a successor marked the window done and
/// deleted it) ends the read early; the leader's renewal before it reports then fails.
pub fn fetch(
    con: &mut dyn ConnectionLike,
    keys: &Keys,
    window_start: u64,
    count: u64,
    each: &mut dyn FnMut(Blob<'_>),
    between: &mut dyn FnMut(&mut dyn ConnectionLike) -> Result<bool>,
) -> Result<bool> {
    let key = keys.ids(window_start);
    let script = redis::Script::new(FETCH);
    let mut at = 0u64;
    while at < count {
        let last = (at + FETCH_PAGE).min(count) - 1;
        let page: Vec<Value> = script
            .key(&key)
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
                _ => return Err(malformed(key, "holds a reply that is not a shipment")),
            }
        }
        at += page.len() as u64;
        if at < count && !between(con)? {
            return Ok(false);
        }
    }
    Ok(true)
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
