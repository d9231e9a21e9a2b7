//! The invariant checks behind the fuzz targets in `fuzz/fuzz_targets/`, kept in a plain
//! module that depends on nothing but `verve` and `std`, so that the main crate's
//! `tests/fuzz_regressions.rs` can include this very file (`#[path]`) and replay the seeds and
//! the kept crash inputs on the stable toolchain, without libFuzzer.
//!
//! Both entry points return `Err(description)` when an invariant is broken; a panic inside
//! verve itself propagates as a panic. The fuzz targets turn an `Err` into a panic (a crash
//! for libFuzzer); the regression test reports it with the file name.
//!
//! # `request` input layout
//!
//! ```text
//! byte 0       flags (see [`Flags`]); missing = 0
//! byte 1       n: how many chunk-size bytes follow (capped at what is there); missing = 0
//! n bytes      chunk sizes: 0 = the rest of the stream, 1..=127 = that many bytes,
//!              128..=255 = (b - 127) * 128 bytes (128 ..= 16 384)
//! the rest     the byte stream the client sends
//! ```
//!
//! The stream is cut into the chunks (the last one, and everything once the sizes run out,
//! is the rest of the stream), and each chunk is delivered like the real connection loop
//! (`conn::serve`) does: copied into `Conn::input()` at most `input().len()` bytes per read,
//! `received`, `answer`, check the batch's output, `sent`. Once `answer` returns false the
//! connection is over and the rest of the stream is ignored.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use verve::clock::{rfc3339_secs, ManualClock, Windows, END_OF_RFC3339_SECS};
use verve::endpoints::{canonicalize, EndpointPolicy};
use verve::health::Health;
use verve::http::conn::{Conn, MAX_HEAD};
use verve::http::idle::Idle;
use verve::http::{Admission, Ctx};
use verve::ids::{from_key, IdSet};
use verve::metrics::Metrics;
use verve::query::{decode_endpoint, parse_accept, parse_id, QueryError, MAX_ENDPOINT_BYTES};
use verve::shards::Shards;
use verve::state::{Limits, SavedWindow};

/// A fixed instant (2026-11-21T23:50:00Z): every read of a run lands in the same window.
const NOW_MS: u64 = 1_795_305_000_000;
/// Window length used by the harness, seconds.
const INTERVAL: u64 = 60;
/// `--idle-timeout` (unused by `Conn` itself).
const IDLE: Duration = Duration::from_secs(60);
/// The allow-list used when [`Flags::allow_list`] is set, and by the `query` target.
pub const ALLOW: [&str; 4] = ["hooks.example.com", "*.corp.test", "10.0.0.5", "[fe80::1]"];

/// What a run's first byte selects, so the fuzzer also reaches shutdown and the 503 paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flags {
    /// `answer(.., draining = true)`: every answer closes, `/healthz` is 503.
    pub draining: bool,
    /// The window was sealed before the run: every accepted request counts in the next one.
    pub late: bool,
    /// The shards were closed before the run (shutdown): every counted request is 503.
    pub closed: bool,
    /// `--endpoint-allow` is [`ALLOW`] instead of empty.
    pub allow_list: bool,
    /// `--max-endpoints` is 1 instead of 1000.
    pub one_endpoint: bool,
}

impl Flags {
    pub fn from_byte(b: u8) -> Flags {
        let shard_mode = (b >> 3) & 0x07;
        Flags {
            draining: b & 0x07 == 0x07,
            late: shard_mode == 6,
            closed: shard_mode == 7,
            allow_list: b & 0x40 != 0,
            one_endpoint: b & 0x80 != 0,
        }
    }

    fn max_endpoints(self) -> usize {
        if self.one_endpoint {
            1
        } else {
            1000
        }
    }
}

/// What one `request` run saw, for the regression test's messages and sanity checks.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RequestStats {
    /// `answer` calls made.
    pub batches: usize,
    /// Responses by status code, in order.
    pub statuses: Vec<u16>,
    /// Whether the connection was closed by `answer` returning false.
    pub closed: bool,
    /// The final `verve_requests_total{outcome="ok"}`.
    pub accepted: u64,
    /// Distinct ids counted in the window.
    pub unique: u64,
}

/// Splits a `request` input into flags, chunk sizes and the stream.
pub fn split_request_input(data: &[u8]) -> (Flags, Vec<usize>, &[u8]) {
    let flags = Flags::from_byte(data.first().copied().unwrap_or(0));
    let n = data.get(1).copied().unwrap_or(0) as usize;
    let sizes_end = (2 + n).min(data.len());
    let sizes = data.get(2..sizes_end).unwrap_or(&[]);
    let sizes = sizes
        .iter()
        .map(|&b| match b {
            0 => usize::MAX,
            1..=127 => b as usize,
            _ => (b as usize - 127) * 128,
        })
        .collect();
    (flags, sizes, data.get(sizes_end..).unwrap_or(&[]))
}

fn ctx(flags: Flags) -> Ctx {
    let policy = if flags.allow_list {
        EndpointPolicy::new(&ALLOW).expect("the harness allow-list is valid")
    } else {
        EndpointPolicy::default()
    };
    Ctx {
        shards: Arc::new(Shards::new(1, policy, flags.max_endpoints())),
        metrics: Arc::new(Metrics::new(1)),
        clock: ManualClock::new(NOW_MS),
        windows: Windows::new(INTERVAL),
        draining: AtomicBool::new(flags.draining),
        health: Health::new(),
        idle_timeout: IDLE,
        // No reaper thread is started: `Conn` never touches it (only `conn::serve` does).
        idle: Idle::new(1, IDLE),
        admission: Admission::new(usize::MAX),
    }
}

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

/// Feeds a `request` input to a [`Conn`] and checks every batch of answers and the counters.
pub fn check_request(data: &[u8]) -> Result<RequestStats, String> {
    verve::http::date::start();
    let (flags, sizes, stream) = split_request_input(data);
    let ctx = ctx(flags);
    let window = ctx.windows.index_of(NOW_MS);
    if flags.late {
        ctx.shards.seal(window);
    }
    if flags.closed {
        ctx.shards.close();
    }
    let mut conn = Conn::new();
    let mut stats = RequestStats::default();
    let mut seen = Seen::default();
    let mut rest = stream;
    let mut sizes = sizes.into_iter();
    'chunks: while !rest.is_empty() {
        let size = sizes.next().unwrap_or(usize::MAX).min(rest.len());
        let (mut chunk, after) = rest.split_at(size);
        rest = after;
        while !chunk.is_empty() {
            ensure!(conn.output().is_empty(), "output not empty before a read");
            let input = conn.input();
            // `input()` is documented never to be empty, and an unfinished head is shorter
            // than MAX_HEAD in a buffer twice that.
            ensure!(
                input.len() > MAX_HEAD,
                "input() has only {} bytes of room",
                input.len()
            );
            let n = chunk.len().min(input.len());
            input[..n].copy_from_slice(&chunk[..n]);
            conn.received(n);
            chunk = &chunk[n..];
            let keep_open = conn.answer(&ctx, 0, window, flags.draining);
            stats.batches += 1;
            check_batch(conn.output(), keep_open, flags, &ctx, &mut seen, &mut stats)
                .map_err(|e| format!("batch {}: {e}", stats.batches))?;
            conn.sent();
            if !keep_open {
                stats.closed = true;
                break 'chunks;
            }
        }
    }
    check_counters(&ctx, window, flags, stream, &seen, &mut stats)?;
    Ok(stats)
}

/// Running totals over the responses of a run.
#[derive(Debug, Default)]
struct Seen {
    responses: u64,
    /// 200 `ok` answers (accept and `/healthz`).
    ok_answers: u64,
    /// Answers without a body (HEAD).
    bodyless: u64,
    metrics_pages: u64,
    /// `verve_requests_total{outcome="ok"}` and the sum over outcomes on the last page.
    last_page: Option<(u64, u64)>,
}

/// One batch's output: a sequence of whole responses; the last one (and only it) says
/// `Connection: close` exactly when `answer` returned false.
fn check_batch(
    out: &[u8],
    keep_open: bool,
    flags: Flags,
    ctx: &Ctx,
    seen: &mut Seen,
    stats: &mut RequestStats,
) -> Result<(), String> {
    let mut pos = 0;
    let mut count = 0;
    let mut last_close = false;
    while pos < out.len() {
        ensure!(
            !last_close,
            "a response follows one that says Connection: close"
        );
        let (r, next) = parse_response(out, pos).map_err(|e| {
            format!(
                "response {count} at byte {pos}: {e}; output: {:?}",
                String::from_utf8_lossy(out)
            )
        })?;
        pos = next;
        count += 1;
        last_close = r.connection == Some(Connection::Close);
        stats.statuses.push(r.status);
        seen.responses += 1;
        match r.body {
            Body::Ok => seen.ok_answers += 1,
            Body::Failed => {}
            Body::None => seen.bodyless += 1,
            Body::Cached => {}
            Body::Metrics(page) => {
                seen.metrics_pages += 1;
                check_page(&page, seen)?;
                seen.last_page = Some((page.ok, page.api_total()));
            }
        }
        if matches!(r.status, 413 | 431) {
            ensure!(last_close, "a {} must close the connection", r.status);
        }
        ensure!(r.status != 500, "verve never answers 500");
        if flags.draining {
            ensure!(last_close, "while draining every answer closes");
        }
    }
    ensure!(
        keep_open != last_close,
        "answer returned {keep_open} but the last response says close = {last_close}"
    );
    if flags.draining {
        ensure!(count <= 1, "while draining a batch has at most one answer");
    }
    // Counters must already cover what was answered (they are bumped before the answer).
    let w = ctx.metrics.worker(0);
    ensure!(
        w.ok.load(Relaxed) <= seen.ok_answers,
        "verve_requests_total ok = {} but only {} ok answers",
        w.ok.load(Relaxed),
        seen.ok_answers
    );
    Ok(())
}

/// What a `/metrics` page must say inside this harness.
fn check_page(page: &Page, seen: &Seen) -> Result<(), String> {
    // The page is rendered after every earlier request was counted, and before the
    // response holding it was appended (`seen` already includes it).
    ensure!(
        page.ok <= seen.ok_answers,
        "page says {} ok requests, only {} ok answers before it",
        page.ok,
        seen.ok_answers
    );
    ensure!(
        page.api_total() < seen.responses,
        "page counts {} API requests, only {} answers before it",
        page.api_total(),
        seen.responses - 1
    );
    if let Some((ok, total)) = seen.last_page {
        ensure!(
            page.ok >= ok && page.api_total() >= total,
            "counters went down between two pages"
        );
    }
    // A 503 for a full endpoint table still counts the id.
    ensure!(
        page.unique <= page.ok + page.unavailable,
        "{} unique ids from {} ok and {} 503 requests",
        page.unique,
        page.ok,
        page.unavailable
    );
    ensure!(page.error == 0, "requests_total error is {}", page.error);
    ensure!(
        page.others_zero,
        "a counter no request can move is not 0: {page:?}"
    );
    Ok(())
}

/// End of a run: the counters, the sealed window and the endpoint table agree with the
/// answers and with the bytes the client sent.
fn check_counters(
    ctx: &Ctx,
    window: u64,
    flags: Flags,
    stream: &[u8],
    seen: &Seen,
    stats: &mut RequestStats,
) -> Result<(), String> {
    let w = ctx.metrics.worker(0);
    let (ok, bad, unavailable, error) = (
        w.ok.load(Relaxed),
        w.bad_request.load(Relaxed),
        w.unavailable.load(Relaxed),
        w.error.load(Relaxed),
    );
    let api = ok + bad + unavailable + error;
    stats.accepted = ok;
    ensure!(error == 0, "requests_total error = {error}");
    ensure!(
        w.busy.load(Relaxed) == 0 && ctx.admission.open() == 0,
        "Conn touched the connection counts"
    );
    // Every API request is answered once; its path is in the stream.
    let accept_paths = occurrences(stream, b"/api/verve/accept");
    ensure!(
        api <= seen.responses && api <= accept_paths,
        "{api} API requests counted, {} answers, {accept_paths} accept paths sent",
        seen.responses
    );
    // 200 `ok` answers are accepted ids plus healthy `/healthz`.
    ensure!(
        ok <= seen.ok_answers && seen.ok_answers - ok <= occurrences(stream, b"/healthz"),
        "{ok} accepted, {} ok answers",
        seen.ok_answers
    );
    ensure!(
        seen.metrics_pages <= occurrences(stream, b"/metrics"),
        "more metrics pages than /metrics sent"
    );
    ensure!(
        seen.bodyless <= occurrences(stream, b"HEAD "),
        "more bodyless answers than HEAD requests"
    );
    if flags.draining {
        ensure!(
            seen.responses <= 1,
            "draining: {} answers on one connection",
            seen.responses
        );
    }
    if flags.closed {
        ensure!(ok == 0, "{ok} ids counted after close");
    } else if !flags.one_endpoint && stream.len() < 40 * 1000 {
        // 1000 distinct endpoints cannot fit in the stream: no request can be refused 503.
        ensure!(unavailable == 0, "{unavailable} requests answered 503");
    }
    // The ids: at most one per accepted request (a 503 for a full endpoint table counts its
    // id too), each one an `id=` value that was sent.
    // A sealed window's requests count in the next one (the oldest window still open).
    let counted_in = if flags.late { window + 1 } else { window };
    let unique = ctx.shards.absorb(counted_in).map_or(0, |a| a.unique);
    stats.unique = unique;
    ensure!(
        unique <= ok + unavailable && (ok == 0 || unique > 0),
        "{unique} distinct ids from {ok} accepted and {unavailable} 503 requests"
    );
    if flags.closed {
        ensure!(unique == 0, "{unique} ids counted after close");
    }
    let sent_ids = ids_in(stream);
    let sealed = ctx.shards.seal(counted_in);
    if flags.late {
        // Every record reached the sealed window's check: the counted ones, and those
        // refused afterwards (a full table, an endpoint the policy refuses).
        ensure!(
            sealed.late >= ok && sealed.late <= api,
            "{} records moved past the sealed window, {ok} ok answers, {api} API requests",
            sealed.late
        );
    } else {
        ensure!(sealed.late == 0, "{} records moved", sealed.late);
    }
    let total = sealed.ids.len();
    for id in sealed.ids.iter() {
        ensure!(
            sent_ids.contains(&(id as i128)),
            "id {id} was counted but never sent"
        );
    }
    ensure!(total == unique, "sealed {total} ids, gauge said {unique}");
    // The endpoint table: bounded, canonical, allowed.
    ensure!(
        sealed.endpoints.len() <= flags.max_endpoints(),
        "{} endpoints kept, max {}",
        sealed.endpoints.len(),
        flags.max_endpoints()
    );
    let policy = Policy::from_flags(flags);
    for e in &sealed.endpoints {
        check_canonical(e, policy).map_err(|m| format!("endpoint {e:?}: {m}"))?;
    }
    Ok(())
}

/// Non-overlapping occurrences of `needle`.
fn occurrences(haystack: &[u8], needle: &[u8]) -> u64 {
    let mut n = 0;
    let mut i = 0;
    while i + needle.len() <= haystack.len() {
        if &haystack[i..i + needle.len()] == needle {
            n += 1;
            i += needle.len();
        } else {
            i += 1;
        }
    }
    n
}

/// Every value `v` of `?id=v` or `&id=v` in the stream (up to the first non-digit).
fn ids_in(stream: &[u8]) -> BTreeSet<i128> {
    let mut ids = BTreeSet::new();
    for i in 0..stream.len() {
        if !matches!(stream[i], b'?' | b'&') || !stream[i + 1..].starts_with(b"id=") {
            continue;
        }
        let v = &stream[i + 4..];
        let (neg, digits) = match v {
            [b'-', rest @ ..] => (true, rest),
            _ => (false, v),
        };
        let len = digits.iter().take_while(|b| b.is_ascii_digit()).count();
        if let Some(n) = decimal(&digits[..len]) {
            ids.insert(if neg { -n } else { n });
        }
    }
    ids
}

/// The value of ASCII digits, when at most 38 significant ones (fits an `i128`).
fn decimal(digits: &[u8]) -> Option<i128> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let significant = &digits[digits.iter().take_while(|&&d| d == b'0').count()..];
    if significant.len() > 38 {
        return None;
    }
    Some(
        significant
            .iter()
            .fold(0i128, |n, &d| n * 10 + (d - b'0') as i128),
    )
}

// ---------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Connection {
    Close,
    KeepAlive,
}

#[derive(Debug)]
enum Body {
    Ok,
    Failed,
    /// The answer to a HEAD request: headers only.
    None,
    Metrics(Page),
    /// `/api/verve/windows` or the status page: a body rendered off the request path.
    Cached,
}

#[derive(Debug)]
struct Response {
    status: u16,
    connection: Option<Connection>,
    body: Body,
}

/// Every status line verve writes (`response::Status::line`), with the header that goes
/// with it.
const STATUS_LINES: [(u16, &str); 8] = [
    (200, "HTTP/1.1 200 OK"),
    (400, "HTTP/1.1 400 Bad Request"),
    (404, "HTTP/1.1 404 Not Found"),
    (405, "HTTP/1.1 405 Method Not Allowed"),
    (413, "HTTP/1.1 413 Content Too Large"),
    (431, "HTTP/1.1 431 Request Header Fields Too Large"),
    (500, "HTTP/1.1 500 Internal Server Error"),
    (503, "HTTP/1.1 503 Service Unavailable"),
];

const TEXT: &str = "text/plain";
const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";
const JSON: &str = "application/json";
const HTML: &str = "text/html; charset=utf-8";

/// The headers verve writes after `Date` for a content type (`response::write_with`).
fn extra_headers(content_type: &str) -> Vec<String> {
    let extra: &[u8] = match content_type {
        JSON => verve::http::response::JSON_HEADERS,
        HTML => verve::http::response::PAGE_HEADERS,
        _ => b"",
    };
    String::from_utf8_lossy(extra)
        .split("\r\n")
        .filter(|h| !h.is_empty())
        .map(str::to_string)
        .collect()
}

/// Parses the response at `out[pos..]` strictly in the form verve writes it and returns it
/// with the position after it.
fn parse_response(out: &[u8], pos: usize) -> Result<(Response, usize), String> {
    let rest = &out[pos..];
    ensure!(
        rest.starts_with(b"HTTP/1.1 "),
        "does not start with HTTP/1.1"
    );
    let head_len = rest
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("head without an end")?;
    let head = std::str::from_utf8(&rest[..head_len]).map_err(|_| "head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or("");
    let status = STATUS_LINES
        .iter()
        .find(|(_, l)| *l == line)
        .map(|(code, _)| *code)
        .ok_or_else(|| format!("unknown status line {line:?}"))?;
    let mut next = || lines.next().unwrap_or("");
    let mut header = next();
    if status == 405 {
        ensure!(header == "Allow: GET", "405 without Allow: GET");
        header = next();
    }
    ensure!(header == "Server: verve", "expected Server, got {header:?}");
    let content_type = next()
        .strip_prefix("Content-Type: ")
        .ok_or("expected Content-Type")?
        .to_string();
    ensure!(
        [TEXT, PROMETHEUS, JSON, HTML].contains(&content_type.as_str()),
        "Content-Type {content_type:?}"
    );
    let length = next()
        .strip_prefix("Content-Length: ")
        .ok_or("expected Content-Length")?;
    ensure!(
        !length.is_empty()
            && length.bytes().all(|b| b.is_ascii_digit())
            && (length == "0" || !length.starts_with('0')),
        "Content-Length {length:?}"
    );
    let length: usize = length.parse().map_err(|_| "Content-Length overflows")?;
    let date = next().strip_prefix("Date: ").ok_or("expected Date")?;
    ensure!(
        date.len() == 29
            && date.ends_with(" GMT")
            && date.bytes().all(|b| b.is_ascii_graphic() || b == b' '),
        "Date {date:?}"
    );
    for expected in extra_headers(&content_type) {
        let header = next();
        ensure!(header == expected, "expected {expected:?}, got {header:?}");
    }
    let connection = match next() {
        "" => None,
        "Connection: close" => Some(Connection::Close),
        "Connection: keep-alive" => Some(Connection::KeepAlive),
        other => return Err(format!("unexpected header {other:?}")),
    };
    ensure!(lines.next().is_none(), "more headers than verve writes");
    let body_at = head_len + 4;
    let after = &rest[body_at..];
    let body_bytes = after.get(..length);
    let (body, used) = match (status, content_type.as_str()) {
        (200, TEXT) => {
            ensure!(body_bytes == Some(b"ok"), "200 text/plain without ok body");
            (Body::Ok, length)
        }
        (200, PROMETHEUS) => {
            let page = body_bytes.ok_or("metrics page shorter than Content-Length")?;
            (Body::Metrics(parse_page(page)?), length)
        }
        (200, JSON) => {
            let body = body_bytes.ok_or("windows shorter than Content-Length")?;
            ensure!(
                body.starts_with(b"{\"windows\":[") && body.ends_with(b"]}\n"),
                "windows body {:?}",
                String::from_utf8_lossy(body)
            );
            (Body::Cached, length)
        }
        (200, HTML) => {
            let body = body_bytes.ok_or("status page shorter than Content-Length")?;
            ensure!(
                body.starts_with(b"<!doctype html>"),
                "status page {:?}",
                String::from_utf8_lossy(body)
            );
            (Body::Cached, length)
        }
        (_, TEXT) => {
            ensure!(length == 6, "failed answer with Content-Length {length}");
            if body_bytes == Some(b"failed") {
                (Body::Failed, length)
            } else {
                // A HEAD answer: the headers of the GET answer, no body. Every HEAD answer
                // is a 404 or 405: only GET is routed anywhere.
                ensure!(
                    after.is_empty() || after.starts_with(b"HTTP/1.1 "),
                    "{status} body is neither failed nor absent"
                );
                ensure!(
                    matches!(status, 404 | 405),
                    "a bodyless {status} (HEAD is only ever 404 or 405)"
                );
                (Body::None, 0)
            }
        }
        _ => return Err(format!("{status} with Content-Type {content_type}")),
    };
    Ok((
        Response {
            status,
            connection,
            body,
        },
        pos + body_at + used,
    ))
}

/// What a `/metrics` page says.
#[derive(Debug, Default)]
struct Page {
    ok: u64,
    bad_request: u64,
    unavailable: u64,
    error: u64,
    unique: u64,
    /// Every other sample is 0: nothing in a socket-free `Conn` moves them.
    others_zero: bool,
}

impl Page {
    fn api_total(&self) -> u64 {
        self.ok + self.bad_request + self.unavailable + self.error
    }
}

/// The samples every page has, in order.
const SAMPLES: [&str; 30] = [
    "verve_requests_total{outcome=\"ok\"}",
    "verve_requests_total{outcome=\"bad_request\"}",
    "verve_requests_total{outcome=\"unavailable\"}",
    "verve_requests_total{outcome=\"error\"}",
    "verve_window_unique_ids",
    "verve_last_window_unique_ids",
    "verve_id_memory_bytes",
    "verve_id_memory_limit_bytes",
    "verve_memory_refused_ids_total",
    "verve_windows_reported_total",
    "verve_endpoint_calls_total{result=\"success\"}",
    "verve_endpoint_calls_total{result=\"http_error\"}",
    "verve_endpoint_calls_total{result=\"failed\"}",
    "verve_endpoint_calls_total{result=\"denied\"}",
    "verve_endpoint_calls_total{result=\"dropped\"}",
    "verve_endpoint_calls_total{result=\"refused\"}",
    "verve_redis_errors_total",
    "verve_kafka_errors_total",
    "verve_kafka_records_total{result=\"delivered\"}",
    "verve_kafka_records_total{result=\"lost\"}",
    "verve_backlog_windows",
    "verve_cluster_shipments_total",
    "verve_cluster_shipped_bytes_total",
    "verve_cluster_local_windows_total",
    "verve_cluster_late_windows_total",
    "verve_late_ids_total",
    "verve_open_connections",
    "verve_max_connections",
    "verve_accept_errors_total",
    "verve_log_write_errors_total",
];

/// Prometheus text format, as `Metrics::render` writes it: `# HELP`, `# TYPE`, samples.
fn parse_page(page: &[u8]) -> Result<Page, String> {
    let text = std::str::from_utf8(page).map_err(|_| "metrics page is not UTF-8")?;
    ensure!(
        text.ends_with('\n'),
        "metrics page does not end in a newline"
    );
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(help) = line.strip_prefix("# HELP ") {
            ensure!(help.starts_with("verve_"), "HELP line {line:?}");
        } else if let Some(kind) = line.strip_prefix("# TYPE ") {
            ensure!(
                kind.starts_with("verve_")
                    && (kind.ends_with(" counter") || kind.ends_with(" gauge")),
                "TYPE line {line:?}"
            );
        } else {
            let (name, value) = line
                .rsplit_once(' ')
                .ok_or_else(|| format!("sample line {line:?}"))?;
            let value: u64 = value
                .parse()
                .map_err(|_| format!("sample value in {line:?}"))?;
            samples.push((name.to_string(), value));
        }
    }
    let names: Vec<&str> = samples.iter().map(|(n, _)| n.as_str()).collect();
    ensure!(names == SAMPLES, "samples {names:?}");
    let v = |i: usize| samples[i].1;
    Ok(Page {
        ok: v(0),
        bad_request: v(1),
        unavailable: v(2),
        error: v(3),
        unique: v(4),
        // `verve_id_memory_bytes` (6) holds what the workers drew from the budget for the
        // ids they recorded: not zero once anything was counted.
        others_zero: (5..samples.len()).filter(|&i| i != 6).all(|i| v(i) == 0),
    })
}

// ---------------------------------------------------------------------------------------
// Query
// ---------------------------------------------------------------------------------------

/// Which endpoint policy an endpoint was checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// No `--endpoint-allow`: any host but internal address literals and loopback names.
    Default,
    /// `--endpoint-allow` = [`ALLOW`].
    AllowList,
}

impl Policy {
    fn from_flags(flags: Flags) -> Policy {
        if flags.allow_list {
            Policy::AllowList
        } else {
            Policy::Default
        }
    }

    fn build(self) -> EndpointPolicy {
        match self {
            Policy::Default => EndpointPolicy::default(),
            Policy::AllowList => EndpointPolicy::new(&ALLOW).expect("valid allow-list"),
        }
    }
}

/// Feeds arbitrary bytes to the query validator: `parse_accept` against an independent
/// model of the documented rules, `parse_id`, and every endpoint (the one `parse_accept`
/// returns, and the whole input) through `decode_endpoint` and `canonicalize` with both
/// policies.
pub fn check_query(data: &[u8]) -> Result<(), String> {
    let got = parse_accept(data);
    let want = model_parse_accept(data);
    ensure!(
        got.map(|a| (a.id, a.endpoint)) == want,
        "parse_accept = {got:?}, the documented rules say {want:?}"
    );
    if let Ok(accept) = got {
        // The id's decimal form is the raw value without a redundant sign and leading zeros.
        let raw = raw_value(data, b"id").ok_or("accepted without an id pair")?;
        ensure!(
            normalize_decimal(raw).as_deref() == Some(accept.id.to_string().as_bytes()),
            "id {} from {:?}",
            accept.id,
            String::from_utf8_lossy(raw)
        );
        if let Some(endpoint) = accept.endpoint {
            ensure!(
                is_subslice(data, endpoint),
                "the endpoint does not borrow from the query"
            );
            check_endpoint(endpoint)?;
        }
    }
    // `parse_id` on its own, on the whole input.
    let id = parse_id(data);
    let want = model_id(data);
    ensure!(id == want, "parse_id = {id:?}, expected {want:?}");
    // Any bytes as a raw endpoint.
    check_endpoint(data)
}

/// `decode_endpoint`, then `canonicalize` with both policies.
fn check_endpoint(raw: &[u8]) -> Result<(), String> {
    let mut scratch = b"left over from an earlier request".to_vec();
    let got = decode_endpoint(raw, &mut scratch).map(str::to_owned);
    let want = model_decode(raw);
    ensure!(
        got.as_ref().ok().map(String::as_bytes) == want.as_deref(),
        "decode_endpoint({:?}) = {got:?}, expected {:?}",
        String::from_utf8_lossy(raw),
        want.map(|w| String::from_utf8_lossy(&w).into_owned())
    );
    let Ok(decoded) = got else {
        return Ok(());
    };
    ensure!(
        decoded.len() <= MAX_ENDPOINT_BYTES,
        "decoded endpoint of {} bytes",
        decoded.len()
    );
    for policy in [Policy::Default, Policy::AllowList] {
        let built = policy.build();
        if let Ok(url) = canonicalize(&decoded, &built) {
            check_canonical(url.as_str(), policy)
                .map_err(|m| format!("{decoded:?} -> {:?}: {m}", url.as_str()))?;
            // The canonical form is a fixed point: it is what makes two endpoints the same.
            let again = canonicalize(url.as_str(), &built)
                .map_err(|e| format!("canonical {:?} refused: {e}", url.as_str()))?;
            ensure!(
                again.as_str() == url.as_str(),
                "canonical {:?} re-canonicalizes to {:?}",
                url.as_str(),
                again.as_str()
            );
        }
    }
    Ok(())
}

/// A canonical endpoint as the table keeps it: lower-case http(s) scheme, a host allowed by
/// the policy, no fragment, at most 2048 bytes, no count token, nothing a log line or a URL
/// could hide (spaces, controls).
fn check_canonical(url: &str, policy: Policy) -> Result<(), String> {
    ensure!(url.len() <= MAX_ENDPOINT_BYTES, "{} bytes long", url.len());
    ensure!(!url.contains("unique_count="), "contains the count token");
    ensure!(!url.contains('#'), "has a fragment");
    ensure!(
        url.bytes().all(|b| b.is_ascii_graphic()),
        "has a byte that is not visible ASCII"
    );
    let after_scheme = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or("scheme is not http or https")?;
    let authority = &after_scheme[..after_scheme.find(['/', '?']).unwrap_or(after_scheme.len())];
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if host_port.starts_with('[') {
        &host_port[..host_port.find(']').ok_or("unclosed [")? + 1]
    } else {
        host_port.split(':').next().unwrap_or("")
    };
    ensure!(!host.is_empty(), "no host");
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let ip: Option<IpAddr> = bare.parse().ok();
    let name = host.trim_end_matches('.');
    // IPv6 spellings of IPv4 addresses name the IPv4 address.
    let ip = ip.map(embedded_v4);
    let loopback_name = {
        let n = name.to_ascii_lowercase();
        n == "localhost" || n.ends_with(".localhost")
    };
    match policy {
        Policy::Default => {
            ensure!(
                !ip.is_some_and(internal),
                "internal address {host} allowed without an address entry"
            );
            ensure!(!loopback_name, "loopback name {host} allowed");
        }
        Policy::AllowList => {
            let listed = match ip {
                Some(ip) => {
                    ip == IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5))
                        || ip == IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1))
                }
                None => {
                    name == "hooks.example.com"
                        || (name.len() > ".corp.test".len() && name.ends_with(".corp.test"))
                }
            };
            ensure!(listed, "host {host} is not on the allow-list");
            ensure!(
                !loopback_name,
                "loopback name {host} allowed by a name entry"
            );
        }
    }
    Ok(())
}

/// The IPv4 address inside an IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`,
/// but not `::` or `::1`) or NAT64 (`64:ff9b::a.b.c.d`) address; any other address as it is.
fn embedded_v4(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(a) = ip else { return ip };
    let s = a.segments();
    let v4 = || {
        IpAddr::V4(Ipv4Addr::new(
            (s[6] >> 8) as u8,
            s[6] as u8,
            (s[7] >> 8) as u8,
            s[7] as u8,
        ))
    };
    match s[..6] {
        [0, 0, 0, 0, 0, 0xffff] | [0x64, 0xff9b, 0, 0, 0, 0] => v4(),
        [0, 0, 0, 0, 0, 0] if s[6] != 0 || s[7] > 1 => v4(),
        _ => ip,
    }
}

/// The ranges never called without an address entry, as a table of (first address, prefix
/// length): loopback, unspecified, private, shared, link-local, multicast, reserved and
/// broadcast; unique-local, site-local and IPv6 multicast.
fn internal(ip: IpAddr) -> bool {
    const V4: [([u8; 4], u32); 10] = [
        ([0, 0, 0, 0], 8),
        ([10, 0, 0, 0], 8),
        ([100, 64, 0, 0], 10),
        ([127, 0, 0, 0], 8),
        ([169, 254, 0, 0], 16),
        ([172, 16, 0, 0], 12),
        ([192, 168, 0, 0], 16),
        ([224, 0, 0, 0], 4),
        ([240, 0, 0, 0], 4),
        ([255, 255, 255, 255], 32),
    ];
    const V6: [(u128, u32); 6] = [
        (0, 128),
        (1, 128),
        (0xfe80 << 112, 10),
        (0xfec0 << 112, 10),
        (0xfc00 << 112, 7),
        (0xff00 << 112, 8),
    ];
    match ip {
        IpAddr::V4(a) => V4.iter().any(|(net, len)| {
            u32::from(a) >> (32 - len) == u32::from(Ipv4Addr::from(*net)) >> (32 - len)
        }),
        IpAddr::V6(a) => V6.iter().any(|(net, len)| {
            u128::from(a).checked_shr(128 - len).unwrap_or(0)
                == net.checked_shr(128 - len).unwrap_or(0)
        }),
    }
}

/// The contract's query rules, written independently of `parse_accept`: pairs split on `&`,
/// name and value on the first `=`, names matched exactly; a repeated `id` or `endpoint` is
/// refused as soon as it is seen (left to right); then `id` must be present, non-empty and
/// `-?[0-9]+` within `i64`; an `endpoint`, when given, must be non-empty and at most three
/// encoded bytes per allowed decoded byte.
fn model_parse_accept(q: &[u8]) -> Result<(i64, Option<&[u8]>), QueryError> {
    let pairs: Vec<(&[u8], &[u8])> = q
        .split(|&b| b == b'&')
        .map(|p| match p.iter().position(|&b| b == b'=') {
            Some(i) => (&p[..i], &p[i + 1..]),
            None => (p, &[][..]),
        })
        .collect();
    let second = |name: &[u8]| {
        pairs
            .iter()
            .enumerate()
            .filter(|(_, (n, _))| *n == name)
            .nth(1)
            .map(|(i, _)| i)
    };
    match (second(b"id"), second(b"endpoint")) {
        (Some(i), Some(e)) if e < i => return Err(QueryError::RepeatedEndpoint),
        (Some(_), _) => return Err(QueryError::RepeatedId),
        (None, Some(_)) => return Err(QueryError::RepeatedEndpoint),
        (None, None) => {}
    }
    let value = |name: &[u8]| pairs.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
    let id = match value(b"id") {
        None => return Err(QueryError::MissingId),
        Some([]) => return Err(QueryError::EmptyId),
        Some(raw) => model_id(raw).ok_or(QueryError::BadId)?,
    };
    let endpoint = value(b"endpoint");
    if endpoint.is_some_and(|e| e.is_empty() || e.len() > 3 * MAX_ENDPOINT_BYTES) {
        return Err(QueryError::BadEndpoint);
    }
    Ok((id, endpoint))
}

/// `-?[0-9]+` within `i64`, through `i128`.
fn model_id(raw: &[u8]) -> Option<i64> {
    let (neg, digits) = match raw {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, raw),
    };
    let n = decimal(digits)?;
    i64::try_from(if neg { -n } else { n }).ok()
}

/// The value of the first `name=` pair.
fn raw_value<'q>(q: &'q [u8], name: &[u8]) -> Option<&'q [u8]> {
    q.split(|&b| b == b'&').find_map(|p| {
        let (n, v) = match p.iter().position(|&b| b == b'=') {
            Some(i) => (&p[..i], &p[i + 1..]),
            None => (p, &[][..]),
        };
        (n == name).then_some(v)
    })
}

/// `-?0*D` becomes `D` with its sign (`0` for zero, no `-0`).
fn normalize_decimal(raw: &[u8]) -> Option<Vec<u8>> {
    let (neg, digits) = match raw {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, raw),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let significant = &digits[digits.iter().take_while(|&&d| d == b'0').count()..];
    if significant.is_empty() {
        return Some(b"0".to_vec());
    }
    let mut v = if neg { b"-".to_vec() } else { Vec::new() };
    v.extend_from_slice(significant);
    Some(v)
}

fn is_subslice(outer: &[u8], inner: &[u8]) -> bool {
    let (o, i) = (outer.as_ptr() as usize, inner.as_ptr() as usize);
    i >= o && i + inner.len() <= o + outer.len()
}

/// The documented endpoint rules, independently: every `%` starts two hex digits; decoded,
/// at most 2048 bytes, UTF-8, no byte <= space and no DEL, and an `http://` or `https://`
/// prefix in any case.
fn model_decode(raw: &[u8]) -> Option<Vec<u8>> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::new();
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' {
            let hi = hex(*raw.get(i + 1)?)?;
            let lo = hex(*raw.get(i + 2)?)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    let lower: Vec<u8> = out.iter().take(8).map(u8::to_ascii_lowercase).collect();
    let ok = out.len() <= MAX_ENDPOINT_BYTES
        && out.iter().all(|&b| b > b' ' && b != 0x7f)
        && (lower.starts_with(b"http://") || lower.starts_with(b"https://"))
        && std::str::from_utf8(&out).is_ok();
    ok.then_some(out)
}

// ---------------------------------------------------------------------------------------
// State file and id sets
// ---------------------------------------------------------------------------------------

/// Most ids a serialized set may claim per byte: a compact block header (13 bytes) may
/// stand for 4096 consecutive ids (gaps of width 0), 315 a byte; roaring's format is held
/// to 8 a byte. Anything more would be an expansion the decoders promise not to allow.
pub const MAX_IDS_PER_BYTE: u64 = 4096 / 13 + 1;

/// A `--state-file` from outside. The input is the file without its last four bytes: the
/// CRC-32 is appended here, so the fuzzer gets past the checksum to the fields behind it
/// (the input as it is, with whatever checksum it happens to end in, is decoded too).
/// Checked: no panic; what `SavedWindow::decode` accepts holds verve's own fields (interval
/// 1 to 86 400 s, an aligned window start before year 10000, endpoints of at most 2048
/// bytes, an id set no larger than [`MAX_IDS_PER_BYTE`] allows) and encodes back to bytes
/// that decode to the same window; `Limits::check` and the RFC 3339 form of its start
/// never panic.
pub fn check_state(data: &[u8]) -> Result<(), String> {
    let _ = SavedWindow::decode(data);
    let mut file = data.to_vec();
    file.extend_from_slice(&crc32(data).to_le_bytes());
    let Ok(window) = SavedWindow::decode(&file) else {
        return Ok(());
    };
    ensure!(
        (1..=86_400).contains(&window.interval_secs),
        "interval {}",
        window.interval_secs
    );
    ensure!(
        window.window_start % window.interval_secs == 0,
        "window start {} not aligned",
        window.window_start
    );
    ensure!(
        window.window_start < END_OF_RFC3339_SECS,
        "window start {} after year 9999",
        window.window_start
    );
    ensure!(
        window
            .endpoints
            .iter()
            .all(|e| e.len() <= MAX_ENDPOINT_BYTES),
        "an endpoint over {MAX_ENDPOINT_BYTES} bytes"
    );
    ensure!(
        window.ids.len() <= MAX_IDS_PER_BYTE * data.len() as u64,
        "{} ids from {} bytes",
        window.ids.len(),
        data.len()
    );
    let again = window.encode().map_err(|e| format!("encode: {e}"))?;
    let back = SavedWindow::decode(&again).map_err(|e| format!("re-decode: {e:#}"))?;
    ensure!(
        back == window,
        "the window changed through encode and decode"
    );
    let _ = rfc3339_secs(window.window_start);
    // The instance's checks, with a clock at the window's start and at the epoch.
    for now_ms in [window.window_start.saturating_mul(1000), 0] {
        let limits = Limits::new(1 << 20, 10, Windows::new(INTERVAL), now_ms);
        let _ = limits.check(&window);
    }
    Ok(())
}

/// A serialized id set from outside (a shipment read from Redis, the id set of a state
/// file), in the compact format or roaring's. Checked: no panic; what `IdSet::deserialize`
/// accepts claims at most [`MAX_IDS_PER_BYTE`] ids a byte, its keys ascend strictly and
/// number `len()`, and it serializes to bytes that read back as the same set.
pub fn check_idset(data: &[u8]) -> Result<(), String> {
    let Ok(set) = IdSet::deserialize(data) else {
        return Ok(());
    };
    ensure!(
        set.len() <= MAX_IDS_PER_BYTE * data.len() as u64,
        "{} ids from {} bytes",
        set.len(),
        data.len()
    );
    let mut count = 0u64;
    let mut previous: Option<u64> = None;
    for key in set.keys() {
        ensure!(
            previous.is_none_or(|p| p < key),
            "key {key} after {previous:?}"
        );
        previous = Some(key);
        count += 1;
    }
    ensure!(count == set.len(), "{count} keys, len() {}", set.len());
    if let Some(last) = previous {
        ensure!(
            set.contains(from_key(last)),
            "the last key is not contained"
        );
    }
    let mut bytes = Vec::new();
    set.serialize_into(&mut bytes);
    ensure!(
        bytes.len() == set.serialized_size(),
        "serialized {} bytes, serialized_size {}",
        bytes.len(),
        set.serialized_size()
    );
    let back = IdSet::deserialize(&bytes).map_err(|e| format!("re-decode: {e}"))?;
    ensure!(
        back == set,
        "the set changed through serialize and deserialize"
    );
    Ok(())
}

/// CRC-32 (IEEE), bitwise: the harness depends on `verve` and `std` only.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
