//! A window's count in cluster mode, timed, at scale: N simulated instances (default 10) each
//! hold M ids (default 1 million, random over 0..2^32, or with `--dist random-i64` over the
//! whole i64 range) and ship them in K deltas (default 60: one a second of a 60 s window) the
//! way `src/cluster/ship.rs` does: each delta cut into its 16 partitions
//! (`verve::ids::partition::split`), each partition's values serialized in parts of at most
//! `store::MAX_SHIPMENT_BYTES` and stored with `parts::ship` in that partition's list
//! (`Keys::partition(window_start, p).ids`: one slot of its own on Redis Cluster). Then the
//! count as the cluster does it, timed:
//!
//! 1. the parent freezes every partition (`parts::freeze`, as the window's leader does);
//! 2. C counter processes (`--counters C`, default 2: this example started again in its
//!    counter mode, real processes, each with its own connection from
//!    `verve::cluster::conn::connect`), started and connected before the freeze and told to go
//!    right after it, loop over the partitions, each from its own first partition (counter
//!    `i` starts at partition `16 i / C`, spread evenly: a verve instance starts at a hash of
//!    its name): `parts::lead` (the partition's lease) -> `merge::count_partition_with` (the
//!    partition's list read page by page, decoded, counted; its lease renewed every second
//!    meanwhile) -> `parts::counted`, until every partition is counted or held by another
//!    counter;
//! 3. once every counter is done, the parent reads `parts::counts` and adds them: the sum is
//!    the window's count, which the leader's count line would carry at once.
//!
//! The figure is **`sum_ms`**, from the freeze to the sum (the freeze included). Also: every
//! partition's time (`total_ms` of `count_partition_with`, of which `count_ms` in the counter
//! function, `count_union` of the decoded shipments: `fetch_ms` = the rest, the reads and the
//! decoding) and CPU time (`count_cpu_ms`: the counter function's thread; `read_cpu_ms`: the
//! counter's own thread, which reads and decodes), which counter counted it, and per counter
//! its partitions, busy time, CPU time
//! (`getrusage`: helper threads included) and peak resident memory (`VmHWM` of
//! `/proc/self/status` after its last count), beside the largest partition's bytes. The count
//! must equal the generator's truth (every id generated, sorted and deduplicated, before the
//! freeze and not timed), or the example fails.
//!
//! Redis (`REDIS_URL`, required): one server (`redis://127.0.0.1:6379`) or the comma-separated
//! nodes of a Redis Cluster; list every master: the example asks each node for the slots it
//! serves (`CLUSTER NODES`) and its `used_memory` (`INFO memory`) before and after the
//! shipping, and prints each node's share of the window's bytes (`NODE` lines) and the bytes
//! shipped per distinct id. Keys are under a prefix of their own
//! (`verve-leader-merge-<pid>`, or `--prefix`), expire after 10 minutes, and are deleted at
//! the end of each run.
//!
//! The generator streams: each instance's ids are generated, cut into deltas and shipped
//! before the next instance's are generated; only the truth (8 bytes per id) is kept. The
//! shipping is not timed (`ship_ms` is shown): it goes one script call per shipment.
//!
//! ```sh
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --release --example leader_merge -- --dist random-i64
//! REDIS_URL=redis://127.0.0.1:7000,redis://127.0.0.1:7001,redis://127.0.0.1:7002 \
//!   cargo run --release --example leader_merge -- --dist random-i64 --instances 100 --counters 8
//! ```
//!
//! Flags:
//!
//! - `--instances N` (10), `--ids M` (1000000), `--dist random-u32|random-i64` (random-u32).
//! - `--shipments K` (60): each instance ships its ids in K deltas, each without the ids of the
//!   deltas before it, as verve ships the open window once a second.
//! - `--overlap F` (0 to 1, default 0): `F * M` of every instance's ids come from one shared
//!   stream, so all instances hold them (as when a load balancer spreads one client's
//!   repeated ids over the instances); the rest come from a stream of the instance's own.
//! - `--counters C` (2): counter processes.
//! - `--count union|tally` (tally): how a counter counts a partition. `tally` is
//!   `merge::count_partition_with`, what the cluster runs: the partition's pages
//!   (`parts::fetch`) streamed into a `cluster::tally::Tally` (its memory budget unbounded
//!   here), counted on a helper thread; `count_ms` is the count of the sealed tally and
//!   `fetch_ms` includes adding the shipments to it. `union` is what a partition's count did
//!   before the tally, kept to compare: every shipment decoded and held, then one k-way
//!   `count_union`.
//! - `--runs R` (1): the whole thing R times, each on the next window (`--window-start` plus
//!   60 s per run), generated and shipped again (a count frees what it counted).
//! - `--prefix P`, `--window-start S` (1800000000): where the window's keys are.
//! - `--push-only`: ships the window's partitions and leaves them there (10 minutes), without
//!   freezing or counting them: to make a running verve instance under `--redis-prefix P`
//!   count a window of that size (its own shipments carry the window's endpoints and marks).
//! - `--counter NAME --start-at P`: the counter mode the parent starts its counters in (not
//!   for use by hand).
//!
//! Prints one `SHIPMENT` line per instance, `NODE` lines, one `PART` line per partition and
//! `COUNTER` line per counter (from the counters), a `RESULT` line per run and one `SUMMARY`
//! line (`perf/cluster_scale.sh` parses them); timings over the runs as `median,min,max` in
//! ms.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use verve::cluster::conn::{self, Target};
use verve::cluster::keys::{self, Keys, PartitionKeys};
use verve::cluster::merge::{count_partition_with, Read, Skipped};
use verve::cluster::parts::{self, Lead};
use verve::cluster::settings::LEASE;
use verve::cluster::store::{Shipped, MAX_SHIPMENT_BYTES};
use verve::cluster::tally::Tally;
use verve::ids::partition::PARTITIONS;
use verve::ids::{IdBuffer, IdSet};

#[path = "support/rng.rs"]
mod rng;
use rng::Rng;

#[path = "support/dist.rs"]
mod dist;
use dist::Dist;

/// How long every key of the example lives (and the counts, the freezes).
const TTL_MS: u64 = 600_000;

struct Options {
    dist: Dist,
    instances: usize,
    ids: u64,
    overlap: f64,
    shipments: u64,
    counters: usize,
    runs: usize,
    prefix: String,
    window_start: u64,
    push_only: bool,
    counter: Option<String>,
    start_at: usize,
    tally: bool,
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        dist: Dist::RandomU32,
        instances: 10,
        ids: 1_000_000,
        overlap: 0.0,
        shipments: 60,
        counters: 2,
        runs: 1,
        prefix: format!("verve-leader-merge-{}", std::process::id()),
        window_start: 1_800_000_000,
        push_only: false,
        counter: None,
        start_at: 0,
        tally: true,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--push-only" {
            o.push_only = true;
            continue;
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = || format!("bad value {value:?} for {flag}");
        match flag.as_str() {
            "--dist" => {
                o.dist = Dist::parse(&value)
                    .filter(|d| matches!(d, Dist::RandomU32 | Dist::RandomI64))
                    .ok_or_else(bad)?
            }
            "--instances" => o.instances = value.parse().map_err(|_| bad())?,
            "--ids" => o.ids = value.parse().map_err(|_| bad())?,
            "--overlap" => o.overlap = value.parse().map_err(|_| bad())?,
            "--shipments" => o.shipments = value.parse().map_err(|_| bad())?,
            "--counters" => o.counters = value.parse().map_err(|_| bad())?,
            "--runs" => o.runs = value.parse().map_err(|_| bad())?,
            "--prefix" => o.prefix = value,
            "--window-start" => o.window_start = value.parse().map_err(|_| bad())?,
            "--counter" => o.counter = Some(value),
            "--start-at" => o.start_at = value.parse().map_err(|_| bad())?,
            "--count" => {
                o.tally = match value.as_str() {
                    "union" => false,
                    "tally" => true,
                    _ => return Err(bad()),
                }
            }
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if o.instances == 0 || o.runs == 0 || o.ids == 0 || o.shipments == 0 || o.counters == 0 {
        return Err(
            "--instances, --ids, --shipments, --counters and --runs must be at least 1".into(),
        );
    }
    if o.shipments > o.ids {
        return Err("--shipments must be at most --ids".into());
    }
    if !(0.0..=1.0).contains(&o.overlap) {
        return Err("--overlap must be between 0 and 1".into());
    }
    if o.start_at >= PARTITIONS {
        return Err(format!("--start-at must be below {PARTITIONS}"));
    }
    Ok(o)
}

fn main() -> ExitCode {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("leader_merge: {e}");
            eprintln!(
                "usage: REDIS_URL=redis://... leader_merge [--instances N] [--ids M] \
                 [--dist random-u32|random-i64] [--shipments K] [--overlap F] [--counters C] \
                 [--runs R] [--prefix P] [--window-start S] [--push-only]"
            );
            return ExitCode::from(2);
        }
    };
    let result = match std::env::var("REDIS_URL") {
        Err(_) => Err(anyhow::anyhow!(
            "REDIS_URL is not set (one redis-server, or every master of a Redis Cluster, \
             comma-separated)"
        )),
        Ok(url) => match &o.counter {
            Some(name) => counter(&o, &url, name),
            None => leader(&o, &url),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let who = o.counter.as_deref().unwrap_or("leader");
            eprintln!("leader_merge ({who}): {e:#}");
            ExitCode::FAILURE
        }
    }
}

// --- the generator ---------------------------------------------------------------------------

/// A stream's generator: distinct, well-mixed seeds, the first outputs thrown away.
fn stream(n: u64) -> Rng {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15_u64.wrapping_mul(2 * n + 1) ^ 0x5851_f42d_4c95_7f2d);
    for _ in 0..16 {
        rng.next();
    }
    rng
}

/// Instance `k`'s ids, of `dist` (random u32 or i64): `shared` of them from the shared
/// stream, spread evenly among the others, which come from the instance's own stream. Split
/// into `shipments` consecutive parts, each without the ids of the parts before it (as
/// `Shards::drain` ships deltas). Returns every id of the instance and the parts.
fn instance_ids(
    dist: Dist,
    k: usize,
    ids: u64,
    shared: u64,
    shipments: u64,
) -> (IdSet, Vec<IdSet>) {
    let mut common = stream(0);
    let mut own = stream(k as u64 + 1);
    let is_shared = |i: u64| {
        (i as u128 + 1) * shared as u128 / ids as u128 != i as u128 * shared as u128 / ids as u128
    };
    let mut all = IdSet::new();
    let mut parts = Vec::with_capacity(shipments as usize);
    for p in 0..shipments {
        let mut part = IdBuffer::new();
        for i in p * ids / shipments..(p + 1) * ids / shipments {
            let rng = if is_shared(i) { &mut common } else { &mut own };
            part.insert(match dist {
                Dist::RandomI64 => rng.next() as i64,
                _ => (rng.next() >> 32) as i64,
            });
        }
        let mut delta = part.into_set();
        delta.subtract(&all);
        all.union_with(&delta);
        parts.push(delta);
    }
    (all, parts)
}

// --- small helpers ---------------------------------------------------------------------------

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `median,min,max` of `xs`, in ms with 2 decimals (`-` for none).
fn stats(xs: &[f64]) -> String {
    if xs.is_empty() {
        return "-".into();
    }
    let mut xs = xs.to_vec();
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    let median = if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    };
    format!("{median:.2},{:.2},{:.2}", xs[0], xs[n - 1])
}

/// The value of `key=` in a `KEY=value ...` line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

fn num(line: &str, key: &str) -> f64 {
    field(line, key).and_then(|v| v.parse().ok()).unwrap_or(0.0)
}

/// A `kB` figure of `/proc/self/status` (`VmHWM`, `VmRSS`).
fn status_kb(what: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(what)?.strip_prefix(':'))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The CPU time this process used so far, user and system, every thread.
fn cpu_time() -> Duration {
    // SAFETY: a rusage is plain integers, for which all zeroes is a value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct it is given and touches nothing else.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// The CPU time the calling thread used so far.
fn thread_cpu_time() -> Duration {
    // SAFETY: a timespec is plain integers, for which all zeroes is a value.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: clock_gettime fills the struct it is given and touches nothing else.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn partition_keys(o: &Options, window_start: u64) -> Vec<PartitionKeys> {
    let keys = Keys::new(&o.prefix);
    (0..PARTITIONS)
        .map(|p| keys.partition(window_start, p))
        .collect()
}

fn delete(con: &mut dyn redis::ConnectionLike, parts: &[PartitionKeys]) -> anyhow::Result<()> {
    for k in parts {
        redis::cmd("DEL")
            .arg(&k.ids)
            .arg(&k.frozen)
            .arg(&k.lease)
            .arg(&k.count)
            .query::<()>(con)?;
    }
    Ok(())
}

// --- the counter -----------------------------------------------------------------------------

/// How long the last `count_union` of this process took (ns): the counter function runs on
/// `count_partition_with`'s helper thread, and a plain `fn` is what it takes.
static COUNT_NS: AtomicU64 = AtomicU64::new(0);
/// How many shipments it counted, and the heap they took decoded.
static COUNT_SETS: AtomicU64 = AtomicU64::new(0);
static COUNT_HEAP: AtomicU64 = AtomicU64::new(0);

static COUNT_CPU_NS: AtomicU64 = AtomicU64::new(0);

fn timed_count(tally: &Tally) -> u64 {
    let (t0, cpu0) = (Instant::now(), thread_cpu_time());
    let n = tally.count();
    COUNT_NS.store(t0.elapsed().as_nanos() as u64, Relaxed);
    COUNT_CPU_NS.store((thread_cpu_time() - cpu0).as_nanos() as u64, Relaxed);
    COUNT_SETS.store(0, Relaxed);
    COUNT_HEAP.store(tally.heap_bytes(), Relaxed);
    n
}

/// `--count union`: what a partition's count did before the streaming tally: every
/// shipment read and decoded (all held at once), then one k-way `count_union` of them, timed
/// as the counter function is. `None` if `between` said stop.
fn count_union_of(
    con: &mut dyn redis::ConnectionLike,
    keys: &PartitionKeys,
    n: u64,
    between: &mut dyn FnMut(&mut dyn redis::ConnectionLike) -> verve::cluster::store::Result<bool>,
) -> anyhow::Result<Option<(u64, Skipped)>> {
    let mut sets = Vec::new();
    let mut skipped = Skipped::default();
    let whole = parts::fetch(
        con,
        keys,
        n,
        &mut |blob| match blob {
            verve::cluster::store::Blob::Shipment(bytes) => match IdSet::deserialize(bytes) {
                Ok(set) => sets.push(set),
                Err(_) => skipped.unreadable += 1,
            },
            verve::cluster::store::Blob::Oversized(_) => skipped.oversized += 1,
        },
        between,
    )?;
    let (t0, cpu0) = (Instant::now(), thread_cpu_time());
    let count = verve::ids::count_union(&sets);
    COUNT_NS.store(t0.elapsed().as_nanos() as u64, Relaxed);
    COUNT_CPU_NS.store((thread_cpu_time() - cpu0).as_nanos() as u64, Relaxed);
    COUNT_SETS.store(sets.len() as u64, Relaxed);
    COUNT_HEAP.store(sets.iter().map(|s| s.heap_bytes() as u64).sum(), Relaxed);
    Ok(whole.then_some((count, skipped)))
}

/// The counter mode: connects, says `READY`, waits for `go` on stdin, counts every partition
/// it wins, says `DONE` and then its figures (`COUNTER`).
fn counter(o: &Options, url: &str, name: &str) -> anyhow::Result<()> {
    let target = Target::parse(url).map_err(anyhow::Error::msg)?;
    let mut redis = conn::connect(&target)?;
    let con = redis.con();
    let parts = partition_keys(o, o.window_start);
    let lease_ms = LEASE.as_millis() as u64;
    // Every node answers before the clock starts (a cluster connection connects lazily).
    for k in &parts {
        redis::cmd("EXISTS").arg(&k.ids).query::<i64>(con)?;
    }
    let rss_ready = status_kb("VmRSS");
    println!("READY name={name} rss_kb={rss_ready}");
    let mut go = String::new();
    std::io::stdin().lock().read_line(&mut go)?;
    ensure!(go.trim() == "go", "expected go on stdin, got {go:?}");

    let memory = verve::budget::IdMemory::unlimited();
    let (t0, cpu0) = (Instant::now(), cpu_time());
    let mut done = [false; PARTITIONS];
    let (mut counted_parts, mut busy) = (0, Duration::ZERO);
    loop {
        let mut open = false;
        for i in 0..PARTITIONS {
            let p = (o.start_at + i) % PARTITIONS;
            if done[p] {
                continue;
            }
            let keys = &parts[p];
            match parts::lead(con, keys, name, lease_ms)? {
                Lead::Counted(_) => done[p] = true,
                // Another counter has it: its holder counts it.
                Lead::Held => done[p] = true,
                Lead::Open => open = true,
                Lead::Counting(n) => {
                    let started = t0.elapsed();
                    let (t, main_cpu0) = (Instant::now(), thread_cpu_time());
                    let mut renewed = Instant::now();
                    let mut between = |c: &mut dyn redis::ConnectionLike| {
                        if renewed.elapsed() < Duration::from_secs(1) {
                            return Ok(true);
                        }
                        renewed = Instant::now();
                        parts::renew(c, keys, name, lease_ms)
                    };
                    let counted = if o.tally {
                        let read = Read {
                            keys,
                            shipments: n,
                            memory: &memory,
                        };
                        count_partition_with(con, &read, &mut between, timed_count)?
                    } else {
                        count_union_of(con, keys, n, &mut between)?
                    };
                    let (total, main_cpu) = (t.elapsed(), thread_cpu_time() - main_cpu0);
                    let Some((count, skipped)) = counted else {
                        bail!("partition {p}: lost its lease while counting");
                    };
                    ensure!(skipped.total() == 0, "partition {p}: skipped {skipped:?}");
                    ensure!(
                        parts::counted(con, keys, name, count, TTL_MS)?,
                        "partition {p}: the count was not recorded (lease lost)"
                    );
                    let took = t.elapsed();
                    let count_ms = COUNT_NS.load(Relaxed) as f64 / 1e6;
                    let count_cpu_ms = COUNT_CPU_NS.load(Relaxed) as f64 / 1e6;
                    // A tally's count runs on this thread.
                    let read_cpu_ms = ms(main_cpu) - if o.tally { count_cpu_ms } else { 0.0 };
                    println!(
                        "PART p={p} counter={name} shipments={n} count={count} \
                         start_ms={:.2} total_ms={:.2} fetch_ms={:.2} count_ms={count_ms:.2} \
                         count_cpu_ms={count_cpu_ms:.2} read_cpu_ms={:.2} recorded_ms={:.2} \
                         decoded_sets={} decoded_heap={}",
                        ms(started),
                        ms(total),
                        ms(total) - count_ms,
                        read_cpu_ms,
                        ms(took),
                        COUNT_SETS.load(Relaxed),
                        COUNT_HEAP.load(Relaxed),
                    );
                    busy += took;
                    counted_parts += 1;
                    done[p] = true;
                }
            }
        }
        if !open {
            break;
        }
        // Not frozen: cannot happen once the parent said go, but a counter waits as verve's do.
        std::thread::sleep(Duration::from_millis(1));
    }
    let (wall, cpu) = (t0.elapsed(), cpu_time() - cpu0);
    println!("DONE name={name}");
    println!(
        "COUNTER name={name} partitions={counted_parts} busy_ms={:.2} wall_ms={:.2} \
         cpu_ms={:.2} vmhwm_kb={} rss_ready_kb={rss_ready}",
        ms(busy),
        ms(wall),
        ms(cpu),
        status_kb("VmHWM"),
    );
    Ok(())
}

// --- the leader ------------------------------------------------------------------------------

/// A counter process, its stdin (for `go`) and its lines, read by a thread of their own.
struct Counter {
    child: Child,
    stdin: ChildStdin,
}

/// A node's `host:port` and the ranges of slots it serves.
type Node = (String, Vec<(u16, u16)>);

/// The nodes of the deployment (`REDIS_URL`'s), with the slots each serves (none for a
/// single server: it holds every key).
fn nodes(url: &str) -> anyhow::Result<Vec<Node>> {
    let mut out = Vec::new();
    for u in url.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        let client = redis::Client::open(u)?;
        let mut con = client.get_connection()?;
        let addr = client.get_connection_info().addr().to_string();
        let mut ranges = Vec::new();
        if let Ok(text) = redis::cmd("CLUSTER").arg("NODES").query::<String>(&mut con) {
            let me = text
                .lines()
                .find(|l| {
                    l.split_whitespace()
                        .nth(2)
                        .is_some_and(|f| f.contains("myself"))
                })
                .context("CLUSTER NODES has no line for the node itself")?;
            for range in me.split_whitespace().skip(8) {
                if range.starts_with('[') {
                    continue;
                }
                let (a, b) = range.split_once('-').unwrap_or((range, range));
                ranges.push((a.parse()?, b.parse()?));
            }
        }
        out.push((addr, ranges));
    }
    Ok(out)
}

/// Every node's `used_memory`, in the order of [`nodes`].
fn used_memory(url: &str) -> anyhow::Result<Vec<u64>> {
    url.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| {
            let mut con = redis::Client::open(u)?.get_connection()?;
            let info: String = redis::cmd("INFO").arg("memory").query(&mut con)?;
            info.lines()
                .find_map(|l| l.strip_prefix("used_memory:"))
                .and_then(|v| v.trim().parse().ok())
                .context("INFO memory without used_memory")
        })
        .collect()
}

/// What the shipping of one window left: per partition, its shipments and bytes.
struct Shipping {
    shipments: [u64; PARTITIONS],
    bytes: [u64; PARTITIONS],
    expected: u64,
    ids_total: u64,
}

/// Generates every instance's ids and ships them, instance by instance; the truth on the way.
fn generate_and_ship(
    o: &Options,
    con: &mut dyn redis::ConnectionLike,
    parts: &[PartitionKeys],
) -> anyhow::Result<Shipping> {
    let shared = (o.ids as f64 * o.overlap).round() as u64;
    let mut s = Shipping {
        shipments: [0; PARTITIONS],
        bytes: [0; PARTITIONS],
        expected: 0,
        ids_total: 0,
    };
    let mut truth: Vec<u64> = Vec::with_capacity(o.instances * o.ids as usize);
    for k in 0..o.instances {
        let t0 = Instant::now();
        let (set, deltas) = instance_ids(o.dist, k, o.ids, shared, o.shipments);
        let generated = t0.elapsed();
        let (mut cut, mut ship) = (Duration::ZERO, Duration::ZERO);
        let (mut n, mut bytes) = (0u64, 0u64);
        for delta in &deltas {
            let t = Instant::now();
            let shipments = verve::cluster::ship::partition_shipments(delta, MAX_SHIPMENT_BYTES);
            cut += t.elapsed();
            let t = Instant::now();
            for (p, blob) in shipments {
                let stored = parts::ship(con, &parts[p], &blob, TTL_MS)?;
                ensure!(
                    stored == Shipped::Stored,
                    "partition {p} refused a shipment"
                );
                s.shipments[p] += 1;
                s.bytes[p] += blob.len() as u64;
                n += 1;
                bytes += blob.len() as u64;
            }
            ship += t.elapsed();
        }
        println!(
            "SHIPMENT instance={k} ids={} distinct={} deltas={} shipments={n} bytes={bytes} \
             bytes_per_id={:.3} generate_ms={:.0} cut_ms={:.0} ship_ms={:.0}",
            o.ids,
            set.len(),
            deltas.len(),
            bytes as f64 / set.len().max(1) as f64,
            ms(generated),
            ms(cut),
            ms(ship)
        );
        s.ids_total += set.len();
        truth.extend(set.keys());
    }
    truth.sort_unstable();
    truth.dedup();
    s.expected = truth.len() as u64;
    Ok(s)
}

/// Prints each node's share of the window's bytes (`NODE` lines); returns the largest share.
fn node_shares(
    url: &str,
    window_start: u64,
    shipping: &Shipping,
    before: &[u64],
) -> anyhow::Result<f64> {
    let nodes = nodes(url)?;
    let after = used_memory(url)?;
    let total: u64 = shipping.bytes.iter().sum();
    let mut max_share = 0f64;
    for (i, (addr, ranges)) in nodes.iter().enumerate() {
        let mine: Vec<usize> = (0..PARTITIONS)
            .filter(|&p| {
                let slot = keys::slot(&keys::partition_tag(window_start, p));
                ranges.is_empty() || ranges.iter().any(|&(a, b)| (a..=b).contains(&slot))
            })
            .collect();
        let bytes: u64 = mine.iter().map(|&p| shipping.bytes[p]).sum();
        let share = bytes as f64 / total.max(1) as f64;
        max_share = max_share.max(share);
        println!(
            "NODE node={addr} partitions={} bytes={bytes} share={share:.3} \
             used_memory_before={} used_memory_after={} used_memory_growth={}",
            mine.iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(","),
            before[i],
            after[i],
            after[i] as i64 - before[i] as i64
        );
    }
    Ok(max_share)
}

/// Starts the counters and waits until each is connected and says `READY`.
fn start_counters(
    o: &Options,
    window_start: u64,
    tx: &mpsc::Sender<(usize, Option<String>)>,
    rx: &mpsc::Receiver<(usize, Option<String>)>,
) -> anyhow::Result<Vec<Counter>> {
    let exe = std::env::current_exe()?;
    let mut counters = Vec::new();
    for i in 0..o.counters {
        let mut child = Command::new(&exe)
            .args(["--counter", &format!("counter-{i}")])
            .args(["--start-at", &(i * PARTITIONS / o.counters).to_string()])
            .args(["--prefix", &o.prefix])
            .args(["--window-start", &window_start.to_string()])
            .args(["--count", if o.tally { "tally" } else { "union" }])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting a counter")?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send((i, Some(line))).is_err() {
                    return;
                }
            }
            let _ = tx.send((i, None));
        });
        counters.push(Counter { child, stdin });
    }
    let mut ready = 0;
    while ready < o.counters {
        match rx.recv_timeout(Duration::from_secs(30))? {
            (_, Some(line)) if line.starts_with("READY") => ready += 1,
            (_, Some(line)) => println!("{line}"),
            (i, None) => bail!("counter-{i} exited before it was ready"),
        }
    }
    Ok(counters)
}

/// One run: generate and ship, freeze, count, add. Returns the `RESULT` line's figures.
fn run(
    o: &Options,
    url: &str,
    con: &mut dyn redis::ConnectionLike,
    number: usize,
) -> anyhow::Result<f64> {
    let window_start = o.window_start + 60 * (number as u64 - 1);
    let parts = partition_keys(o, window_start);
    delete(con, &parts)?;
    let mem_before = used_memory(url)?;
    let t_ship = Instant::now();
    let shipping = generate_and_ship(o, con, &parts)?;
    let ship_s = t_ship.elapsed().as_secs_f64();
    let total_bytes: u64 = shipping.bytes.iter().sum();
    let max_share = node_shares(url, window_start, &shipping, &mem_before)?;
    let per_id = total_bytes as f64 / shipping.ids_total.max(1) as f64;
    let max_part_bytes = *shipping.bytes.iter().max().unwrap_or(&0);
    let head = format!(
        "run={number} count_with={} dist={} instances={} ids={} overlap={} shipments={} counters={} \
         distinct={} bytes_total={total_bytes} bytes_per_id={per_id:.3} max_node_share={max_share:.3} \
         max_partition_bytes={max_part_bytes} generate_and_ship_s={ship_s:.1}",
        if o.tally { "tally" } else { "union" },
        o.dist.name(),
        o.instances,
        o.ids,
        o.overlap,
        o.shipments,
        o.counters,
        shipping.expected,
    );
    if o.push_only {
        println!(
            "PUSHED prefix={} window_start={window_start} {head}",
            o.prefix
        );
        return Ok(0.0);
    }

    let (tx, rx) = mpsc::channel();
    let mut counters = start_counters(o, window_start, &tx, &rx)?;
    drop(tx);

    // The clock: from the freeze to the sum.
    let t0 = Instant::now();
    for (p, keys) in parts.iter().enumerate() {
        let n = parts::freeze(con, keys, TTL_MS)?;
        ensure!(
            n == shipping.shipments[p],
            "partition {p}: {n} shipments in Redis, {} shipped",
            shipping.shipments[p]
        );
    }
    let frozen = t0.elapsed();
    for c in &mut counters {
        c.stdin.write_all(b"go\n")?;
        c.stdin.flush()?;
    }
    let mut lines = Vec::new();
    let mut done = vec![false; o.counters];
    while !done.iter().all(|&d| d) {
        match rx.recv_timeout(Duration::from_secs(600))? {
            (i, Some(line)) if line.starts_with("DONE") => done[i] = true,
            (_, Some(line)) => lines.push(line),
            (i, None) if !done[i] => bail!("counter-{i} exited before it was done"),
            (_, None) => {}
        }
    }
    let all_done = t0.elapsed();
    let counts = parts::counts(con, &parts)?;
    let Some(counts) = counts.into_iter().collect::<Option<Vec<u64>>>() else {
        bail!("every counter is done but a partition has no count");
    };
    let sum: u64 = counts.iter().sum();
    let sum_ms = ms(t0.elapsed());

    // The counters' last lines, and their exit.
    while let Ok((_, line)) = rx.recv() {
        lines.extend(line);
    }
    for (i, mut c) in counters.into_iter().enumerate() {
        drop(c.stdin);
        let status = c.child.wait()?;
        ensure!(status.success(), "counter-{i}: {status}");
    }
    delete(con, &parts)?;
    for line in &lines {
        println!("{line}");
    }
    ensure!(
        sum == shipping.expected,
        "run {number}: the partitions' counts add up to {sum}, expected {}",
        shipping.expected
    );

    let part_lines: Vec<&String> = lines.iter().filter(|l| l.starts_with("PART ")).collect();
    let counter_lines: Vec<&String> = lines.iter().filter(|l| l.starts_with("COUNTER ")).collect();
    let of = |key: &str| part_lines.iter().map(|l| num(l, key)).collect::<Vec<_>>();
    let cpu: Vec<f64> = counter_lines.iter().map(|l| num(l, "cpu_ms")).collect();
    let hwm = counter_lines
        .iter()
        .map(|l| num(l, "vmhwm_kb"))
        .fold(0f64, f64::max);
    let rss_ready = counter_lines
        .iter()
        .map(|l| num(l, "rss_ready_kb"))
        .fold(0f64, f64::max);
    // What counting added to a counter's resident memory, at its peak.
    let growth = counter_lines
        .iter()
        .map(|l| num(l, "vmhwm_kb") - num(l, "rss_ready_kb"))
        .fold(0f64, f64::max);
    let split = |key: &str| {
        counter_lines
            .iter()
            .map(|l| format!("{:.0}", num(l, key)))
            .collect::<Vec<_>>()
            .join("/")
    };
    println!(
        "RESULT {head} count={sum} freeze_ms={:.2} counted_ms={:.2} sum_ms={sum_ms:.2} \
         part_total_ms={} part_fetch_ms={} part_count_ms={} part_count_cpu_ms={} \
         part_read_cpu_ms={} part_sum_ms={:.0} \
         counter_partitions={} counter_busy_ms={} counter_cpu_ms={} cpu_total_ms={:.0} \
         vmhwm_max_kb={hwm:.0} rss_ready_kb={rss_ready:.0} hwm_per_partition_bytes={:.2} \
         hwm_growth_per_partition_bytes={:.2}",
        ms(frozen),
        ms(all_done),
        stats(&of("total_ms")),
        stats(&of("fetch_ms")),
        stats(&of("count_ms")),
        stats(&of("count_cpu_ms")),
        stats(&of("read_cpu_ms")),
        of("total_ms").iter().sum::<f64>(),
        split("partitions"),
        split("busy_ms"),
        split("cpu_ms"),
        cpu.iter().sum::<f64>(),
        hwm * 1024.0 / max_part_bytes.max(1) as f64,
        growth * 1024.0 / max_part_bytes.max(1) as f64,
    );
    Ok(sum_ms)
}

fn leader(o: &Options, url: &str) -> anyhow::Result<()> {
    let target = Target::parse(url).map_err(anyhow::Error::msg)?;
    let mut redis = conn::connect(&target)?;
    println!(
        "# leader_merge: {} instances x {} {} ids, {} deltas each, {} counters, Redis {} ({})",
        o.instances,
        o.ids,
        o.dist.name(),
        o.shipments,
        o.counters,
        target.display(),
        if redis.is_cluster() {
            "Redis Cluster"
        } else {
            "one server"
        }
    );
    let mut sums = Vec::new();
    for number in 1..=o.runs {
        sums.push(run(o, url, redis.con(), number)?);
    }
    if !o.push_only {
        println!(
            "SUMMARY count_with={} dist={} instances={} ids={} shipments={} counters={} runs={} \
             sum_ms={}",
            if o.tally { "tally" } else { "union" },
            o.dist.name(),
            o.instances,
            o.ids,
            o.shipments,
            o.counters,
            o.runs,
            stats(&sums)
        );
    }
    Ok(())
}
