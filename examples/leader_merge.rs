//! What the leader of a window does in cluster mode, timed: N instances (default 10) each
//! hold M ids (default 1 million, random over 0..2^32, or with `--dist random-i64` over the
//! whole i64 range), ship them the way `src/cluster/ship.rs` does (`merge::serialize`: the id
//! set's compact format), and the leader unions every shipment:
//!
//! - **memory**: what `verve::cluster::merge::count_of_shipments` does with the blobs, without
//!   Redis: `IdSet::deserialize` of each, then `verve::ids::count_union` of them all (a k-way
//!   merge that counts); decoding and counting are timed apart.
//! - **union**: the same, but building the union with `verve::ids::Union` (pairwise merges of
//!   sets of similar size), as the leader did before it only counted: the naive alternative.
//! - **redis** (only with `REDIS_URL` set, e.g. `redis://127.0.0.1:6379`): the blobs are
//!   `RPUSH`ed to `Keys::new(prefix).ids(window_start)` (the window's list of shipments, see
//!   `src/cluster/store.rs`), then the whole `count_of_shipments` runs against that Redis on
//!   a connection made by `verve::cluster::conn::connect` (verve's own timeouts). Also timed:
//!   the `RPUSH`es, and `store::fetch` alone (the `LRANGE` pages, no decoding). The key is
//!   under a prefix of its own (`verve-leader-merge-<pid>`, or `--prefix`), expires after
//!   10 minutes and is deleted at the end.
//!
//! Each phase is run RUNS times (default 5) on the same blobs; the figures are the median,
//! min and max. Dropping the decoded sets or the union (as the leader does once it has the
//! count) is timed apart (`release_ms`) and not in `total_ms`.
//!
//! ```sh
//! cargo run --release --example leader_merge                       # 10 x 1M random u32 ids, no overlap, 5 runs
//! cargo run --release --example leader_merge -- --dist random-i64  # 10 x 1M random i64 ids
//! cargo run --release --example leader_merge -- --instances 10 --ids 1000000 --overlap 0.5 --runs 5
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --release --example leader_merge
//! ```
//!
//! `--overlap F` (0 to 1): `F * M` of every instance's ids come from one shared stream, so
//! all instances hold them (as when a load balancer spreads one client's repeated ids over
//! the instances); the rest come from a stream of the instance's own.
//!
//! `--push-only` (with `REDIS_URL`): appends the blobs to the window's list of shipments of
//! `--prefix` and `--window-start` and leaves them there (10 minutes), without timing
//! anything: to make a running verve instance lead a window of that size.
//!
//! `--shipments K` (default 1): each instance ships its ids in K parts instead of one, each
//! part without the ids of the parts before it, as verve's deltas (one per second: K = 60 for
//! a 60 s window). The list then holds N x K blobs in the order the instances would push them
//! together (every instance's first part, then every second part, ...).
//!
//! Prints one `SHIPMENT` line per instance, a `RESULT` line per run and mode, and one
//! `SUMMARY` line per mode (`perf/cluster.sh` parses them); timings `median,min,max` in ms.

use std::hint::black_box;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use verve::cluster::conn::{self, Target};
use verve::cluster::merge::{count_of_shipments, serialize};
use verve::cluster::store::{self, Keys};
use verve::ids::{count_union, IdBuffer, IdSet, Union};

#[path = "support/rng.rs"]
mod rng;
use rng::Rng;

#[path = "support/dist.rs"]
mod dist;
use dist::Dist;

struct Options {
    dist: Dist,
    instances: usize,
    ids: u64,
    overlap: f64,
    shipments: u64,
    runs: usize,
    prefix: String,
    window_start: u64,
    push_only: bool,
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        dist: Dist::RandomU32,
        instances: 10,
        ids: 1_000_000,
        overlap: 0.0,
        shipments: 1,
        runs: 5,
        prefix: format!("verve-leader-merge-{}", std::process::id()),
        window_start: 1_800_000_000,
        push_only: false,
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
            "--runs" => o.runs = value.parse().map_err(|_| bad())?,
            "--prefix" => o.prefix = value,
            "--window-start" => o.window_start = value.parse().map_err(|_| bad())?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if o.instances == 0 || o.runs == 0 || o.ids == 0 || o.shipments == 0 {
        return Err("--instances, --ids, --shipments and --runs must be at least 1".into());
    }
    if o.shipments > o.ids {
        return Err("--shipments must be at most --ids".into());
    }
    if !(0.0..=1.0).contains(&o.overlap) {
        return Err("--overlap must be between 0 and 1".into());
    }
    Ok(o)
}

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

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `median,min,max` of `xs` (not empty), in ms with 2 decimals.
fn stats(xs: &[f64]) -> String {
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

/// The leader's merge without Redis: (count, what to drop, time decoding, time merging, total).
/// `build` false counts as `count_of_shipments` does; true builds the union with [`Union`].
fn merge_in_memory(
    blobs: &[Vec<u8>],
    build: bool,
) -> (u64, Vec<IdSet>, Duration, Duration, Duration) {
    let (mut de, mut un) = (Duration::ZERO, Duration::ZERO);
    let started = Instant::now();
    let mut union = Union::default();
    let mut sets = Vec::new();
    for blob in blobs {
        let t0 = Instant::now();
        let set = IdSet::deserialize(black_box(&blob[..])).expect("readable blob");
        let t1 = Instant::now();
        if build {
            union.add(set);
        } else {
            sets.push(set);
        }
        de += t1 - t0;
        un += t1.elapsed();
    }
    let t0 = Instant::now();
    let count = if build {
        let union = union.into_set();
        let count = union.len();
        sets.push(union);
        count
    } else {
        count_union(&sets)
    };
    un += t0.elapsed();
    (count, sets, de, un, started.elapsed())
}

fn main() -> ExitCode {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("leader_merge: {e}");
            eprintln!(
                "usage: leader_merge [--instances N] [--ids M] [--overlap F] [--shipments K] \
                 [--runs R] [--dist random-u32|random-i64] [--prefix P] [--window-start S] \
                 [--push-only]   \
                 (REDIS_URL=redis://... adds the Redis runs)"
            );
            return ExitCode::from(2);
        }
    };
    let shared = (o.ids as f64 * o.overlap).round() as u64;

    // The instances' shipments.
    let mut per_instance = Vec::with_capacity(o.instances);
    let mut sets = Vec::with_capacity(o.instances);
    let (mut total_bytes, mut total_ids) = (0u64, 0u64);
    let mut serialize_ms = Vec::new();
    for k in 0..o.instances {
        let (set, parts) = instance_ids(o.dist, k, o.ids, shared, o.shipments);
        let t0 = Instant::now();
        let mine: Vec<Vec<u8>> = parts.iter().map(serialize).collect();
        let took = t0.elapsed();
        let bytes: u64 = mine.iter().map(|b| b.len() as u64).sum();
        println!(
            "SHIPMENT instance={k} ids={} distinct={} shipments={} bytes={bytes} \
             bytes_per_id={:.3} serialize_ms={:.2}",
            o.ids,
            set.len(),
            o.shipments,
            bytes as f64 / set.len().max(1) as f64,
            ms(took)
        );
        serialize_ms.push(ms(took));
        total_bytes += bytes;
        total_ids += set.len();
        per_instance.push(mine.into_iter());
        sets.push(set);
    }
    // In the list as the instances would ship them together: every instance's first part,
    // then every instance's second part, ...
    let mut blobs = Vec::new();
    for _ in 0..o.shipments {
        blobs.extend(per_instance.iter_mut().filter_map(Iterator::next));
    }
    // The exact answer, from the sets themselves (not timed).
    let expected = IdSet::union_all(sets).len();

    let head = format!(
        "dist={} instances={} ids={} overlap={} shipments={} runs={} distinct={expected}",
        o.dist.name(),
        o.instances,
        o.ids,
        o.overlap,
        o.shipments,
        o.runs
    );
    let shipment = format!(
        "bytes_per_instance={:.0} bytes_total={total_bytes} bytes_per_id={:.3} serialize_ms={}",
        total_bytes as f64 / o.instances as f64,
        total_bytes as f64 / total_ids.max(1) as f64,
        stats(&serialize_ms)
    );

    if o.push_only {
        return match push_only(&o, &blobs) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("leader_merge: --push-only: {e:#}");
                ExitCode::FAILURE
            }
        };
    }

    // (a) In memory: the leader's count, then the union built, the naive alternative.
    for (mode, build) in [("memory", false), ("union", true)] {
        let (mut de, mut un, mut total, mut release) = (vec![], vec![], vec![], vec![]);
        for run in 1..=o.runs {
            let (count, sets, d, u, t) = merge_in_memory(&blobs, build);
            let t0 = Instant::now();
            drop(sets);
            let r = t0.elapsed();
            if count != expected {
                eprintln!(
                    "leader_merge: {mode} run {run}: {count} distinct ids, expected {expected}"
                );
                return ExitCode::FAILURE;
            }
            println!(
                "RESULT mode={mode} run={run} {head} deserialize_ms={:.2} union_ms={:.2} \
                 total_ms={:.2} release_ms={:.2}",
                ms(d),
                ms(u),
                ms(t),
                ms(r)
            );
            de.push(ms(d));
            un.push(ms(u));
            total.push(ms(t));
            release.push(ms(r));
        }
        println!(
            "SUMMARY mode={mode} {head} {shipment} deserialize_ms={} union_ms={} total_ms={} \
             release_ms={}",
            stats(&de),
            stats(&un),
            stats(&total),
            stats(&release)
        );
    }

    // (b) Through Redis.
    let Ok(url) = std::env::var("REDIS_URL") else {
        println!("SKIPPED mode=redis (REDIS_URL is not set)");
        return ExitCode::SUCCESS;
    };
    match through_redis(&o, &url, &blobs, expected, &head, &shipment) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("leader_merge: Redis {url}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `--push-only`: appends the blobs to the window's list in `REDIS_URL` and leaves them
/// there (10 minutes), for a running verve's leader to merge.
fn push_only(o: &Options, blobs: &[Vec<u8>]) -> anyhow::Result<()> {
    let url = std::env::var("REDIS_URL").map_err(|_| anyhow::anyhow!("REDIS_URL is not set"))?;
    let target = Target::parse(&url).map_err(anyhow::Error::msg)?;
    let mut redis = conn::connect(&target)?;
    let con = redis.con();
    let key = Keys::new(&o.prefix).ids(o.window_start);
    let t0 = Instant::now();
    for blob in blobs {
        redis::cmd("RPUSH")
            .arg(&key)
            .arg(&blob[..])
            .query::<i64>(con)?;
    }
    redis::cmd("PEXPIRE")
        .arg(&key)
        .arg(600_000)
        .query::<()>(con)?;
    println!(
        "PUSHED key={key} blobs={} ms={:.2}",
        blobs.len(),
        ms(t0.elapsed())
    );
    Ok(())
}

fn through_redis(
    o: &Options,
    url: &str,
    blobs: &[Vec<u8>],
    expected: u64,
    head: &str,
    shipment: &str,
) -> anyhow::Result<()> {
    let target = Target::parse(url).map_err(anyhow::Error::msg)?;
    let mut redis = conn::connect(&target)?;
    let con = redis.con();
    let keys = Keys::new(&o.prefix);
    let key = keys.ids(o.window_start);
    redis::cmd("DEL").arg(&key).query::<()>(con)?;
    let t0 = Instant::now();
    for blob in blobs {
        redis::cmd("RPUSH")
            .arg(&key)
            .arg(&blob[..])
            .query::<i64>(con)?;
    }
    let push = t0.elapsed();
    redis::cmd("PEXPIRE")
        .arg(&key)
        .arg(600_000)
        .query::<()>(con)?;

    let result = (|| -> anyhow::Result<()> {
        let (mut fetch, mut total) = (vec![], vec![]);
        for run in 1..=o.runs {
            // The LRANGE pages alone: what the transfer costs.
            let mut fetched = 0usize;
            let t0 = Instant::now();
            let n = store::shipments(con, &keys, o.window_start)?;
            store::fetch(
                con,
                &keys,
                o.window_start,
                n,
                &mut |b| {
                    if let store::Blob::Shipment(bytes) = black_box(b) {
                        fetched += bytes.len()
                    }
                },
                &mut |_| Ok(true),
            )?;
            let f = t0.elapsed();
            let t1 = Instant::now();
            let (count, skipped) = count_of_shipments(con, &keys, o.window_start)?;
            let unreadable = skipped.total();
            let t = t1.elapsed();
            anyhow::ensure!(
                unreadable == 0 && count == expected,
                "run {run}: count_of_shipments gave {count} ids ({unreadable} unreadable), \
                 expected {expected}"
            );
            println!(
                "RESULT mode=redis run={run} {head} fetch_bytes={fetched} fetch_ms={:.2} \
                 total_ms={:.2}",
                ms(f),
                ms(t)
            );
            fetch.push(ms(f));
            total.push(ms(t));
        }
        println!(
            "SUMMARY mode=redis {head} {shipment} rpush_all_ms={:.2} fetch_ms={} total_ms={}",
            ms(push),
            stats(&fetch),
            stats(&total)
        );
        Ok(())
    })();
    let deleted = redis::cmd("DEL").arg(&key).query::<()>(con);
    result?;
    deleted?;
    Ok(())
}
