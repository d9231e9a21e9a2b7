//! What the collector does at a window boundary, timed on a full window: N ids (default 10
//! million) recorded into `verve::shards::Shards` from one thread per shard (default 2, one
//! per may worker on a 2-core machine) exactly as the request path records them
//! (`Shards::record`), with `Shards::absorb` after every 100 000 ids (`--absorb-every`: what
//! the collector does once a second at 100k req/s) except the last ones, which, like the last
//! second of a real window, are left for the seal. Then, like `Collector::seal` in
//! `src/collector/mod.rs`:
//!
//! 1. `Shards::seal(window)`: takes the window's slot from every shard and merges their last
//!    runs (the last second's ids) into the window's set,
//! 2. `WindowSink::accept` on a `LocalSink` (what the server uses in single-instance mode):
//!    the count goes to a reporter, then the set is dropped (freed). The reporter here only
//!    keeps the count; the server's writes one log line, which is not timed here.
//!
//! The fill runs in steps: the filler threads record a step's ids, then wait while the main
//! thread absorbs (in the service the collector absorbs while the workers record). The last
//! absorb (100 000 ids into the window's set just before the last second) is timed too: it
//! is what the collector does every second at the end of a big window, and what the seal
//! costs when the last second is full. Each run refills fresh shards with the same ids
//! (generated once, before the runs); the figures are the median (and min, max) over RUNS runs.
//!
//! ```sh
//! cargo run --release --example merge                                  # 10M random u32 ids, 2 shards, 5 runs
//! cargo run --release --example merge -- --ids 10000000 --shards 2 --runs 5 --dist random-i64
//! ```
//!
//! `--dist` (`examples/support/dist.rs`): `random-u32` (uniform over 0..2^32), `random-i64`
//! (uniform over the whole i64 range), `sequential` (0..N), `snowflake` (snowflake-like ids
//! of one 60 s window); one stream, dealt round-robin to the shards. Prints one `RESULT` line
//! per run and a summary line `SUMMARY ...` that `perf/merge.sh` parses.

use std::hint::black_box;
use std::process::ExitCode;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use verve::endpoints::EndpointPolicy;
use verve::ids::IdSet;
use verve::report::{Reporter, WindowReport};
use verve::shards::{Recorded, Shards};
use verve::sink::{LocalSink, SealedWindow, WindowSink};

#[path = "support/rng.rs"]
mod rng;

#[path = "support/dist.rs"]
mod dist;
use dist::Dist;

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
    dist: Dist,
    absorb_every: u64,
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        ids: 10_000_000,
        shards: 2,
        runs: 5,
        dist: Dist::RandomU32,
        absorb_every: 100_000,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = || format!("bad value {value:?} for {flag}");
        match flag.as_str() {
            "--ids" => o.ids = value.parse().map_err(|_| bad())?,
            "--shards" => o.shards = value.parse().map_err(|_| bad())?,
            "--runs" => o.runs = value.parse().map_err(|_| bad())?,
            "--dist" => o.dist = Dist::parse(&value).ok_or_else(bad)?,
            "--absorb-every" => o.absorb_every = value.parse().map_err(|_| bad())?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if o.shards == 0 || o.runs == 0 || o.ids == 0 || o.absorb_every == 0 {
        return Err("--ids, --shards, --runs and --absorb-every must be at least 1".into());
    }
    Ok(o)
}

/// What filling a window took.
struct Filled {
    shards: Arc<Shards>,
    /// From the first record to the last, absorbs included.
    fill: Duration,
    /// Every absorb, and the last one.
    absorbs: Duration,
    last_absorb: Duration,
}

/// Fills `window` of fresh shards with `ids`, one thread per shard, id `i` on shard
/// `i % shards`, absorbing after every `o.absorb_every` ids but the last step.
fn fill(o: &Options, ids: &Arc<Vec<i64>>, window: u64) -> Filled {
    let shards = Arc::new(Shards::new(o.shards, EndpointPolicy::default(), 1000));
    let steps = (ids.len() as u64).div_ceil(o.absorb_every);
    // Twice per step: the fillers are done with it; the absorb is done.
    let barrier = Arc::new(Barrier::new(o.shards + 1));
    let started = Instant::now();
    let threads: Vec<_> = (0..o.shards)
        .map(|shard| {
            let (shards, ids, barrier) = (shards.clone(), ids.clone(), barrier.clone());
            let (count, every) = (o.shards, o.absorb_every as usize);
            std::thread::spawn(move || {
                for step in ids.chunks(every) {
                    for &id in step.iter().skip(shard).step_by(count) {
                        let recorded = shards.record(shard, window, id, None);
                        assert_eq!(recorded, Ok(Recorded::Counted));
                    }
                    barrier.wait();
                    barrier.wait();
                }
            })
        })
        .collect();
    let (mut absorbs, mut last_absorb) = (Duration::ZERO, Duration::ZERO);
    for step in 0..steps {
        barrier.wait();
        if step + 1 < steps {
            let t0 = Instant::now();
            shards.absorb(window).expect("the window is open");
            last_absorb = t0.elapsed();
            absorbs += last_absorb;
        }
        barrier.wait();
    }
    for t in threads {
        t.join().expect("filler thread panicked");
    }
    Filled {
        shards,
        fill: started.elapsed(),
        absorbs,
        last_absorb,
    }
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
                "usage: merge [--ids N] [--shards S] [--runs R] [--absorb-every A] \
                 [--dist random-u32|random-i64|sequential|snowflake]"
            );
            return ExitCode::from(2);
        }
    };
    let window = 1;
    let ids = Arc::new(
        o.dist
            .ids(o.ids, 0x9e37_79b9_7f4a_7c15)
            .collect::<Vec<i64>>(),
    );
    let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut sink = LocalSink::new(KeepCount(count.clone()));
    let (mut fill_ms, mut absorb_ms, mut last_absorb_ms) = (vec![], vec![], vec![]);
    let (mut seal, mut report, mut total) = (vec![], vec![], vec![]);
    let mut distinct = 0;
    for run in 1..=o.runs {
        let filled = fill(&o, &ids, window);
        let t0 = Instant::now();
        let sealed = filled.shards.seal(window);
        let t1 = Instant::now();
        let ids: IdSet = black_box(sealed.ids);
        distinct = ids.len();
        sink.accept(SealedWindow {
            window,
            window_start: 0,
            ids,
            unshipped: None,
            endpoints: sealed.endpoints,
            charge: sealed.charge,
        });
        let t2 = Instant::now();
        let reported = count.load(std::sync::atomic::Ordering::Relaxed);
        if reported != distinct || distinct == 0 {
            eprintln!("merge: run {run}: reported {reported}, the set holds {distinct}");
            return ExitCode::FAILURE;
        }
        println!(
            "RESULT run={run} ids={} shards={} dist={} absorb_every={} distinct={distinct} \
             fill_ms={:.0} absorbs_ms={:.0} last_absorb_ms={:.2} seal_ms={:.2} \
             report_drop_ms={:.2} total_ms={:.2}",
            o.ids,
            o.shards,
            o.dist.name(),
            o.absorb_every,
            ms(filled.fill),
            ms(filled.absorbs),
            ms(filled.last_absorb),
            ms(t1 - t0),
            ms(t2 - t1),
            ms(t2 - t0),
        );
        fill_ms.push(ms(filled.fill));
        absorb_ms.push(ms(filled.absorbs));
        last_absorb_ms.push(ms(filled.last_absorb));
        seal.push(ms(t1 - t0));
        report.push(ms(t2 - t1));
        total.push(ms(t2 - t0));
    }
    let f = |xs: Vec<f64>| {
        let (median, min, max) = stats(xs);
        format!("{median:.2},{min:.2},{max:.2}")
    };
    // Per phase: median,min,max in ms.
    println!(
        "SUMMARY ids={} shards={} dist={} absorb_every={} runs={} distinct={distinct} \
         fill_ms={} absorbs_ms={} last_absorb_ms={} seal_ms={} report_drop_ms={} total_ms={}",
        o.ids,
        o.shards,
        o.dist.name(),
        o.absorb_every,
        o.runs,
        f(fill_ms),
        f(absorb_ms),
        f(last_absorb_ms),
        f(seal),
        f(report),
        f(total),
    );
    ExitCode::SUCCESS
}
