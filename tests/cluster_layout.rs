//! The key layout of cluster mode (`verve::cluster::keys::LAYOUT`) against a real
//! `redis-server` on a free loopback port (and a 3-master Redis Cluster): the prefix is
//! claimed for one layout in `P:layout` as it is for one interval, instances of another
//! layout are refused at start-up with exit 2 (the release before layouts, which writes no
//! `P:layout`, included), and a running instance keeps off Redis while another layout holds
//! the prefix. The release before layouts is played by the keys it writes: a heartbeat in
//! `P:live` and a plain number in `P:interval`.

mod common;

use common::kafka_log::metric;
use common::redis_servers::{Redis, RedisCluster};
use common::{temp_dir, wait_until, Server};
use verve::cluster::conn::{self, Problem};
use verve::cluster::keys::{parse_count, Keys, LAYOUT};
use verve::cluster::presence::{
    self, claim_interval, claim_layout, layout_in_use, Interval, Layout, LAYOUT_1,
};
use verve::cluster::store;

const TTL: u64 = 60_000;
/// How recent a heartbeat must be for its instance to count as live (verve's own).
const LIVE_MS: u64 = 5_000;
const INTERVAL: u64 = 3;

fn get(con: &mut dyn redis::ConnectionLike, key: &str) -> Option<String> {
    redis::cmd("GET").arg(key).query(con).unwrap()
}

fn put(con: &mut dyn redis::ConnectionLike, args: &[&str]) {
    let mut cmd = redis::cmd(args[0]);
    cmd.arg(&args[1..]);
    let _: redis::Value = cmd.query(con).unwrap();
}

fn exists(con: &mut dyn redis::ConnectionLike, key: &str) -> bool {
    redis::cmd("EXISTS").arg(key).query(con).unwrap()
}

/// What an instance of the release before layouts leaves under the prefix while it runs:
/// a heartbeat in the live set (by Redis's clock) and its `--interval` as a plain number.
fn layout_1_running(con: &mut dyn redis::ConnectionLike, keys: &Keys, interval: u64) {
    store::heartbeat(con, keys, "old:8080", LIVE_MS).unwrap();
    put(
        con,
        &[
            "SET",
            &keys.interval(),
            &interval.to_string(),
            "PX",
            "60000",
        ],
    );
}

/// The claim the release before layouts makes of `P:interval` at start-up and at every
/// heartbeat, as that release runs it: another value is returned, and a value that is not a
/// plain number makes it refuse to start ("something other than verve writes under the
/// prefix", exit 2) without touching the key.
const LAYOUT_1_CLAIM: &str = r"
local v = redis.call('GET', KEYS[1])
if v and v ~= ARGV[1] then
  return string.sub(v, 1, 21)
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
";

/// Whether an instance of the release before layouts, with `--interval interval`, starts
/// on this prefix: `Ok` if it does, `Err(what it found)` if it is refused.
fn layout_1_starts(
    con: &mut dyn redis::ConnectionLike,
    keys: &Keys,
    interval: u64,
) -> Result<(), String> {
    let stored: Option<Vec<u8>> = redis::Script::new(LAYOUT_1_CLAIM)
        .key(keys.interval())
        .arg(interval)
        .arg(TTL)
        .invoke(con)
        .unwrap();
    match stored {
        None => Ok(()),
        Some(v) if parse_count(&v) == Some(interval) => Ok(()),
        Some(v) => Err(String::from_utf8_lossy(&v).into_owned()),
    }
}

#[test]
fn the_prefix_is_claimed_for_one_key_layout() {
    let redis = Redis::start();
    let mut con = redis.connect();
    let keys = Keys::new("verve-test");
    assert_eq!(claim_layout(&mut con, &keys, TTL).unwrap(), Layout::Same);
    assert_eq!(get(&mut con, &keys.layout()).as_deref(), Some(LAYOUT));
    assert_eq!(
        claim_layout(&mut con, &keys, TTL).unwrap(),
        Layout::Same,
        "a refresh"
    );
    let ttl: i64 = redis::cmd("PTTL")
        .arg(keys.layout())
        .query(&mut con)
        .unwrap();
    assert!(ttl > 0 && ttl <= TTL as i64, "expires: {ttl}");
    put(&mut con, &["SET", &keys.layout(), "3/32"]);
    assert_eq!(
        claim_layout(&mut con, &keys, TTL).unwrap(),
        Layout::Other("3/32".into())
    );
    assert_eq!(
        get(&mut con, &keys.layout()).as_deref(),
        Some("3/32"),
        "another layout's claim is left alone"
    );
    // Another deployment's prefix is its own.
    let other = Keys::new("verve-other");
    assert_eq!(claim_layout(&mut con, &other, TTL).unwrap(), Layout::Same);
    // A value no verve writes is not taken for a layout (nor shown as one).
    put(&mut con, &["SET", &keys.layout(), "two sixteen\n"]);
    assert!(matches!(
        claim_layout(&mut con, &keys, TTL),
        Err(store::Error::Malformed { key, .. }) if key == keys.layout()
    ));
}

#[test]
fn the_interval_is_stored_with_the_layout_and_a_plain_number_is_the_release_before() {
    let redis = Redis::start();
    let mut con = redis.connect();
    let keys = Keys::new("verve-test");
    let claim = |con: &mut redis::Connection, secs| claim_interval(con, &keys, secs, TTL);
    assert_eq!(claim(&mut con, 60).unwrap(), Interval::Same);
    assert_eq!(
        get(&mut con, &keys.interval()).as_deref(),
        Some("60 layout 2/16")
    );
    assert_eq!(claim(&mut con, 60).unwrap(), Interval::Same, "a refresh");
    assert_eq!(claim(&mut con, 30).unwrap(), Interval::Other(60));
    // The release before layouts: whatever its interval, even this one's.
    put(&mut con, &["SET", &keys.interval(), "60"]);
    let layout_1 = |interval| Interval::OtherLayout {
        layout: LAYOUT_1.into(),
        interval,
    };
    assert_eq!(claim(&mut con, 60).unwrap(), layout_1(60));
    assert_eq!(claim(&mut con, 30).unwrap(), layout_1(60));
    assert_eq!(get(&mut con, &keys.interval()).as_deref(), Some("60"));
    put(&mut con, &["SET", &keys.interval(), "60 layout 3/32"]);
    assert_eq!(
        claim(&mut con, 60).unwrap(),
        Interval::OtherLayout {
            layout: "3/32".into(),
            interval: 60
        }
    );
}

#[test]
fn the_release_before_layouts_is_refused_where_this_layout_claimed_the_prefix() {
    // That release reads `P:interval` alone: the value this layout writes there is not a
    // plain number, so it refuses to start, whatever its interval, and leaves the key alone.
    let redis = Redis::start();
    let mut con = redis.connect();
    let keys = Keys::new("verve");
    assert_eq!(
        layout_1_starts(&mut con, &keys, 60),
        Ok(()),
        "an empty prefix"
    );
    put(&mut con, &["DEL", &keys.interval()]);
    assert_eq!(
        claim_interval(&mut con, &keys, 60, TTL).unwrap(),
        Interval::Same
    );
    for interval in [60, 30] {
        assert_eq!(
            layout_1_starts(&mut con, &keys, interval),
            Err("60 layout 2/16".into())
        );
    }
    assert_eq!(
        get(&mut con, &keys.interval()).as_deref(),
        Some("60 layout 2/16")
    );
}

#[test]
fn the_layout_in_use_is_read_from_the_keys_each_release_writes() {
    let redis = Redis::start();
    let mut con = redis.connect();
    let in_use = |con: &mut redis::Connection, keys: &Keys| layout_in_use(con, keys, LIVE_MS);
    // Nobody.
    let keys = Keys::new("empty");
    assert_eq!(in_use(&mut con, &keys).unwrap(), None);
    // This layout: its claim, whether its instances are live or not.
    let keys = Keys::new("current");
    claim_layout(&mut con, &keys, TTL).unwrap();
    assert_eq!(in_use(&mut con, &keys).unwrap().as_deref(), Some(LAYOUT));
    store::heartbeat(&mut con, &keys, "a", LIVE_MS).unwrap();
    assert_eq!(in_use(&mut con, &keys).unwrap().as_deref(), Some(LAYOUT));
    // Another one.
    let keys = Keys::new("later");
    put(&mut con, &["SET", &keys.layout(), "3/32"]);
    store::heartbeat(&mut con, &keys, "a", LIVE_MS).unwrap();
    assert_eq!(in_use(&mut con, &keys).unwrap().as_deref(), Some("3/32"));
    // The release before layouts, by either of its marks.
    let keys = Keys::new("both");
    layout_1_running(&mut con, &keys, 60);
    assert_eq!(in_use(&mut con, &keys).unwrap().as_deref(), Some(LAYOUT_1));
    let keys = Keys::new("heartbeat");
    store::heartbeat(&mut con, &keys, "old:8080", LIVE_MS).unwrap();
    assert_eq!(in_use(&mut con, &keys).unwrap().as_deref(), Some(LAYOUT_1));
    let keys = Keys::new("interval");
    put(&mut con, &["SET", &keys.interval(), "60"]);
    assert_eq!(in_use(&mut con, &keys).unwrap().as_deref(), Some(LAYOUT_1));
    // A heartbeat older than the live TTL (by Redis's clock) is nobody's.
    let keys = Keys::new("stale");
    put(&mut con, &["ZADD", &keys.live(), "1000", "gone:8080"]);
    assert_eq!(in_use(&mut con, &keys).unwrap(), None);
    // This layout's interval without its layout key (lost alone): not the release before.
    let keys = Keys::new("lost");
    claim_interval(&mut con, &keys, 60, TTL).unwrap();
    assert_eq!(in_use(&mut con, &keys).unwrap(), None);
    // A layout key no verve writes.
    let keys = Keys::new("garbage");
    put(&mut con, &["SET", &keys.layout(), &"x".repeat(100)]);
    assert!(matches!(
        in_use(&mut con, &keys),
        Err(store::Error::Malformed { key, .. }) if key == keys.layout()
    ));
}

/// `conn::check` on `url` for prefix `verve`, `--interval 60`.
fn check(url: &str) -> Result<&'static str, Problem> {
    let target = conn::Target::parse(url).unwrap();
    conn::check(&target, &Keys::new("verve"), 60, TTL)
}

fn refused_for(result: Result<&'static str, Problem>) -> String {
    match result {
        Err(Problem::OtherLayout(theirs)) => theirs,
        other => panic!("not refused for its layout: {other:?}"),
    }
}

#[test]
fn the_start_up_check_claims_the_layout_and_refuses_another() {
    let redis = Redis::start();
    let mut con = redis.connect();
    let keys = Keys::new("verve");
    assert_eq!(check(&redis.url).unwrap(), "Redis");
    assert_eq!(get(&mut con, &keys.layout()).as_deref(), Some(LAYOUT));
    assert_eq!(
        get(&mut con, &keys.interval()).as_deref(),
        Some("60 layout 2/16")
    );
    // A second instance of this layout, with the first one heartbeating.
    store::heartbeat(&mut con, &keys, "first:8080", LIVE_MS).unwrap();
    assert_eq!(check(&redis.url).unwrap(), "Redis");
    // Another layout took the prefix: refused, and nothing of this one's is written.
    put(&mut con, &["FLUSHALL"]);
    put(&mut con, &["SET", &keys.layout(), "3/32"]);
    assert_eq!(refused_for(check(&redis.url)), "3/32");
    assert!(!exists(&mut con, &keys.interval()));
    assert_eq!(get(&mut con, &keys.layout()).as_deref(), Some("3/32"));
    // The release before layouts, by both marks and by each alone.
    for marks in [&["live", "interval"][..], &["live"], &["interval"]] {
        put(&mut con, &["FLUSHALL"]);
        if marks.contains(&"live") {
            store::heartbeat(&mut con, &keys, "old:8080", LIVE_MS).unwrap();
        }
        if marks.contains(&"interval") {
            put(&mut con, &["SET", &keys.interval(), "60"]);
        }
        assert_eq!(refused_for(check(&redis.url)), LAYOUT_1, "{marks:?}");
        assert!(!exists(&mut con, &keys.layout()), "{marks:?}");
    }
}

#[test]
fn a_redis_user_without_time_is_still_refused_beside_the_release_before_layouts() {
    // Without `TIME` no heartbeat can be judged by Redis's clock: that the live set is there
    // at all says an instance heartbeated within its expiry.
    let redis = Redis::start();
    let mut admin = redis.connect();
    put(
        &mut admin,
        &[
            "ACL",
            "SETUSER",
            "notime",
            "on",
            ">pw",
            "resetkeys",
            "~verve:*",
            "resetchannels",
            "+@all",
            "-time",
        ],
    );
    let url = format!("redis://notime:pw@127.0.0.1:{}/", redis.port);
    assert_eq!(check(&url).unwrap(), "Redis");
    let keys = Keys::new("verve");
    put(&mut admin, &["FLUSHALL"]);
    store::heartbeat(&mut admin, &keys, "old:8080", LIVE_MS).unwrap();
    assert_eq!(refused_for(check(&url)), LAYOUT_1);
}

#[test]
fn the_claims_work_on_a_redis_cluster() {
    // `P:live`, `P:interval` and `P:layout` live in different slots: each is read and
    // claimed on its own.
    let cluster = RedisCluster::start();
    let mut con = cluster.connect();
    let keys = Keys::new("verve");
    assert_eq!(check(&cluster.urls()).unwrap(), "Redis Cluster");
    assert_eq!(get(&mut con, &keys.layout()).as_deref(), Some(LAYOUT));
    put(&mut con, &["SET", &keys.layout(), "3/32"]);
    assert_eq!(refused_for(check(&cluster.urls())), "3/32");
    put(&mut con, &["DEL", &keys.layout()]);
    put(&mut con, &["DEL", &keys.interval()]);
    layout_1_running(&mut con, &keys, 60);
    assert_eq!(refused_for(check(&cluster.urls())), LAYOUT_1);
}

/// Runs `verve --interval 3 --redis <url>` plus `extra`, which is expected to refuse to
/// start: returns its stderr after checking it exited with 2.
fn refused_start(url: &str, extra: &[&str]) -> String {
    let out = common::command(&temp_dir("other-layout"))
        .args(["--listen", "127.0.0.1:0", "--interval", "3", "--redis", url])
        .args(extra)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn an_instance_is_refused_where_instances_of_another_layout_use_the_prefix() {
    let redis = Redis::start();
    let mut con = redis.connect();
    let keys = Keys::new("verve");
    put(&mut con, &["SET", &keys.layout(), "3/32", "PX", "60000"]);
    let err = refused_start(&redis.url, &[]);
    assert!(
        err.contains("error: --redis-prefix verve:")
            && err.contains("in layout 3/32, this one in layout 2/16,")
            && err.contains("its own --redis-prefix"),
        "both layouts and what to do named: {err}"
    );
    assert!(!exists(&mut con, &keys.interval()), "no claim left behind");
    // Another prefix is another deployment, with a layout of its own.
    let other = Server::start(
        INTERVAL,
        &["--redis", &redis.url, "--redis-prefix", "other"],
    );
    other.accept_ok(1);
}

#[test]
fn an_instance_is_refused_beside_instances_of_the_release_before_layouts() {
    let redis = Redis::start();
    let mut con = redis.connect();
    let keys = Keys::new("verve");
    // Same interval, same prefix: only the layout differs.
    layout_1_running(&mut con, &keys, INTERVAL);
    let err = refused_start(&redis.url, &["--instance-id", "new:8080"]);
    assert!(
        err.contains("error: --redis-prefix verve:")
            && err.contains(
                "in layout 1 (an earlier verve, which does not store its layout), this one in \
                 layout 2/16,"
            ),
        "both layouts named: {err}"
    );
    assert!(!exists(&mut con, &keys.layout()), "no claim left behind");
    assert_eq!(
        get(&mut con, &keys.interval()).as_deref(),
        Some("3"),
        "their claim is left alone"
    );
    // Gone once Redis has forgotten them.
    put(&mut con, &["DEL", &keys.live(), &keys.interval()]);
    let server = Server::start(INTERVAL, &["--redis", &redis.url]);
    server.accept_ok(1);
    assert_eq!(get(&mut con, &keys.layout()).as_deref(), Some(LAYOUT));
}

#[test]
fn a_second_instance_of_this_layout_starts_beside_a_heartbeating_one() {
    let redis = Redis::start();
    let mut con = redis.connect();
    let keys = Keys::new("verve");
    let first = Server::start(INTERVAL, &["--redis", &redis.url, "--instance-id", "a"]);
    wait_until("the first instance's heartbeat", || {
        let live = presence::live(&mut con, &keys, LIVE_MS).unwrap()?;
        live.contains(&"a".to_owned()).then_some(())
    });
    let second = Server::start(INTERVAL, &["--redis", &redis.url, "--instance-id", "b"]);
    first.accept_ok(1);
    second.accept_ok(2);
    assert_eq!(get(&mut con, &keys.layout()).as_deref(), Some(LAYOUT));
}

/// Waits until `server` has failed at least two more Redis operations than now: it tried
/// (and was refused) again since whatever the test did before.
fn refused_again(server: &Server) {
    let errors = metric(server, "verve_redis_errors_total");
    wait_until("the instance to try Redis again", || {
        (metric(server, "verve_redis_errors_total") >= errors + 2).then_some(())
    });
}

#[test]
fn a_running_instance_keeps_off_redis_while_another_layout_holds_the_prefix() {
    // Another layout took the prefix while this instance could not reach Redis (at start-up
    // it would have been refused): it writes nothing there, says so once, and goes on once
    // the prefix is free.
    let redis = Redis::start();
    let mut con = redis.connect();
    let keys = Keys::new("verve");
    let server = Server::start(INTERVAL, &["--redis", &redis.url, "--instance-id", "a"]);
    wait_until("the instance's heartbeat", || {
        exists(&mut con, &keys.live()).then_some(())
    });
    put(&mut con, &["FLUSHALL"]);
    put(&mut con, &["SET", &keys.layout(), "3/32"]);
    let conflict = "instances of key layout 3/32 now use --redis-prefix verve; this one (layout \
                    2/16) keeps off Redis until they are gone";
    server.wait_for_log("the conflict", |l| l.contains(conflict));
    put(&mut con, &["DEL", &keys.live(), &keys.interval()]);
    refused_again(&server);
    assert!(!exists(&mut con, &keys.live()), "no heartbeat");
    assert!(!exists(&mut con, &keys.interval()), "no interval claim");
    assert_eq!(get(&mut con, &keys.layout()).as_deref(), Some("3/32"));
    put(&mut con, &["DEL", &keys.layout()]);
    server.wait_for_log("Redis back", |l| l.contains("is back after"));
    wait_until("the prefix claimed again", || {
        (get(&mut con, &keys.layout()).as_deref() == Some(LAYOUT)).then_some(())
    });
    assert_eq!(
        server.log().matches(conflict).count(),
        1,
        "one outage, logged once"
    );
}

#[test]
fn a_running_instance_keeps_off_redis_while_the_release_before_layouts_holds_the_prefix() {
    let redis = Redis::start();
    let mut con = redis.connect();
    let keys = Keys::new("verve");
    let server = Server::start(INTERVAL, &["--redis", &redis.url, "--instance-id", "a"]);
    wait_until("the instance's heartbeat", || {
        exists(&mut con, &keys.live()).then_some(())
    });
    put(&mut con, &["FLUSHALL"]);
    put(&mut con, &["SET", &keys.interval(), "3"]);
    let conflict = "instances of key layout 1 with --interval 3 now use --redis-prefix verve; \
                    this one (layout 2/16, --interval 3) keeps off Redis until they are gone";
    server.wait_for_log("the conflict", |l| l.contains(conflict));
    refused_again(&server);
    assert_eq!(
        get(&mut con, &keys.interval()).as_deref(),
        Some("3"),
        "their claim is left alone"
    );
    put(&mut con, &["DEL", &keys.interval()]);
    server.wait_for_log("Redis back", |l| l.contains("is back after"));
    wait_until("the prefix claimed again", || {
        let interval = get(&mut con, &keys.interval());
        (interval.as_deref() == Some("3 layout 2/16")).then_some(())
    });
}

#[test]
fn a_live_set_of_another_type_is_not_taken_for_instances() {
    // Only a user without `TIME` falls back to the live set's existence: anything else that
    // fails reading it is said as it is.
    let redis = Redis::start();
    let mut con = redis.connect();
    let keys = Keys::new("verve");
    put(&mut con, &["SET", &keys.live(), "not a sorted set"]);
    match check(&redis.url) {
        Err(Problem::Unusable(e)) => {
            let why = conn::describe(&e);
            assert!(
                why.contains("reading the prefix's key layout") && why.contains("WRONGTYPE"),
                "{why}"
            );
        }
        other => panic!("{other:?}"),
    }
}
