//! A leader that counts many partitions in a row keeps its duties going throughout: its
//! heartbeat (so that the others do not take it for dead), the open window's shipping (so
//! that a hard crash loses at most a second of ids) and its leases. One instance on a real
//! `redis-server`, its clock moved by hand, each partition's count held up by the counter.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::redis_servers::Redis;
use common::wait_until;
use crossbeam_channel::{unbounded, Sender};
use verve::clock::{ManualClock, Windows};
use verve::cluster::conn::Target;
use verve::cluster::node::{ClusterSink, Extras, Settings, Shared, LIVE_TTL};
use verve::cluster::parts;
use verve::cluster::store::Keys;
use verve::cluster::tally::Tally;
use verve::endpoints::EndpointPolicy;
use verve::ids::partition::PARTITIONS;
use verve::metrics::Metrics;
use verve::report::{Reporter, WindowReport};
use verve::shards::Shards;
use verve::sink::{SealedWindow, WindowSink};

struct Recorder(Sender<WindowReport>);

impl Reporter for Recorder {
    fn report(&mut self, report: &WindowReport) {
        let _ = self.0.send(report.clone());
    }
}

/// Each partition's count lasts 450 ms: less than a heartbeat period apart, more than the
/// heartbeat's time to live for the 16 together.
fn slow(tally: &Tally) -> u64 {
    std::thread::sleep(Duration::from_millis(450));
    tally.count()
}

fn redis_ms(con: &mut redis::Connection) -> u64 {
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query(con).unwrap();
    secs * 1000 + micros / 1000
}

#[test]
fn a_leader_counting_partition_after_partition_keeps_heartbeating() {
    let redis = Redis::start();
    let mut con = redis.connect();
    let keys = Keys::new("duties");
    let windows = Windows::new(60);
    let w = (1_800_000_000 / 60) as u64;
    let start = windows.start_secs(w);
    let shards = Arc::new(Shards::new(1, EndpointPolicy::default(), 100));
    let clock = ManualClock::new(windows.start_ms(w) + 1_000);
    let metrics = Arc::new(Metrics::new(1));
    let (tx, reports) = unbounded();
    let grace = Duration::from_secs(2);
    let settings = Settings {
        target: Target::parse(&redis.url).unwrap(),
        keys: keys.clone(),
        instance: "a".into(),
        grace,
        backlog: 10,
        windows,
    };
    let shared = Shared {
        shards: shards.clone(),
        clock: clock.clone(),
        metrics: metrics.clone(),
    };
    let extras = Extras {
        counter: slow,
        ..Extras::default()
    };
    let health = verve::health::Health::new();
    let mut sink =
        ClusterSink::start(settings, shared, Box::new(Recorder(tx)), &health, extras).unwrap();
    let parts: Vec<_> = (0..PARTITIONS).map(|p| keys.partition(start, p)).collect();
    // Two shipments in every partition (the open window's, then the last), so that each
    // count runs beside the duties.
    for id in 0..2_000 {
        shards.record(0, w, id, None).unwrap();
    }
    wait_until("the open window's ids shipped to every partition", || {
        parts
            .iter()
            .all(|k| parts::shipments(&mut con, k).unwrap() >= 1)
            .then_some(())
    });
    for id in 10_000..12_000 {
        shards.record(0, w, id, None).unwrap();
    }
    clock.set(windows.end_ms(w) + grace.as_millis() as u64 + 1);
    let sealed = shards.seal(w);
    sink.accept(SealedWindow {
        window: w,
        window_start: start,
        ids: sealed.ids,
        unshipped: sealed.unshipped,
        endpoints: sealed.endpoints,
        charge: sealed.charge,
    });
    // While the 16 counts run (about 7 s together), the heartbeat never gets older than
    // the time to live that makes an instance dead to the others.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut oldest, mut gone) = (0, false);
    let report = loop {
        if let Ok(report) = reports.try_recv() {
            break report;
        }
        assert!(Instant::now() < deadline, "no report");
        let beat: Option<u64> = redis::cmd("ZSCORE")
            .arg(keys.live())
            .arg("a")
            .query(&mut con)
            .unwrap();
        match beat {
            Some(beat) => oldest = oldest.max(redis_ms(&mut con).saturating_sub(beat)),
            // Gone from the live set: its key expired for want of a heartbeat.
            None => gone = true,
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    println!("oldest heartbeat while counting: {oldest} ms; gone from the live set: {gone}");
    assert_eq!(report.unique_count, 4_000);
    // Alone, it counted all 16 partitions itself.
    assert_eq!(
        metrics
            .cluster_partitions_counted
            .load(std::sync::atomic::Ordering::Relaxed),
        PARTITIONS as u64
    );
    assert!(!gone, "the leader fell off the live set while it counted");
    assert!(
        oldest < LIVE_TTL.as_millis() as u64,
        "the leader's heartbeat got {oldest} ms old while it counted"
    );
    sink.finish(Instant::now() + Duration::from_secs(2));
}
