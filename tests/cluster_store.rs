//! The Redis store of cluster mode (`verve::cluster::store` for a window as a whole,
//! `verve::cluster::parts` for its 16 partitions) against a real `redis-server` (Debian
//! package `redis-server`, which `scripts/test.sh` installs), started by the test on a free
//! loopback port without persistence; and against a 3-master Redis Cluster on loopback,
//! where the keys of a window, and those of each of its partitions, must share one slot (their
//! hash tag) for the scripts to work, and the partitions of a window must spread over the
//! nodes. Where two instances race, each has a connection of its own, or a name of its own
//! on one connection, and the test orders their steps.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::redis_servers::{Redis, RedisCluster};
use verve::budget::IdMemory;
use verve::cluster::conn;
use verve::cluster::keys::{self, PartitionKeys};
use verve::cluster::merge::{self, count_of_shipments, union_of_shipments, Skipped};
use verve::cluster::parts::{self, Lead as Part};
use verve::cluster::store::{self, Interval, Keys, Lead, RecordClaim, Shipment, Shipped};
use verve::cluster::tally::Tally;
use verve::ids::partition::{self, PARTITIONS};
use verve::ids::IdSet;

const TTL: u64 = 60_000;

/// The keys of every partition of window `w`, in partition order.
fn partitions(keys: &Keys, w: u64) -> Vec<PartitionKeys> {
    (0..PARTITIONS).map(|p| keys.partition(w, p)).collect()
}

/// Ships `ids` and the window's part as an instance does (`cluster::ship::ship_window`, which
/// the crate does not export): each partition's values to that partition's list, then the
/// endpoints and, with `last`, the mark that the instance shipped everything; `TooLate` as
/// soon as one part is refused.
fn ship_set(
    con: &mut dyn redis::ConnectionLike,
    keys: &Keys,
    w: u64,
    instance: &str,
    ids: &IdSet,
    endpoints: &[String],
    last: bool,
) -> Shipped {
    for (p, values) in partition::split(ids).iter().enumerate() {
        if values.is_empty() {
            continue;
        }
        for bytes in values.serialize_parts(store::MAX_SHIPMENT_BYTES) {
            if parts::ship(con, &keys.partition(w, p), &bytes, TTL).unwrap() == Shipped::TooLate {
                return Shipped::TooLate;
            }
        }
    }
    if endpoints.is_empty() && !last {
        return Shipped::Stored;
    }
    store::ship(con, keys, &window_part(w, instance, endpoints, last)).unwrap()
}

fn ship(
    con: &mut dyn redis::ConnectionLike,
    keys: &Keys,
    w: u64,
    instance: &str,
    ids: &[i64],
    endpoints: &[String],
    last: bool,
) -> Shipped {
    let ids = IdSet::from_ids(ids.iter().copied());
    ship_set(con, keys, w, instance, &ids, endpoints, last)
}

/// The window's part of a shipment (no ids: those go to the partitions).
fn window_part<'a>(w: u64, instance: &'a str, endpoints: &'a [String], last: bool) -> Shipment<'a> {
    Shipment {
        window_start: w,
        instance,
        endpoints,
        last,
        ttl_ms: TTL,
    }
}

/// How many distinct ids the partitions of window `w` hold now (read without freezing).
fn count(con: &mut dyn redis::ConnectionLike, keys: &Keys, w: u64) -> u64 {
    let (union, skipped) = union_of_shipments(con, keys, w).unwrap();
    assert_eq!(skipped.total(), 0);
    let (counted, skipped) = count_of_shipments(con, keys, w).unwrap();
    assert_eq!((counted, skipped.total()), (union.len(), 0));
    union.len()
}

/// How many shipments the partitions of window `w` hold together.
fn shipments(con: &mut dyn redis::ConnectionLike, keys: &Keys, w: u64) -> u64 {
    partitions(keys, w)
        .iter()
        .map(|k| parts::shipments(con, k).unwrap())
        .sum()
}

/// The leader's freeze: the window (as `leader`, which must hold its lease), then every
/// partition; returns how many shipments the partitions hold.
fn freeze_all(con: &mut dyn redis::ConnectionLike, keys: &Keys, w: u64, leader: &str) -> u64 {
    assert!(
        store::freeze(con, keys, w, leader, TTL).unwrap(),
        "{leader}"
    );
    assert!(store::is_frozen(con, keys, w).unwrap());
    partitions(keys, w)
        .iter()
        .map(|k| parts::freeze(con, k, TTL).unwrap())
        .sum()
}

/// Counts one frozen partition as `instance` (which must win its lease) and records the count.
fn count_partition(con: &mut dyn redis::ConnectionLike, k: &PartitionKeys, instance: &str) -> u64 {
    let Part::Counting(n) = parts::lead(con, k, instance, TTL).unwrap() else {
        panic!("{instance} does not count {}", k.ids)
    };
    let (count, skipped) =
        merge::count_partition_with(con, &read(k, n), &mut |_| Ok(true), Tally::count)
            .unwrap()
            .expect("never stopped");
    assert_eq!(skipped.total(), 0);
    assert!(parts::counted(con, k, instance, count, TTL).unwrap());
    count
}

/// Counts every partition of a frozen window, partition `p` by `counters[p % len]`, and
/// returns the sum of the recorded counts, as the leader adds them.
fn count_partitions(
    con: &mut dyn redis::ConnectionLike,
    keys: &Keys,
    w: u64,
    counters: &[&str],
) -> u64 {
    let all = partitions(keys, w);
    for (p, k) in all.iter().enumerate() {
        count_partition(con, k, counters[p % counters.len()]);
    }
    parts::counts(con, &all)
        .unwrap()
        .into_iter()
        .map(|c| c.expect("every partition counted"))
        .sum()
}

fn exists(con: &mut dyn redis::ConnectionLike, key: &str) -> bool {
    redis::cmd("EXISTS").arg(key).query::<i64>(con).unwrap() == 1
}

/// Which of the instances `a` to `d` made their last shipment of window `w`.
fn shipped(con: &mut dyn redis::ConnectionLike, keys: &Keys, w: u64) -> Vec<&'static str> {
    ["a", "b", "c", "d"]
        .into_iter()
        .filter(|i| store::has_shipped(con, keys, w, i).unwrap())
        .collect()
}

/// The endpoints of window `w`, as text.
fn endpoints(con: &mut dyn redis::ConnectionLike, keys: &Keys, w: u64, max: usize) -> Vec<String> {
    let stored = store::endpoints(con, keys, w, max).unwrap();
    stored
        .members
        .into_iter()
        .map(|m| String::from_utf8(m).unwrap())
        .collect()
}

/// A small deterministic generator of random 64-bit ids (SplitMix64).
struct Rng(u64);

impl Rng {
    fn id(&mut self) -> i64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) as i64
    }

    fn ids(&mut self, n: usize) -> Vec<i64> {
        (0..n).map(|_| self.id()).collect()
    }
}

#[test]
fn shipments_add_up_to_the_union_and_repeats_change_nothing() {
    let redis = Redis::start();
    window_round_trip(&mut redis.connect());
}

/// Ships, freezes, counts partition by partition, leads and marks done one window, on any
/// connection (single or cluster).
fn window_round_trip(con: &mut dyn redis::ConnectionLike) {
    let keys = Keys::new("verve-test");
    let w = 1_795_320_720;
    // a ships a delta during the window, then the rest; b ships once at the close; a's last
    // shipment is repeated (a retry after a timeout, or a re-shipment after a reconnect).
    let x = || vec!["http://x.test/".to_string()];
    assert_eq!(
        ship(con, &keys, w, "a", &[1, 2], &x(), false),
        Shipped::Stored
    );
    assert!(shipped(con, &keys, w).is_empty());
    ship(con, &keys, w, "a", &[3, -5], &[], true);
    let y = vec!["http://y.test/".to_string(), "http://x.test/".to_string()];
    ship(con, &keys, w, "b", &[3, 4, i64::MAX], &y, true);
    ship(con, &keys, w, "a", &[1, 2, 3, -5], &[], true);
    // An empty last shipment only marks the instance done.
    ship(con, &keys, w, "c", &[], &[], true);
    assert_eq!(shipped(con, &keys, w), ["a", "b", "c"]);
    assert_eq!(count(con, &keys, w), 6, "{{1, 2, 3, -5}} | {{3, 4, MAX}}");
    assert_eq!(
        endpoints(con, &keys, w, 1000),
        ["http://x.test/", "http://y.test/"]
    );
    // Every key of the window expires on its own: its own and its partitions' lists.
    let lists: Vec<String> = partitions(&keys, w)
        .into_iter()
        .map(|k| k.ids)
        .filter(|k| exists(con, k))
        .collect();
    assert!(lists.len() >= 2, "{lists:?}");
    for key in lists
        .into_iter()
        .chain([keys.shipped(w), keys.endpoints(w)])
    {
        let ttl: i64 = redis::cmd("PTTL").arg(&key).query(&mut *con).unwrap();
        assert!(ttl > 0 && ttl <= TTL as i64, "{key}: PTTL {ttl}");
    }
    // Nobody counts a partition before the window's leader froze it.
    let first = keys.partition(w, 0);
    assert_eq!(parts::lead(con, &first, "b", TTL).unwrap(), Part::Open);
    assert!(
        !exists(con, &first.lease),
        "an open partition takes no lease"
    );
    // Lead, freeze (the window, then each partition), count each partition, report, mark
    // done: then the window is done for everybody, its ids are gone, and a late shipment is
    // refused instead of changing a reported count.
    assert_eq!(store::lead(con, &keys, w, "b", TTL).unwrap(), Lead::Leading);
    assert_eq!(store::lead(con, &keys, w, "a", TTL).unwrap(), Lead::Waiting);
    assert!(!store::freeze(con, &keys, w, "a", TTL).unwrap(), "not a's");
    assert!(!store::is_frozen(con, &keys, w).unwrap());
    let stored = shipments(con, &keys, w);
    assert_eq!(freeze_all(con, &keys, w, "b"), stored);
    assert_eq!(count_partitions(con, &keys, w, &["b", "a"]), 6);
    assert!(store::renew(con, &keys, w, "b", TTL).unwrap());
    assert!(!store::renew(con, &keys, w, "a", TTL).unwrap());
    assert!(
        !store::mark_done(con, &keys, w, "a", 6, TTL).unwrap(),
        "not a's lease"
    );
    assert!(store::mark_done(con, &keys, w, "b", 6, TTL).unwrap());
    assert_eq!(store::lead(con, &keys, w, "a", TTL).unwrap(), Lead::Done(6));
    assert!(!store::renew(con, &keys, w, "b", TTL).unwrap(), "done");
    assert!(!store::freeze(con, &keys, w, "b", TTL).unwrap(), "done");
    for k in partitions(&keys, w) {
        assert!(!exists(con, &k.ids), "{} goes once counted", k.ids);
    }
    assert_eq!(ship(con, &keys, w, "d", &[9], &[], true), Shipped::TooLate);
    assert_eq!(
        store::ship(con, &keys, &window_part(w, "d", &x(), true)).unwrap(),
        Shipped::TooLate,
        "the window part too, once done"
    );
    assert!(!store::has_shipped(con, &keys, w, "d").unwrap());
    assert_eq!(count(con, &keys, w), 0);
    for key in [keys.endpoints(w), keys.frozen(w)] {
        assert!(
            !exists(con, &key),
            "{key} is gone once the window is reported"
        );
    }
}

#[test]
fn a_shipment_with_thousands_of_endpoints_arrives_whole() {
    let redis = Redis::start();
    let mut con = redis.connect();
    let keys = Keys::new("verve-test");
    let endpoints: Vec<String> = (0..2_500).map(|i| format!("http://h{i}.test/")).collect();
    ship(&mut con, &keys, 0, "a", &[7], &endpoints, true);
    let stored = store::endpoints(&mut con, &keys, 0, 5_000).unwrap();
    assert_eq!((stored.members.len(), stored.total), (2_500, 2_500));
    assert_eq!(shipped(&mut con, &keys, 0), ["a"]);
    assert_eq!(count(&mut con, &keys, 0), 1);
    // Read no further than the caller's maximum (`--max-endpoints`), whatever the set holds.
    let stored = store::endpoints(&mut con, &keys, 0, 1_000).unwrap();
    assert_eq!((stored.members.len(), stored.total), (1_000, 2_500));
}

#[test]
fn many_shipments_of_a_partition_are_read_page_by_page() {
    let redis = Redis::start();
    let mut con = redis.connect();
    let keys = Keys::new("verve-test");
    let k = keys.partition(60, 3);
    // 600 shipments of 100 values each, overlapping by half: more than two pages of 256.
    for i in 0..600i64 {
        let values = IdSet::from_ids(i * 50..i * 50 + 100);
        let stored = parts::ship(&mut con, &k, &merge::serialize(&values), TTL).unwrap();
        assert_eq!(stored, Shipped::Stored);
    }
    assert_eq!(parts::freeze(&mut con, &k, TTL).unwrap(), 600);
    let mut pauses = 0;
    let mut between = |_: &mut dyn redis::ConnectionLike| {
        pauses += 1;
        Ok(true)
    };
    let (n, skipped) =
        merge::count_partition_with(&mut con, &read(&k, 600), &mut between, Tally::count)
            .unwrap()
            .unwrap();
    assert_eq!((n, skipped), (599 * 50 + 100, Skipped::default()));
    assert!(pauses >= 2, "a turn after each page but the last: {pauses}");
    // A turn that says stop (the lease is lost) ends the read: no count.
    let stopped =
        merge::count_partition_with(&mut con, &read(&k, 600), &mut |_| Ok(false), Tally::count)
            .unwrap();
    assert_eq!(stopped, None);
    // A page also ends at 4 MiB of shipments: four shipments of well over 1 MiB take at
    // least two pages.
    let big = keys.partition(120, 9);
    let mut rng = Rng(1);
    let mut all = BTreeSet::new();
    for _ in 0..4 {
        let ids = rng.ids(250_000);
        all.extend(ids.iter().copied());
        let bytes = merge::serialize(&IdSet::from_ids(ids));
        assert!(bytes.len() > 1_500_000, "{}", bytes.len());
        parts::ship(&mut con, &big, &bytes, TTL).unwrap();
    }
    let mut pauses = 0;
    let mut between = |_: &mut dyn redis::ConnectionLike| {
        pauses += 1;
        Ok(true)
    };
    let (n, _) = merge::count_partition_with(&mut con, &read(&big, 4), &mut between, Tally::count)
        .unwrap()
        .unwrap();
    assert_eq!(n, all.len() as u64);
    assert!(pauses >= 1, "{pauses}");
}

#[test]
fn one_leader_per_window_until_its_lease_expires_or_is_released() {
    let redis = Redis::start();
    let mut con = redis.connect();
    let keys = Keys::new("verve-test");
    let w = 60;
    let lead =
        |con: &mut redis::Connection, i: &str, w| store::lead(con, &keys, w, i, TTL).unwrap();
    assert_eq!(lead(&mut con, "a", w), Lead::Leading);
    assert_eq!(lead(&mut con, "b", w), Lead::Waiting);
    assert_eq!(lead(&mut con, "a", w), Lead::Leading, "a renews");
    // Another window has its own lease.
    assert_eq!(lead(&mut con, "b", w + 60), Lead::Leading);
    // A leader that stops renewing loses the window to a successor once the lease expires
    // (shortened here by hand instead of waiting for it).
    let _: i64 = redis::cmd("PEXPIRE")
        .arg(keys.lease(w))
        .arg(50)
        .query(&mut con)
        .unwrap();
    common::wait_until("the lease to expire", || {
        (lead(&mut con, "b", w) == Lead::Leading).then_some(())
    });
    assert!(!store::renew(&mut con, &keys, w, "a", TTL).unwrap());
    // A leader that stops gracefully releases its lease: the next one need not wait.
    store::release(&mut con, &keys, w, "a").unwrap();
    assert_eq!(
        lead(&mut con, "c", w),
        Lead::Waiting,
        "a cannot release b's lease"
    );
    store::release(&mut con, &keys, w, "b").unwrap();
    assert_eq!(lead(&mut con, "c", w), Lead::Leading);
}

#[test]
fn a_frozen_partition_or_window_takes_no_more_shipments() {
    let redis = Redis::start();
    let mut con = redis.connect();
    let keys = Keys::new("verve-test");
    let w = 600;
    let (k, other) = (keys.partition(w, 5), keys.partition(w, 6));
    let bytes = |ids: &[i64]| merge::serialize(&IdSet::from_ids(ids.iter().copied()));
    for ids in [&[1, 2][..], &[2, 3], &[4]] {
        assert_eq!(
            parts::ship(&mut con, &k, &bytes(ids), TTL).unwrap(),
            Shipped::Stored
        );
    }
    // The freeze says how long the list is, and from then on it does not change.
    assert_eq!(parts::freeze(&mut con, &k, TTL).unwrap(), 3);
    assert_eq!(
        parts::ship(&mut con, &k, &bytes(&[5]), TTL).unwrap(),
        Shipped::TooLate
    );
    assert_eq!(parts::shipments(&mut con, &k).unwrap(), 3);
    assert_eq!(
        parts::freeze(&mut con, &k, TTL).unwrap(),
        3,
        "again: harmless"
    );
    let ttl: i64 = redis::cmd("PTTL").arg(&k.frozen).query(&mut con).unwrap();
    assert!(0 < ttl && ttl <= TTL as i64, "the freeze expires: {ttl}");
    // Each partition is frozen on its own (the leader freezes them all, one by one).
    assert_eq!(
        parts::ship(&mut con, &other, &bytes(&[5]), TTL).unwrap(),
        Shipped::Stored
    );
    assert_eq!(
        parts::freeze(&mut con, &keys.partition(w, 7), TTL).unwrap(),
        0
    );
    // A list of another type is named, and the partition is not frozen for it.
    let odd = keys.partition(w, 8);
    let _: i64 = redis::cmd("HSET")
        .arg(&odd.ids)
        .arg("f")
        .arg("v")
        .query(&mut con)
        .unwrap();
    assert_eq!(malformed_key(parts::freeze(&mut con, &odd, TTL)), odd.ids);
    assert!(!exists(&mut con, &odd.frozen));
    assert_eq!(
        malformed_key(parts::ship(&mut con, &odd, &bytes(&[1]), TTL)),
        odd.ids
    );

    // The window's part (endpoints, the last-shipment mark): refused once the window is
    // frozen, and nothing of it is stored.
    let e = vec!["http://e.test/".to_string()];
    let late = vec!["http://late.test/".to_string()];
    assert_eq!(
        store::ship(&mut con, &keys, &window_part(w, "a", &e, true)).unwrap(),
        Shipped::Stored
    );
    assert_eq!(
        store::lead(&mut con, &keys, w, "a", TTL).unwrap(),
        Lead::Leading
    );
    assert!(store::freeze(&mut con, &keys, w, "a", TTL).unwrap());
    assert_eq!(
        store::ship(&mut con, &keys, &window_part(w, "b", &late, true)).unwrap(),
        Shipped::TooLate
    );
    assert_eq!(endpoints(&mut con, &keys, w, 10), ["http://e.test/"]);
    assert_eq!(shipped(&mut con, &keys, w), ["a"]);
    // And once it is done (reported), even without a freeze (a `done` restored after Redis
    // came back empty).
    let w2 = w + 60;
    assert!(store::restore_done(&mut con, &keys, w2, 3, TTL).unwrap());
    assert_eq!(
        store::ship(&mut con, &keys, &window_part(w2, "b", &late, true)).unwrap(),
        Shipped::TooLate
    );
    assert!(!exists(&mut con, &keys.endpoints(w2)));
    assert!(!exists(&mut con, &keys.shipped(w2)));
}

#[test]
fn one_counter_per_partition_and_a_count_recorded_once() {
    let redis = Redis::start();
    let mut con = redis.connect();
    let keys = Keys::new("verve-test");
    let w = 1_795_320_900;
    let all = partitions(&keys, w);
    let k = &all[4];
    let lead = |con: &mut redis::Connection, i: &str, ms| parts::lead(con, k, i, ms).unwrap();
    let bytes = |ids: &[i64]| merge::serialize(&IdSet::from_ids(ids.iter().copied()));
    parts::ship(&mut con, k, &bytes(&[1, 2, 3]), TTL).unwrap();
    parts::ship(&mut con, k, &bytes(&[3, 4]), TTL).unwrap();
    // Open until the window's leader froze it; no lease is taken meanwhile.
    assert_eq!(lead(&mut con, "a", TTL), Part::Open);
    assert!(!exists(&mut con, &k.lease));
    assert!(!parts::renew(&mut con, k, "a", TTL).unwrap());
    assert_eq!(parts::freeze(&mut con, k, TTL).unwrap(), 2);
    // The first instance to ask counts it, with the length of its list; the others wait.
    assert_eq!(lead(&mut con, "a", TTL), Part::Counting(2));
    assert_eq!(lead(&mut con, "b", TTL), Part::Held);
    assert_eq!(lead(&mut con, "a", TTL), Part::Counting(2), "a renews");
    assert!(parts::renew(&mut con, k, "a", TTL).unwrap());
    assert!(!parts::renew(&mut con, k, "b", TTL).unwrap(), "not b's");
    // Not b's to record: nothing is recorded, the list stays.
    assert!(!parts::counted(&mut con, k, "b", 99, TTL).unwrap());
    assert_eq!(
        parts::counts(&mut con, &all).unwrap(),
        vec![None; PARTITIONS]
    );
    assert_eq!(parts::shipments(&mut con, k).unwrap(), 2);
    // a stops renewing (it died mid-count): its lease runs out (shortened by its last
    // renewal) and b takes the partition over, with the same list.
    assert!(parts::renew(&mut con, k, "a", 100).unwrap());
    let taken = common::wait_until("a's partition lease to expire", || {
        match lead(&mut con, "b", TTL) {
            Part::Held => None,
            other => Some(other),
        }
    });
    assert_eq!(taken, Part::Counting(2));
    assert_eq!(lead(&mut con, "a", TTL), Part::Held);
    assert!(!parts::renew(&mut con, k, "a", TTL).unwrap(), "lost");
    let n = count_partition(&mut con, k, "b");
    assert_eq!(n, 4);
    // Recorded: everybody sees the count, the list and the lease are freed, and no lease
    // is renewed any more.
    assert_eq!(lead(&mut con, "a", TTL), Part::Counted(4));
    assert_eq!(lead(&mut con, "c", TTL), Part::Counted(4));
    assert!(!exists(&mut con, &k.ids) && !exists(&mut con, &k.lease));
    assert!(!parts::renew(&mut con, k, "b", TTL).unwrap(), "counted");
    // a late counter still holding a lease after the first count was recorded (forged
    // here: the scripts give none once counted) records nothing new: the first stands.
    let _: () = redis::cmd("SET")
        .arg(&k.lease)
        .arg("a")
        .query(&mut con)
        .unwrap();
    assert!(!parts::renew(&mut con, k, "a", TTL).unwrap(), "counted");
    parts::counted(&mut con, k, "a", 7, TTL).unwrap();
    let counts = parts::counts(&mut con, &all).unwrap();
    assert_eq!(counts[4], Some(4));
    assert_eq!(counts.iter().flatten().sum::<u64>(), 4, "added once");
    assert_eq!(
        counts.iter().filter(|c| c.is_none()).count(),
        PARTITIONS - 1
    );
    let ttl: i64 = redis::cmd("PTTL").arg(&k.count).query(&mut con).unwrap();
    assert!(0 < ttl && ttl <= TTL as i64, "the count expires: {ttl}");
    // A count verve did not write is refused, naming its key, not taken for a number.
    for junk in ["abc", "", " 7", "-1", "1e3", "123456789012345678901"] {
        let _: () = redis::cmd("SET")
            .arg(&all[9].count)
            .arg(junk)
            .query(&mut con)
            .unwrap();
        assert_eq!(
            malformed_key(parts::counts(&mut con, &all)),
            all[9].count,
            "{junk:?}"
        );
        assert_eq!(
            malformed_key(parts::lead(&mut con, &all[9], "a", TTL)),
            all[9].count,
            "{junk:?}"
        );
    }
}

#[test]
fn a_release_hands_the_partition_over_at_once() {
    let redis = Redis::start();
    let mut con = redis.connect();
    let keys = Keys::new("verve-test");
    let k = keys.partition(660, 11);
    assert_eq!(parts::freeze(&mut con, &k, TTL).unwrap(), 0);
    assert_eq!(
        parts::lead(&mut con, &k, "a", TTL).unwrap(),
        Part::Counting(0)
    );
    parts::release(&mut con, &k, "b").unwrap();
    assert_eq!(
        parts::lead(&mut con, &k, "b", TTL).unwrap(),
        Part::Held,
        "b cannot release a's lease"
    );
    parts::release(&mut con, &k, "a").unwrap();
    assert_eq!(
        parts::lead(&mut con, &k, "b", TTL).unwrap(),
        Part::Counting(0)
    );
    // An empty partition counts 0, and its 0 is a count like any other.
    assert!(parts::counted(&mut con, &k, "b", 0, TTL).unwrap());
    assert_eq!(
        parts::counts(&mut con, std::slice::from_ref(&k)).unwrap(),
        [Some(0)]
    );
    assert_eq!(
        parts::lead(&mut con, &k, "a", TTL).unwrap(),
        Part::Counted(0)
    );
}

/// Three instances' ids of one window, overlapping, random and dense, shipped in deltas and
/// once more whole at the close, as the shippers do; counted partition by partition by the
/// three of them: the sum of the partitions' counts is the exact number of distinct ids.
fn three_instances_count_exactly(con: &mut dyn redis::ConnectionLike) {
    let keys = Keys::new("verve-e2e");
    let w = 1_795_321_020;
    let mut rng = Rng(42);
    let random = rng.ids(40_000);
    let a: Vec<i64> = random[..25_000].to_vec();
    let b: Vec<i64> = (-20_000..30_000)
        .chain(random[20_000..30_000].iter().copied())
        .collect();
    let c: Vec<i64> = (10_000..90_000)
        .step_by(3)
        .chain(random[28_000..].iter().copied())
        .chain([i64::MIN, i64::MAX, -1, 0])
        .collect();
    let mut distinct = BTreeSet::new();
    for (name, ids) in [("a", &a), ("b", &b), ("c", &c)] {
        distinct.extend(ids.iter().copied());
        // Deltas during the window, then the last shipment with everything.
        for delta in ids.chunks(ids.len() / 3 + 1) {
            let delta = IdSet::from_ids(delta.iter().copied());
            assert_eq!(
                ship_set(con, &keys, w, name, &delta, &[], false),
                Shipped::Stored
            );
        }
        let e = vec![format!("http://{name}.test/")];
        let whole = IdSet::from_ids(ids.iter().copied());
        assert_eq!(
            ship_set(con, &keys, w, name, &whole, &e, true),
            Shipped::Stored
        );
    }
    assert_eq!(shipped(con, &keys, w), ["a", "b", "c"]);
    for k in partitions(&keys, w) {
        let n = parts::shipments(con, &k).unwrap();
        assert!(n >= 3, "every partition got shipments: {} has {n}", k.ids);
    }
    assert_eq!(store::lead(con, &keys, w, "a", TTL).unwrap(), Lead::Leading);
    let stored = shipments(con, &keys, w);
    assert_eq!(freeze_all(con, &keys, w, "a"), stored);
    let total = count_partitions(con, &keys, w, &["c", "a", "b"]);
    assert_eq!(total, distinct.len() as u64);
    assert!(store::mark_done(con, &keys, w, "a", total, TTL).unwrap());
    assert_eq!(
        store::lead(con, &keys, w, "b", TTL).unwrap(),
        Lead::Done(total)
    );
    assert_eq!(endpoints(con, &keys, w, 10), Vec::<String>::new());
}

#[test]
fn the_partitions_counts_add_up_to_the_exact_count() {
    let redis = Redis::start();
    three_instances_count_exactly(&mut redis.connect());
}

/// Redis's own time, in ms since the epoch.
fn redis_time(con: &mut redis::Connection) -> u64 {
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query(con).unwrap();
    secs * 1000 + micros / 1000
}

#[test]
fn heartbeats_name_the_live_instances_by_redis_clock_alone() {
    let redis = Redis::start();
    let mut con = redis.connect();
    let keys = Keys::new("verve-test");
    let ttl = 3_000;
    let before = redis_time(&mut con);
    for name in ["a", "b", "c"] {
        let at = store::heartbeat(&mut con, &keys, name, ttl).unwrap();
        let score: u64 = redis::cmd("ZSCORE")
            .arg(keys.live())
            .arg(name)
            .query(&mut con)
            .unwrap();
        // Stamped with Redis's time: no instance's clock takes part.
        assert_eq!(score, at);
        assert!(before <= at && at <= redis_time(&mut con), "{before} {at}");
    }
    assert_eq!(
        store::live(&mut con, &keys, ttl).unwrap().unwrap(),
        ["a", "b", "c"]
    );
    // a fell silent 10 s ago by Redis's clock; b goes on; c leaves.
    let _: () = redis::cmd("ZADD")
        .arg(keys.live())
        .arg(redis_time(&mut con) - 10_000)
        .arg("a")
        .query(&mut con)
        .unwrap();
    store::leave(&mut con, &keys, "c").unwrap();
    assert_eq!(store::live(&mut con, &keys, ttl).unwrap().unwrap(), ["b"]);
    store::heartbeat(&mut con, &keys, "b", ttl).unwrap();
    let size: i64 = redis::cmd("ZCARD")
        .arg(keys.live())
        .query(&mut con)
        .unwrap();
    assert_eq!(size, 1, "silent instances are removed, not just skipped");
}

#[test]
fn a_redis_user_without_time_fails_the_heartbeat_not_the_connection() {
    // A Redis user set up before heartbeats used Redis's clock: the heartbeat and the live
    // set fail with an error that names what is missing, and that is not taken for an
    // outage (which would keep every window off Redis).
    let redis = Redis::start();
    let mut admin = redis.connect();
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "old", "on", ">pw", "~*", "+@all", "-time"][..])
        .query(&mut admin)
        .unwrap();
    let url = format!("redis://old:pw@127.0.0.1:{}/", redis.port);
    let mut con = redis::Client::open(url).unwrap().get_connection().unwrap();
    let keys = Keys::new("verve-test");
    for result in [
        store::heartbeat(&mut con, &keys, "a", TTL).map(|_| ()),
        store::live(&mut con, &keys, TTL).map(|_| ()),
    ] {
        let Err(store::Error::Redis(e)) = result else {
            panic!("{result:?}")
        };
        assert!(!verve::cluster::conn::is_outage(&e), "{e}");
        assert!(e.to_string().contains("+time"), "{e}");
    }
}

#[test]
fn a_pending_record_is_owned_by_one_instance_at_a_time_until_acknowledged() {
    let redis = Redis::start();
    let mut con = redis.connect();
    let keys = Keys::new("verve-test");
    let w = 180;
    let lead =
        |con: &mut redis::Connection, i: &str, w| store::lead(con, &keys, w, i, TTL).unwrap();
    // Reported without Kafka: nothing pending.
    assert_eq!(
        store::claim_record(&mut con, &keys, w, "b", TTL).unwrap(),
        RecordClaim::Gone
    );
    assert_eq!(lead(&mut con, "a", w), Lead::Leading);
    assert!(store::mark_done_with_record(&mut con, &keys, &done(w, 9), Some(TTL)).unwrap());
    assert_eq!(
        store::claim_record(&mut con, &keys, w, "a", TTL).unwrap(),
        RecordClaim::Mine
    );
    assert_eq!(
        store::claim_record(&mut con, &keys, w, "b", TTL).unwrap(),
        RecordClaim::Held
    );
    // a stops with it unacknowledged: b takes it over, with the count to produce.
    store::release_record(&mut con, &keys, w, "b").unwrap();
    store::release_record(&mut con, &keys, w, "a").unwrap();
    assert_eq!(
        store::claim_record(&mut con, &keys, w, "b", TTL).unwrap(),
        RecordClaim::Taken(9)
    );
    assert_eq!(
        store::claim_record(&mut con, &keys, w, "c", TTL).unwrap(),
        RecordClaim::Held
    );
    store::record_acknowledged(&mut con, &keys, w).unwrap();
    for who in ["a", "b", "c"] {
        assert_eq!(
            store::claim_record(&mut con, &keys, w, who, TTL).unwrap(),
            RecordClaim::Gone
        );
    }
    // An owner that stops renewing loses it after its lease.
    assert_eq!(lead(&mut con, "a", w + 60), Lead::Leading);
    assert!(store::mark_done_with_record(&mut con, &keys, &done(w + 60, 4), Some(50)).unwrap());
    let taken = common::wait_until(
        "the owner's claim to run out",
        || match store::claim_record(&mut con, &keys, w + 60, "b", TTL).unwrap() {
            RecordClaim::Held => None,
            other => Some(other),
        },
    );
    assert_eq!(taken, RecordClaim::Taken(4));
}

#[test]
fn a_done_mark_is_restored_only_where_it_is_missing() {
    let redis = Redis::start();
    let mut con = redis.connect();
    let keys = Keys::new("verve-test");
    assert!(store::restore_done(&mut con, &keys, 60, 42, 60_000).unwrap());
    assert_eq!(
        store::lead(&mut con, &keys, 60, "a", TTL).unwrap(),
        Lead::Done(42)
    );
    // A mark already there, or a leader's, stays as it is.
    assert!(!store::restore_done(&mut con, &keys, 60, 7, 60_000).unwrap());
    assert_eq!(
        store::lead(&mut con, &keys, 60, "a", TTL).unwrap(),
        Lead::Done(42)
    );
    // And it expires like every key of a window.
    let ttl: i64 = redis::cmd("PTTL")
        .arg(keys.done(60))
        .query(&mut con)
        .unwrap();
    assert!(0 < ttl && ttl <= 60_000, "{ttl}");
}

/// `CLUSTER KEYSLOT` of `key`, asked of the cluster.
fn keyslot(con: &mut dyn redis::ConnectionLike, key: &str) -> u16 {
    redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query(con)
        .unwrap()
}

#[test]
fn the_store_works_on_a_three_master_redis_cluster() {
    let cluster = RedisCluster::start();
    let mut con = cluster.connect();
    window_round_trip(&mut con);
    three_instances_count_exactly(&mut con);
    let keys = Keys::new("verve-test");
    // The lease scripts and the heartbeat route by their keys too.
    assert_eq!(
        store::lead(&mut con, &keys, 120, "a", TTL).unwrap(),
        Lead::Leading
    );
    assert_eq!(
        store::lead(&mut con, &keys, 120, "b", TTL).unwrap(),
        Lead::Waiting
    );
    store::heartbeat(&mut con, &keys, "a", TTL).unwrap();
    assert_eq!(store::live(&mut con, &keys, TTL).unwrap().unwrap(), ["a"]);
    // The windows really are spread over the masters: their slots differ.
    let slots: BTreeSet<u16> = (0..20)
        .map(|i| keyslot(&mut con, &keys.lease(60 * i)))
        .collect();
    assert!(slots.len() > 1, "one slot for every window: {slots:?}");
    // The keys of a window share its slot, and those of each partition share the
    // partition's, as `keys::slot` computes them: the p-th sixteenth of the slots.
    for w in [0u64, 60, 1_795_320_720, 1_795_321_020, u64::MAX / 2] {
        let window = keyslot(&mut con, &keys.lease(w));
        assert_eq!(window, keys::slot(&format!("w{w}")));
        for key in [
            keys.done(w),
            keys.frozen(w),
            keys.endpoints(w),
            keys.shipped(w),
        ] {
            assert_eq!(keyslot(&mut con, &key), window, "{key}");
        }
        for p in [0, 1, 5, 6, 10, 15] {
            let k = keys.partition(w, p);
            let tag = keys::partition_tag(w, p);
            let slot = keyslot(&mut con, &k.ids);
            assert_eq!(slot, keys::slot(&tag), "{tag}");
            assert_eq!(usize::from(slot) / (16384 / PARTITIONS), p, "{tag}: {slot}");
            for key in [&k.frozen, &k.lease, &k.count] {
                assert_eq!(keyslot(&mut con, key), slot, "{key}");
            }
        }
    }
}

/// The slot ranges each master of the cluster owns, by port, from `CLUSTER NODES`.
fn slot_owners(con: &mut redis::Connection) -> Vec<(u16, Vec<(u16, u16)>)> {
    let nodes: String = redis::cmd("CLUSTER").arg("NODES").query(con).unwrap();
    nodes
        .lines()
        .filter(|line| line.contains("master"))
        .map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            // `ip:port@bus`, and past the 8th field, `first-last` ranges or single slots.
            let addr = fields[1].split('@').next().unwrap();
            let port = addr.rsplit(':').next().unwrap().parse().unwrap();
            let ranges = fields[8..]
                .iter()
                .filter(|r| !r.starts_with('['))
                .map(|r| match r.split_once('-') {
                    Some((a, b)) => (a.parse().unwrap(), b.parse().unwrap()),
                    None => (r.parse().unwrap(), r.parse().unwrap()),
                })
                .collect();
            (port, ranges)
        })
        .collect()
}

#[test]
fn no_node_of_a_redis_cluster_holds_most_of_a_window() {
    let cluster = RedisCluster::start();
    let mut con = cluster.connect();
    let keys = Keys::new("verve-mem");
    let w = 1_795_321_080;
    // ~200K random 64-bit ids, from 3 instances whose ids overlap by a fifth, each shipped
    // in 4 deltas.
    let mut rng = Rng(2026);
    let pool = rng.ids(200_000);
    for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
        let mine = &pool[i * 60_000..(i * 60_000 + 80_000).min(pool.len())];
        for delta in mine.chunks(20_000) {
            let delta = IdSet::from_ids(delta.iter().copied());
            ship_set(&mut con, &keys, w, name, &delta, &[], false);
        }
        let e = vec![format!("http://{name}.test/")];
        ship_set(&mut con, &keys, w, name, &IdSet::new(), &e, true);
    }
    // Every key of the window, on the node that owns its slot: its bytes there.
    let mut nodes: BTreeMap<u16, redis::Connection> = BTreeMap::new();
    for port in &cluster.ports {
        let url = format!("redis://127.0.0.1:{port}/");
        let node = redis::Client::open(url).unwrap().get_connection().unwrap();
        nodes.insert(*port, node);
    }
    let owners = slot_owners(nodes.values_mut().next().unwrap());
    assert_eq!(owners.len(), 3, "{owners:?}");
    let window_keys = partitions(&keys, w)
        .into_iter()
        .map(|k| k.ids)
        .chain([keys.shipped(w), keys.endpoints(w)]);
    let mut bytes: BTreeMap<u16, u64> = cluster.ports.iter().map(|p| (*p, 0)).collect();
    let mut lists: BTreeMap<u16, usize> = BTreeMap::new();
    for key in window_keys {
        let slot = keyslot(&mut con, &key);
        let port = owners
            .iter()
            .find(|(_, ranges)| ranges.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
            .map(|(port, _)| *port)
            .unwrap_or_else(|| panic!("nobody owns slot {slot}"));
        let used: Option<u64> = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(&key)
            .arg("SAMPLES")
            .arg(0)
            .query(nodes.get_mut(&port).unwrap())
            .unwrap();
        let used = used.unwrap_or_else(|| panic!("{key} is not on its slot's node {port}"));
        *bytes.get_mut(&port).unwrap() += used;
        if key.ends_with(":ids") {
            *lists.entry(port).or_default() += 1;
        }
    }
    let total: u64 = bytes.values().sum();
    assert!(total > 1_000_000, "the window's shipments: {total} bytes");
    for (port, used) in &bytes {
        let share = *used as f64 / total as f64;
        println!(
            "node {port}: {used} of {total} bytes ({:.1}%), {} of {PARTITIONS} partition lists",
            share * 100.0,
            lists.get(port).copied().unwrap_or(0)
        );
        assert!(
            *used * 2 <= total,
            "node {port} holds {used} of {total} bytes"
        );
        assert!(lists.get(port).copied().unwrap_or(0) <= 6, "{lists:?}");
    }
}

#[test]
fn a_shipment_that_reaches_redis_after_the_leaders_freeze_is_refused_not_deleted_unseen() {
    // The leader and a slow instance, each on a connection of its own; the test puts the
    // slow instance's last shipment between the leader's freeze and read and its `done`
    // mark, where it would otherwise be stored, answered "stored", and then deleted unread.
    let redis = Redis::start();
    let (mut leader, mut slow) = (redis.connect(), redis.connect());
    let keys = Keys::new("verve-test");
    let w = 1_795_320_780;
    assert_eq!(
        ship(&mut leader, &keys, w, "a", &[1, 2, 3], &[], true),
        Shipped::Stored
    );
    // The slow instance shipped part of its ids in time, during the window.
    assert_eq!(
        ship(&mut slow, &keys, w, "b", &[3, 4], &[], false),
        Shipped::Stored
    );
    assert_eq!(
        store::lead(&mut leader, &keys, w, "a", TTL).unwrap(),
        Lead::Leading
    );
    let n = freeze_all(&mut leader, &keys, w, "a");
    assert_eq!(n, shipments(&mut slow, &keys, w));
    assert!(n >= 2, "{n}");
    assert_eq!(count(&mut leader, &keys, w), 4);
    // Frozen; not yet counted nor marked done. The slow instance's last shipment arrives
    // now: refused, so that instance keeps its ids and reports them itself (`scope=local`).
    let late = vec!["http://late.test/".to_string()];
    let many: Vec<i64> = (5..1_000).collect();
    assert_eq!(
        ship(&mut slow, &keys, w, "b", &many, &late, true),
        Shipped::TooLate
    );
    // Nothing of it was stored: the lists are what the leader froze, the endpoint is not in
    // the set, and the instance is not marked as shipped.
    assert_eq!(shipments(&mut slow, &keys, w), n);
    for (p, values) in partition::split(&IdSet::from_ids(many)).iter().enumerate() {
        if !values.is_empty() {
            let bytes = merge::serialize(values);
            let refused = parts::ship(&mut slow, &keys.partition(w, p), &bytes, TTL).unwrap();
            assert_eq!(refused, Shipped::TooLate, "partition {p}");
        }
    }
    // Its window part alone (the endpoint and the mark, what follows the ids) too.
    let window = store::ship(&mut slow, &keys, &window_part(w, "b", &late, true)).unwrap();
    assert_eq!(window, Shipped::TooLate);
    assert_eq!(shipments(&mut slow, &keys, w), n);
    assert!(endpoints(&mut slow, &keys, w, 10).is_empty());
    assert!(!store::has_shipped(&mut slow, &keys, w, "b").unwrap());
    let union = count_partitions(&mut leader, &keys, w, &["a"]);
    assert_eq!(union, 4);
    assert!(store::mark_done(&mut leader, &keys, w, "a", union, TTL).unwrap());
    assert_eq!(
        store::lead(&mut slow, &keys, w, "b", TTL).unwrap(),
        Lead::Done(4)
    );
    // A successor taking over a frozen window (the leader died after its freeze) counts the
    // same lists: freezing again changes nothing.
    let w2 = w + 60;
    ship(&mut leader, &keys, w2, "a", &[7], &[], true);
    store::lead(&mut leader, &keys, w2, "a", TTL).unwrap();
    assert_eq!(freeze_all(&mut leader, &keys, w2, "a"), 1);
    assert_eq!(
        ship(&mut slow, &keys, w2, "b", &[8], &[], true),
        Shipped::TooLate
    );
    store::release(&mut leader, &keys, w2, "a").unwrap();
    assert_eq!(
        store::lead(&mut slow, &keys, w2, "b", TTL).unwrap(),
        Lead::Leading
    );
    assert_eq!(freeze_all(&mut slow, &keys, w2, "b"), 1);
    assert_eq!(count_partitions(&mut slow, &keys, w2, &["b"]), 1);
}

/// The store error of `result`, which must be a malformed key.
fn malformed_key<T: std::fmt::Debug>(result: store::Result<T>) -> String {
    match result {
        Err(store::Error::Malformed { key, .. }) => key,
        other => panic!("not Malformed: {other:?}"),
    }
}

#[test]
fn keys_verve_did_not_write_are_refused_and_nothing_is_half_written() {
    let redis = Redis::start();
    let mut con = redis.connect();
    let keys = Keys::new("verve-test");
    let set = |con: &mut redis::Connection, args: &[&str]| {
        redis::cmd(args[0])
            .arg(&args[1..])
            .query::<redis::Value>(con)
            .unwrap();
    };
    let e = vec!["http://e.test/".to_string()];
    let try_ship = |con: &mut redis::Connection, w: u64| {
        store::ship(con, &keys, &window_part(w, "a", &e, true))
    };
    // Each of the window's keys of another type, in turn: refused before anything is
    // written, so no shipment is half stored.
    for (w, key) in [(120, keys.endpoints(120)), (180, keys.shipped(180))] {
        set(&mut con, &["HSET", &key, "f", "v"]);
        assert_eq!(malformed_key(try_ship(&mut con, w)), key);
        let written = [keys.endpoints(w), keys.shipped(w)]
            .into_iter()
            .filter(|k| *k != key && exists(&mut con, k))
            .collect::<Vec<_>>();
        assert!(written.is_empty(), "{key}: {written:?} written");
    }
    // A partition's list of another type: named, by the shipment, the freeze and the
    // lease, and nothing written for it.
    let k = keys.partition(60, 2);
    set(&mut con, &["HSET", &k.ids, "f", "v"]);
    let bytes = merge::serialize(&IdSet::from_ids([1, 2]));
    assert_eq!(malformed_key(parts::ship(&mut con, &k, &bytes, TTL)), k.ids);
    assert_eq!(malformed_key(parts::freeze(&mut con, &k, TTL)), k.ids);
    assert!(!exists(&mut con, &k.frozen));
    set(&mut con, &["SET", &k.frozen, "1"]);
    assert_eq!(malformed_key(parts::lead(&mut con, &k, "a", TTL)), k.ids);
    assert!(!exists(&mut con, &k.lease));
    // A `done` that is not a count is not a report: neither a refusal nor Done(0).
    for junk in ["abc", "", " 7", "-1", "1e3", "123456789012345678901"] {
        set(&mut con, &["SET", &keys.done(240), junk]);
        assert_eq!(
            malformed_key(try_ship(&mut con, 240)),
            keys.done(240),
            "{junk:?}"
        );
        assert_eq!(
            malformed_key(store::lead(&mut con, &keys, 240, "a", TTL)),
            keys.done(240),
            "{junk:?}"
        );
    }
    // `done` or the lease of another type: a Redis error about that key, not an outage.
    set(&mut con, &["RPUSH", &keys.done(300), "x"]);
    set(&mut con, &["RPUSH", &keys.lease(360), "x"]);
    for err in [
        try_ship(&mut con, 300).map(drop),
        store::lead(&mut con, &keys, 300, "a", TTL).map(drop),
        store::lead(&mut con, &keys, 360, "a", TTL).map(drop),
    ] {
        match err {
            Err(store::Error::Redis(e)) => assert!(!conn::is_outage(&e), "{e}"),
            other => panic!("{other:?}"),
        }
    }
    // Shipments that are not id sets, or too long to be verve's, are skipped unread; the
    // rest count.
    let w = 420;
    ship(&mut con, &keys, w, "a", &[1, 2, 3], &[], false);
    let k = keys.partition(w, 0);
    set(&mut con, &["RPUSH", &k.ids, "garbage!"]);
    let huge = vec![b'x'; store::MAX_SHIPMENT_BYTES + 1];
    redis::cmd("RPUSH")
        .arg(&k.ids)
        .arg(&huge)
        .query::<i64>(&mut con)
        .unwrap();
    ship(&mut con, &keys, w, "b", &[3, 4], &[], true);
    let (union, skipped) = union_of_shipments(&mut con, &keys, w).unwrap();
    assert_eq!(union.len(), 4);
    assert_eq!(
        skipped,
        Skipped {
            oversized: 1,
            unreadable: 1,
            too_large: 0
        }
    );
    // A list longer than verve ever writes is not read, whoever asks.
    let long = keys.partition(w, 1);
    let fill = r"
for i = 1, tonumber(ARGV[1]), 1000 do
  local n = math.min(1000, tonumber(ARGV[1]) - i + 1)
  local batch = {}
  for j = 1, n do batch[j] = 'x' end
  redis.call('RPUSH', KEYS[1], unpack(batch))
end
return redis.call('LLEN', KEYS[1])
";
    let fill_to = |con: &mut redis::Connection, n: u64| -> u64 {
        let _: i64 = redis::cmd("DEL").arg(&long.ids).query(con).unwrap();
        redis::Script::new(fill)
            .key(&long.ids)
            .arg(n)
            .invoke(con)
            .unwrap()
    };
    assert_eq!(
        fill_to(&mut con, store::MAX_SHIPMENTS_PER_WINDOW),
        store::MAX_SHIPMENTS_PER_WINDOW
    );
    assert_eq!(
        parts::shipments(&mut con, &long).unwrap(),
        store::MAX_SHIPMENTS_PER_WINDOW
    );
    fill_to(&mut con, store::MAX_SHIPMENTS_PER_WINDOW + 1);
    assert_eq!(malformed_key(parts::shipments(&mut con, &long)), long.ids);
    assert_eq!(malformed_key(parts::freeze(&mut con, &long, TTL)), long.ids);
    assert_eq!(
        malformed_key(parts::lead(&mut con, &long, "a", TTL)),
        long.ids
    );
    let _: i64 = redis::cmd("DEL").arg(&long.ids).query(&mut con).unwrap();
    // Endpoint members are read cut one byte past the longest verve stores.
    let long = format!("http://e.test/{}", "a".repeat(10_000));
    set(
        &mut con,
        &["SADD", &keys.endpoints(w), &long, "http://ok.test/"],
    );
    let stored = store::endpoints(&mut con, &keys, w, 10).unwrap();
    assert_eq!(stored.total, 2);
    let lens: Vec<usize> = stored.members.iter().map(Vec::len).collect();
    assert_eq!(lens, [store::MAX_ENDPOINT_BYTES + 1, 15]);
    // Live-set members longer than an instance name are not instances.
    set(&mut con, &["ZADD", &keys.live(), "5000", &"x".repeat(300)]);
    store::heartbeat(&mut con, &keys, "a", TTL).unwrap();
    assert_eq!(store::live(&mut con, &keys, TTL).unwrap().unwrap(), ["a"]);
}

#[test]
fn the_prefix_is_claimed_for_one_interval() {
    let redis = Redis::start();
    let mut con = redis.connect();
    let keys = Keys::new("verve-test");
    let claim = |con: &mut redis::Connection, secs| store::claim_interval(con, &keys, secs, TTL);
    assert_eq!(claim(&mut con, 60).unwrap(), Interval::Same);
    assert_eq!(claim(&mut con, 60).unwrap(), Interval::Same, "a refresh");
    assert_eq!(claim(&mut con, 30).unwrap(), Interval::Other(60));
    let ttl: i64 = redis::cmd("PTTL")
        .arg(keys.interval())
        .query(&mut con)
        .unwrap();
    assert!(ttl > 0 && ttl <= TTL as i64, "expires: {ttl}");
    // Another deployment's prefix is its own.
    let other = Keys::new("verve-other");
    assert_eq!(
        store::claim_interval(&mut con, &other, 30, TTL).unwrap(),
        Interval::Same
    );
    let _: () = redis::cmd("SET")
        .arg(keys.interval())
        .arg("sixty")
        .query(&mut con)
        .unwrap();
    assert_eq!(malformed_key(claim(&mut con, 60)), keys.interval());
}

#[test]
fn the_start_up_check_names_what_a_redis_user_lacks_and_claims_the_interval() {
    let redis = Redis::start();
    let mut admin = redis.connect();
    let user = |con: &mut redis::Connection, name: &str, rules: &[&str]| {
        let _: () = redis::cmd("ACL")
            .arg(&["SETUSER", name, "on", ">pw", "resetkeys", "resetchannels"][..])
            .arg(rules)
            .query(con)
            .unwrap();
    };
    // The recommendation without `@dangerous` leaves out INFO: taken for a single server.
    user(&mut admin, "broad", &["~verve:*", "+@all", "-@dangerous"]);
    // Keys elsewhere, or no scripts: unusable, said at start-up.
    user(&mut admin, "elsewhere", &["~other:*", "+@all"]);
    user(
        &mut admin,
        "noscripts",
        &["~verve:*", "+@all", "-@scripting"],
    );
    let target = |name: &str| {
        conn::Target::parse(&format!("redis://{name}:pw@127.0.0.1:{}/", redis.port)).unwrap()
    };
    let keys = Keys::new("verve");
    let check = |name: &str, interval| conn::check(&target(name), &keys, interval, TTL);
    assert_eq!(check("broad", 60).unwrap(), "Redis");
    for name in ["elsewhere", "noscripts"] {
        match check(name, 60) {
            Err(conn::Problem::Unusable(e)) => {
                let why = conn::describe(&e).to_lowercase();
                assert!(why.contains("noperm"), "{name}: {why}")
            }
            other => panic!("{name}: {other:?}"),
        }
    }
    match check("broad", 30) {
        Err(conn::Problem::OtherInterval(60)) => {}
        other => panic!("{other:?}"),
    }
}

/// Instance "a"'s `done` mark of window `w` with `count`, kept for `TTL`.
fn done(w: u64, count: u64) -> store::DoneMark<'static> {
    store::DoneMark {
        window_start: w,
        instance: "a",
        count,
        ttl_ms: TTL,
    }
}
/// Bytes Redis has sent its clients so far (`INFO stats`).
fn net_output(con: &mut redis::Connection) -> u64 {
    let info: String = redis::cmd("INFO").arg("stats").query(con).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("total_net_output_bytes:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("total_net_output_bytes in INFO stats")
}

#[test]
fn a_count_of_any_length_is_refused_after_a_bounded_read() {
    // What Redis holds is untrusted: a partition's count key holding 32 MiB (another
    // program under the prefix) must be refused without crossing the network whole.
    let redis = Redis::start();
    let mut con = redis.connect();
    let keys = Keys::new("verve-test");
    let all = partitions(&keys, 60);
    let _: i64 = redis::cmd("SETRANGE")
        .arg(&all[3].count)
        .arg((32 << 20) - 1)
        .arg("7")
        .query(&mut con)
        .unwrap();
    for (what, read) in [("lead", 0), ("counts", 1)] {
        let before = net_output(&mut con);
        let key = if read == 0 {
            malformed_key(parts::lead(&mut con, &all[3], "a", TTL))
        } else {
            malformed_key(parts::counts(&mut con, &all))
        };
        assert_eq!(key, all[3].count, "{what}");
        let sent = net_output(&mut con) - before;
        assert!(sent < 1 << 20, "{what}: {sent} bytes read for one count");
    }
}

/// A partition's read of `n` shipments, with no memory budget.
fn read(keys: &PartitionKeys, n: u64) -> merge::Read<'_> {
    static UNLIMITED: std::sync::OnceLock<std::sync::Arc<IdMemory>> = std::sync::OnceLock::new();
    merge::Read {
        keys,
        shipments: n,
        memory: UNLIMITED.get_or_init(IdMemory::unlimited),
    }
}

#[test]
fn the_registry_of_windows_not_reported_gives_those_due_and_forgets_expired_ones() {
    use verve::cluster::orphans;
    let redis = Redis::start();
    let mut con = redis.connect();
    let keys = Keys::new("verve-test");
    for w in [60, 120, 180, 240, 120] {
        orphans::register(&mut con, &keys, w, TTL).unwrap();
    }
    // Registered once each, however often; the key lives as long as a window's keys.
    let n: u64 = redis::cmd("ZCARD")
        .arg(keys.windows())
        .query(&mut con)
        .unwrap();
    assert_eq!(n, 4);
    let ttl: i64 = redis::cmd("PTTL")
        .arg(keys.windows())
        .query(&mut con)
        .unwrap();
    assert!(ttl > 0 && ttl <= TTL as i64, "{ttl}");
    // Due: from `oldest` to `latest`, oldest first, at most `max`.
    assert_eq!(
        orphans::due(&mut con, &keys, 60, 180, 16).unwrap(),
        [60, 120, 180]
    );
    assert_eq!(
        orphans::due(&mut con, &keys, 60, 240, 2).unwrap(),
        [60, 120]
    );
    // Settled: reported, not due any more.
    orphans::settle(&mut con, &keys, 120).unwrap();
    assert_eq!(
        orphans::due(&mut con, &keys, 60, 240, 16).unwrap(),
        [60, 180, 240]
    );
    // Those before `oldest` have expired keys: forgotten for good.
    assert_eq!(orphans::due(&mut con, &keys, 180, 180, 16).unwrap(), [180]);
    assert_eq!(
        orphans::due(&mut con, &keys, 0, 1_000, 16).unwrap(),
        [180, 240]
    );
    // What another program put there is skipped, not taken for a window.
    let _: i64 = redis::cmd("ZADD")
        .arg(keys.windows())
        .arg(200)
        .arg("not a window")
        .arg(210)
        .arg("9".repeat(64))
        .query(&mut con)
        .unwrap();
    assert_eq!(
        orphans::due(&mut con, &keys, 0, 1_000, 16).unwrap(),
        [180, 240]
    );
}

#[test]
fn a_window_with_nothing_in_redis_has_nothing_to_report() {
    use verve::cluster::orphans::has_anything;
    let redis = Redis::start();
    let mut con = redis.connect();
    let keys = Keys::new("verve-test");
    assert!(!has_anything(&mut con, &keys, 60).unwrap());
    // Any of what a report is made from: the ids, a last-shipment mark, or an endpoint
    // (each shipped alone), or a partition's count (its list freed once counted).
    assert_eq!(
        ship(&mut con, &keys, 120, "a", &[7], &[], false),
        Shipped::Stored
    );
    assert_eq!(
        ship(&mut con, &keys, 180, "a", &[], &[], true),
        Shipped::Stored
    );
    let endpoint = ["http://e.test/".to_string()];
    assert_eq!(
        ship(&mut con, &keys, 240, "a", &[], &endpoint, false),
        Shipped::Stored
    );
    let _: () = redis::cmd("SET")
        .arg(&keys.partition(300, 9).count)
        .arg(5)
        .query(&mut con)
        .unwrap();
    for w in [120, 180, 240, 300] {
        assert!(has_anything(&mut con, &keys, w).unwrap(), "{w}");
    }
}
