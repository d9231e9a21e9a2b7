//! The collector: a plain OS thread (it does blocking I/O through its reporters, so it is
//! never a coroutine) that merges what the shards buffered into the open window's set about
//! once a second ([`ABSORB_EVERY`]), seals each window shortly after it closes and hands the
//! result to the [`WindowSink`].
//!
//! Merging during the window keeps the seal short whatever the window holds: it merges at
//! most the last second's ids, so the count line is written on time even when the workers
//! saturate every core. It also keeps `verve_window_unique_ids` current without a scrape
//! touching the shards.
//!
//! It wakes [`SETTLE`] after each boundary rather than at it: a worker thread can be
//! descheduled between reading the clock and recording the id, and the delay lets such
//! records reach their window before it is sealed (see [`crate::shards`] for what happens to
//! one that is later still). Windows are sealed strictly in order, each exactly once, empty
//! ones included, so every window gets its count line even if the thread fell behind.

use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, RecvTimeoutError, Sender};

use crate::clock::{Clock, Windows};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::shards::Shards;
use crate::sink::{SealedWindow, WindowSink};
use crate::state::{self, SavedWindow};

/// How long after a boundary the window is sealed. Long enough to cover a worker thread
/// descheduled between its clock read and its insert (a few scheduler ticks under load),
/// short enough that the count line comes well within the 1 s it is due in.
pub const SETTLE: Duration = Duration::from_millis(200);

/// Longest sleep between clock reads: bounds how late the collector notices a clock that a
/// test moved by hand, and costs nothing measurable.
const POLL: Duration = Duration::from_millis(50);

/// How often the open window's buffered ids are merged: the README lets
/// `verve_window_unique_ids` be up to a second old, and a merge a second bounds what the
/// shards buffer (repeats included) to a second of requests.
pub const ABSORB_EVERY: Duration = Duration::from_secs(1);

/// Everything the collector works on.
pub struct Collector {
    pub shards: Arc<Shards>,
    pub windows: Windows,
    pub clock: Arc<dyn Clock>,
    pub sink: Box<dyn WindowSink>,
    pub metrics: Arc<Metrics>,
    /// `--state-file`: where the open window goes at shutdown instead of being reported.
    pub state_file: Option<PathBuf>,
    /// The last window whose refused ids were warned about (one warning per window).
    pub memory_warned: Option<u64>,
}

/// Asks the collector to close the open window and stop.
struct Stop {
    deadline: Instant,
}

/// The running collector thread.
pub struct CollectorHandle {
    stop: Sender<Stop>,
    thread: JoinHandle<()>,
}

impl CollectorHandle {
    /// Closes the shards, reports every window still open (the last one with the ids counted
    /// so far), lets the reporters finish until `deadline` and waits for the thread. False
    /// when the thread had died (panicked): then nothing was reported, and it says so.
    pub fn shutdown(self, deadline: Instant) -> bool {
        let _ = self.stop.send(Stop { deadline });
        let ended = self.thread.join().is_ok();
        if !ended {
            log::error!("the collector thread had died: the open window was not reported");
        }
        ended
    }
}

impl Collector {
    /// Starts the thread; the first window it reports is the one open now. The thread holds
    /// a guard of `health` (see [`crate::health`]).
    pub fn spawn(self, health: &Health) -> std::io::Result<CollectorHandle> {
        let (stop, stopped) = bounded::<Stop>(1);
        // Read on the caller's thread: the window open when `spawn` is called is reported
        // even if the thread starts late.
        let mut next = self.windows.index_of(self.clock.now_ms());
        let guard = health.guard("verve-collector");
        let thread = std::thread::Builder::new()
            .name("verve-collector".into())
            .spawn(move || {
                let _guard = guard;
                let mut this = self;
                let mut next_absorb = Instant::now() + ABSORB_EVERY;
                loop {
                    let due = this.windows.end_ms(next) + SETTLE.as_millis() as u64;
                    let now = this.clock.now_ms();
                    if now >= due {
                        this.seal_and_hand_on(next);
                        next += 1;
                        // The gauge moves on to the window open now without waiting a second.
                        next_absorb = Instant::now();
                        continue;
                    }
                    if Instant::now() >= next_absorb {
                        // The open window is the clock's, or `next` when the clock was
                        // stepped back behind it: that one keeps counting until the clock
                        // passes its end (see `crate::shards`).
                        this.absorb(this.windows.index_of(now).max(next));
                        next_absorb = Instant::now() + ABSORB_EVERY;
                    }
                    let wait = Duration::from_millis(due - now)
                        .min(POLL)
                        .min(next_absorb.saturating_duration_since(Instant::now()));
                    match stopped.recv_timeout(wait) {
                        Err(RecvTimeoutError::Timeout) => {}
                        Ok(Stop { deadline }) => return this.close(next, deadline),
                        Err(RecvTimeoutError::Disconnected) => {
                            return this.close(next, Instant::now() + Duration::from_secs(1))
                        }
                    }
                }
            })?;
        Ok(CollectorHandle { stop, thread })
    }

    /// Merges what the shards buffered for the open `window` and publishes its count, then
    /// re-renders the status page (see [`crate::status`]): about once a second, off the
    /// request path.
    fn absorb(&mut self, window: u64) {
        if let Some(absorbed) = self.shards.absorb(window) {
            self.metrics
                .window_unique_ids
                .store(absorbed.unique, Relaxed);
            self.refused(window, absorbed.refused);
        }
        self.metrics
            .status
            .refresh(&self.metrics, self.windows.start_secs(window));
    }

    /// Warns, once per window, that ids were refused for want of memory.
    fn refused(&mut self, window: u64, ids: u64) {
        if ids > 0 && self.memory_warned != Some(window) {
            self.memory_warned = Some(window);
            log::warn!(
                "the id memory budget (--max-memory {} bytes) is spent: {ids} requests were \
                 answered 503 and not counted in window {}; it frees when the window is \
                 reported",
                self.shards.memory().limit(),
                crate::clock::rfc3339_secs(self.windows.start_secs(window)),
            );
        }
    }

    /// Seals `window` and hands it to the sink.
    fn seal_and_hand_on(&mut self, window: u64) {
        let sealed = self.seal(window);
        self.sink.accept(sealed);
    }

    /// Seals `window`: the shards' last ids are merged into its set.
    fn seal(&mut self, window: u64) -> SealedWindow {
        let sealed = self.shards.seal(window);
        self.refused(window, sealed.refused);
        if sealed.late > 0 {
            self.metrics.late_ids.fetch_add(sealed.late, Relaxed);
            log::warn!(
                "{} requests read the clock inside a window already sealed (the clock was \
                 stepped back, or a worker was held up past the settling delay): counted in \
                 the oldest window still open instead",
                sealed.late
            );
        }
        SealedWindow {
            window,
            window_start: self.windows.start_secs(window),
            ids: sealed.ids,
            unshipped: sealed.unshipped,
            endpoints: sealed.endpoints,
            charge: sealed.charge,
        }
    }

    /// Seals the open window at shutdown and saves it to the state file; reports it as
    /// usual (a partial count) if it cannot be saved, so nothing is lost silently.
    fn save(&mut self, window: u64, path: &std::path::Path) {
        let sealed = self.seal(window);
        let saved = SavedWindow {
            interval_secs: self.windows.length().as_secs(),
            window_start: sealed.window_start,
            ids: sealed.ids,
            endpoints: sealed.endpoints,
        };
        // With the windows reported before it: `/api/verve/windows` goes on after a restart.
        match state::save(path, &saved, &self.metrics.status.history()) {
            Ok(()) => log::info!(
                "saved the open window {} ({} ids, {} endpoints) to {}",
                crate::clock::rfc3339_secs(saved.window_start),
                saved.ids.len(),
                saved.endpoints.len(),
                path.display()
            ),
            Err(e) => {
                log::error!("cannot save the open window, reporting it now instead: {e:#}");
                self.sink.accept(SealedWindow {
                    window,
                    window_start: saved.window_start,
                    ids: saved.ids,
                    unshipped: None,
                    endpoints: saved.endpoints,
                    charge: sealed.charge,
                });
            }
        }
    }

    /// Shutdown: refuse further records, then report every window from `next` to the one
    /// open now, except that with a state file the open one is saved instead, then any later
    /// window that holds ids, then let the reporters finish.
    fn close(mut self, next: u64, deadline: Instant) {
        self.shards.close();
        // The clock's window, or `next` if the clock was stepped back behind it.
        let open = self.windows.index_of(self.clock.now_ms()).max(next);
        let state_file = self.state_file.take();
        for window in next..=open {
            match &state_file {
                Some(path) if window == open => self.save(window, path),
                _ => self.seal_and_hand_on(window),
            }
        }
        // Only a restored window ahead of the clock can be later. It is reported, but not the
        // empty windows before it, which have not begun: a window far ahead costs one line,
        // not one per interval up to it.
        for window in self.shards.windows_with_ids_after(open) {
            self.seal_and_hand_on(window);
        }
        self.sink.finish(deadline);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::endpoints::EndpointPolicy;
    use crate::ids::IdSet;
    use crossbeam_channel::{unbounded, Receiver};

    /// What the test sink receives: window start, count, endpoints.
    type Seen = (u64, u64, Vec<String>);

    struct ChannelSink(Sender<Seen>);

    impl WindowSink for ChannelSink {
        fn accept(&mut self, s: SealedWindow) {
            self.0
                .send((s.window_start, s.ids.len(), s.endpoints))
                .unwrap();
        }
        fn finish(&mut self, _: Instant) {
            self.0.send((u64::MAX, 0, vec![])).unwrap();
        }
    }

    fn start(clock: Arc<ManualClock>) -> (Arc<Shards>, CollectorHandle, Receiver<Seen>) {
        start_with(clock, None)
    }

    fn start_with(
        clock: Arc<ManualClock>,
        state_file: Option<PathBuf>,
    ) -> (Arc<Shards>, CollectorHandle, Receiver<Seen>) {
        let shards = Arc::new(Shards::new(2, EndpointPolicy::default(), 10));
        let (tx, rx) = unbounded();
        let handle = Collector {
            shards: shards.clone(),
            windows: Windows::new(10),
            clock,
            sink: Box::new(ChannelSink(tx)),
            metrics: Arc::new(Metrics::new(2)),
            state_file,
            memory_warned: None,
        }
        .spawn(&Health::new())
        .unwrap();
        (shards, handle, rx)
    }

    const WAIT: Duration = Duration::from_secs(10);

    #[test]
    fn reports_each_window_once_in_order_after_the_settling_delay() {
        let clock = ManualClock::new(1_000_000);
        let (shards, handle, rx) = start(clock.clone());
        let w = 100; // 1_000_000 ms / 10 s
        shards.record(0, w, 1, Some("http://cb.test/")).unwrap();
        shards.record(1, w, 1, None).unwrap();
        shards.record(1, w, 2, None).unwrap();
        // Past the boundary but inside the settling delay: not sealed yet, and a straggler
        // that read the clock before the boundary still lands in the window.
        clock.set(1_010_100);
        shards.record(1, w + 1, 7, None).unwrap();
        shards.record(0, w, 3, None).unwrap();
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
        clock.set(1_010_000 + SETTLE.as_millis() as u64);
        assert_eq!(
            rx.recv_timeout(WAIT).unwrap(),
            (1000, 3, vec!["http://cb.test/".to_string()])
        );
        // Two boundaries at once (the clock jumped): both windows, in order, empty one too.
        clock.set(1_030_500);
        assert_eq!(rx.recv_timeout(WAIT).unwrap(), (1010, 1, vec![]));
        assert_eq!(rx.recv_timeout(WAIT).unwrap(), (1020, 0, vec![]));
        handle.shutdown(Instant::now());
        // The open window is reported at shutdown, then the sink finishes.
        assert_eq!(rx.recv_timeout(WAIT).unwrap(), (1030, 0, vec![]));
        assert_eq!(rx.recv_timeout(WAIT).unwrap().0, u64::MAX);
    }

    #[test]
    fn a_clock_stepped_back_keeps_the_open_window_open_until_the_clock_passes_its_end() {
        use crate::shards::Recorded::Counted;
        let clock = ManualClock::new(1_000_000);
        let (shards, handle, rx) = start(clock.clone());
        let windows = Windows::new(10);
        let record = |id| shards.record(0, windows.index_of(clock.now_ms()), id, None);
        assert_eq!(record(1), Ok(Counted));
        // Forward past the boundary and the settling delay: window 100 is sealed.
        clock.set(1_010_000 + SETTLE.as_millis() as u64);
        assert_eq!(rx.recv_timeout(WAIT).unwrap(), (1000, 1, vec![]));
        assert_eq!(record(2), Ok(Counted));
        // Stepped back into the sealed window: the requests count in window 101, the open
        // one (answered 200, never 503).
        clock.set(1_004_000);
        assert_eq!(record(3), Ok(Counted));
        assert_eq!(record(1), Ok(Counted));
        // Window 101 stays open while the clock catches up, however long that takes in real
        // time, until the clock passes its end.
        assert!(rx.recv_timeout(Duration::from_millis(1_500)).is_err());
        clock.set(1_019_999);
        assert_eq!(record(4), Ok(Counted));
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
        // The clock passes its end: sealed with every id received meanwhile.
        clock.set(1_020_000 + SETTLE.as_millis() as u64);
        assert_eq!(rx.recv_timeout(WAIT).unwrap(), (1010, 4, vec![]));
        // Stepped back again, then stopped: the open window (102) is reported at shutdown,
        // not lost behind the clock.
        clock.set(1_015_000);
        assert_eq!(record(9), Ok(Counted));
        handle.shutdown(Instant::now());
        assert_eq!(rx.recv_timeout(WAIT).unwrap(), (1020, 1, vec![]));
        assert_eq!(rx.recv_timeout(WAIT).unwrap().0, u64::MAX);
    }

    #[test]
    fn shutdown_reports_a_window_far_ahead_with_one_line_not_one_per_window_up_to_it() {
        let clock = ManualClock::new(5_000);
        let (shards, handle, rx) = start(clock.clone());
        shards.record(0, 0, 1, None).unwrap();
        // A window restored far ahead of the clock (the state file now refuses these).
        shards.restore(1_000_000_000, IdSet::from_ids([7, 8]), &[]);
        handle.shutdown(Instant::now());
        assert_eq!(rx.recv_timeout(WAIT).unwrap(), (0, 1, vec![]));
        assert_eq!(rx.recv_timeout(WAIT).unwrap(), (10_000_000_000, 2, vec![]));
        assert_eq!(rx.recv_timeout(WAIT).unwrap().0, u64::MAX);
    }

    #[test]
    fn a_collector_that_dies_marks_the_process_failed_and_says_so_at_shutdown() {
        struct PanickingSink;
        impl WindowSink for PanickingSink {
            fn accept(&mut self, _: SealedWindow) {
                panic!("a reporter bug (this panic is expected by the test)");
            }
            fn finish(&mut self, _: Instant) {}
        }
        let clock = ManualClock::new(5_000);
        let health = Health::new();
        let handle = Collector {
            shards: Arc::new(Shards::new(1, EndpointPolicy::default(), 10)),
            windows: Windows::new(10),
            clock: clock.clone(),
            sink: Box::new(PanickingSink),
            metrics: Arc::new(Metrics::new(1)),
            state_file: None,
            memory_warned: None,
        }
        .spawn(&health)
        .unwrap();
        let (woke, woken) = bounded(1);
        health.on_failure(move || woke.send(()).unwrap());
        clock.set(10_000 + SETTLE.as_millis() as u64);
        woken.recv_timeout(WAIT).expect("the failure is signalled");
        assert_eq!(health.failed().as_deref(), Some("verve-collector"));
        assert!(
            !handle.shutdown(Instant::now()),
            "the join result is reported"
        );
    }

    #[test]
    fn shutdown_reports_the_partial_window_and_refuses_later_records() {
        let clock = ManualClock::new(5_000);
        let (shards, handle, rx) = start(clock.clone());
        shards.record(0, 0, 10, None).unwrap();
        shards.record(1, 0, 11, None).unwrap();
        handle.shutdown(Instant::now());
        assert_eq!(rx.recv_timeout(WAIT).unwrap(), (0, 2, vec![]));
        assert_eq!(
            shards.record(0, 0, 12, None),
            Ok(crate::shards::Recorded::Closed)
        );
    }

    #[test]
    fn with_a_state_file_the_open_window_is_saved_not_reported() {
        let dir = std::env::temp_dir().join(format!("verve-collector-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("w.state");
        let clock = ManualClock::new(5_000);
        let (shards, handle, rx) = start_with(clock, Some(path.clone()));
        shards.record(0, 0, 10, Some("http://cb.test/")).unwrap();
        shards.record(1, 0, 11, None).unwrap();
        handle.shutdown(Instant::now());
        // Only the sink's finish: no count for the open window.
        assert_eq!(rx.recv_timeout(WAIT).unwrap().0, u64::MAX);
        let limits = crate::state::Limits::new(1 << 30, 10, Windows::new(10), 5_000);
        match crate::state::load(&path, &limits).unwrap() {
            crate::state::Loaded::Window(w, _) => {
                assert_eq!((w.window_start, w.ids.len()), (0, 2));
                assert_eq!(w.endpoints, ["http://cb.test/"]);
            }
            other => panic!("{other:?}"),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_state_file_that_cannot_be_written_reports_the_window_instead() {
        let clock = ManualClock::new(5_000);
        let missing = std::env::temp_dir().join("verve-no-such-dir-for-sure/w.state");
        let (shards, handle, rx) = start_with(clock, Some(missing));
        shards.record(0, 0, 10, None).unwrap();
        handle.shutdown(Instant::now());
        assert_eq!(rx.recv_timeout(WAIT).unwrap(), (0, 1, vec![]));
    }
}
