//! The `request` target: a socket-free [`Conn`] fed the input in chunks.
//!
//! # Input layout
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
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use verve::clock::{ManualClock, Windows};
use verve::endpoints::EndpointPolicy;
use verve::health::Health;
use verve::http::conn::{Conn, MAX_HEAD};
use verve::http::drain::Drain;
use verve::http::idle::Idle;
use verve::http::{Admission, Ctx};
use verve::metrics::Metrics;
use verve::shards::Shards;
use verve::status::Status;

use super::model::{check_canonical, decimal, Policy};
use super::responses::{parse_response, Body, Connection, Page};
use super::{ALLOW, INTERVAL, NOW_MS};

/// `--idle-timeout` (unused by `Conn` itself).
const IDLE: Duration = Duration::from_secs(60);

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
    let metrics = Arc::new(Metrics::new(1));
    let clock = ManualClock::new(NOW_MS);
    Ctx {
        shards: Arc::new(Shards::new(1, policy, flags.max_endpoints())),
        metrics: metrics.clone(),
        status: Arc::new(Status::new(metrics, clock.clone())),
        clock,
        windows: Windows::new(INTERVAL),
        drain: {
            let drain = Drain::new(1);
            if flags.draining {
                drain.start();
            }
            drain
        },
        health: Health::new(),
        idle_timeout: IDLE,
        // No reaper thread is started: `Conn` never touches it (only `conn::serve` does).
        idle: Idle::new(1, IDLE),
        admission: Admission::new(usize::MAX),
    }
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
            // As the connection loop does: requests left after a heavy turn are answered
            // before the next read.
            loop {
                let keep_open = conn.answer(&ctx, 0, window, flags.draining);
                stats.batches += 1;
                check_batch(conn.output(), keep_open, flags, &ctx, &mut seen, &mut stats)
                    .map_err(|e| format!("batch {}: {e}", stats.batches))?;
                conn.sent();
                if !keep_open {
                    stats.closed = true;
                    break 'chunks;
                }
                if !conn.deferred() {
                    break;
                }
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
    let (ok, bad, unavailable) = (
        w.ok.load(Relaxed),
        w.bad_request.load(Relaxed),
        w.unavailable.load(Relaxed),
    );
    let api = ok + bad + unavailable;
    stats.accepted = ok;
    ensure!(
        !ctx.drain.any_in_flight() && ctx.admission.open() == 0,
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
    let policy = Policy::of(flags.allow_list);
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
