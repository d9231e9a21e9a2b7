//! Bytes per distinct id that verve holds for a window, and what recording them costs: N ids
//! (default 10 million) of one distribution are recorded the way the service records them,
//! through `verve::shards::Shards` (one shard, `Shards::record`), with `Shards::absorb`
//! called every 100 000 records (what the collector does once a second at 100k req/s), then
//! `Shards::seal`. With the sealed set alive it prints, each divided by the distinct count:
//!
//! - `rss_per_id`: the growth of the process's resident memory (`VmRSS` in
//!   `/proc/self/status`, before the first record and after the seal): what the machine pays,
//!   allocator slack and memory freed but kept by the allocator included;
//! - `heap_per_id`: the live heap (a counting global allocator: bytes allocated minus bytes
//!   freed) after the seal, and `peak_per_id`, its peak during the run (a merge holds the old
//!   and the new set at once);
//! - `accounted_per_id`: `IdSet::heap_bytes()` of the sealed set, what the `--max-memory`
//!   budget charges for it (`Sealed::charge`); `budget_peak_per_id`: the most the budget held
//!   at any absorb (sets charged plus the 12-byte reservations of ids not merged yet);
//! - `serialized_per_id`: `IdSet::serialized_size()`, what a state file or a cluster
//!   shipment of the window takes;
//! - `ns_per_id`: the time from the first record to the end of the seal (records, absorbs,
//!   seal, and generating the ids, a few ns), divided by the ids recorded (not the distinct
//!   ones); `insert_secs` is the same time in seconds; `absorb_ns_per_id` is the absorbs'
//!   share of it (the collector's work, off the request path), `last_absorb_ms` the last
//!   absorb (100 000 ids into the largest window), `max_absorb_ms` the slowest absorb of the
//!   run (what the collector's once-a-second merge must stay under whatever the window holds),
//!   `max_absorb_cpu_ms` the most CPU time of this thread one absorb took (the same
//!   without the wait for a core on a busy machine), `p99_absorb_cpu_ms` the 99th percentile
//!   of those, `seal_ms` the seal alone (which builds the window's one set).
//!
//! ```sh
//! cargo run --release --example memory                          # all four, 10M each, markdown table
//! cargo run --release --example memory -- all 1000000           # all four, 1M each
//! cargo run --release --example memory -- random-i64 10000000   # one measurement
//! cargo run --release --example memory -- --set treemap snowflake 1000000
//! ```
//!
//! Distributions (`examples/support/dist.rs`): `random-i64` (uniform over the whole i64
//! range), `random-u32` (uniform over 0..2^32, so some repeat), `sequential` (0..N),
//! `snowflake` (41-bit ms timestamp << 22 | 10-bit worker << 12 | 12-bit sequence, as 1024
//! workers make them during one 60 s window; all distinct).
//!
//! `--set` measures a bare set instead of verve's service path, for comparison (no absorbs,
//! no seal; `accounted` and `budget_peak` are 0): `treemap` (a `RoaringTreemap` of
//! `verve::ids::to_key` filled with sorted batches of 2048 keys: verve's set before the block
//! format, for every id outside 0..2^32), `hashset` (`HashSet<u64>`), `vec` (a `Vec<u64>`,
//! sorted and deduplicated at the end). Their serialized size is roaring's portable format for
//! `treemap`, 8 bytes per id for the others.
//!
//! `all` runs each distribution in a child process of its own (so that one cannot reuse the
//! heap another freed) and prints a markdown table. Each measurement prints one
//! `RESULT key=value ...` line, which `perf/memory.sh` parses.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashSet;
use std::hint::black_box;
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use roaring::RoaringTreemap;
use verve::budget::IdMemory;
use verve::endpoints::EndpointPolicy;
use verve::ids::{to_key, BATCH};
use verve::shards::{Recorded, Shards};

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

#[path = "support/dist.rs"]
mod dist;
use dist::Dist;

/// CPU time of the calling thread: what an absorb costs whatever else the machine runs
/// (its wall time grows with the load of a shared machine).
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } == 0;
    if !ok {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The `q`-quantile of `times` (0 when there are none).
fn percentile(mut times: Vec<Duration>, q: f64) -> Duration {
    times.sort_unstable();
    let at = ((times.len() as f64 * q) as usize).min(times.len().saturating_sub(1));
    times.get(at).copied().unwrap_or_default()
}

/// Records between two absorbs: a second of requests at 100k req/s.
const ABSORB_EVERY: u64 = 100_000;

/// The seed of every random distribution (the examples' usual one).
const SEED: u64 = 0x9e37_79b9_7f4a_7c15;

/// What was measured, besides the process-wide counters.
#[derive(Default)]
struct Held {
    distinct: u64,
    /// `IdSet::heap_bytes()` (0 for the bare sets).
    accounted: u64,
    /// The most the budget held at an absorb or after the seal (0 for the bare sets).
    budget_peak: u64,
    serialized: u64,
    seal: Duration,
    /// All absorbs, the last one (into the largest window) and the slowest.
    absorb: Duration,
    last_absorb: Duration,
    max_absorb: Duration,
    /// The most CPU time of the collector's thread one absorb took.
    max_absorb_cpu: Duration,
    /// The 99th percentile of the absorbs' CPU times (the tenth slowest of 1000).
    p99_absorb_cpu: Duration,
    /// Keeps the measured structure alive until the RSS is read.
    keep: Option<Box<dyn std::any::Any>>,
}

/// verve's service path: `Shards::record`, an absorb every [`ABSORB_EVERY`], the seal.
fn through_shards(ids: dist::Ids) -> Result<Held, String> {
    let memory = IdMemory::unlimited();
    let shards = Shards::with_memory(1, EndpointPolicy::default(), 1000, memory.clone());
    let window = 1;
    let mut budget_peak = 0;
    let (mut absorb, mut last_absorb) = (Duration::ZERO, Duration::ZERO);
    let (mut max_absorb, mut max_absorb_cpu) = (Duration::ZERO, Duration::ZERO);
    let mut absorb_cpus = Vec::new();
    for (i, id) in ids.enumerate() {
        let recorded = shards.record(0, window, black_box(id), None);
        if recorded != Ok(Recorded::Counted) {
            return Err(format!("record {i}: {recorded:?}"));
        }
        if (i as u64 + 1).is_multiple_of(ABSORB_EVERY) {
            budget_peak = budget_peak.max(memory.used());
            let (t0, cpu0) = (Instant::now(), thread_cpu());
            shards.absorb(window).ok_or("the window is sealed")?;
            last_absorb = t0.elapsed();
            let cpu = thread_cpu().saturating_sub(cpu0);
            max_absorb_cpu = max_absorb_cpu.max(cpu);
            absorb_cpus.push(cpu);
            absorb += last_absorb;
            max_absorb = max_absorb.max(last_absorb);
        }
    }
    budget_peak = budget_peak.max(memory.used());
    let t0 = Instant::now();
    let sealed = shards.seal(window);
    let seal = t0.elapsed();
    budget_peak = budget_peak.max(memory.used());
    let accounted = sealed.charge.bytes();
    if accounted != sealed.ids.heap_bytes() as u64 {
        return Err(format!(
            "the budget charges {accounted} bytes for a set of {} heap bytes",
            sealed.ids.heap_bytes()
        ));
    }
    Ok(Held {
        distinct: sealed.ids.len(),
        accounted,
        budget_peak,
        serialized: sealed.ids.serialized_size() as u64,
        seal,
        absorb,
        last_absorb,
        max_absorb,
        max_absorb_cpu,
        p99_absorb_cpu: percentile(absorb_cpus, 0.99),
        keep: Some(Box::new((sealed, shards))),
    })
}

/// A `RoaringTreemap` of keys, filled with sorted batches of [`BATCH`] keys (what the old
/// `BatchedIdSet` did with ids outside 0..2^32).
fn treemap(ids: dist::Ids) -> Held {
    let mut tree = RoaringTreemap::new();
    let mut pending = Vec::with_capacity(BATCH);
    for id in ids {
        pending.push(to_key(black_box(id)));
        if pending.len() == BATCH {
            pending.sort_unstable();
            tree.extend(pending.drain(..));
        }
    }
    pending.sort_unstable();
    tree.extend(pending.drain(..));
    drop(pending);
    Held {
        distinct: tree.len(),
        serialized: tree.serialized_size() as u64,
        keep: Some(Box::new(tree)),
        ..Held::default()
    }
}

fn hashset(ids: dist::Ids) -> Held {
    let mut set = HashSet::new();
    for id in ids {
        set.insert(to_key(black_box(id)));
    }
    Held {
        distinct: set.len() as u64,
        serialized: set.len() as u64 * 8,
        keep: Some(Box::new(set)),
        ..Held::default()
    }
}

fn sorted_vec(ids: dist::Ids) -> Held {
    let mut keys: Vec<u64> = Vec::new();
    for id in ids {
        keys.push(to_key(black_box(id)));
    }
    keys.sort_unstable();
    keys.dedup();
    Held {
        distinct: keys.len() as u64,
        serialized: keys.len() as u64 * 8,
        keep: Some(Box::new(keys)),
        ..Held::default()
    }
}

const SETS: [&str; 4] = ["verve", "treemap", "hashset", "vec"];

/// One measurement in this process; prints the `RESULT` line.
fn measure(dist: Dist, n: u64, set: &str) -> Result<(), String> {
    let ids = dist.ids(n, SEED);
    let rss_before = rss_bytes();
    let heap_before = LIVE.load(Relaxed);
    PEAK.store(heap_before, Relaxed);
    let started = Instant::now();
    let held = match set {
        "verve" => through_shards(ids)?,
        "treemap" => treemap(ids),
        "hashset" => hashset(ids),
        "vec" => sorted_vec(ids),
        other => return Err(format!("unknown set {other:?} (one of {SETS:?})")),
    };
    let secs = started.elapsed().as_secs_f64();
    let rss_after = rss_bytes();
    let heap = LIVE.load(Relaxed).saturating_sub(heap_before);
    let peak = PEAK.load(Relaxed).saturating_sub(heap_before);
    let distinct = held.distinct;
    if distinct == 0 || rss_before == 0 {
        return Err(format!(
            "{}: nothing to divide by (distinct {distinct}, VmRSS {rss_before})",
            dist.name()
        ));
    }
    let rss = rss_after.saturating_sub(rss_before);
    let per = |bytes: u64| bytes as f64 / distinct as f64;
    println!(
        "RESULT kind={} set={set} n={n} distinct={distinct} rss_bytes={rss} heap_bytes={heap} \
         heap_peak_bytes={peak} accounted_bytes={} budget_peak_bytes={} serialized_bytes={} \
         rss_per_id={:.2} heap_per_id={:.2} peak_per_id={:.2} accounted_per_id={:.2} \
         budget_peak_per_id={:.2} serialized_per_id={:.2} insert_secs={secs:.3} \
         ns_per_id={:.1} absorb_ns_per_id={:.1} last_absorb_ms={:.2} max_absorb_ms={:.2} \
         max_absorb_cpu_ms={:.2} p99_absorb_cpu_ms={:.2} seal_ms={:.2}",
        dist.name(),
        held.accounted,
        held.budget_peak,
        held.serialized,
        per(rss),
        per(heap as u64),
        per(peak as u64),
        per(held.accounted),
        per(held.budget_peak),
        per(held.serialized),
        secs * 1e9 / n as f64,
        held.absorb.as_secs_f64() * 1e9 / n as f64,
        held.last_absorb.as_secs_f64() * 1e3,
        held.max_absorb.as_secs_f64() * 1e3,
        held.max_absorb_cpu.as_secs_f64() * 1e3,
        held.p99_absorb_cpu.as_secs_f64() * 1e3,
        held.seal.as_secs_f64() * 1e3,
    );
    drop(black_box(held.keep));
    Ok(())
}

/// Parses `key=value` fields of a `RESULT` line.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|f| f.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .unwrap_or("?")
}

/// All distributions, each in a child process; prints the markdown table.
fn all(n: u64, set: &str) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    for dist in Dist::ALL {
        eprintln!("memory: {} ({n} ids, {set}) ...", dist.name());
        let out = Command::new(&exe)
            .args(["--set", set, dist.name(), &n.to_string()])
            .output()
            .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout.lines().find(|l| l.starts_with("RESULT "));
        match (out.status.success(), line) {
            (true, Some(line)) => {
                println!("{line}");
                rows.push((dist.describe(), line.to_owned()));
            }
            _ => {
                return Err(format!(
                    "{} failed ({}): {}{}",
                    dist.name(),
                    out.status,
                    stdout,
                    String::from_utf8_lossy(&out.stderr)
                ))
            }
        }
    }
    println!();
    println!(
        "| ids ({n} recorded, {set}) | distinct | RSS B/id | live heap B/id | peak heap B/id \
         | heap_bytes() B/id | serialized B/id | ns/id | last absorb ms | max absorb ms | seal ms |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (what, line) in rows {
        println!(
            "| {what} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            field(&line, "distinct"),
            field(&line, "rss_per_id"),
            field(&line, "heap_per_id"),
            field(&line, "peak_per_id"),
            field(&line, "accounted_per_id"),
            field(&line, "serialized_per_id"),
            field(&line, "ns_per_id"),
            field(&line, "last_absorb_ms"),
            field(&line, "max_absorb_ms"),
            field(&line, "seal_ms"),
        );
    }
    Ok(())
}

fn run(mut args: Vec<String>) -> Result<(), String> {
    let mut set = "verve".to_string();
    if args.first().map(String::as_str) == Some("--set") {
        set = args.get(1).cloned().ok_or("--set needs a value")?;
        if !SETS.contains(&set.as_str()) {
            return Err(format!("unknown set {set:?} (one of {SETS:?})"));
        }
        args.drain(..2);
    }
    let n = match args.get(1) {
        None => 10_000_000,
        Some(s) => s
            .parse()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| format!("bad id count {s:?}"))?,
    };
    match args.first().map(String::as_str) {
        None | Some("all") => all(n, &set),
        Some(kind) => {
            let dist = Dist::parse(kind).ok_or_else(|| format!("unknown distribution {kind:?}"))?;
            measure(dist, n, &set)
        }
    }
}

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("memory: {e}");
            eprintln!(
                "usage: memory [--set verve|treemap|hashset|vec] \
                 [all|random-i64|random-u32|sequential|snowflake] [N]"
            );
            ExitCode::FAILURE
        }
    }
}
