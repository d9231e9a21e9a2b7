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

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, RecvTimeoutError, Sender};

use crate::clock::{Clock, Windows};
use crate::health::Health;
use crate::ids::IdSet;
use crate::metrics::Metrics;
use crate::shards::Shards;
use crate::sink::{SealedWindow, WindowSink};
use crate::state::journal::Record;
use crate::state::writer::Journal;
use crate::status::Status;

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

/// How often, with `--state-file`, what the shards recorded is appended to the journal and
/// synced. An id answered `ok` is on disk within this plus one sync, so a crash loses at
/// most the last second's ids, as promised, with room for a slow sync.
pub const SAVE_EVERY: Duration = Duration::from_millis(500);

/// How long a seal waits for the window's last ids to be synced before its count line is
/// written. Synced first, a crash between the line and the record that it was written
/// repeats the line with the same count; past this wait (a stalled disk) the line goes out
/// anyway, on time.
pub const SEAL_SYNC_TIMEOUT: Duration = Duration::from_millis(500);

/// The journal is rewritten when it holds more than twice the bytes of the id sets held in
/// memory plus this: so it stays within a small multiple of the sets' size whatever the
/// interval, and small windows are not rewritten at every boundary.
pub const SNAPSHOT_SLACK_BYTES: u64 = 4 << 20;

/// How long the state file's last sync may take at shutdown once the reporters are done.
const JOURNAL_CLOSE: Duration = Duration::from_millis(300);

/// Everything the collector works on.
pub struct Collector {
    pub shards: Arc<Shards>,
    pub windows: Windows,
    pub clock: Arc<dyn Clock>,
    pub sink: Box<dyn WindowSink>,
    pub metrics: Arc<Metrics>,
    /// The status page, re-rendered after each merge with the open window's count.
    pub status: Arc<Status>,
    /// `--state-file`: the journal what the shards record is saved to, about twice a
    /// second; the open window is saved there at shutdown instead of being reported.
    pub journal: Option<Journal>,
    /// The last window whose refused ids were warned about (one warning per window).
    pub memory_warned: Option<u64>,
    /// Journal rewrites asked for: another is asked only once the writer is done with it.
    pub snapshots_asked: u64,
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
                let mut next_save = Instant::now() + SAVE_EVERY;
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
                    // The open window is the clock's, or `next` when the clock was stepped
                    // back behind it: that one keeps counting until the clock passes its
                    // end (see `crate::shards`).
                    let open = this.windows.index_of(now).max(next);
                    // Saved before each absorb too: with a state file the shards' ids reach
                    // the window's set only once saved, and the gauge stays within a second.
                    let saving_due = Instant::now() >= next_save || Instant::now() >= next_absorb;
                    if this.journal.is_some() && saving_due {
                        this.save(next, open);
                        next_save = Instant::now() + SAVE_EVERY;
                    }
                    if Instant::now() >= next_absorb {
                        this.absorb(open);
                        next_absorb = Instant::now() + ABSORB_EVERY;
                    }
                    let mut wait = Duration::from_millis(due - now)
                        .min(POLL)
                        .min(next_absorb.saturating_duration_since(Instant::now()));
                    if this.journal.is_some() {
                        wait = wait.min(next_save.saturating_duration_since(Instant::now()));
                    }
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
        self.status.refresh(self.windows.start_secs(window));
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

    /// Seals `window` and hands it to the sink. With a state file, the window's last ids
    /// are synced first (see [`SEAL_SYNC_TIMEOUT`]).
    fn seal_and_hand_on(&mut self, window: u64) {
        let (sealed, unsaved) = self.seal(window);
        if let Some(journal) = &self.journal {
            let unsaved = known(unsaved);
            journal.append(records(sealed.window_start, unsaved, &sealed.endpoints));
            if !journal.sync(SEAL_SYNC_TIMEOUT) {
                log::warn!(
                    "--state-file: window {}'s last ids were not synced within {:?}: its \
                     count line goes out now; a crash before they are would report the \
                     window again, with those ids missing",
                    crate::clock::rfc3339_secs(sealed.window_start),
                    SEAL_SYNC_TIMEOUT
                );
            }
        }
        self.sink.accept(sealed);
        self.maybe_snapshot();
    }

    /// Appends what the shards recorded in windows `first..=last` since the last save to
    /// the journal (see [`SAVE_EVERY`]).
    fn save(&mut self, first: u64, last: u64) {
        let Some(journal) = &self.journal else { return };
        for window in first..=last {
            if let Some(unsaved) = self.shards.unsaved(window) {
                let start = self.windows.start_secs(window);
                journal.append(records(start, unsaved.ids, &unsaved.endpoints));
            }
        }
        self.maybe_snapshot();
    }

    /// Asks the writer to rewrite the journal when it holds more than twice what is live
    /// (see [`SNAPSHOT_SLACK_BYTES`]), or after a failed write, unless a rewrite is under way.
    fn maybe_snapshot(&mut self) {
        let Some(journal) = &self.journal else { return };
        let stats = journal.stats();
        if stats.snapshots.load(Relaxed) < self.snapshots_asked {
            return;
        }
        let file = stats.file_bytes.load(Relaxed);
        let live = self.shards.memory().used();
        if journal.wants_snapshot() || file > live.saturating_mul(2) + SNAPSHOT_SLACK_BYTES {
            let sets = self
                .shards
                .saved_sets()
                .into_iter()
                .map(|(w, sets)| (self.windows.start_secs(w), sets))
                .collect();
            self.snapshots_asked = stats.snapshots.load(Relaxed) + 1;
            journal.snapshot(sets);
        }
    }

    /// Seals `window`: the shards' last ids are merged into its set. Also returns those of
    /// them that were not saved yet, serialized (with a state file).
    fn seal(&mut self, window: u64) -> (SealedWindow, Vec<u8>) {
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
        let window = SealedWindow {
            window,
            window_start: self.windows.start_secs(window),
            ids: sealed.ids,
            unshipped: sealed.unshipped,
            endpoints: sealed.endpoints,
            charge: sealed.charge,
        };
        (window, sealed.unsaved)
    }

    /// Seals the open window at shutdown and saves it to the state file, synced by
    /// `deadline`; reports it as usual (a partial count) if it cannot be saved, so nothing is
    /// lost silently.
    fn save_open(&mut self, window: u64, deadline: Instant) {
        let (sealed, unsaved) = self.seal(window);
        let unsaved = known(unsaved);
        let Some(journal) = &self.journal else {
            return self.sink.accept(sealed);
        };
        journal.append(records(sealed.window_start, unsaved, &sealed.endpoints));
        if journal.sync(deadline.saturating_duration_since(Instant::now())) {
            log::info!(
                "saved the open window {} ({} ids, {} endpoints) to {}",
                crate::clock::rfc3339_secs(sealed.window_start),
                sealed.ids.len(),
                sealed.endpoints.len(),
                journal.path().display()
            );
        } else {
            log::error!(
                "cannot save the open window {} to {}, reporting it now instead",
                crate::clock::rfc3339_secs(sealed.window_start),
                journal.path().display()
            );
            self.sink.accept(sealed);
        }
    }

    /// Shutdown: refuse further records, then report every window from `next` to the one
    /// open now, except that with a state file the open one is saved instead, then any later
    /// window that holds ids, then let the reporters finish, then close the state file.
    fn close(mut self, next: u64, deadline: Instant) {
        self.shards.close();
        // The clock's window, or `next` if the clock was stepped back behind it.
        let open = self.windows.index_of(self.clock.now_ms()).max(next);
        for window in next..=open {
            if self.journal.is_some() && window == open {
                self.save_open(window, deadline);
            } else {
                self.seal_and_hand_on(window);
            }
        }
        // Only a restored window ahead of the clock can be later. It is reported, but not the
        // empty windows before it, which have not begun: a window far ahead costs one line,
        // not one per interval up to it.
        for window in self.shards.windows_with_ids_after(open) {
            self.seal_and_hand_on(window);
        }
        self.sink.finish(deadline);
        // Last: the reporters record the calls and Kafka records they finished.
        if let Some(journal) = self.journal.take() {
            let path = journal.path().to_owned();
            // Its own moment after the reporters' deadline: their last records are worth
            // one more sync, and the process still exits well within its 5 s.
            if !journal.close(deadline.max(Instant::now() + JOURNAL_CLOSE)) {
                log::error!(
                    "--state-file {}: the last records were not synced by the shutdown \
                     deadline: the next start makes again the calls and Kafka records they \
                     would have marked done",
                    path.display()
                );
            }
        }
    }
}

/// The journal records of `ids` (serialized, possibly empty) and `endpoints` of the window
/// starting at `window_start`.
/// A sealed window's unsaved ids, or an empty set when none are left: so the journal knows
/// every sealed window, an empty one included. Its count line can be written before its
/// `reported` record is synced; after a crash there the restart must find the window to
/// report it again (the same count, 0) and produce its Kafka record, as for any other.
fn known(unsaved: Vec<u8>) -> Vec<u8> {
    if !unsaved.is_empty() {
        return unsaved;
    }
    let mut empty = Vec::new();
    IdSet::new().serialize_into(&mut empty);
    empty
}

fn records(window_start: u64, ids: Vec<u8>, endpoints: &[String]) -> Vec<Record> {
    let mut records = Vec::with_capacity(1 + endpoints.len());
    if !ids.is_empty() {
        records.push(Record::Ids {
            window_start,
            set: ids,
        });
    }
    records.extend(endpoints.iter().map(|url| Record::Endpoint {
        window_start,
        url: url.clone(),
    }));
    records
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

    /// Sends what it gets to the test; with a state file, marks each window reported in it
    /// as the service's own reporters do.
    struct ChannelSink(
        Sender<Seen>,
        Option<crate::report::state_file::StateFileMark>,
    );

    impl WindowSink for ChannelSink {
        fn accept(&mut self, s: SealedWindow) {
            if let Some(mark) = &mut self.1 {
                use crate::report::Reporter;
                mark.report(&crate::report::WindowReport {
                    window_start: s.window_start,
                    unique_count: s.ids.len(),
                    endpoints: s.endpoints.clone(),
                    scope: crate::report::Scope::Global,
                });
            }
            self.0
                .send((s.window_start, s.ids.len(), s.endpoints))
                .unwrap();
        }
        fn finish(&mut self, _: Instant) {
            self.0.send((u64::MAX, 0, vec![])).unwrap();
        }
    }

    /// Counters of `workers` workers and a status page over them (which no test reads).
    pub(super) fn counters(workers: usize) -> (Arc<Metrics>, Arc<Status>) {
        let metrics = Arc::new(Metrics::new(workers));
        let status = Arc::new(Status::new(metrics.clone(), ManualClock::new(0)));
        (metrics, status)
    }

    fn start(clock: Arc<ManualClock>) -> (Arc<Shards>, CollectorHandle, Receiver<Seen>) {
        start_with(clock, None)
    }

    fn start_with(
        clock: Arc<ManualClock>,
        journal: Option<Journal>,
    ) -> (Arc<Shards>, CollectorHandle, Receiver<Seen>) {
        start_marking(clock, journal, true)
    }

    /// `marked`: whether the sink marks reported windows in the journal, as the count log's
    /// reporter does; without it the file is as a crash right after each count line left it.
    fn start_marking(
        clock: Arc<ManualClock>,
        journal: Option<Journal>,
        marked: bool,
    ) -> (Arc<Shards>, CollectorHandle, Receiver<Seen>) {
        let shards = Arc::new(Shards::new(2, EndpointPolicy::default(), 10));
        if journal.is_some() {
            shards.set_durable();
        }
        let mark = journal
            .as_ref()
            .filter(|_| marked)
            .map(|j| crate::report::state_file::StateFileMark::new(j.sender(), false));
        let (tx, rx) = unbounded();
        let (metrics, status) = counters(2);
        let handle = Collector {
            shards: shards.clone(),
            windows: Windows::new(10),
            clock,
            sink: Box::new(ChannelSink(tx, mark)),
            metrics,
            status,
            journal,
            memory_warned: None,
            snapshots_asked: 0,
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
        let (metrics, status) = counters(1);
        let handle = Collector {
            shards: Arc::new(Shards::new(1, EndpointPolicy::default(), 10)),
            windows: Windows::new(10),
            clock: clock.clone(),
            sink: Box::new(PanickingSink),
            metrics,
            status,
            journal: None,
            memory_warned: None,
            snapshots_asked: 0,
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
        use crate::state::{journal::Book, Limits, Loaded};
        let dir = std::env::temp_dir().join(format!("verve-collector-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("w.state");
        let journal = Journal::create(
            &path,
            10,
            Book::default(),
            vec![],
            Default::default(),
            &Health::new(),
        )
        .unwrap();
        let clock = ManualClock::new(5_000);
        let (shards, handle, rx) = start_with(clock, Some(journal));
        shards.record(0, 0, 10, Some("http://cb.test/")).unwrap();
        shards.record(1, 0, 11, None).unwrap();
        handle.shutdown(Instant::now() + WAIT);
        // Only the sink's finish: no count for the open window.
        assert_eq!(rx.recv_timeout(WAIT).unwrap().0, u64::MAX);
        let limits = Limits::new(1 << 30, 10, Windows::new(10), 5_000);
        match crate::state::load(&path, &limits).unwrap() {
            Loaded::Found(restored) => {
                assert_eq!(restored.ids[&0].len(), 2);
                assert_eq!(restored.book.open[&0], ["http://cb.test/"]);
                assert!(restored.book.history.is_empty());
            }
            other => panic!("{other:?}"),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_empty_window_sealed_with_a_state_file_is_in_the_file() {
        use crate::state::{journal::Book, Limits, Loaded};
        let dir =
            std::env::temp_dir().join(format!("verve-collector-empty-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("w.state");
        let journal = Journal::create(
            &path,
            10,
            Book::default(),
            vec![],
            Default::default(),
            &Health::new(),
        )
        .unwrap();
        let clock = ManualClock::new(5_000);
        let (_shards, handle, rx) = start_marking(clock.clone(), Some(journal), false);
        // Window 0 closes with no id and no endpoint; nothing marks it reported here, as a
        // crash right after its count line would leave it.
        clock.set(10_000 + SETTLE.as_millis() as u64);
        assert_eq!(rx.recv_timeout(WAIT).unwrap(), (0, 0, vec![]));
        handle.shutdown(Instant::now() + WAIT);
        assert_eq!(rx.recv_timeout(WAIT).unwrap().0, u64::MAX);
        let limits = Limits::new(1 << 30, 10, Windows::new(10), 15_000);
        match crate::state::load(&path, &limits).unwrap() {
            Loaded::Found(restored) => {
                // Both the sealed window and the open one stopped at shutdown are known, so
                // a restart reports them (count 0) instead of forgetting them.
                assert!(restored.book.open.contains_key(&0), "{:?}", restored.book);
                assert!(restored.book.open.contains_key(&10), "{:?}", restored.book);
                assert_eq!(restored.ids.get(&0).map(|s| s.len()).unwrap_or(0), 0);
            }
            other => panic!("{other:?}"),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_state_file_that_cannot_be_written_reports_the_window_instead() {
        let clock = ManualClock::new(5_000);
        let (shards, handle, rx) = start_with(clock, Some(Journal::stopped_for_test()));
        shards.record(0, 0, 10, None).unwrap();
        handle.shutdown(Instant::now() + WAIT);
        assert_eq!(rx.recv_timeout(WAIT).unwrap(), (0, 1, vec![]));
    }

    #[test]
    fn ids_are_saved_as_they_come_and_the_file_is_rewritten_once_a_window_is_reported() {
        use crate::state::{journal::Book, Limits, Loaded};
        let dir = std::env::temp_dir().join(format!("verve-collector-save-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("w.state");
        let journal = Journal::create(
            &path,
            10,
            Book::default(),
            vec![],
            Default::default(),
            &Health::new(),
        )
        .unwrap();
        let stats = journal.stats().clone();
        let clock = ManualClock::new(5_000);
        let (shards, handle, rx) = start_with(clock.clone(), Some(journal));
        for id in 0..1000 {
            shards.record((id % 2) as usize, 0, id, None).unwrap();
        }
        // Saved within a save round or two, with no window closed: a crash now keeps them.
        let limits = Limits::new(1 << 30, 10, Windows::new(10), 5_000);
        let deadline = Instant::now() + WAIT;
        loop {
            let bytes = std::fs::read(&path).unwrap();
            let r = crate::state::journal::replay(
                &bytes,
                &crate::state::journal::Limits {
                    max_id_bytes: 1 << 30,
                },
            )
            .unwrap();
            if r.ids.get(&0).map(|s| s.len()) == Some(1000) {
                break;
            }
            assert!(Instant::now() < deadline, "the ids were not saved");
            std::thread::sleep(Duration::from_millis(20));
        }
        // The window closes: reported, and the file no longer needs its ids.
        clock.set(10_000 + SETTLE.as_millis() as u64);
        assert_eq!(rx.recv_timeout(WAIT).unwrap(), (0, 1000, vec![]));
        shards.record(0, 1, 5, None).unwrap();
        handle.shutdown(Instant::now() + WAIT);
        assert_eq!(rx.recv_timeout(WAIT).unwrap().0, u64::MAX);
        match crate::state::load(&path, &limits).unwrap() {
            Loaded::Found(restored) => {
                assert!(!restored.ids.contains_key(&0), "window 0 was reported");
                assert_eq!(restored.ids[&10].len(), 1);
            }
            other => panic!("{other:?}"),
        }
        assert!(stats.syncs.load(Relaxed) >= 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[cfg(test)]
mod rewrite_tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::endpoints::EndpointPolicy;
    use crate::state::journal::Book;
    use tests::counters;

    /// Once a window holding more than [`SNAPSHOT_SLACK_BYTES`] of ids is reported, the
    /// journal holds mostly dead bytes and the collector has it rewritten: the file shrinks
    /// to what is live.
    #[test]
    fn a_journal_mostly_dead_after_a_report_is_rewritten_small() {
        let dir = std::env::temp_dir().join(format!("verve-rewrite-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("w.state");
        let journal = Journal::create(
            &path,
            10,
            Book::default(),
            vec![],
            Default::default(),
            &Health::new(),
        )
        .unwrap();
        let stats = journal.stats().clone();
        let shards = Arc::new(Shards::new(2, EndpointPolicy::default(), 10));
        shards.set_durable();
        let clock = ManualClock::new(5_000);
        let mark = crate::report::state_file::StateFileMark::new(journal.sender(), false);
        struct Marking(crate::report::state_file::StateFileMark);
        impl WindowSink for Marking {
            fn accept(&mut self, s: SealedWindow) {
                use crate::report::Reporter;
                self.0.report(&crate::report::WindowReport {
                    window_start: s.window_start,
                    unique_count: s.ids.len(),
                    endpoints: s.endpoints,
                    scope: crate::report::Scope::Global,
                });
            }
            fn finish(&mut self, _: Instant) {}
        }
        let (metrics, status) = counters(2);
        let handle = Collector {
            shards: shards.clone(),
            windows: Windows::new(10),
            clock: clock.clone(),
            sink: Box::new(Marking(mark)),
            metrics,
            status,
            journal: Some(journal),
            memory_warned: None,
            snapshots_asked: 0,
        }
        .spawn(&Health::new())
        .unwrap();
        // About 6 MB of 64-bit ids, saved as they come.
        for i in 0..1_000_000i64 {
            shards
                .record(
                    (i % 2) as usize,
                    0,
                    i.wrapping_mul(0x9E37_79B9_7F4A_7C15_u64 as i64),
                    None,
                )
                .unwrap();
        }
        let wait = |what: &str, done: &dyn Fn() -> bool| {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !done() {
                assert!(Instant::now() < deadline, "{what}");
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        wait("the ids saved", &|| {
            stats.file_bytes.load(Relaxed) > SNAPSHOT_SLACK_BYTES
        });
        let before = stats.file_bytes.load(Relaxed);
        // The window closes and is reported: its ids are dead in the file.
        clock.set(10_000 + SETTLE.as_millis() as u64);
        wait("the journal rewritten", &|| {
            stats.snapshots.load(Relaxed) >= 2 && stats.file_bytes.load(Relaxed) < 4096
        });
        assert!(std::fs::metadata(&path).unwrap().len() < before / 100);
        handle.shutdown(Instant::now() + Duration::from_secs(10));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
