//! Which instances are alive, and what they count with: the keys the whole deployment
//! shares (`P:live`, `P:interval`, `P:layout`), judged by Redis's clock. Leaders wait for the
//! live instances' last shipments; an instance with another interval, or another key layout
//! ([`LAYOUT`]), is kept off the prefix.

use redis::{ConnectionLike, ErrorKind, ServerErrorKind};

use crate::cluster::error::{malformed, Error, Result};
use crate::cluster::keys::{parse_count, Keys, LAYOUT};

/// An instance silent for this long is not waited for. Well above the heartbeat period
/// ([`crate::cluster::settings::HEARTBEAT_EVERY`]), so that a slow Redis reply (up to
/// [`crate::cluster::conn::IO_TIMEOUT`]) or a long merge does not make a working instance
/// look dead.
pub const LIVE_TTL: std::time::Duration = std::time::Duration::from_secs(5);

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

/// The key layout of the release before layouts were stored: its instances write no
/// `P:layout`, and a plain number in `P:interval`.
pub const LAYOUT_1: &str = "1";

/// The longest key layout read from `P:layout` (`2/16` is 4 bytes): a longer value is not
/// verve's.
const MAX_LAYOUT_BYTES: usize = 32;

/// What [`claim_interval`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interval {
    /// `P:interval` is this instance's `--interval` (now stored, or refreshed).
    Same,
    /// The instances already using the prefix count with this other `--interval`.
    Other(u64),
    /// Instances of another key layout use the prefix, with `--interval` `interval`:
    /// `P:interval` holds a plain number (as instances of [`LAYOUT_1`] write it), or names
    /// another layout.
    OtherLayout { layout: String, interval: u64 },
}

/// `P:interval` as this layout writes it: `--interval` in seconds, then the layout
/// (`60 layout 2/16`). Not a plain number, so that instances of [`LAYOUT_1`], which read it
/// as one, refuse to start beside these (they take it for something other than verve).
pub fn interval_value(interval_secs: u64) -> String {
    format!("{interval_secs} layout {LAYOUT}")
}

/// `P:interval`'s value: the interval and the key layout of the instances that wrote it
/// (a plain number: [`LAYOUT_1`]); `None` for a value no verve writes.
pub fn parse_interval(value: &[u8]) -> Option<(u64, String)> {
    if let Some(secs) = parse_count(value) {
        return Some((secs, LAYOUT_1.to_owned()));
    }
    let text = std::str::from_utf8(value).ok()?;
    let (secs, layout) = text.split_once(" layout ")?;
    Some((
        parse_count(secs.as_bytes())?,
        parse_layout(layout.as_bytes())?,
    ))
}

/// A key layout as `P:layout` holds it: 1 to [`MAX_LAYOUT_BYTES`] printable ASCII characters
/// without spaces (`2/16`); `None` for anything else.
fn parse_layout(value: &[u8]) -> Option<String> {
    let fits = !value.is_empty()
        && value.len() <= MAX_LAYOUT_BYTES
        && value.iter().all(u8::is_ascii_graphic);
    fits.then(|| String::from_utf8_lossy(value).into_owned())
}

/// Keeps `KEYS[1]` at `ARGV[1]` for `ARGV[2]` ms unless it holds another value, which is
/// returned instead (cut: enough to tell verve's values from something else). The claims of
/// the prefix, `P:interval` and `P:layout`.
const CLAIM: &str = r"
local v = redis.call('GET', KEYS[1])
if v and v ~= ARGV[1] then
  return string.sub(v, 1, 64)
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
";

/// Claims the prefix for windows of `interval_secs`: stores (or refreshes, for `ttl_ms`)
/// `P:interval` ([`interval_value`]), unless instances with another `--interval`, or
/// another key layout, hold it. Instances that disagreed on the interval would ship ids to
/// each other's windows and count nonsense. Every heartbeat refreshes it, so it lasts while
/// any instance runs, and `ttl_ms` after the last one stops (a deployment may change its
/// interval then).
pub fn claim_interval(
    con: &mut dyn ConnectionLike,
    keys: &Keys,
    interval_secs: u64,
    ttl_ms: u64,
) -> Result<Interval> {
    let stored: Option<Vec<u8>> = redis::Script::new(CLAIM)
        .key(keys.interval())
        .arg(interval_value(interval_secs))
        .arg(ttl_ms)
        .invoke(con)?;
    let Some(stored) = stored else {
        return Ok(Interval::Same);
    };
    match parse_interval(&stored) {
        Some((interval, layout)) if layout != LAYOUT => {
            Ok(Interval::OtherLayout { layout, interval })
        }
        // Another spelling of the same number ("060"): the same interval.
        Some((secs, _)) if secs == interval_secs => Ok(Interval::Same),
        Some((secs, _)) => Ok(Interval::Other(secs)),
        None => Err(malformed(keys.interval(), "is not an interval")),
    }
}

/// What [`claim_layout`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// `P:layout` is this instance's [`LAYOUT`] (now stored, or refreshed).
    Same,
    /// Instances of this other key layout use the prefix.
    Other(String),
}

/// Claims the prefix for this key layout: stores (or refreshes, for `ttl_ms`) `P:layout`
/// ([`LAYOUT`]), unless instances of another layout hold it. Instances of another layout
/// would ship where these never read, and each report its own part of a window's ids as
/// the whole. Every heartbeat refreshes it, as it does `P:interval`, with the same `ttl_ms`.
pub fn claim_layout(con: &mut dyn ConnectionLike, keys: &Keys, ttl_ms: u64) -> Result<Layout> {
    let stored: Option<Vec<u8>> = redis::Script::new(CLAIM)
        .key(keys.layout())
        .arg(LAYOUT)
        .arg(ttl_ms)
        .invoke(con)?;
    match stored {
        None => Ok(Layout::Same),
        Some(v) => match parse_layout(&v) {
            Some(layout) => Ok(Layout::Other(layout)),
            None => Err(malformed(keys.layout(), "is not a key layout")),
        },
    }
}

/// The key layout of the instances using the prefix, as far as Redis says without a write:
/// `P:layout`'s; without it, [`LAYOUT_1`] if an instance heartbeated into `P:live` in the
/// last `live_ttl_ms` (by Redis's clock) or `P:interval` holds a plain number, since
/// instances of that release write those and no `P:layout`; `None` if no instance uses the
/// prefix. For the start-up check, before this instance claims anything: the live set is
/// read first, and an instance of this layout claims `P:layout` before its first heartbeat,
/// so one that starts at the same moment is not taken for [`LAYOUT_1`].
pub fn layout_in_use(
    con: &mut dyn ConnectionLike,
    keys: &Keys,
    live_ttl_ms: u64,
) -> Result<Option<String>> {
    let live = match live(con, keys, live_ttl_ms) {
        Ok(live) => live.is_none_or(|names| !names.is_empty()),
        // A Redis user without `TIME` (see [`HEARTBEAT`]): the live set expires
        // `live_ttl_ms` after the last heartbeat, so that it is there says as much.
        Err(Error::Redis(e)) if lacks_time(&e) => {
            redis::cmd("EXISTS").arg(keys.live()).query(con)?
        }
        Err(e) => return Err(e),
    };
    let layout: Option<Vec<u8>> = redis::cmd("GET").arg(keys.layout()).query(con)?;
    if let Some(layout) = layout {
        return match parse_layout(&layout) {
            Some(layout) => Ok(Some(layout)),
            None => Err(malformed(keys.layout(), "is not a key layout")),
        };
    }
    let interval: Option<Vec<u8>> = redis::cmd("GET").arg(keys.interval()).query(con)?;
    let old_interval = interval.is_some_and(|v| parse_count(&v).is_some());
    Ok((live || old_interval).then(|| LAYOUT_1.to_owned()))
}

/// The error [`LIVE`] returns when the Redis user may not run `TIME`.
fn lacks_time(e: &redis::RedisError) -> bool {
    e.kind() == ErrorKind::Server(ServerErrorKind::ResponseError)
        && e.to_string().contains("verve needs TIME")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_names_the_layout_and_a_plain_number_is_layout_1() {
        assert_eq!(interval_value(60), "60 layout 2/16");
        assert_eq!(
            parse_interval(interval_value(60).as_bytes()),
            Some((60, LAYOUT.to_owned()))
        );
        // What the release before layouts writes: a plain number.
        assert_eq!(parse_interval(b"60"), Some((60, LAYOUT_1.to_owned())));
        assert_eq!(parse_interval(b"30 layout 3/32"), Some((30, "3/32".into())));
        for bad in [
            &b"sixty"[..],
            b"",
            b"60 layout ",
            b"60 layout a b",
            b"-60 layout 2/16",
            b"60 layout 2/16\n",
        ] {
            assert_eq!(
                parse_interval(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(parse_layout(&[b'x'; MAX_LAYOUT_BYTES + 1]), None);
    }
}
