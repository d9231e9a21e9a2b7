//! Kafka end to end (docs/kafka.md): the real `verve` binary producing to a real
//! Kafka-protocol broker (tansu, see `common::kafka_broker`) on loopback, records read back
//! with an rdkafka consumer. Each test starts its own broker on a free port.
//!
//! Windows are one second long and every wait is for an event (a log line, a record), never
//! for a fixed time. The outage is a frozen broker (SIGSTOP): it keeps its connections and
//! its data, but answers nothing until it is thawed.

mod common;

use std::collections::BTreeMap;

use common::kafka_broker::{free_port, Broker};
use common::kafka_log::{delivered, expected, lost, metric, stop};
use common::redis_servers::Redis;
use common::{parse_rfc3339_secs, rfc3339_secs, wait_until, CountLine, Server};
use verve::report::kafka::{key, value};

const INTERVAL: u64 = 1;
const TOPIC: &str = "unique-requests";

#[test]
fn each_window_is_one_record_with_the_documented_key_and_value() {
    let broker = Broker::start();
    let server = Server::start(INTERVAL, &["--kafka-brokers", &broker.bootstrap()]);
    server.wait_for_log("the topic created at start-up", |l| {
        l.contains(" kafka ") && l.contains(&format!("topic {TOPIC} created"))
    });
    assert_eq!(broker.partitions(TOPIC), Some(1));
    let (busy, ()) = server.in_one_window(|attempt| {
        let base = 1000 * i64::from(attempt);
        for id in [1, 2, 3, 2, 1] {
            server.accept_ok(base + id);
        }
    });
    assert_eq!(server.wait_for_window(busy).unique_count, 3);
    wait_until("the busy window's record delivered", || {
        delivered(&server).contains(&busy).then_some(())
    });
    assert!(metric(&server, "verve_kafka_records_total{result=\"delivered\"}") >= 1);
    // SIGTERM: the open window gets its (partial) count line and its record before exit.
    let (server, lines) = stop(server);
    let records = broker.read_topic(TOPIC, lines.len());
    assert_eq!(records, expected(&lines), "log:\n{}", server.log());
    assert!(records.contains(&(key(busy), value(busy, 3))));
    assert!(lost(&server).is_empty());
}

#[test]
fn a_frozen_broker_delays_the_records_but_not_the_count_log() {
    let mut broker = Broker::start();
    let server = Server::start(INTERVAL, &["--kafka-brokers", &broker.bootstrap()]);
    let first = wait_until("a first record delivered", || {
        delivered(&server).first().copied()
    });
    for id in 1..=5 {
        server.accept_ok(id);
    }
    broker.freeze();
    let before = server.count_lines().len();
    // More than two windows close while the broker answers nothing: their count lines are
    // written all the same (were the count log waiting for Kafka, this would never happen),
    // and the service keeps answering.
    let during = wait_until("three count lines while the broker is frozen", || {
        let lines = server.count_lines();
        (lines.len() >= before + 3).then(|| lines[before..].to_vec())
    });
    for id in 6..=8 {
        server.accept_ok(id);
    }
    let acknowledged = delivered(&server);
    for c in &during {
        assert!(
            !acknowledged.contains(&c.window_start),
            "{} acknowledged by a frozen broker",
            rfc3339_secs(c.window_start)
        );
    }
    assert!(metric(&server, "verve_backlog_windows") >= 3);
    broker.thaw();
    let last = during.last().unwrap().window_start;
    wait_until("the frozen windows delivered after the thaw", || {
        delivered(&server).contains(&last).then_some(())
    });
    let (server, lines) = stop(server);
    assert!(lines.first().map(|c| c.window_start) <= Some(first));
    // One count line for every window, none skipped while the broker was away.
    for pair in lines.windows(2) {
        assert_eq!(pair[1].window_start, pair[0].window_start + INTERVAL);
    }
    let records = broker.read_topic(TOPIC, lines.len());
    // In order, each exactly once, nothing missing: the topic is the count log.
    assert_eq!(records, expected(&lines), "log:\n{}", server.log());
    assert!(lost(&server).is_empty());
    assert_eq!(delivered(&server).len(), lines.len());
}

#[test]
fn an_absent_broker_is_a_warning_and_a_full_backlog_loses_the_oldest_loudly() {
    let port = free_port();
    let brokers = format!("127.0.0.1:{port}");
    let server = Server::start(
        INTERVAL,
        &["--kafka-brokers", &brokers, "--kafka-backlog", "3"],
    );
    // Serving (the listening line came), with a warning on stderr and in the log.
    server.wait_for_log("the start-up warning", |l| {
        l.contains(" WARN kafka ") && l.contains(&brokers) && l.contains("not checked")
    });
    assert!(server.stderr().contains(&brokers), "{}", server.stderr());
    // Each broker error is one line (rdkafka 0.39 hands every error event to verve twice).
    let errors: Vec<String> = server
        .log_lines()
        .into_iter()
        .filter(|l| l.contains(" kafka error="))
        .collect();
    assert!(
        !errors.is_empty(),
        "no broker error logged:\n{}",
        server.log()
    );
    assert!(
        errors.windows(2).all(|p| p[0] != p[1]),
        "an error logged twice:\n{errors:#?}"
    );
    server.accept_ok(7);
    // Six windows with room for three: the oldest are pushed off, each logged.
    server.wait_for_count_lines(6);
    wait_until("a record pushed off the backlog", || {
        (!lost(&server).is_empty()).then_some(())
    });
    assert!(metric(&server, "verve_kafka_errors_total") >= 1);
    assert!(metric(&server, "verve_kafka_records_total{result=\"lost\"}") >= 1);
    assert!(metric(&server, "verve_backlog_windows") >= 3);
    // The broker appears: the topic is created then, and the backlog delivered.
    let broker = Broker::start_on(port);
    server.wait_for_log("the topic created once the broker is up", |l| {
        l.contains(&format!("topic {TOPIC} created"))
    });
    wait_until("a record delivered", || {
        (!delivered(&server).is_empty()).then_some(())
    });
    let (server, lines) = stop(server);
    let lost = lost(&server);
    assert!(
        lost.iter().all(|(_, why)| why == "backlog-full"),
        "{lost:?}"
    );
    // Every window is either lost (said so in the log; the oldest waiting one each time, which
    // is not always the oldest of all: the record librdkafka holds is kept) or in the topic
    // once, in order.
    let lost: Vec<u64> = lost.into_iter().map(|(w, _)| w).collect();
    let kept: Vec<CountLine> = lines
        .iter()
        .filter(|c| !lost.contains(&c.window_start))
        .cloned()
        .collect();
    assert_eq!(kept.len() + lost.len(), lines.len(), "lost {lost:?}");
    let records = broker.read_topic(TOPIC, kept.len());
    assert_eq!(records, expected(&kept), "log:\n{}", server.log());
}

#[test]
fn in_cluster_mode_each_window_is_produced_once_by_its_leader() {
    let redis = Redis::start();
    let broker = Broker::start();
    let servers: Vec<Server> = (0..2)
        .map(|i| {
            let name = format!("i{i}");
            Server::start(
                INTERVAL,
                &[
                    "--redis",
                    &redis.url,
                    "--instance-id",
                    &name,
                    "--cluster-grace",
                    "0.5",
                    "--kafka-brokers",
                    &broker.bootstrap(),
                ],
            )
        })
        .collect();
    for (i, s) in servers.iter().enumerate() {
        for id in 0..10 {
            s.accept_ok(id * 2 + i as i64);
        }
    }
    // Each window's count line, from whichever instance led it.
    let all_lines = || -> BTreeMap<u64, Vec<CountLine>> {
        let mut by_window = BTreeMap::<u64, Vec<CountLine>>::new();
        for s in &servers {
            for c in s.count_lines() {
                by_window.entry(c.window_start).or_default().push(c);
            }
        }
        by_window
    };
    let windows = wait_until("five windows reported by the cluster", || {
        let w = all_lines();
        (w.len() >= 5).then_some(w)
    });
    let newest = *windows.keys().last().unwrap();
    wait_until("the newest window's record delivered", || {
        servers
            .iter()
            .any(|s| delivered(s).contains(&newest))
            .then_some(())
    });
    let records = broker.read_topic(TOPIC, windows.len());
    let windows = all_lines();
    let mut seen = Vec::new();
    for (k, v) in &records {
        let w = parse_rfc3339_secs(k).unwrap_or_else(|| panic!("key {k:?}"));
        let lines = &windows[&w];
        assert_eq!(lines.len(), 1, "one count line per window in the cluster");
        assert_eq!(v, &value(w, lines[0].unique_count));
        seen.push(w);
    }
    assert!(
        seen.windows(2).all(|p| p[0] < p[1]),
        "in order, once: {seen:?}"
    );
    for w in windows.keys().filter(|w| **w <= newest) {
        assert!(seen.contains(w), "{} has no record", rfc3339_secs(*w));
    }
}

#[test]
fn sigterm_with_a_frozen_broker_accounts_for_every_window() {
    let mut broker = Broker::start();
    let server = Server::start(INTERVAL, &["--kafka-brokers", &broker.bootstrap()]);
    wait_until("a first record delivered", || {
        (!delivered(&server).is_empty()).then_some(())
    });
    broker.freeze();
    let before = server.count_lines().len();
    server.wait_for_count_lines(before + 2);
    // The shutdown cannot deliver what waits; it says so for each record and still exits 0.
    let (server, lines) = stop(server);
    let acknowledged = delivered(&server);
    let lost = lost(&server);
    assert!(!lost.is_empty(), "log:\n{}", server.log());
    for (w, why) in &lost {
        assert_eq!(why, "not-delivered-at-exit", "{}", rfc3339_secs(*w));
        assert!(!acknowledged.contains(w));
    }
    // Every window is accounted for: acknowledged, or logged as lost.
    for c in &lines {
        let w = c.window_start;
        assert!(
            acknowledged.contains(&w) || lost.iter().any(|(l, _)| *l == w),
            "{} neither delivered nor logged as lost:\n{}",
            rfc3339_secs(w),
            server.log()
        );
    }
    // The record librdkafka held at exit may still be stored once the broker runs again
    // (its request was sent before the freeze was noticed): "lost" means "not acknowledged".
    // Whatever is in the topic is still each window once, in order.
    broker.thaw();
    let records = broker.read_topic(TOPIC, acknowledged.len());
    let keys: Vec<u64> = records
        .iter()
        .map(|(k, _)| parse_rfc3339_secs(k).unwrap())
        .collect();
    assert!(keys.windows(2).all(|p| p[0] < p[1]), "{keys:?}");
    assert!(acknowledged.iter().all(|w| keys.contains(w)));
    assert!(keys.len() <= acknowledged.len() + 1, "{keys:?}");
}

#[test]
fn with_a_state_file_records_that_wait_survive_a_stop_and_a_crash() {
    let port = free_port();
    let bootstrap = format!("127.0.0.1:{port}");
    let dir = common::temp_dir("kafka-state");
    let state = dir.join("verve.state");
    let args = [
        "--kafka-brokers",
        bootstrap.as_str(),
        "--state-file",
        state.to_str().expect("UTF-8 path"),
    ];
    // No broker yet: windows are reported, their records wait.
    let first = Server::start_in(dir.clone(), INTERVAL, &args);
    for id in 1..=5 {
        first.accept_ok(id);
    }
    first.wait_for_count_lines(3);
    // SIGTERM: what waits is kept, not lost.
    let (first, _) = stop(first);
    assert!(first.log().contains("deferred=restart"), "{}", first.log());
    assert!(lost(&first).is_empty(), "{:?}", lost(&first));
    // SIGKILL: what waits now (the first run's records and this one's) is kept too.
    let mut second = Server::start_in(dir.clone(), INTERVAL, &args);
    let before = second.count_lines().len();
    for id in 6..=9 {
        second.accept_ok(id);
    }
    second.wait_for_count_lines(before + 2);
    second.signal(libc::SIGKILL);
    let _ = second.wait_exit();
    let promised: Vec<CountLine> = second.count_lines();
    // The broker comes up; the next start delivers every window's record, oldest first.
    let broker = Broker::start_on(port);
    let third = Server::start_in(dir, INTERVAL, &args);
    wait_until("every reported window's record delivered", || {
        let done = delivered(&third);
        promised
            .iter()
            .all(|c| done.contains(&c.window_start))
            .then_some(())
    });
    let windows: std::collections::BTreeSet<u64> =
        promised.iter().map(|c| c.window_start).collect();
    let records = broker.read_topic(TOPIC, windows.len());
    for record in expected(&promised) {
        assert!(records.contains(&record), "{record:?} not in {records:?}");
    }
    // Window order: each window's first record comes after every older window's.
    let mut firsts: Vec<u64> = Vec::new();
    for (k, _) in &records {
        let start = parse_rfc3339_secs(k).expect("an RFC 3339 key");
        if !firsts.contains(&start) {
            firsts.push(start);
        }
    }
    assert!(firsts.windows(2).all(|p| p[0] < p[1]), "{firsts:?}");
    assert!(lost(&third).is_empty(), "{:?}", lost(&third));
}
