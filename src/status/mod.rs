//! What an operator reads besides `/metrics`: `GET /api/verve/windows` (the counts of the
//! last reported windows, JSON) and `GET /` (the status page: HTML with an inline SVG chart
//! of those counts and the instance's state).
//!
//! **Both are rendered off the request path and served from a cache.** The writers are
//! the threads that learn something: the count log reporter ([`Status::record`], on the
//! collector thread, or on the cluster thread of a window's leader), the cluster thread of
//! every other instance (which learns a window's count from the `done` mark its leader
//! left in Redis), and the collector, which re-renders the page once a second
//! ([`Status::refresh`], right after its merge of the workers' ids). Each render reads one
//! [`Snapshot`] of the [`Metrics`], produces both bodies and hands them to [`Pages`], one
//! copy per worker: a request copies its own worker's copy out, and neither renders nor
//! waits for another worker (see `pages.rs`).
//! Every time on the page (the time of the render, the uptime, how long ago an error was)
//! comes from the server's injected [`Clock`], so a test can move it by hand.
//!
//! The [`History`] keeps the last [`HISTORY_LEN`] windows. In cluster mode it holds the
//! cluster's counts only: windows an instance had to report alone (`scope=local`) are not in
//! it. With `--state-file` it is saved with the open window and restored at the next start
//! (see [`crate::state`]).
//!
//! Layout: `history.rs` the recent windows and their JSON, `pages.rs` the per-worker cache,
//! `html.rs` the page, `chart.rs` its SVG chart; this file the writers' side that ties them.

mod chart;
mod history;
mod html;
mod pages;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU64, AtomicU8};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

pub use chart::CHART_WINDOWS;
pub use history::{History, Reported, HISTORY_LEN};
pub use html::{Info, RedisLink};
pub use pages::Pages;

use crate::clock::{Clock, Windows};
use crate::metrics::{Metrics, Snapshot};
use html::View;
use pages::Bodies;

/// Kafka or Redis errors, or ids refused for memory, within this long make the page say so.
const RECENT: Duration = Duration::from_secs(60);

/// The shortest span over which requests per second are measured: the collector also
/// refreshes right after a seal, a fraction of a second after its last refresh.
const MIN_RATE_SPAN: Duration = Duration::from_millis(500);

/// When a counter last grew, as seen by the renders (ms on the injected clock).
#[derive(Debug, Default, Clone, Copy)]
struct Change {
    value: u64,
    at_ms: Option<u64>,
}

impl Change {
    fn see(&mut self, value: u64, now_ms: u64) {
        if value > self.value {
            self.at_ms = Some(now_ms);
        }
        self.value = value;
    }

    /// How long ago the counter last grew, if within `span`.
    fn within(&self, span: Duration, now_ms: u64) -> Option<Duration> {
        let ago = Duration::from_millis(now_ms.saturating_sub(self.at_ms?));
        (ago <= span).then_some(ago)
    }
}

/// Accept API requests per second, measured between two refreshes at least
/// [`MIN_RATE_SPAN`] apart.
#[derive(Debug, Default)]
struct Rate {
    /// The last sample: (ms on the injected clock, request total).
    sample: Option<(u64, u64)>,
    per_second: f64,
}

impl Rate {
    fn see(&mut self, total: u64, now_ms: u64) {
        let min_span = MIN_RATE_SPAN.as_millis() as u64;
        match self.sample {
            // A clock set back: measure afresh from here.
            Some((at, _)) if now_ms < at => self.sample = Some((now_ms, total)),
            Some((at, before)) if now_ms - at < min_span && total >= before => {}
            Some((at, before)) => {
                let secs = Duration::from_millis(now_ms - at).as_secs_f64();
                self.per_second = total.saturating_sub(before) as f64 / secs.max(1e-3);
                self.sample = Some((now_ms, total));
            }
            None => self.sample = Some((now_ms, total)),
        }
    }
}

/// The writers' side, under one mutex that only writers take.
#[derive(Debug, Default)]
struct Board {
    history: History,
    /// Start of the window open at the last refresh.
    open_start: Option<u64>,
    rate: Rate,
    redis_errors: Change,
    kafka_errors: Change,
    memory_refused: Change,
}

/// The history of reported windows and the cached pages (see the module doc). One per
/// server, shared by the threads that write it and the connections that serve it.
pub struct Status {
    /// What requests read.
    pub pages: Pages,
    /// Read at every render, never written.
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
    info: OnceLock<Info>,
    board: Mutex<Board>,
    started_ms: u64,
    /// A [`RedisLink`], written by the cluster thread.
    redis: AtomicU8,
    /// When `redis` last changed.
    redis_since_ms: AtomicU64,
}

impl std::fmt::Debug for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Status")
            .field("info", &self.info.get())
            .field("history", &self.board().history.len())
            .finish_non_exhaustive()
    }
}

impl Status {
    /// Empty history; pages that say so, until the first render. One page cache slot per
    /// worker of `metrics`.
    pub fn new(metrics: Arc<Metrics>, clock: Arc<dyn Clock>) -> Status {
        let bodies = Bodies::starting(History::default().json());
        Status {
            pages: Pages::new(metrics.workers.len(), bodies),
            started_ms: clock.now_ms(),
            metrics,
            clock,
            info: OnceLock::new(),
            board: Mutex::new(Board::default()),
            redis: AtomicU8::new(RedisLink::Unused as u8),
            redis_since_ms: AtomicU64::new(0),
        }
    }

    fn board(&self) -> MutexGuard<'_, Board> {
        self.board.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn info(&self) -> &Info {
        static DEFAULT: OnceLock<Info> = OnceLock::new();
        self.info
            .get()
            .unwrap_or_else(|| DEFAULT.get_or_init(Info::default))
    }

    /// Sets what the page says about the instance (once; later calls change nothing) and
    /// renders the first pages.
    pub fn configure(&self, info: Info) {
        if info.instance.is_some() {
            self.redis.store(RedisLink::Connecting as u8, Relaxed);
        }
        let _ = self.info.set(info);
        self.render(&mut self.board());
    }

    /// A window's count, reported by this instance (its count line) or by the cluster (its
    /// leader's `done` mark). Windows not aligned to the interval (a state file of another
    /// `--interval` reported late) are left out of the history.
    pub fn record(&self, window_start: u64, unique_count: u64) {
        if !History::takes(window_start, self.info().interval()) {
            return;
        }
        let mut board = self.board();
        let r = Reported {
            window_start,
            unique_count,
        };
        if board.history.insert(r) {
            self.render(&mut board);
        }
    }

    /// The history a state file held (see [`crate::state`]).
    pub fn restore(&self, history: &[Reported]) {
        let interval = self.info().interval();
        let mut board = self.board();
        for r in history {
            if History::takes(r.window_start, interval) {
                board.history.insert(*r);
            }
        }
        self.render(&mut board);
    }

    /// The history, newest first.
    pub fn history(&self) -> Vec<Reported> {
        self.board().history.iter().copied().collect()
    }

    /// Re-renders the page: the collector calls this about once a second, with the start of
    /// the window open now.
    pub fn refresh(&self, open_window_start: u64) {
        let mut board = self.board();
        board.open_start = Some(open_window_start);
        let (counts, now_ms) = (self.metrics.snapshot(), self.clock.now_ms());
        board.rate.see(counts.requests.total(), now_ms);
        self.render_with(&mut board, counts, now_ms);
    }

    /// Cluster mode: the cluster thread's connection to Redis works (`true`) or was lost.
    pub fn redis_link(&self, up: bool) {
        let state = if up { RedisLink::Up } else { RedisLink::Down } as u8;
        if self.redis.swap(state, Relaxed) != state {
            self.redis_since_ms.store(self.clock.now_ms(), Relaxed);
        }
    }

    /// Renders both bodies from `board` and a snapshot of the counters taken now, and
    /// publishes them.
    fn render(&self, board: &mut Board) {
        self.render_with(board, self.metrics.snapshot(), self.clock.now_ms());
    }

    fn render_with(&self, board: &mut Board, counts: Snapshot, now_ms: u64) {
        board.redis_errors.see(counts.redis_errors, now_ms);
        board.kafka_errors.see(counts.kafka_errors, now_ms);
        board.memory_refused.see(counts.id_memory.refused, now_ms);
        let view = self.view(board, counts, now_ms);
        let chart = chart::render(&view);
        let bodies = Bodies {
            windows: board.history.json().into(),
            page: html::render_page(&view, &chart).into_bytes().into(),
        };
        self.pages.publish(&bodies);
    }

    /// What the page shows now.
    fn view<'a>(&'a self, board: &'a Board, counts: Snapshot, now_ms: u64) -> View<'a> {
        let info = self.info();
        View {
            info,
            now_ms,
            uptime: Duration::from_millis(now_ms.saturating_sub(self.started_ms)),
            history: &board.history,
            open_start: open_start(board, info, now_ms),
            per_second: board.rate.per_second,
            counts,
            redis: RedisLink::from_u8(self.redis.load(Relaxed)),
            redis_since_ms: self.redis_since_ms.load(Relaxed),
            redis_error_ago: board.redis_errors.within(RECENT, now_ms),
            kafka_error_ago: board.kafka_errors.within(RECENT, now_ms),
            memory_refused_ago: board.memory_refused.within(RECENT, now_ms),
        }
    }
}

/// The open window's start: the collector's at its last refresh (before the first, the
/// clock's), never one already reported.
fn open_start(board: &Board, info: &Info, now_ms: u64) -> u64 {
    let windows = Windows::new(info.interval());
    let newest_next = board
        .history
        .newest()
        .map(|r| r.window_start.saturating_add(info.interval()));
    board
        .open_start
        .unwrap_or_else(|| windows.start_secs(windows.index_of(now_ms)))
        .max(newest_next.unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{ManualClock, END_OF_RFC3339_SECS};

    /// 2026-11-21T23:50:00Z.
    const T0_MS: u64 = 1_795_305_000_000;
    const T0: u64 = T0_MS / 1000;

    struct Fixture {
        metrics: Arc<Metrics>,
        clock: Arc<ManualClock>,
        status: Status,
    }

    impl Fixture {
        /// A status of `workers` slots, configured with `info`, at [`T0_MS`].
        fn new(workers: usize, info: Info) -> Fixture {
            let metrics = Arc::new(Metrics::new(workers));
            let clock = ManualClock::new(T0_MS);
            let status = Status::new(metrics.clone(), clock.clone());
            status.configure(info);
            Fixture {
                metrics,
                clock,
                status,
            }
        }

        fn page(&self) -> String {
            let mut out = Vec::new();
            self.status.pages.page(0, |b| out.extend_from_slice(b));
            String::from_utf8(out).unwrap()
        }

        fn windows(&self, shard: usize) -> String {
            let mut out = Vec::new();
            self.status
                .pages
                .windows(shard, |b| out.extend_from_slice(b));
            String::from_utf8(out).unwrap()
        }

        /// The page after the clock moved by `secs` and the collector refreshed it.
        fn page_after(&self, secs: u64) -> String {
            self.clock.advance(Duration::from_secs(secs));
            let now_ms = self.clock.now_ms();
            self.status.refresh(now_ms / 1000 / 60 * 60);
            self.page()
        }
    }

    fn reported(window_start: u64, unique_count: u64) -> Reported {
        Reported {
            window_start,
            unique_count,
        }
    }

    /// The text between `id="{id}">` and the next `<`.
    fn field<'a>(page: &'a str, id: &str) -> &'a str {
        let open = format!("id=\"{id}\">");
        let at = page
            .find(&open)
            .unwrap_or_else(|| panic!("no {id}: {page}"))
            + open.len();
        &page[at..at + page[at..].find('<').unwrap()]
    }

    #[test]
    fn recorded_windows_reach_every_worker_slot_and_off_interval_ones_do_not() {
        // Before the first render: an empty list, and a page that says verve is starting.
        let status = Status::new(Arc::new(Metrics::new(3)), ManualClock::new(T0_MS));
        let mut out = Vec::new();
        status.pages.windows(2, |b| out.extend_from_slice(b));
        assert_eq!(out, b"{\"windows\":[]}\n");
        status
            .pages
            .page(2, |b| assert!(b.ends_with(b"verve is starting</p>\n")));
        let f = Fixture::new(3, Info::default());
        assert_eq!(f.windows(2), "{\"windows\":[]}\n");
        f.status.record(120, 5);
        f.status.record(60, 42);
        // A repeat keeps the latest count; a window off the interval is left out.
        f.status.record(120, 6);
        f.status.record(150, 1);
        assert_eq!(f.status.history(), [reported(120, 6), reported(60, 42)]);
        for shard in 0..7 {
            assert_eq!(
                f.windows(shard),
                "{\"windows\":[{\"window_start\":\"1970-01-01T00:02:00Z\",\"unique_count\":6},\
                 {\"window_start\":\"1970-01-01T00:01:00Z\",\"unique_count\":42}]}\n"
            );
        }
        f.status.restore(&[reported(0, 1), reported(7, 9)]);
        assert_eq!(
            f.status.history(),
            [reported(120, 6), reported(60, 42), reported(0, 1)]
        );
    }

    #[test]
    fn the_page_shows_one_mark_per_window_and_the_counters() {
        let f = Fixture::new(
            1,
            Info {
                interval_secs: 10,
                instance: Some("<script>alert(1)</script>".into()),
                kafka_topic: Some("t\"'&".into()),
                state_file: true,
            },
        );
        f.metrics.windows_reported.store(3, Relaxed);
        f.metrics.window_unique_ids.store(4, Relaxed);
        f.metrics.worker(0).bad_request.store(1234, Relaxed);
        f.status.record(1_000_000_000, 1234);
        f.status.record(1_000_000_010, 0);
        f.status.record(1_000_000_030, 99);
        f.status.refresh(1_000_000_040);
        let page = f.page();
        assert_eq!(page.matches("<rect class=\"win\"").count(), 3, "{page}");
        assert!(page.contains("data-windows=\"3\""));
        assert_eq!(page.matches("<rect class=\"open\"").count(), 1);
        assert_eq!(field(&page, "last-count"), "99");
        assert_eq!(field(&page, "windows-reported"), "3");
        assert_eq!(field(&page, "open-count"), "4");
        assert!(page.contains("data-count=\"1234\""));
        assert!(page.contains("1,234 distinct ids"));
        assert!(page.contains("<td>bad request (400, 404, 405)</td><td class=\"n\">1,234<"));
        // Text from outside is escaped.
        assert!(!page.contains("<script>alert"), "{page}");
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(page.contains("topic t&quot;&#39;&amp;"));
        assert_eq!(page.matches("<script>").count(), 1);
        assert!(page.ends_with("</body></html>\n"));
    }

    #[test]
    fn an_empty_history_renders_a_chart_without_marks() {
        let f = Fixture::new(1, Info::default());
        f.status.refresh(600);
        let page = f.page();
        assert!(page.contains("no window reported yet"));
        assert_eq!(page.matches("<rect class=\"win\"").count(), 0);
        assert_eq!(field(&page, "last-count"), "&ndash;");
    }

    #[test]
    fn extreme_values_do_not_panic() {
        let f = Fixture::new(
            1,
            Info {
                interval_secs: 1,
                ..Info::default()
            },
        );
        f.metrics.window_unique_ids.store(u64::MAX, Relaxed);
        f.status.record(END_OF_RFC3339_SECS - 1, u64::MAX);
        f.status.record(0, 0);
        f.status.refresh(0);
        f.status.refresh(u64::MAX);
        f.clock.set(u64::MAX);
        f.status.refresh(u64::MAX);
        f.clock.set(0);
        f.status.refresh(0);
        assert!(f.page().contains("</html>"));
    }

    #[test]
    fn the_page_tells_time_by_the_injected_clock() {
        let f = Fixture::new(1, Info::default());
        // Before the collector's first refresh, the open window is the clock's.
        let page = f.page();
        assert!(page.contains("as of 2026-11-21 23:50:00 UTC"), "{page}");
        assert_eq!(field(&page, "uptime"), "0 s");
        assert!(page.contains("<rect class=\"open\""));
        assert!(page.contains("data-start=\"2026-11-21T23:50:00Z\" data-count=\"0\">"));
        let page = f.page_after(150);
        assert!(page.contains("as of 2026-11-21 23:52:30 UTC"), "{page}");
        assert_eq!(field(&page, "uptime"), "2 min 30 s");
        assert!(page.contains("data-start=\"2026-11-21T23:52:00Z\" data-count=\"0\">"));
    }

    #[test]
    fn requests_per_second_are_measured_on_the_injected_clock() {
        let f = Fixture::new(2, Info::default());
        f.status.refresh(T0);
        f.metrics.worker(0).ok.fetch_add(400, Relaxed);
        f.metrics.worker(1).bad_request.fetch_add(100, Relaxed);
        // Too soon after the last sample: not measured yet.
        f.clock.advance(Duration::from_millis(250));
        f.status.refresh(T0);
        assert_eq!(field(&f.page(), "rps"), "0.0");
        f.clock.advance(Duration::from_millis(750));
        f.status.refresh(T0);
        assert_eq!(field(&f.page(), "rps"), "500");
        // Nothing more in two seconds.
        assert_eq!(field(&f.page_after(2), "rps"), "0.0");
        // A clock set back measures afresh instead of freezing.
        f.clock.set(T0_MS - 10_000);
        f.status.refresh(T0);
        f.metrics.worker(0).ok.fetch_add(8, Relaxed);
        assert_eq!(field(&f.page_after(2), "rps"), "4.0");
    }

    #[test]
    fn errors_show_while_recent_and_fade_after_a_minute() {
        let f = Fixture::new(
            1,
            Info {
                kafka_topic: Some("counts".into()),
                ..Info::default()
            },
        );
        assert_eq!(field(&f.page(), "health"), "OK");
        f.metrics.kafka_errors.fetch_add(2, Relaxed);
        let page = f.page_after(0);
        assert_eq!(field(&page, "health"), "Kafka errors");
        assert!(page.contains("<span class=\"warn\">2</span> (last 0 s ago)"));
        let page = f.page_after(30);
        assert!(page.contains("<span class=\"warn\">2</span> (last 30 s ago)"));
        let page = f.page_after(31);
        assert_eq!(field(&page, "health"), "OK");
        assert!(page.contains("<span class=\"ok\">on</span>, topic counts"));
    }

    #[test]
    fn the_redis_link_is_timed_by_the_injected_clock() {
        let f = Fixture::new(
            1,
            Info {
                instance: Some("a".into()),
                ..Info::default()
            },
        );
        assert!(f.page().contains("<span class=\"warn\">connecting</span>"));
        f.status.redis_link(true);
        f.status.redis_link(true);
        let page = f.page_after(5);
        assert!(
            page.contains("<span class=\"ok\">connected</span> for 5 s"),
            "{page}"
        );
        f.status.redis_link(false);
        let page = f.page_after(70);
        assert_eq!(field(&page, "health"), "Redis unavailable");
        assert!(page.contains("<span class=\"bad\">unavailable</span> for 1 min 10 s"));
    }

    #[test]
    fn windows_not_reported_show_once_the_instance_has_run_long_enough() {
        let f = Fixture::new(1, Info::default());
        // Two intervals and ten seconds: a window should have been reported by then.
        assert_eq!(field(&f.page_after(130), "health"), "OK");
        assert_eq!(field(&f.page_after(1), "health"), "windows not reported");
        let open = f.clock.now_ms() / 1000 / 60 * 60;
        f.status.record(open - 60, 7);
        assert_eq!(field(&f.page(), "health"), "OK");
    }
}
