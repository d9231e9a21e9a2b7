//! The checker of the fault run: reads what the load recorded for every id, what the nemesis
//! did and when, and every instance's count log, and checks each window against verve's
//! promise: one count line per window (or lines with `scope=local`, a warning), no second
//! line but the one a leader dying mid-report may leave (same count), and
//! `lower <= count <= upper`.
//!
//! **Which window an id belongs to.** verve assigns a request to the window holding the
//! instant it read the request, by its own clock. The load runs on the same machine, so the
//! same clock: that instant lies between the client's send and the client's receipt of the
//! answer. An id sent and answered within one window belongs to it; one whose round trip
//! straddles a boundary (and one that reached an instance frozen with SIGSTOP and was read
//! after SIGCONT) may belong to any window of `[window(sent), window(answered)]`. Each id
//! therefore has an *interval* of candidate windows, widened by [`Run::slack_ms`] on both
//! sides for millisecond rounding. An id that was not answered `ok` may still have been read,
//! at any time until the end of the run, and by every instance nginx tried (a retry after an
//! upstream timeout reaches a second instance while the first still holds the request).
//!
//! **The bounds.** `lower`: every id answered `ok` by an instance that was not SIGKILLed
//! within [`Run::protect_ms`] after the answer must be counted in one window of its interval;
//! but for one answered within [`REDIS_LOSS_MS`] before a Redis SIGKILL by an instance that
//! was itself SIGKILLed after the answer and before it connected again and shipped what it
//! holds, before or after Redis's kill (Redis may have lost the id's shipment, and no
//! process is left that holds it).
//! `upper`: every unit of count must be an id sent (once per instance it reached) whose
//! interval holds that window. Both are matchings between ids and the windows' counts; with
//! intervals on a line, earliest-deadline-first ([`edf`]) finds a maximum one, so
//! `ids lost` (protected ids no count can hold) and `over-counted` (counts no sent id can
//! explain) are exact minima, not per-window guesses that the boundary slack would blur.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

/// The kinds of fault the nemesis injects, in the order the summary lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    /// SIGKILL an instance, start it again at once.
    Kill,
    /// SIGSTOP an instance for 1-6 s, then SIGCONT.
    Pause,
    /// SIGTERM an instance, wait for its exit, start it again (a deploy).
    Deploy,
    /// `DEBUG SLEEP n` on Redis (a stall of n seconds, connections held).
    RedisSleep,
    /// SIGSTOP redis-server for 1-6 s, then SIGCONT.
    RedisPause,
    /// SIGTERM redis-server (it writes its append-only file), start it again.
    RedisRestart,
    /// SIGKILL redis-server (up to a second of writes lost: `appendfsync everysec`), start it
    /// again.
    RedisKill,
}

impl Fault {
    pub const ALL: [Fault; 7] = [
        Fault::Kill,
        Fault::Pause,
        Fault::Deploy,
        Fault::RedisSleep,
        Fault::RedisPause,
        Fault::RedisRestart,
        Fault::RedisKill,
    ];

    /// The token in `events.tsv` and in the summary.
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::Pause => "pause",
            Fault::Deploy => "deploy",
            Fault::RedisSleep => "redis-sleep",
            Fault::RedisPause => "redis-pause",
            Fault::RedisRestart => "redis-restart",
            Fault::RedisKill => "redis-kill",
        }
    }

    pub fn parse(s: &str) -> Option<Fault> {
        Fault::ALL.into_iter().find(|f| f.as_str() == s)
    }

    /// Whether the fault targets an instance (else Redis).
    pub fn on_instance(self) -> bool {
        matches!(self, Fault::Kill | Fault::Pause | Fault::Deploy)
    }
}

/// How a request ended, as the load saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 200 with body `ok`.
    Ok,
    /// Any other answer (verve's `failed`, nginx's 502/504).
    Failed,
    /// No answer: the connection broke, or the run ended first.
    NoAnswer,
}

/// One id the load sent (ids are distinct by construction: each is sent once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    /// When the request was written, ms since the epoch.
    pub sent_ms: u64,
    /// When the answer was read (or the client gave up on it).
    pub end_ms: u64,
    pub outcome: Outcome,
    /// The instance that answered (the last upstream nginx tried), an index into
    /// [`Run::instances`].
    pub answered_by: Option<usize>,
    /// How many instances nginx sent the request to (`$upstream_addr` lists each).
    pub deliveries: u32,
}

/// Whether an event starts a fault or ends it (the instance is back, SIGCONT sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Begin,
    End,
}

/// One thing the nemesis did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub t_ms: u64,
    pub fault: Fault,
    pub phase: Phase,
    /// The instance (an index into [`Run::instances`]); `None` for Redis.
    pub target: Option<usize>,
    /// Free text: a duration, an exit status.
    pub detail: String,
}

/// One count line of an instance's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountLine {
    /// The instance whose log holds it.
    pub instance: usize,
    /// The log line's own timestamp, ms since the epoch.
    pub t_ms: u64,
    pub window_start_ms: u64,
    pub count: u64,
    /// A trailing `scope=local`: the instance reported its own ids of the window alone.
    pub local: bool,
}

/// Everything the checker looks at.
#[derive(Debug, Clone, Default)]
pub struct Run {
    /// `--interval`, ms.
    pub interval_ms: u64,
    /// An id answered `ok` is owed to the count unless its instance was SIGKILLed within
    /// this long after the answer (verve's promise: a hard crash loses at most the last
    /// second).
    pub protect_ms: u64,
    /// Widens each id's interval on both sides: the client's and verve's readings of the one
    /// clock are each rounded to the millisecond.
    pub slack_ms: u64,
    /// Instance names (`i1`, ...), in the order the indices above refer to.
    pub instances: Vec<String>,
    pub sent: Vec<Sent>,
    pub events: Vec<Event>,
    pub lines: Vec<CountLine>,
    /// Lines that hold `unique_count=` but could not be read, with their instance.
    pub bad_lines: Vec<(usize, String)>,
    /// (instance, window start ms) of every window a WARN line of that instance names: a
    /// `scope=local` line must come with a warning.
    pub warned: BTreeSet<(usize, u64)>,
    /// The first send and the last answer of the load: every window in between must have a
    /// count line.
    pub load_start_ms: u64,
    pub load_end_ms: u64,
    /// When the last instance had stopped: the latest an unanswered request can be read.
    pub run_end_ms: u64,
    /// (instance, time, up) of each line saying the instance lost Redis (`is unavailable`,
    /// up false) or has it back (`is back`, up true: it ships everything it holds again).
    pub redis_link: Vec<(usize, u64, bool)>,
}

/// How long before a Redis SIGKILL an id may have been answered and still be lost with
/// Redis's unsynced writes: `appendfsync everysec` loses up to 2 s of writes, and an id is
/// shipped within a second of its answer.
pub const REDIS_LOSS_MS: u64 = 3_000;
/// How long after its `Redis ... is back` line (or after a Redis fault ended) an instance
/// may still be shipping again what it holds.
pub const RESHIP_MS: u64 = 1_000;

/// One window's figures, for `windows.tsv`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowRow {
    pub window: u64,
    /// `cluster` lines' counts (first is the reference) and `scope=local` lines' counts.
    pub counts: Vec<u64>,
    pub local_counts: Vec<u64>,
    /// Protected ids whose interval is this window alone.
    pub lower_sure: u64,
    /// Protected ids whose interval holds this window (some may belong to a neighbour).
    pub lower_maybe: u64,
    /// Deliveries whose interval holds this window: no count may exceed it.
    pub upper: u64,
    /// Protected ids whose last candidate window this is and that no count holds.
    pub lost: u64,
    /// Count that no sent id explains.
    pub over: u64,
    pub verdict: &'static str,
}

/// The checker's result.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub windows: Vec<WindowRow>,
    /// Windows from the first send to the last answer (each must have a line).
    pub windows_checked: u64,
    /// Windows with a count line outside that range (checked for duplicates and upper).
    pub windows_outside: u64,
    pub faults: BTreeMap<Fault, u64>,
    pub sent: u64,
    pub ok: u64,
    pub failed: u64,
    pub no_answer: u64,
    /// Answered `ok` by an instance SIGKILLed within `protect_ms`: allowed to be lost.
    pub unprotected: u64,
    /// Answered `ok` by an instance SIGKILLed before it could ship the id: Redis was
    /// unavailable to it from less than `protect_ms` after the answer until the kill.
    /// Allowed to be lost.
    pub unshippable: u64,
    /// Answered `ok` within [`REDIS_LOSS_MS`] before a Redis SIGKILL by an instance that
    /// was SIGKILLed itself, after the answer and before it could ship again: Redis may have
    /// lost the id and no process holds it any more. Allowed to be lost.
    pub exposed_to_redis_loss: u64,
    /// Sent to more than one instance (nginx retried).
    pub retried: u64,
    pub lost: u64,
    pub over: u64,
    /// Second lines with the first one's count, written by a leader killed or stopped within
    /// a second after its line: the documented duplicate.
    pub dup_documented: u64,
    /// Second lines with the same count and no such fault.
    pub dup_unexplained: u64,
    /// Second lines with another count.
    pub dup_conflicting: u64,
    /// Windows reported with `scope=local` only, or with a cluster line and `scope=local`
    /// lines for late ids.
    pub local_only: u64,
    pub local_extra: u64,
    pub missing: u64,
    /// How long after its window's close each window of the load got its first line, ms.
    pub delays_ms: Vec<u64>,
    /// (allowance, ids lost) had ids answered that long before a SIGKILL been owed too:
    /// how far back a kill actually reaches (filled in by the caller, see `run::check_dir`).
    pub lost_with_allowance: Vec<(u64, u64)>,
    pub violations: Vec<String>,
    pub warnings: Vec<String>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// The summary: the figures, then warnings and violations (the first few of each).
    pub fn summary(&self, interval_ms: u64) -> String {
        const SHOWN: usize = 20;
        let mut s = String::new();
        let faults: Vec<String> = Fault::ALL
            .iter()
            .filter_map(|f| self.faults.get(f).map(|n| format!("{}={n}", f.as_str())))
            .collect();
        let total: u64 = self.faults.values().sum();
        let _ = writeln!(
            s,
            "windows checked: {} (of {} s; {} more with a count line outside the load)",
            self.windows_checked,
            interval_ms / 1000,
            self.windows_outside
        );
        let _ = writeln!(s, "faults injected: {total} ({})", faults.join(" "));
        let _ = writeln!(
            s,
            "ids sent: {} (ok {}, failed {}, not answered {}; ok from an instance SIGKILLed \
             before it could ship them: {} right after the answer, {} while Redis was \
             unavailable to it, {} in what a Redis SIGKILL lost; sent to two instances or \
             more: {})",
            self.sent,
            self.ok,
            self.failed,
            self.no_answer,
            self.unprotected,
            self.unshippable,
            self.exposed_to_redis_loss,
            self.retried
        );
        let _ = writeln!(s, "ids lost: {} (goal 0)", self.lost);
        if !self.lost_with_allowance.is_empty() {
            let list: Vec<String> = self
                .lost_with_allowance
                .iter()
                .map(|(ms, n)| format!("{ms} ms: {n}"))
                .collect();
            let _ = writeln!(
                s,
                "ids lost had a SIGKILL been allowed to cost only the ids answered within: {}",
                list.join(", ")
            );
        }
        let _ = writeln!(s, "counted beyond the ids sent: {} (goal 0)", self.over);
        let _ = writeln!(
            s,
            "duplicate lines: {} documented (leader killed or stopped right after its line), \
             {} unexplained, {} with another count (goal 0 and 0)",
            self.dup_documented, self.dup_unexplained, self.dup_conflicting
        );
        let _ = writeln!(
            s,
            "windows without a count line: {} (goal 0); reported alone (scope=local only): {}; \
             with scope=local lines beside the cluster's: {}",
            self.missing, self.local_only, self.local_extra
        );
        let mut d = self.delays_ms.clone();
        d.sort_unstable();
        if let Some(&max) = d.last() {
            let at = |q: f64| d[((d.len() - 1) as f64 * q).round() as usize];
            let _ = writeln!(
                s,
                "first count line after the window's close: median {} ms, p90 {} ms, max {} ms",
                at(0.5),
                at(0.9),
                max
            );
        }
        for (what, list) in [("warning", &self.warnings), ("VIOLATION", &self.violations)] {
            for v in list.iter().take(SHOWN) {
                let _ = writeln!(s, "{what}: {v}");
            }
            if list.len() > SHOWN {
                let _ = writeln!(s, "... {} more {what}s (windows.tsv)", list.len() - SHOWN);
            }
        }
        let _ = writeln!(
            s,
            "verdict: {}",
            if self.passed() {
                "PASS".to_string()
            } else {
                format!("FAIL ({} violations)", self.violations.len())
            }
        );
        s
    }

    /// `windows.tsv`: one row per window.
    pub fn windows_tsv(&self, interval_ms: u64) -> String {
        let mut s = String::from(
            "window_start\tcounts\tlocal_counts\tlower_sure\tlower_maybe\tupper\tlost\tover\tverdict\n",
        );
        let list = |v: &[u64]| {
            if v.is_empty() {
                "-".to_string()
            } else {
                v.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
            }
        };
        for r in &self.windows {
            let _ = writeln!(
                s,
                "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                rfc3339(r.window * interval_ms),
                list(&r.counts),
                list(&r.local_counts),
                r.lower_sure,
                r.lower_maybe,
                r.upper,
                r.lost,
                r.over,
                r.verdict
            );
        }
        s
    }
}

/// `2026-11-21T23:50:00Z` for ms since the epoch (whole seconds).
pub fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

/// The result of [`edf`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Matching {
    /// Items left unmatched, by the last window of their interval.
    pub items_left: BTreeMap<u64, u64>,
    /// Capacity left unused, by window.
    pub capacity_left: BTreeMap<u64, u64>,
}

/// A maximum matching of items to window capacity, each item to one window of its interval
/// `(first, last)` (with a multiplicity), each window taking at most its capacity:
/// earliest-deadline-first. Windows are visited in order; each takes, from the items whose
/// interval has begun and not ended, those whose interval ends first. That is optimal for
/// intervals on a line (an exchange argument: any maximum matching can be rearranged into
/// this one), so what it leaves unmatched on either side is the least any assignment leaves.
pub fn edf(items: &BTreeMap<(u64, u64), u64>, capacity: &BTreeMap<u64, u64>) -> Matching {
    let mut starts: BTreeMap<u64, Vec<(u64, u64)>> = BTreeMap::new();
    for (&(first, last), &n) in items {
        if n > 0 {
            starts.entry(first).or_default().push((last, n));
        }
    }
    let windows: BTreeSet<u64> = starts.keys().chain(capacity.keys()).copied().collect();
    // Items available now: by the last window of their interval.
    let mut open: BTreeMap<u64, u64> = BTreeMap::new();
    let mut out = Matching::default();
    for w in windows {
        for (last, n) in starts.remove(&w).unwrap_or_default() {
            *open.entry(last).or_default() += n;
        }
        // Items whose interval ended before `w` can no longer be matched.
        let still = open.split_off(&w);
        for (last, n) in std::mem::replace(&mut open, still) {
            *out.items_left.entry(last).or_default() += n;
        }
        let mut cap = capacity.get(&w).copied().unwrap_or(0);
        while cap > 0 {
            let Some(mut entry) = open.first_entry() else {
                break;
            };
            let take = cap.min(*entry.get());
            cap -= take;
            *entry.get_mut() -= take;
            if *entry.get() == 0 {
                entry.remove();
            }
        }
        if cap > 0 {
            out.capacity_left.insert(w, cap);
        }
    }
    for (last, n) in open {
        *out.items_left.entry(last).or_default() += n;
    }
    out
}

/// Why an id answered `ok` may be lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Excuse {
    /// Its instance was SIGKILLed within `protect_ms` after the answer.
    KilledRightAfter,
    /// Its instance was SIGKILLed before it could ship it: Redis was unavailable to it from
    /// less than `protect_ms` after the answer until the kill.
    KilledBeforeItCouldShip,
    /// It was answered within [`REDIS_LOSS_MS`] before a Redis SIGKILL, and its instance was
    /// SIGKILLed after the answer and before it could ship again after that crash.
    RedisLostIt,
}

/// When each instance could ship what it answered, as far as the run shows: never while
/// Redis was stalled, frozen or restarting, nor while the instance's own log says Redis is
/// unavailable to it, until a moment after it says Redis is back.
struct Shipping {
    kills: Vec<Vec<u64>>,
    /// Per instance, the intervals in which it could not ship, sorted by start.
    dark: Vec<Vec<(u64, u64)>>,
    redis_kills: Vec<u64>,
    /// Per instance, its `is back` lines.
    backs: Vec<Vec<u64>>,
}

impl Shipping {
    fn new(run: &Run, kills: &[Vec<u64>]) -> Shipping {
        let n = run.instances.len();
        let mut dark: Vec<Vec<(u64, u64)>> = vec![Vec::new(); n];
        let mut backs: Vec<Vec<u64>> = vec![Vec::new(); n];
        let mut redis_kills = Vec::new();
        for (k, e) in run.events.iter().enumerate() {
            let redis_fault = matches!(
                e.fault,
                Fault::RedisPause | Fault::RedisSleep | Fault::RedisKill | Fault::RedisRestart
            );
            if e.phase != Phase::Begin || !redis_fault {
                continue;
            }
            if e.fault == Fault::RedisKill {
                redis_kills.push(e.t_ms);
            }
            let end = run.events[k + 1..]
                .iter()
                .find(|x| x.phase == Phase::End && x.fault == e.fault && x.target.is_none())
                .map_or(u64::MAX, |x| x.t_ms);
            for d in &mut dark {
                d.push((e.t_ms, end.saturating_add(RESHIP_MS)));
            }
        }
        // An instance's own outage: from its `is unavailable` line to its `is back` line, or
        // to its next SIGKILL or stop, or the end of the one under way (its process ended;
        // the next one starts afresh).
        let mut link = run.redis_link.clone();
        link.sort_by_key(|&(i, t, _)| (i, t));
        let mut lost_at: Vec<Option<u64>> = vec![None; n];
        let ends = |i: usize, from: u64| {
            run.events
                .iter()
                .filter(|e| e.target == Some(i))
                .filter(|e| matches!(e.fault, Fault::Kill | Fault::Deploy) && e.t_ms >= from)
                .map(|e| e.t_ms)
                .min()
                .unwrap_or(u64::MAX)
        };
        for (i, t, up) in link.into_iter().filter(|&(i, _, _)| i < n) {
            if up {
                backs[i].push(t);
            }
            match (up, lost_at[i]) {
                (false, None) => lost_at[i] = Some(t),
                (true, Some(from)) if t <= ends(i, from) => {
                    dark[i].push((from, t + RESHIP_MS));
                    lost_at[i] = None;
                }
                (true, Some(from)) => {
                    dark[i].push((from, ends(i, from)));
                    lost_at[i] = None;
                }
                _ => {}
            }
        }
        for (i, from) in lost_at.iter().enumerate() {
            if let Some(from) = *from {
                dark[i].push((from, ends(i, from)));
            }
        }
        dark.iter_mut().for_each(|d| d.sort_unstable());
        Shipping {
            kills: kills.to_vec(),
            dark,
            redis_kills,
            backs,
        }
    }

    /// Why an id that instance `i` answered `ok` at `t` may be lost; `None`: it is owed.
    fn excuse(&self, run: &Run, i: usize, t: u64) -> Option<Excuse> {
        let kills = self.kills.get(i).map_or(&[][..], Vec::as_slice);
        let from = t.saturating_sub(run.slack_ms);
        let killed_by = |to: u64| kills.iter().any(|&k| k >= from && k <= to);
        if killed_by(t + run.protect_ms) {
            return Some(Excuse::KilledRightAfter);
        }
        // The id is shipped within `protect_ms` of the later of its answer and the end of
        // every stretch without Redis that began before that.
        let mut ready = t;
        let dark = self.dark.get(i).map_or(&[][..], Vec::as_slice);
        while let Some(&(_, end)) = dark
            .iter()
            .find(|&&(a, b)| a <= ready + run.protect_ms && b > ready)
        {
            ready = end;
        }
        if ready > t && killed_by(ready.saturating_add(run.protect_ms)) {
            return Some(Excuse::KilledBeforeItCouldShip);
        }
        let backs = self.backs.get(i).map_or(&[][..], Vec::as_slice);
        let lost_with_redis = self.redis_kills.iter().any(|&r| {
            // Shipped again once back after the crash; before that, a kill loses it.
            let back = backs
                .iter()
                .filter(|&&b| b >= r)
                .map(|&b| b + RESHIP_MS)
                .min()
                .unwrap_or(u64::MAX);
            t <= r + run.slack_ms && r <= t + REDIS_LOSS_MS && killed_by(back)
        });
        lost_with_redis.then_some(Excuse::RedisLostIt)
    }
}

/// Checks a run. Pure: everything it needs is in `run`.
pub fn check(run: &Run) -> Report {
    let iv = run.interval_ms.max(1);
    let win = |ms: u64| ms / iv;
    let mut rep = Report::default();

    // The faults, and each instance's SIGKILLs and SIGSTOPs.
    let mut kills: Vec<Vec<u64>> = vec![Vec::new(); run.instances.len()];
    let mut kills_and_stops: Vec<Vec<u64>> = vec![Vec::new(); run.instances.len()];
    for e in run.events.iter().filter(|e| e.phase == Phase::Begin) {
        *rep.faults.entry(e.fault).or_default() += 1;
        if let Some(i) = e.target.filter(|&i| i < run.instances.len()) {
            if e.fault == Fault::Kill {
                kills[i].push(e.t_ms);
            }
            if matches!(e.fault, Fault::Kill | Fault::Pause) {
                kills_and_stops[i].push(e.t_ms);
            }
        }
    }
    let any_in = |list: &[u64], from: u64, to: u64| list.iter().any(|&t| t >= from && t <= to);
    let shipping = Shipping::new(run, &kills);
    // When each instance was not running: from a SIGKILL or SIGTERM to serving again.
    let mut down: Vec<Vec<(u64, u64)>> = vec![Vec::new(); run.instances.len()];
    for (k, e) in run.events.iter().enumerate() {
        let Some(i) = e.target.filter(|&i| i < run.instances.len()) else {
            continue;
        };
        if e.phase == Phase::Begin && matches!(e.fault, Fault::Kill | Fault::Deploy) {
            let back = run.events[k + 1..]
                .iter()
                .find(|x| x.phase == Phase::End && x.fault == e.fault && x.target == e.target)
                .map_or(u64::MAX, |x| x.t_ms);
            down[i].push((e.t_ms, back));
        }
    }
    // Whether no instance ran at any instant of `[from, to)`: no count line is due then.
    let none_ran = |from: u64, to: u64| {
        down.iter()
            .all(|d| d.iter().any(|&(a, b)| a <= from && b >= to))
    };

    // Each id's interval; what the lower bound owes, what the upper bound allows.
    let mut owed: BTreeMap<(u64, u64), u64> = BTreeMap::new();
    let mut allowed: BTreeMap<(u64, u64), u64> = BTreeMap::new();
    let last_possible = win(run.run_end_ms.max(run.load_end_ms) + run.slack_ms);
    for s in &run.sent {
        rep.sent += 1;
        let first = win(s.sent_ms.saturating_sub(run.slack_ms));
        let answered = (first, win(s.end_ms + run.slack_ms).max(first));
        let later = (first, last_possible.max(first));
        if s.deliveries > 1 {
            rep.retried += 1;
        }
        match s.outcome {
            Outcome::Ok => {
                rep.ok += 1;
                *allowed.entry(answered).or_default() += 1;
                if s.deliveries > 1 {
                    *allowed.entry(later).or_default() += u64::from(s.deliveries - 1);
                }
                match s
                    .answered_by
                    .and_then(|i| shipping.excuse(run, i, s.end_ms))
                {
                    Some(Excuse::KilledRightAfter) => rep.unprotected += 1,
                    Some(Excuse::KilledBeforeItCouldShip) => rep.unshippable += 1,
                    Some(Excuse::RedisLostIt) => rep.exposed_to_redis_loss += 1,
                    None => *owed.entry(answered).or_default() += 1,
                }
            }
            Outcome::Failed | Outcome::NoAnswer => {
                if s.outcome == Outcome::Failed {
                    rep.failed += 1;
                } else {
                    rep.no_answer += 1;
                }
                *allowed.entry(later).or_default() += u64::from(s.deliveries.max(1));
            }
        }
    }

    // The count lines of each window.
    for (i, line) in &run.bad_lines {
        let name = run.instances.get(*i).map_or("?", String::as_str);
        rep.violations.push(format!(
            "{name}: a line with unique_count= that is not a count line: {line}"
        ));
    }
    let mut by_window: BTreeMap<u64, Vec<&CountLine>> = BTreeMap::new();
    for l in &run.lines {
        by_window.entry(win(l.window_start_ms)).or_default().push(l);
    }
    let first_w = win(run.load_start_ms);
    let last_w = win(run.load_end_ms);
    let name = |i: usize| run.instances.get(i).map_or("?", String::as_str);
    let mut low_cap: BTreeMap<u64, u64> = BTreeMap::new();
    let mut up_cap: BTreeMap<u64, u64> = BTreeMap::new();
    let mut rows: BTreeMap<u64, WindowRow> = BTreeMap::new();
    let windows: BTreeSet<u64> = (first_w..=last_w)
        .chain(by_window.keys().copied())
        .collect();
    for &w in &windows {
        let when = rfc3339(w * iv);
        let mut lines = by_window.remove(&w).unwrap_or_default();
        lines.sort_by_key(|l| (l.t_ms, l.instance));
        let (local, cluster): (Vec<&CountLine>, Vec<&CountLine>) =
            lines.iter().partition(|l| l.local);
        let mut verdict = "ok";
        if (first_w..=last_w).contains(&w) {
            rep.windows_checked += 1;
            if let Some(l) = lines.first() {
                rep.delays_ms.push(l.t_ms.saturating_sub((w + 1) * iv));
            }
        } else {
            rep.windows_outside += 1;
        }
        if lines.is_empty() && none_ran(w * iv, (w + 1) * iv) {
            verdict = "not running";
            rep.warnings.push(format!(
                "window {when}: no count line, and no instance ran during it"
            ));
        } else if lines.is_empty() {
            rep.missing += 1;
            verdict = "missing";
            rep.violations.push(format!(
                "window {when}: no count line in any instance's log"
            ));
        }
        if let Some(first) = cluster.first() {
            for again in &cluster[1..] {
                if again.count != first.count {
                    rep.dup_conflicting += 1;
                    verdict = "conflict";
                    rep.violations.push(format!(
                        "window {when}: two count lines with different counts: {} ({}) and {} ({})",
                        first.count,
                        name(first.instance),
                        again.count,
                        name(again.instance)
                    ));
                } else if any_in(
                    kills_and_stops
                        .get(first.instance)
                        .map_or(&[][..], Vec::as_slice),
                    first.t_ms.saturating_sub(100),
                    first.t_ms + 1000,
                ) {
                    rep.dup_documented += 1;
                    rep.warnings.push(format!(
                        "window {when}: a second count line ({}, by {}): its first writer {} was \
                         killed or stopped right after writing it (the documented duplicate)",
                        again.count,
                        name(again.instance),
                        name(first.instance)
                    ));
                } else {
                    rep.dup_unexplained += 1;
                    verdict = "duplicate";
                    rep.violations.push(format!(
                        "window {when}: a second count line with the same count {} (by {}, the \
                         first by {}), and its first writer was neither killed nor stopped",
                        again.count,
                        name(again.instance),
                        name(first.instance)
                    ));
                }
            }
        }
        for l in local
            .iter()
            .filter(|l| !run.warned.contains(&(l.instance, l.window_start_ms)))
        {
            rep.violations.push(format!(
                "window {when}: a scope=local line by {} and no warning of it naming the window",
                name(l.instance)
            ));
        }
        if !local.is_empty() {
            let who: Vec<String> = local
                .iter()
                .map(|l| format!("{} ({})", name(l.instance), l.count))
                .collect();
            if cluster.is_empty() {
                rep.local_only += 1;
                rep.warnings.push(format!(
                    "window {when}: reported alone (scope=local) by {}",
                    who.join(", ")
                ));
            } else {
                rep.local_extra += 1;
                rep.warnings.push(format!(
                    "window {when}: scope=local lines beside the cluster's line: {}",
                    who.join(", ")
                ));
            }
        }
        let cluster_count = cluster.first().map(|l| l.count);
        let local_sum: u64 = local.iter().map(|l| l.count).sum();
        // Lower: what any line of the window holds. Upper: the cluster's count, or the local
        // lines' sum when there is none (a local line beside the cluster's may repeat ids
        // the cluster counted, so it is checked alone, below).
        low_cap.insert(w, cluster_count.unwrap_or(0) + local_sum);
        up_cap.insert(w, cluster_count.unwrap_or(local_sum));
        rows.insert(
            w,
            WindowRow {
                window: w,
                counts: cluster.iter().map(|l| l.count).collect(),
                local_counts: local.iter().map(|l| l.count).collect(),
                lower_sure: 0,
                lower_maybe: 0,
                upper: 0,
                lost: 0,
                over: 0,
                verdict,
            },
        );
    }

    // Per-window figures for the table.
    for (&(a, b), &n) in &owed {
        for w in a..=b {
            if let Some(r) = rows.get_mut(&w) {
                r.lower_maybe += n;
                if a == b {
                    r.lower_sure += n;
                }
            }
        }
    }
    for (&(a, b), &n) in &allowed {
        for w in a..=b {
            if let Some(r) = rows.get_mut(&w) {
                r.upper += n;
            }
        }
    }

    let lower = edf(&owed, &low_cap);
    for (&w, &n) in &lower.items_left {
        rep.lost += n;
        let row = rows.get_mut(&w);
        let count = row
            .as_ref()
            .map_or(0, |r| low_cap.get(&r.window).copied().unwrap_or(0));
        rep.violations.push(format!(
            "window {}: {n} ids answered ok are in no count (count {count}; ids owed to it \
             alone {}, to it or a neighbour {}){}",
            rfc3339(w * iv),
            row.as_ref().map_or(0, |r| r.lower_sure),
            row.as_ref().map_or(0, |r| r.lower_maybe),
            faults_near(run, w, iv)
        ));
        if let Some(r) = row {
            r.lost = n;
            r.verdict = "lost";
        }
    }
    let upper = edf(&allowed, &up_cap);
    for (&w, &n) in &upper.capacity_left {
        rep.over += n;
        let row = rows.get_mut(&w);
        rep.violations.push(format!(
            "window {}: counted {n} more ids than were sent to it (count {}, ids that can \
             belong to it {})",
            rfc3339(w * iv),
            up_cap.get(&w).copied().unwrap_or(0),
            row.as_ref().map_or(0, |r| r.upper)
        ));
        if let Some(r) = row {
            r.over = n;
            r.verdict = "over";
        }
    }
    for r in rows.values_mut() {
        for &c in &r.local_counts {
            if c > r.upper && r.over == 0 {
                r.over = c - r.upper;
                r.verdict = "over";
                rep.over += c - r.upper;
                rep.violations.push(format!(
                    "window {}: a scope=local line counts {c}, more than the {} ids that can \
                     belong to the window",
                    rfc3339(r.window * iv),
                    r.upper
                ));
            }
        }
    }
    rep.windows = rows.into_values().collect();
    rep
}

/// The faults from three windows before `w` to one after it, for a violation's message: a
/// loss shows in the last window its ids could have been counted in, or later, where the
/// counts' slack runs out (ids straddling boundaries carry the shortfall along).
fn faults_near(run: &Run, w: u64, iv: u64) -> String {
    let from = (w * iv).saturating_sub(3 * iv);
    let to = (w + 2) * iv;
    let list: Vec<String> = run
        .events
        .iter()
        .filter(|e| e.phase == Phase::Begin && e.t_ms >= from && e.t_ms < to)
        .map(|e| {
            let target = e
                .target
                .and_then(|i| run.instances.get(i))
                .map_or("redis", String::as_str);
            let offset = e.t_ms as i64 - (w * iv) as i64;
            format!(
                "{} {target} at {:+.1} s",
                e.fault.as_str(),
                offset as f64 / 1000.0
            )
        })
        .collect();
    if list.is_empty() {
        "; no fault near it".to_string()
    } else {
        format!(
            "; faults near it (from the window's start): {}",
            list.join(", ")
        )
    }
}

// --- reading a run directory ----------------------------------------------------------------

/// Parses one log line with `unique_count=`: `<RFC 3339 time> INFO ... window_start=<RFC
/// 3339> unique_count=<N>[ scope=local]`. `None` when it holds the token but is not such a
/// line.
pub fn parse_count_line(instance: usize, line: &str) -> Option<CountLine> {
    let mut tokens = line.split_whitespace();
    let t_ms = parse_ms(tokens.next()?)?;
    let mut window_start_ms = None;
    let mut count = None;
    let mut local = false;
    for t in tokens {
        if let Some(v) = t.strip_prefix("window_start=") {
            window_start_ms = Some(parse_ms(v)?);
        } else if let Some(v) = t.strip_prefix("unique_count=") {
            count = Some(v.parse().ok()?);
        } else if t == "scope=local" {
            local = true;
        }
    }
    Some(CountLine {
        instance,
        t_ms,
        window_start_ms: window_start_ms?,
        count: count?,
        local,
    })
}

fn parse_ms(s: &str) -> Option<u64> {
    let t = humantime::parse_rfc3339(s).ok()?;
    Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as u64)
}

/// Reads one instance's count log into `run.lines` / `run.bad_lines`, and the windows its
/// warnings name into `run.warned`.
pub fn read_log(run: &mut Run, instance: usize, text: &str) {
    for line in text.lines() {
        if line.contains("unique_count=") {
            match parse_count_line(instance, line) {
                Some(c) => run.lines.push(c),
                None => run.bad_lines.push((instance, line.to_string())),
            }
        } else if line.contains(" Redis ") && line.contains(" is back after ") {
            if let Some(t) = line.split_whitespace().next().and_then(parse_ms) {
                run.redis_link.push((instance, t, true));
            }
        } else if line.contains(" WARN ") {
            if line.contains(" Redis ") && line.contains(" is unavailable ") {
                if let Some(t) = line.split_whitespace().next().and_then(parse_ms) {
                    run.redis_link.push((instance, t, false));
                }
            }
            // Past the line's own timestamp: `window 2026-11-21T23:50:00Z: ...`.
            for t in line.split_whitespace().skip(1) {
                let t = t.trim_matches(|c: char| !c.is_ascii_alphanumeric());
                if t.len() == 20 && t.ends_with('Z') {
                    if let Some(ms) = parse_ms(t) {
                        run.warned.insert((instance, ms));
                    }
                }
            }
        }
    }
}

/// Reads a run directory as `run.rs` writes it: `run.txt` (settings and instances),
/// `ids-*.tsv` (the load's records), `events.tsv` (the nemesis) and each instance's log.
pub fn read_dir(dir: &Path) -> Result<Run, String> {
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .map_err(|e| format!("{}: {e}", dir.join(name).display()))
    };
    let mut run = Run::default();
    let mut addrs: Vec<String> = Vec::new();
    let mut logs: Vec<String> = Vec::new();
    for line in read("run.txt")?.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let num = || {
            value
                .parse::<u64>()
                .map_err(|_| format!("run.txt: bad {key}={value}"))
        };
        match key {
            "interval_ms" => run.interval_ms = num()?,
            "protect_ms" => run.protect_ms = num()?,
            "slack_ms" => run.slack_ms = num()?,
            "load_start_ms" => run.load_start_ms = num()?,
            "load_end_ms" => run.load_end_ms = num()?,
            "run_end_ms" => run.run_end_ms = num()?,
            "instance" => {
                let f: Vec<&str> = value.split(' ').collect();
                let [name, addr, log] = f[..] else {
                    return Err(format!("run.txt: bad instance={value}"));
                };
                run.instances.push(name.to_string());
                addrs.push(addr.to_string());
                logs.push(log.to_string());
            }
            _ => {}
        }
    }
    if run.interval_ms == 0 || run.instances.is_empty() {
        return Err("run.txt: no interval_ms or no instance".into());
    }
    let by_addr = |a: &str| addrs.iter().position(|x| x == a);
    let by_name = |n: &str| run.instances.iter().position(|x| x == n);
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("ids-") && n.ends_with(".tsv"))
        .collect();
    files.sort();
    for f in &files {
        for (n, line) in read(f)?.lines().enumerate() {
            let bad = || format!("{f}:{}: bad record {line:?}", n + 1);
            let v: Vec<&str> = line.split('\t').collect();
            let [_id, sent, end, outcome, upstream] = v[..] else {
                return Err(bad());
            };
            let ups: Vec<&str> = if upstream == "-" {
                Vec::new()
            } else {
                upstream.split('|').collect()
            };
            run.sent.push(Sent {
                sent_ms: sent.parse().map_err(|_| bad())?,
                end_ms: end.parse().map_err(|_| bad())?,
                outcome: match outcome {
                    "ok" => Outcome::Ok,
                    "none" => Outcome::NoAnswer,
                    _ => Outcome::Failed,
                },
                answered_by: ups.last().and_then(|a| by_addr(a)),
                deliveries: ups.len() as u32,
            });
        }
    }
    for (n, line) in read("events.tsv")?.lines().enumerate() {
        let bad = || format!("events.tsv:{}: bad event {line:?}", n + 1);
        let v: Vec<&str> = line.splitn(5, '\t').collect();
        let [t, fault, phase, target, detail] = v[..] else {
            return Err(bad());
        };
        run.events.push(Event {
            t_ms: t.parse().map_err(|_| bad())?,
            fault: Fault::parse(fault).ok_or_else(bad)?,
            phase: match phase {
                "begin" => Phase::Begin,
                "end" => Phase::End,
                _ => return Err(bad()),
            },
            target: by_name(target),
            detail: detail.to_string(),
        });
    }
    for (i, log) in logs.iter().enumerate() {
        let text = read(log)?;
        read_log(&mut run, i, &text);
    }
    Ok(run)
}
