//! What an operator reads besides `/metrics`: `GET /api/verve/windows` (the counts of the
//! last reported windows, JSON) and `GET /` (the status page: HTML with an inline SVG chart
//! of those counts and the instance's state).
//!
//! **Both are rendered off the request path and served from a cache.** The writers are
//! the threads that learn something: the count log reporter ([`Status::record`], on the
//! collector thread, or on the cluster thread of a window's leader), the cluster thread of
//! every other instance (which learns a window's count from the `done` mark its leader
//! left in Redis), and the collector, which re-renders the page once a second
//! ([`Status::refresh`], right after its merge of the workers' ids). Each render produces
//! both bodies and hands them to [`Pages`]: one slot per worker, each its own mutex on its
//! own cache line holding the two bodies as `Arc<[u8]>`. A request locks only its worker's
//! slot, copies the body into the connection's output buffer and unlocks: no rendering, no
//! allocation beyond the output buffer's own, no lock another worker takes, and never the
//! shards. The writer swaps the `Arc`s into every slot; the last reference to an old body
//! is always dropped by the writer, so a request never frees one either.
//!
//! The history keeps the last [`HISTORY_LEN`] windows, newest first, one entry per window
//! (a window reported twice, which cluster mode can do after a leader's failure, keeps the
//! latest count). In cluster mode it holds the cluster's counts only: windows an instance
//! had to report alone (`scope=local`) are not in it. With `--state-file` it is saved with
//! the open window and restored at the next start (see [`crate::state`]).
//!
//! Everything on the page that does not come from verve's own counters (the instance name,
//! the Kafka topic) is HTML-escaped; the JSON holds only numbers and window starts that
//! verve formats itself.

use std::collections::VecDeque;
use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU64, AtomicU8};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;

use crate::clock::{rfc3339_secs, Clock, SystemClock, END_OF_RFC3339_SECS};
use crate::metrics::{Metrics, Snapshot};

/// Windows kept in the history (and listed by `/api/verve/windows`): two hours of one-minute
/// windows.
pub const HISTORY_LEN: usize = 120;

/// Windows the status page's chart spans, before the open one.
pub const CHART_WINDOWS: u64 = 60;

/// Rows of the page's table of recent windows.
const RECENT_ROWS: usize = 10;

/// How often the page reloads itself in the browser.
const PAGE_REFRESH: Duration = Duration::from_secs(5);

/// Kafka or Redis errors, or ids refused for memory, within this long make the page say so.
const RECENT: Duration = Duration::from_secs(60);

/// The shortest span over which requests per second are measured: the collector also
/// refreshes right after a seal, a fraction of a second after its last refresh.
const MIN_RATE_SPAN: Duration = Duration::from_millis(500);

/// One reported window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reported {
    /// Window start, whole seconds since the epoch.
    pub window_start: u64,
    pub unique_count: u64,
}

/// What the page says about the instance: set once at start-up ([`Status::configure`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// `--interval`.
    pub interval_secs: u64,
    /// Cluster mode: `--instance-id` (`None`: a single instance).
    pub instance: Option<String>,
    /// `--kafka-topic` when `--kafka-brokers` is set.
    pub kafka_topic: Option<String>,
    /// `--state-file` is set.
    pub state_file: bool,
}

impl Default for Info {
    fn default() -> Self {
        Info {
            interval_secs: 60,
            instance: None,
            kafka_topic: None,
            state_file: false,
        }
    }
}

/// The two cached bodies.
#[derive(Clone)]
struct Bodies {
    windows: Arc<[u8]>,
    page: Arc<[u8]>,
}

/// The read side: one snapshot of the bodies per worker (see the module doc).
pub struct Pages {
    slots: Box<[CachePadded<Mutex<Bodies>>]>,
}

impl Pages {
    fn new(workers: usize, bodies: Bodies) -> Pages {
        Pages {
            slots: (0..workers.max(1))
                .map(|_| CachePadded::new(Mutex::new(bodies.clone())))
                .collect(),
        }
    }

    fn slot(&self, shard: usize) -> MutexGuard<'_, Bodies> {
        // A poisoned slot still holds whole bodies: only assignments are made under it.
        self.slots[shard % self.slots.len()]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Calls `f` with the `/api/verve/windows` body, under the lock of `shard`'s slot only.
    pub fn windows(&self, shard: usize, f: impl FnOnce(&[u8])) {
        f(&self.slot(shard).windows)
    }

    /// Calls `f` with the status page, under the lock of `shard`'s slot only.
    pub fn page(&self, shard: usize, f: impl FnOnce(&[u8])) {
        f(&self.slot(shard).page)
    }

    fn publish(&self, bodies: &Bodies) {
        for slot in self.slots.iter() {
            let old = std::mem::replace(
                &mut *slot.lock().unwrap_or_else(PoisonError::into_inner),
                bodies.clone(),
            );
            // Dropped here, outside the lock.
            drop(old);
        }
    }
}

/// Cluster mode: the cluster thread's connection to Redis, as the page shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RedisLink {
    /// A single instance.
    Unused = 0,
    /// Cluster mode, not connected yet.
    Connecting = 1,
    Up = 2,
    Down = 3,
}

impl RedisLink {
    fn from_u8(v: u8) -> RedisLink {
        match v {
            1 => RedisLink::Connecting,
            2 => RedisLink::Up,
            3 => RedisLink::Down,
            _ => RedisLink::Unused,
        }
    }
}

/// When a counter last grew, as seen by the renders.
#[derive(Debug, Default, Clone, Copy)]
struct Change {
    value: u64,
    at: Option<Instant>,
}

impl Change {
    fn see(&mut self, value: u64, now: Instant) {
        if value > self.value {
            self.at = Some(now);
        }
        self.value = value;
    }

    fn within(&self, span: Duration, now: Instant) -> Option<Duration> {
        let ago = now.saturating_duration_since(self.at?);
        (ago <= span).then_some(ago)
    }
}

/// The writers' side, under one mutex that only writers take.
#[derive(Debug, Default)]
struct Board {
    /// Newest first, one entry per window start, at most [`HISTORY_LEN`].
    history: VecDeque<Reported>,
    /// Start of the window open at the last refresh.
    open_start: Option<u64>,
    /// The last sample of the request total, and the rate measured up to it.
    rate_sample: Option<(Instant, u64)>,
    per_second: f64,
    redis_errors: Change,
    kafka_errors: Change,
    memory_refused: Change,
}

/// The history of reported windows and the cached pages (see the module doc). Held by
/// [`Metrics`], so that every thread that counts can also report here.
pub struct Status {
    pub pages: Pages,
    info: OnceLock<Info>,
    board: Mutex<Board>,
    started: Instant,
    redis: AtomicU8,
    redis_since_ms: AtomicU64,
}

impl std::fmt::Debug for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Status")
            .field("info", &self.info.get())
            .field("history", &self.history().len())
            .finish_non_exhaustive()
    }
}

/// Inserts `r` into `history` (newest first); false when nothing changed.
fn insert(history: &mut VecDeque<Reported>, r: Reported) -> bool {
    let at = history
        .iter()
        .position(|h| h.window_start <= r.window_start)
        .unwrap_or(history.len());
    match history.get_mut(at) {
        Some(h) if h.window_start == r.window_start => {
            let changed = h.unique_count != r.unique_count;
            h.unique_count = r.unique_count;
            changed
        }
        _ if at >= HISTORY_LEN => false,
        _ => {
            history.insert(at, r);
            history.truncate(HISTORY_LEN);
            true
        }
    }
}

impl Status {
    /// Empty history; pages that say so, until the first render.
    pub fn new(workers: usize) -> Status {
        let bodies = Bodies {
            windows: render_windows(&VecDeque::new()).into(),
            page: Vec::from(&b"<!doctype html><title>verve</title><p>verve is starting</p>\n"[..])
                .into(),
        };
        Status {
            pages: Pages::new(workers, bodies),
            info: OnceLock::new(),
            board: Mutex::new(Board::default()),
            started: Instant::now(),
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
    pub fn configure(&self, metrics: &Metrics, info: Info) {
        if info.instance.is_some() {
            self.redis.store(RedisLink::Connecting as u8, Relaxed);
        }
        let _ = self.info.set(info);
        let mut board = self.board();
        self.render(&mut board, metrics);
    }

    /// A window's count, reported by this instance (its count line) or by the cluster (its
    /// leader's `done` mark). Windows not aligned to the interval (a state file of another
    /// `--interval` reported late) are left out of the history.
    pub fn record(&self, metrics: &Metrics, window_start: u64, unique_count: u64) {
        let interval = self.info().interval_secs.max(1);
        if !window_start.is_multiple_of(interval) || window_start >= END_OF_RFC3339_SECS {
            return;
        }
        let mut board = self.board();
        let r = Reported {
            window_start,
            unique_count,
        };
        if insert(&mut board.history, r) {
            self.render(&mut board, metrics);
        }
    }

    /// The history a state file held (see [`crate::state`]).
    pub fn restore(&self, metrics: &Metrics, history: &[Reported]) {
        let interval = self.info().interval_secs.max(1);
        let mut board = self.board();
        for r in history {
            if r.window_start.is_multiple_of(interval) && r.window_start < END_OF_RFC3339_SECS {
                insert(&mut board.history, *r);
            }
        }
        self.render(&mut board, metrics);
    }

    /// The history, newest first.
    pub fn history(&self) -> Vec<Reported> {
        self.board().history.iter().copied().collect()
    }

    /// Re-renders the page: the collector calls this about once a second, with the start of
    /// the window open now.
    pub fn refresh(&self, metrics: &Metrics, open_window_start: u64) {
        let mut board = self.board();
        board.open_start = Some(open_window_start);
        let now = Instant::now();
        let total = metrics.snapshot().requests.total();
        match board.rate_sample {
            Some((at, before)) if now.duration_since(at) < MIN_RATE_SPAN && total >= before => {}
            Some((at, before)) => {
                let secs = now.duration_since(at).as_secs_f64();
                board.per_second = total.saturating_sub(before) as f64 / secs.max(1e-3);
                board.rate_sample = Some((now, total));
            }
            None => board.rate_sample = Some((now, total)),
        }
        self.render(&mut board, metrics);
    }

    /// Cluster mode: the cluster thread's connection to Redis works (`true`) or was lost.
    pub fn redis_link(&self, up: bool, now_ms: u64) {
        let state = if up { RedisLink::Up } else { RedisLink::Down } as u8;
        if self.redis.swap(state, Relaxed) != state {
            self.redis_since_ms.store(now_ms, Relaxed);
        }
    }

    /// Renders both bodies from `board` and the counters, and publishes them.
    fn render(&self, board: &mut Board, metrics: &Metrics) {
        let now = Instant::now();
        let counts = metrics.snapshot();
        board.redis_errors.see(counts.redis_errors, now);
        board.kafka_errors.see(counts.kafka_errors, now);
        board.memory_refused.see(counts.id_memory.refused, now);
        let view = View::of(self, board, counts, now);
        let bodies = Bodies {
            windows: render_windows(&board.history).into(),
            page: render_page(&view).into_bytes().into(),
        };
        self.pages.publish(&bodies);
    }
}

/// The `/api/verve/windows` body: `{"windows":[{"window_start":"...","unique_count":N},...]}`,
/// newest first. Window starts are verve's own RFC 3339 (digits, `-`, `:`, `T`, `Z`): nothing
/// to escape.
fn render_windows(history: &VecDeque<Reported>) -> Vec<u8> {
    let mut out = String::with_capacity(16 + history.len() * 64);
    out.push_str("{\"windows\":[");
    for (i, r) in history.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(
            out,
            "{{\"window_start\":\"{}\",\"unique_count\":{}}}",
            rfc3339_secs(r.window_start),
            r.unique_count
        );
    }
    out.push_str("]}\n");
    out.into_bytes()
}

/// Everything the page shows, read once per render.
struct View<'a> {
    info: &'a Info,
    now_ms: u64,
    uptime: Duration,
    history: &'a VecDeque<Reported>,
    open_start: u64,
    per_second: f64,
    /// The counters, as `/metrics` shows them.
    counts: Snapshot,
    redis: RedisLink,
    redis_since_ms: u64,
    redis_error_ago: Option<Duration>,
    kafka_error_ago: Option<Duration>,
    memory_refused_ago: Option<Duration>,
}

impl<'a> View<'a> {
    fn of(status: &'a Status, board: &'a Board, counts: Snapshot, now: Instant) -> View<'a> {
        let info = status.info();
        let interval = info.interval_secs.max(1);
        let now_ms = SystemClock.now_ms();
        // The open window: the collector's at its last refresh, never one already reported.
        let newest_next = board
            .history
            .front()
            .map(|r| r.window_start.saturating_add(interval));
        let clock_window = now_ms / 1000 / interval * interval;
        let open_start = board
            .open_start
            .unwrap_or(clock_window)
            .max(newest_next.unwrap_or(0));
        View {
            info,
            now_ms,
            uptime: now.saturating_duration_since(status.started),
            history: &board.history,
            open_start,
            per_second: board.per_second,
            counts,
            redis: RedisLink::from_u8(status.redis.load(Relaxed)),
            redis_since_ms: status.redis_since_ms.load(Relaxed),
            redis_error_ago: board.redis_errors.within(RECENT, now),
            kafka_error_ago: board.kafka_errors.within(RECENT, now),
            memory_refused_ago: board.memory_refused.within(RECENT, now),
        }
    }
}

/// `s` safe as HTML text or a quoted attribute value.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// `1234567` as `1,234,567`.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// An axis label: `950`, `1.5k`, `12k`, `3.2M`, `7G`.
fn compact(n: u64) -> String {
    const UNITS: [(u64, &str); 5] = [
        (1_000_000_000_000_000, "P"),
        (1_000_000_000_000, "T"),
        (1_000_000_000, "G"),
        (1_000_000, "M"),
        (1_000, "k"),
    ];
    for (unit, suffix) in UNITS {
        if n >= unit {
            let whole = n / unit;
            let tenth = n % unit / (unit / 10);
            return if whole < 10 && tenth > 0 {
                format!("{whole}.{tenth}{suffix}")
            } else {
                format!("{whole}{suffix}")
            };
        }
    }
    n.to_string()
}

/// `3 d 4 h`, `2 h 5 min`, `4 min 10 s`, `12 s`.
fn span(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min {} s", s / 60, s % 60),
        3600..=86_399 => format!("{} h {} min", s / 3600, s / 60 % 60),
        _ => format!("{} d {} h", s / 86_400, s / 3600 % 24),
    }
}

/// Bytes as `512 KiB`, `1.5 GiB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 || value >= 100.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A window start as the page shows it: `HH:MM` (or `HH:MM:SS` for windows shorter than a
/// minute or not whole minutes, `YYYY-MM-DD` for day-long ones), UTC.
fn clock_label(secs: u64, interval: u64) -> String {
    let full = rfc3339_secs(secs);
    let part = if interval.is_multiple_of(86_400) {
        full.get(0..10)
    } else if interval.is_multiple_of(60) {
        full.get(11..16)
    } else {
        full.get(11..19)
    };
    part.unwrap_or(&full).to_owned()
}

/// `2026-11-21 23:50:00 UTC`.
fn long_time(secs: u64) -> String {
    let full = rfc3339_secs(secs);
    match (full.get(0..10), full.get(11..19)) {
        (Some(date), Some(time)) => format!("{date} {time} UTC"),
        _ => full,
    }
}

/// The smallest 1, 2 or 5 times a power of ten that is at least `x`.
fn nice_step(x: u64) -> u64 {
    let mut power = 1u64;
    loop {
        for m in [1, 2, 5] {
            let step = power.saturating_mul(m);
            if step >= x || step == u64::MAX {
                return step.max(1);
            }
        }
        power = power.saturating_mul(10);
    }
}

const STYLE: &str = "\
:root{--fg:#1d2733;--muted:#5f6b7a;--line:#e3e7ec;--bg:#f5f7fa;--card:#fff;--bar:#2f6fde;\
--bar-hover:#1b4fae;--open:#a9c4f5;--ok:#1f8f4e;--warn:#b7700b;--bad:#c93434}\
*{box-sizing:border-box}\
body{margin:0;background:var(--bg);color:var(--fg);\
font:14px/1.45 system-ui,-apple-system,\"Segoe UI\",Roboto,\"DejaVu Sans\",sans-serif}\
main{max-width:1080px;margin:0 auto;padding:20px 24px 28px}\
header{display:flex;flex-wrap:wrap;align-items:center;gap:6px 14px;margin-bottom:16px}\
h1{font-size:22px;margin:0;letter-spacing:-.01em}\
.sub{color:var(--muted)}\
.meta{margin-left:auto;color:var(--muted);font-size:13px}\
.pill{display:inline-block;padding:2px 10px;border-radius:999px;font-size:12px;\
font-weight:600;color:#fff;background:var(--ok)}\
.pill.warn{background:var(--warn)}.pill.bad{background:var(--bad)}\
.cards{display:grid;grid-template-columns:repeat(4,minmax(0,1fr));gap:12px;margin-bottom:12px}\
.card,.panel{background:var(--card);border:1px solid var(--line);border-radius:8px;\
padding:12px 16px}\
.label{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.05em}\
.value{font-size:26px;font-weight:650;font-variant-numeric:tabular-nums;margin:2px 0}\
.note{color:var(--muted);font-size:12px}\
.panel h2{font-size:15px;margin:0 0 6px}\
.legend{color:var(--muted);font-size:12px;font-weight:400;margin-left:12px}\
.sw{display:inline-block;width:10px;height:10px;margin:0 4px 0 10px;vertical-align:-1px}\
svg{display:block;width:100%;height:auto}\
svg text{font-size:11px;fill:var(--muted)}\
svg .grid{stroke:var(--line)}svg .axis{stroke:#9aa5b1}\
rect.win{fill:var(--bar)}rect.win:hover{fill:var(--bar-hover)}\
rect.open{fill:var(--open);stroke:var(--bar);stroke-dasharray:3 2}\
.empty{fill:var(--muted);font-size:14px}\
.panels{display:grid;grid-template-columns:repeat(3,minmax(0,1fr));gap:12px;margin-top:12px}\
table{width:100%;border-collapse:collapse;font-variant-numeric:tabular-nums}\
td{padding:3px 0;border-bottom:1px solid var(--line)}\
td.n{text-align:right;white-space:nowrap;padding-left:12px}\
tr:last-child td{border-bottom:0}\
.ok{color:var(--ok);font-weight:600}.warn{color:var(--warn);font-weight:600}\
.bad{color:var(--bad);font-weight:600}\
footer{margin-top:14px;color:var(--muted);font-size:12px}\
a{color:var(--bar)}\
@media (max-width:820px){.cards,.panels{grid-template-columns:repeat(2,minmax(0,1fr))}}";

/// Reloads `main` every few seconds while the page is visible (the server renders it at most
/// once a second), and counts the reloads in `data-refreshed` on the body; no framework,
/// nothing from elsewhere.
const SCRIPT: &str = "setInterval(function(){if(document.hidden)return;\
fetch(location.pathname,{cache:'no-store'}).then(function(r){return r.ok?r.text():null})\
.then(function(t){if(!t)return;var m=new DOMParser().parseFromString(t,'text/html')\
.querySelector('main');if(!m)return;document.querySelector('main').replaceWith(m);\
var d=document.body.dataset;d.refreshed=(+d.refreshed||0)+1})\
.catch(function(){})},";

/// The status page.
fn render_page(v: &View<'_>) -> String {
    let interval = v.info.interval_secs.max(1);
    let mut out = String::with_capacity(24 * 1024);
    let mode = match &v.info.instance {
        Some(name) => format!("cluster instance <b>{}</b>", escape_html(name)),
        None => "single instance".to_owned(),
    };
    let (pill_class, pill) = health(v);
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <link rel=\"icon\" href=\"data:,\"><title>verve status</title>\
         <style>{STYLE}</style></head><body><main>\
         <header><h1>verve</h1><span class=\"{pill_class}\" id=\"health\">{pill}</span>\
         <span class=\"sub\">distinct ids per {interval} s window &middot; {mode}</span>\
         <span class=\"meta\">version {version} &middot; up <span id=\"uptime\">{uptime}</span> \
         &middot; as of {now}</span></header>",
        pill = escape_html(&pill),
        version = env!("CARGO_PKG_VERSION"),
        uptime = span(v.uptime),
        now = long_time(v.now_ms / 1000),
    );
    // The cards.
    let newest = v.history.front();
    let rate = if v.per_second < 10.0 {
        format!("{:.1}", v.per_second)
    } else {
        grouped(v.per_second.round() as u64)
    };
    out.push_str("<section class=\"cards\">");
    card(
        &mut out,
        "Open window",
        "open-count",
        &grouped(v.counts.window_unique_ids),
        &format!(
            "distinct ids so far in the window of {} UTC",
            clock_label(v.open_start, 1)
        ),
    );
    match newest {
        Some(r) => card(
            &mut out,
            "Last window",
            "last-count",
            &grouped(r.unique_count),
            &format!(
                "distinct ids{}, window of <span id=\"last-start\" data-start=\"{}\">{} \
                 UTC</span>",
                if v.info.instance.is_some() {
                    " in the cluster"
                } else {
                    ""
                },
                rfc3339_secs(r.window_start),
                clock_label(r.window_start, interval),
            ),
        ),
        None => card(
            &mut out,
            "Last window",
            "last-count",
            "&ndash;",
            "no window reported yet",
        ),
    }
    card(
        &mut out,
        "Requests per second",
        "rps",
        &rate,
        "accept API, all answers, last second",
    );
    card(
        &mut out,
        "Windows reported",
        "windows-reported",
        &grouped(v.counts.windows_reported),
        if v.info.instance.is_some() {
            "count lines this instance wrote (as leader)"
        } else {
            "count lines written since start"
        },
    );
    out.push_str("</section>");
    chart(&mut out, v);
    out.push_str("<section class=\"panels\">");
    let requests = &v.counts.requests;
    panel(
        &mut out,
        "Accept API",
        "requests",
        &[
            ("ok", grouped(requests.ok)),
            ("bad request (400, 404, 405)", grouped(requests.bad_request)),
            ("unavailable (503)", grouped(requests.unavailable)),
            ("error (500)", grouped(requests.error)),
            (
                "late (counted in the next window)",
                grouped(v.counts.late_ids),
            ),
        ],
    );
    let calls = &v.counts.endpoint_calls;
    panel(
        &mut out,
        "Endpoint calls",
        "endpoints",
        &[
            ("success (2xx)", grouped(calls.success)),
            ("HTTP error", grouped(calls.http_error)),
            ("failed (no answer)", grouped(calls.failed)),
            ("denied (internal address)", grouped(calls.denied)),
            ("dropped", grouped(calls.dropped)),
            ("refused (from Redis)", grouped(calls.refused)),
        ],
    );
    let recent: Vec<(String, String)> = v
        .history
        .iter()
        .take(RECENT_ROWS)
        .map(|r| (long_time(r.window_start), grouped(r.unique_count)))
        .collect();
    out.push_str("<div class=\"panel\" id=\"recent\"><h2>Recent windows</h2><table>");
    if recent.is_empty() {
        out.push_str("<tr><td>none reported yet</td></tr>");
    }
    for (start, count) in &recent {
        let _ = write!(out, "<tr><td>{start}</td><td class=\"n\">{count}</td></tr>");
    }
    out.push_str("</table></div>");
    redis_panel(&mut out, v);
    kafka_panel(&mut out, v);
    let memory = &v.counts.id_memory;
    let limit = match memory.limit {
        None => "no limit".to_owned(),
        Some(limit) => bytes(limit),
    };
    panel(
        &mut out,
        "Memory and backlog",
        "resources",
        &[
            ("id memory", format!("{} of {limit}", bytes(memory.used))),
            (
                "ids refused (memory)",
                match v.memory_refused_ago {
                    Some(_) => format!("<span class=\"bad\">{}</span>", grouped(memory.refused)),
                    None => grouped(memory.refused),
                },
            ),
            (
                "reports in progress (windows)",
                grouped(v.counts.backlog_windows),
            ),
            ("--max-connections", grouped(v.counts.max_connections)),
            ("accept errors", grouped(v.counts.accept_errors)),
            ("log lines lost", grouped(v.counts.log_write_errors)),
        ],
    );
    out.push_str("</section>");
    let _ = write!(
        out,
        "<footer>Counts as JSON: <a href=\"/api/verve/windows\">/api/verve/windows</a> \
         &middot; Prometheus: <a href=\"/metrics\">/metrics</a> &middot; \
         <a href=\"/healthz\">/healthz</a> &middot; {} &middot; this page refreshes every \
         {}&nbsp;s</footer></main><script>{SCRIPT}{})</script></body></html>",
        if v.info.state_file {
            "the open window and the history survive a restart (--state-file)"
        } else {
            "the history starts afresh at a restart (no --state-file)"
        },
        PAGE_REFRESH.as_secs(),
        PAGE_REFRESH.as_millis(),
    );
    out.push('\n');
    out
}

/// The pill in the header: what needs a look, if anything.
fn health(v: &View<'_>) -> (&'static str, String) {
    let mut bad = Vec::new();
    let mut warn = Vec::new();
    if v.redis == RedisLink::Down {
        bad.push("Redis unavailable");
    }
    if v.memory_refused_ago.is_some() {
        bad.push("ids refused for memory");
    }
    if v.kafka_error_ago.is_some() {
        warn.push("Kafka errors");
    }
    if v.redis != RedisLink::Down && v.redis_error_ago.is_some() {
        warn.push("Redis errors");
    }
    let interval = v.info.interval_secs.max(1);
    // The count of the window before the open one is due a moment after it closed; two
    // intervals and the cluster grace are more than enough.
    let due = v.open_start.saturating_sub(interval);
    let stale = match v.history.front() {
        Some(r) => r.window_start < due.saturating_sub(interval),
        None => v.uptime.as_secs() > 2 * interval + 10,
    };
    if stale && v.uptime.as_secs() > 2 * interval + 10 {
        warn.push("windows not reported");
    }
    match (bad.is_empty(), warn.is_empty()) {
        (true, true) => ("pill", "OK".to_owned()),
        (false, _) => ("pill bad", [bad, warn].concat().join(", ")),
        (true, false) => ("pill warn", warn.join(", ")),
    }
}

/// One card: a label, a big number (`id`), a note (HTML).
fn card(out: &mut String, label: &str, id: &str, value: &str, note: &str) {
    let _ = write!(
        out,
        "<div class=\"card\"><div class=\"label\">{label}</div>\
         <div class=\"value\" id=\"{id}\">{value}</div><div class=\"note\">{note}</div></div>"
    );
}

/// A panel of name/value rows (values are HTML).
fn panel(out: &mut String, title: &str, id: &str, rows: &[(&str, String)]) {
    let _ = write!(
        out,
        "<div class=\"panel\" id=\"{id}\"><h2>{title}</h2><table>"
    );
    for (name, value) in rows {
        let _ = write!(out, "<tr><td>{name}</td><td class=\"n\">{value}</td></tr>");
    }
    out.push_str("</table></div>");
}

fn redis_panel(out: &mut String, v: &View<'_>) {
    let since = |what: &str, class: &str| {
        let ago = Duration::from_millis(v.now_ms.saturating_sub(v.redis_since_ms));
        format!("<span class=\"{class}\">{what}</span> for {}", span(ago))
    };
    let state = match v.redis {
        RedisLink::Unused => "not used".to_owned(),
        RedisLink::Connecting => "<span class=\"warn\">connecting</span>".to_owned(),
        RedisLink::Up => since("connected", "ok"),
        RedisLink::Down => since("unavailable", "bad"),
    };
    let errors = match v.redis_error_ago {
        Some(ago) => format!(
            "<span class=\"warn\">{}</span> (last {} ago)",
            grouped(v.counts.redis_errors),
            span(ago)
        ),
        None => grouped(v.counts.redis_errors),
    };
    panel(
        out,
        "Redis (cluster mode)",
        "redis",
        &[
            ("state", state),
            ("errors", errors),
            ("shipments", grouped(v.counts.cluster_shipments)),
            (
                "windows reported alone",
                grouped(v.counts.cluster_local_windows),
            ),
            (
                "windows shipped too late",
                grouped(v.counts.cluster_late_windows),
            ),
        ],
    );
}

fn kafka_panel(out: &mut String, v: &View<'_>) {
    let state = match &v.info.kafka_topic {
        None => "not used".to_owned(),
        Some(topic) if v.kafka_error_ago.is_some() => format!(
            "<span class=\"warn\">errors</span>, topic {}",
            escape_html(topic)
        ),
        Some(topic) => format!("<span class=\"ok\">on</span>, topic {}", escape_html(topic)),
    };
    let errors = match v.kafka_error_ago {
        Some(ago) => format!(
            "<span class=\"warn\">{}</span> (last {} ago)",
            grouped(v.counts.kafka_errors),
            span(ago)
        ),
        None => grouped(v.counts.kafka_errors),
    };
    let lost = if v.counts.kafka_records.lost > 0 {
        format!(
            "<span class=\"bad\">{}</span>",
            grouped(v.counts.kafka_records.lost)
        )
    } else {
        "0".to_owned()
    };
    panel(
        out,
        "Kafka",
        "kafka",
        &[
            ("state", state),
            (
                "records delivered",
                grouped(v.counts.kafka_records.delivered),
            ),
            ("records lost", lost),
            ("errors", errors),
        ],
    );
}

/// Chart geometry, in SVG user units.
const CHART_W: f64 = 1000.0;
const CHART_H: f64 = 280.0;
const PAD_LEFT: f64 = 56.0;
const PAD_RIGHT: f64 = 34.0;
const PAD_TOP: f64 = 14.0;
const PAD_BOTTOM: f64 = 40.0;

/// The bar chart: one bar per reported window of the last [`CHART_WINDOWS`] intervals,
/// placed by its start (a window missing from the history is a gap), and the open window's
/// count so far at the right.
fn chart(out: &mut String, v: &View<'_>) {
    let interval = v.info.interval_secs.max(1);
    let first = v
        .open_start
        .saturating_sub(CHART_WINDOWS.saturating_mul(interval));
    let shown: Vec<&Reported> = v
        .history
        .iter()
        .filter(|r| r.window_start >= first && r.window_start < v.open_start)
        .collect();
    let max = shown
        .iter()
        .map(|r| r.unique_count)
        .chain([v.counts.window_unique_ids])
        .max()
        .unwrap_or(0);
    let step = nice_step(max.div_ceil(4).max(1));
    let top = max.div_ceil(step).max(1).saturating_mul(step);
    let plot_w = CHART_W - PAD_LEFT - PAD_RIGHT;
    let plot_h = CHART_H - PAD_TOP - PAD_BOTTOM;
    let base = PAD_TOP + plot_h;
    let slots = (CHART_WINDOWS + 1) as f64;
    let slot_w = plot_w / slots;
    let bar_w = (slot_w * 0.72).max(1.0);
    let height = |count: u64| (count as f64 / top as f64 * plot_h).min(plot_h);
    let x_of = |start: u64| {
        let slot = (start.saturating_sub(first) / interval) as f64;
        PAD_LEFT + slot * slot_w + (slot_w - bar_w) / 2.0
    };
    let _ = write!(
        out,
        "<section class=\"panel\"><h2>Distinct ids per window \
         <span class=\"legend\"><span class=\"sw\" style=\"background:var(--bar)\"></span>\
         reported<span class=\"sw\" style=\"background:var(--open)\"></span>open, so far\
         </span></h2>\
         <svg id=\"chart\" viewBox=\"0 0 {CHART_W} {CHART_H}\" role=\"img\" \
         aria-label=\"Distinct ids per window, last {CHART_WINDOWS} windows\" \
         data-windows=\"{}\" data-top=\"{top}\" data-plot-height=\"{plot_h}\">",
        shown.len()
    );
    // Horizontal grid lines and their labels.
    let mut tick = 0u64;
    loop {
        let y = base - height(tick);
        let class = if tick == 0 { "axis" } else { "grid" };
        let _ = write!(
            out,
            "<line class=\"{class}\" x1=\"{PAD_LEFT}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            CHART_W - PAD_RIGHT,
            PAD_LEFT - 6.0,
            y + 4.0,
            compact(tick)
        );
        if tick >= top {
            break;
        }
        tick = tick.saturating_add(step);
    }
    // Time labels every tenth slot, the last one at the open window.
    for slot in (0..=CHART_WINDOWS).step_by(10) {
        let start = first.saturating_add(slot * interval);
        let x = x_of(start) + bar_w / 2.0;
        let _ = write!(
            out,
            "<line class=\"axis\" x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{base:.1}\" y2=\"{:.1}\"/>\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            base + 4.0,
            base + 17.0,
            clock_label(start, interval)
        );
    }
    let _ = write!(
        out,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">window start (UTC), \
         {interval} s windows</text>",
        PAD_LEFT + plot_w / 2.0,
        CHART_H - 6.0
    );
    if shown.is_empty() {
        let _ = write!(
            out,
            "<text class=\"empty\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">\
             no window reported yet</text>",
            PAD_LEFT + plot_w / 2.0,
            PAD_TOP + plot_h / 2.0
        );
    }
    // One mark per window; a window of 0 ids is still a visible sliver on the axis.
    for r in &shown {
        let h = height(r.unique_count).max(2.0);
        let _ = write!(
            out,
            "<rect class=\"win\" x=\"{:.2}\" y=\"{:.2}\" width=\"{bar_w:.2}\" height=\"{h:.2}\" \
             data-start=\"{start}\" data-count=\"{count}\"><title>{label}: {grouped} distinct \
             ids</title></rect>",
            x_of(r.window_start),
            base - h,
            start = rfc3339_secs(r.window_start),
            count = r.unique_count,
            label = long_time(r.window_start),
            grouped = grouped(r.unique_count),
        );
    }
    let h = height(v.counts.window_unique_ids).max(2.0);
    let _ = write!(
        out,
        "<rect class=\"open\" x=\"{:.2}\" y=\"{:.2}\" width=\"{bar_w:.2}\" height=\"{h:.2}\" \
         data-start=\"{}\" data-count=\"{}\"><title>open window since {}: {} distinct ids so \
         far</title></rect></svg></section>",
        x_of(v.open_start),
        base - h,
        rfc3339_secs(v.open_start),
        v.counts.window_unique_ids,
        long_time(v.open_start),
        grouped(v.counts.window_unique_ids),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reported(window_start: u64, unique_count: u64) -> Reported {
        Reported {
            window_start,
            unique_count,
        }
    }

    fn body(pages: &Pages, windows: bool) -> String {
        let mut out = Vec::new();
        if windows {
            pages.windows(0, |b| out.extend_from_slice(b));
        } else {
            pages.page(0, |b| out.extend_from_slice(b));
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_history_is_newest_first_one_entry_per_window_and_bounded() {
        let m = Metrics::new(2);
        m.status.configure(&m, Info::default());
        m.status.record(&m, 120, 5);
        m.status.record(&m, 60, 3);
        m.status.record(&m, 180, 7);
        // A repeat keeps the latest count; a window off the interval is left out.
        m.status.record(&m, 120, 6);
        m.status.record(&m, 150, 1);
        assert_eq!(
            m.status.history(),
            [reported(180, 7), reported(120, 6), reported(60, 3)]
        );
        assert_eq!(
            body(&m.status.pages, true),
            "{\"windows\":[{\"window_start\":\"1970-01-01T00:03:00Z\",\"unique_count\":7},\
             {\"window_start\":\"1970-01-01T00:02:00Z\",\"unique_count\":6},\
             {\"window_start\":\"1970-01-01T00:01:00Z\",\"unique_count\":3}]}\n"
        );
        for w in 0..(HISTORY_LEN as u64 + 10) {
            m.status.record(&m, 1_000_000 * 60 + w * 60, w);
        }
        let history = m.status.history();
        assert_eq!(history.len(), HISTORY_LEN);
        assert_eq!(history[0].unique_count, HISTORY_LEN as u64 + 9);
        assert!(history
            .windows(2)
            .all(|p| p[0].window_start > p[1].window_start));
        // Older than everything kept: not taken.
        m.status.record(&m, 0, 1);
        assert_eq!(m.status.history().len(), HISTORY_LEN);
        assert!(m.status.history().iter().all(|r| r.window_start > 0));
    }

    #[test]
    fn every_worker_slot_serves_the_latest_bodies() {
        let m = Metrics::new(3);
        assert_eq!(body(&m.status.pages, true), "{\"windows\":[]}\n");
        m.status.configure(&m, Info::default());
        m.status.record(&m, 60, 42);
        for shard in 0..7 {
            let mut out = Vec::new();
            m.status.pages.windows(shard, |b| out.extend_from_slice(b));
            assert!(String::from_utf8(out)
                .unwrap()
                .contains("\"unique_count\":42"));
        }
        m.status.restore(&m, &[reported(0, 1), reported(7, 9)]);
        assert_eq!(m.status.history(), [reported(60, 42), reported(0, 1)]);
    }

    #[test]
    fn the_page_shows_one_mark_per_window_and_the_counters() {
        let m = Metrics::new(1);
        m.status.configure(
            &m,
            Info {
                interval_secs: 10,
                instance: Some("<script>alert(1)</script>".into()),
                kafka_topic: Some("t\"'&".into()),
                state_file: true,
            },
        );
        m.windows_reported.store(3, Relaxed);
        m.window_unique_ids.store(4, Relaxed);
        m.status.record(&m, 1_000_000_000, 1234);
        m.status.record(&m, 1_000_000_010, 0);
        m.status.record(&m, 1_000_000_030, 99);
        m.status.refresh(&m, 1_000_000_040);
        let page = body(&m.status.pages, false);
        assert_eq!(page.matches("<rect class=\"win\"").count(), 3, "{page}");
        assert!(page.contains("data-windows=\"3\""));
        assert_eq!(page.matches("<rect class=\"open\"").count(), 1);
        assert!(page.contains("id=\"last-count\">99<"), "{page}");
        assert!(page.contains("id=\"windows-reported\">3<"));
        assert!(page.contains("id=\"open-count\">4<"));
        assert!(page.contains("data-count=\"1234\""));
        assert!(page.contains("1,234 distinct ids"));
        // Text from outside is escaped.
        assert!(!page.contains("<script>alert"), "{page}");
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(page.contains("topic t&quot;&#39;&amp;"));
        assert_eq!(page.matches("<script>").count(), 1);
    }

    #[test]
    fn an_empty_history_renders_a_chart_without_marks() {
        let m = Metrics::new(1);
        m.status.configure(&m, Info::default());
        m.status.refresh(&m, 600);
        let page = body(&m.status.pages, false);
        assert!(page.contains("no window reported yet"));
        assert_eq!(page.matches("<rect class=\"win\"").count(), 0);
        assert!(page.contains("id=\"last-count\">&ndash;<"));
    }

    #[test]
    fn extreme_values_do_not_panic() {
        let m = Metrics::new(1);
        m.status.configure(
            &m,
            Info {
                interval_secs: 1,
                ..Info::default()
            },
        );
        m.window_unique_ids.store(u64::MAX, Relaxed);
        m.status.record(&m, END_OF_RFC3339_SECS - 1, u64::MAX);
        m.status.record(&m, 0, 0);
        m.status.refresh(&m, 0);
        m.status.refresh(&m, u64::MAX);
        assert!(body(&m.status.pages, false).contains("</html>"));
    }

    #[test]
    fn number_formats() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1000), "1,000");
        assert_eq!(grouped(1234567), "1,234,567");
        assert_eq!(grouped(u64::MAX), "18,446,744,073,709,551,615");
        assert_eq!(compact(950), "950");
        assert_eq!(compact(1500), "1.5k");
        assert_eq!(compact(12_000), "12k");
        assert_eq!(compact(3_200_000), "3.2M");
        assert_eq!(nice_step(1), 1);
        assert_eq!(nice_step(3), 5);
        assert_eq!(nice_step(11), 20);
        assert_eq!(nice_step(u64::MAX), u64::MAX);
        assert_eq!(span(Duration::from_secs(3725)), "1 h 2 min");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(clock_label(90, 1), "00:01:30");
        assert_eq!(clock_label(120, 60), "00:02");
        assert_eq!(clock_label(86_400, 86_400), "1970-01-02");
        assert_eq!(
            escape_html("a<b>&\"'\n"),
            "a&lt;b&gt;&amp;&quot;&#39;\u{fffd}"
        );
    }
}
