//! The recent windows: the last [`HISTORY_LEN`] reported counts, newest first, one entry per
//! window, and their `/api/verve/windows` body.

use std::collections::VecDeque;
use std::fmt::Write;

use crate::clock::{rfc3339_secs, END_OF_RFC3339_SECS};

/// Windows kept in the history (and listed by `/api/verve/windows`): two hours of one-minute
/// windows.
pub const HISTORY_LEN: usize = 120;

/// One reported window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reported {
    /// Window start, whole seconds since the epoch.
    pub window_start: u64,
    pub unique_count: u64,
}

/// The reported windows, newest first, one entry per window start, at most
/// [`HISTORY_LEN`]. A window reported twice (cluster mode can do that after a leader's
/// failure) keeps the latest count.
#[derive(Debug, Default)]
pub struct History {
    windows: VecDeque<Reported>,
}

impl History {
    /// Whether a window of this start can join a history of `interval_secs` windows: one
    /// not aligned to the interval (a state file of another `--interval` reported late) or
    /// past what RFC 3339 can write is left out.
    pub fn takes(window_start: u64, interval_secs: u64) -> bool {
        window_start.is_multiple_of(interval_secs.max(1)) && window_start < END_OF_RFC3339_SECS
    }

    /// Inserts `r` in its place; false when nothing changed (the same count again, or a
    /// window older than all [`HISTORY_LEN`] kept).
    pub fn insert(&mut self, r: Reported) -> bool {
        let at = self
            .windows
            .iter()
            .position(|h| h.window_start <= r.window_start)
            .unwrap_or(self.windows.len());
        match self.windows.get_mut(at) {
            Some(h) if h.window_start == r.window_start => {
                let changed = h.unique_count != r.unique_count;
                h.unique_count = r.unique_count;
                changed
            }
            _ if at >= HISTORY_LEN => false,
            _ => {
                self.windows.insert(at, r);
                self.windows.truncate(HISTORY_LEN);
                true
            }
        }
    }

    /// The newest window.
    pub fn newest(&self) -> Option<&Reported> {
        self.windows.front()
    }

    /// Newest first.
    pub fn iter(&self) -> impl Iterator<Item = &Reported> {
        self.windows.iter()
    }

    pub fn len(&self) -> usize {
        self.windows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    /// The `/api/verve/windows` body: `{"windows":[{"window_start":"...","unique_count":N},
    /// ...]}`, newest first. Window starts are verve's own RFC 3339 (digits, `-`, `:`, `T`,
    /// `Z`): nothing to escape.
    pub fn json(&self) -> Vec<u8> {
        let mut out = String::with_capacity(16 + self.windows.len() * 64);
        out.push_str("{\"windows\":[");
        for (i, r) in self.windows.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(
                out,
                "{{\"window_start\":\"{}\",\"unique_count\":{}}}",
                rfc3339_secs(r.window_start),
                r.unique_count
            );
        }
        out.push_str("]}\n");
        out.into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reported(window_start: u64, unique_count: u64) -> Reported {
        Reported {
            window_start,
            unique_count,
        }
    }

    #[test]
    fn newest_first_one_entry_per_window_and_bounded() {
        let mut h = History::default();
        assert!(h.insert(reported(120, 5)));
        assert!(h.insert(reported(60, 3)));
        assert!(h.insert(reported(180, 7)));
        // A repeat keeps the latest count; the same count again changes nothing.
        assert!(h.insert(reported(120, 6)));
        assert!(!h.insert(reported(120, 6)));
        let all: Vec<Reported> = h.iter().copied().collect();
        assert_eq!(all, [reported(180, 7), reported(120, 6), reported(60, 3)]);
        for w in 0..(HISTORY_LEN as u64 + 10) {
            h.insert(reported(1_000_000 * 60 + w * 60, w));
        }
        assert_eq!(h.len(), HISTORY_LEN);
        assert_eq!(
            h.newest().map(|r| r.unique_count),
            Some(HISTORY_LEN as u64 + 9)
        );
        // Older than everything kept: not taken.
        assert!(!h.insert(reported(0, 1)));
        assert!(h.iter().all(|r| r.window_start > 0));
    }

    #[test]
    fn only_aligned_writable_window_starts_are_taken() {
        assert!(History::takes(120, 60));
        assert!(!History::takes(150, 60));
        assert!(History::takes(7, 0), "an interval of 0 is read as 1 s");
        assert!(!History::takes(END_OF_RFC3339_SECS, 1));
        assert!(History::takes(END_OF_RFC3339_SECS - 1, 1));
    }

    #[test]
    fn the_json_lists_the_windows_newest_first() {
        let mut h = History::default();
        assert_eq!(h.json(), b"{\"windows\":[]}\n");
        h.insert(reported(60, 3));
        h.insert(reported(180, 7));
        assert_eq!(
            String::from_utf8(h.json()).unwrap(),
            "{\"windows\":[{\"window_start\":\"1970-01-01T00:03:00Z\",\"unique_count\":7},\
             {\"window_start\":\"1970-01-01T00:01:00Z\",\"unique_count\":3}]}\n"
        );
    }
}
