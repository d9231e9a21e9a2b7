//! Windows whose holders are all gone: the registry through which another instance finds them
//! (`cluster/adopt.rs` takes them up).
//!
//! Only an instance that holds a window (it sealed the window with ids of its own, or named it
//! in a shipment) leads it: the others have nothing of it in memory and never hear of it. So
//! when every instance that holds an ended window dies before one of them reports it (each
//! SIGKILLed, or the last one stopping and leaving the window to live instances that restarted
//! under the holders' names), the window's ids sit in Redis with no one to count them, although
//! each was answered `ok` and shipped.
//!
//! Every shipment therefore first registers its window in `P:v2:windows` (a sorted set of
//! window starts), the leader takes the window off once it is reported, and every instance
//! looks there every [`ADOPT_EVERY`] for windows that ended more than `--cluster-grace` and a
//! [lease](crate::cluster::settings::LEASE) ago: by then a live holder has had time to lead it,
//! or to take over from a leader that died. One this instance does not hold, that it does not
//! know reported, and that has something in Redis (last-shipment marks, endpoints, shipments or
//! partition counts), it adopts: it holds the window with no ids of its own
//! ([`Held::adopt`](crate::cluster::backlog::Held::adopt)) and leads it as a holder would. The
//! window's lease decides between adopters, and between an adopter and a holder that comes
//! back; the grace has passed, so the leader reports at once, from what Redis holds.
//!
//! What this cannot save: ids Redis itself lost (a Redis killed without `appendfsync always`)
//! from an instance that was killed before it could ship them again.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use redis::ConnectionLike;

use crate::cluster::keys::Keys;
use crate::cluster::store::Result;
use crate::ids::partition::PARTITIONS;

/// How often an instance looks for windows whose holders are gone.
pub const ADOPT_EVERY: Duration = Duration::from_secs(1);

/// Registers the window, and keeps the registry alive as long as a window's keys live.
const REGISTER: &str = r"
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
";

/// Registers window `window_start` as shipped and not reported yet, for `ttl_ms` at least.
pub fn register(
    con: &mut dyn ConnectionLike,
    keys: &Keys,
    window_start: u64,
    ttl_ms: u64,
) -> Result<()> {
    let _: i64 = redis::Script::new(REGISTER)
        .key(keys.windows())
        .arg(window_start)
        .arg(ttl_ms)
        .invoke(con)?;
    Ok(())
}

/// Takes window `window_start` off the registry: it is reported.
pub fn settle(con: &mut dyn ConnectionLike, keys: &Keys, window_start: u64) -> Result<()> {
    let _: i64 = redis::cmd("ZREM")
        .arg(keys.windows())
        .arg(window_start)
        .query(con)?;
    Ok(())
}

/// Forgets the windows that started before `ARGV[1]` (their keys have expired), then gives
/// those that started from `ARGV[1]` to `ARGV[2]`, oldest first, at most `ARGV[3]` of them;
/// members longer than a window start are not verve's and are left out.
const DUE: &str = r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])
local due = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], ARGV[2], 'LIMIT', 0, ARGV[3])
local out = {}
for _, m in ipairs(due) do
  if #m <= 20 then
    out[#out + 1] = m
  end
end
return out
";

/// The registered windows that started from `oldest` to `latest` (epoch seconds), oldest
/// first, at most `max`; the registry forgets those that started before `oldest`. What is
/// not a window start is skipped.
pub fn due(
    con: &mut dyn ConnectionLike,
    keys: &Keys,
    oldest: u64,
    latest: u64,
    max: usize,
) -> Result<Vec<u64>> {
    let members: Vec<Vec<u8>> = redis::Script::new(DUE)
        .key(keys.windows())
        .arg(oldest)
        .arg(latest)
        .arg(max)
        .invoke(con)?;
    Ok(members
        .iter()
        .filter_map(|m| std::str::from_utf8(m).ok()?.parse().ok())
        .collect())
}

/// Whether Redis holds anything of window `window_start` that a report is made from: a
/// last-shipment mark or an endpoint, a partition's shipments or its count.
pub fn has_anything(con: &mut dyn ConnectionLike, keys: &Keys, window_start: u64) -> Result<bool> {
    let n: u64 = redis::cmd("EXISTS")
        .arg(keys.shipped(window_start))
        .arg(keys.endpoints(window_start))
        .query(con)?;
    if n > 0 {
        return Ok(true);
    }
    for p in 0..PARTITIONS {
        let part = keys.partition(window_start, p);
        let n: u64 = redis::cmd("EXISTS")
            .arg(&part.ids)
            .arg(&part.count)
            .query(con)?;
        if n > 0 {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The adoption rounds' own state on the cluster thread.
#[derive(Default)]
pub struct Orphans {
    next_round: Option<Instant>,
    /// Adopted windows whose keys failed [`crate::cluster::backlog::WINDOW_TRIES`] times:
    /// not adopted again (their failures are logged once).
    given_up: BTreeSet<u64>,
}

impl Orphans {
    /// Whether a round is due at `now` (one every [`ADOPT_EVERY`]); if so, the next is
    /// due [`ADOPT_EVERY`] later.
    pub fn round_due(&mut self, now: Instant) -> bool {
        if self.next_round.is_some_and(|next| now < next) {
            return false;
        }
        self.next_round = Some(now + ADOPT_EVERY);
        true
    }

    /// An adopted window was given up: its keys are not what verve writes.
    pub fn given_up(&mut self, window_start: u64) {
        self.given_up.insert(window_start);
    }

    pub fn was_given_up(&self, window_start: u64) -> bool {
        self.given_up.contains(&window_start)
    }

    /// Forgets the windows given up that started before `oldest`: their keys have expired.
    pub fn forget_before(&mut self, oldest: u64) {
        self.given_up.retain(|&start| start >= oldest);
    }
}
