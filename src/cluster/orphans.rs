//! Windows whose holders are all gone, and how another instance takes them up.
//!
//! Only an instance that holds a window (it sealed the window with ids of its own, or named
//! it in a shipment) leads it: the others have nothing of it in memory and never hear of it.
//! So when every instance that holds an ended window dies before one of them reports it
//! (each SIGKILLed, or the last one stopping and leaving the window to live instances that
//! restarted under the holders' names), the window's ids sit in Redis with no one to count
//! them, although each was answered `ok` and shipped.
//!
//! Every shipment therefore first registers its window in `P:v2:windows` (a sorted set of
//! window starts), the leader takes the window off once it is reported, and every instance
//! looks there every [`ADOPT_EVERY`] for windows that ended more than `--cluster-grace` and
//! a [`LEASE`] ago: by then a live holder has had time to lead it, or to take over from a
//! leader that died. One this instance does not hold, that it does not know reported, and
//! that has something in Redis (last-shipment marks, endpoints, shipments or partition
//! counts), it adopts: it holds the window with no ids of its own
//! ([`Held::adopt`]) and leads it as a holder would. The window's lease decides between
//! adopters, and between an adopter and a holder that comes back; the grace has passed, so
//! the leader reports at once, from what Redis holds.
//!
//! What this cannot save: ids Redis itself lost (a Redis killed without `appendfsync
//! always`) from an instance that was killed before it could ship them again.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use redis::ConnectionLike;

use crate::clock::rfc3339_secs;
use crate::cluster::backlog::Held;
use crate::cluster::keys::Keys;
use crate::cluster::node::Node;
use crate::cluster::settings::LEASE;
use crate::cluster::store::{self, Lead, Result};
use crate::ids::partition::PARTITIONS;

/// How often an instance looks for windows whose holders are gone.
pub const ADOPT_EVERY: Duration = Duration::from_secs(1);
/// Windows looked at per round, oldest first: the rest wait for the next rounds.
const MAX_DUE: usize = 16;
/// Adopted windows held at once: each costs a lead and a count, and holds nothing else.
const MAX_ADOPTED: usize = 16;

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

/// What to do with a registered window this instance does not hold.
#[derive(Debug, PartialEq, Eq)]
enum Look {
    /// Nothing of it left to report, or reported: off the registry.
    Settle,
    /// Led by a holder, or by an instance that took it up first.
    Skip,
    /// This instance now leads it (it took the window's lease): take it up.
    Adopt,
}

/// Looks at registered window `window_start`, which `instance` does not hold; `reported`:
/// this instance knows it was reported. Taking the lease here makes one instance, not every
/// one, take the window up.
fn look(
    con: &mut dyn ConnectionLike,
    keys: &Keys,
    window_start: u64,
    instance: &str,
    reported: bool,
) -> Result<Look> {
    if reported || !has_anything(con, keys, window_start)? {
        return Ok(Look::Settle);
    }
    Ok(
        match store::lead(con, keys, window_start, instance, LEASE.as_millis() as u64)? {
            Lead::Done(_) => Look::Settle,
            Lead::Waiting => Look::Skip,
            Lead::Leading => Look::Adopt,
        },
    )
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
    /// An adopted window was given up: its keys are not what verve writes.
    pub fn given_up(&mut self, window_start: u64) {
        self.given_up.insert(window_start);
    }
}

impl Node {
    /// Once every [`ADOPT_EVERY`]: adopts the registered windows that ended more than
    /// `--cluster-grace` and a [`LEASE`] ago, which this instance does not hold and does not
    /// know reported, and which have something in Redis; forgets those that have nothing.
    /// `Err` is an outage.
    pub(crate) fn adopt_orphans(&mut self) -> anyhow::Result<()> {
        let now = Instant::now();
        if self.orphans.next_round.is_some_and(|next| now < next) {
            return Ok(());
        }
        self.orphans.next_round = Some(now + ADOPT_EVERY);
        let now_ms = self.clock.now_ms();
        let grace_ms = self.settings.grace.as_millis() as u64;
        // Right after a connect, the instances that know a window was reported write its
        // `done` mark back, and holders ship again: the grace the leaders wait, too.
        if now_ms < self.connected_at_ms + grace_ms {
            return Ok(());
        }
        let room =
            MAX_ADOPTED.saturating_sub(self.backlog.iter().filter(|h| h.is_adopted()).count());
        if room == 0 {
            return Ok(());
        }
        let interval_ms = self.settings.windows.length().as_millis() as u64;
        let ttl_ms = self.settings.key_ttl().as_millis() as u64;
        let latest = now_ms.saturating_sub(interval_ms + grace_ms + LEASE.as_millis() as u64);
        let oldest = now_ms.saturating_sub(ttl_ms) / 1000;
        self.orphans.given_up.retain(|&start| start >= oldest);
        let Some(redis) = self.redis.as_mut() else {
            return Ok(());
        };
        let keys = &self.settings.keys;
        let due = match due(redis.con(), keys, oldest, latest / 1000, MAX_DUE) {
            Ok(due) => due,
            Err(e) => return self.shared_key_failed("reading the windows not reported yet", e),
        };
        let interval_s = interval_ms / 1000;
        let mut adopted = 0;
        for start in due {
            let known = self.backlog.get(start).is_some()
                || self.orphans.given_up.contains(&start)
                || start % interval_s != 0;
            if known || adopted == room {
                continue;
            }
            let Some(redis) = self.redis.as_mut() else {
                return Ok(());
            };
            let (con, keys) = (redis.con(), &self.settings.keys);
            let reported = self.done_marks.knows(start);
            match look(con, keys, start, &self.settings.instance, reported) {
                Ok(Look::Adopt) => {}
                Ok(Look::Skip) => continue,
                Ok(Look::Settle) => {
                    if let Err(e) = settle(con, keys, start) {
                        self.shared_key_failed("updating the windows not reported yet", e)?;
                    }
                    continue;
                }
                Err(e) => {
                    self.shared_key_failed("looking at a window not reported yet", e)?;
                    continue;
                }
            }
            log::warn!(
                "window {}: no instance that holds it is left to report it; this instance \
                 takes it up and reports it from what the cluster shipped",
                rfc3339_secs(start)
            );
            self.metrics.cluster_adopted_windows.fetch_add(1, Relaxed);
            let end_ms = start * 1000 + interval_ms;
            if self.backlog.hold(Held::adopt(start, end_ms)).is_none() {
                adopted += 1;
            }
        }
        Ok(())
    }
}
