//! Taking up a window whose holders are all gone (see [`crate::cluster::orphans`]): once a
//! second, the registered windows that ended long enough ago are looked at, and one that
//! this instance does not hold, that is not reported and that has something in Redis is
//! held with no ids of its own and led like any other.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use redis::ConnectionLike;

use crate::clock::rfc3339_secs;
use crate::cluster::backlog::Held;
use crate::cluster::keys::Keys;
use crate::cluster::node::Node;
use crate::cluster::orphans;
use crate::cluster::settings::LEASE;
use crate::cluster::store::{self, Lead, Result};

/// Windows looked at per round, oldest first: the rest wait for the next rounds.
const MAX_DUE: usize = 16;
/// Adopted windows held at once: each costs a lead and a count, and holds nothing else.
const MAX_ADOPTED: usize = 16;

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
    if reported || !orphans::has_anything(con, keys, window_start)? {
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

impl Node {
    /// Once every [`orphans::ADOPT_EVERY`]: adopts the registered windows that ended more than
    /// `--cluster-grace` and a [`LEASE`] ago, which this instance does not hold and does not
    /// know reported, and which have something in Redis; forgets those that have nothing.
    /// `Err` is an outage.
    pub(crate) fn adopt_orphans(&mut self) -> anyhow::Result<()> {
        let now = Instant::now();
        if !self.orphans.round_due(now) {
            return Ok(());
        }
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
        self.orphans.forget_before(oldest);
        let Some(redis) = self.redis.as_mut() else {
            return Ok(());
        };
        let keys = &self.settings.keys;
        let due = match orphans::due(redis.con(), keys, oldest, latest / 1000, MAX_DUE) {
            Ok(due) => due,
            Err(e) => return self.shared_key_failed("reading the windows not reported yet", e),
        };
        let interval_s = interval_ms / 1000;
        let mut adopted = 0;
        for start in due {
            let known = self.backlog.get(start).is_some()
                || self.orphans.was_given_up(start)
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
                    if let Err(e) = orphans::settle(con, keys, start) {
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
