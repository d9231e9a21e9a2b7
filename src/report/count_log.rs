//! The count line: one per window, through the `log` facade to the `--log-file` that
//! [`crate::logging`] set up, in the exact form the README gives (*The count log*). A window's count also
//! joins the history that `/api/verve/windows` and the status page show
//! ([`crate::status`]).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use crate::clock::rfc3339_secs;
use crate::metrics::Metrics;
use crate::report::{Reporter, Scope, WindowReport};
use crate::status::Status;

/// The log target of count lines: the README's example shows it after the level.
pub const TARGET: &str = "count";

/// The level of a window's count line: `info` for every instance's count; `warn`, the level
/// operators alert on, for one instance's ids alone.
pub fn level_of(scope: Scope) -> log::Level {
    match scope {
        Scope::Global => log::Level::Info,
        Scope::Local => log::Level::Warn,
    }
}

/// Writes a window's count line at `level` (see [`level_of`]): `window_start=`,
/// `unique_count=` and, for one instance's ids alone, the trailing `scope=local`. The one
/// place the line is written.
pub fn write_count_line(level: log::Level, window_start: u64, unique_count: u64, scope: Scope) {
    let start = rfc3339_secs(window_start);
    let scope = match scope {
        Scope::Global => "",
        Scope::Local => " scope=local",
    };
    log::log!(
        target: TARGET,
        level,
        "window_start={start} unique_count={unique_count}{scope}"
    );
}

pub struct CountLog {
    metrics: Arc<Metrics>,
    status: Arc<Status>,
}

impl CountLog {
    pub fn new(metrics: Arc<Metrics>, status: Arc<Status>) -> Self {
        Self { metrics, status }
    }
}

impl Reporter for CountLog {
    fn report(&mut self, report: &WindowReport) {
        write_count_line(
            level_of(report.scope),
            report.window_start,
            report.unique_count,
            report.scope,
        );
        self.metrics.windows_reported.fetch_add(1, Relaxed);
        self.metrics
            .last_window_unique_ids
            .store(report.unique_count, Relaxed);
        // The history holds what every instance would say: not a count of this one's alone.
        if report.scope == Scope::Global {
            self.status.record(report.window_start, report.unique_count);
        }
    }

    fn finish(&mut self, _deadline: std::time::Instant) {
        log::logger().flush();
    }
}
