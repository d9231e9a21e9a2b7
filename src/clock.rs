//! Wall-clock time and the window arithmetic built on it. The clock is a trait object handed
//! to the server, so tests move time by hand instead of sleeping across window boundaries.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, UTC.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> u64;
}

/// The real clock. `SystemTime::now` is served from the vDSO on Linux: no syscall on the
/// request path.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[inline]
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A clock that only moves when told to: for tests of window boundaries.
#[derive(Debug, Default)]
pub struct ManualClock {
    ms: AtomicU64,
}

impl ManualClock {
    pub fn new(ms: u64) -> Arc<Self> {
        Arc::new(Self {
            ms: AtomicU64::new(ms),
        })
    }

    pub fn set(&self, ms: u64) {
        self.ms.store(ms, Ordering::SeqCst);
    }

    pub fn advance(&self, by: Duration) {
        self.ms.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.ms.load(Ordering::SeqCst)
    }
}

/// Windows are numbered from the epoch: window `w` covers `[w * length, (w + 1) * length)`
/// ms, so with a 60 s length every window is one wall-clock minute starting at `:00`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    /// `--interval`, in ms.
    length_ms: u64,
}

impl Windows {
    /// `interval_secs` must be at least 1 (the config checks it).
    pub fn new(interval_secs: u64) -> Self {
        Self {
            length_ms: interval_secs.max(1) * 1000,
        }
    }

    #[inline]
    pub fn index_of(&self, ms: u64) -> u64 {
        ms / self.length_ms
    }

    pub fn start_ms(&self, window: u64) -> u64 {
        window * self.length_ms
    }

    pub fn end_ms(&self, window: u64) -> u64 {
        (window + 1) * self.length_ms
    }

    /// Start of `window` in whole seconds since the epoch (what the count line shows).
    pub fn start_secs(&self, window: u64) -> u64 {
        self.start_ms(window) / 1000
    }

    /// How long each window is: `--interval`.
    pub fn length(&self) -> Duration {
        Duration::from_millis(self.length_ms)
    }
}

/// 10000-01-01T00:00:00Z: RFC 3339 writes four-digit years, so no later instant has a form.
pub const END_OF_RFC3339_SECS: u64 = 253_402_300_800;

/// `2026-11-21T23:50:00Z`: RFC 3339, UTC, whole seconds, as the count line and the callbacks
/// carry it. From year 10000 on, which only a broken clock or crafted input can reach and
/// RFC 3339 cannot write, it is `@<seconds>` (GNU `date`'s notation) instead of a panic.
pub fn rfc3339_secs(unix_secs: u64) -> String {
    if unix_secs >= END_OF_RFC3339_SECS {
        return format!("@{unix_secs}");
    }
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix_secs)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_align_to_multiples_of_the_interval() {
        let w = Windows::new(60);
        // 2026-11-21T23:50:59.999Z and the next millisecond.
        let last_ms = 1_795_305_059_999;
        assert_eq!(w.index_of(last_ms) + 1, w.index_of(last_ms + 1));
        let window = w.index_of(last_ms);
        assert_eq!(w.start_secs(window), 1_795_305_000);
        assert_eq!(w.end_ms(window), last_ms + 1);
        assert_eq!(rfc3339_secs(w.start_secs(window)), "2026-11-21T23:50:00Z");
    }

    #[test]
    fn instants_rfc3339_cannot_write_do_not_panic() {
        assert_eq!(
            rfc3339_secs(END_OF_RFC3339_SECS - 1),
            "9999-12-31T23:59:59Z"
        );
        assert_eq!(rfc3339_secs(END_OF_RFC3339_SECS), "@253402300800");
        assert_eq!(rfc3339_secs(u64::MAX), format!("@{}", u64::MAX));
    }

    #[test]
    fn short_intervals_align_too() {
        let w = Windows::new(7);
        assert_eq!(w.index_of(6_999), 0);
        assert_eq!(w.index_of(7_000), 1);
        assert_eq!(w.start_secs(3), 21);
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(1_000);
        assert_eq!(clock.now_ms(), 1_000);
        clock.advance(Duration::from_millis(250));
        assert_eq!(clock.now_ms(), 1_250);
        clock.set(5);
        assert_eq!(clock.now_ms(), 5);
    }
}
