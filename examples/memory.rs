//! Bytes per distinct id in the set a shard uses (`verve::ids::BatchedIdSet`, flushed into the
//! `IdSet` the collector merges): inserts N ids (default 10 million) of one distribution and
//! prints, each divided by the distinct count,
//!
//! - the growth of the process's resident memory (`VmRSS` in `/proc/self/status`, before the
//!   first insert and after the last),
//! - the live heap the set holds (a counting global allocator: bytes allocated minus bytes
//!   freed, so allocator slack and freed-but-kept pages are left out),
//! - roaring's `serialized_size` (the portable format: what the set would take on disk or on
//!   the wire).
//!
//! ```sh
//! cargo run --release --example memory                       # all three, markdown table
//! cargo run --release --example memory -- random-u32 10000000   # one distribution
//! ```
//!
//! Without a distribution it runs each of `random-u32`, `sequential`, `random-i64` in a child
//! process of its own (so one cannot inherit the heap another freed) and prints a markdown
//! table. Each measurement prints one `RESULT ...` line that `perf/memory.sh` parses.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Instant;

use verve::ids::IdBuffer;

/// The system allocator, counting live and peak bytes.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = LIVE.fetch_add(by, Relaxed) + by;
    PEAK.fetch_max(now, Relaxed);
}

// SAFETY: every call is forwarded to `System` unchanged; only counters are updated.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size(), Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Resident set size of this process, from /proc (Linux); 0 if unreadable.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[path = "support/rng.rs"]
mod rng;
use rng::Rng;

const KINDS: [(&str, &str); 3] = [
    ("random-u32", "random, uniform over 0..2^32"),
    ("sequential", "sequential 0..N"),
    ("random-i64", "random, uniform over the whole i64 range"),
];

/// One measurement in this process; prints the `RESULT` line.
fn measure(kind: &str, n: u64) -> Result<(), String> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let gen: fn(&mut Rng, u64) -> i64 = match kind {
        "random-u32" => |r, _| (r.next() >> 32) as i64,
        "sequential" => |_, i| i as i64,
        "random-i64" => |r, _| r.next() as i64,
        other => return Err(format!("unknown distribution {other:?}")),
    };
    let rss_before = rss_bytes();
    let heap_before = LIVE.load(Relaxed);
    PEAK.store(heap_before, Relaxed);
    let started = Instant::now();
    let mut set = IdBuffer::new();
    for i in 0..n {
        set.insert(gen(&mut rng, i));
    }
    let set = black_box(set.into_set());
    let secs = started.elapsed().as_secs_f64();
    let rss_after = rss_bytes();
    let heap = LIVE.load(Relaxed) - heap_before;
    let peak = PEAK.load(Relaxed) - heap_before;
    let distinct = set.len();
    if distinct == 0 || rss_before == 0 {
        return Err(format!(
            "{kind}: nothing to divide by (distinct {distinct}, VmRSS {rss_before})"
        ));
    }
    let per = |bytes: f64| bytes / distinct as f64;
    println!(
        "RESULT kind={kind} n={n} distinct={distinct} rss_bytes={} heap_bytes={heap} \
         heap_peak_bytes={peak} serialized_bytes={} rss_per_id={:.2} heap_per_id={:.2} \
         serialized_per_id={:.2} insert_secs={secs:.2}",
        rss_after.saturating_sub(rss_before),
        set.serialized_size(),
        per(rss_after.saturating_sub(rss_before) as f64),
        per(heap as f64),
        per(set.serialized_size() as f64),
    );
    Ok(())
}

/// Parses `key=value` fields of a `RESULT` line.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|f| f.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .unwrap_or("?")
}

/// All distributions, each in a child process; prints the markdown table.
fn all(n: u64) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    for (kind, what) in KINDS {
        eprintln!("memory: {kind} ({n} ids) ...");
        let out = Command::new(&exe)
            .args([kind, &n.to_string()])
            .output()
            .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout.lines().find(|l| l.starts_with("RESULT "));
        match (out.status.success(), line) {
            (true, Some(line)) => {
                println!("{line}");
                rows.push((what, line.to_owned()));
            }
            _ => {
                return Err(format!(
                    "{kind} failed ({}): {}{}",
                    out.status,
                    stdout,
                    String::from_utf8_lossy(&out.stderr)
                ))
            }
        }
    }
    println!();
    println!("| ids ({n} inserted) | distinct | RSS bytes/id | live heap bytes/id | serialized bytes/id | insert time |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for (what, line) in rows {
        println!(
            "| {what} | {} | {} | {} | {} | {} s |",
            field(&line, "distinct"),
            field(&line, "rss_per_id"),
            field(&line, "heap_per_id"),
            field(&line, "serialized_per_id"),
            field(&line, "insert_secs"),
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parse_n = |s: Option<&String>| -> Result<u64, String> {
        s.map_or(Ok(10_000_000), |s| {
            s.parse().map_err(|_| format!("bad id count {s:?}"))
        })
    };
    let result = match args.first().map(String::as_str) {
        None | Some("all") => parse_n(args.get(1)).and_then(all),
        Some(kind) => parse_n(args.get(1)).and_then(|n| measure(kind, n)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("memory: {e}");
            eprintln!("usage: memory [all|random-u32|sequential|random-i64] [N]");
            ExitCode::FAILURE
        }
    }
}
