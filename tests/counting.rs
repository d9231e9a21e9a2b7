//! Counting against the real binary and the real clock: exact distinct counts under
//! concurrent keep-alive load, the whole `i64` range, and the count log's format and window
//! alignment (README, *API* and *The count log*).

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Barrier};

use common::{parse_rfc3339_ms, rfc3339_secs, window_now, Server};
use regex::Regex;

/// Client threads of the burst, each on its own keep-alive connection.
const THREADS: usize = 32;
/// Requests per thread.
const PER_THREAD: usize = 250;

/// The id thread `t` sends as its `j`-th request in attempt `attempt`: overlapping sets
/// across threads (and repeats within one), negatives included, fresh for every attempt.
fn burst_id(attempt: u32, t: usize, j: usize) -> i64 {
    let spread = ((t * 97 + j * 31) % 2000) as i64 - 1000;
    spread + attempt as i64 * 1_000_000 - 7_000_000
}

#[test]
fn concurrent_keep_alive_burst_is_counted_exactly() {
    let server = Server::start(3, &[]);
    let addr = server.addr;
    let (window, sent) = server.in_one_window(|attempt| {
        let start = Arc::new(Barrier::new(THREADS));
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let start = start.clone();
                std::thread::spawn(move || {
                    let mut client = common::Client::connect(addr);
                    start.wait();
                    let mut sent = Vec::with_capacity(PER_THREAD);
                    for j in 0..PER_THREAD {
                        let id = burst_id(attempt, t, j);
                        let r = client.get(&format!("/api/verve/accept?id={id}"));
                        assert_eq!((r.status, r.text()), (200, "ok".into()), "id={id}");
                        sent.push(id);
                    }
                    sent
                })
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|h| h.join().expect("client thread panicked"))
            .collect::<Vec<i64>>()
    });
    let distinct: HashSet<i64> = sent.iter().copied().collect();
    assert_eq!(sent.len(), THREADS * PER_THREAD);
    assert!(
        distinct.len() < sent.len(),
        "the burst must contain duplicates"
    );
    assert!(distinct.iter().any(|&id| id < 0), "negatives included");
    let line = server.wait_for_window(window);
    assert_eq!(
        line.unique_count,
        distinct.len() as u64,
        "count line {:?} for {} requests",
        line.line,
        sent.len()
    );
}

#[test]
fn whole_i64_range_is_counted_and_bad_ids_are_refused() {
    let server = Server::start(2, &[]);
    let valid = [
        "-9223372036854775808",
        "9223372036854775807",
        "0",
        "-1",
        // Repeats, also in another spelling of the same value: no new ids.
        "-0",
        "9223372036854775807",
        "-1",
    ];
    let invalid = [
        "/api/verve/accept?id=9223372036854775808",
        "/api/verve/accept?id=-9223372036854775809",
        "/api/verve/accept?id=99999999999999999999999",
        "/api/verve/accept?id=+5",
        "/api/verve/accept?id=%2B5",
        "/api/verve/accept?id=5%20",
        "/api/verve/accept?id=%205",
        "/api/verve/accept?id=5.0",
        "/api/verve/accept?id=1e3",
        "/api/verve/accept?id=0x10",
        "/api/verve/accept?id=abc",
        "/api/verve/accept?id=-",
        "/api/verve/accept?id=",
        "/api/verve/accept?id",
        "/api/verve/accept?ID=6",
        "/api/verve/accept?other=6",
        "/api/verve/accept",
        "/api/verve/accept?id=7&id=7",
        "/api/verve/accept?id=8&x=1&id=9",
        "/api/verve/accept?id=10&endpoint=ftp%3A%2F%2Fexample.com%2F",
        "/api/verve/accept?id=11&endpoint=",
    ];
    let (window, ()) = server.in_one_window(|_| {
        let mut client = server.client();
        for id in valid {
            let r = client.get(&format!("/api/verve/accept?id={id}"));
            assert_eq!((r.status, r.text()), (200, "ok".into()), "id={id}");
            assert_eq!(r.header("content-type"), Some("text/plain"));
        }
        for target in invalid {
            let r = client.get(target);
            assert_eq!((r.status, r.text()), (400, "failed".into()), "{target}");
        }
    });
    let line = server.wait_for_window(window);
    assert_eq!(
        line.unique_count, 4,
        "only i64::MIN, i64::MAX, 0 and -1 count: {:?}",
        line.line
    );
}

#[test]
fn count_lines_have_the_documented_format_and_aligned_consecutive_windows() {
    const INTERVAL: u64 = 2;
    let before = window_now(INTERVAL);
    let server = Server::start(INTERVAL, &[]);
    let after = window_now(INTERVAL);
    // No request at all: every window is empty.
    let lines = server.wait_for_count_lines(3);

    let count_re = Regex::new(
        r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z) INFO count window_start=(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z) unique_count=(0|[1-9][0-9]*)$",
    )
    .unwrap();
    let any_re =
        Regex::new(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z [A-Z]+ \S+ \S.*$").unwrap();
    for line in server.log_lines() {
        assert!(any_re.is_match(&line), "log line format: {line:?}");
        if line.contains("unique_count=") {
            assert!(count_re.is_match(&line), "count line format: {line:?}");
        }
    }

    for c in &lines {
        let caps = count_re.captures(&c.line).expect("count line format");
        assert_eq!(c.unique_count, 0, "an empty window counts 0: {:?}", c.line);
        assert_eq!(c.window_start % INTERVAL, 0, "aligned: {:?}", c.line);
        assert_eq!(&caps[2], rfc3339_secs(c.window_start));
        // Written once the window is over, never before.
        let written_ms = parse_rfc3339_ms(&caps[1]).expect("log timestamp");
        assert!(
            written_ms >= (c.window_start + INTERVAL) * 1000,
            "count line written before its window closed: {:?}",
            c.line
        );
    }
    // The first line is the window in which the service started; then one per window.
    assert!(
        (before..=after).contains(&lines[0].window_start),
        "first window {} not the start-up window ({}..={})",
        rfc3339_secs(lines[0].window_start),
        rfc3339_secs(before),
        rfc3339_secs(after)
    );
    for pair in lines.windows(2) {
        assert_eq!(
            pair[1].window_start,
            pair[0].window_start + INTERVAL,
            "consecutive windows: {:?} then {:?}",
            pair[0].line,
            pair[1].line
        );
    }
}

#[test]
fn an_empty_window_between_busy_ones_is_logged_as_zero() {
    let server = Server::start(1, &[]);
    let (busy, ()) = server.in_one_window(|attempt| {
        for id in 0..3 {
            server.accept_ok(id + i64::from(attempt) * 10);
        }
    });
    // Skip one whole window, then send again.
    server.wait_for_window(busy + 1);
    let (later, ()) = server.in_one_window(|_| server.accept_ok(99));
    assert!(later >= busy + 2);
    server.wait_for_window(later);
    let lines = server.count_lines();
    let of = |w: u64| lines.iter().find(|c| c.window_start == w).unwrap();
    assert_eq!(of(busy).unique_count, 3);
    // Nothing at all was sent in the window after the busy one.
    assert_eq!(of(busy + 1).unique_count, 0, "{:?}", of(busy + 1).line);
    assert_eq!(of(later).unique_count, 1);
    let starts: Vec<u64> = lines.iter().map(|c| c.window_start).collect();
    let unique: HashSet<u64> = starts.iter().copied().collect();
    assert_eq!(
        unique.len(),
        starts.len(),
        "one line per window: {starts:?}"
    );
}
