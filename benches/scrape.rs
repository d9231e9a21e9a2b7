//! What a `/metrics` scrape costs as the open window grows: the page verve renders now
//! (`Metrics::render`: one snapshot of the counters and of the gauges the collector keeps),
//! beside the naive scrape that counts the window itself (the union of every shard's ids,
//! what verve did before), for windows of 10 000 and 1 000 000 random 64-bit ids. The first
//! stays flat; the second grows with the window. Figures in `perf/RESULTS.md`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use verve::endpoints::EndpointPolicy;
use verve::ids::IdSet;
use verve::metrics::Metrics;
use verve::shards::Shards;

/// Workers (shards) of a 2-core machine.
const SHARDS: usize = 2;

/// A window of `n` random 64-bit ids recorded on [`SHARDS`] shards and merged, as the
/// collector leaves it; also the shards' sets, as the naive scrape would union them.
fn window(n: u64) -> (Metrics, Vec<IdSet>) {
    let shards = Shards::new(SHARDS, EndpointPolicy::default(), 10);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut parts = vec![Vec::new(); SHARDS];
    for i in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let shard = (i % SHARDS as u64) as usize;
        shards.record(shard, 1, x as i64, None).unwrap();
        parts[shard].push(x as i64);
    }
    let metrics = Metrics::new(SHARDS);
    let unique = shards.absorb(1).unwrap().unique;
    metrics
        .window_unique_ids
        .store(unique, std::sync::atomic::Ordering::Relaxed);
    (metrics, parts.into_iter().map(IdSet::from_ids).collect())
}

fn scrape(c: &mut Criterion) {
    let mut g = c.benchmark_group("scrape");
    for n in [10_000u64, 1_000_000] {
        let (metrics, parts) = window(n);
        g.bench_function(format!("Metrics::render/{n} ids"), |b| {
            b.iter(|| black_box(metrics.render(64)))
        });
        g.bench_function(format!("naive: union of the shards/{n} ids"), |b| {
            b.iter_batched(
                || parts.clone(),
                |parts| black_box(IdSet::union_all(parts).len()),
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, scrape);
criterion_main!(benches);
