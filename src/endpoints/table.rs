//! The bounded per-window table of distinct endpoints that the collector drains when the
//! window closes.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;

/// What admitting an endpoint to a window's table did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Added,
    Known,
    /// The window already holds `--max-endpoints` distinct endpoints.
    Full,
}

/// Distinct endpoints per window, at most `max` each. Shared by all workers but touched only
/// the first time a worker sees an endpoint in a window (each shard caches what it admitted),
/// so the request path does not take this lock in the common case.
#[derive(Debug)]
pub struct EndpointTable {
    max: usize,
    windows: Mutex<BTreeMap<u64, HashSet<String>>>,
}

impl EndpointTable {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            windows: Mutex::new(BTreeMap::new()),
        }
    }

    /// The most distinct endpoints per window.
    pub fn max(&self) -> usize {
        self.max
    }

    pub fn admit(&self, window: u64, url: &str) -> Admit {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let set = windows.entry(window).or_default();
        if set.contains(url) {
            Admit::Known
        } else if set.len() >= self.max {
            Admit::Full
        } else {
            set.insert(url.to_string());
            Admit::Added
        }
    }

    /// The endpoints of `window` so far (cluster mode ships them during the window).
    pub fn snapshot(&self, window: u64) -> Vec<String> {
        let windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        windows
            .get(&window)
            .map(|set| set.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Removes and returns the endpoints of `window`, sorted (so calls happen in a stable
    /// order), and forgets any older window that was somehow left behind.
    pub fn take(&self, window: u64) -> Vec<String> {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let mut taken: Vec<String> = windows.remove(&window).into_iter().flatten().collect();
        let stale: Vec<u64> = windows.range(..window).map(|(w, _)| *w).collect();
        for w in stale {
            taken.extend(windows.remove(&w).into_iter().flatten());
        }
        taken.sort();
        taken.dedup();
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_bounded_per_window_and_drained_by_take() {
        let t = EndpointTable::new(2);
        assert_eq!(t.admit(7, "http://a/"), Admit::Added);
        assert_eq!(t.admit(7, "http://a/"), Admit::Known);
        assert_eq!(t.admit(7, "http://b/"), Admit::Added);
        assert_eq!(t.admit(7, "http://c/"), Admit::Full);
        assert_eq!(t.admit(7, "http://a/"), Admit::Known);
        assert_eq!(t.admit(8, "http://c/"), Admit::Added);
        assert_eq!(
            t.take(7),
            vec!["http://a/".to_string(), "http://b/".to_string()]
        );
        assert!(t.take(7).is_empty());
        assert_eq!(t.take(8), vec!["http://c/".to_string()]);
    }
}
