//! The fault-injection run (`examples/faults`): its checker on synthetic runs, each case a
//! thing it must catch or must allow; then a short run of each mode against the real binary,
//! nginx and redis-server (the whole file well under 90 s: the two runs go in parallel).
//!
//! **What the short runs assert.** That the run was carried out (the load was answered,
//! every fault kind of the mode was injected, the windows were checked) and the checker's
//! verdict: no id lost, no unexplained duplicate. The summary is printed
//! (`cargo test --test faults -- --nocapture`), and a run that fails an assertion keeps its
//! directory (the path is in the message).

#[path = "../examples/faults/check.rs"]
mod check;
#[path = "../examples/faults/load.rs"]
mod load;
#[path = "../examples/faults/nemesis.rs"]
mod nemesis;
#[path = "../examples/faults/procs.rs"]
mod procs;
#[path = "../examples/support/rng.rs"]
mod rng;
#[path = "../examples/faults/run.rs"]
mod run;

use std::collections::BTreeMap;
use std::time::Duration;

use check::{check, edf, CountLine, Event, Fault, Outcome, Phase, Run, Sent, REDIS_LOSS_MS};

// --- the checker on synthetic runs ------------------------------------------------------------

/// 2 s windows starting at window 1000 (2 000 000 ms); two instances.
const IV: u64 = 2000;
const W0: u64 = 1000 * IV;

fn base() -> Run {
    Run {
        interval_ms: IV,
        protect_ms: 1000,
        slack_ms: 2,
        instances: vec!["i1".into(), "i2".into()],
        load_start_ms: W0 + 100,
        load_end_ms: W0 + IV + 1500,
        run_end_ms: W0 + 3 * IV,
        ..Run::default()
    }
}

/// `n` ids sent at `at` ms and answered ok 3 ms later by instance `by`.
fn ok(run: &mut Run, n: usize, at: u64, by: usize) {
    for _ in 0..n {
        run.sent.push(Sent {
            sent_ms: at,
            end_ms: at + 3,
            outcome: Outcome::Ok,
            answered_by: Some(by),
            deliveries: 1,
        });
    }
}

fn line(run: &mut Run, by: usize, window: u64, count: u64, at: u64) {
    run.lines.push(CountLine {
        instance: by,
        t_ms: at,
        window_start_ms: W0 + window * IV,
        count,
        local: false,
    });
}

fn event(run: &mut Run, fault: Fault, target: Option<usize>, at: u64) {
    run.events.push(Event {
        t_ms: at,
        fault,
        phase: Phase::Begin,
        target,
        detail: String::new(),
    });
}

/// Two windows of ids, each reported once, exactly.
fn clean() -> Run {
    let mut r = base();
    ok(&mut r, 10, W0 + 500, 0);
    ok(&mut r, 5, W0 + 900, 1);
    ok(&mut r, 7, W0 + IV + 400, 1);
    line(&mut r, 0, 0, 15, W0 + IV + 200);
    line(&mut r, 1, 1, 7, W0 + 2 * IV + 200);
    r
}

#[test]
fn a_clean_run_passes() {
    let rep = check(&clean());
    assert!(rep.passed(), "{:?}", rep.violations);
    assert_eq!(
        (rep.windows_checked, rep.sent, rep.ok, rep.lost),
        (2, 22, 22, 0)
    );
}

#[test]
fn a_lost_id_is_a_violation() {
    let mut r = clean();
    r.lines[0].count = 14;
    let rep = check(&r);
    assert!(!rep.passed());
    assert_eq!(rep.lost, 1);
    assert!(
        rep.violations[0].contains("1 ids answered ok are in no count"),
        "{:?}",
        rep.violations
    );
    assert_eq!(rep.windows[0].verdict, "lost");
}

#[test]
fn an_id_answered_right_before_its_instance_was_killed_may_be_lost() {
    let mut r = clean();
    r.lines[0].count = 14;
    // i1 (index 0) SIGKILLed 900 ms after it answered its ids: they are not owed...
    event(&mut r, Fault::Kill, Some(0), W0 + 503 + 900);
    let rep = check(&r);
    assert!(rep.passed(), "{:?}", rep.violations);
    assert_eq!((rep.unprotected, rep.lost), (10, 0));
    // ... but 1.1 s after, they are.
    r.events[0].t_ms = W0 + 503 + 1100;
    let rep = check(&r);
    assert_eq!((rep.unprotected, rep.lost), (0, 1));
    // A kill of the other instance excuses nothing (nor does one before the answer).
    r.events[0] = Event {
        target: Some(1),
        ..r.events[0].clone()
    };
    r.events[0].t_ms = W0 + 400;
    assert_eq!(check(&r).lost, 1);
}

/// A fault on Redis from `at` to `at + ms`: its begin and end events.
fn redis_fault(run: &mut Run, fault: Fault, at: u64, ms: u64) {
    event(run, fault, None, at);
    run.events.push(Event {
        t_ms: at + ms,
        fault,
        phase: Phase::End,
        target: None,
        detail: String::new(),
    });
}

#[test]
fn an_id_redis_may_have_lost_with_its_instance_killed_before_it_shipped_again_may_be_lost() {
    let mut r = clean();
    r.lines[0].count = 14;
    // Redis SIGKILLed 2 s after i1 answered its ids (it may have lost their shipment) and
    // started again at once, i1 SIGKILLed 1.5 s later, before it connected again: those
    // ids are not owed...
    let answered = W0 + 503;
    redis_fault(&mut r, Fault::RedisKill, answered + 2_000, 50);
    event(&mut r, Fault::Kill, Some(0), answered + 3_500);
    let rep = check(&r);
    assert!(rep.passed(), "{:?}", rep.violations);
    assert_eq!((rep.exposed_to_redis_loss, rep.lost), (10, 0));
    // ... nor when i1 was killed first, 1.5 s after the answer (its last shipments are in
    // the second or two that Redis had not synced when it was killed),
    r.events[2].t_ms = answered + 1_500;
    let rep = check(&r);
    assert_eq!((rep.exposed_to_redis_loss, rep.lost), (10, 0));
    // ... but they are once i1 had connected again (and shipped them) before its kill,
    r.events[2].t_ms = answered + 3_700;
    r.redis_link.push((0, answered + 2_600, true));
    assert_eq!(check(&r).lost, 1);
    // ... and when Redis's crash came too long after the answer (Redis has synced them),
    r.redis_link.clear();
    r.events[0].t_ms = answered + REDIS_LOSS_MS + 1;
    r.events[1].t_ms = answered + REDIS_LOSS_MS + 51;
    assert_eq!(check(&r).lost, 1);
    // ... or well before the answer.
    r.events[0].t_ms = answered - 2_000;
    r.events[1].t_ms = answered - 1_950;
    assert_eq!(check(&r).lost, 1);
    r.events[0].t_ms = answered + 2_000;
    r.events[1].t_ms = answered + 2_050;
    // A kill of i2 instead excuses i2's twelve ids, within the 3 s too, and not i1's ten.
    // (Those answered right before the crash could not even be shipped before it.)
    r.events[2].target = Some(1);
    let rep = check(&r);
    assert_eq!(rep.exposed_to_redis_loss + rep.unshippable, 12);
    r.lines[0].count = 9;
    assert_eq!(check(&r).lost, 1);
}

#[test]
fn an_id_its_instance_could_not_ship_before_it_was_killed_may_be_lost() {
    let mut r = clean();
    r.lines[0].count = 14;
    let answered = W0 + 503;
    // Redis frozen from 0.5 s after i1 answered its ids (before i1's next shipment) for 3 s,
    // and i1 SIGKILLed 1.5 s after Redis thawed: i1 never had a second with Redis to ship
    // them in, so they are not owed...
    redis_fault(&mut r, Fault::RedisPause, answered + 500, 3_000);
    event(&mut r, Fault::Kill, Some(0), answered + 3_500 + 800);
    let rep = check(&r);
    assert!(rep.passed(), "{:?}", rep.violations);
    assert_eq!((rep.unshippable, rep.lost), (10, 0));
    // ... but they are if it was killed more than a second after it could ship again,
    r.events[2].t_ms = answered + 3_500 + 1_000 + 1_001;
    assert_eq!(check(&r).lost, 1);
    // ... or if Redis froze only once it had had a whole second to ship them.
    r.events[0].t_ms = answered + 1_100;
    r.events[1].t_ms = answered + 4_100;
    r.events[2].t_ms = answered + 4_000;
    assert_eq!(check(&r).lost, 1);
    // Its own log saying Redis is unavailable to it (a link of its own cut) counts too,
    // until it says Redis is back.
    r.events.truncate(0);
    event(&mut r, Fault::Kill, Some(0), answered + 2_500);
    r.redis_link.push((0, answered + 200, false));
    let rep = check(&r);
    assert_eq!((rep.unshippable, rep.lost), (10, 0));
    r.redis_link.push((0, answered + 400, true));
    assert_eq!(check(&r).lost, 1);
}

#[test]
fn an_id_sent_before_a_boundary_and_answered_after_it_may_count_in_either_window() {
    for counted_in in [0, 1] {
        let mut r = clean();
        // Sent 1 ms before the boundary, answered 4 ms after it.
        r.sent.push(Sent {
            sent_ms: W0 + IV - 1,
            end_ms: W0 + IV + 4,
            outcome: Outcome::Ok,
            answered_by: Some(0),
            deliveries: 1,
        });
        r.lines[counted_in].count += 1;
        let rep = check(&r);
        assert!(
            rep.passed(),
            "counted in window {counted_in}: {:?}",
            rep.violations
        );
    }
    // In neither: lost. In both: one too many.
    let mut r = clean();
    r.sent.push(Sent {
        sent_ms: W0 + IV - 1,
        end_ms: W0 + IV + 4,
        outcome: Outcome::Ok,
        answered_by: Some(0),
        deliveries: 1,
    });
    assert_eq!(check(&r).lost, 1);
    r.lines[0].count += 1;
    r.lines[1].count += 1;
    let rep = check(&r);
    assert_eq!((rep.lost, rep.over), (0, 1), "{:?}", rep.violations);
}

#[test]
fn an_id_answered_well_inside_a_window_cannot_count_in_the_next() {
    let mut r = clean();
    r.lines[0].count -= 1;
    r.lines[1].count += 1;
    let rep = check(&r);
    assert_eq!((rep.lost, rep.over), (1, 1), "{:?}", rep.violations);
}

#[test]
fn ids_that_failed_or_got_no_answer_may_count_but_are_not_owed() {
    let mut r = clean();
    for outcome in [Outcome::Failed, Outcome::NoAnswer] {
        r.sent.push(Sent {
            sent_ms: W0 + 700,
            end_ms: W0 + 703,
            outcome,
            answered_by: None,
            deliveries: 1,
        });
    }
    let rep = check(&r);
    assert!(rep.passed(), "{:?}", rep.violations);
    // Read by an instance at any time up to the end of the run: also in the next window.
    r.lines[1].count += 2;
    let rep = check(&r);
    assert!(rep.passed(), "{:?}", rep.violations);
    r.lines[1].count += 1;
    assert_eq!(check(&r).over, 1);
}

#[test]
fn a_retried_request_may_count_in_a_later_window_too() {
    let mut r = clean();
    // Answered by i2 after nginx gave up on i1 (frozen): i1 reads it when thawed, later.
    r.sent.push(Sent {
        sent_ms: W0 + 600,
        end_ms: W0 + 1610,
        outcome: Outcome::Ok,
        answered_by: Some(1),
        deliveries: 2,
    });
    r.lines[0].count += 1;
    r.lines[1].count += 1;
    let rep = check(&r);
    assert!(rep.passed(), "{:?}", rep.violations);
    assert_eq!(rep.retried, 1);
}

#[test]
fn counting_more_than_was_sent_is_a_violation() {
    let mut r = clean();
    r.lines[1].count = 9;
    let rep = check(&r);
    assert_eq!(rep.over, 2);
    assert!(
        rep.violations[0].contains("counted 2 more ids than were sent"),
        "{:?}",
        rep.violations
    );
}

#[test]
fn a_second_line_with_the_same_count_and_no_leader_death_is_a_violation() {
    let mut r = clean();
    line(&mut r, 1, 0, 15, W0 + IV + 5200);
    let rep = check(&r);
    assert_eq!((rep.dup_unexplained, rep.dup_documented), (1, 0));
    assert!(!rep.passed());
    // A pause of the other instance explains nothing.
    event(&mut r, Fault::Pause, Some(1), W0 + IV + 250);
    assert_eq!(check(&r).dup_unexplained, 1);
}

#[test]
fn the_documented_duplicate_is_allowed_and_counted() {
    for fault in [Fault::Kill, Fault::Pause] {
        let mut r = clean();
        // i1 wrote the line at +200 ms and was killed (or frozen past its lease) 50 ms
        // later, before it recorded the window as reported; i2 reports it again.
        event(&mut r, fault, Some(0), W0 + IV + 250);
        line(&mut r, 1, 0, 15, W0 + IV + 5300);
        let rep = check(&r);
        assert!(rep.passed(), "{fault:?}: {:?}", rep.violations);
        assert_eq!((rep.dup_documented, rep.dup_unexplained), (1, 0));
        assert!(rep.summary(IV).contains("duplicate lines: 1 documented"));
    }
}

#[test]
fn a_second_line_with_another_count_is_a_violation() {
    let mut r = clean();
    event(&mut r, Fault::Kill, Some(0), W0 + IV + 250);
    line(&mut r, 1, 0, 12, W0 + IV + 5300);
    let rep = check(&r);
    assert_eq!(rep.dup_conflicting, 1);
    assert!(!rep.passed());
}

/// The warnings verve writes beside `scope=local` lines, one per instance.
fn warn_alone(r: &mut Run, window: u64) {
    for i in 0..r.instances.len() {
        let log = format!(
            "2026-11-21T23:52:01.000Z WARN verve::cluster::node window {}: fell off the \
             backlog; reporting this instance's 3 ids alone (scope=local)\n",
            check::rfc3339(W0 + window * IV)
        );
        check::read_log(r, i, &log);
    }
}

#[test]
fn a_window_reported_alone_is_a_warning_and_its_lines_add_up() {
    let mut r = clean();
    warn_alone(&mut r, 0);
    // Window 0 reported by each instance alone: 10 + 5.
    r.lines[0] = CountLine {
        count: 10,
        local: true,
        ..r.lines[0].clone()
    };
    r.lines.push(CountLine {
        instance: 1,
        count: 5,
        ..r.lines[0].clone()
    });
    let rep = check(&r);
    assert!(rep.passed(), "{:?}", rep.violations);
    assert_eq!((rep.local_only, rep.local_extra), (1, 0));
    assert!(
        rep.warnings[0].contains("reported alone (scope=local)"),
        "{:?}",
        rep.warnings
    );
    // One of them short: lost.
    r.lines[2].count = 4;
    assert_eq!(check(&r).lost, 1);
    // Without the warnings, a violation.
    r.lines[2].count = 5;
    r.warned.clear();
    let rep = check(&r);
    assert_eq!(rep.violations.len(), 2, "{:?}", rep.violations);
    assert!(
        rep.violations[0].contains("no warning"),
        "{:?}",
        rep.violations
    );
}

#[test]
fn late_ids_reported_alone_beside_the_cluster_line_count_toward_the_window() {
    let mut r = clean();
    warn_alone(&mut r, 0);
    // The cluster counted 12 of window 0; i2's 3 late ones came in a scope=local line.
    r.lines[0].count = 12;
    r.lines.push(CountLine {
        instance: 1,
        t_ms: W0 + IV + 4000,
        window_start_ms: W0,
        count: 3,
        local: true,
    });
    let rep = check(&r);
    assert!(rep.passed(), "{:?}", rep.violations);
    assert_eq!(rep.local_extra, 1);
}

#[test]
fn a_window_without_a_line_is_a_violation() {
    let mut r = clean();
    r.sent.truncate(15);
    r.lines.truncate(1);
    let rep = check(&r);
    assert_eq!(rep.missing, 1);
    assert!(
        rep.violations[0].contains("no count line"),
        "{:?}",
        rep.violations
    );
}

#[test]
fn a_window_in_which_no_instance_ran_needs_no_line() {
    let mut r = clean();
    r.instances.truncate(1);
    r.sent.truncate(10);
    r.lines.truncate(1);
    r.lines[0].count = 10;
    // Stopped (a deploy) from before window 1 until after it.
    r.events.push(Event {
        t_ms: W0 + IV - 300,
        fault: Fault::Deploy,
        phase: Phase::Begin,
        target: Some(0),
        detail: String::new(),
    });
    r.events.push(Event {
        t_ms: W0 + 2 * IV + 100,
        fault: Fault::Deploy,
        phase: Phase::End,
        target: Some(0),
        detail: String::new(),
    });
    let rep = check(&r);
    assert!(rep.passed(), "{:?}", rep.violations);
    assert_eq!(rep.missing, 0);
    assert!(
        rep.warnings[0].contains("no instance ran"),
        "{:?}",
        rep.warnings
    );
    // Back inside the window: its line is due.
    r.events[1].t_ms = W0 + 2 * IV - 100;
    assert_eq!(check(&r).missing, 1);
}

#[test]
fn count_lines_are_read_as_verve_writes_them() {
    let mut r = base();
    let log = "2026-11-21T23:52:00.212Z INFO count window_start=2026-11-21T23:50:00Z unique_count=1234\n\
               2026-11-21T23:52:01.000Z WARN verve::cluster::node window 2026-11-21T23:50:00Z: late; reporting alone (scope=local)\n\
               2026-11-21T23:52:01.004Z INFO count window_start=2026-11-21T23:50:00Z unique_count=7 scope=local\n\
               2026-11-21T23:52:02.004Z INFO count window_start=garbage unique_count=7\n";
    check::read_log(&mut r, 1, log);
    let at = |s: &str| {
        humantime::parse_rfc3339(s)
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    assert_eq!(
        r.lines,
        vec![
            CountLine {
                instance: 1,
                t_ms: at("2026-11-21T23:52:00.212Z"),
                window_start_ms: at("2026-11-21T23:50:00Z"),
                count: 1234,
                local: false,
            },
            CountLine {
                instance: 1,
                t_ms: at("2026-11-21T23:52:01.004Z"),
                window_start_ms: at("2026-11-21T23:50:00Z"),
                count: 7,
                local: true,
            },
        ]
    );
    assert_eq!(r.bad_lines.len(), 1);
    assert!(
        r.warned.contains(&(1, at("2026-11-21T23:50:00Z"))),
        "{:?}",
        r.warned
    );
    let rep = check(&r);
    assert!(rep
        .violations
        .iter()
        .any(|v| v.contains("not a count line")));
}

#[test]
fn earliest_deadline_first_finds_a_maximum_matching() {
    // Items (first, last) x n; capacity per window.
    let items: BTreeMap<(u64, u64), u64> = [((1, 2), 2), ((1, 1), 1), ((2, 3), 1)].into();
    // Window 1 takes the (1,1) item and one (1,2); window 2 the other (1,2); window 3 the
    // (2,3): everything fits although a greedy by start would strand one.
    let cap: BTreeMap<u64, u64> = [(1, 2), (2, 1), (3, 1)].into();
    let m = edf(&items, &cap);
    assert!(m.items_left.is_empty(), "{m:?}");
    assert!(m.capacity_left.is_empty(), "{m:?}");
    let cap: BTreeMap<u64, u64> = [(1, 1), (3, 3)].into();
    let m = edf(&items, &cap);
    // Window 1 takes (1,1); both (1,2) are stranded; window 3 takes (2,3) and has 2 left.
    assert_eq!(m.items_left, [(2, 2)].into());
    assert_eq!(m.capacity_left, [(3, 2)].into());
}

// --- short runs against the real binary ---------------------------------------------------

fn short_run(mode: run::Mode, seconds: u64) {
    let dir = std::env::temp_dir().join(format!(
        "verve-test-faults-{}-{}",
        mode.as_str(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let seed = load::now_ms() % 1_000_000;
    let s = run::Settings {
        verve: env!("CARGO_BIN_EXE_verve").into(),
        dir: dir.clone(),
        mode,
        instances: 3,
        interval: 2,
        grace: 3,
        duration: Duration::from_secs(seconds),
        warmup: Duration::from_secs(1),
        quiet: Duration::from_secs(3),
        load: load::Settings {
            addr: ([127, 0, 0, 1], 0).into(),
            rate: 800,
            connections: 4,
            depth: 16,
        },
        nemesis: nemesis::Settings {
            seed,
            // Kills far enough apart in single mode that the ids a kill may take (the
            // second before it) stay a minority: a loss can hide behind those.
            gap_ms: if mode == run::Mode::Single {
                (500, 1500)
            } else {
                (200, 800)
            },
            freeze_ms: (1000, 2500),
            kinds: run::kinds(mode),
        },
        protect_ms: 1000,
        slack_ms: 2,
        verve_args: Vec::new(),
    };
    let say = |m: &str| eprintln!("[{}] {m}", mode.as_str());
    let report = run::run(&s, &say).unwrap_or_else(|e| {
        panic!(
            "the {} run failed: {e} (seed {seed}; kept: {})",
            mode.as_str(),
            dir.display()
        )
    });
    let summary = report.summary(s.interval * 1000);
    eprintln!(
        "[{}] seed {seed}, run directory {}\n{summary}",
        mode.as_str(),
        dir.display()
    );
    // The run was carried out.
    assert!(report.windows_checked >= seconds / 2 - 1, "{summary}");
    assert!(
        report.ok * 2 > report.sent && report.sent > 1000,
        "{summary}"
    );
    for kind in run::kinds(mode) {
        assert!(
            report.faults.contains_key(&kind),
            "no {kind:?} injected: {summary}"
        );
    }
    assert!(
        report.passed(),
        "{summary}(run directory kept: {})",
        dir.display()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_short_fault_run_of_a_cluster() {
    short_run(run::Mode::Cluster, 30);
}

#[test]
fn a_short_fault_run_of_a_single_instance() {
    short_run(run::Mode::Single, 20);
}
