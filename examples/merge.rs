//! What the collector does at a window boundary, timed on a full window: N ids (default 10
//! million) recorded into `verve::shards::Shards` from one thread per shard (default 2, one
//! per may worker on a 2-core machine) exactly as the request path records them
//! (`Shards::record`), then, like `Collector::seal` in `src/collector.rs`:
//!
//! 1. `Shards::seal(window)`: takes the window's slot from every shard (flushing each
//!    `BatchedIdSet`'s pending batch),
//! 2. `IdSet::union_all_pausing(sealed.parts, yield_now)`: the pairwise union of the shards,
//!    as the collector does it,
//! 3. `WindowSink::accept` on a `LocalSink` (what the server uses in single-instance mode):
//!    the count goes to a reporter, then the merged set is dropped (freed). The reporter here
//!    only keeps the count; the server's writes one log line, which is not timed here.
//!
//! Each run refills fresh shards; the figures are the median (and min, max) over RUNS runs.
//!
//! ```sh
//! cargo run --release --example merge                                  # 10M random u32 ids, 2 shards, 5 runs
//! cargo run --release --example merge -- --ids 10000000 --shards 2 --runs 5 --dist random-u32
//! ```
//!
//! `--dist`: `random-u32` (uniform over 0..2^32, each shard its own stream, so shards overlap
//! as they do under random traffic), `sequential` (ids 0..N dealt round-robin to the shards),
//! `random-i64` (uniform over the whole i64 range). Prints one `RESULT` line per run and a
//! summary line `SUMMARY ...` that `perf/merge.sh` parses.

use std::hint::black_box;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use verve::endpoints::EndpointPolicy;
use verve::ids::IdSet;
use verve::report::{Reporter, WindowReport};
use verve::shards::Shards;
use verve::sink::{LocalSink, SealedWindow, WindowSink};

#[path = "support/rng.rs"]
mod rng;
use rng::Rng;

/// Keeps the last count (the server's count log writes it instead).
struct KeepCount(Arc<std::sync::atomic::AtomicU64>);

impl Reporter for KeepCount {
    fn report(&mut self, report: &WindowReport) {
        self.0
            .store(report.unique_count, std::sync::atomic::Ordering::Relaxed);
    }
}

struct Options {
    ids: u64,
    shards: usize,
    runs: usize,
    dist: String,
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        ids: 10_000_000,
        shards: 2,
        runs: 5,
        dist: "random-u32".into(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = || format!("bad value {value:?} for {flag}");
        match flag.as_str() {
            "--ids" => o.ids = value.parse().map_err(|_| bad())?,
            "--shards" => o.shards = value.parse().map_err(|_| bad())?,
            "--runs" => o.runs = value.parse().map_err(|_| bad())?,
            "--dist" => match value.as_str() {
                "random-u32" | "sequential" | "random-i64" => o.dist = value,
                _ => return Err(bad()),
            },
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if o.shards == 0 || o.runs == 0 || o.ids == 0 {
        return Err("--ids, --shards and --runs must be at least 1".into());
    }
    Ok(o)
}

/// Fills `window` of fresh shards with `o.ids` ids, one thread per shard; returns the shards
/// and the fill time.
fn fill(o: &Options, window: u64, run: usize) -> (Arc<Shards>, Duration) {
    let shards = Arc::new(Shards::new(o.shards, EndpointPolicy::default(), 1000));
    let started = Instant::now();
    let threads: Vec<_> = (0..o.shards)
        .map(|shard| {
            let shards = shards.clone();
            let (n, count, dist) = (o.ids, o.shards as u64, o.dist.clone());
            std::thread::spawn(move || {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((run * 1000 + shard + 1) as u64));
                // This shard's share of the ids: i = shard, shard + count, ...
                let mut i = shard as u64;
                while i < n {
                    let id = match dist.as_str() {
                        "sequential" => i as i64,
                        "random-i64" => rng.next() as i64,
                        _ => (rng.next() >> 32) as i64,
                    };
                    shards.record(shard, window, id, None).expect("record");
                    i += count;
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("filler thread panicked");
    }
    (shards, started.elapsed())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Median, min, max of `xs` (not empty).
fn stats(mut xs: Vec<f64>) -> (f64, f64, f64) {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    let median = if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    };
    (median, xs[0], xs[n - 1])
}

fn main() -> ExitCode {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("merge: {e}");
            eprintln!(
                "usage: merge [--ids N] [--shards S] [--runs R] [--dist random-u32|sequential|random-i64]"
            );
            return ExitCode::from(2);
        }
    };
    let window = 1;
    let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut sink = LocalSink::new(KeepCount(count.clone()));
    let (mut seal, mut union, mut report, mut total) = (vec![], vec![], vec![], vec![]);
    let mut distinct = 0;
    for run in 1..=o.runs {
        let (shards, filled) = fill(&o, window, run);
        let t0 = Instant::now();
        let sealed = shards.seal(window);
        let t1 = Instant::now();
        let ids: IdSet = black_box(sealed.ids);
        let t2 = Instant::now();
        distinct = ids.len();
        sink.accept(SealedWindow {
            window,
            window_start: 0,
            ids,
            unshipped: None,
            endpoints: sealed.endpoints,
            charge: sealed.charge,
        });
        let t3 = Instant::now();
        let reported = count.load(std::sync::atomic::Ordering::Relaxed);
        if reported != distinct || distinct == 0 {
            eprintln!("merge: run {run}: reported {reported}, union holds {distinct}");
            return ExitCode::FAILURE;
        }
        println!(
            "RESULT run={run} ids={} shards={} dist={} distinct={distinct} fill_ms={:.0} \
             seal_ms={:.2} union_ms={:.2} report_drop_ms={:.2} total_ms={:.2}",
            o.ids,
            o.shards,
            o.dist,
            ms(filled),
            ms(t1 - t0),
            ms(t2 - t1),
            ms(t3 - t2),
            ms(t3 - t0),
        );
        seal.push(ms(t1 - t0));
        union.push(ms(t2 - t1));
        report.push(ms(t3 - t2));
        total.push(ms(t3 - t0));
    }
    let f = |xs: Vec<f64>| {
        let (median, min, max) = stats(xs);
        format!("{median:.2},{min:.2},{max:.2}")
    };
    // Per phase: median,min,max in ms.
    println!(
        "SUMMARY ids={} shards={} dist={} runs={} distinct={distinct} seal_ms={} union_ms={} \
         report_drop_ms={} total_ms={}",
        o.ids,
        o.shards,
        o.dist,
        o.runs,
        f(seal),
        f(union),
        f(report),
        f(total),
    );
    ExitCode::SUCCESS
}
