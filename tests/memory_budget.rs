//! `--max-memory` against the real binary: random 64-bit ids (the costliest kind) sent until
//! the budget is spent. Past it requests are answered 503 and not counted; every id answered
//! `ok` is in a count line; the process stays within the budget plus a documented slack and
//! keeps serving.

mod common;

use std::net::SocketAddr;

use common::{Client, Server};

/// The budget under test: the smallest allowed.
const BUDGET: u64 = 1 << 20;

/// What RSS may grow by beyond the budget (docs/performance.md, *Memory*): the allocator keeping
/// what a merge freed (a merge builds the new set before it frees the old one), the
/// connections' buffers and coroutine stacks, the per-worker batch buffers.
const SLACK: u64 = 8 << 20;

/// Client connections, each sending its share of ids in pipelined batches.
const CONNECTIONS: usize = 4;
/// Requests written before their answers are read.
const BATCH: usize = 64;
/// Ids per connection: in all, several times what fits the budget at 12 bytes reserved
/// per id and ~7 bytes per merged random 64-bit id.
const PER_CONNECTION: usize = 100_000;

/// splitmix64: distinct, well-spread 64-bit ids.
fn id(stream: usize, i: usize) -> i64 {
    let mut z = (stream as u64)
        .wrapping_mul(0x1_0000_0000)
        .wrapping_add(i as u64)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) as i64
}

/// Sends connection `stream`'s ids; returns (answered ok, answered 503).
fn send(addr: SocketAddr, stream: usize) -> (u64, u64) {
    let mut client = Client::connect(addr);
    let (mut ok, mut refused) = (0, 0);
    let mut batch = String::new();
    for start in (0..PER_CONNECTION).step_by(BATCH) {
        batch.clear();
        let end = (start + BATCH).min(PER_CONNECTION);
        for i in start..end {
            batch.push_str(&common::get_request(&format!(
                "/api/verve/accept?id={}",
                id(stream, i)
            )));
        }
        client.send(batch.as_bytes());
        for _ in start..end {
            let r = client.response();
            match (r.status, r.text().as_str()) {
                (200, "ok") => ok += 1,
                (503, "failed") => refused += 1,
                other => panic!("unexpected answer {other:?}"),
            }
        }
    }
    (ok, refused)
}

fn rss_bytes(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

fn metric(server: &Server, name: &str) -> u64 {
    let page = server.get("/metrics").text();
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics:\n{page}"))
}

#[test]
fn past_the_budget_requests_get_503_and_every_ok_is_counted() {
    let mut server = Server::start(60, &["--max-memory", "1MiB"]);
    assert_eq!(metric(&server, "verve_id_memory_limit_bytes"), BUDGET);
    let rss_before = rss_bytes(server.pid());
    let addr = server.addr;
    let answers: Vec<(u64, u64)> = std::thread::scope(|scope| {
        let senders: Vec<_> = (0..CONNECTIONS)
            .map(|c| scope.spawn(move || send(addr, c)))
            .collect();
        senders.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok: u64 = answers.iter().map(|a| a.0).sum();
    let refused: u64 = answers.iter().map(|a| a.1).sum();
    assert_eq!(ok + refused, (CONNECTIONS * PER_CONNECTION) as u64);
    assert!(refused > 0, "the budget was never reached ({ok} ok)");
    assert!(ok > 0);
    let rss_after = rss_bytes(server.pid());
    eprintln!(
        "{ok} ok, {refused} refused; RSS grew by {} bytes",
        rss_after.saturating_sub(rss_before)
    );
    assert!(
        rss_after <= rss_before + BUDGET + SLACK,
        "RSS grew by {} bytes, budget {BUDGET} + slack {SLACK}",
        rss_after - rss_before
    );
    // The process still serves, and says what happened.
    let health = server.get("/healthz");
    assert_eq!((health.status, health.text()), (200, "ok".to_string()));
    // Refusals are summed from the workers with each merge, about once a second.
    common::wait_until("the refused ids in /metrics", || {
        (metric(&server, "verve_memory_refused_ids_total") == refused).then_some(())
    });
    assert!(metric(&server, "verve_id_memory_bytes") <= BUDGET);
    server.wait_for_log("the budget warning", |l| {
        l.contains("memory budget") && l.contains("WARN")
    });
    // Every id answered ok is counted, in whichever windows the sends fell (the ids are all
    // distinct, so the counts add up to the ok answers exactly).
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit().success());
    let counted: u64 = server.count_lines().iter().map(|c| c.unique_count).sum();
    assert_eq!(counted, ok, "{refused} refused");
    let warnings = server
        .log_lines()
        .iter()
        .filter(|l| l.contains("memory budget") && l.contains("WARN"))
        .count();
    assert!(
        (1..=server.count_lines().len()).contains(&warnings),
        "one warning per window at most: {warnings}"
    );
}
