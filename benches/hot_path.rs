// Issue 3 re-run of the `insert` group, 2026-11-22 04:25-04:33 UTC, quiet machine, commit
// 2160d65 (ids split over 256 bitmaps by the top 8 bits, `ids::Hot`), command
// `cargo bench --bench hot_path -- "insert \(1M"`; median [95% interval], 1M ids:
//   random 0..2^32   IdSet::insert                 153 ms [134, 163]   (was 534 with one bitmap)
//                    RoaringTreemap::insert         556 ms [540, 574]
//                    BatchedIdSet::insert           119 ms [109, 133]   (was 512)
//                    one RoaringBitmap, sorted batches (the naive alternative to the split,
//                    same batching)                 485 ms [476, 490]
//   sequential       IdSet / RoaringTreemap / BatchedIdSet   11.0 / 9.75 / 5.98 ms
//   random full i64  IdSet / RoaringTreemap / BatchedIdSet   510 / 494 / 467 ms
//   random 0..2^32 into a 1M-id set: IdSet 179 ms [152, 199], BatchedIdSet 169 ms [160, 187]
// The split makes a window fill 4x cheaper than the same batching into one bitmap.
// Same session, `cargo bench --bench hot_path -- "^(request|parse|merge)"` (merge re-run at
// the next commit, where `union_all_multiops` unions part by part like `union_all`):
//   request  verve: parse_accept + Shards::record  157 ms [148, 162]   (was 587)
//            naive: split + str::parse + Mutex<HashSet>   158 ms [154, 162]
//   parse    parse_accept 15.0 ns, split + str::parse 12.2 ns
//   merge    random 0..2^32: union_all 12.8 ms, union_all_multiops 70.0 ms, union_with into
//            the first 13.3 ms, from empty 31.1 ms; dense: 9.0 / 12.7 / 8.7 / 72.8 us
// verve's request path now costs what the naive HashSet's does, with 2-4 bytes per id
// instead of the HashSet's ~16 and an exact, mergeable, serializable set.

// Quiet-machine re-run, 2026-11-22 ~02:50-03:05 UTC, same command, commit 89bb91f (nothing
// else running): request verve 587 ms [563, 617] = 560 ns, naive 166 ms [158, 180] = 158 ns;
// parse_accept 15.5 ns, split + str::parse 12.2 ns; insert random 0..2^32 IdSet 510 ms,
// RoaringTreemap 548 ms, BatchedIdSet 523 ms; sequential 9.16 / 10.0 / 5.33 ms; random full
// i64 914 / 818 / 567 ms; into a 1M-id set IdSet 282 ms, BatchedIdSet 236 ms; merge random
// union_all 14.9 ms, union_all_multiops 197 ms, union_with into first 16.8 ms, from empty
// 30.6 ms; merge dense 9.1 / 5.3 / 9.2 / 14.2 us.

// Measured 2026-11-22 02:20-02:29 UTC, `cargo bench --bench hot_path`, verve at 71cb97f (src
// clean; 99bb356, committed during the run, changes none of the code measured here), nproc 2
// (AMD EPYC, 2 cores, no SMT), load average 2.13 at start / 1.28 at end (the bench itself is
// ~1). Other jobs (integration tests, the lead's builds and wrk runs) were running on this
// machine at the same time: noisy, see perf/RESULTS.md. Median [95% interval] of criterion;
// "per id" = time / 1_048_576. The e44c45f numbers (before batching and the linear merge) are
// in perf/RESULTS.md.
//
// request (1 iteration = 1M requests into an empty window, random ids in 0..2^32):
//   verve: parse_accept + Shards::record          535 ms [526, 543]   = 510 ns per request
//   naive: split + str::parse + Mutex<HashSet>     125 ms [120, 131]   = 119 ns per request
// parse (per query):
//   parse_accept                                  15.3 ns [15.1, 15.5]
//   split + str::parse                            12.4 ns [12.4, 12.4]
// insert (1 iteration = 1M ids into an empty set):
//   random 0..2^32   IdSet::insert                534 ms [521, 544]   = 509 ns per id
//                    RoaringTreemap::insert        529 ms [514, 545]   = 505 ns per id
//                    BatchedIdSet::insert          512 ms [498, 523]   = 488 ns per id
//   sequential       IdSet::insert                9.18 ms [9.15, 9.23] = 8.8 ns per id
//                    RoaringTreemap::insert        10.5 ms [10.4, 10.6] = 10.0 ns per id
//                    BatchedIdSet::insert          5.38 ms [5.35, 5.40] = 5.1 ns per id
//   random full i64  IdSet::insert                 924 ms [897, 950]   = 881 ns per id
//                    RoaringTreemap::insert        1.08 s [0.69, 1.56]  = 1026 ns per id (noisy)
//                    BatchedIdSet::insert          623 ms [605, 642]   = 594 ns per id
//   random 0..2^32 into a set already holding 1M:
//                    IdSet::insert                 250 ms [236, 262]   = 238 ns per id
//                    BatchedIdSet::insert          214 ms [195, 231]   = 204 ns per id
// merge (2 shards of 1M ids, sample_size 10):
//   random 0..2^32: union_all (owned)              17.9 ms [16.5, 19.4]
//                   union_all_multiops (owned)      214 ms [212, 216]
//                   union_with into the first       17.7 ms [17.4, 18.2]
//                   union_with from empty           30.0 ms [29.3, 30.6]
//   dense:          union_all (owned)              9.03 us [8.94, 9.08]
//                   union_all_multiops (owned)     5.45 us [5.26, 5.55]
//                   union_with into the first       9.50 us [9.15, 9.90]
//                   union_with from empty           24.8 us [15.5, 31.9]

//! Micro-benchmarks of verve's request hot path, each against the naive alternative.
//!
//! - `request`: one accept request after the HTTP parse: `query::parse_accept` +
//!   `Shards::record` on one shard, vs `str::parse::<i64>` on a split query +
//!   `Mutex<HashSet<i64>>::insert`. Also both parsers alone.
//! - `insert`: `IdSet::insert` (32-bit bitmap in front of the treemap) vs a plain
//!   `RoaringTreemap::insert(to_key(id))` vs `BatchedIdSet::insert` (sorted batches, what
//!   `Shards::record` uses), for random ids in `0..2^32`, sequential ids and random ids over
//!   the whole `i64` range; plus random ids into a set already holding 1M (every container
//!   exists: the steady state of a long window).
//! - `merge`: sealing a window of 2 shards of 1M random `0..2^32` ids each: `IdSet::union_all`
//!   (what the collector uses) vs `IdSet::union_all_multiops` (roaring's `MultiOps`) vs
//!   pairwise `union_with`; the same for 2 dense shards, for contrast.
//!
//! Ids and query strings are generated before timing. The cost of an insert depends on how
//! full the set is, so the `request` and `insert` benchmarks time whole windows: one iteration
//! records [`WINDOW_IDS`] (1M) distinct ids into a fresh set, and criterion's "thrpt" is ids
//! per second averaged over that fill (time / 1M = cost per id).
//!
//! Run: `cargo bench --bench hot_path` (all), `cargo bench --bench hot_path -- insert` (one
//! group).

use std::collections::HashSet;
use std::hint::black_box;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BatchSize, Bencher, BenchmarkGroup, Criterion, Throughput,
};
use roaring::RoaringTreemap;

use verve::endpoints::EndpointPolicy;
use verve::ids::{to_key, BatchedIdSet, IdSet};
use verve::query::parse_accept;
use verve::shards::{Recorded, Shards};

/// Ids per window in the insert benchmarks (and per shard in the merge benchmark).
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

/// `n` random ids over the whole `i64` range.
fn random_i64_ids(n: usize, seed: u64) -> Vec<i64> {
    let mut rng = SplitMix(seed);
    (0..n).map(|_| rng.next() as i64).collect()
}

fn sequential_ids(n: usize) -> Vec<i64> {
    (0..n as i64).collect()
}

/// One iteration = one whole window: every id of `0..n` recorded, in order, into a fresh
/// state from `fresh` (built and dropped outside the timing). A set's insert cost changes a lot
/// as it fills (roaring creates most of its containers early), so timing whole fills gives the
/// true average over a window instead of whichever part of it a sample happened to cover.
fn window_fill<S>(
    b: &mut Bencher<'_>,
    n: usize,
    fresh: impl FnMut() -> S,
    op: impl FnMut(&mut S, usize),
) {
    window_fill_then(b, n, fresh, op, |_| {});
}

/// [`window_fill`], with `finish(state)` timed after the last id (a buffered set's flush).
fn window_fill_then<S>(
    b: &mut Bencher<'_>,
    n: usize,
    fresh: impl FnMut() -> S,
    mut op: impl FnMut(&mut S, usize),
    mut finish: impl FnMut(&mut S),
) {
    b.iter_batched_ref(
        fresh,
        |state| {
            for i in 0..n {
                op(state, i);
            }
            finish(state);
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
    let ids = random_u32_ids(WINDOW_IDS, 1);
    let queries: Vec<String> = ids.iter().map(|id| format!("id={id}")).collect();

    let mut g = window_group(c, "request (1M per iteration)");
    g.bench_function("verve: parse_accept + Shards::record", |b| {
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
    });
    g.bench_function("naive: split + str::parse + Mutex<HashSet>::insert", |b| {
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
    });
    g.finish();

    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse_accept", |b| {
        cycled(b, queries.len(), |i| {
            black_box(parse_accept(black_box(queries[i].as_bytes())).ok());
        })
    });
    g.bench_function("split + str::parse", |b| {
        cycled(b, queries.len(), |i| {
            black_box(naive_id(black_box(&queries[i])));
        })
    });
    g.finish();
}

/// [`BatchedIdSet`] for ids in `0..2^32` with one roaring bitmap instead of `ids::Hot`.
#[derive(Default)]
struct OneBitmapBatched {
    bitmap: roaring::RoaringBitmap,
    pending: Vec<u32>,
}

impl OneBitmapBatched {
    fn insert(&mut self, id: i64) {
        self.pending.push(id as u32);
        if self.pending.len() >= verve::ids::BATCH {
            self.flush();
        }
    }

    fn flush(&mut self) {
        self.pending.sort_unstable();
        self.bitmap.extend(self.pending.drain(..));
    }
}

fn insert(c: &mut Criterion) {
    let cases = [
        ("random 0..2^32", random_u32_ids(WINDOW_IDS, 2)),
        ("sequential", sequential_ids(WINDOW_IDS)),
        ("random full i64", random_i64_ids(WINDOW_IDS, 3)),
    ];
    let mut g = window_group(c, "insert (1M per iteration)");
    for (name, ids) in &cases {
        g.bench_function(format!("IdSet::insert/{name}"), |b| {
            window_fill(b, ids.len(), IdSet::new, |set, i| {
                black_box(set.insert(black_box(ids[i])));
            })
        });
        g.bench_function(format!("RoaringTreemap::insert/{name}"), |b| {
            window_fill(b, ids.len(), RoaringTreemap::new, |set, i| {
                black_box(set.insert(to_key(black_box(ids[i]))));
            })
        });
        // What `Shards::record` uses: ids buffered and inserted sorted, 2048 at a time; the
        // final flush is part of the timing.
        g.bench_function(format!("BatchedIdSet::insert/{name}"), |b| {
            window_fill_then(
                b,
                ids.len(),
                BatchedIdSet::new,
                |set, i| set.insert(black_box(ids[i])),
                |set| {
                    black_box(set.set());
                },
            )
        });
    }
    // The naive alternative to `ids::Hot`'s 256 parts: the same sorted batches of 2048 into
    // one 32-bit bitmap (what verve did before the split).
    let (name, ids) = &cases[0];
    g.bench_function(format!("one RoaringBitmap, sorted batches/{name}"), |b| {
        window_fill_then(
            b,
            ids.len(),
            OneBitmapBatched::default,
            |set, i| set.insert(black_box(ids[i])),
            |set| {
                set.flush();
                black_box(&set.bitmap);
            },
        )
    });
    // The same random ids into a set that already holds 1M others: all 65536 containers
    // exist, so none is created (no shifting of the container vector): the steady state of a
    // long, busy window.
    let (name, ids) = &cases[0];
    let mut warm = IdSet::new();
    for id in random_u32_ids(WINDOW_IDS, 6) {
        warm.insert(id);
    }
    g.bench_function(format!("IdSet::insert/{name}, into a 1M-id set"), |b| {
        window_fill(
            b,
            ids.len(),
            || warm.clone(),
            |set, i| {
                black_box(set.insert(black_box(ids[i])));
            },
        )
    });
    g.bench_function(
        format!("BatchedIdSet::insert/{name}, into a 1M-id set"),
        |b| {
            window_fill_then(
                b,
                ids.len(),
                || {
                    let mut set = BatchedIdSet::new();
                    for id in warm.iter() {
                        set.insert(id);
                    }
                    set.flush();
                    set
                },
                |set, i| set.insert(black_box(ids[i])),
                |set| {
                    black_box(set.set());
                },
            )
        },
    );
    g.finish();
}

fn merge(c: &mut Criterion) {
    let shard = |ids: Vec<i64>| {
        let mut set = IdSet::new();
        for id in ids {
            set.insert(id);
        }
        set
    };
    let sparse = (
        shard(random_u32_ids(WINDOW_IDS, 4)),
        shard(random_u32_ids(WINDOW_IDS, 5)),
    );
    // For contrast: dense shards (1M consecutive ids each, half of them shared).
    let n = WINDOW_IDS as i64;
    let dense = (shard((0..n).collect()), shard((n / 2..n / 2 + n).collect()));
    let mut g = c.benchmark_group("merge");
    g.sample_size(10);
    for (kind, (a, b)) in [("random 0..2^32", &sparse), ("dense", &dense)] {
        merge_group(&mut g, kind, a, b);
    }
    g.finish();
}

fn merge_group(g: &mut BenchmarkGroup<'_, WallTime>, kind: &str, a: &IdSet, b: &IdSet) {
    // The four ways agree (checked once, outside the timing).
    let mut pairwise = IdSet::new();
    pairwise.union_with(a);
    pairwise.union_with(b);
    assert_eq!(IdSet::union_all(vec![a.clone(), b.clone()]), pairwise);
    assert_eq!(
        IdSet::union_all_multiops(vec![a.clone(), b.clone()]),
        pairwise
    );
    g.throughput(Throughput::Elements(a.len() + b.len()));

    // What the collector uses.
    g.bench_function(
        format!("IdSet::union_all (2 x 1M, owned)/{kind}"),
        |bench| {
            bench.iter_batched(
                || vec![a.clone(), b.clone()],
                |parts| black_box(IdSet::union_all(parts)),
                BatchSize::LargeInput,
            )
        },
    );
    // roaring's multi-way union, which `union_all` used before.
    g.bench_function(
        format!("IdSet::union_all_multiops (2 x 1M, owned)/{kind}"),
        |bench| {
            bench.iter_batched(
                || vec![a.clone(), b.clone()],
                |parts| black_box(IdSet::union_all_multiops(parts)),
                BatchSize::LargeInput,
            )
        },
    );
    g.bench_function(
        format!("union_with pairwise, into the first (owned)/{kind}"),
        |bench| {
            bench.iter_batched(
                || (a.clone(), b.clone()),
                |(mut acc, other)| {
                    acc.union_with(&other);
                    black_box(acc)
                },
                BatchSize::LargeInput,
            )
        },
    );
    g.bench_function(
        format!("union_with pairwise, from empty (borrowed)/{kind}"),
        |bench| {
            bench.iter_with_large_drop(|| {
                let mut acc = IdSet::new();
                for part in [a, b] {
                    acc.union_with(black_box(part));
                }
                acc
            })
        },
    );
}

criterion_group!(benches, request, insert, merge);
criterion_main!(benches);
