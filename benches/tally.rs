//! Counting a window's shipments by partition (`verve::cluster::tally`) against counting them
//! whole as the leader did before partitions (decode every shipment, then one k-way merge,
//! `count_union`), on 10 instances x 1M random i64 ids, each instance shipping its ids in 60
//! deltas (`examples/leader_merge --dist random-i64 --shipments 60` makes the same shape):
//!
//! - `partition tally (10M ids)`: the 600 shipments decoded and counted whole with
//!   `count_union`; the same 10M ids cut into 16 partitions (`ids::partition::split` of each
//!   delta), 600 shipments per partition, counted per partition with `Tally`, with
//!   `count_union`, and with `Union` (the union built, pairwise).
//! - `crafted shipment`: a 904 KiB shipment of roaring run containers standing for 2^32
//!   values, refused by a `Tally` with 16 MiB of budget, against `IdSet::deserialize`
//!   (bound of `MAX_DECODED_IDS`), which expands it before refusing it.
//!
//! Memory is not criterion's job: the bench prints (stderr) once at start the peak heap of one
//! partition's tally, counted by a global allocator that only counts while told to, beside
//! the bytes of that partition's shipments. It also prints the thread CPU time (the least of
//! 5 runs) of the whole count and of the 16 tallies, which a machine shared with other work
//! skews less than criterion's wall-clock time.
//!
//! Run: `cargo bench --bench tally` (about 2 min); results with their dates and conditions in
//! `perf/RESULTS.md`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BatchSize, BenchmarkGroup, Criterion, SamplingMode, Throughput,
};

use verve::budget::IdMemory;
use verve::cluster::tally::Tally;
use verve::ids::partition::{split, PARTITIONS};
use verve::ids::{count_union, IdSet, Union};

#[path = "../examples/support/rng.rs"]
mod rng;
use rng::Rng;

const INSTANCES: u64 = 10;
/// Ids of each instance's window.
const IDS: u64 = 1_000_000;
/// Deltas each instance ships its window in (one a second of a 60 s window).
const DELTAS: u64 = 60;

/// The system allocator; counts live bytes, and their peak, while [`COUNTING`] is set.
struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(bytes: usize) {
    let live = LIVE.fetch_add(bytes, Relaxed) + bytes;
    PEAK.fetch_max(live, Relaxed);
}

// SAFETY: every call is forwarded to `System` unchanged; only counters are updated.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() && COUNTING.load(Relaxed) {
            grew(layout.size());
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
            grew(new_size);
            LIVE.fetch_sub(layout.size(), Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The peak of the heap bytes `run` allocated (those it freed included), and its result.
/// Allocations freed while counting must have been made while counting.
fn peak_of<T>(run: impl FnOnce() -> T) -> (usize, T) {
    LIVE.store(0, Relaxed);
    PEAK.store(0, Relaxed);
    COUNTING.store(true, Relaxed);
    let value = black_box(run());
    COUNTING.store(false, Relaxed);
    (PEAK.load(Relaxed), value)
}

/// The window's shipments: whole (instance by instance, delta by delta, in the order the
/// instances push them together) and cut into partitions (`[partition][shipment]`).
struct Shipments {
    whole: Vec<Vec<u8>>,
    partitions: Vec<Vec<Vec<u8>>>,
}

fn shipments() -> Shipments {
    let mut deltas: Vec<Vec<IdSet>> = Vec::new();
    for k in 0..INSTANCES {
        let mut rng =
            Rng(0x9e37_79b9_7f4a_7c15_u64.wrapping_mul(2 * k + 3) ^ 0x5851_f42d_4c95_7f2d);
        let ids: Vec<i64> = (0..IDS).map(|_| rng.next() as i64).collect();
        deltas.push(
            (0..DELTAS)
                .map(|d| {
                    let part = &ids[(d * IDS / DELTAS) as usize..((d + 1) * IDS / DELTAS) as usize];
                    IdSet::from_ids(part.iter().copied())
                })
                .collect(),
        );
    }
    let mut whole = Vec::new();
    let mut partitions = vec![Vec::new(); PARTITIONS];
    for d in 0..DELTAS as usize {
        for instance in &deltas {
            let delta = &instance[d];
            whole.push(bytes_of(delta));
            for (p, part) in split(delta).iter().enumerate() {
                partitions[p].push(bytes_of(part));
            }
        }
    }
    Shipments { whole, partitions }
}

fn bytes_of(set: &IdSet) -> Vec<u8> {
    let mut bytes = Vec::new();
    set.serialize_into(&mut bytes);
    bytes
}

fn decoded(shipments: &[Vec<u8>]) -> Vec<IdSet> {
    shipments
        .iter()
        .map(|s| IdSet::deserialize(s).expect("valid"))
        .collect()
}

fn tally(shipments: &[Vec<u8>]) -> u64 {
    let mut tally = Tally::new(IdMemory::unlimited());
    for s in shipments {
        tally.add(s);
    }
    tally.finish()
}

/// The dense shipment an attacker can write: one segment of 65 536 roaring run containers,
/// 2^32 consecutive values in ~904 KiB.
fn crafted() -> Vec<u8> {
    let mut bitmap = roaring::RoaringBitmap::new();
    bitmap.insert_range(..);
    bitmap.optimize();
    let mut bytes = Vec::new();
    bytes.extend_from_slice(b"VRVI");
    bytes.extend_from_slice(&[2, 0, 0, 0]);
    bytes.extend_from_slice(&bitmap.len().to_le_bytes());
    bytes.extend_from_slice(&1u32.to_le_bytes());
    bytes.push(1);
    bytes.extend_from_slice(&0u32.to_le_bytes());
    bytes.extend_from_slice(&(bitmap.serialized_size() as u32).to_le_bytes());
    bitmap.serialize_into(&mut bytes).expect("to a Vec");
    bytes
}

/// Peak heap of one partition's tally beside its shipments' bytes, once, on stderr.
fn print_memory(s: &Shipments) {
    eprintln!();
    eprintln!("one partition's tally (counting allocator, shipments held outside it):");
    for p in [0, PARTITIONS - 1] {
        let shipments = &s.partitions[p];
        let bytes: usize = shipments.iter().map(Vec::len).sum();
        let (peak, count) = peak_of(|| tally(shipments));
        eprintln!(
            "partition {p}: {} shipments, {bytes} bytes, {count} values; tally's peak heap {peak} bytes ({:.2}x the shipments, {:.2} bytes per value)",
            shipments.len(),
            peak as f64 / bytes as f64,
            peak as f64 / count as f64,
        );
    }
    let bytes = crafted();
    let started = Instant::now();
    let mut t = Tally::new(IdMemory::new(16 << 20));
    t.add(&bytes);
    eprintln!(
        "crafted shipment of {} bytes refused in {:?}: {:?}",
        bytes.len(),
        started.elapsed(),
        t.skipped()
    );
    eprintln!();
}

/// This thread's CPU time.
fn cpu() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid, writable timespec; the clock id is a constant Linux knows.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// The least CPU time of 5 runs of `run`.
fn least_cpu<T>(mut run: impl FnMut() -> T) -> Duration {
    (0..5)
        .map(|_| {
            let started = cpu();
            black_box(run());
            cpu() - started
        })
        .min()
        .expect("5 runs")
}

/// Whole against partitioned, in CPU time, once, on stderr.
fn print_cpu(s: &Shipments) {
    let whole = least_cpu(|| count_union(&decoded(&s.whole)));
    let tallies = least_cpu(|| s.partitions.iter().map(|p| tally(p)).sum::<u64>());
    let heaps = least_cpu(|| {
        s.partitions
            .iter()
            .map(|p| count_union(&decoded(p)))
            .sum::<u64>()
    });
    eprintln!(
        "thread CPU time, least of 5: whole, deserialize + count_union {whole:?}; 16 partitions, Tally {tallies:?} ({:.2}x faster); 16 partitions, deserialize + count_union {heaps:?}",
        whole.as_secs_f64() / tallies.as_secs_f64()
    );
    eprintln!();
}

fn group<'c>(c: &'c mut Criterion, name: &str, elements: u64) -> BenchmarkGroup<'c, WallTime> {
    let mut g = c.benchmark_group(name);
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(10);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements(elements));
    g
}

fn partition_tally(c: &mut Criterion, s: &Shipments) {
    let total = INSTANCES * IDS;
    let expected = count_union(&decoded(&s.whole));
    let per_partition: u64 = s.partitions.iter().map(|p| tally(p)).sum();
    assert_eq!(per_partition, expected);
    let mut g = group(c, "partition tally (10M ids)", total);
    g.bench_function("whole: deserialize + count_union", |b| {
        b.iter(|| count_union(&decoded(black_box(&s.whole))))
    });
    g.bench_function("whole: count_union alone", |b| {
        b.iter_batched(
            || decoded(&s.whole),
            |sets| count_union(&sets),
            BatchSize::PerIteration,
        )
    });
    g.bench_function("16 partitions: Tally", |b| {
        b.iter(|| {
            s.partitions
                .iter()
                .map(|p| tally(black_box(p)))
                .sum::<u64>()
        })
    });
    g.bench_function("16 partitions: deserialize + count_union", |b| {
        b.iter(|| {
            s.partitions
                .iter()
                .map(|p| count_union(&decoded(black_box(p))))
                .sum::<u64>()
        })
    });
    g.bench_function("16 partitions: deserialize + Union", |b| {
        b.iter(|| {
            s.partitions
                .iter()
                .map(|p| {
                    let mut union = Union::default();
                    for set in decoded(black_box(p)) {
                        union.add(set);
                    }
                    union.into_set().len()
                })
                .sum::<u64>()
        })
    });
    g.finish();
}

fn crafted_shipment(c: &mut Criterion) {
    let bytes = crafted();
    let mut g = c.benchmark_group("crafted shipment (2^32 values, 904 KiB)");
    g.sample_size(10);
    g.bench_function("Tally::add, 16 MiB budget", |b| {
        b.iter(|| {
            let mut t = Tally::new(IdMemory::new(16 << 20));
            t.add(black_box(&bytes));
            assert_eq!(t.skipped().too_large, 1);
        })
    });
    g.bench_function("IdSet::deserialize (MAX_DECODED_IDS)", |b| {
        b.iter(|| assert!(IdSet::deserialize(black_box(&bytes)).is_err()))
    });
    g.finish();
}

fn all(c: &mut Criterion) {
    let s = shipments();
    print_memory(&s);
    print_cpu(&s);
    partition_tally(c, &s);
    crafted_shipment(c);
}

criterion_group!(benches, all);
criterion_main!(benches);
