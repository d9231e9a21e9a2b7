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
        let start = rfc3339_secs(report.window_start);
        match report.scope {
            Scope::Global => log::info!(
                target: TARGET,
                "window_start={start} unique_count={}",
                report.unique_count
            ),
            // The documented trailing token, and a warning at the level operators alert on.
            Scope::Local => log::warn!(
                target: TARGET,
                "window_start={start} unique_count={} scope=local",
                report.unique_count
            ),
        }
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
