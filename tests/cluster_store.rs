//! The Redis store of cluster mode (`verve::cluster::store`) against a real `redis-server`
//! (Debian package `redis-server`, which `scripts/test.sh` installs), started by the test on a free
//! loopback port without persistence; and against a 3-master Redis Cluster on loopback,
//! where a window's keys must share one slot (its hash tag) for the scripts to work. Where
//! two instances race, each has a connection of its own and the test orders their steps.

mod common;

use common::redis_servers::{Redis, RedisCluster};
use verve::cluster::conn;
use verve::cluster::merge::{count_of_shipments_pausing, union_of_shipments, Skipped};
use verve::cluster::store::{self, Interval, Keys, Lead, RecordClaim, Shipment, Shipped};

use verve::ids::IdSet;

/// A shipment's bytes, in the compact format.
fn serialized(ids: &[i64]) -> Vec<u8> {
    verve::cluster::merge::serialize(&IdSet::from_ids(ids.iter().copied()))
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
    let (union, skipped) = union_of_shipments(con, keys, w).unwrap();
    assert_eq!(skipped.total(), 0);
    union.len()
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

#[test]
fn shipments_add_up_to_the_union_and_repeats_change_nothing() {
    let redis = Redis::start();
    window_round_trip(&mut redis.connect());
}

/// Ships, counts, leads and marks done one window, on any connection (single or cluster).
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
    // Every key of the window expires on its own.
    for key in [keys.ids(w), keys.shipped(w), keys.endpoints(w)] {
        let ttl: i64 = redis::cmd("PTTL").arg(&key).query(&mut *con).unwrap();
        assert!(ttl > 0 && ttl <= TTL as i64, "{key}: PTTL {ttl}");
    }
    // Lead, freeze, report, mark done: then the window is done for everybody, its ids are
    // gone, and a late shipment is refused instead of changing a reported count.
    assert_eq!(store::lead(con, &keys, w, "b", TTL).unwrap(), Lead::Leading);
    assert_eq!(store::lead(con, &keys, w, "a", TTL).unwrap(), Lead::Waiting);
    assert_eq!(
        store::freeze(con, &keys, w, "a", TTL).unwrap(),
        None,
        "not a's"
    );
    assert_eq!(store::freeze(con, &keys, w, "b", TTL).unwrap(), Some(4));
    assert!(store::renew(con, &keys, w, "b", TTL).unwrap());
    assert!(!store::renew(con, &keys, w, "a", TTL).unwrap());
    assert!(
        !store::mark_done(con, &keys, w, "a", 6, TTL).unwrap(),
        "not a's lease"
    );
    assert!(store::mark_done(con, &keys, w, "b", 6, TTL).unwrap());
    assert_eq!(store::lead(con, &keys, w, "a", TTL).unwrap(), Lead::Done(6));
    assert!(!store::renew(con, &keys, w, "b", TTL).unwrap(), "done");
    let exists: i64 = redis::cmd("EXISTS")
        .arg(keys.ids(w))
        .query(&mut *con)
        .unwrap();
    assert_eq!(exists, 0, "the ids go once the window is reported");
    assert_eq!(ship(con, &keys, w, "d", &[9], &[], true), Shipped::TooLate);
    assert_eq!(count(con, &keys, w), 0);
    for key in [keys.ids(w), keys.endpoints(w), keys.frozen(w)] {
        let exists: i64 = redis::cmd("EXISTS").arg(&key).query(&mut *con).unwrap();
        assert_eq!(exists, 0, "{key} is gone once the window is reported");
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
    // Read no further than the caller's maximum (`--max-endpoints`), whatever the set holds.
    let stored = store::endpoints(&mut con, &keys, 0, 1_000).unwrap();
    assert_eq!((stored.members.len(), stored.total), (1_000, 2_500));
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
    store::heartbeat(&mut con, &keys, "a", TTL).unwrap();
    assert_eq!(store::live(&mut con, &keys, TTL).unwrap().unwrap(), ["a"]);
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

#[test]
fn a_shipment_that_reaches_redis_after_the_leaders_read_is_refused_not_deleted_unseen() {
    // The leader and a slow instance, each on a connection of its own; the test puts the
    // slow instance's last shipment between the leader's read and its `done` mark, which
    // is where it used to be stored, answered "stored", and then deleted unread.
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
    let n = store::freeze(&mut leader, &keys, w, "a", TTL)
        .unwrap()
        .unwrap();
    assert_eq!(n, 2);
    let (union, skipped) = count_of_shipments_pausing(&mut leader, &keys, w, n, &mut |_| Ok(true))
        .unwrap()
        .unwrap();
    assert_eq!((union, skipped), (4, Skipped::default()));
    // Read; not yet marked done. The slow instance's last shipment arrives now: refused, so
    // that instance keeps its ids and reports them itself (`scope=local`).
    let late = vec!["http://late.test/".to_string()];
    assert_eq!(
        ship(&mut slow, &keys, w, "b", &[5, 6], &late, true),
        Shipped::TooLate
    );
    // Nothing of it was stored: the list is what the leader read, the endpoint is not in
    // the set, and the instance is not marked as shipped.
    assert_eq!(store::shipments(&mut slow, &keys, w).unwrap(), n);
    assert!(endpoints(&mut slow, &keys, w, 10).is_empty());
    assert!(!store::has_shipped(&mut slow, &keys, w, "b").unwrap());
    assert!(store::mark_done(&mut leader, &keys, w, "a", union, TTL).unwrap());
    assert_eq!(
        store::lead(&mut slow, &keys, w, "b", TTL).unwrap(),
        Lead::Done(4)
    );
    // A successor taking over a frozen window (the leader died after its freeze) reads the
    // same list: freezing again changes nothing.
    let w2 = w + 60;
    ship(&mut leader, &keys, w2, "a", &[7], &[], true);
    store::lead(&mut leader, &keys, w2, "a", TTL).unwrap();
    assert_eq!(
        store::freeze(&mut leader, &keys, w2, "a", TTL).unwrap(),
        Some(1)
    );
    assert_eq!(
        ship(&mut slow, &keys, w2, "b", &[8], &[], true),
        Shipped::TooLate
    );
    store::release(&mut leader, &keys, w2, "a").unwrap();
    assert_eq!(
        store::lead(&mut slow, &keys, w2, "b", TTL).unwrap(),
        Lead::Leading
    );
    assert_eq!(
        store::freeze(&mut slow, &keys, w2, "b", TTL).unwrap(),
        Some(1)
    );
    assert_eq!(count(&mut slow, &keys, w2), 1);
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
    let exists = |con: &mut redis::Connection, key: String| -> bool {
        redis::cmd("EXISTS").arg(key).query::<i64>(con).unwrap() == 1
    };
    let e = vec!["http://e.test/".to_string()];
    let try_ship = |con: &mut redis::Connection, w: u64| {
        let bytes = serialized(&[1, 2]);
        store::ship(
            con,
            &keys,
            &Shipment {
                window_start: w,
                instance: "a",
                ids: &bytes,
                endpoints: &e,
                last: true,
                ttl_ms: TTL,
            },
        )
    };
    // Each of the window's keys of another type, in turn: refused before anything is
    // written, so no shipment is half stored.
    for (w, key) in [
        (60, keys.ids(60)),
        (120, keys.endpoints(120)),
        (180, keys.shipped(180)),
    ] {
        set(&mut con, &["HSET", &key, "f", "v"]);
        assert_eq!(malformed_key(try_ship(&mut con, w)), key);
        let written = [keys.ids(w), keys.endpoints(w), keys.shipped(w)]
            .into_iter()
            .filter(|k| *k != key && exists(&mut con, k.clone()))
            .collect::<Vec<_>>();
        assert!(written.is_empty(), "{key}: {written:?} written");
    }
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
    set(&mut con, &["RPUSH", &keys.ids(w), "garbage!"]);
    let huge = vec![b'x'; store::MAX_SHIPMENT_BYTES + 1];
    redis::cmd("RPUSH")
        .arg(keys.ids(w))
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
            unreadable: 1
        }
    );
    assert!(store::check_shipments(&keys, w, store::MAX_SHIPMENTS_PER_WINDOW).is_ok());
    assert_eq!(
        malformed_key(store::check_shipments(
            &keys,
            w,
            store::MAX_SHIPMENTS_PER_WINDOW + 1
        )),
        keys.ids(w)
    );
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
