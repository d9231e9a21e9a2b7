//! `--state-file` against crashes: a real verve under pipelined load is killed with SIGKILL
//! at random instants and started again on the same file, many times, and every window's
//! count line is checked against what the client knows: every id answered `ok` more than a
//! second before the kill is counted, no id is counted that was not sent, and a window has
//! one line (a second only with the same count: the kill fell between the line and the
//! record of it).
//!
//! The instants come from a seeded generator; the seed is printed, and `VERVE_TEST_SEED`
//! replays a run.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{temp_dir, Server};

/// Requests written before their answers are read.
const PIPELINE: usize = 16;

/// What a crash may cost: ids answered this long before it.
const GRACE_MS: u64 = 1_000;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after the epoch")
        .as_millis() as u64
}

/// A small seeded generator (xorshift): the test's instants, reproducible from the seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// One id as the client saw it.
#[derive(Debug, Clone, Copy)]
struct Sent {
    id: i64,
    sent_ms: u64,
    /// When `ok` came back; `None`: no answer (the process died first).
    ok_ms: Option<u64>,
    /// The round (process) it was sent to.
    round: usize,
}

/// Sends distinct ids from `next` on, `PIPELINE` at a time, until the connection ends or
/// `stop` is set; returns every id sent.
fn load(
    server_addr: std::net::SocketAddr,
    next: i64,
    round: usize,
    stop: Arc<AtomicBool>,
) -> Vec<Sent> {
    let mut sent = Vec::new();
    let Ok(mut stream) = TcpStream::connect(server_addr) else {
        return sent;
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    let mut id = next;
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    while !stop.load(Relaxed) {
        let mut batch = Vec::with_capacity(PIPELINE * 64);
        let sent_ms = now_ms();
        let first = sent.len();
        for _ in 0..PIPELINE {
            write!(
                batch,
                "GET /api/verve/accept?id={id} HTTP/1.1\r\nHost: t\r\n\r\n"
            )
            .unwrap();
            sent.push(Sent {
                id,
                sent_ms,
                ok_ms: None,
                round,
            });
            id += 1;
        }
        if stream.write_all(&batch).is_err() {
            return sent;
        }
        // Each answer is `HTTP/1.1 200 OK`, headers, a blank line and `ok`.
        let mut answered = 0;
        while answered < PIPELINE {
            match find_answer(&buffer) {
                Some(len) => {
                    let ok = buffer.starts_with(b"HTTP/1.1 200") && buffer[..len].ends_with(b"ok");
                    assert!(ok, "{}", String::from_utf8_lossy(&buffer[..len]));
                    sent[first + answered].ok_ms = Some(now_ms());
                    answered += 1;
                    buffer.drain(..len);
                }
                None => match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => return sent,
                    Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                },
            }
        }
    }
    sent
}

/// The length of the first whole answer in `bytes` (the accept API's answers have a body of
/// two bytes, `ok`, or six, `failed`, with their `Content-Length`).
fn find_answer(bytes: &[u8]) -> Option<usize> {
    let head = bytes.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let text = std::str::from_utf8(&bytes[..head]).ok()?;
    let length: usize = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("Content-Length: ")
                .or_else(|| l.strip_prefix("content-length: "))
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    (bytes.len() >= head + length).then_some(head + length)
}

/// What a run checked.
#[derive(Debug, Default)]
struct Outcome {
    windows: usize,
    kills: usize,
    #[allow(dead_code)] // Shown by the Debug print.
    sent: usize,
    must: usize,
    counted: u64,
    duplicates: usize,
    /// Windows holding ids answered by more than one process.
    spanning: usize,
}

/// Runs `rounds` processes on one state file, each killed with SIGKILL after `max_life_ms`
/// of load (the first) or a random 300 ms to `max_life_ms` (the others), then one last
/// process that reports what is left, and checks every window.
fn run(tag: &str, interval: u64, rounds: usize, max_life_ms: u64) -> Outcome {
    let seed = std::env::var("VERVE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| now_ms() | 1);
    eprintln!("{tag}: seed {seed} (VERVE_TEST_SEED={seed} replays it)");
    let mut rng = Rng(seed);
    let dir = temp_dir(tag);
    let state = dir.join("verve.state");
    let mut sent: Vec<Sent> = Vec::new();
    let mut killed_at: Vec<u64> = Vec::new();
    let mut next_id = 1_i64 << 40;
    // Kept until the end: a dropped `Server` removes the directory they share.
    let mut done = Vec::new();
    for round in 0..rounds {
        let mut server = start(&dir, interval, &state);
        let stop = Arc::new(AtomicBool::new(false));
        let addr = server.addr;
        let loader = {
            let stop = stop.clone();
            std::thread::spawn(move || load(addr, next_id, round, stop))
        };
        // The first process lives the longest life and the others a random one: so that,
        // whatever the seed, some ids are answered well before a kill and must be counted.
        let life_ms = match round {
            0 => max_life_ms,
            _ => 300 + rng.below(max_life_ms - 300),
        };
        std::thread::sleep(Duration::from_millis(life_ms));
        server.signal(libc::SIGKILL);
        killed_at.push(now_ms());
        let _ = server.wait_exit();
        stop.store(true, Relaxed);
        let got = loader.join().expect("the load thread");
        next_id += got.len() as i64 + 1;
        sent.extend(got);
        done.push(server);
    }
    // The last process reports what the others left: the windows that closed at once, the
    // one still open when it closes.
    let mut last = start(&dir, interval, &state);
    let last_window = window_of(now_ms(), interval);
    last.wait_for_window(last_window * interval);
    last.signal(libc::SIGTERM);
    let _ = last.wait_exit();
    check(&last, &sent, &killed_at, interval)
}

fn start(dir: &Path, interval: u64, state: &Path) -> Server {
    Server::start_in(
        dir.to_path_buf(),
        interval,
        &["--state-file", state.to_str().expect("UTF-8 path")],
    )
}

fn window_of(ms: u64, interval: u64) -> u64 {
    ms / 1000 / interval
}

/// Checks every window's lines against what the client sent and saw answered.
fn check(server: &Server, sent: &[Sent], killed_at: &[u64], interval: u64) -> Outcome {
    let mut lines: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for line in server.count_lines() {
        lines
            .entry(line.window_start / interval)
            .or_default()
            .push(line.unique_count);
    }
    // Per window: ids certainly in it (sent and answered inside it), ids that may be in it.
    let mut lower: BTreeMap<u64, u64> = BTreeMap::new();
    let mut upper: BTreeMap<u64, u64> = BTreeMap::new();
    let mut rounds_in: BTreeMap<u64, HashSet<usize>> = BTreeMap::new();
    let mut must = 0;
    let ids: HashSet<i64> = sent.iter().map(|s| s.id).collect();
    assert_eq!(ids.len(), sent.len(), "the client sent an id twice");
    for s in sent {
        let killed = killed_at[s.round];
        let first = window_of(s.sent_ms, interval);
        let last = window_of(s.ok_ms.unwrap_or(killed), interval);
        for w in first..=last {
            *upper.entry(w).or_default() += 1;
        }
        let Some(ok_ms) = s.ok_ms else { continue };
        rounds_in.entry(last).or_default().insert(s.round);
        if ok_ms + GRACE_MS <= killed {
            must += 1;
            if first == last {
                *lower.entry(first).or_default() += 1;
            }
        }
    }
    let mut outcome = Outcome {
        kills: killed_at.len(),
        sent: sent.len(),
        must,
        ..Outcome::default()
    };
    for (&w, &low) in &lower {
        let counts = lines.get(&w).unwrap_or_else(|| {
            panic!("window {} holds {low} ids answered ok over a second before a kill, and has no count line", w * interval)
        });
        assert!(!counts.is_empty());
        if counts.len() > 1 {
            assert!(
                counts.iter().all(|c| *c == counts[0]),
                "window {}: lines with different counts {counts:?}",
                w * interval
            );
            outcome.duplicates += counts.len() - 1;
        }
        let count = counts[0];
        let high = upper.get(&w).copied().unwrap_or(0);
        assert!(
            low <= count && count <= high,
            "window {}: count {count}, expected between {low} and {high}",
            w * interval
        );
    }
    for (w, counts) in &lines {
        let high = upper.get(w).copied().unwrap_or(0);
        assert!(
            counts[0] <= high,
            "window {}: count {} but only {high} ids could be in it",
            w * interval,
            counts[0]
        );
        outcome.counted += counts[0];
    }
    assert!(
        outcome.counted >= must as u64 && outcome.counted <= sent.len() as u64,
        "counted {} ids in all, expected between {must} and {}",
        outcome.counted,
        sent.len()
    );
    outcome.windows = lines.len();
    outcome.spanning = rounds_in.values().filter(|r| r.len() > 1).count();
    eprintln!("{outcome:?}");
    outcome
}

#[test]
fn sigkill_at_random_instants_under_pipelined_load_loses_no_id_older_than_a_second() {
    let outcome = run("state-crash-2s", 2, 10, 2_500);
    assert_eq!(outcome.kills, 10);
    assert!(
        outcome.must > 1_000,
        "{outcome:?}: too little load to show anything"
    );
}

#[test]
fn a_window_that_spans_several_crashes_is_counted_once_with_every_id() {
    let outcome = run("state-crash-span", 20, 5, 2_500);
    assert!(
        outcome.spanning >= 1,
        "{outcome:?}: no window spanned two processes"
    );
    assert!(outcome.must > 1_000, "{outcome:?}");
}
