//! The collector's tests: windows sealed and reported on a manual clock, and the state
//! file written as windows come and go.

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

/// A fresh journal (interval 10 s) at `DIR/w.state` in a directory of its own for the test
/// `tag`: the directory, the path and the journal.
fn journal_in(tag: &str) -> (std::path::PathBuf, std::path::PathBuf, Journal) {
    use crate::state::journal::Book;
    let dir = std::env::temp_dir().join(format!("verve-collector-{tag}-{}", std::process::id()));
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
    (dir, path, journal)
}

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
    use crate::state::{Limits, Loaded};
    let (dir, path, journal) = journal_in("open");
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
    use crate::state::{Limits, Loaded};
    let (dir, path, journal) = journal_in("empty");
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
    use crate::state::{Limits, Loaded};
    let (dir, path, journal) = journal_in("save");
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
