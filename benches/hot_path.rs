//! Micro-benchmarks of verve's request hot path, each against the naive alternative.
//!
//! - `request`: one accept request after the HTTP parse: `query::parse_accept` +
//!   `Shards::record` on one shard, vs `str::parse::<i64>` on a split query +
//!   `Mutex<HashSet<i64>>::insert`, for random ids in 0..2^32 and over the whole i64 range.
//!   Also both parsers alone (`parse`).
//!
//! The id set itself (recording, merging, serializing, against `HashSet`, a sorted `Vec` and
//! `RoaringTreemap`) is measured in `benches/ids.rs`.
//!
//! Ids and query strings are generated before timing. `Shards::record` only appends to a
//! buffer that is packed every 2048 ids, so the `request` benchmark times whole windows: one
//! iteration records [`WINDOW_IDS`] (1M) ids into fresh shards, and criterion's "thrpt" is
//! requests per second averaged over that fill (time / 1M = cost per request). The shards'
//! runs are not merged (the collector does that off the request path).
//!
//! Run: `cargo bench --bench hot_path` (all), `cargo bench --bench hot_path -- parse` (one
//! group). Results, with their dates and conditions: `perf/RESULTS.md`.

use std::collections::HashSet;
use std::hint::black_box;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BatchSize, Bencher, BenchmarkGroup, Criterion, Throughput,
};

use verve::endpoints::EndpointPolicy;
use verve::query::parse_accept;
use verve::shards::{Recorded, Shards};

/// Requests per iteration of the `request` benchmarks.
const WINDOW_IDS: usize = 1 << 20;

/// The window index requests are recorded in.
const WINDOW: u64 = 1;

/// splitmix64: a small, fast, well-mixed generator, so the bench needs no rand crate.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// `n` random ids in `0..2^32`, the range most clients send.
fn random_u32_ids(n: usize, seed: u64) -> Vec<i64> {
    let mut rng = SplitMix(seed);
    (0..n).map(|_| (rng.next() >> 32) as i64).collect()
}

/// `n` random ids over the whole `i64` range (hashes, random 64-bit ids).
fn random_i64_ids(n: usize, seed: u64) -> Vec<i64> {
    let mut rng = SplitMix(seed);
    (0..n).map(|_| rng.next() as i64).collect()
}

/// One iteration = one whole window: every id of `0..n` recorded, in order, into a fresh
/// state from `fresh` (built and dropped outside the timing). The cost of a record changes as
/// the window fills (a batch is packed every 2048 ids), so timing whole fills gives the
/// average over a window instead of whichever part of it a sample happened to cover.
fn window_fill<S>(
    b: &mut Bencher<'_>,
    n: usize,
    fresh: impl FnMut() -> S,
    mut op: impl FnMut(&mut S, usize),
) {
    b.iter_batched_ref(
        fresh,
        |state| {
            for i in 0..n {
                op(state, i);
            }
        },
        BatchSize::PerIteration,
    );
}

/// Times `op(i)` for `i` cycling through `0..n`, one iteration per call: for stateless work
/// whose cost does not depend on how far along it is (parsing).
fn cycled(b: &mut Bencher<'_>, n: usize, mut op: impl FnMut(usize)) {
    let mut pos = 0;
    b.iter_custom(|iters| {
        let start = Instant::now();
        for _ in 0..iters {
            op(pos);
            pos += 1;
            if pos == n {
                pos = 0;
            }
        }
        start.elapsed()
    });
}

/// The naive query parse: split on `&`, find `id=`, `str::parse`.
fn naive_id(query: &str) -> Option<i64> {
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("id="))?
        .parse()
        .ok()
}

/// Settings for the groups whose iteration is a whole window of 1M ids (up to a few seconds).
fn window_group<'c>(c: &'c mut Criterion, name: &str) -> BenchmarkGroup<'c, WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(15));
    g.throughput(Throughput::Elements(WINDOW_IDS as u64));
    g
}

fn request(c: &mut Criterion) {
    let cases: Vec<(&str, Vec<String>)> = [
        ("random 0..2^32", random_u32_ids(WINDOW_IDS, 1)),
        ("random full i64", random_i64_ids(WINDOW_IDS, 1)),
    ]
    .into_iter()
    .map(|(kind, ids)| (kind, ids.iter().map(|id| format!("id={id}")).collect()))
    .collect();

    let mut g = window_group(c, "request (1M per iteration)");
    for (kind, queries) in &cases {
        g.bench_function(
            format!("verve: parse_accept + Shards::record/{kind}"),
            |b| {
                window_fill(
                    b,
                    queries.len(),
                    || Shards::new(1, EndpointPolicy::default(), 1000),
                    |shards, i| {
                        let accept = parse_accept(black_box(queries[i].as_bytes())).unwrap();
                        let recorded = shards.record(0, WINDOW, accept.id, None);
                        debug_assert_eq!(recorded, Ok(Recorded::Counted));
                        black_box(recorded).ok();
                    },
                )
            },
        );
        g.bench_function(
            format!("naive: split + str::parse + Mutex<HashSet>::insert/{kind}"),
            |b| {
                window_fill(
                    b,
                    queries.len(),
                    || Mutex::new(HashSet::<i64>::new()),
                    |set, i| {
                        // Shared, as it would be between connections: lock it as they would.
                        let set: &Mutex<HashSet<i64>> = set;
                        let id = naive_id(black_box(&queries[i])).unwrap();
                        black_box(set.lock().unwrap().insert(id));
                    },
                )
            },
        );
    }
    g.finish();

    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Elements(1));
    for (kind, queries) in &cases {
        g.bench_function(format!("parse_accept/{kind}"), |b| {
            cycled(b, queries.len(), |i| {
                black_box(parse_accept(black_box(queries[i].as_bytes())).ok());
            })
        });
        g.bench_function(format!("split + str::parse/{kind}"), |b| {
            cycled(b, queries.len(), |i| {
                black_box(naive_id(black_box(&queries[i])));
            })
        });
    }
    g.finish();
}

criterion_group!(benches, request);
criterion_main!(benches);
