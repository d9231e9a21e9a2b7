//! The whole server, in process, with a clock the test moves by hand: requests on both sides
//! of a window boundary land in the window in which they arrived, the collector waits for
//! the settling delay, and each window gets exactly one count line with its exact count.
//! The count log is captured by a test logger instead of a file (one logger per process,
//! hence one test in this file).

mod common;

use std::sync::{Arc, Mutex};

use verve::clock::ManualClock;
use verve::collector::SETTLE;
use verve::config::Config;
use verve::server::{bind, Server};

use common::{wait_until, Client};

/// Every log record, as `<target> <message>`.
static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        LINES
            .lock()
            .unwrap()
            .push(format!("{} {}", record.target(), record.args()));
    }
    fn flush(&self) {}
}

fn count_lines() -> Vec<String> {
    LINES
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.starts_with("count "))
        .cloned()
        .collect()
}

fn wait_for_count_lines(n: usize) -> Vec<String> {
    wait_until("count lines", || {
        let lines = count_lines();
        (lines.len() >= n).then_some(lines)
    })
}

fn accept(client: &mut Client, id: i64) {
    let response = client.get(&format!("/api/verve/accept?id={id}"));
    assert_eq!(
        (response.status, response.text()),
        (200, "ok".to_string()),
        "id {id}"
    );
}

#[test]
fn requests_count_in_the_window_they_arrived_in_across_a_boundary() {
    log::set_logger(&Capture).unwrap();
    log::set_max_level(log::LevelFilter::Info);

    // 2026-11-21T23:50:59Z: one second before the boundary of a 60 s window.
    let boundary_ms = 1_795_305_060_000;
    let clock = ManualClock::new(boundary_ms - 1_000);
    let config = Config::try_load(
        ["verve", "--listen", "127.0.0.1:0", "--interval", "60"],
        None,
    )
    .unwrap();
    let listener = bind(config.listen()).unwrap();
    let server = Server::start(&config, listener, clock.clone() as Arc<_>, 2).unwrap();
    let mut client = Client::connect(server.local_addr());

    accept(&mut client, 1);
    accept(&mut client, 2);
    clock.set(boundary_ms - 1);
    accept(&mut client, 3);
    accept(&mut client, 1);

    // From here on the requests belong to the next window, but the collector has not sealed
    // the old one yet: it waits for the settling delay.
    clock.set(boundary_ms);
    accept(&mut client, 1);
    accept(&mut client, 4);
    let mut other = Client::connect(server.local_addr());
    accept(&mut other, -9);
    accept(&mut other, -10);
    // Once the collector has merged the new window's four ids (the old one has three), it
    // has looked at the clock past the boundary: and it must not have sealed the old window,
    // whose settling delay has not passed.
    wait_until("the new window's ids merged", || {
        let page = client.get("/metrics").text();
        page.lines()
            .any(|l| l == "verve_window_unique_ids 4")
            .then_some(())
    });
    assert!(count_lines().is_empty(), "{:?}", count_lines());

    clock.set(boundary_ms + SETTLE.as_millis() as u64);
    let lines = wait_for_count_lines(1);
    assert_eq!(
        lines,
        ["count window_start=2026-11-21T23:50:00Z unique_count=3"]
    );

    // The next window closes with the four ids sent after the boundary, then one empty window,
    // then the open window is reported at shutdown.
    clock.set(boundary_ms + 120_000 + SETTLE.as_millis() as u64);
    wait_for_count_lines(3);
    server.shutdown();
    assert_eq!(
        count_lines(),
        [
            "count window_start=2026-11-21T23:50:00Z unique_count=3",
            "count window_start=2026-11-21T23:51:00Z unique_count=4",
            "count window_start=2026-11-21T23:52:00Z unique_count=0",
            "count window_start=2026-11-21T23:53:00Z unique_count=0",
        ]
    );
}
