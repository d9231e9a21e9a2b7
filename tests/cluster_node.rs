//! The cluster thread (`verve::cluster::node`) against a real `redis-server` on loopback,
//! with a clock the test moves by hand: the test records ids into the shards and seals
//! windows itself, as the collector would, and plays the other instances (and leaders) on
//! connections of its own. Nothing waits for wall-clock time to pass a window; waits are for
//! events (a report, a key in Redis), bounded by [`common::wait_until`]'s deadline.

mod common;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Condvar, Mutex, Once};
use std::time::{Duration, Instant};

use common::redis_servers::{Cut, Proxy, Redis};
use common::wait_until;
use crossbeam_channel::{unbounded, Receiver, Sender};
use verve::budget::IdMemory;
use verve::clock::{rfc3339_secs, ManualClock, Windows};
use verve::cluster::conn::Target;
use verve::cluster::merge::{count_partition_with, union_of_shipments, Counter, Read};
use verve::cluster::node::{
    ClusterSink, Extras, RecordHandoff, Settings, Shared, LEASE, LIVE_TTL, WINDOW_TRIES,
};
use verve::cluster::parts;
use verve::cluster::ship::{ship_window, Load};
use verve::cluster::store::{self, Keys, Lead};
use verve::cluster::tally::Tally;
use verve::endpoints::EndpointPolicy;
use verve::ids::partition::PARTITIONS;
use verve::ids::IdSet;
use verve::metrics::Metrics;
use verve::report::{Reporter, Scope, WindowReport};
use verve::shards::Shards;
use verve::sink::{SealedWindow, WindowSink};
use verve::status::Status;

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

/// The reports the cluster thread makes, handed to the test; `then` is cut on the cluster
/// thread with each one, before the thread goes on (to cut its Redis link between the count
/// line and the `done` mark).
struct Recorder {
    tx: Sender<WindowReport>,
    then: Option<Cut>,
}

impl Reporter for Recorder {
    fn report(&mut self, report: &WindowReport) {
        // Cut before the test hears of the report: it may restore the link at once.
        if let Some(cut) = &self.then {
            cut.cut();
        }
        let _ = self.tx.send(report.clone());
    }
}

/// A leader's count that the test holds up for as long as it wants: while a gate is shut,
/// every count that reaches it waits there (and says it arrived), then counts as verve does.
struct Gate {
    state: Mutex<GateState>,
    moved: Condvar,
}

#[derive(Default)]
struct GateState {
    shut: bool,
    /// Counts that reached the gate while it was shut.
    arrived: u32,
}

impl Gate {
    const fn new() -> Gate {
        Gate {
            state: Mutex::new(GateState {
                shut: false,
                arrived: 0,
            }),
            moved: Condvar::new(),
        }
    }

    /// Shuts the gate until the guard is dropped (or [`Gate::open`]): a test that fails
    /// while a count waits here opens it as it unwinds, so the instances can stop.
    fn shut(&self) -> OpenOnDrop<'_> {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).shut = true;
        OpenOnDrop(self)
    }

    fn open(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).shut = false;
        self.moved.notify_all();
    }

    /// Waits until a count is held at the gate.
    fn wait_for_a_count(&self) {
        let deadline = Instant::now() + REPORT_WAIT;
        let mut state = self.state.lock().unwrap();
        while state.arrived == 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no count reached the gate");
            state = self.moved.wait_timeout(state, left).unwrap().0;
        }
    }

    fn count(&self, tally: &Tally) -> u64 {
        let mut state = self.state.lock().unwrap();
        if state.shut {
            state.arrived += 1;
            self.moved.notify_all();
            while state.shut {
                state = self.moved.wait(state).unwrap();
            }
        }
        drop(state);
        tally.count()
    }
}

/// Opens its gate when dropped.
struct OpenOnDrop<'a>(&'a Gate);

impl Drop for OpenOnDrop<'_> {
    fn drop(&mut self) {
        self.0.open();
    }
}

/// One gate per test that needs one (tests run in parallel), each with its counter.
static GATES: [Gate; 5] = [
    Gate::new(),
    Gate::new(),
    Gate::new(),
    Gate::new(),
    Gate::new(),
];

fn gated<const N: usize>(tally: &Tally) -> u64 {
    GATES[N].count(tally)
}

/// How an [`Instance`] is started, beyond its name and clock.
struct Options {
    /// Where it finds Redis: the server's URL, or a [`Proxy`]'s.
    url: Option<String>,
    grace: Duration,
    counter: Counter,
    /// Cut after each report (see [`Recorder`]).
    cut_after_report: Option<Cut>,
    /// Its Kafka producer, as far as record hand-overs go.
    kafka: Option<FakeKafka>,
    /// How long it keeps the windows it handed over when it stops.
    linger: Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            url: None,
            grace: GRACE,
            counter: Tally::count,
            cut_after_report: None,
            kafka: None,
            linger: Extras::default().linger,
        }
    }
}

/// One instance's cluster thread, with its shards and its manual clock.
struct Instance {
    sink: ClusterSink,
    shards: Arc<Shards>,
    clock: Arc<ManualClock>,
    windows: Windows,
    grace: Duration,
    reports: Receiver<WindowReport>,
    metrics: Arc<Metrics>,
    status: Arc<Status>,
}

impl Instance {
    /// `name` on `redis` under `prefix`, its clock at `now_ms`.
    fn start(redis: &Redis, prefix: &str, name: &str, now_ms: u64) -> Instance {
        Instance::start_with(redis, prefix, name, now_ms, Options::default())
    }

    fn start_with(
        redis: &Redis,
        prefix: &str,
        name: &str,
        now_ms: u64,
        options: Options,
    ) -> Instance {
        capture_logs();
        let windows = Windows::new(INTERVAL_SECS);
        let shards = Arc::new(Shards::new(1, EndpointPolicy::default(), 100));
        let clock = ManualClock::new(now_ms);
        let metrics = Arc::new(Metrics::new(1));
        let status = Arc::new(Status::new(metrics.clone(), clock.clone()));
        let (tx, reports) = unbounded();
        let settings = Settings {
            target: Target::parse(options.url.as_deref().unwrap_or(&redis.url)).unwrap(),
            keys: Keys::new(prefix),
            instance: name.to_string(),
            grace: options.grace,
            backlog: 10,
            windows,
        };
        let recorder = Recorder {
            tx,
            then: options.cut_after_report,
        };
        let extras = Extras {
            counter: options.counter,
            records: options.kafka.map(|k| Box::new(k) as Box<dyn RecordHandoff>),
            status: Some(status.clone()),
            linger: options.linger,
        };
        let shared = Shared {
            shards: shards.clone(),
            clock: clock.clone(),
            metrics: metrics.clone(),
        };
        let health = verve::health::Health::new();
        let sink =
            ClusterSink::start(settings, shared, Box::new(recorder), &health, extras).unwrap();
        // Connected and heartbeating (or the prefix claimed, where the test spoiled the
        // live set) before the test moves the clock: a leader trusts the live set only a
        // grace period after it connected, and the other instances must see this one.
        let mut con = redis.connect();
        let keys = Keys::new(prefix);
        wait_until("the instance to connect", || {
            let kind: String = redis::cmd("TYPE").arg(keys.live()).query(&mut con).unwrap();
            let connected = if kind == "zset" || kind == "none" {
                live_now(&mut con, &keys, name)
            } else {
                redis::cmd("EXISTS")
                    .arg(keys.interval())
                    .query::<bool>(&mut con)
                    .unwrap()
            };
            connected.then_some(())
        });
        Instance {
            sink,
            shards,
            clock,
            windows,
            grace: options.grace,
            reports,
            metrics,
            status,
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
            .set(self.windows.end_ms(window) + self.grace.as_millis() as u64 + 1);
        self.seal_now(window);
    }

    /// Moves the clock just past `window`'s end and seals it: a leader then waits for the
    /// other live instances' last shipments (or the grace).
    fn close(&mut self, window: u64) {
        self.clock.set(self.windows.end_ms(window) + 1);
        self.seal_now(window);
    }

    /// Seals `window` without moving the clock, as the collector does at the boundary (or at
    /// shutdown, for the open window).
    fn seal_now(&mut self, window: u64) {
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

/// Whether `name`'s last heartbeat is in the live set, fresh by Redis's clock.
fn live_now(con: &mut redis::Connection, keys: &Keys, name: &str) -> bool {
    let live = store::live(con, keys, LIVE_TTL.as_millis() as u64).unwrap();
    live.unwrap_or_default().iter().any(|n| n == name)
}

/// `name`'s heartbeat score (Redis's time at its last heartbeat), if any.
fn heartbeat_of(con: &mut redis::Connection, keys: &Keys, name: &str) -> Option<u64> {
    redis::cmd("ZSCORE")
        .arg(keys.live())
        .arg(name)
        .query::<Option<u64>>(con)
        .unwrap()
}

/// Waits until window `start`'s lease has been renewed at least once from now on (its time
/// to live went up between two looks), or the window is done: the leader has then looked at
/// the window again after the step that took the lease. Returns whether it is done.
fn renewed_or_done(con: &mut redis::Connection, keys: &Keys, start: u64) -> bool {
    let mut last = i64::MAX;
    wait_until("the lease renewed, or the window done", || {
        let done: bool = redis::cmd("EXISTS")
            .arg(keys.done(start))
            .query(con)
            .unwrap();
        if done {
            return Some(true);
        }
        let ttl: i64 = redis::cmd("PTTL")
            .arg(keys.lease(start))
            .query(con)
            .unwrap();
        let renewed = ttl > last;
        last = if ttl > 0 { ttl } else { last };
        renewed.then_some(false)
    })
}

/// The instance holding window `start`'s lease.
fn leader_of(con: &mut redis::Connection, keys: &Keys, start: u64) -> Option<String> {
    redis::cmd("GET").arg(keys.lease(start)).query(con).unwrap()
}

fn done_of(con: &mut redis::Connection, keys: &Keys, start: u64) -> Option<u64> {
    redis::cmd("GET").arg(keys.done(start)).query(con).unwrap()
}

/// Whether `i` has recorded window `start` as reported by the cluster (its history).
fn knows_reported(i: &Instance, start: u64) -> Option<u64> {
    i.status
        .history()
        .iter()
        .find(|r| r.window_start == start)
        .map(|r| r.unique_count)
}

/// Whether `i` is done with window `start`: it saw the cluster's `done` mark, or reported
/// the window itself.
fn past(i: &Instance, start: u64) -> bool {
    knows_reported(i, start).is_some() || !i.reports.is_empty()
}

/// Every report the instances have made so far, with the instance's index.
fn reports_so_far(instances: &[&Instance]) -> Vec<(usize, WindowReport)> {
    let mut all = Vec::new();
    for (n, i) in instances.iter().enumerate() {
        all.extend(i.reports.try_iter().map(|r| (n, r)));
    }
    all
}

/// A partition's read of `n` shipments, with no memory budget.
fn read(keys: &verve::cluster::keys::PartitionKeys, n: u64) -> Read<'_> {
    static UNLIMITED: std::sync::OnceLock<Arc<IdMemory>> = std::sync::OnceLock::new();
    Read {
        keys,
        shipments: n,
        memory: UNLIMITED.get_or_init(IdMemory::unlimited),
    }
}

/// How many shipments the partitions of the window starting at `start` hold.
fn shipments(con: &mut redis::Connection, keys: &Keys, start: u64) -> u64 {
    (0..PARTITIONS)
        .map(|p| parts::shipments(con, &keys.partition(start, p)).unwrap())
        .sum()
}

/// What the window's leader `leader` (holding its lease) does before it reports: freezes
/// the window and its partitions, and counts each partition (this test's own count, not
/// recorded in Redis).
fn freeze_and_count(con: &mut redis::Connection, keys: &Keys, start: u64, leader: &str) -> u64 {
    assert!(store::freeze(con, keys, start, leader, 600_000).unwrap());
    (0..PARTITIONS)
        .map(|p| {
            let part = keys.partition(start, p);
            let n = parts::freeze(con, &part, 600_000).unwrap();
            count_partition_with(con, &read(&part, n), &mut |_| Ok(true), Tally::count)
                .unwrap()
                .unwrap()
                .0
        })
        .sum()
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
        (shipments(&mut leader, &keys, start) > 0).then_some(())
    });
    // ... then the leader of the window (played by the test) freezes and reads it, while
    // b takes more ids in the same window and ships them later.
    assert_eq!(
        store::lead(&mut leader, &keys, start, "a", 60_000).unwrap(),
        Lead::Leading
    );
    let union = freeze_and_count(&mut leader, &keys, start, "a");
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
        |con, keys, w| put(con, &["HSET", &keys.partition(w, 0).ids, "f", "v"]),
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
                .arg(keys.partition(w, 3).ids)
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
            put(con, &["RPUSH", &keys.partition(w, 3).ids, "garbage!"]);
            // A roaring treemap, not the compact format verve ships: skipped unread.
            let mut tree = roaring::RoaringTreemap::new();
            tree.insert_range(0..1 << 24);
            tree.optimize();
            let mut bytes = Vec::new();
            tree.serialize_into(&mut bytes).unwrap();
            redis::cmd("RPUSH")
                .arg(keys.partition(w, 3).ids)
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
    assert_eq!(shipments(&mut con, &keys, start), 0);
    put(&mut con, &["DEL", &keys.interval()]);
    wait_until("the window shipped", || {
        (shipments(&mut con, &keys, start) > 0).then_some(())
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

/// Two instances on `redis`, `a` and `b`, each with its options, their clocks one second
/// into window `w`.
fn pair(redis: &Redis, prefix: &str, w: u64, a: Options, b: Options) -> (Instance, Instance) {
    let at = Windows::new(INTERVAL_SECS).start_ms(w) + 1_000;
    let a = Instance::start_with(redis, prefix, "a", at, a);
    let b = Instance::start_with(redis, prefix, "b", at, b);
    (a, b)
}

/// Ids in both instances' shipments of `w`, and more than one shipment (the count then runs
/// on its helper thread): each instance's first drain is waited for before its other ids.
fn fill(redis: &Redis, keys: &Keys, w: u64, a: &Instance, b: &Instance) -> u64 {
    let start = Windows::new(INTERVAL_SECS).start_secs(w);
    let mut con = redis.connect();
    a.record(w, 0..10, None);
    b.record(w, 5..20, None);
    wait_until("both instances' first drains in Redis", || {
        (shipments(&mut con, keys, start) >= 2).then_some(())
    });
    a.record(w, 20..25, None);
    b.record(w, 25..30, None);
    30
}

#[test]
fn a_window_frozen_when_every_link_to_redis_drops_is_still_reported_once() {
    // The leader froze the window and read it; then every instance lost Redis (it stalled,
    // failed over, the network went) before the `done` mark. Back, each one's whole
    // re-shipment is refused (the window is frozen): the window must stay with them until
    // one of them reports it.
    let redis = Redis::start();
    let (pa, pb) = (Proxy::start(&redis), Proxy::start(&redis));
    let prefix = "frozen";
    let keys = Keys::new(prefix);
    let w = window_at(11);
    let start = Windows::new(INTERVAL_SECS).start_secs(w);
    let gate = &GATES[0];
    let options = |proxy: &Proxy| Options {
        url: Some(proxy.url.clone()),
        counter: gated::<0>,
        ..Options::default()
    };
    let (mut a, mut b) = pair(&redis, prefix, w, options(&pa), options(&pb));
    let expected = fill(&redis, &keys, w, &a, &b);
    let _open = gate.shut();
    a.close(w);
    b.close(w);
    gate.wait_for_a_count();
    let mut con = redis.connect();
    assert!(redis::cmd("EXISTS")
        .arg(keys.frozen(start))
        .query::<bool>(&mut con)
        .unwrap());
    let shipments = |i: &Instance| i.metrics.cluster_shipments.load(Relaxed);
    let errors = |i: &Instance| i.metrics.redis_errors.load(Relaxed);
    let before = (shipments(&a), shipments(&b));
    let errors_before = (errors(&a), errors(&b));
    pa.switch().cut();
    pb.switch().cut();
    gate.open();
    // Both notice, and are back: each re-ships the window whole, and is refused.
    wait_until("both instances to lose Redis", || {
        (errors(&a) > errors_before.0 && errors(&b) > errors_before.1).then_some(())
    });
    pa.switch().restore();
    pb.switch().restore();
    wait_until("both whole re-shipments", || {
        (shipments(&a) > before.0 && shipments(&b) > before.1).then_some(())
    });
    let early = reports_so_far(&[&a, &b]);
    assert!(
        early.is_empty(),
        "{early:?} {:#?}",
        logged(&[&rfc3339_secs(start)])
    );
    // A leader trusts the live set a grace period after it is back.
    a.clock.advance(GRACE + Duration::from_secs(1));
    b.clock.advance(GRACE + Duration::from_secs(1));
    let done = wait_until("the window done", || done_of(&mut con, &keys, start));
    assert_eq!(done, expected);
    wait_until("both instances past the window", || {
        (past(&a, start) && past(&b, start)).then_some(())
    });
    let reports = reports_so_far(&[&a, &b]);
    assert_eq!(reports.len(), 1, "{reports:?}");
    let report = &reports[0].1;
    assert_eq!(
        (report.window_start, report.unique_count, report.scope),
        (start, expected, Scope::Global)
    );
}

/// Two instances on `prefix` whose window `window_at(hours)` the leader, `a`, reports with the
/// cluster's count and then is cut off from Redis (through its proxy) before its `done` mark.
struct CutLeader {
    a: Instance,
    b: Instance,
    pa: Proxy,
    con: redis::Connection,
    keys: Keys,
    start: u64,
    expected: u64,
    _redis: Redis,
}

fn leader_cut_off_after_its_count_line(prefix: &str, hours: u64) -> CutLeader {
    let redis = Redis::start();
    let pa = Proxy::start(&redis);
    let keys = Keys::new(prefix);
    let w = window_at(hours);
    let windows = Windows::new(INTERVAL_SECS);
    let start = windows.start_secs(w);
    let a_options = Options {
        url: Some(pa.url.clone()),
        cut_after_report: Some(pa.switch()),
        ..Options::default()
    };
    let (mut a, mut b) = pair(&redis, prefix, w, a_options, Options::default());
    let expected = fill(&redis, &keys, w, &a, &b);
    let mut con = redis.connect();
    // a seals first, at the window's end: it takes the lease and waits for b, which is live.
    a.clock.set(windows.end_ms(w) + 1);
    a.seal_now(w);
    wait_until("a to lead", || {
        (leader_of(&mut con, &keys, start).as_deref() == Some("a")).then_some(())
    });
    b.clock.set(windows.end_ms(w) + 1);
    b.seal_now(w);
    let report = a.next_report();
    assert_eq!(
        (report.window_start, report.unique_count, report.scope),
        (start, expected, Scope::Global)
    );
    CutLeader {
        a,
        b,
        pa,
        con,
        keys,
        start,
        expected,
        _redis: redis,
    }
}

#[test]
fn a_leader_cut_off_between_its_count_line_and_the_done_mark_marks_it_once_back() {
    // The leader writes the count line, then loses Redis before the `done` mark. Back, its
    // re-shipment is refused (frozen): it must still mark the window done, so that the
    // other instance does not report it a second time once the lease runs out.
    let CutLeader {
        a,
        b,
        pa,
        mut con,
        keys,
        start,
        expected,
        _redis,
    } = leader_cut_off_after_its_count_line("unmarked", 12);
    assert_eq!(
        done_of(&mut con, &keys, start),
        None,
        "cut off before the mark"
    );
    pa.switch().restore();
    let done = wait_until("the window done", || done_of(&mut con, &keys, start));
    assert_eq!(done, expected);
    wait_until("b past the window", || past(&b, start).then_some(()));
    let reports = reports_so_far(&[&a, &b]);
    assert!(
        reports.is_empty(),
        "a second count line: {reports:?} {:#?}",
        logged(&[&rfc3339_secs(start)])
    );
    assert!(
        logged(&[&rfc3339_secs(start), "may report it too"]).is_empty(),
        "{:?}",
        logged(&[&rfc3339_secs(start)])
    );
}

#[test]
fn a_leader_that_stops_cut_off_after_its_count_line_does_not_write_a_second_one() {
    // The leader writes the count line, loses Redis before the `done` mark, and is stopped
    // while Redis is still away: the window is left unmarked, and said so, but its count
    // line stays the only one (no `scope=local` line with this instance's ids alone).
    // Every part bound for the whole test: Redis and `b` stay up, the proxy stays cut.
    let CutLeader {
        mut a,
        b: _b,
        pa: _pa,
        mut con,
        keys,
        start,
        expected: _,
        _redis,
    } = leader_cut_off_after_its_count_line("unmarkedstop", 22);
    a.sink.finish(Instant::now() + Duration::from_millis(500));
    let after: Vec<_> = a.reports.try_iter().collect();
    assert!(
        after.is_empty(),
        "a second count line: {after:?} {:#?}",
        logged(&[&rfc3339_secs(start)])
    );
    assert_eq!(done_of(&mut con, &keys, start), None, "Redis stayed away");
    assert!(
        !logged(&[&rfc3339_secs(start), "never marked done"]).is_empty(),
        "{:?}",
        logged(&[&rfc3339_secs(start)])
    );
}

#[test]
fn a_count_longer_than_the_lease_keeps_the_lease_and_the_heartbeat() {
    // The count of a window's shipments can outlast the lease (a hundred million ids): the
    // leader renews it and heartbeats all along, so no other instance takes the window over
    // or takes the leader for dead.
    let redis = Redis::start();
    let prefix = "longcount";
    let keys = Keys::new(prefix);
    let w = window_at(13);
    let start = Windows::new(INTERVAL_SECS).start_secs(w);
    let gate = &GATES[1];
    let options = || Options {
        counter: gated::<1>,
        ..Options::default()
    };
    let (mut a, mut b) = pair(&redis, prefix, w, options(), options());
    let expected = fill(&redis, &keys, w, &a, &b);
    let _open = gate.shut();
    a.close(w);
    b.close(w);
    gate.wait_for_a_count();
    let mut con = redis.connect();
    let leader = leader_of(&mut con, &keys, start).expect("a leader");
    let beat = heartbeat_of(&mut con, &keys, &leader).unwrap();
    // The leader's open window is shipped meanwhile too: a hard crash of the leader during
    // a long count loses no more than of any instance.
    let next = Windows::new(INTERVAL_SECS).start_secs(w + 1);
    let busy = if leader == "a" { &a } else { &b };
    busy.record(w + 1, 1_000..1_010, None);
    wait_until("the leader's open window shipped during the count", || {
        (shipments(&mut con, &keys, next) > 0).then_some(())
    });
    // Longer than the lease and the heartbeats' time to live.
    let held = Instant::now();
    let mut renewals = 0;
    while held.elapsed() < LEASE + Duration::from_secs(1) {
        assert!(
            !renewed_or_done(&mut con, &keys, start),
            "done while counting"
        );
        renewals += 1;
        assert_eq!(leader_of(&mut con, &keys, start).as_deref(), Some(&*leader));
        assert!(live_now(&mut con, &keys, &leader), "{leader} looks dead");
    }
    assert!(renewals >= 5, "{renewals} renewals");
    assert!(heartbeat_of(&mut con, &keys, &leader).unwrap() > beat);
    let rival = if leader == "a" { "b" } else { "a" };
    assert_eq!(
        store::lead(&mut con, &keys, start, rival, 60_000).unwrap(),
        Lead::Waiting
    );
    gate.open();
    let done = wait_until("the window done", || done_of(&mut con, &keys, start));
    assert_eq!(done, expected);
    let reports = reports_so_far(&[&a, &b]);
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(
        (reports[0].1.unique_count, reports[0].1.scope),
        (expected, Scope::Global)
    );
}

#[test]
fn the_last_instance_reports_every_window_it_holds_at_shutdown() {
    // At shutdown the last instance holds two windows that are not due yet (as the open
    // window is, sealed by the shutdown). It leaves the live set, then reports the first:
    // a read long enough to heartbeat on the way must not put it back in the live set, and
    // a stray heartbeat of its own there must not pass for another instance to leave the
    // second window to.
    let redis = Redis::start();
    let prefix = "lastone";
    let keys = Keys::new(prefix);
    let w = window_at(14);
    let windows = Windows::new(INTERVAL_SECS);
    let (start, next) = (windows.start_secs(w), windows.start_secs(w + 1));
    let gate = &GATES[2];
    let options = Options {
        counter: gated::<2>,
        ..Options::default()
    };
    let mut a = Instance::start_with(&redis, prefix, "a", windows.start_ms(w) + 1_000, options);
    let mut con = redis.connect();
    a.record(w, 0..10, None);
    wait_until("a's first drain in Redis", || {
        (shipments(&mut con, &keys, start) >= 1).then_some(())
    });
    a.record(w, 10..15, None);
    a.record(w + 1, 100..107, None);
    // Sealed while a's clock is still in `w`: neither is due yet, as the open window at a
    // shutdown is not.
    a.seal_now(w);
    a.seal_now(w + 1);
    let _open = gate.shut();
    // The shutdown, on a thread of its own: its count of `w` waits at the gate meanwhile.
    let reports = a.reports.clone();
    let stopper = std::thread::spawn(move || {
        a.sink.finish(Instant::now() + REPORT_WAIT);
    });
    gate.wait_for_a_count();
    // Long enough for the renewal (and, before, a heartbeat) on the way.
    assert!(!renewed_or_done(&mut con, &keys, start));
    assert!(!live_now(&mut con, &keys, "a"), "a heartbeat after leaving");
    // A heartbeat that got in after it left, all the same.
    store::heartbeat(&mut con, &keys, "a", LIVE_TTL.as_millis() as u64).unwrap();
    gate.open();
    stopper.join().unwrap();
    let got: Vec<_> = reports
        .try_iter()
        .map(|r| (r.window_start, r.unique_count, r.scope))
        .collect();
    assert_eq!(
        got,
        [(start, 15, Scope::Global), (next, 7, Scope::Global)],
        "{:?}",
        logged(&[&rfc3339_secs(next)])
    );
}

#[test]
fn a_clock_ahead_by_less_than_the_grace_takes_no_ids_out_of_the_count() {
    // a's clock is 6 s ahead of b's, with a grace of 10 s: a closes the window 6 s before
    // b does, and must wait for b, which is live, rather than take itself for the only
    // instance left and freeze the window while b still counts ids into it.
    let redis = Redis::start();
    let prefix = "skew";
    let keys = Keys::new(prefix);
    let w = window_at(15);
    let windows = Windows::new(INTERVAL_SECS);
    let start = windows.start_secs(w);
    let grace = Duration::from_secs(10);
    let skew = 6_000;
    let options = || Options {
        grace,
        ..Options::default()
    };
    let b_at = windows.start_ms(w) + 1_000;
    let mut a = Instance::start_with(&redis, prefix, "a", b_at + skew, options());
    let mut b = Instance::start_with(&redis, prefix, "b", b_at, options());
    a.record(w, 0..300, None);
    b.record(w, 0..300, None);
    a.clock.set(windows.end_ms(w) + 1);
    b.clock.set(windows.end_ms(w) + 1 - skew);
    a.seal_now(w);
    let mut con = redis.connect();
    wait_until("a to lead", || {
        (leader_of(&mut con, &keys, start).is_some()).then_some(())
    });
    assert!(
        !renewed_or_done(&mut con, &keys, start),
        "a reported the window while b was still in it: {:?}",
        a.reports.try_iter().collect::<Vec<_>>()
    );
    // b, 54 s into the window by its clock, takes 100 more ids, then closes it.
    b.record(w, 300..400, None);
    b.clock.set(windows.end_ms(w) + 1);
    b.seal_now(w);
    let report = a.next_report();
    assert_eq!(
        (report.window_start, report.unique_count, report.scope),
        (start, 400, Scope::Global)
    );
    wait_until("b past the window", || past(&b, start).then_some(()));
    assert!(b.reports.is_empty(), "{:?}", b.reports.try_recv());
    assert_eq!(b.metrics.cluster_late_windows.load(Relaxed), 0);
    assert_eq!(b.metrics.cluster_local_windows.load(Relaxed), 0);
}

#[test]
fn redis_restarted_empty_right_after_a_report_gets_no_second_line() {
    // a reports the window while b is cut off from Redis; then Redis restarts empty, and
    // the `done` mark is gone. b, back, must not report the window again with the ids it
    // re-ships: a, which knows the window was reported, puts the mark back.
    let mut redis = Redis::start();
    let pb = Proxy::start(&redis);
    let prefix = "amnesia";
    let keys = Keys::new(prefix);
    let w = window_at(16);
    let windows = Windows::new(INTERVAL_SECS);
    let start = windows.start_secs(w);
    let gate = &GATES[3];
    let a_options = Options {
        counter: gated::<3>,
        ..Options::default()
    };
    let b_options = Options {
        url: Some(pb.url.clone()),
        ..Options::default()
    };
    let (mut a, mut b) = pair(&redis, prefix, w, a_options, b_options);
    let expected = fill(&redis, &keys, w, &a, &b);
    let mut con = redis.connect();
    let _open = gate.shut();
    a.clock.set(windows.end_ms(w) + 1);
    a.seal_now(w);
    wait_until("a to lead", || {
        (leader_of(&mut con, &keys, start).as_deref() == Some("a")).then_some(())
    });
    b.clock.set(windows.end_ms(w) + 1);
    b.seal_now(w);
    gate.wait_for_a_count();
    pb.switch().cut();
    gate.open();
    let report = a.next_report();
    assert_eq!(
        (report.window_start, report.unique_count, report.scope),
        (start, expected, Scope::Global)
    );
    wait_until("the window done", || done_of(&mut con, &keys, start));
    redis.stop();
    redis.restart();
    let mut con = redis.connect();
    wait_until("a back on the new Redis", || {
        live_now(&mut con, &keys, "a").then_some(())
    });
    pb.switch().restore();
    wait_until("b back on the new Redis", || {
        live_now(&mut con, &keys, "b").then_some(())
    });
    // Past the grace a leader waits after it is back.
    b.clock.advance(GRACE + Duration::from_secs(1));
    wait_until("b past the window", || past(&b, start).then_some(()));
    assert!(b.reports.is_empty(), "{:?}", b.reports.try_recv());
    assert_eq!(knows_reported(&b, start), Some(expected));
    assert_eq!(done_of(&mut con, &keys, start), Some(expected));
    assert!(!logged(&[&rfc3339_secs(start), "done mark (count 30) was missing"]).is_empty());
}

#[test]
fn a_last_shipment_stored_whose_answer_was_lost_is_not_reported_again_alone() {
    // b's last shipment reached Redis but its answer was lost with the connection; the
    // leader froze the window meanwhile. b's shipment again is refused, yet its ids are in
    // the leader's read: b must wait for the report, not report its ids alone as well.
    let redis = Redis::start();
    let prefix = "lostanswer";
    let keys = Keys::new(prefix);
    let w = window_at(17);
    let windows = Windows::new(INTERVAL_SECS);
    let start = windows.start_secs(w);
    let mut b = Instance::start(&redis, prefix, "b", windows.start_ms(w) + 1_000);
    b.record(w, 0..10, None);
    let mut leader = redis.connect();
    let ids = IdSet::from_ids(0..10);
    for (p, bytes) in verve::cluster::ship::partition_shipments(&ids, store::MAX_SHIPMENT_BYTES) {
        let part = keys.partition(start, p);
        assert_eq!(
            parts::ship(&mut leader, &part, &bytes, 600_000).unwrap(),
            store::Shipped::Stored
        );
    }
    let shipment = store::Shipment {
        window_start: start,
        instance: "b",
        endpoints: &[],
        last: true,
        ttl_ms: 600_000,
    };
    assert_eq!(
        store::ship(&mut leader, &keys, &shipment).unwrap(),
        store::Shipped::Stored
    );
    assert_eq!(
        store::lead(&mut leader, &keys, start, "a", 60_000).unwrap(),
        Lead::Leading
    );
    assert!(store::freeze(&mut leader, &keys, start, "a", 600_000).unwrap());
    // Its last shipment again: refused (frozen, or done by the time it arrives).
    let count = freeze_and_count(&mut leader, &keys, start, "a");
    b.close(w);
    assert_eq!(count, 10);
    assert!(store::mark_done(&mut leader, &keys, start, "a", count, 600_000).unwrap());
    wait_until("b past the window", || past(&b, start).then_some(()));
    assert!(b.reports.is_empty(), "{:?}", b.reports.try_recv());
    assert_eq!(knows_reported(&b, start), Some(10));
    assert_eq!(b.metrics.cluster_local_windows.load(Relaxed), 0);
}

#[test]
fn a_stopping_instance_leaves_an_ended_window_only_to_an_instance_that_holds_it() {
    // b is live but never shipped window `w`: it started after `w` ended (restarted in a
    // rolling deploy), so it will never lead it. a, stopped while it waits for b's last
    // shipment, must report `w` itself rather than leave it to b.
    let redis = Redis::start();
    let prefix = "handover";
    let keys = Keys::new(prefix);
    let w = window_at(18);
    let windows = Windows::new(INTERVAL_SECS);
    let start = windows.start_secs(w);
    let mut a = Instance::start(&redis, prefix, "a", windows.start_ms(w) + 1_000);
    let mut b = Instance::start(&redis, prefix, "b", windows.start_ms(w + 1) + 1_000);
    a.record(w, 0..12, None);
    a.close(w);
    // The open window, sealed by the shutdown below.
    a.record(w + 1, 100..103, None);
    let mut con = redis.connect();
    wait_until("a to lead", || {
        (leader_of(&mut con, &keys, start).as_deref() == Some("a")).then_some(())
    });
    assert!(
        !renewed_or_done(&mut con, &keys, start),
        "b is live: a waits for it"
    );
    a.seal_now(w + 1);
    a.sink.finish(Instant::now() + REPORT_WAIT);
    let reports: Vec<_> = a.reports.try_iter().collect();
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(
        (
            reports[0].window_start,
            reports[0].unique_count,
            reports[0].scope
        ),
        (start, 12, Scope::Global)
    );
    assert_eq!(done_of(&mut con, &keys, start), Some(12));
    // The window still open is left to b, which seals it in its turn and reports both
    // instances' ids.
    b.record(w + 1, 0..3, None);
    b.close(w + 1);
    let next = b.next_report();
    assert_eq!(
        (next.window_start, next.unique_count, next.scope),
        (windows.start_secs(w + 1), 6, Scope::Global)
    );
}

/// A Kafka producer whose broker the test plays: records an instance produces through a
/// hand-over are listed, and the broker acknowledges the windows the test says, when it says.
#[derive(Clone, Default)]
struct FakeKafka {
    state: Arc<Mutex<KafkaState>>,
}

#[derive(Default)]
struct KafkaState {
    /// `(window_start, count)` produced through hand-overs.
    produced: Vec<(u64, u64)>,
    /// Acknowledged by the broker, not yet handed to the cluster thread.
    acks: Vec<u64>,
}

impl FakeKafka {
    fn produced(&self) -> Vec<(u64, u64)> {
        self.state.lock().unwrap().produced.clone()
    }

    fn acknowledge(&self, window_start: u64) {
        self.state.lock().unwrap().acks.push(window_start);
    }
}

impl RecordHandoff for FakeKafka {
    fn produce(&mut self, window_start: u64, count: u64) {
        self.state
            .lock()
            .unwrap()
            .produced
            .push((window_start, count));
    }

    fn acknowledged(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.state.lock().unwrap().acks)
    }
}

fn record_pending(con: &mut redis::Connection, keys: &Keys, start: u64) -> Option<u64> {
    redis::cmd("GET")
        .arg(keys.record(start))
        .query(con)
        .unwrap()
}

/// a leads window `w` and reports it; its broker never acknowledges the record. Returns the
/// instances, their producers, and the count.
fn reported_with_a_pending_record(
    redis: &Redis,
    prefix: &str,
    w: u64,
    a_url: Option<String>,
) -> (Instance, Instance, FakeKafka, FakeKafka, u64) {
    let windows = Windows::new(INTERVAL_SECS);
    let start = windows.start_secs(w);
    let keys = Keys::new(prefix);
    let (ka, kb) = (FakeKafka::default(), FakeKafka::default());
    let a_options = Options {
        url: a_url,
        kafka: Some(ka.clone()),
        ..Options::default()
    };
    let b_options = Options {
        kafka: Some(kb.clone()),
        ..Options::default()
    };
    let (mut a, mut b) = pair(redis, prefix, w, a_options, b_options);
    let expected = fill(redis, &keys, w, &a, &b);
    let mut con = redis.connect();
    a.close(w);
    wait_until("a to lead", || {
        (leader_of(&mut con, &keys, start).as_deref() == Some("a")).then_some(())
    });
    b.close(w);
    let report = a.next_report();
    assert_eq!(
        (report.unique_count, report.scope),
        (expected, Scope::Global)
    );
    wait_until("b to see the window done", || knows_reported(&b, start));
    assert_eq!(record_pending(&mut con, &keys, start), Some(expected));
    (a, b, ka, kb, expected)
}

#[test]
fn a_record_the_broker_acknowledged_is_produced_once() {
    let redis = Redis::start();
    let prefix = "acked";
    let keys = Keys::new(prefix);
    let w = window_at(19);
    let start = Windows::new(INTERVAL_SECS).start_secs(w);
    let (a, b, ka, kb, _) = reported_with_a_pending_record(&redis, prefix, w, None);
    let mut con = redis.connect();
    ka.acknowledge(start);
    wait_until("the record forgotten in Redis", || {
        record_pending(&mut con, &keys, start)
            .is_none()
            .then_some(())
    });
    // a stops: nothing is left to hand over, and b produces nothing.
    drop(a);
    drop(b);
    assert!(kb.produced().is_empty(), "{:?}", kb.produced());
    assert!(ka.produced().is_empty());
}

#[test]
fn a_record_not_acknowledged_when_its_leader_stops_is_produced_by_another_instance() {
    let redis = Redis::start();
    let prefix = "handrecord";
    let keys = Keys::new(prefix);
    let w = window_at(20);
    let start = Windows::new(INTERVAL_SECS).start_secs(w);
    let (a, b, ka, kb, expected) = reported_with_a_pending_record(&redis, prefix, w, None);
    // a stops with the record unacknowledged (its broker is down): b takes it over at once.
    drop(a);
    let produced = wait_until("b to produce the record", || {
        Some(kb.produced()).filter(|p| !p.is_empty())
    });
    assert_eq!(produced, [(start, expected)]);
    assert!(ka.produced().is_empty());
    // b's broker acknowledges it: it is forgotten, and never produced again.
    kb.acknowledge(start);
    let mut con = redis.connect();
    wait_until("the record forgotten in Redis", || {
        record_pending(&mut con, &keys, start)
            .is_none()
            .then_some(())
    });
    drop(b);
    assert_eq!(kb.produced(), [(start, expected)]);
}

#[test]
fn a_record_not_acknowledged_when_its_leader_dies_is_produced_by_another_instance() {
    // a is cut off from Redis for good, as a dead instance is: its claim on the record runs
    // out after the lease, and b produces the record.
    let redis = Redis::start();
    let pa = Proxy::start(&redis);
    let prefix = "deadrecord";
    let w = window_at(21);
    let start = Windows::new(INTERVAL_SECS).start_secs(w);
    let (a, b, ka, kb, expected) =
        reported_with_a_pending_record(&redis, prefix, w, Some(pa.url.clone()));
    let cut = Instant::now();
    pa.switch().cut();
    let produced = wait_until("b to produce the record", || {
        Some(kb.produced()).filter(|p| !p.is_empty())
    });
    assert!(
        cut.elapsed() >= LEASE - Duration::from_secs(1),
        "{:?}",
        cut.elapsed()
    );
    assert_eq!(produced, [(start, expected)]);
    assert!(ka.produced().is_empty());
    drop(b);
    drop(a);
}

#[test]
fn a_partition_counter_cut_off_mid_count_is_replaced_and_its_late_count_never_added() {
    // Instance a helps count a window another instance (b, played by the test) leads. While
    // a counts one partition it is cut off from Redis: its partition lease runs out, b takes
    // that partition over and counts it, and the window's count is exact. When a is back,
    // its count of that partition is not recorded: each partition is added once.
    let redis = Redis::start();
    let pa = Proxy::start(&redis);
    let prefix = "takeover";
    let keys = Keys::new(prefix);
    let w = window_at(18);
    let windows = Windows::new(INTERVAL_SECS);
    let start = windows.start_secs(w);
    let gate = &GATES[4];
    let options = Options {
        url: Some(pa.url.clone()),
        counter: gated::<4>,
        ..Options::default()
    };
    let mut a = Instance::start_with(&redis, prefix, "a", windows.start_ms(w) + 1_000, options);
    let mut con = redis.connect();
    // b leads the window: a only helps count it.
    assert_eq!(
        store::lead(&mut con, &keys, start, "b", 600_000).unwrap(),
        Lead::Leading
    );
    let ids = 0..400i64;
    a.record(w, ids.clone(), None);
    let _open = gate.shut();
    a.seal(w);
    wait_until("a's last shipment", || {
        store::has_shipped(&mut con, &keys, start, "a")
            .unwrap()
            .then_some(())
    });
    let parts: Vec<_> = (0..PARTITIONS).map(|p| keys.partition(start, p)).collect();
    for part in &parts {
        assert!(
            parts::shipments(&mut con, part).unwrap() > 0,
            "{}",
            part.ids
        );
    }
    assert!(store::freeze(&mut con, &keys, start, "b", 600_000).unwrap());
    for part in &parts {
        parts::freeze(&mut con, part, 600_000).unwrap();
    }
    // a sees the window frozen, wins a partition and counts it: held at the gate.
    gate.wait_for_a_count();
    let held = parts
        .iter()
        .position(|part| {
            redis::cmd("GET")
                .arg(&part.lease)
                .query::<Option<String>>(&mut con)
                .unwrap()
                .as_deref()
                == Some("a")
        })
        .expect("a holds the lease of the partition it counts");
    pa.switch().cut();
    // b counts every partition: the one a held once its lease ran out.
    let mut total = 0;
    for (p, part) in parts.iter().enumerate() {
        let n = wait_until("the partition's lease free for b", || {
            match parts::lead(&mut con, part, "b", 600_000).unwrap() {
                parts::Lead::Counting(n) => Some(n),
                parts::Lead::Held => None,
                other => panic!("partition {p}: {other:?}"),
            }
        });
        let (count, _) =
            count_partition_with(&mut con, &read(part, n), &mut |_| Ok(true), Tally::count)
                .unwrap()
                .unwrap();
        assert!(parts::counted(&mut con, part, "b", count, 600_000).unwrap());
        total += count;
    }
    assert_eq!(total, ids.end as u64);
    let recorded = |con: &mut redis::Connection| parts::counts(con, &parts).unwrap();
    let before = recorded(&mut con);
    assert!(before.iter().all(Option::is_some));
    // a comes back, its count finishes: not recorded, and the partition's count stands.
    pa.switch().restore();
    gate.open();
    wait_until("a back on Redis", || {
        live_now(&mut con, &keys, "a").then_some(())
    });
    assert!(store::mark_done(&mut con, &keys, start, "b", total, 600_000).unwrap());
    wait_until("a past the window", || past(&a, start).then_some(()));
    assert_eq!(recorded(&mut con), before, "partition {held} recorded once");
    assert_eq!(a.metrics.cluster_partitions_counted.load(Relaxed), 0);
    assert!(a.reports.is_empty(), "{:?}", a.reports.try_recv());
    assert_eq!(knows_reported(&a, start), Some(total));
}

#[test]
fn after_a_reconnect_the_window_closed_but_not_sealed_yet_is_shipped_at_once() {
    // The window has just closed; the collector seals it a moment later (the settling
    // delay). Redis came back meanwhile: the ids the window took since its last shipment go
    // out at once, not with the seal, so a hard crash before the seal loses no more than
    // the usual second.
    let redis = Redis::start();
    let pa = Proxy::start(&redis);
    let prefix = "unsealed";
    let keys = Keys::new(prefix);
    let w = window_at(19);
    let windows = Windows::new(INTERVAL_SECS);
    let start = windows.start_secs(w);
    let options = Options {
        url: Some(pa.url.clone()),
        ..Options::default()
    };
    let a = Instance::start_with(&redis, prefix, "a", windows.start_ms(w) + 1_000, options);
    let mut con = redis.connect();
    a.record(w, 0..10, None);
    wait_until("the open window's first ids in Redis", || {
        (shipments(&mut con, &keys, start) > 0).then_some(())
    });
    let errors = a.metrics.redis_errors.load(Relaxed);
    pa.switch().cut();
    wait_until("a to lose Redis", || {
        (a.metrics.redis_errors.load(Relaxed) > errors).then_some(())
    });
    a.record(w, 10..20, None);
    // The window closes; it is not sealed.
    a.clock.set(windows.end_ms(w) + 1);
    pa.switch().restore();
    let union = wait_until("the window's ids since the cut in Redis", || {
        let (union, _) = union_of_shipments(&mut con, &keys, start).unwrap();
        (union.len() == 20).then_some(union)
    });
    assert_eq!(
        union.iter().collect::<Vec<_>>(),
        (0..20).collect::<Vec<_>>()
    );
}

/// What instance `name` does with window `start` before it is killed: ships all of `ids`
/// and `endpoints` as its last shipment, registered, as `cluster::ship` does.
fn ship_and_die(
    redis: &Redis,
    prefix: &str,
    name: &str,
    start: u64,
    ids: std::ops::Range<i64>,
    endpoints: &[String],
) {
    let settings = Settings {
        target: Target::parse(&redis.url).unwrap(),
        keys: Keys::new(prefix),
        instance: name.to_string(),
        grace: GRACE,
        backlog: 10,
        windows: Windows::new(INTERVAL_SECS),
    };
    let ids = IdSet::from_ids(ids);
    let load = Load {
        window_start: start,
        ids: &ids,
        endpoints,
        last: true,
        register: true,
    };
    let mut con = redis.connect();
    let shipped = ship_window(&mut con, &settings, &Metrics::new(1), load).unwrap();
    assert_eq!(shipped, store::Shipped::Stored);
}

/// Whether window `start` is in the registry of windows not reported yet.
fn registered(con: &mut redis::Connection, keys: &Keys, start: u64) -> bool {
    redis::cmd("ZSCORE")
        .arg(keys.windows())
        .arg(start)
        .query::<Option<u64>>(con)
        .unwrap()
        .is_some()
}

/// A clock time at which windows up to `last` are due for adoption: past their end, the
/// grace and a lease.
fn orphans_due(windows: &Windows, last: u64) -> u64 {
    windows.end_ms(last) + (GRACE + LEASE).as_millis() as u64 + 1
}

#[test]
fn a_window_whose_holders_are_all_gone_is_reported_by_an_instance_that_held_none_of_it() {
    let redis = Redis::start();
    let prefix = "orphans";
    let keys = Keys::new(prefix);
    let windows = Windows::new(INTERVAL_SECS);
    let w = window_at(40);
    let (first, second) = (windows.start_secs(w), windows.start_secs(w + 1));
    let endpoint = "http://good.test/orphan".to_string();
    // Window w's only holder, a, shipped it whole and was killed before it led it. So was
    // w + 1's, b, which then restarts under its name, holding nothing of it (no state file
    // in cluster mode): a stopping instance would have left w + 1 to it.
    ship_and_die(
        &redis,
        prefix,
        "a",
        first,
        0..1_000,
        std::slice::from_ref(&endpoint),
    );
    ship_and_die(&redis, prefix, "b", second, 500..2_000, &[]);
    let b = Instance::start(&redis, prefix, "b", orphans_due(&windows, w + 1));
    // It trusts nothing for a grace period after it connects, as a leader does.
    b.clock.advance(GRACE);
    let mut reports = [b.next_report(), b.next_report()];
    reports.sort_by_key(|r| r.window_start);
    let seen: Vec<_> = reports
        .iter()
        .map(|r| (r.window_start, r.unique_count, r.scope))
        .collect();
    assert_eq!(
        seen,
        [
            (first, 1_000, Scope::Global),
            (second, 1_500, Scope::Global)
        ]
    );
    assert_eq!(reports[0].endpoints, [endpoint]);
    let mut con = redis.connect();
    assert_eq!(done_of(&mut con, &keys, first), Some(1_000));
    assert_eq!(done_of(&mut con, &keys, second), Some(1_500));
    assert!(!registered(&mut con, &keys, first) && !registered(&mut con, &keys, second));
    assert_eq!(b.metrics.cluster_adopted_windows.load(Relaxed), 2);
    for start in [first, second] {
        let when = rfc3339_secs(start);
        assert_eq!(
            logged(&[&when, "this instance takes it up"]).len(),
            1,
            "{when}"
        );
    }
}

#[test]
fn registered_windows_reported_already_or_gone_from_redis_are_forgotten_without_a_line() {
    let redis = Redis::start();
    let prefix = "orphans-settled";
    let keys = Keys::new(prefix);
    let windows = Windows::new(INTERVAL_SECS);
    let w = window_at(41);
    let (first, second) = (windows.start_secs(w), windows.start_secs(w + 1));
    let mut con = redis.connect();
    // w was reported (its `done` mark is there) but is still registered: the leader's
    // settle did not reach Redis. w + 1 is registered with nothing else: Redis lost the
    // rest (killed before its append-only file had it).
    ship_and_die(&redis, prefix, "a", first, 0..10, &[]);
    put(&mut con, &["SET", &keys.done(first), "10"]);
    verve::cluster::orphans::register(&mut con, &keys, second, 600_000).unwrap();
    let b = Instance::start(&redis, prefix, "b", orphans_due(&windows, w + 1));
    b.clock.advance(GRACE);
    wait_until("both windows forgotten", || {
        (!registered(&mut con, &keys, first) && !registered(&mut con, &keys, second)).then_some(())
    });
    // Forgotten, not taken up: nothing of them is left for this instance to report.
    assert!(b.reports.try_recv().is_err());
    assert_eq!(b.metrics.cluster_adopted_windows.load(Relaxed), 0);
    assert_eq!(done_of(&mut con, &keys, second), None);
}

#[test]
fn a_window_a_live_holder_leads_is_not_taken_up() {
    let redis = Redis::start();
    let prefix = "orphans-led";
    let keys = Keys::new(prefix);
    let windows = Windows::new(INTERVAL_SECS);
    let w = window_at(42);
    let (first, second) = (windows.start_secs(w), windows.start_secs(w + 1));
    let mut con = redis.connect();
    // a holds and leads w (slowly: its lease is taken, its report not written yet); w + 1's
    // holder is gone, so b takes w + 1 up in the same round as it looks at w.
    ship_and_die(&redis, prefix, "a", first, 0..10, &[]);
    assert_eq!(
        store::lead(&mut con, &keys, first, "a", 600_000).unwrap(),
        Lead::Leading
    );
    ship_and_die(&redis, prefix, "a", second, 0..20, &[]);
    let b = Instance::start(&redis, prefix, "b", orphans_due(&windows, w + 1));
    b.clock.advance(GRACE);
    let report = b.next_report();
    assert_eq!((report.window_start, report.unique_count), (second, 20));
    // w is a's to report: b did not take it up, and it stays registered for a.
    assert_eq!(b.metrics.cluster_adopted_windows.load(Relaxed), 1);
    assert_eq!(leader_of(&mut con, &keys, first).as_deref(), Some("a"));
    assert!(registered(&mut con, &keys, first));
    assert_eq!(done_of(&mut con, &keys, first), None);
}

#[test]
fn a_stopping_instance_ships_what_it_handed_over_again_when_redis_loses_it() {
    // A deploy: a stops inside window w and leaves the window to b. Redis then crashes and
    // comes back without the last writes (here: empty; `appendfsync everysec` loses up to
    // a second or two of them). a, which still keeps what it handed over, ships it again:
    // b's count has a's ids.
    let mut redis = Redis::start();
    let prefix = "linger";
    let keys = Keys::new(prefix);
    let w = window_at(43);
    let start = Windows::new(INTERVAL_SECS).start_secs(w);
    let stop_within = Duration::from_secs(10);
    let a_options = Options {
        linger: stop_within,
        ..Options::default()
    };
    let (mut a, mut b) = pair(&redis, prefix, w, a_options, Options::default());
    // 0..10 and 20..25 from a, 5..20 and 25..30 from b: ten ids are a's alone.
    let expected = fill(&redis, &keys, w, &a, &b);
    // Stopped inside the window, a seals it (as the collector does at shutdown) and leaves
    // it to b.
    a.seal_now(w);
    let stopping = std::thread::spawn(move || {
        a.sink.finish(Instant::now() + stop_within);
        a
    });
    let when = rfc3339_secs(start);
    wait_until("a to hand the window over", || {
        (!logged(&[&when, "is left to 1 other live instances"]).is_empty()).then_some(())
    });
    redis.stop();
    redis.restart();
    let mut con = redis.connect();
    wait_until("a's last shipment again in Redis", || {
        store::has_shipped(&mut con, &keys, start, "a")
            .unwrap()
            .then_some(())
    });
    b.close(w);
    let report = b.next_report();
    assert_eq!(
        (report.window_start, report.unique_count, report.scope),
        (start, expected, Scope::Global)
    );
    let a = stopping.join().unwrap();
    assert!(a.reports.try_recv().is_err(), "a reported the window too");
}

#[test]
fn a_window_taken_up_whose_keys_keep_failing_is_let_go_without_a_line_of_its_own() {
    // The adopter holds none of the window's ids: once its keys have failed every try, it
    // must not report "its own ids" (none) with scope=local, as a holder would; it lets the
    // window go.
    let redis = Redis::start();
    let prefix = "orphans-broken";
    let keys = Keys::new(prefix);
    let windows = Windows::new(INTERVAL_SECS);
    let w = window_at(44);
    let start = windows.start_secs(w);
    let mut con = redis.connect();
    ship_and_die(&redis, prefix, "a", start, 0..10, &[]);
    // Its endpoint set replaced by a string: the report's read of it fails.
    put(&mut con, &["SET", &keys.endpoints(start), "not a set"]);
    let b = Instance::start(&redis, prefix, "b", orphans_due(&windows, w));
    b.clock.advance(GRACE);
    let when = rfc3339_secs(start);
    wait_until("the window given up after its tries", || {
        let alone = logged(&[&when, "alone"]);
        let let_go = logged(&[&when, "which took it up, lets it go"]);
        (!alone.is_empty() || !let_go.is_empty()).then_some(())
    });
    assert!(
        logged(&[&when, "alone"]).is_empty(),
        "{:?}",
        logged(&[&when])
    );
    assert!(!logged(&[&when, &format!("try {WINDOW_TRIES} of")]).is_empty());
    assert!(b.reports.try_recv().is_err());
    assert_eq!(b.metrics.cluster_local_windows.load(Relaxed), 0);
    assert_eq!(b.metrics.cluster_adopted_windows.load(Relaxed), 1);
}
