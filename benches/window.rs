//! What the collector's once-a-second absorb costs as the open window grows: a second of
//! 100K new random 64-bit ids (as the request path buffers them: sorted runs of 2048) merged
//! into a window of 1M and of 10M ids, by
//!
//! - `Levels::absorb`: verve's window now: the new ids are checked against the window's
//!   disjoint levels, added to level 0, and each merge in progress between levels advances by
//!   a step paid for by the new ids (`src/ids/levels.rs`);
//! - `IdSet::union` (after `Union` of the runs): the window as one set, what an absorb did
//!   before, which re-packs every block a new id falls into and rebuilds the block vector.
//!
//! Each iteration absorbs the next second's ids into the same window, which so grows by
//! 100K per iteration (a few percent over a run), as a real window does; the second's runs
//! are built outside the timing. The first should stay flat from 1M to 10M, the second
//! grows with the window. Figures in `perf/RESULTS.md`.
//!
//! Run: `cargo bench --bench window` (about 3 min, most of it filling the 10M windows).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use verve::ids::{IdBuffer, IdSet, Levels};

/// Ids of one second.
const SECOND: u64 = 100_000;

/// A stream of random 64-bit ids (xorshift), each second's ids taken in turn.
struct Ids(u64);

impl Ids {
    /// The next second's ids, as the request path leaves them: sorted runs.
    fn second(&mut self) -> Vec<IdSet> {
        let mut buffer = IdBuffer::new();
        for _ in 0..SECOND {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            buffer.insert(self.0 as i64);
        }
        let mut runs = Vec::new();
        buffer.take_runs(&mut runs);
        runs
    }
}

/// `iters` absorbs, each of a new second's ids, timed one by one.
fn timed(iters: u64, ids: &mut Ids, mut absorb: impl FnMut(Vec<IdSet>)) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let runs = ids.second();
        let t0 = Instant::now();
        absorb(runs);
        total += t0.elapsed();
    }
    total
}

fn window(c: &mut Criterion) {
    let mut g = c.benchmark_group("absorb 100K random ids");
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(10);
    g.warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements(SECOND));
    for n in [1_000_000u64, 10_000_000] {
        let mut ids = Ids(0x9e37_79b9_7f4a_7c15);
        let mut levels = Levels::new();
        for _ in 0..n / SECOND {
            levels.absorb(ids.second(), None);
        }
        g.bench_function(format!("Levels::absorb/window of {n}"), |b| {
            b.iter_custom(|iters| {
                timed(iters, &mut ids, |runs| {
                    black_box(levels.absorb(runs, None));
                })
            })
        });
        drop(levels);
        let mut ids = Ids(0x9e37_79b9_7f4a_7c15);
        let mut set = IdSet::new();
        for _ in 0..n / SECOND {
            set = IdSet::union(set, IdSet::union_all(ids.second()), None);
        }
        g.bench_function(format!("IdSet::union (before)/window of {n}"), |b| {
            b.iter_custom(|iters| {
                timed(iters, &mut ids, |runs| {
                    let second = IdSet::union_all(runs);
                    set = IdSet::union(std::mem::take(&mut set), second, None);
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, window);
criterion_main!(benches);
