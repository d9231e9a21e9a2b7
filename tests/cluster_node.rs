//! The cluster thread (`verve::cluster::node`) against a real `redis-server` on loopback,
//! with a clock the test moves by hand: the test records ids into the shards and seals
//! windows itself, as the collector would, and plays the other instances (and leaders) on
//! connections of its own. Nothing waits for wall-clock time to pass a window; waits are for
//! events (a report, a key in Redis), bounded by [`common::wait_until`]'s deadline.

mod common;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use common::redis_servers::Redis;
use common::wait_until;
use crossbeam_channel::{unbounded, Receiver, Sender};
use verve::clock::{rfc3339_secs, ManualClock, Windows};
use verve::cluster::conn::Target;
use verve::cluster::merge::count_of_shipments_pausing;
use verve::cluster::node::{ClusterSink, Settings, WINDOW_TRIES};
use verve::cluster::store::{self, Keys, Lead};
use verve::endpoints::EndpointPolicy;
use verve::metrics::Metrics;
use verve::report::{Reporter, Scope, WindowReport};
use verve::shards::Shards;
use verve::sink::{SealedWindow, WindowSink};

const INTERVAL_SECS: u64 = 60;
const GRACE: Duration = Duration::from_secs(2);
/// Longest wait for one report: a window given up after its tries takes about
/// `WINDOW_TRIES` seconds.
const REPORT_WAIT: Duration = Duration::from_secs(30);

/// Every log line of the test binary, `LEVEL target message`.
static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let line = format!("{} {} {}", record.level(), record.target(), record.args());
        lines_mut().push(line);
    }

    fn flush(&self) {}
}

fn capture_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        log::set_logger(&Capture).unwrap();
        log::set_max_level(log::LevelFilter::Info);
    });
}

/// The captured lines (a test that failed while it held them does not fail the others).
fn lines_mut() -> std::sync::MutexGuard<'static, Vec<String>> {
    LINES.lock().unwrap_or_else(|e| e.into_inner())
}

fn lines() -> Vec<String> {
    lines_mut().clone()
}

/// Captured lines that contain every one of `parts`.
fn logged(parts: &[&str]) -> Vec<String> {
    lines()
        .into_iter()
        .filter(|l| parts.iter().all(|p| l.contains(p)))
        .collect()
}

/// The reports the cluster thread makes, handed to the test.
struct Recorder(Sender<WindowReport>);

impl Reporter for Recorder {
    fn report(&mut self, report: &WindowReport) {
        let _ = self.0.send(report.clone());
    }
}

/// One instance's cluster thread, with its shards and its manual clock.
struct Instance {
    sink: ClusterSink,
    shards: Arc<Shards>,
    clock: Arc<ManualClock>,
    windows: Windows,
    reports: Receiver<WindowReport>,
    metrics: Arc<Metrics>,
}

impl Instance {
    /// `name` on `redis` under `prefix`, its clock at `now_ms`.
    fn start(redis: &Redis, prefix: &str, name: &str, now_ms: u64) -> Instance {
        capture_logs();
        let windows = Windows::new(INTERVAL_SECS);
        let shards = Arc::new(Shards::new(1, EndpointPolicy::default(), 100));
        let clock = ManualClock::new(now_ms);
        let metrics = Arc::new(Metrics::new(1));
        let (tx, reports) = unbounded();
        let settings = Settings {
            target: Target::parse(&redis.url).unwrap(),
            keys: Keys::new(prefix),
            instance: name.to_string(),
            grace: GRACE,
            backlog: 10,
            windows,
        };
        let sink = ClusterSink::start(
            settings,
            shards.clone(),
            clock.clone(),
            Box::new(Recorder(tx)),
            metrics.clone(),
            &verve::health::Health::new(),
        )
        .unwrap();
        // Connected (it claims the prefix first thing) before the test moves the clock: a
        // leader trusts the live set only a grace period after it connected.
        let mut con = redis.connect();
        let keys = Keys::new(prefix);
        wait_until("the instance to connect", || {
            redis::cmd("EXISTS")
                .arg(keys.interval())
                .query::<bool>(&mut con)
                .unwrap()
                .then_some(())
        });
        Instance {
            sink,
            shards,
            clock,
            windows,
            reports,
            metrics,
        }
    }

    fn record(&self, window: u64, ids: std::ops::Range<i64>, endpoint: Option<&str>) {
        for id in ids {
            self.shards.record(0, window, id, endpoint).unwrap();
        }
    }

    /// Moves the clock past `window`'s end and its grace, and seals it, as the collector
    /// does at the boundary.
    fn seal(&mut self, window: u64) {
        self.clock
            .set(self.windows.end_ms(window) + GRACE.as_millis() as u64 + 1);
        let sealed = self.shards.seal(window);
        self.sink.accept(SealedWindow {
            window,
            window_start: self.windows.start_secs(window),
            ids: sealed.ids,
            unshipped: sealed.unshipped,
            endpoints: sealed.endpoints,
            charge: sealed.charge,
        });
    }

    fn next_report(&self) -> WindowReport {
        self.reports.recv_timeout(REPORT_WAIT).unwrap_or_else(|e| {
            let lines = lines();
            panic!("no report from the cluster thread ({e}); the log: {lines:#?}")
        })
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.sink
            .finish(std::time::Instant::now() + Duration::from_secs(2));
    }
}

/// A window index whose start is `hours` hours after a fixed instant: each test its own, so
/// that the window names in the shared log capture differ.
fn window_at(hours: u64) -> u64 {
    (1_800_000_000 + hours * 3_600) / INTERVAL_SECS
}

#[test]
fn a_last_shipment_after_the_leaders_read_is_reported_locally_not_lost() {
    let redis = Redis::start();
    let keys = Keys::new("race");
    let w = window_at(1);
    let windows = Windows::new(INTERVAL_SECS);
    let start = windows.start_secs(w);
    let mut b = Instance::start(&redis, "race", "b", windows.start_ms(w) + 1_000);
    b.record(w, 1..11, None);
    // Its drain during the window reaches Redis in time...
    let mut leader = redis.connect();
    wait_until("b's first shipment in Redis", || {
        (store::shipments(&mut leader, &keys, start).unwrap() > 0).then_some(())
    });
    // ... then the leader of the window (played by the test) freezes and reads it, while
    // b takes more ids in the same window and ships them later.
    assert_eq!(
        store::lead(&mut leader, &keys, start, "a", 60_000).unwrap(),
        Lead::Leading
    );
    let n = store::freeze(&mut leader, &keys, start, "a", 60_000)
        .unwrap()
        .unwrap();
    let (union, _) = count_of_shipments_pausing(&mut leader, &keys, start, n, &mut |_| Ok(true))
        .unwrap()
        .unwrap();
    assert_eq!(union, 10);
    b.record(w, 11..16, None);
    b.seal(w);
    // b's ids that came too late are refused, and b says so with its own count of the
    // window: nothing it answered `ok` is dropped silently.
    let report = b.next_report();
    assert_eq!(
        (report.window_start, report.unique_count, report.scope),
        (start, 15, Scope::Local)
    );
    assert_eq!(b.metrics.cluster_late_windows.load(Relaxed), 1);
    assert_eq!(b.metrics.cluster_local_windows.load(Relaxed), 1);
    let when = rfc3339_secs(start);
    assert!(
        !logged(&[&when, "after the cluster's leader had read the window"]).is_empty(),
        "{:?}",
        logged(&[&when])
    );
    assert!(store::mark_done(&mut leader, &keys, start, "a", union, 60_000).unwrap());
    // The next window is b's alone (the test's leader never heartbeats): reported in full.
    b.record(w + 1, 100..107, None);
    b.seal(w + 1);
    let report = b.next_report();
    assert_eq!(
        (report.window_start, report.unique_count, report.scope),
        (windows.start_secs(w + 1), 7, Scope::Global)
    );
}

/// How the cluster thread must handle a window whose keys were tampered with.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// Given up after its tries and reported with this instance's ids alone.
    Local,
    /// Reported by the leader with the right count; what was wrong is skipped and logged.
    Global,
}

/// Writes `garbage` into window `w`'s keys before the instance ships anything of it, has
/// the instance count `w` and the window after it, and checks that `w` is handled as
/// `expect` says, logged and counted, and that the next window is reported normally.
fn garbage_costs_only_its_window(
    hours: u64,
    garbage: impl FnOnce(&mut redis::Connection, &Keys, u64),
    expect: Expect,
    log_says: Option<&str>,
) -> Instance {
    let redis = Redis::start();
    let prefix = format!("garbage{hours}");
    let keys = Keys::new(&prefix);
    let w = window_at(hours);
    let windows = Windows::new(INTERVAL_SECS);
    let start = windows.start_secs(w);
    let mut con = redis.connect();
    garbage(&mut con, &keys, start);
    let mut i = Instance::start(&redis, &prefix, "i", windows.start_ms(w) + 1_000);
    i.record(w, 0..10, Some("http://good.test/hook"));
    i.seal(w);
    let report = i.next_report();
    assert_eq!((report.window_start, report.unique_count), (start, 10));
    let scope = match expect {
        Expect::Local => Scope::Local,
        Expect::Global => Scope::Global,
    };
    assert_eq!(report.scope, scope, "{:?}", logged(&[&rfc3339_secs(start)]));
    if expect == Expect::Global {
        assert_eq!(report.endpoints, ["http://good.test/hook"]);
    }
    let counted =
        i.metrics.redis_errors.load(Relaxed) + i.metrics.endpoint_calls.refused.load(Relaxed);
    assert!(counted > 0, "counted in the metrics");
    if let Some(says) = log_says {
        assert!(
            !logged(&[&rfc3339_secs(start), says]).is_empty(),
            "{says:?} not logged: {:?}",
            logged(&[&rfc3339_secs(start)])
        );
    }
    // The window after it goes as usual.
    i.record(w + 1, 20..25, Some("http://good.test/hook"));
    i.seal(w + 1);
    let next = i.next_report();
    assert_eq!(
        (next.window_start, next.unique_count, next.scope),
        (windows.start_secs(w + 1), 5, Scope::Global)
    );
    assert_eq!(next.endpoints, ["http://good.test/hook"]);
    // Marked done right after the report.
    let done = wait_until("the next window marked done", || {
        redis::cmd("GET")
            .arg(keys.done(windows.start_secs(w + 1)))
            .query::<Option<String>>(&mut con)
            .unwrap()
    });
    assert_eq!(done, "5");
    i
}

fn put(con: &mut redis::Connection, args: &[&str]) {
    redis::cmd(args[0])
        .arg(&args[1..])
        .query::<redis::Value>(con)
        .unwrap();
}

#[test]
fn a_window_list_of_another_type_costs_that_window_only() {
    let i = garbage_costs_only_its_window(
        2,
        |con, keys, w| put(con, &["HSET", &keys.ids(w), "f", "v"]),
        Expect::Local,
        Some(&format!(
            "is not a list); try {WINDOW_TRIES} of {WINDOW_TRIES}"
        )),
    );
    assert_eq!(i.metrics.cluster_local_windows.load(Relaxed), 1);
}

#[test]
fn a_done_mark_that_is_not_a_count_costs_that_window_only() {
    garbage_costs_only_its_window(
        3,
        |con, keys, w| put(con, &["SET", &keys.done(w), "abc"]),
        Expect::Local,
        Some("is not a count"),
    );
}

#[test]
fn a_lease_of_another_type_costs_that_window_only() {
    garbage_costs_only_its_window(
        4,
        |con, keys, w| put(con, &["RPUSH", &keys.lease(w), "x"]),
        Expect::Local,
        Some("WRONGTYPE"),
    );
}

#[test]
fn a_shipped_set_of_another_type_costs_that_window_only() {
    garbage_costs_only_its_window(
        5,
        |con, keys, w| put(con, &["SET", &keys.shipped(w), "x"]),
        Expect::Local,
        Some("is not a set"),
    );
}

#[test]
fn an_oversized_shipment_is_skipped_unread_and_the_window_counted() {
    garbage_costs_only_its_window(
        6,
        |con, keys, w| {
            let huge = vec![0u8; store::MAX_SHIPMENT_BYTES + 1];
            redis::cmd("RPUSH")
                .arg(keys.ids(w))
                .arg(huge)
                .query::<i64>(con)
                .unwrap();
        },
        Expect::Global,
        Some("skipped 0 shipments in Redis that are not id sets and 1 longer than"),
    );
}

#[test]
fn a_shipment_that_is_not_an_id_set_is_skipped_and_the_window_counted() {
    garbage_costs_only_its_window(
        7,
        |con, keys, w| {
            put(con, &["RPUSH", &keys.ids(w), "garbage!"]);
            // A roaring treemap denser than verve ever wrote: a few KB for 16 million ids
            // (a few MB would do for billions, which would take minutes to expand).
            let mut tree = roaring::RoaringTreemap::new();
            tree.insert_range(0..1 << 24);
            tree.optimize();
            let mut bytes = Vec::new();
            tree.serialize_into(&mut bytes).unwrap();
            redis::cmd("RPUSH")
                .arg(keys.ids(w))
                .arg(bytes)
                .query::<i64>(con)
                .unwrap();
        },
        Expect::Global,
        Some("skipped 2 shipments in Redis that are not id sets and 0 longer than"),
    );
}

#[test]
fn endpoints_in_redis_are_checked_like_a_clients_and_refused_ones_never_called() {
    let i = garbage_costs_only_its_window(
        8,
        |con, keys, w| {
            let long = format!("http://good.test/{}", "a".repeat(5_000));
            for bad in [
                "http://good.test/?unique_count=5",
                "ftp://good.test/",
                "http://169.254.169.254/latest/meta-data",
                "javascript:alert(1)\nINFO count window_start=x",
                &long,
            ] {
                put(con, &["SADD", &keys.endpoints(w), bad]);
            }
            redis::cmd("SADD")
                .arg(keys.endpoints(w))
                .arg(b"http://good.test/\xff".as_slice())
                .query::<i64>(con)
                .unwrap();
        },
        Expect::Global,
        Some("error=count-token"),
    );
    assert_eq!(i.metrics.endpoint_calls.refused.load(Relaxed), 6);
    for reason in ["refused-by-policy", "too-long", "not-utf8"] {
        assert!(
            !logged(&[&format!("error={reason}")]).is_empty(),
            "{reason}"
        );
    }
    // The log stays one line per event, and only count lines may say `unique_count=`
    // (this test's reporter writes none).
    assert!(logged(&["unique_count="]).is_empty());
    assert!(logged(&["\n"]).is_empty());
}

#[test]
fn a_live_set_of_another_type_stops_no_window() {
    // The shared heartbeat key, not a window's: heartbeats fail (logged once, counted), and
    // the leader reports each window once the grace has passed.
    garbage_costs_only_its_window(
        9,
        |con, keys, _| put(con, &["SET", &keys.live(), "x"]),
        Expect::Global,
        None,
    );
    let said = logged(&["the heartbeat failed", "WRONGTYPE", "garbage9"]);
    assert_eq!(said.len(), 1, "once per bout: {said:?}");
}

#[test]
fn an_instance_keeps_off_a_prefix_claimed_for_another_interval_until_it_is_free() {
    // The prefix was claimed for another interval while this instance could not reach
    // Redis (at start-up it would have been refused): it ships nothing into those
    // instances' windows, logs it once, and goes on when the claim is gone.
    let redis = Redis::start();
    let keys = Keys::new("claimed");
    let mut con = redis.connect();
    put(&mut con, &["SET", &keys.interval(), "30"]);
    let w = window_at(10);
    let windows = Windows::new(INTERVAL_SECS);
    let start = windows.start_secs(w);
    let mut i = Instance::start(&redis, "claimed", "i", windows.start_ms(w) + 1_000);
    i.record(w, 0..4, None);
    i.seal(w);
    let conflict = "--interval 30 now use --redis-prefix claimed";
    wait_until("the conflict to be logged", || {
        (!logged(&[conflict]).is_empty()).then_some(())
    });
    assert_eq!(store::shipments(&mut con, &keys, start).unwrap(), 0);
    put(&mut con, &["DEL", &keys.interval()]);
    wait_until("the window shipped", || {
        (store::shipments(&mut con, &keys, start).unwrap() > 0).then_some(())
    });
    // A leader trusts the live set a grace period after it is back.
    i.clock.advance(GRACE + Duration::from_secs(1));
    let report = i.next_report();
    assert_eq!(
        (report.window_start, report.unique_count, report.scope),
        (start, 4, Scope::Global)
    );
    assert_eq!(logged(&[conflict]).len(), 1, "one outage, logged once");
    assert_eq!(logged(&[&redis.url, "is back after"]).len(), 1);
}
