//! What a state file must satisfy besides its format: this instance's `--max-memory`,
//! `--max-endpoints`, `--interval` and clock. A well-formed file that fails them is refused.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::ensure;

use super::snapshot::{SavedWindow, FRAME_BYTES};
use super::Restored;
use crate::clock::{rfc3339_secs, Windows};
use crate::ids::IdSet;
use crate::query::MAX_ENDPOINT_BYTES;

/// How long after its end a saved window is still reported at start. A service stopped for a
/// weekend or a long maintenance is back well within it, and its late count is still news;
/// a window older than a week is history no consumer is waiting for, and a file that old was
/// more likely left behind (or put there) than saved by the last run.
pub const MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// What a state file must satisfy besides its format: this instance's settings and clock.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest file read at all; a larger one is refused unread.
    pub max_file_bytes: u64,
    /// `--max-memory`: the most the window's ids may take once read. The ids were answered
    /// `ok` before the restart, so they would be charged past the budget: a set that alone
    /// exceeds it would refuse every request of the window, or worse.
    pub max_id_bytes: u64,
    /// Now, milliseconds since the epoch.
    pub now_ms: u64,
    /// This instance's `--interval`.
    pub windows: Windows,
}

impl Limits {
    /// Limits for an instance with `--max-memory` `memory_limit` and `--max-endpoints`
    /// `max_endpoints`: the file may hold an id set of the whole budget (its serialized form
    /// is never larger than the set in memory) and that many endpoints.
    pub fn new(memory_limit: u64, max_endpoints: usize, windows: Windows, now_ms: u64) -> Self {
        let endpoint_bytes = (max_endpoints as u64).saturating_mul(4 + MAX_ENDPOINT_BYTES as u64);
        Limits {
            // A journal is rewritten once it holds more than twice what is live (plus
            // `collector::SNAPSHOT_SLACK_BYTES`), so it stays well within three budgets; the
            // endpoints of a few windows whose calls are still due come on top.
            max_file_bytes: memory_limit
                .saturating_mul(3)
                .saturating_add(endpoint_bytes.saturating_mul(4))
                .saturating_add(FRAME_BYTES)
                .saturating_add(64 << 20),
            max_id_bytes: memory_limit,
            now_ms,
            windows,
        }
    }

    /// Whether `saved` may be resumed or reported: its window is neither more than one
    /// interval ahead of the one open now (the clock went back a little between the save and
    /// this start: it resumes when the clock gets there) nor older than [`MAX_AGE`], and its
    /// ids fit in `--max-memory`.
    pub fn check(&self, saved: &SavedWindow) -> anyhow::Result<()> {
        self.check_window(saved.interval_secs, saved.window_start, &saved.ids)
    }

    /// [`Limits::check`] for one window of a file written with `interval_secs`.
    pub fn check_window(
        &self,
        interval_secs: u64,
        window_start: u64,
        ids: &IdSet,
    ) -> anyhow::Result<()> {
        let bytes = ids.heap_bytes() as u64;
        ensure!(
            bytes <= self.max_id_bytes,
            "its {} ids take {bytes} bytes, more than --max-memory allows ({} bytes); restart \
             with a larger --max-memory and move the file back to count them",
            ids.len(),
            self.max_id_bytes
        );
        let start_ms = window_start.saturating_mul(1000);
        let end_ms = start_ms.saturating_add(interval_secs.saturating_mul(1000));
        let open = self.windows.index_of(self.now_ms);
        let next_start_ms = self.windows.end_ms(open);
        ensure!(
            start_ms <= next_start_ms,
            "its window {} starts more than one interval after the window open now ({}): the \
             clock is far behind the one that saved it, or the file is not this service's",
            rfc3339_secs(window_start),
            rfc3339_secs(self.windows.start_secs(open))
        );
        ensure!(
            self.now_ms.saturating_sub(end_ms) <= MAX_AGE.as_millis() as u64,
            "its window {} ended more than {} days ago: too old to be worth reporting",
            rfc3339_secs(window_start),
            MAX_AGE.as_secs() / 86_400
        );
        Ok(())
    }
}

impl Limits {
    /// [`Limits::check`] for every window a file holds that is not reported.
    pub fn check_all(&self, restored: &Restored) -> anyhow::Result<()> {
        let mut starts: BTreeSet<u64> = restored.ids.keys().copied().collect();
        starts.extend(restored.book.open.keys().copied());
        let empty = IdSet::new();
        for start in starts {
            self.check_window(
                restored.interval_secs,
                start,
                restored.ids.get(&start).unwrap_or(&empty),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::clock::END_OF_RFC3339_SECS;
    use crate::state::testing::{limits, refused, round_trip, sample, temp_dir, START};
    use crate::state::{load, save, Loaded};

    #[test]
    fn a_window_far_from_now_is_refused_and_kept_aside() {
        // The next window (the clock went back a little since the save) is still resumed.
        let mut next = sample();
        next.window_start += 60;
        let (_, loaded) = round_trip("next", &next, &limits());
        assert!(matches!(loaded, Loaded::Found(..)), "{loaded:?}");
        // Two windows ahead is refused; the file is kept, renamed.
        let mut ahead = sample();
        ahead.window_start += 120;
        let (path, loaded) = round_trip("ahead", &ahead, &limits());
        let moved = refused(loaded, "more than one interval after");
        assert!(!path.exists());
        assert_eq!(
            SavedWindow::decode(&fs::read(moved).unwrap()).unwrap(),
            ahead
        );
        // The last window before year 10000 (what made RFC 3339 formatting panic).
        let mut far = sample();
        far.window_start = (END_OF_RFC3339_SECS - 1) / 60 * 60;
        let (_, loaded) = round_trip("far", &far, &limits());
        refused(
            loaded,
            "9999-12-31T23:59:00Z starts more than one interval after",
        );
        // Older than a week: not worth a report; a day old still is.
        let mut old = sample();
        old.window_start -= MAX_AGE.as_secs() + 120;
        let (_, loaded) = round_trip("old", &old, &limits());
        refused(loaded, "ended more than 7 days ago");
        let mut yesterday = sample();
        yesterday.window_start -= 86_400;
        let (_, loaded) = round_trip("yesterday", &yesterday, &limits());
        assert!(matches!(loaded, Loaded::Found(..)), "{loaded:?}");
    }

    #[test]
    fn ids_beyond_the_memory_budget_are_refused_unread_or_after_decoding() {
        let window = sample();
        let bytes = window.encode().unwrap().len() as u64;
        // A file larger than the budget allows is not even read: a journal's bound (three
        // budgets, room for the endpoints and the longest history, the frame, the slack).
        let small = Limits::new(bytes / 2, 0, Windows::new(60), START * 1000);
        assert_eq!(
            small.max_file_bytes,
            bytes / 2 * 3 + FRAME_BYTES + (64 << 20)
        );
        let small = Limits {
            max_file_bytes: bytes / 2,
            ..small
        };
        let (_, loaded) = round_trip("budget-file", &window, &small);
        refused(loaded, "more than a window within --max-memory");
        // A file that fits, whose set takes more in memory than the budget.
        let tight = Limits {
            max_file_bytes: bytes,
            max_id_bytes: window.ids.heap_bytes() as u64 / 2,
            ..limits()
        };
        let (_, loaded) = round_trip("budget-ids", &window, &tight);
        refused(loaded, "more than --max-memory allows");
    }

    #[test]
    fn a_dense_set_larger_than_the_budget_could_hold_is_refused_before_it_is_expanded() {
        // A few hundred bytes of consecutive ids stand for millions of them.
        let mut window = sample();
        window.ids = IdSet::from_ids(0..4_000_000);
        let dir = temp_dir("dense");
        let path = dir.join("window.state");
        save(&path, &window, &[]).unwrap();
        assert!(fs::metadata(&path).unwrap().len() < 4096);
        let small = Limits::new(8 << 10, 10, Windows::new(60), START * 1000 + 5_000);
        match load(&path, &small).unwrap() {
            Loaded::Unreadable { error, .. } => {
                assert!(format!("{error:#}").contains("4000000"), "{error:#}")
            }
            other => panic!("{other:?}"),
        }
    }
}
