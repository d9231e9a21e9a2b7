//! The Redis side of cluster mode: what is kept where, and the few operations instances and
//! the leader need. Blocking calls on a `redis` connection: only the cluster thread uses
//! this, never a coroutine.
//!
//! Keys, under `--redis-prefix` (`P`), for the window starting at `S` (epoch seconds):
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `P:{wS}:ids` | list | shipments of ids, each in the id set's compact format ([`crate::ids::IdSet::serialize_into`]), from every instance |
//! | `P:{wS}:shipped` | set | instances that made their last shipment of the window |
//! | `P:{wS}:endpoints` | set | endpoints named anywhere in the cluster during the window |
//! | `P:{wS}:lease` | string | the instance leading the window, with an expiry |
//! | `P:{wS}:done` | string | the window's global count, once reported |
//! | `P:live` | sorted set | instance -> time of its last heartbeat (ms) |
//!
//! A window's count is the cardinality of the union of every shipment in its list. Shipments
//! are deltas (ids the instance had not shipped yet) but nothing depends on that: a shipment
//! repeated after a timeout, a full re-shipment after Redis lost data, or an instance that
//! restarted inside the window only add ids already there. Shipping is at-least-once, and
//! the union makes it exact.
//!
//! `{wS}` is a Redis Cluster hash tag: all keys of one window live in one slot, so each
//! shipment, lease step and report is one atomic script, on Redis Cluster too. Every key
//! carries an expiry and disappears on its own; the ids go as soon as the window is
//! reported.

use redis::{ConnectionLike, RedisResult};

/// The key names of one deployment (`--redis-prefix`).
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    fn window(&self, window_start: u64, what: &str) -> String {
        format!("{}:{{w{window_start}}}:{what}", self.prefix)
    }

    pub fn ids(&self, window_start: u64) -> String {
        self.window(window_start, "ids")
    }

    pub fn shipped(&self, window_start: u64) -> String {
        self.window(window_start, "shipped")
    }

    pub fn endpoints(&self, window_start: u64) -> String {
        self.window(window_start, "endpoints")
    }

    pub fn lease(&self, window_start: u64) -> String {
        self.window(window_start, "lease")
    }

    pub fn done(&self, window_start: u64) -> String {
        self.window(window_start, "done")
    }

    pub fn live(&self) -> String {
        format!("{}:live", self.prefix)
    }
}

/// One shipment of one instance's ids of a window.
#[derive(Debug, Clone, Copy)]
pub struct Shipment<'a> {
    pub window_start: u64,
    pub instance: &'a str,
    /// Ids in the id set's compact format ([`crate::ids::IdSet::serialize_into`]); empty
    /// when there are none to add.
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
    /// The window had already been reported: the shipment was not stored.
    TooLate,
}

/// The shipment, atomically (a script, not a `MULTI` pipeline: the sync Redis Cluster
/// connection of the `redis` crate does not pipeline, and a script runs on the node of its
/// keys, which share the window's slot). Refused once the window is done, so the leader
/// never reports a window that then changes. Endpoints are added 1000 at a time (Lua's
/// `unpack` has a stack limit).
const SHIP: &str = r"
if redis.call('EXISTS', KEYS[4]) == 1 then
  return 0
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
pub fn ship(con: &mut dyn ConnectionLike, keys: &Keys, s: &Shipment<'_>) -> RedisResult<Shipped> {
    let script = redis::Script::new(SHIP);
    let mut call = script.prepare_invoke();
    call.key(keys.ids(s.window_start))
        .key(keys.endpoints(s.window_start))
        .key(keys.shipped(s.window_start))
        .key(keys.done(s.window_start))
        .arg(s.ttl_ms)
        .arg(if s.last { "1" } else { "0" })
        .arg(s.instance)
        .arg(s.ids);
    for endpoint in s.endpoints {
        call.arg(endpoint);
    }
    let stored: i64 = call.invoke(con)?;
    Ok(if stored == 1 {
        Shipped::Stored
    } else {
        Shipped::TooLate
    })
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
/// so a successor gets it only once the leader stopped renewing it for `lease_ms`.
const LEAD: &str = r"
local done = redis.call('GET', KEYS[2])
if done then
  return {'done', done}
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

/// Asks to lead the window for `lease_ms` (see [`Lead`]).
pub fn lead(
    con: &mut dyn ConnectionLike,
    keys: &Keys,
    window_start: u64,
    instance: &str,
    lease_ms: u64,
) -> RedisResult<Lead> {
    let answer: Vec<String> = redis::Script::new(LEAD)
        .key(keys.lease(window_start))
        .key(keys.done(window_start))
        .arg(instance)
        .arg(lease_ms)
        .invoke(con)?;
    Ok(match answer.first().map(String::as_str) {
        Some("done") => Lead::Done(answer.get(1).and_then(|c| c.parse().ok()).unwrap_or(0)),
        Some("lead") => Lead::Leading,
        _ => Lead::Waiting,
    })
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
) -> RedisResult<bool> {
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

/// Gives up the lead of the window (a graceful stop), so that a successor need not wait for
/// the lease to expire.
pub fn release(
    con: &mut dyn ConnectionLike,
    keys: &Keys,
    window_start: u64,
    instance: &str,
) -> RedisResult<()> {
    redis::Script::new(RELEASE)
        .key(keys.lease(window_start))
        .arg(instance)
        .invoke::<i64>(con)
        .map(drop)
}

/// Marks the window reported while `instance` holds the lease, and drops its ids.
const FINISH: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('DEL', KEYS[3], KEYS[4])
return 1
";

/// Marks the window reported with its global `count` (kept for `ttl_ms`, so that a late
/// shipment is refused rather than reported twice) and frees its ids. False when `instance`
/// no longer held the lease: another instance may report the window too.
pub fn finish(
    con: &mut dyn ConnectionLike,
    keys: &Keys,
    window_start: u64,
    instance: &str,
    count: u64,
    ttl_ms: u64,
) -> RedisResult<bool> {
    let marked: i64 = redis::Script::new(FINISH)
        .key(keys.lease(window_start))
        .key(keys.done(window_start))
        .key(keys.ids(window_start))
        .key(keys.endpoints(window_start))
        .arg(instance)
        .arg(count)
        .arg(ttl_ms)
        .invoke(con)?;
    Ok(marked == 1)
}

/// Shipments read per `LRANGE`: bounds the reply the leader holds at once.
const FETCH_PAGE: isize = 8;

/// Calls `each` with every shipment of the window's list, a page at a time. A shipment that
/// arrives while the list is read is read too, or not; either way the leader's count covers
/// every instance that had made its last shipment before the read began.
pub fn fetch(
    con: &mut dyn ConnectionLike,
    keys: &Keys,
    window_start: u64,
    each: &mut dyn FnMut(&[u8]),
) -> RedisResult<()> {
    fetch_pausing(con, keys, window_start, each, &mut |_| Ok(true)).map(drop)
}

/// [`fetch`], calling `between` with the connection after each page: a long read can renew
/// the lease and heartbeat on the way. `between` returning false stops the read (false).
pub fn fetch_pausing(
    con: &mut dyn ConnectionLike,
    keys: &Keys,
    window_start: u64,
    each: &mut dyn FnMut(&[u8]),
    between: &mut dyn FnMut(&mut dyn ConnectionLike) -> RedisResult<bool>,
) -> RedisResult<bool> {
    let key = keys.ids(window_start);
    let mut start = 0isize;
    loop {
        let page: Vec<Vec<u8>> = redis::cmd("LRANGE")
            .arg(&key)
            .arg(start)
            .arg(start + FETCH_PAGE - 1)
            .query(con)?;
        for shipment in &page {
            each(shipment);
        }
        if (page.len() as isize) < FETCH_PAGE {
            return Ok(true);
        }
        if !between(con)? {
            return Ok(false);
        }
        start += FETCH_PAGE;
    }
}

/// Records that `instance` is alive at `now_ms`, and forgets instances silent for longer
/// than `ttl_ms`.
pub fn heartbeat(
    con: &mut dyn ConnectionLike,
    keys: &Keys,
    instance: &str,
    now_ms: u64,
    ttl_ms: u64,
) -> RedisResult<()> {
    // Three plain commands (no pipeline: see SHIP); none depends on another being atomic.
    let key = keys.live();
    redis::cmd("ZADD")
        .arg(&key)
        .arg(now_ms)
        .arg(instance)
        .query::<()>(con)?;
    redis::cmd("ZREMRANGEBYSCORE")
        .arg(&key)
        .arg("-inf")
        .arg(format!("({}", now_ms.saturating_sub(ttl_ms)))
        .query::<()>(con)?;
    redis::cmd("PEXPIRE").arg(&key).arg(ttl_ms).query(con)
}

/// Takes `instance` off the live set (a graceful stop): leaders stop waiting for it at once.
pub fn leave(con: &mut dyn ConnectionLike, keys: &Keys, instance: &str) -> RedisResult<()> {
    redis::cmd("ZREM").arg(keys.live()).arg(instance).query(con)
}

/// The instances whose last heartbeat is at most `ttl_ms` old at `now_ms`, sorted.
pub fn live(
    con: &mut dyn ConnectionLike,
    keys: &Keys,
    now_ms: u64,
    ttl_ms: u64,
) -> RedisResult<Vec<String>> {
    let mut live: Vec<String> = redis::cmd("ZRANGEBYSCORE")
        .arg(keys.live())
        .arg(now_ms.saturating_sub(ttl_ms))
        .arg("+inf")
        .query(con)?;
    live.sort();
    Ok(live)
}

/// The instances that made their last shipment of the window, sorted.
pub fn shipped(
    con: &mut dyn ConnectionLike,
    keys: &Keys,
    window_start: u64,
) -> RedisResult<Vec<String>> {
    sorted_members(con, &keys.shipped(window_start))
}

/// The endpoints named anywhere in the cluster during the window, sorted.
pub fn endpoints(
    con: &mut dyn ConnectionLike,
    keys: &Keys,
    window_start: u64,
) -> RedisResult<Vec<String>> {
    sorted_members(con, &keys.endpoints(window_start))
}

/// The members of the set at `key`, sorted (Redis returns them in no order).
fn sorted_members(con: &mut dyn ConnectionLike, key: &str) -> RedisResult<Vec<String>> {
    let mut members: Vec<String> = redis::cmd("SMEMBERS").arg(key).query(con)?;
    members.sort();
    Ok(members)
}
