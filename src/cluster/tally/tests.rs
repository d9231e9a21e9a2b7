use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::time::Instant;

use super::*;

/// A deterministic xorshift stream.
fn stream(seed: u64) -> impl Iterator<Item = u64> {
    let mut x = seed | 1;
    std::iter::from_fn(move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        Some(x)
    })
}

fn shipment(values: &BTreeSet<u64>) -> Vec<u8> {
    let keys: Vec<u64> = values.iter().copied().collect();
    let mut bytes = Vec::new();
    IdSet::from_sorted_keys(&keys).serialize_into(&mut bytes);
    bytes
}

/// Adds every shipment to a tally (with a budget it cannot run out of) and to a
/// reference set; checks the count, that nothing was skipped, and that the budget holds
/// what the tally holds until it is done.
fn check(shipments: &[BTreeSet<u64>]) {
    let memory = IdMemory::new(1 << 40);
    let mut tally = Tally::new(memory.clone());
    let mut reference: BTreeSet<u64> = BTreeSet::new();
    for values in shipments {
        tally.add(&shipment(values));
        reference.extend(values);
    }
    assert_eq!(tally.skipped(), Skipped::default());
    assert_eq!(memory.used(), tally.heap_bytes());
    assert_eq!(tally.finish(), reference.len() as u64);
    assert_eq!(memory.used(), 0);
}

/// `n` values of `seed`'s stream, shifted right by `shift` bits.
fn random(seed: u64, n: usize, shift: u32) -> BTreeSet<u64> {
    stream(seed).take(n).map(|v| v >> shift).collect()
}

#[test]
fn the_count_is_exact_for_random_values() {
    // Partition values (60 bits), whole 64-bit keys with both ends of the range, 32-bit
    // values that repeat: past several buffers, so that runs are made and merged.
    let mut shipments: Vec<BTreeSet<u64>> = (0..150).map(|s| random(s + 1, 700, 4)).collect();
    shipments.extend((0..20).map(|s| random(s + 500, 900, 0)));
    shipments.push([0, 1, u64::MAX - 1, u64::MAX].into());
    shipments.extend((0..30).map(|s| random(s + 900, 1000, 44)));
    check(&shipments);
    // Those went through every stage: wide runs, runs packed as sets, merged runs.
    let mut tally = Tally::new(IdMemory::unlimited());
    for values in &shipments {
        tally.add(&shipment(values));
    }
    assert!(tally.runs.iter().any(|(_, r)| matches!(r, Run::Set(_))));
    assert!(tally.runs.iter().any(|(tier, _)| *tier > 0));
    // 44-bit values, scattered: flushed to wide runs.
    let shipments: Vec<BTreeSet<u64>> = (0..10).map(|s| random(s + 70, 1000, 20)).collect();
    check(&shipments);
    let mut tally = Tally::new(IdMemory::unlimited());
    for values in &shipments {
        tally.add(&shipment(values));
    }
    assert!(tally.runs.iter().any(|(_, r)| matches!(r, Run::Wide(_))));
    check(&[]);
    check(&[[u64::MAX].into(), [u64::MAX, 5].into()]);
}

#[test]
fn the_count_is_exact_for_dense_overlapping_and_repeated_shipments() {
    let dense = |from: u64, n: u64| -> BTreeSet<u64> { (from..=from + (n - 1)).collect() };
    let mut shipments = vec![
        // Dense runs, overlapping each other, long and short.
        dense(0, 100_000),
        dense(50_000, 100_000),
        dense(1 << 40, 5_000),
        dense(u64::MAX - 9_999, 10_000),
        // Scattered values, some inside the runs.
        random(7, 3_000, 44),
    ];
    // Every shipment of one stream shipped by three instances (repeats), and shipments
    // that overlap half of the one before.
    for s in 0..40 {
        let values = random(s + 100, 500, 8);
        shipments.push(values.clone());
        shipments.push(values.clone());
        shipments.push(values);
        let a: Vec<u64> = stream(s + 300).take(600).collect();
        let b: Vec<u64> = stream(s + 301).take(600).collect();
        shipments.push(a[..300].iter().chain(&b[..300]).copied().collect());
    }
    // Scattered values with runs of consecutive ones among them.
    shipments.push(
        random(9, 2_000, 20)
            .into_iter()
            .flat_map(|v| v..v + 7)
            .collect(),
    );
    check(&shipments);
}

#[test]
fn shipments_that_are_not_id_sets_are_skipped_and_cost_nothing() {
    let memory = IdMemory::new(1 << 30);
    let mut tally = Tally::new(memory.clone());
    let good = shipment(&random(3, 1000, 4));
    tally.add(&good);
    let mut treemap = Vec::new();
    roaring::RoaringTreemap::from_iter([1u64, 2, 3])
        .serialize_into(&mut treemap)
        .unwrap();
    let mut flipped = good.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0xff;
    let mut trailing = good.clone();
    trailing.push(0);
    let mut lying = good.clone();
    lying[8..16].copy_from_slice(&10u64.to_le_bytes());
    for garbage in [
        &b"garbage!"[..],
        &good[..good.len() - 3],
        &treemap,
        &trailing,
        &lying,
        b"VRVI\x02\x00\x00\x00",
    ] {
        tally.add(garbage);
    }
    tally.add_blob(Blob::Oversized(1 << 30));
    // An empty set is a set: nothing to skip.
    tally.add(&[]);
    tally.add(&shipment(&BTreeSet::new()));
    let skipped = tally.skipped();
    assert_eq!(
        skipped,
        Skipped {
            oversized: 1,
            unreadable: 6,
            too_large: 0
        }
    );
    assert_eq!(skipped.total(), 7);
    assert_eq!(memory.used(), tally.heap_bytes());
    // The flipped last byte may still decode, to other values; the rest added nothing.
    tally.add(&good);
    assert_eq!(tally.finish(), 1000);
}

/// The dense shipment an attacker can write: one segment of 65 536 roaring run
/// containers, 2^32 consecutive values in ~904 KiB.
fn crafted() -> Vec<u8> {
    let mut bitmap = roaring::RoaringBitmap::new();
    bitmap.insert_range(..);
    bitmap.optimize();
    let mut bytes = Vec::new();
    bytes.extend_from_slice(b"VRVI\x02\x00\x00\x00");
    bytes.extend_from_slice(&bitmap.len().to_le_bytes());
    bytes.extend_from_slice(&1u32.to_le_bytes());
    bytes.push(1);
    bytes.extend_from_slice(&0u32.to_le_bytes());
    bytes.extend_from_slice(&(bitmap.serialized_size() as u32).to_le_bytes());
    bitmap.serialize_into(&mut bytes).unwrap();
    bytes
}

#[test]
fn a_crafted_dense_shipment_is_refused_unexpanded_and_charges_nothing() {
    let bytes = crafted();
    assert!(
        (900 << 10..910 << 10).contains(&bytes.len()),
        "{}",
        bytes.len()
    );
    assert_eq!(IdSet::declared_len(&bytes), Ok(1 << 32));
    let memory = IdMemory::new(16 << 20);
    let mut tally = Tally::new(memory.clone());
    let values = random(4, 2000, 4);
    tally.add(&shipment(&values));
    let before = memory.used();
    tally.add(&bytes);
    assert_eq!(
        memory.used(),
        before,
        "the refused shipment charged nothing"
    );
    assert_eq!(tally.skipped().too_large, 1);
    assert_eq!(tally.finish(), values.len() as u64);
    assert_eq!(memory.used(), 0);
}

#[test]
fn a_shipment_larger_than_what_the_budget_has_left_is_refused() {
    // Scattered values whose bytes alone are more than the budget has left.
    let memory = IdMemory::new(1 << 20);
    let mut tally = Tally::new(memory.clone());
    memory.charge((1 << 20) - 4096);
    tally.add(&shipment(&random(5, 1000, 4)));
    assert_eq!(tally.skipped().too_large, 1);
    assert_eq!(memory.used(), (1 << 20) - 4096);
    memory.release(1 << 20);
    tally.add(&shipment(&random(5, 1000, 4)));
    assert_eq!(tally.finish(), 1000);
}

#[test]
fn the_budget_holds_what_the_tally_holds_and_gets_it_back() {
    let memory = IdMemory::new(1 << 30);
    memory.charge(1000);
    let mut tally = Tally::new(memory.clone());
    for s in 0..20 {
        tally.add(&shipment(&random(s + 40, 1000, 4)));
        assert_eq!(memory.used(), 1000 + tally.heap_bytes());
    }
    assert!(tally.heap_bytes() > 20 * 1000 * 4, "{}", tally.heap_bytes());
    drop(tally);
    assert_eq!(memory.used(), 1000);
    let mut tally = Tally::new(memory.clone());
    tally.add(&shipment(&random(1, 1000, 4)));
    assert_eq!(tally.finish(), 1000);
    assert_eq!(memory.used(), 1000);
}

#[test]
fn sorting_is_exact_however_the_values_are_spread() {
    let mut cases: Vec<Vec<u64>> = vec![
        stream(1).take(5000).collect(),
        stream(2).take(5000).map(|v| v >> 30).collect(),
        (0..5000).rev().collect(),
        vec![7; 3000],
        // Clusters that share every bit a radix pass looks at, apart from the low ones.
        (0..5000u64)
            .map(|i| ((i % 3) << 60) | ((i * 7919) % 5000))
            .collect(),
        stream(3).take(300).chain([0, u64::MAX, 0]).collect(),
    ];
    cases.push(cases[0].iter().chain(&cases[0]).copied().collect());
    for (i, values) in cases.iter().enumerate() {
        let mut sorted = values.clone();
        sort(&mut sorted, &mut Vec::new());
        let mut expected = values.clone();
        expected.sort_unstable();
        assert_eq!(sorted, expected, "case {i}");
    }
}

#[test]
fn wide_runs_read_back_their_values_across_stretches_and_chunks() {
    let cases: Vec<Vec<u64>> = vec![
        // 60-bit values: every high half a stretch of about 25 values.
        random(1, 100_000, 4).into_iter().collect(),
        // Few stretches, and both ends of the key space.
        (0..5000u64)
            .map(|i| i * 7)
            .chain((0..5000).map(|i| (u64::MAX - 35_000) + i * 7))
            .chain([u64::MAX])
            .collect(),
        (5..25).collect(),
    ];
    for values in &cases {
        let wide = Wide::of(values).expect("few enough high halves");
        assert_eq!(wide.len, values.len());
        for chunk in [1, 3, CHUNK] {
            let mut keys = wide.keys();
            let mut read = Vec::new();
            let mut buf = vec![0; chunk];
            loop {
                let n = keys.fill(&mut buf);
                if n == 0 {
                    break;
                }
                read.extend_from_slice(&buf[..n]);
            }
            assert_eq!(&read, values, "chunks of {chunk}");
        }
    }
    // Values over the whole 64 bits have too many high halves: packed as a set.
    let spread: Vec<u64> = random(2, 5000, 0).into_iter().collect();
    assert!(Wide::of(&spread).is_none());
    assert!(matches!(Run::of(&spread), Run::Set(_)));
    assert!(
        matches!(Run::of(&[5]), Run::Set(_)),
        "one value, one stretch"
    );
}

/// A connection for `between`, which the tests' `between` never uses.
struct NoRedis;

impl redis::ConnectionLike for NoRedis {
    fn req_packed_command(&mut self, _: &[u8]) -> redis::RedisResult<redis::Value> {
        Err((redis::ErrorKind::Io, "no redis in this test").into())
    }

    fn req_packed_commands(
        &mut self,
        _: &[u8],
        _: usize,
        _: usize,
    ) -> redis::RedisResult<Vec<redis::Value>> {
        Err((redis::ErrorKind::Io, "no redis in this test").into())
    }

    fn get_db(&self) -> i64 {
        0
    }

    fn check_connection(&mut self) -> bool {
        false
    }

    fn is_open(&self) -> bool {
        false
    }
}

/// Calls of `between` so far; the slow count waits for three of them.
static BETWEEN: AtomicU32 = AtomicU32::new(0);

/// A count that lasts until `between` was called three times (at most a minute).
fn slow_count(tally: &Tally) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    while BETWEEN.load(SeqCst) < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    tally.count()
}

#[test]
fn finishing_calls_between_meanwhile_and_stops_when_told() {
    let values = random(6, 5000, 4);
    let tally_of = || {
        let mut tally = Tally::new(IdMemory::unlimited());
        tally.add(&shipment(&values));
        tally
    };
    // A run (too many values for the buffer), so the count runs on the helper thread.
    BETWEEN.store(0, SeqCst);
    let mut calls = 0;
    let counted = finish_pausing_with(
        tally_of(),
        &mut NoRedis,
        &mut |_| {
            calls += 1;
            BETWEEN.fetch_add(1, SeqCst);
            Ok(true)
        },
        slow_count,
    );
    assert_eq!(counted.unwrap(), Some(5000));
    assert!(calls >= 3, "{calls} calls");
    // Told to stop at its first call: no count, though it was waited for.
    BETWEEN.store(0, SeqCst);
    let mut calls = 0;
    let stopped = finish_pausing_with(
        tally_of(),
        &mut NoRedis,
        &mut |_| {
            calls += 1;
            BETWEEN.fetch_add(1, SeqCst);
            Ok(false)
        },
        slow_count,
    );
    assert_eq!(stopped.unwrap(), None);
    assert!(calls >= 3, "{calls} calls");
    // The real count, quick.
    assert_eq!(
        finish_pausing(tally_of(), &mut NoRedis, &mut |_| Ok(true)).unwrap(),
        Some(5000)
    );
}
