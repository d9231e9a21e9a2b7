//! The status page's HTML: what it shows ([`View`], read once per render) and how, in
//! named parts (header, cards, panels, footer) around the chart that [`super::chart`]
//! draws. Everything on the page that does not come from verve's own counters (the instance
//! name, the Kafka topic) is HTML-escaped.

use std::fmt::Write;
use std::time::Duration;

use super::history::History;
use crate::clock::rfc3339_secs;
use crate::metrics::Snapshot;

/// Rows of the page's table of recent windows.
const RECENT_ROWS: usize = 10;

/// How often the page reloads itself in the browser.
const PAGE_REFRESH: Duration = Duration::from_secs(5);

/// What the page says about the instance: set once at start-up.
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

impl Info {
    /// `--interval`, never 0.
    pub fn interval(&self) -> u64 {
        self.interval_secs.max(1)
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
    pub fn from_u8(v: u8) -> RedisLink {
        match v {
            1 => RedisLink::Connecting,
            2 => RedisLink::Up,
            3 => RedisLink::Down,
            _ => RedisLink::Unused,
        }
    }
}

/// Everything the page shows, read once per render.
pub struct View<'a> {
    pub info: &'a Info,
    /// The injected clock's time of the render.
    pub now_ms: u64,
    pub uptime: Duration,
    pub history: &'a History,
    /// Start of the open window, whole seconds since the epoch.
    pub open_start: u64,
    /// Accept API requests per second, all answers.
    pub per_second: f64,
    /// The counters, as `/metrics` shows them.
    pub counts: Snapshot,
    pub redis: RedisLink,
    /// When `redis` last changed, on the injected clock.
    pub redis_since_ms: u64,
    /// How long ago Redis errors, Kafka errors and ids refused for memory last grew, when
    /// that is recent enough to tell.
    pub redis_error_ago: Option<Duration>,
    pub kafka_error_ago: Option<Duration>,
    pub memory_refused_ago: Option<Duration>,
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

/// The status page; `chart` is the chart's section, drawn by [`super::chart`].
pub fn render_page(v: &View<'_>, chart: &str) -> String {
    let mut out = String::with_capacity(24 * 1024);
    header(&mut out, v);
    cards(&mut out, v);
    out.push_str(chart);
    out.push_str("<section class=\"panels\">");
    requests_panel(&mut out, v);
    endpoints_panel(&mut out, v);
    recent_panel(&mut out, v);
    redis_panel(&mut out, v);
    kafka_panel(&mut out, v);
    resources_panel(&mut out, v);
    out.push_str("</section>");
    footer(&mut out, v);
    out
}

/// The document's head and the page's header: health, mode, version, uptime, time.
fn header(out: &mut String, v: &View<'_>) {
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
        interval = v.info.interval(),
        pill = escape_html(&pill),
        version = env!("CARGO_PKG_VERSION"),
        uptime = span(v.uptime),
        now = long_time(v.now_ms / 1000),
    );
}

/// The four big numbers: the open window, the last window, requests per second, windows
/// reported.
fn cards(out: &mut String, v: &View<'_>) {
    let cluster = v.info.instance.is_some();
    out.push_str("<section class=\"cards\">");
    card(
        out,
        "Open window",
        "open-count",
        &grouped(v.counts.window_unique_ids),
        &format!(
            "distinct ids so far in the window of {} UTC",
            clock_label(v.open_start, 1)
        ),
    );
    match v.history.newest() {
        Some(r) => card(
            out,
            "Last window",
            "last-count",
            &grouped(r.unique_count),
            &format!(
                "distinct ids{}, window of <span id=\"last-start\" data-start=\"{}\">{} \
                 UTC</span>",
                if cluster { " in the cluster" } else { "" },
                rfc3339_secs(r.window_start),
                clock_label(r.window_start, v.info.interval()),
            ),
        ),
        None => card(
            out,
            "Last window",
            "last-count",
            "&ndash;",
            "no window reported yet",
        ),
    }
    let rate = if v.per_second < 10.0 {
        format!("{:.1}", v.per_second)
    } else {
        grouped(v.per_second.round() as u64)
    };
    card(
        out,
        "Requests per second",
        "rps",
        &rate,
        "accept API, all answers, last second",
    );
    card(
        out,
        "Windows reported",
        "windows-reported",
        &grouped(v.counts.windows_reported),
        if cluster {
            "count lines this instance wrote (as leader)"
        } else {
            "count lines written since start"
        },
    );
    out.push_str("</section>");
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
    if windows_overdue(v) {
        warn.push("windows not reported");
    }
    match (bad.is_empty(), warn.is_empty()) {
        (true, true) => ("pill", "OK".to_owned()),
        (false, _) => ("pill bad", [bad, warn].concat().join(", ")),
        (true, false) => ("pill warn", warn.join(", ")),
    }
}

/// Whether the newest window reported is older than it should be, once verve has run long
/// enough to have reported one.
fn windows_overdue(v: &View<'_>) -> bool {
    let interval = v.info.interval();
    // The count of the window before the open one is due a moment after it closed; two
    // intervals and the cluster grace are more than enough.
    let settled = v.uptime.as_secs() > 2 * interval + 10;
    let due = v.open_start.saturating_sub(interval);
    let stale = match v.history.newest() {
        Some(r) => r.window_start < due.saturating_sub(interval),
        None => settled,
    };
    stale && settled
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

fn requests_panel(out: &mut String, v: &View<'_>) {
    let requests = &v.counts.requests;
    panel(
        out,
        "Accept API",
        "requests",
        &[
            ("ok", grouped(requests.ok)),
            ("bad request (400, 404, 405)", grouped(requests.bad_request)),
            ("unavailable (503)", grouped(requests.unavailable)),
            (
                "late (counted in the next window)",
                grouped(v.counts.late_ids),
            ),
        ],
    );
}

fn endpoints_panel(out: &mut String, v: &View<'_>) {
    let calls = &v.counts.endpoint_calls;
    panel(
        out,
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
}

/// The last [`RECENT_ROWS`] windows reported.
fn recent_panel(out: &mut String, v: &View<'_>) {
    out.push_str("<div class=\"panel\" id=\"recent\"><h2>Recent windows</h2><table>");
    if v.history.is_empty() {
        out.push_str("<tr><td>none reported yet</td></tr>");
    }
    for r in v.history.iter().take(RECENT_ROWS) {
        let _ = write!(
            out,
            "<tr><td>{}</td><td class=\"n\">{}</td></tr>",
            long_time(r.window_start),
            grouped(r.unique_count)
        );
    }
    out.push_str("</table></div>");
}

/// An error count, marked with how long ago it last grew when that was recent.
fn recent_errors(count: u64, ago: Option<Duration>) -> String {
    match ago {
        Some(ago) => format!(
            "<span class=\"warn\">{}</span> (last {} ago)",
            grouped(count),
            span(ago)
        ),
        None => grouped(count),
    }
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
    panel(
        out,
        "Redis (cluster mode)",
        "redis",
        &[
            ("state", state),
            (
                "errors",
                recent_errors(v.counts.redis_errors, v.redis_error_ago),
            ),
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
    let records = &v.counts.kafka_records;
    let lost = if records.lost > 0 {
        format!("<span class=\"bad\">{}</span>", grouped(records.lost))
    } else {
        "0".to_owned()
    };
    panel(
        out,
        "Kafka",
        "kafka",
        &[
            ("state", state),
            ("records delivered", grouped(records.delivered)),
            ("records lost", lost),
            (
                "errors",
                recent_errors(v.counts.kafka_errors, v.kafka_error_ago),
            ),
        ],
    );
}

fn resources_panel(out: &mut String, v: &View<'_>) {
    let memory = &v.counts.id_memory;
    let limit = match memory.limit {
        None => "no limit".to_owned(),
        Some(limit) => bytes(limit),
    };
    let refused = match v.memory_refused_ago {
        Some(_) => format!("<span class=\"bad\">{}</span>", grouped(memory.refused)),
        None => grouped(memory.refused),
    };
    panel(
        out,
        "Memory and backlog",
        "resources",
        &[
            ("id memory", format!("{} of {limit}", bytes(memory.used))),
            ("ids refused (memory)", refused),
            (
                "reports in progress (windows)",
                grouped(v.counts.backlog_windows),
            ),
            ("--max-connections", grouped(v.counts.max_connections)),
            ("accept errors", grouped(v.counts.accept_errors)),
            ("log lines lost", grouped(v.counts.log_write_errors)),
        ],
    );
}

/// Links, what a restart keeps, and the script that reloads the page.
fn footer(out: &mut String, v: &View<'_>) {
    let _ = writeln!(
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
pub fn grouped(n: u64) -> String {
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
pub fn clock_label(secs: u64, interval: u64) -> String {
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
pub fn long_time(secs: u64) -> String {
    let full = rfc3339_secs(secs);
    match (full.get(0..10), full.get(11..19)) {
        (Some(date), Some(time)) => format!("{date} {time} UTC"),
        _ => full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_formats() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1000), "1,000");
        assert_eq!(grouped(1234567), "1,234,567");
        assert_eq!(grouped(u64::MAX), "18,446,744,073,709,551,615");
        assert_eq!(span(Duration::from_secs(3725)), "1 h 2 min");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(clock_label(90, 1), "00:01:30");
        assert_eq!(clock_label(120, 60), "00:02");
        assert_eq!(clock_label(86_400, 86_400), "1970-01-02");
        assert_eq!(long_time(1_795_305_000), "2026-11-21 23:50:00 UTC");
        assert_eq!(
            escape_html("a<b>&\"'\n"),
            "a&lt;b&gt;&amp;&quot;&#39;\u{fffd}"
        );
    }
}
