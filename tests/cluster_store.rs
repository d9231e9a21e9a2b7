//! The Redis store of cluster mode (`verve::cluster::store`) against a real `redis-server`
//! (Debian package `redis-server`, which `.ci/run` installs), started by the test on a free
//! loopback port without persistence; and against a 3-master Redis Cluster on loopback,
//! where a window's keys must share one slot (its hash tag) for the scripts to work.

mod common;

use common::redis_servers::{Redis, RedisCluster};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use verve::cluster::node::union_of_shipments;
use verve::cluster::store::{self, Keys, Lead, Shipment, Shipped};

use verve::ids::IdSet;

/// A shipment's bytes: the compact format and roaring's portable format (what earlier
/// versions shipped, still read) in turn, so that the unions below mix both.
fn serialized(ids: &[i64]) -> Vec<u8> {
    static CALLS: AtomicUsize = AtomicUsize::new(0);
    let set = IdSet::from_ids(ids.iter().copied());
    let mut bytes = Vec::new();
    if CALLS.fetch_add(1, Relaxed).is_multiple_of(2) {
        bytes = verve::cluster::node::serialize(&set);
    } else if !set.is_empty() {
        set.to_treemap().serialize_into(&mut bytes).unwrap();
    }
    bytes
}

const TTL: u64 = 60_000;

fn ship(
    con: &mut dyn redis::ConnectionLike,
    keys: &Keys,
    w: u64,
    instance: &str,
    ids: &[i64],
    endpoints: &[String],
    last: bool,
) -> Shipped {
    let bytes = serialized(ids);
    store::ship(
        con,
        keys,
        &Shipment {
            window_start: w,
            instance,
            ids: &bytes,
            endpoints,
            last,
            ttl_ms: TTL,
        },
    )
    .unwrap()
}

fn count(con: &mut dyn redis::ConnectionLike, keys: &Keys, w: u64) -> u64 {
    let (union, unreadable) = union_of_shipments(con, keys, w).unwrap();
    assert_eq!(unreadable, 0);
    union.len()
}

#[test]
fn shipments_add_up_to_the_union_and_repeats_change_nothing() {
    let redis = Redis::start();
    window_round_trip(&mut redis.connect());
}

/// Ships, counts, leads and finishes one window, on any connection (single or cluster).
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
    assert!(store::shipped(con, &keys, w).unwrap().is_empty());
    ship(con, &keys, w, "a", &[3, -5], &[], true);
    let y = vec!["http://y.test/".to_string(), "http://x.test/".to_string()];
    ship(con, &keys, w, "b", &[3, 4, i64::MAX], &y, true);
    ship(con, &keys, w, "a", &[1, 2, 3, -5], &[], true);
    // An empty last shipment only marks the instance done.
    ship(con, &keys, w, "c", &[], &[], true);
    assert_eq!(store::shipped(con, &keys, w).unwrap(), ["a", "b", "c"]);
    assert_eq!(count(con, &keys, w), 6, "{{1, 2, 3, -5}} | {{3, 4, MAX}}");
    assert_eq!(
        store::endpoints(con, &keys, w).unwrap(),
        ["http://x.test/", "http://y.test/"]
    );
    // Every key of the window expires on its own.
    for key in [keys.ids(w), keys.shipped(w), keys.endpoints(w)] {
        let ttl: i64 = redis::cmd("PTTL").arg(&key).query(&mut *con).unwrap();
        assert!(ttl > 0 && ttl <= TTL as i64, "{key}: PTTL {ttl}");
    }
    // Lead, report, finish: then the window is done for everybody, its ids are gone, and a
    // late shipment is refused instead of changing a reported count.
    assert_eq!(store::lead(con, &keys, w, "b", TTL).unwrap(), Lead::Leading);
    assert_eq!(store::lead(con, &keys, w, "a", TTL).unwrap(), Lead::Waiting);
    assert!(store::renew(con, &keys, w, "b", TTL).unwrap());
    assert!(!store::renew(con, &keys, w, "a", TTL).unwrap());
    assert!(
        !store::finish(con, &keys, w, "a", 6, TTL).unwrap(),
        "not a's lease"
    );
    assert!(store::finish(con, &keys, w, "b", 6, TTL).unwrap());
    assert_eq!(store::lead(con, &keys, w, "a", TTL).unwrap(), Lead::Done(6));
    assert!(!store::renew(con, &keys, w, "b", TTL).unwrap(), "done");
    let exists: i64 = redis::cmd("EXISTS")
        .arg(keys.ids(w))
        .query(&mut *con)
        .unwrap();
    assert_eq!(exists, 0, "the ids go once the window is reported");
    assert_eq!(ship(con, &keys, w, "d", &[9], &[], true), Shipped::TooLate);
    assert_eq!(count(con, &keys, w), 0);
}

#[test]
fn a_shipment_with_thousands_of_endpoints_arrives_whole() {
    let redis = Redis::start();
    let mut con = redis.connect();
    let keys = Keys::new("verve-test");
    let endpoints: Vec<String> = (0..2_500).map(|i| format!("http://h{i}.test/")).collect();
    ship(&mut con, &keys, 0, "a", &[7], &endpoints, true);
    assert_eq!(store::endpoints(&mut con, &keys, 0).unwrap().len(), 2_500);
    assert_eq!(store::shipped(&mut con, &keys, 0).unwrap(), ["a"]);
}

#[test]
fn many_shipments_are_read_page_by_page() {
    let redis = Redis::start();
    let mut con = redis.connect();
    let keys = Keys::new("verve-test");
    // 30 shipments (pages of 8) of 1000 ids each, overlapping by half.
    for i in 0..30i64 {
        let ids: Vec<i64> = (i * 500..i * 500 + 1000).collect();
        ship(&mut con, &keys, 60, &format!("i{i}"), &ids, &[], false);
    }
    assert_eq!(count(&mut con, &keys, 60), 29 * 500 + 1000);
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
fn heartbeats_name_the_live_instances() {
    let redis = Redis::start();
    let mut con = redis.connect();
    let keys = Keys::new("verve-test");
    let ttl = 3_000;
    store::heartbeat(&mut con, &keys, "a", 10_000, ttl).unwrap();
    store::heartbeat(&mut con, &keys, "b", 11_000, ttl).unwrap();
    store::heartbeat(&mut con, &keys, "c", 11_000, ttl).unwrap();
    assert_eq!(
        store::live(&mut con, &keys, 12_000, ttl).unwrap(),
        ["a", "b", "c"]
    );
    // a falls silent; b goes on; c leaves.
    store::heartbeat(&mut con, &keys, "b", 13_500, ttl).unwrap();
    store::leave(&mut con, &keys, "c").unwrap();
    assert_eq!(store::live(&mut con, &keys, 13_500, ttl).unwrap(), ["b"]);
    let size: i64 = redis::cmd("ZCARD")
        .arg(keys.live())
        .query(&mut con)
        .unwrap();
    assert_eq!(size, 1, "silent instances are removed, not just skipped");
}

#[test]
fn the_store_works_on_a_three_master_redis_cluster() {
    let cluster = RedisCluster::start();
    let mut con = cluster.connect();
    window_round_trip(&mut con);
    let keys = Keys::new("verve-test");
    // The lease script and the heartbeat route by their keys too.
    assert_eq!(
        store::lead(&mut con, &keys, 120, "a", TTL).unwrap(),
        Lead::Leading
    );
    assert_eq!(
        store::lead(&mut con, &keys, 120, "b", TTL).unwrap(),
        Lead::Waiting
    );
    store::heartbeat(&mut con, &keys, "a", 5_000, TTL).unwrap();
    assert_eq!(store::live(&mut con, &keys, 5_000, TTL).unwrap(), ["a"]);
    // The windows really are spread over the masters: their slots differ.
    let mut slot = |key: String| -> i64 {
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut con)
            .unwrap()
    };
    let slots: std::collections::HashSet<i64> = (0..20).map(|i| slot(keys.lease(60 * i))).collect();
    assert!(slots.len() > 1, "one slot for every window: {slots:?}");
    assert_eq!(slot(keys.ids(60)), slot(keys.done(60)));
}
