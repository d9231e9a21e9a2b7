//! `--state-file` (docs/operating.md, *State file*) with real signals and real restarts: a restart inside a
//! window resumes it, so the window gets one count line with the exact union of what both
//! processes received and its endpoints are called once; a window saved before it closed is
//! reported, late, by the next start; a damaged or unwritable state file is reported clearly.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use common::{encode, temp_dir, window_now, CountLine, Receiver, Reply, Server};

/// Sends `ids` on one keep-alive connection, each answered `200 ok`.
fn send(server: &Server, ids: impl IntoIterator<Item = i64>) {
    let mut client = server.client();
    for id in ids {
        let r = client.get(&format!("/api/verve/accept?id={id}"));
        assert_eq!((r.status, r.text()), (200, "ok".to_string()), "id {id}");
    }
}

fn start(dir: &Path, interval: u64, state: &Path, extra: &[&str]) -> Server {
    let mut args = vec!["--state-file", state.to_str().expect("UTF-8 temp path")];
    args.extend_from_slice(extra);
    Server::start_in(dir.to_path_buf(), interval, &args)
}

/// Stops `server` with SIGTERM and checks it exits 0.
fn stop(mut server: Server) -> Server {
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit().code(), Some(0), "exit status");
    server
}

fn lines_for(server: &Server, window_start: u64) -> Vec<CountLine> {
    server
        .count_lines()
        .into_iter()
        .filter(|c| c.window_start == window_start)
        .collect()
}

#[test]
fn a_restart_inside_a_window_resumes_it() {
    // Long enough for a stop and a start inside one window with room to spare; a run that
    // straddles a boundary anyway is repeated in a fresh directory.
    const INTERVAL: u64 = 6;
    const ATTEMPTS: u32 = 4;
    let receiver = Receiver::start(|_| Reply::status(200));
    let endpoint = receiver.url("/cb");
    for attempt in 0..ATTEMPTS {
        let dir = temp_dir("state-resume");
        let state: PathBuf = dir.join("window.state");
        let first = start(&dir, INTERVAL, &state, &["--endpoint-allow", "127.0.0.1"]);
        // Start right after a boundary: the window has almost all of its length left.
        first.wait_for_count_lines(1);
        let window = window_now(INTERVAL);
        let before: HashSet<i64> = (0..500).map(|i| i * 7 - 1_000).collect();
        send(&first, before.iter().copied());
        let r = first.get(&format!(
            "/api/verve/accept?id=-1000&endpoint={}",
            encode(&endpoint)
        ));
        assert_eq!(r.status, 200);
        let first = stop(first);
        assert!(state.exists(), "no state file after SIGTERM");
        // The second process writes to the same log and reads the state file.
        let second = start(&dir, INTERVAL, &state, &["--endpoint-allow", "127.0.0.1"]);
        assert!(state.exists(), "the journal is written afresh at start");
        let after: HashSet<i64> = (0..500).map(|i| i * 11 + 3 + (1 << 40)).collect();
        send(&second, after.iter().copied());
        send(&second, before.iter().copied().take(50));
        if window_now(INTERVAL) != window {
            eprintln!("attempt {attempt} straddled a window boundary, trying again");
            continue;
        }
        let line = second.wait_for_window(window);
        let expected = before.union(&after).count() as u64;
        assert_eq!(line.unique_count, expected, "{}", line.line);
        assert_eq!(lines_for(&second, window).len(), 1, "{}", second.log());
        assert!(
            first.log().contains("saved the open window"),
            "{}",
            first.log()
        );
        let calls = receiver.wait_for_requests(1);
        assert_eq!(calls.len(), 1, "{calls:?}");
        assert_eq!(calls[0].target, format!("/cb?count={expected}"));
        return;
    }
    panic!("{ATTEMPTS} attempts in a row straddled a window boundary");
}

#[test]
fn a_window_that_closed_while_stopped_is_reported_late_at_start() {
    const INTERVAL: u64 = 2;
    let dir = temp_dir("state-late");
    let state = dir.join("window.state");
    let first = start(&dir, INTERVAL, &state, &[]);
    first.wait_for_count_lines(1);
    let window = window_now(INTERVAL);
    let ids: HashSet<i64> = (0..300).map(|i| i64::MAX - i * 3).collect();
    send(&first, ids.iter().copied());
    let first = stop(first);
    // Stopped in `window` or just after it: either way the saved window is the one the ids
    // went to, or (had the boundary passed before the signal) it was reported normally.
    let already = lines_for(&first, window);
    common::wait_until("the saved window to close", || {
        (window_now(INTERVAL) > window).then_some(())
    });
    let second = start(&dir, INTERVAL, &state, &[]);
    let line = second.wait_for_window(window);
    assert_eq!(line.unique_count, ids.len() as u64, "{}", line.line);
    assert_eq!(lines_for(&second, window).len(), 1, "{}", second.log());
    if already.is_empty() {
        assert!(
            second.log().contains("reporting it now, late"),
            "{}",
            second.log()
        );
    }
    // Reported once: a third start does not report it again.
    let second = stop(second);
    let before = second.count_lines().len();
    let third = start(&dir, INTERVAL, &state, &[]);
    // Its first line: the window it started in, reported when it closes.
    third.wait_for_count_lines(before + 1);
    assert_eq!(lines_for(&third, window).len(), 1, "{}", third.log());
}

#[test]
fn a_damaged_state_file_is_moved_aside_and_the_service_starts() {
    let dir = temp_dir("state-damaged");
    let state = dir.join("window.state");
    std::fs::write(&state, b"VERVEST1 but not really").unwrap();
    let server = start(&dir, 3600, &state, &[]);
    send(&server, [1, 2, 3]);
    let line = server.wait_for_log("the unreadable-state error", |l| {
        l.contains("ERROR") && l.contains("is unreadable")
    });
    assert!(line.contains("window.state.unreadable"), "{line}");
    assert_eq!(
        std::fs::read(dir.join("window.state.unreadable")).unwrap(),
        b"VERVEST1 but not really"
    );
    assert!(server.stderr().contains("is unreadable"));
}

#[test]
fn a_state_file_in_a_missing_directory_is_a_configuration_error() {
    let dir = temp_dir("state-missing-dir");
    let output = common::command(&dir)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--state-file",
            "no/such/dir/w.state",
        ])
        .output()
        .expect("running verve");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--state-file"), "{stderr}");
    let _ = std::fs::remove_dir_all(dir);
}

/// A state file written by hand, the way someone with write access to its directory could.
fn craft(state: &Path, window_start: u64, endpoints: &[&str]) {
    let saved = verve::state::SavedWindow {
        interval_secs: 60,
        window_start,
        ids: verve::ids::IdSet::from_ids([1, 2, 3]),
        endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
    };
    std::fs::write(state, saved.encode().expect("encoding")).expect("writing the state file");
}

#[test]
fn a_state_file_far_in_the_future_is_refused_without_a_panic_or_a_line_per_window() {
    let dir = temp_dir("state-far");
    let state = dir.join("window.state");
    // The last window before year 10000: RFC 3339 cannot write the instant after it.
    craft(&state, 253_402_300_800 - 60, &["http://hooks.example.com/"]);
    let server = start(&dir, 60, &state, &[]);
    let line = server.wait_for_log("the refusal", |l| {
        l.contains("ERROR") && l.contains("is refused")
    });
    assert!(line.contains("more than one interval after"), "{line}");
    assert!(dir.join("window.state.refused").exists());
    send(&server, [5]);
    let server = stop(server);
    // The open window was saved; nothing was reported, least of all a line per window.
    assert!(server.count_lines().is_empty(), "{}", server.log());
    assert!(server.log_lines().len() < 20, "{}", server.log());
}

#[test]
fn endpoints_of_a_state_file_are_checked_again_and_logged_on_one_line() {
    let dir = temp_dir("state-endpoints");
    let state = dir.join("window.state");
    // Resumed, or reported late should an hour boundary pass before the start: either way
    // the endpoints are checked as if a client had sent them.
    let forged = "http://a.test/x\nINFO count window_start=2026-01-01T00:00:00Z unique_count=999";
    craft(&state, window_now(3600), &[forged, "ftp://not.http/"]);
    let server = start(&dir, 3600, &state, &[]);
    let line = server.wait_for_log("the first refused endpoint", |l| {
        l.contains("error=not-allowed-after-restart") && l.contains("a.test")
    });
    assert!(line.contains("endpoint=http://a.test/x\\nINFO"), "{line}");
    server.wait_for_log("the second refused endpoint", |l| {
        l.contains("endpoint=ftp://not.http/ error=not-allowed-after-restart")
    });
    assert!(
        !server.log().contains("unique_count=999"),
        "{}",
        server.log()
    );
    assert!(server.count_lines().iter().all(|c| c.unique_count != 999));
}

/// A host that accepts connections and never answers, until dropped.
struct Tarpit {
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Tarpit {
    fn start() -> Tarpit {
        use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !flag.load(Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => held.push(stream),
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
                }
            }
        });
        Tarpit {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Tarpit {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        // The listener is closed once the thread is done: the port is free again.
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn a_call_not_made_at_a_stop_or_a_crash_is_made_after_the_restart() {
    const INTERVAL: u64 = 1;
    let dir = temp_dir("state-calls");
    let state = dir.join("verve.state");
    let tarpit = Tarpit::start();
    let port = tarpit.port;
    let endpoint = format!("http://127.0.0.1:{port}/cb");
    // Calls that hang longer than any stop takes: they are in flight at the signal.
    let args = ["--endpoint-allow", "127.0.0.1", "--endpoint-timeout", "60"];
    let first = start(&dir, INTERVAL, &state, &args);
    let (window, ()) = first.in_one_window(|_| {
        for id in [1, 2, 3] {
            let r = first.get(&format!(
                "/api/verve/accept?id={id}&endpoint={}",
                encode(&endpoint)
            ));
            assert_eq!(r.status, 200);
        }
    });
    let count = first.wait_for_window(window).unique_count;
    // SIGTERM while the call hangs: kept for after the restart, not dropped.
    let first = stop(first);
    assert!(
        first.log().contains("error=deferred-to-restart"),
        "{}",
        first.log()
    );
    // The next start makes it again (the host still hangs); then SIGKILL.
    let mut second = start(&dir, INTERVAL, &state, &args);
    second.wait_for_log("the call due from before the restart", |l| {
        l.contains("endpoint calls still due from before the restart")
    });
    second.signal(libc::SIGKILL);
    let _ = second.wait_exit();
    // The host answers now, on the same port: the third start makes the call, once.
    drop(tarpit);
    let receiver = Receiver::start_at((std::net::Ipv4Addr::LOCALHOST, port), |_| {
        Reply::status(200)
    });
    let third = start(&dir, INTERVAL, &state, &args);
    let calls = receiver.wait_for_requests(1);
    assert_eq!(calls[0].target, format!("/cb?count={count}"));
    third.wait_for_log("the call's status line", |l| {
        l.contains(&format!("endpoint={endpoint}?count")) || l.contains("status=200")
    });
    // Reported once in all: the restarts wrote no second line for the window.
    assert_eq!(lines_for(&third, window).len(), 1, "{}", third.log());
    let third = stop(third);
    let fourth = start(&dir, INTERVAL, &state, &args);
    let before = third.count_lines().len();
    fourth.wait_for_count_lines(before + 1);
    assert_eq!(
        receiver.requests().len(),
        1,
        "the call was made again after it succeeded"
    );
}
