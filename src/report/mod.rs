//! Where a window's final count goes. Each destination is a [`Reporter`] in a file of its
//! own; [`Fanout`] hands every report to all of them in order (the count log first, so the
//! count line is never delayed by a slower destination). The count log writes at once; the
//! endpoint callbacks and Kafka hand their work to threads of their own.

pub mod callback;
pub mod count_log;
pub mod kafka;
pub mod state_file;

use std::time::Instant;

/// The final count of one window, as every reporter receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowReport {
    /// Window start, whole seconds since the Unix epoch.
    pub window_start: u64,
    pub unique_count: u64,
    /// Distinct endpoints named during the window, to be called once each.
    pub endpoints: Vec<String>,
    pub scope: Scope,
}

/// Whose ids a count covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scope {
    /// Every instance's: a single instance, or the leader of a cluster window.
    #[default]
    Global,
    /// Cluster mode, a window that could not be shipped to Redis in time (it fell off the
    /// `--cluster-backlog`): this instance's ids only. The count line says `scope=local`,
    /// and endpoints are not called with it (each is logged with an `error=`), because the
    /// docs promise them the cluster's count (docs/cluster.md).
    Local,
}

/// Deliveries of a window reported before a restart that were not done when the process
/// stopped (`--state-file` keeps them): made again, without a second count line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resumed {
    /// Window start, whole seconds since the Unix epoch.
    pub window_start: u64,
    pub unique_count: u64,
    /// Endpoints whose call was not settled.
    pub endpoints: Vec<String>,
    /// Whether its Kafka record was not acknowledged.
    pub kafka: bool,
}

/// One destination of window counts. `report` runs on the collector thread: it must hand
/// slow work (network calls) to a thread of its own rather than block the next window.
pub trait Reporter: Send {
    fn report(&mut self, report: &WindowReport);

    /// Makes the deliveries of a window reported before a restart that were not done; a
    /// destination with nothing to deliver again (the count log) does nothing.
    fn resume(&mut self, _resumed: &Resumed) {}

    /// Shutdown: finish queued work, waiting at most until `deadline`.
    fn finish(&mut self, _deadline: Instant) {}
}

/// All reporters, called in the order they were added.
#[derive(Default)]
pub struct Fanout {
    reporters: Vec<Box<dyn Reporter>>,
}

impl Fanout {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with(mut self, reporter: impl Reporter + 'static) -> Self {
        self.reporters.push(Box::new(reporter));
        self
    }
}

impl Reporter for Fanout {
    fn report(&mut self, report: &WindowReport) {
        for r in &mut self.reporters {
            r.report(report);
        }
    }

    fn resume(&mut self, resumed: &Resumed) {
        for r in &mut self.reporters {
            r.resume(resumed);
        }
    }

    fn finish(&mut self, deadline: Instant) {
        for r in &mut self.reporters {
            r.finish(deadline);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    struct Recording(&'static str, Arc<Mutex<Vec<String>>>);

    impl Reporter for Recording {
        fn report(&mut self, report: &WindowReport) {
            self.1
                .lock()
                .unwrap()
                .push(format!("{} {}", self.0, report.unique_count));
        }
        fn finish(&mut self, _: Instant) {
            self.1.lock().unwrap().push(format!("{} finish", self.0));
        }
    }

    #[test]
    fn fanout_reports_to_all_in_order() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut fanout = Fanout::new()
            .with(Recording("a", seen.clone()))
            .with(Recording("b", seen.clone()));
        fanout.report(&WindowReport {
            window_start: 60,
            unique_count: 3,
            endpoints: vec![],
            scope: Scope::Global,
        });
        fanout.finish(Instant::now());
        assert_eq!(
            *seen.lock().unwrap(),
            ["a 3", "b 3", "a finish", "b finish"]
        );
    }
}
