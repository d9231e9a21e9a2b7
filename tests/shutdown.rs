//! Graceful shutdown by the real signals (docs/operating.md, *Signals and shutdown*): exit 0, the open window reported as a
//! partial count, `/healthz` 503 and refused work while draining, in-flight requests
//! answered.

mod common;

use std::collections::HashSet;
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{encode, window_now, Client, ReadEnd, Receiver, Reply, Server};

/// Sends a few ids in a fresh window, stops the server with `sig`, and checks the exit
/// status and the partial window's count line.
fn partial_window_is_reported_on(sig: i32) {
    const INTERVAL: u64 = 2;
    const ATTEMPTS: u32 = 3;
    for attempt in 0..ATTEMPTS {
        let mut server = Server::start(INTERVAL, &[]);
        // Start right after a boundary: the window has most of its length left.
        server.wait_for_count_lines(1);
        let before = window_now(INTERVAL);
        let mut a = server.client();
        let mut b = server.client();
        let mut sent = HashSet::new();
        for i in 0..40i64 {
            let id = (i % 13) * 1_000_003 - 6_000_000;
            let client = if i % 2 == 0 { &mut a } else { &mut b };
            let r = client.get(&format!("/api/verve/accept?id={id}"));
            assert_eq!((r.status, r.text()), (200, "ok".into()));
            sent.insert(id);
        }
        server.signal(sig);
        let after = window_now(INTERVAL);
        let status = server.wait_exit();
        assert_eq!(status.code(), Some(0), "exit status after signal {sig}");
        if before != after {
            eprintln!("attempt {attempt} straddled a window boundary, trying again");
            continue;
        }
        let line = server
            .count_lines()
            .into_iter()
            .find(|c| c.window_start == before)
            .unwrap_or_else(|| panic!("no count line for the partial window:\n{}", server.log()));
        assert_eq!(line.unique_count, sent.len() as u64, "{:?}", line.line);
        return;
    }
    panic!("{ATTEMPTS} attempts in a row straddled a window boundary");
}

#[test]
fn sigterm_reports_the_partial_window_and_exits_0() {
    partial_window_is_reported_on(libc::SIGTERM);
}

#[test]
fn sigint_reports_the_partial_window_and_exits_0() {
    partial_window_is_reported_on(libc::SIGINT);
}

#[test]
fn draining_answers_503_while_a_callback_is_still_pending() {
    // A receiver that never answers in time keeps the shutdown in its reporting phase, the
    // server still running, for the length of the shutdown budget.
    let receiver = Receiver::start(|_| Reply {
        delay: Duration::from_secs(20),
        ..Reply::status(200)
    });
    let slow = receiver.url("/slow");
    // An hour-long window: it will not close by itself during the test.
    let mut server = Server::start(
        3600,
        &["--endpoint-timeout", "10", "--endpoint-allow", "127.0.0.1"],
    );
    let window = window_now(3600);
    let mut health = server.client();
    assert_eq!(health.get("/healthz").status, 200);
    let mut accept = server.client();
    assert_eq!(accept.get("/api/verve/accept?id=1").status, 200);
    let r = server.get(&format!(
        "/api/verve/accept?id=2&endpoint={}",
        encode(&slow)
    ));
    assert_eq!((r.status, r.text()), (200, "ok".into()));

    server.signal(libc::SIGTERM);
    // The callback of the sealed partial window has started: shutdown has begun.
    let got = receiver.wait_for_requests(1);

    // Already-open connections: the load balancer's probe sees 503, new work is refused.
    let r = health.get("/healthz");
    assert_eq!((r.status, r.text()), (503, "failed".into()));
    assert!(r.says_close(), "{r:?}");
    health.expect_closed();
    let r = accept.get("/api/verve/accept?id=3");
    assert_eq!((r.status, r.text()), (503, "failed".into()));
    assert!(r.says_close(), "{r:?}");
    accept.expect_closed();
    // No new connection is served.
    if let Ok(stream) = TcpStream::connect(server.addr) {
        let mut late = Client::from_stream(stream);
        late.send(common::get_request("/healthz").as_bytes());
        match late.try_response() {
            Ok(r) => assert_ne!(r.status, 200, "a new connection was served: {r:?}"),
            Err(ReadEnd::Closed(_)) => {}
            Err(e) => panic!("new connection during shutdown: {e:?}"),
        }
    }

    let status = server.wait_exit();
    assert_eq!(status.code(), Some(0), "stderr: {}", server.stderr());
    assert_eq!(got[0].target, "/slow?count=2");
    if window_now(3600) == window {
        let line = server
            .count_lines()
            .into_iter()
            .find(|c| c.window_start == window)
            .expect("partial window's count line");
        assert_eq!(line.unique_count, 2, "id 3 was refused: {:?}", line.line);
    }
}

/// What became of one request sent while the server was shutting down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    Unavailable,
    NoAnswer,
}

#[test]
fn requests_in_flight_at_sigterm_are_answered_and_counted_once() {
    let mut server = Server::start(3600, &[]);
    let addr = server.addr;
    // Requests answered ok so far, per client thread.
    let answered: Arc<[AtomicU64; 4]> = Arc::new(Default::default());
    let threads: Vec<_> = (0..4i64)
        .map(|t| {
            let answered = Arc::clone(&answered);
            std::thread::spawn(move || {
                let mut client = Client::connect(addr);
                let mut outcomes = Vec::new();
                // Bounded, whatever the server does.
                for j in 0..200_000i64 {
                    let id = t * 1_000_000_000 + j;
                    client.send(
                        common::get_request(&format!("/api/verve/accept?id={id}")).as_bytes(),
                    );
                    let (outcome, closing) = match client.try_response() {
                        Ok(r) if (r.status, r.text().as_str()) == (200, "ok") => {
                            (Outcome::Ok, r.says_close())
                        }
                        Ok(r) if (r.status, r.text().as_str()) == (503, "failed") => {
                            (Outcome::Unavailable, true)
                        }
                        Ok(r) => panic!("unexpected answer during shutdown: {r:?}"),
                        Err(ReadEnd::Closed(rest)) if rest.is_empty() => (Outcome::NoAnswer, true),
                        Err(e) => panic!("id {id}: {e:?}"),
                    };
                    if outcome == Outcome::Ok {
                        answered[t as usize].fetch_add(1, Ordering::Relaxed);
                    }
                    outcomes.push((id, outcome));
                    if closing {
                        break;
                    }
                }
                outcomes
            })
        })
        .collect();
    // Once every client has had answers (the load is going on all four connections), stop
    // the server in the middle of it.
    common::wait_until("100 answers on each of the 4 connections", || {
        answered
            .iter()
            .all(|n| n.load(Ordering::Relaxed) >= 100)
            .then_some(())
    });
    server.signal(libc::SIGTERM);
    let outcomes: Vec<(i64, Outcome)> = threads
        .into_iter()
        .flat_map(|h| h.join().expect("client thread panicked"))
        .collect();
    let status = server.wait_exit();
    assert_eq!(status.code(), Some(0));

    let ok = outcomes.iter().filter(|(_, o)| *o == Outcome::Ok).count() as u64;
    let unanswered = outcomes
        .iter()
        .filter(|(_, o)| *o == Outcome::NoAnswer)
        .count() as u64;
    let refused = outcomes.len() as u64 - ok - unanswered;
    eprintln!("{ok} ok, {refused} answered 503, {unanswered} unanswered");
    assert!(ok > 0, "the load never got going");
    // Every id was sent once, so the counts of all windows add up to the ids counted: every
    // one answered ok, none answered 503, perhaps one whose answer was lost.
    let counted: u64 = server.count_lines().iter().map(|c| c.unique_count).sum();
    assert!(
        (ok..=ok + unanswered).contains(&counted),
        "{ok} answered ok, {unanswered} unanswered, {counted} counted:\n{}",
        server.log()
    );
}
