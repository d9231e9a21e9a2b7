//! The id set (`verve::ids`) against the naive alternatives, for four id distributions
//! (`examples/support/dist.rs`: random over the whole i64 range, random in 0..2^32,
//! sequential, snowflake-like ids of one 60 s window), 1M ids each:
//!
//! - `record`: what a window's ids cost to collect, one iteration = 1M ids into a fresh
//!   structure: `IdBuffer::insert` x 1M then `into_set` (what a shard and the collector do,
//!   minus the locks; `into_set` unions the 489 runs of 2048) and `IdBuffer::insert` alone
//!   (the request path's share: runs packed, not merged) vs `HashSet<u64>::insert` vs a
//!   `Vec<u64>` (push, then sort and dedup at the end) vs `RoaringTreemap::insert` vs the same
//!   treemap filled with sorted batches of 2048 (verve's set before the block format, for ids
//!   outside 0..2^32).
//! - `absorb`: a 1M-id window set taking in one second of 100K more ids (the next ones of
//!   the same stream): `IdSet::union` of the window and the second's set; what
//!   `Shards::absorb` does (`Union` of the second's runs of 2048, then `IdSet::union`);
//!   `RoaringTreemap |=`; `HashSet::extend`; and three prototypes: the runs decoded into one
//!   `Vec`, sorted and packed, then `IdSet::union` (instead of `Union`); only the second's
//!   ids that the window lacks (`IdSet::contains`), packed into a set of their own (the
//!   window's set is not re-packed: a two-level window set); both sets' keys merged into a
//!   `Vec` and packed once with `IdSet::from_sorted_keys`.
//! - `wire`: serializing and deserializing 1M ids: `IdSet::serialize_into` /
//!   `IdSet::deserialize` vs roaring's portable treemap format.
//!
//! Memory is not criterion's job, but the bench prints (stderr) the heap bytes per id of each
//! structure once at start, counted by a global allocator that only counts while it is told
//! to (so the timed code pays one relaxed load per allocation).
//!
//! Run: `cargo bench --bench ids` (all, about 10 min), `cargo bench --bench ids -- absorb`
//! (one group), `cargo bench --bench ids -- "random-i64"` (one distribution). Results, with
//! their dates and conditions: `perf/RESULTS.md`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashSet;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BatchSize, BenchmarkGroup, Criterion, SamplingMode, Throughput,
};
use roaring::RoaringTreemap;

use verve::ids::{from_key, to_key, IdBuffer, IdSet, BATCH};

#[path = "../examples/support/rng.rs"]
mod rng;

#[path = "../examples/support/dist.rs"]
mod dist;
use dist::Dist;

/// Ids of a window in every group.
const WINDOW: u64 = 1_000_000;

/// Ids of the second a window absorbs.
const SECOND: u64 = 100_000;

const SEED: u64 = 0x9e37_79b9_7f4a_7c15;

/// The system allocator; counts live bytes while [`COUNTING`] is set.
struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to `System` unchanged; only a counter is updated.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() && COUNTING.load(Relaxed) {
            LIVE.fetch_add(layout.size(), Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        if COUNTING.load(Relaxed) {
            LIVE.fetch_sub(layout.size(), Relaxed);
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() && COUNTING.load(Relaxed) {
            LIVE.fetch_add(new_size, Relaxed);
            LIVE.fetch_sub(layout.size(), Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Heap bytes that `build`'s result holds (what it allocated and did not free), and the
/// result. Only allocations made and freed while counting are seen, so `build` must not
/// free anything allocated before.
fn heap_of<T>(build: impl FnOnce() -> T) -> (usize, T) {
    LIVE.store(0, Relaxed);
    COUNTING.store(true, Relaxed);
    let value = black_box(build());
    COUNTING.store(false, Relaxed);
    (LIVE.load(Relaxed), value)
}

/// The ids of one distribution: a window's and the second after it.
struct Case {
    dist: Dist,
    window: Vec<i64>,
    second: Vec<i64>,
}

fn cases() -> Vec<Case> {
    Dist::ALL
        .into_iter()
        .map(|dist| {
            let mut window: Vec<i64> = dist.ids(WINDOW + SECOND, SEED).collect();
            let second = window.split_off(WINDOW as usize);
            Case {
                dist,
                window,
                second,
            }
        })
        .collect()
}

// The structures as each benchmark builds them.

fn id_set(ids: &[i64]) -> IdSet {
    let mut buffer = IdBuffer::new();
    for &id in ids {
        buffer.insert(black_box(id));
    }
    buffer.into_set()
}

fn hash_set(ids: &[i64]) -> HashSet<u64> {
    let mut set = HashSet::new();
    for &id in ids {
        set.insert(to_key(black_box(id)));
    }
    set
}

fn sorted_vec(ids: &[i64]) -> Vec<u64> {
    let mut keys = Vec::new();
    for &id in ids {
        keys.push(to_key(black_box(id)));
    }
    keys.sort_unstable();
    keys.dedup();
    keys
}

fn treemap(ids: &[i64]) -> RoaringTreemap {
    let mut tree = RoaringTreemap::new();
    for &id in ids {
        tree.insert(to_key(black_box(id)));
    }
    tree
}

fn treemap_batched(ids: &[i64]) -> RoaringTreemap {
    let mut tree = RoaringTreemap::new();
    let mut pending = Vec::with_capacity(BATCH);
    for &id in ids {
        pending.push(to_key(black_box(id)));
        if pending.len() == BATCH {
            pending.sort_unstable();
            tree.extend(pending.drain(..));
        }
    }
    pending.sort_unstable();
    tree.extend(pending.drain(..));
    tree
}

fn roaring_bytes(tree: &RoaringTreemap) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(tree.serialized_size());
    tree.serialize_into(&mut bytes).expect("into a Vec");
    bytes
}

/// (d): heap and wire bytes per id of each structure, once, on stderr.
fn print_memory(cases: &[Case]) {
    eprintln!();
    eprintln!(
        "heap bytes per distinct id after 1M ids (counting allocator), and wire bytes per id:"
    );
    eprintln!(
        "{:<12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>11} {:>11} {:>11}",
        "ids",
        "distinct",
        "IdSet",
        "HashSet",
        "Vec",
        "treemap",
        "heap_bytes()",
        "IdSet wire",
        "roaring wire"
    );
    for case in cases {
        let ids = &case.window;
        let (set_heap, set) = heap_of(|| id_set(ids));
        let (hash_heap, hash) = heap_of(|| hash_set(ids));
        drop(hash);
        let (vec_heap, keys) = heap_of(|| sorted_vec(ids));
        drop(keys);
        let (tree_heap, tree) = heap_of(|| treemap(ids));
        assert_eq!(tree.len(), set.len());
        let n = set.len() as f64;
        eprintln!(
            "{:<12} {:>9} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>11.2} {:>11.2} {:>11.2}",
            case.dist.name(),
            set.len(),
            set_heap as f64 / n,
            hash_heap as f64 / n,
            vec_heap as f64 / n,
            tree_heap as f64 / n,
            set.heap_bytes() as f64 / n,
            set.serialized_size() as f64 / n,
            tree.serialized_size() as f64 / n,
        );
    }
    eprintln!();
}

/// Settings for groups whose iteration takes from milliseconds to a second or two: a flat
/// sampling (every sample the same number of iterations), 10 samples.
fn group<'c>(c: &'c mut Criterion, name: &str, elements: u64) -> BenchmarkGroup<'c, WallTime> {
    let mut g = c.benchmark_group(name);
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(10);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements(elements));
    g
}

/// (a) 1M ids into a fresh structure; the structure is dropped outside the timing.
fn record(c: &mut Criterion, cases: &[Case]) {
    let mut g = group(c, "record (1M ids)", WINDOW);
    for case in cases {
        let (ids, d) = (&case.window[..], case.dist.name());
        g.bench_function(format!("IdBuffer::insert + into_set/{d}"), |b| {
            b.iter_with_large_drop(|| id_set(ids))
        });
        // The request path's share alone: append, and sort and pack every 2048 ids.
        g.bench_function(format!("IdBuffer::insert, runs not merged/{d}"), |b| {
            b.iter_with_large_drop(|| {
                let mut buffer = IdBuffer::new();
                for &id in ids {
                    buffer.insert(black_box(id));
                }
                let mut runs = Vec::new();
                buffer.take_runs(&mut runs);
                runs
            })
        });
        g.bench_function(format!("HashSet<u64>::insert/{d}"), |b| {
            b.iter_with_large_drop(|| hash_set(ids))
        });
        g.bench_function(format!("Vec<u64> push, sort, dedup/{d}"), |b| {
            b.iter_with_large_drop(|| sorted_vec(ids))
        });
        g.bench_function(format!("RoaringTreemap::insert/{d}"), |b| {
            b.iter_with_large_drop(|| treemap(ids))
        });
        g.bench_function(format!("RoaringTreemap, sorted batches of 2048/{d}"), |b| {
            b.iter_with_large_drop(|| treemap_batched(ids))
        });
    }
    g.finish();
}

/// (b) A 1M-id window set takes in a second of 100K ids. The inputs are cloned outside the
/// timing; the result is dropped outside it.
fn absorb(c: &mut Criterion, cases: &[Case]) {
    let mut g = group(c, "absorb (100K into 1M)", SECOND);
    for case in cases {
        let d = case.dist.name();
        let window = id_set(&case.window);
        let second = id_set(&case.second);
        let mut buffer = IdBuffer::new();
        for &id in &case.second {
            buffer.insert(id);
        }
        let mut runs = Vec::new();
        buffer.take_runs(&mut runs);
        let expected = IdSet::union(window.clone(), second.clone(), None);
        let w_tree = treemap(&case.window);
        let s_tree = treemap(&case.second);
        let w_hash = hash_set(&case.window);

        g.bench_function(format!("IdSet::union/{d}"), |b| {
            b.iter_batched(
                || (window.clone(), second.clone()),
                |(w, s)| IdSet::union(w, s, None),
                BatchSize::LargeInput,
            )
        });
        g.bench_function(
            format!("Shards::absorb's merge (Union of runs, then union)/{d}"),
            |b| {
                b.iter_batched(
                    || (window.clone(), runs.clone()),
                    |(w, runs)| IdSet::union(w, IdSet::union_all(runs), None),
                    BatchSize::LargeInput,
                )
            },
        );
        g.bench_function(format!("RoaringTreemap |=/{d}"), |b| {
            b.iter_batched(
                || (w_tree.clone(), s_tree.clone()),
                |(mut w, s)| {
                    w |= s;
                    w
                },
                BatchSize::LargeInput,
            )
        });
        g.bench_function(format!("HashSet::extend/{d}"), |b| {
            b.iter_batched(
                || w_hash.clone(),
                |mut w| {
                    w.extend(case.second.iter().map(|&id| to_key(id)));
                    w
                },
                BatchSize::LargeInput,
            )
        });
        // The runs merged by one sort instead of pairwise unions.
        let sorted_runs = |w: IdSet, runs: &[IdSet]| {
            let mut keys = Vec::with_capacity(runs.iter().map(|r| r.len() as usize).sum());
            for run in runs {
                keys.extend(run.keys());
            }
            keys.sort_unstable();
            keys.dedup();
            IdSet::union(w, IdSet::from_sorted_keys(&keys), None)
        };
        assert_eq!(sorted_runs(window.clone(), &runs), expected);
        g.bench_function(
            format!("prototype: runs sorted as one Vec, then union/{d}"),
            |b| {
                b.iter_batched(
                    || window.clone(),
                    |w| sorted_runs(w, &runs),
                    BatchSize::LargeInput,
                )
            },
        );
        // The window set left alone: only the second's new ids, found with `contains`, go
        // into a set of their own (what a two-level window set would do each second).
        let new_ids = |w: &IdSet| {
            let keys: Vec<u64> = second
                .keys()
                .filter(|&k| !w.contains(from_key(k)))
                .collect();
            IdSet::from_sorted_keys(&keys)
        };
        assert_eq!(new_ids(&window).len() + window.len(), expected.len());
        g.bench_function(
            format!("prototype: the second's new ids only (contains)/{d}"),
            |b| b.iter_with_large_drop(|| new_ids(black_box(&window))),
        );
        // What re-packing every key costs when done in bulk rather than key by key.
        let merged = merge_via_vec(window.clone(), &second);
        assert_eq!(merged, expected);
        g.bench_function(
            format!("prototype: keys merged into a Vec, packed once/{d}"),
            |b| {
                b.iter_batched(
                    || window.clone(),
                    |w| merge_via_vec(w, &second),
                    BatchSize::LargeInput,
                )
            },
        );
    }
    g.finish();
}

/// `a ∪ b` by decoding both into one sorted `Vec` and packing it once.
fn merge_via_vec(a: IdSet, b: &IdSet) -> IdSet {
    let mut keys = Vec::with_capacity((a.len() + b.len()) as usize);
    let (mut xs, mut ys) = (a.keys().peekable(), b.keys().peekable());
    loop {
        let next = match (xs.peek(), ys.peek()) {
            (Some(&x), Some(&y)) if x < y => xs.next(),
            (Some(&x), Some(&y)) if x == y => {
                ys.next();
                xs.next()
            }
            (Some(_), Some(_)) => ys.next(),
            (Some(_), None) => xs.next(),
            (None, Some(_)) => ys.next(),
            (None, None) => break,
        };
        keys.push(next.expect("peeked"));
    }
    drop(xs);
    drop(a);
    IdSet::from_sorted_keys(&keys)
}

/// (c) 1M ids to bytes and back.
fn wire(c: &mut Criterion, cases: &[Case]) {
    let mut g = group(c, "wire (1M ids)", WINDOW);
    for case in cases {
        let d = case.dist.name();
        let set = id_set(&case.window);
        let mut tree = RoaringTreemap::new();
        tree.extend(set.keys());
        let mut ours = Vec::new();
        set.serialize_into(&mut ours);
        let theirs = roaring_bytes(&tree);
        assert_eq!(IdSet::deserialize(&ours).as_ref(), Ok(&set));
        assert_eq!(
            RoaringTreemap::deserialize_from(&theirs[..]).ok(),
            Some(tree.clone())
        );

        g.bench_function(format!("IdSet::serialize_into/{d}"), |b| {
            b.iter_with_large_drop(|| {
                let mut bytes = Vec::new();
                set.serialize_into(&mut bytes);
                bytes
            })
        });
        g.bench_function(format!("IdSet::deserialize/{d}"), |b| {
            b.iter_with_large_drop(|| IdSet::deserialize(black_box(&ours)).expect("valid"))
        });
        g.bench_function(format!("RoaringTreemap::serialize_into/{d}"), |b| {
            b.iter_with_large_drop(|| roaring_bytes(&tree))
        });
        g.bench_function(format!("RoaringTreemap::deserialize_from/{d}"), |b| {
            b.iter_with_large_drop(|| {
                RoaringTreemap::deserialize_from(black_box(&theirs[..])).expect("valid")
            })
        });
    }
    g.finish();
}

fn all(c: &mut Criterion) {
    let cases = cases();
    print_memory(&cases);
    record(c, &cases);
    absorb(c, &cases);
    wire(c, &cases);
}

criterion_group!(benches, all);
criterion_main!(benches);
