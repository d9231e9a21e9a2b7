//! `GET /api/verve/windows`: the counts of the reported windows, newest first, served from
//! the history the reporters keep. Checked against the count lines: in single mode, across a
//! restart with `--state-file`, and in cluster mode, where every instance answers with the
//! cluster's counts, also for the windows another instance led.
//!
//! Windows are short and every wait is a poll for an event (a count line, an answer that
//! agrees with the log): no test sleeps across a boundary or asserts on timing. A window
//! reported between two reads only makes the poll look again.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::redis_servers::Redis;
use common::{parse_rfc3339_secs, rfc3339_secs, temp_dir, wait_until, window_now, Server};

const INTERVAL: u64 = 2;

/// Window start -> count, as `/api/verve/windows` lists them (checked newest first).
type Windows = BTreeMap<u64, u64>;

/// `GET /api/verve/windows`, checked to be exactly the documented JSON: an object with one
/// key, `windows`, a list of objects with exactly `window_start` (RFC 3339) and
/// `unique_count`, newest first, one per window.
fn windows(server: &Server) -> Windows {
    let r = server.get("/api/verve/windows");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let json: serde_json::Value =
        serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.text()));
    let object = json.as_object().expect("a JSON object");
    assert_eq!(object.len(), 1, "{json}");
    let list = object["windows"].as_array().expect("windows is a list");
    let mut starts = Vec::new();
    for entry in list {
        let entry = entry.as_object().expect("each window is an object");
        assert_eq!(entry.len(), 2, "{entry:?}");
        let start = entry["window_start"].as_str().expect("window_start string");
        let start = parse_rfc3339_secs(start).unwrap_or_else(|| panic!("RFC 3339: {start}"));
        let count = entry["unique_count"].as_u64().expect("unique_count number");
        starts.push((start, count));
    }
    assert!(
        starts.windows(2).all(|p| p[0].0 > p[1].0),
        "not newest first, one per window: {starts:?}"
    );
    starts.into_iter().collect()
}

/// Count lines of `server` as window start -> count (the last line of a window wins).
fn counted(server: &Server) -> Windows {
    server
        .count_lines()
        .into_iter()
        .filter(|c| !c.line.contains("scope=local"))
        .map(|c| (c.window_start, c.unique_count))
        .collect()
}

/// Sends `ids` on one keep-alive connection, each answered `200 ok`.
fn send(server: &Server, ids: impl IntoIterator<Item = i64>) {
    let mut client = server.client();
    for id in ids {
        let r = client.get(&format!("/api/verve/accept?id={id}"));
        assert_eq!((r.status, r.text()), (200, "ok".to_string()), "id {id}");
    }
}

/// Waits until the API lists exactly the windows of the count lines (a window reported
/// between the two reads makes it look again) and returns them.
fn agreeing(server: &Server) -> Windows {
    wait_until(
        "/api/verve/windows to list the count lines' windows",
        || {
            let before = counted(server);
            let listed = windows(server);
            let after = counted(server);
            (before == after && listed == after).then_some(listed)
        },
    )
}

#[test]
fn lists_the_reported_windows_newest_first_with_the_count_lines_counts() {
    let server = Server::start(INTERVAL, &[]);
    let first = window_now(INTERVAL);
    // Nothing reported yet, or only the windows since the start.
    let early = windows(&server);
    assert!(early.keys().all(|&w| w < first + INTERVAL), "{early:?}");
    send(&server, 1..=30);
    send(&server, 1..=10); // repeats count once
    let sent_until = window_now(INTERVAL);
    // Every window the ids went to is reported, and two more (empty ones too).
    server.wait_for_window(sent_until + 2 * INTERVAL);
    let listed = agreeing(&server);
    let ids: u64 = listed.range(first..=sent_until).map(|(_, n)| n).sum();
    assert_eq!(ids, 30, "{listed:?}");
    assert!(listed.contains_key(&(sent_until + 2 * INTERVAL)));
    assert_eq!(
        listed[&(sent_until + 2 * INTERVAL)],
        0,
        "an empty window is listed"
    );
}

#[test]
fn the_history_survives_a_restart_with_a_state_file() {
    let dir = temp_dir("windows-state");
    let state = dir.join("window.state");
    let start = |dir: &Path| {
        Server::start_in(
            dir.to_path_buf(),
            INTERVAL,
            &["--state-file", state.to_str().expect("UTF-8 temp path")],
        )
    };
    let mut first = start(&dir);
    send(&first, 100..=140);
    let sent_until = window_now(INTERVAL);
    first.wait_for_window(sent_until + INTERVAL);
    let before = agreeing(&first);
    assert!(before.len() >= 2, "{before:?}");
    first.signal(libc::SIGTERM);
    assert_eq!(first.wait_exit().code(), Some(0), "exit status");
    // Everything reported up to the stop, as the first process listed it then.
    let before = counted(&first);
    assert!(state.exists(), "the state file was written");

    // `first` keeps the directory (it is removed when the last handle is dropped).
    let second = start(&dir);
    let after = windows(&second);
    for (window, count) in &before {
        assert_eq!(
            after.get(window),
            Some(count),
            "window {} after the restart: {after:?}",
            rfc3339_secs(*window)
        );
    }
    // And the list goes on from there: both processes' count lines (one log file), and
    // nothing else.
    second.wait_for_window(window_now(INTERVAL) + INTERVAL);
    let later = agreeing(&second);
    assert!(later.len() > before.len(), "{later:?}");
    drop(second);
    drop(first);
}

#[test]
fn every_cluster_instance_lists_the_clusters_counts() {
    let redis = Redis::start();
    let start =
        |name: &str| Server::start(INTERVAL, &["--redis", &redis.url, "--instance-id", name]);
    let a = start("a");
    let b = start("b");
    // Both are up: windows from the next one on are shipped by both.
    let first = window_now(INTERVAL) + INTERVAL;
    wait_until("the next window", || {
        (window_now(INTERVAL) >= first).then_some(())
    });
    std::thread::scope(|s| {
        s.spawn(|| send(&a, 1..=40));
        s.spawn(|| send(&b, 21..=60));
    });
    let sent_until = window_now(INTERVAL);
    // The leader of the last window with ids has written its line, and the next one's.
    wait_until("the windows with ids to be reported", || {
        let mut lines = counted(&a);
        lines.extend(counted(&b));
        lines.contains_key(&(sent_until + INTERVAL)).then_some(())
    });
    let (listed_a, listed_b, lines) = wait_until(
        "both instances to list every window the cluster reported",
        || {
            let mut lines = counted(&a);
            let from_b = counted(&b);
            for (w, n) in &from_b {
                let n = lines.get(w).copied().unwrap_or(0).max(*n);
                lines.insert(*w, n);
            }
            let lines: Windows = lines
                .range(first..=sent_until + INTERVAL)
                .map(|(w, n)| (*w, *n))
                .collect();
            let (la, lb) = (windows(&a), windows(&b));
            let listed = |l: &Windows| lines.iter().all(|(w, n)| l.get(w) == Some(n));
            (listed(&la) && listed(&lb)).then_some((la, lb, lines))
        },
    );
    // 60 distinct ids: each counted once in the window it reached an instance in (an id
    // sent to both in two different windows counts in each).
    let total: u64 = lines.values().sum();
    assert!(total >= 60, "{lines:?}");
    // Each window was written by one instance; the other learned its count from Redis.
    let (own_a, own_b) = (counted(&a), counted(&b));
    let learned = lines
        .keys()
        .filter(|w| {
            listed_a.contains_key(w) && !own_a.contains_key(w)
                || listed_b.contains_key(w) && !own_b.contains_key(w)
        })
        .count();
    assert!(learned > 0, "a: {own_a:?}, b: {own_b:?}");
    // The status page says which instance and that Redis is connected.
    let page = a.get("/").text();
    assert!(page.contains("cluster instance <b>a</b>"), "{page}");
    assert!(page.contains(">connected</span>"), "{page}");
}
