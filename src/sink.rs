//! The sealed-window handover: what the collector produces at each boundary, and the
//! [`WindowSink`] that takes it. A single instance counts and reports it at once
//! ([`LocalSink`]); cluster mode ([`crate::cluster`]) ships it to Redis and reports the global count.

use std::time::Instant;

use crate::budget::Charge;
use crate::ids::IdSet;
use crate::report::{Reporter, Resumed, Scope, WindowReport};

/// One closed window, merged across all shards of this instance.
#[derive(Debug, PartialEq)]
pub struct SealedWindow {
    /// Window index (see [`crate::clock::Windows`]).
    pub window: u64,
    /// Window start, whole seconds since the epoch.
    pub window_start: u64,
    /// All of this instance's ids of the window.
    pub ids: IdSet,
    /// Cluster mode: the part of `ids` that no shipment during the window carried (`None`:
    /// all of it).
    pub unshipped: Option<IdSet>,
    /// Distinct endpoints named during the window on this instance.
    pub endpoints: Vec<String>,
    /// The `--max-memory` bytes `ids` and `unshipped` hold: given back when the window is
    /// dropped (after its report, or when it leaves the cluster backlog).
    pub charge: Charge,
}

/// Takes sealed windows, in window order, on the collector thread. Like a reporter it must
/// not block for long.
pub trait WindowSink: Send {
    fn accept(&mut self, sealed: SealedWindow);

    /// Deliveries left from before a restart (`--state-file`, a single instance only).
    fn resume(&mut self, _resumed: Resumed) {}

    /// Shutdown: finish what is queued, waiting at most until `deadline`.
    fn finish(&mut self, deadline: Instant);
}

/// Single-instance mode: the window's count is this instance's count.
pub struct LocalSink<R: Reporter> {
    reporter: R,
}

impl<R: Reporter> LocalSink<R> {
    pub fn new(reporter: R) -> Self {
        Self { reporter }
    }
}

impl<R: Reporter> WindowSink for LocalSink<R> {
    fn accept(&mut self, sealed: SealedWindow) {
        self.reporter.report(&WindowReport {
            window_start: sealed.window_start,
            unique_count: sealed.ids.len(),
            endpoints: sealed.endpoints,
            scope: Scope::Global,
        });
        // The window's ids and their budget bytes (`sealed.charge`) are freed here.
    }

    fn resume(&mut self, resumed: Resumed) {
        self.reporter.resume(&resumed);
    }

    fn finish(&mut self, deadline: Instant) {
        self.reporter.finish(deadline);
    }
}
