//! A log that refuses every write costs the lines, never the service: the real binary with
//! `--log-file /dev/full` (every write fails with ENOSPC) and its stderr on `/dev/full` too,
//! so that the fallback fails as well. Before, the first log line panicked the thread that
//! wrote it (`eprintln!`, and fern's stderr output, panic when stderr fails), which for the
//! collector meant no window was ever sealed again.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::Stdio;

use common::{command, temp_dir, wait_until, Client};

/// The value of `sample` on the `/metrics` page.
fn metric(addr: SocketAddr, sample: &str) -> u64 {
    let page = Client::connect(addr).get("/metrics").text();
    page.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{sample} not on the page: {page}"))
}

#[test]
fn a_log_file_and_stderr_that_refuse_every_write_stop_nothing() {
    let dir = temp_dir("log-full");
    let full = || {
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .expect("/dev/full")
    };
    let mut child = command(&dir)
        .args(["--listen", "127.0.0.1:0", "--interval", "1"])
        .args(["--log-file", "/dev/full"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(full()))
        .spawn()
        .expect("spawning verve");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = String::new();
    stdout.read_line(&mut first).expect("reading stdout");
    let addr: SocketAddr = first
        .trim()
        .strip_prefix("verve listening on ")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| {
            let _ = child.kill();
            panic!("no listening line: {first:?} (exit {:?})", child.wait())
        });
    let mut client = Client::connect(addr);
    for id in 0..100 {
        let r = client.get(&format!("/api/verve/accept?id={id}"));
        assert_eq!((r.status, r.text()), (200, "ok".to_string()));
    }
    // Windows keep being sealed and reported (three boundaries at least) although no count
    // line can be written anywhere; the lost lines are counted.
    wait_until("three windows reported", || {
        (metric(addr, "verve_windows_reported_total") >= 3).then_some(())
    });
    assert!(metric(addr, "verve_log_write_errors_total") > 0);
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "verve exited"
    );
    let r = Client::connect(addr).get("/healthz");
    assert_eq!((r.status, r.text()), (200, "ok".to_string()));
    // SIGTERM: the normal exit, not a panic's.
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = wait_until("verve to exit", || child.try_wait().expect("try_wait"));
    assert_eq!(status.code(), Some(0), "{status:?}");
    let _ = std::fs::remove_dir_all(dir);
}
