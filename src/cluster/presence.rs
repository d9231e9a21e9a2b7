//! Which instances are alive, and the `--interval` they count with: the two keys the whole
//! deployment shares (`P:live`, `P:interval`), judged by Redis's clock. Leaders wait for the
//! live instances' last shipments; an instance with another interval is kept off the prefix.

use redis::ConnectionLike;

use crate::cluster::error::{malformed, Result};
use crate::cluster::keys::{parse_count, Keys};

/// The most live instances read. More instances than any deployment verve is made for; a
/// longer live set is not trusted to be complete, and the leader waits for the grace
/// instead.
pub const MAX_LIVE_READ: usize = 10_000;

/// The longest instance name (`--instance-id`, see [`crate::cluster::conn::check_instance_id`]):
/// longer members of the live set are not verve's and are skipped.
const MAX_INSTANCE_BYTES: usize = 200;

/// The heartbeat, judged by Redis's own clock (`TIME`), never by an instance's: records
/// the instance at the server's time and forgets members silent for longer than `ARGV[2]` ms.
/// A clock ahead on one instance then evicts nobody, and every reader (see [`LIVE`]) judges
/// every member on that same clock. Redis Cluster: the live set is one key on one node, so
/// one node's clock judges it all. Milliseconds since the epoch fit a Lua number exactly. A
/// Redis user that may not run `TIME` gets a plain error (not an outage: the connection is
/// fine), which the cluster thread logs once; leaders then wait for the grace.
const HEARTBEAT: &str = r"
local t = redis.pcall('TIME')
if t.err then
  return redis.error_reply('ERR verve needs TIME for heartbeats (+time for its Redis user): ' .. t.err)
end
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], string.format('%d', now), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. string.format('%d', now - tonumber(ARGV[2])))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return now
";

/// Records that `instance` is alive now (by Redis's clock), and forgets instances silent for
/// longer than `ttl_ms`. Returns Redis's time, in ms since the epoch.
pub fn heartbeat(
    con: &mut dyn ConnectionLike,
    keys: &Keys,
    instance: &str,
    ttl_ms: u64,
) -> Result<u64> {
    Ok(redis::Script::new(HEARTBEAT)
        .key(keys.live())
        .arg(instance)
        .arg(ttl_ms)
        .invoke(con)?)
}

/// Takes `instance` off the live set (a graceful stop): leaders stop waiting for it at once.
pub fn leave(con: &mut dyn ConnectionLike, keys: &Keys, instance: &str) -> Result<()> {
    Ok(redis::cmd("ZREM")
        .arg(keys.live())
        .arg(instance)
        .query(con)?)
}

/// The live set's members whose last heartbeat is at most `ARGV[1]` ms old by Redis's clock
/// (the clock [`HEARTBEAT`] wrote them with), at most `ARGV[2]` of them; those longer than an
/// instance name may be left out (`ARGV[3]`).
const LIVE: &str = r"
local t = redis.pcall('TIME')
if t.err then
  return redis.error_reply('ERR verve needs TIME for heartbeats (+time for its Redis user): ' .. t.err)
end
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local from = string.format('%d', now - tonumber(ARGV[1]))
local live = redis.call('ZRANGEBYSCORE', KEYS[1], from, '+inf', 'LIMIT', 0, ARGV[2])
local max = tonumber(ARGV[3])
local out = {}
for _, m in ipairs(live) do
  if #m <= max then
    out[#out + 1] = m
  end
end
return out
";

/// The instances whose last heartbeat is at most `ttl_ms` old, by Redis's clock, sorted;
/// `None` when there are more than [`MAX_LIVE_READ`] (not verve's: not trusted to be
/// complete). No instance's clock takes part: clocks that disagree by less than
/// `--cluster-grace` never make a live instance look dead.
pub fn live(con: &mut dyn ConnectionLike, keys: &Keys, ttl_ms: u64) -> Result<Option<Vec<String>>> {
    let members: Vec<Vec<u8>> = redis::Script::new(LIVE)
        .key(keys.live())
        .arg(ttl_ms)
        .arg(MAX_LIVE_READ + 1)
        .arg(MAX_INSTANCE_BYTES)
        .invoke(con)?;
    if members.len() > MAX_LIVE_READ {
        return Ok(None);
    }
    let mut live: Vec<String> = members
        .into_iter()
        .filter_map(|m| String::from_utf8(m).ok())
        .collect();
    live.sort();
    Ok(Some(live))
}

/// What [`claim_interval`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interval {
    /// `P:interval` is this instance's `--interval` (now stored, or refreshed).
    Same,
    /// The instances already using the prefix count with this other `--interval`.
    Other(u64),
}

/// Keeps `P:interval` at `ARGV[1]` for `ARGV[2]` ms unless it holds another value, which
/// is returned instead (cut: enough to tell a number from something else).
const CLAIM_INTERVAL: &str = r"
local v = redis.call('GET', KEYS[1])
if v and v ~= ARGV[1] then
  return string.sub(v, 1, 21)
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
";

/// Claims the prefix for windows of `interval_secs`: stores (or refreshes, for `ttl_ms`)
/// `P:interval`, unless instances with another `--interval` hold it. Instances that
/// disagreed on the interval would ship ids to each other's windows and count nonsense.
/// Every heartbeat refreshes it, so it lasts while any instance runs, and `ttl_ms` after the
/// last one stops (a deployment may change its interval then).
pub fn claim_interval(
    con: &mut dyn ConnectionLike,
    keys: &Keys,
    interval_secs: u64,
    ttl_ms: u64,
) -> Result<Interval> {
    let stored: Option<Vec<u8>> = redis::Script::new(CLAIM_INTERVAL)
        .key(keys.interval())
        .arg(interval_secs)
        .arg(ttl_ms)
        .invoke(con)?;
    match stored {
        None => Ok(Interval::Same),
        Some(v) => match parse_count(&v) {
            // Another spelling of the same number ("060"): the same interval.
            Some(n) if n == interval_secs => Ok(Interval::Same),
            Some(n) => Ok(Interval::Other(n)),
            None => Err(malformed(keys.interval(), "is not an interval")),
        },
    }
}
