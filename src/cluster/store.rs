//! The Redis side of cluster mode: what is kept where, and the few operations instances and
//! the leader need. Blocking calls on a `redis` connection: only plain threads use this,
//! never a coroutine.
//!
//! Keys, under `--redis-prefix` (`P`), for the window starting at `S` (epoch seconds):
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `P:{wS}:ids:<instance>` | string | that instance's ids of the window, roaring portable serialization (the latest shipment replaces the previous one: it is a superset) |
//! | `P:{wS}:shipped` | set | instances that shipped the window after it closed (final shipments) |
//! | `P:{wS}:endpoints` | set | endpoints named anywhere in the cluster during the window |
//! | `P:{wS}:lease` | string | the instance leading the window, with an expiry |
//! | `P:{wS}:done` | string | the window's global count, once reported |
//! | `P:live` | sorted set | instance -> time of its last heartbeat (ms) |
//!
//! `{wS}` is a Redis Cluster hash tag: all keys of one window live in one slot, so a window's
//! writes can be one atomic script and its reads one `MGET`, on Redis Cluster too. Every
//! key carries an expiry and disappears on its own.

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

    pub fn ids(&self, window_start: u64, instance: &str) -> String {
        self.window(window_start, &format!("ids:{instance}"))
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

/// One instance's shipment of a window.
#[derive(Debug, Clone, Copy)]
pub struct Shipment<'a> {
    pub window_start: u64,
    pub instance: &'a str,
    /// The ids, roaring portable serialization (see [`crate::ids::IdSet::to_treemap`]).
    pub ids: &'a [u8],
    pub endpoints: &'a [String],
    /// True for the shipment made after the window closed: the instance has nothing more.
    pub last: bool,
    /// How long the window's keys live, in ms.
    pub ttl_ms: u64,
}

/// Renews the lease only while `instance` still holds it (compare and expire, atomically).
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// The shipment, atomically: a script rather than a `MULTI` pipeline, because the sync
/// Redis Cluster connection of the `redis` crate does not pipeline; a script runs on the
/// node of its keys, which share the window's slot. Endpoints are added 1000 at a time
/// (Lua's `unpack` has a stack limit).
const SHIP: &str = r"
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if #ARGV > 4 then
  for i = 5, #ARGV, 1000 do
    redis.call('SADD', KEYS[2], unpack(ARGV, i, math.min(i + 999, #ARGV)))
  end
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
if ARGV[3] == '1' then
  redis.call('SADD', KEYS[3], ARGV[4])
  redis.call('PEXPIRE', KEYS[3], ARGV[2])
end
return 1
";

/// Ships `s`: the ids replace the instance's previous shipment of the window, the endpoints
/// join the window's set, and a last shipment marks the instance as done with the window.
/// Atomic, so the leader never sees the marker without the ids.
pub fn ship(con: &mut dyn ConnectionLike, keys: &Keys, s: &Shipment<'_>) -> RedisResult<()> {
    let script = redis::Script::new(SHIP);
    let mut call = script.prepare_invoke();
    call.key(keys.ids(s.window_start, s.instance))
        .key(keys.endpoints(s.window_start))
        .key(keys.shipped(s.window_start))
        .arg(s.ids)
        .arg(s.ttl_ms)
        .arg(if s.last { "1" } else { "0" })
        .arg(s.instance);
    for endpoint in s.endpoints {
        call.arg(endpoint);
    }
    call.invoke::<i64>(con).map(drop)
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

/// Takes the lead of the window for `lease_ms` if nobody holds it. True when `instance` now
/// leads (also when it already did: the lease is then renewed).
pub fn try_lead(
    con: &mut dyn ConnectionLike,
    keys: &Keys,
    window_start: u64,
    instance: &str,
    lease_ms: u64,
) -> RedisResult<bool> {
    let key = keys.lease(window_start);
    let taken: Option<String> = redis::cmd("SET")
        .arg(&key)
        .arg(instance)
        .arg("NX")
        .arg("PX")
        .arg(lease_ms)
        .query(con)?;
    if taken.is_some() {
        return Ok(true);
    }
    renew_lead(con, keys, window_start, instance, lease_ms)
}

/// Extends the lease by `lease_ms` if `instance` still holds it; false when it has lost it.
pub fn renew_lead(
    con: &mut dyn ConnectionLike,
    keys: &Keys,
    window_start: u64,
    instance: &str,
    lease_ms: u64,
) -> RedisResult<bool> {
    let renewed: i64 = redis::Script::new(RENEW)
        .key(keys.lease(window_start))
        .arg(instance)
        .arg(lease_ms)
        .invoke(con)?;
    Ok(renewed == 1)
}

/// The instances that made their last shipment of the window, sorted.
pub fn shipped(
    con: &mut dyn ConnectionLike,
    keys: &Keys,
    window_start: u64,
) -> RedisResult<Vec<String>> {
    sorted_members(con, &keys.shipped(window_start))
}

/// The latest shipment of each of `instances` for the window (`None`: nothing shipped), in
/// the same order, with one `MGET`.
pub fn fetch(
    con: &mut dyn ConnectionLike,
    keys: &Keys,
    window_start: u64,
    instances: &[String],
) -> RedisResult<Vec<Option<Vec<u8>>>> {
    if instances.is_empty() {
        return Ok(Vec::new());
    }
    let names: Vec<String> = instances
        .iter()
        .map(|i| keys.ids(window_start, i))
        .collect();
    redis::cmd("MGET").arg(names).query(con)
}

/// The endpoints named anywhere in the cluster during the window, sorted.
pub fn endpoints(
    con: &mut dyn ConnectionLike,
    keys: &Keys,
    window_start: u64,
) -> RedisResult<Vec<String>> {
    sorted_members(con, &keys.endpoints(window_start))
}

/// Marks the window reported with its global count.
pub fn mark_done(
    con: &mut dyn ConnectionLike,
    keys: &Keys,
    window_start: u64,
    count: u64,
    ttl_ms: u64,
) -> RedisResult<()> {
    redis::cmd("SET")
        .arg(keys.done(window_start))
        .arg(count)
        .arg("PX")
        .arg(ttl_ms)
        .query(con)
}

/// The window's reported count, if it has been reported.
pub fn done(
    con: &mut dyn ConnectionLike,
    keys: &Keys,
    window_start: u64,
) -> RedisResult<Option<u64>> {
    redis::cmd("GET").arg(keys.done(window_start)).query(con)
}

/// The members of the set at `key`, sorted (Redis returns them in no order).
fn sorted_members(con: &mut dyn ConnectionLike, key: &str) -> RedisResult<Vec<String>> {
    let mut members: Vec<String> = redis::cmd("SMEMBERS").arg(key).query(con)?;
    members.sort();
    Ok(members)
}
