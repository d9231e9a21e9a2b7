//! The windows this instance knows the cluster reported, with their global counts. Their
//! `done` marks are written back after every (re)connect while their keys would still live,
//! in case Redis lost them: an instance that had not seen a mark before then finds it,
//! rather than report the window again with what it re-shipped.

use std::collections::VecDeque;

use crate::clock::rfc3339_secs;
use crate::cluster::failure::outage_only;
use crate::cluster::settings::Settings;
use crate::cluster::store;

/// A window this instance knows the cluster reported, with its global count (see
/// [`store::restore_done`]).
struct KnownDone {
    window_start: u64,
    end_ms: u64,
    count: u64,
}

/// The most reported windows remembered: far more than live at once with any `--interval`,
/// `--cluster-backlog` and `--cluster-grace` that make sense.
const MAX_KNOWN_DONE: usize = 10_000;

/// Windows this instance reported or saw reported, newest last, until their keys would have
/// expired.
#[derive(Default)]
pub struct DoneMarks {
    known: VecDeque<KnownDone>,
}

impl DoneMarks {
    /// Remembers that the cluster reported the window with `count`.
    pub fn remember(&mut self, window_start: u64, end_ms: u64, count: u64) {
        if self.known.len() >= MAX_KNOWN_DONE {
            self.known.pop_front();
        }
        self.known.push_back(KnownDone {
            window_start,
            end_ms,
            count,
        });
    }

    /// Whether the window is known reported.
    pub fn knows(&self, window_start: u64) -> bool {
        self.known.iter().any(|k| k.window_start == window_start)
    }

    /// Writes the `done` mark of each remembered window whose keys would still live, where
    /// it is missing (`now_ms` by the instance's clock). Done on every connect, before any
    /// shipment: the others trust nothing for a grace period after they connect (see the
    /// leader's `ready`), which leaves the instances that know the time to put the marks
    /// back. `Err` is an outage.
    pub fn restore(
        &mut self,
        con: &mut dyn redis::ConnectionLike,
        settings: &Settings,
        now_ms: u64,
    ) -> anyhow::Result<()> {
        let ttl = settings.key_ttl().as_millis() as u64;
        self.known.retain(|k| now_ms <= k.end_ms + ttl);
        for known in &self.known {
            let left = (known.end_ms + ttl).saturating_sub(now_ms);
            let (start, count) = (known.window_start, known.count);
            match store::restore_done(con, &settings.keys, start, count, left) {
                Ok(true) => log::warn!(
                    "window {}: its done mark (count {count}) was missing from Redis, which \
                     must have lost data; written again so that no instance reports the window \
                     twice",
                    rfc3339_secs(start)
                ),
                Ok(false) => {}
                Err(e) => outage_only(e)?,
            }
        }
        Ok(())
    }
}
