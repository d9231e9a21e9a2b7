//! The collector: a plain OS thread (it does blocking I/O through its reporters, so it is
//! never a coroutine) that merges what the shards buffered into the open window's set about
//! once a second ([`ABSORB_EVERY`]), seals each window shortly after it closes and hands the
//! result to the [`WindowSink`].
//!
//! Merging during the window keeps the seal short whatever the window holds: it merges at
//! most the last second's ids, so the count line is written on time even when the workers
//! saturate every core. It also keeps `verve_window_unique_ids` current without a scrape
//! touching the shards.
//!
//! It wakes [`SETTLE`] after each boundary rather than at it: a worker thread can be
//! descheduled between reading the clock and recording the id, and the delay lets such
//! records reach their window before it is sealed (see [`crate::shards`] for what happens to
//! one that is later still). Windows are sealed strictly in order, each exactly once, empty
//! ones included, so every window gets its count line even if the thread fell behind.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, RecvTimeoutError, Sender};

use crate::clock::{Clock, Windows};
use crate::health::Health;
use crate::ids::IdSet;
use crate::metrics::Metrics;
use crate::shards::Shards;
use crate::sink::{SealedWindow, WindowSink};
use crate::state::journal::Record;
use crate::state::writer::Journal;
use crate::status::Status;

/// How long after a boundary the window is sealed. Long enough to cover a worker thread
/// descheduled between its clock read and its insert (a few scheduler ticks under load),
/// short enough that the count line comes well within the 1 s it is due in.
pub const SETTLE: Duration = Duration::from_millis(200);

/// Longest sleep between clock reads: bounds how late the collector notices a clock that a
/// test moved by hand, and costs nothing measurable.
const POLL: Duration = Duration::from_millis(50);

/// How often the open window's buffered ids are merged: the README lets
/// `verve_window_unique_ids` be up to a second old, and a merge a second bounds what the
/// shards buffer (repeats included) to a second of requests.
pub const ABSORB_EVERY: Duration = Duration::from_secs(1);

/// How often, with `--state-file`, what the shards recorded is appended to the journal and
/// synced. An id answered `ok` is on disk within this plus one sync, so a crash loses at
/// most the last second's ids, as promised, with room for a slow sync.
pub const SAVE_EVERY: Duration = Duration::from_millis(500);

/// How long a seal waits for the window's last ids to be synced before its count line is
/// written. Synced first, a crash between the line and the record that it was written
/// repeats the line with the same count; past this wait (a stalled disk) the line goes out
/// anyway, on time.
pub const SEAL_SYNC_TIMEOUT: Duration = Duration::from_millis(500);

/// The journal is rewritten when it holds more than twice the bytes of the id sets held in
/// memory plus this: so it stays within a small multiple of the sets' size whatever the
/// interval, and small windows are not rewritten at every boundary.
pub const SNAPSHOT_SLACK_BYTES: u64 = 4 << 20;

/// How long the state file's last sync may take at shutdown once the reporters are done.
const JOURNAL_CLOSE: Duration = Duration::from_millis(300);

/// Everything the collector works on.
pub struct Collector {
    pub shards: Arc<Shards>,
    pub windows: Windows,
    pub clock: Arc<dyn Clock>,
    pub sink: Box<dyn WindowSink>,
    pub metrics: Arc<Metrics>,
    /// The status page, re-rendered after each merge with the open window's count.
    pub status: Arc<Status>,
    /// `--state-file`: the journal what the shards record is saved to, about twice a
    /// second; the open window is saved there at shutdown instead of being reported.
    pub journal: Option<Journal>,
    /// The last window whose refused ids were warned about (one warning per window).
    pub memory_warned: Option<u64>,
    /// Journal rewrites asked for: another is asked only once the writer is done with it.
    pub snapshots_asked: u64,
}

/// Asks the collector to close the open window and stop.
struct Stop {
    deadline: Instant,
}

/// The running collector thread.
pub struct CollectorHandle {
    stop: Sender<Stop>,
    thread: JoinHandle<()>,
}

impl CollectorHandle {
    /// Closes the shards, reports every window still open (the last one with the ids counted
    /// so far), lets the reporters finish until `deadline` and waits for the thread. False
    /// when the thread had died (panicked): then nothing was reported, and it says so.
    pub fn shutdown(self, deadline: Instant) -> bool {
        let _ = self.stop.send(Stop { deadline });
        let ended = self.thread.join().is_ok();
        if !ended {
            log::error!("the collector thread had died: the open window was not reported");
        }
        ended
    }
}

impl Collector {
    /// Starts the thread; the first window it reports is the one open now. The thread holds
    /// a guard of `health` (see [`crate::health`]).
    pub fn spawn(self, health: &Health) -> std::io::Result<CollectorHandle> {
        let (stop, stopped) = bounded::<Stop>(1);
        // Read on the caller's thread: the window open when `spawn` is called is reported
        // even if the thread starts late.
        let mut next = self.windows.index_of(self.clock.now_ms());
        let guard = health.guard("verve-collector");
        let thread = std::thread::Builder::new()
            .name("verve-collector".into())
            .spawn(move || {
                let _guard = guard;
                let mut this = self;
                let mut next_absorb = Instant::now() + ABSORB_EVERY;
                let mut next_save = Instant::now() + SAVE_EVERY;
                loop {
                    let due = this.windows.end_ms(next) + SETTLE.as_millis() as u64;
                    let now = this.clock.now_ms();
                    if now >= due {
                        this.seal_and_hand_on(next);
                        next += 1;
                        // The gauge moves on to the window open now without waiting a second.
                        next_absorb = Instant::now();
                        continue;
                    }
                    // The open window is the clock's, or `next` when the clock was stepped
                    // back behind it: that one keeps counting until the clock passes its
                    // end (see `crate::shards`).
                    let open = this.windows.index_of(now).max(next);
                    // Saved before each absorb too: with a state file the shards' ids reach
                    // the window's set only once saved, and the gauge stays within a second.
                    let saving_due = Instant::now() >= next_save || Instant::now() >= next_absorb;
                    if this.journal.is_some() && saving_due {
                        this.save(next, open);
                        next_save = Instant::now() + SAVE_EVERY;
                    }
                    if Instant::now() >= next_absorb {
                        this.absorb(open);
                        next_absorb = Instant::now() + ABSORB_EVERY;
                    }
                    let mut wait = Duration::from_millis(due - now)
                        .min(POLL)
                        .min(next_absorb.saturating_duration_since(Instant::now()));
                    if this.journal.is_some() {
                        wait = wait.min(next_save.saturating_duration_since(Instant::now()));
                    }
                    match stopped.recv_timeout(wait) {
                        Err(RecvTimeoutError::Timeout) => {}
                        Ok(Stop { deadline }) => return this.close(next, deadline),
                        Err(RecvTimeoutError::Disconnected) => {
                            return this.close(next, Instant::now() + Duration::from_secs(1))
                        }
                    }
                }
            })?;
        Ok(CollectorHandle { stop, thread })
    }

    /// Merges what the shards buffered for the open `window` and publishes its count, then
    /// re-renders the status page (see [`crate::status`]): about once a second, off the
    /// request path.
    fn absorb(&mut self, window: u64) {
        if let Some(absorbed) = self.shards.absorb(window) {
            self.metrics
                .window_unique_ids
                .store(absorbed.unique, Relaxed);
            self.refused(window, absorbed.refused);
        }
        self.status.refresh(self.windows.start_secs(window));
    }

    /// Warns, once per window, that ids were refused for want of memory.
    fn refused(&mut self, window: u64, ids: u64) {
        if ids > 0 && self.memory_warned != Some(window) {
            self.memory_warned = Some(window);
            log::warn!(
                "the id memory budget (--max-memory {} bytes) is spent: {ids} requests were \
                 answered 503 and not counted in window {}; it frees when the window is \
                 reported",
                self.shards.memory().limit(),
                crate::clock::rfc3339_secs(self.windows.start_secs(window)),
            );
        }
    }

    /// Seals `window` and hands it to the sink. With a state file, the window's last ids
    /// are synced first (see [`SEAL_SYNC_TIMEOUT`]).
    fn seal_and_hand_on(&mut self, window: u64) {
        let (sealed, unsaved) = self.seal(window);
        if let Some(journal) = &self.journal {
            let unsaved = known(unsaved);
            journal.append(records(sealed.window_start, unsaved, &sealed.endpoints));
            if !journal.sync(SEAL_SYNC_TIMEOUT) {
                log::warn!(
                    "--state-file: window {}'s last ids were not synced within {:?}: its \
                     count line goes out now; a crash before they are would report the \
                     window again, with those ids missing",
                    crate::clock::rfc3339_secs(sealed.window_start),
                    SEAL_SYNC_TIMEOUT
                );
            }
        }
        self.sink.accept(sealed);
        self.maybe_snapshot();
    }

    /// Appends what the shards recorded in windows `first..=last` since the last save to
    /// the journal (see [`SAVE_EVERY`]).
    fn save(&mut self, first: u64, last: u64) {
        let Some(journal) = &self.journal else { return };
        for window in first..=last {
            if let Some(unsaved) = self.shards.unsaved(window) {
                let start = self.windows.start_secs(window);
                journal.append(records(start, unsaved.ids, &unsaved.endpoints));
            }
        }
        self.maybe_snapshot();
    }

    /// Asks the writer to rewrite the journal when it holds more than twice what is live
    /// (see [`SNAPSHOT_SLACK_BYTES`]), or after a failed write, unless a rewrite is under way.
    fn maybe_snapshot(&mut self) {
        let Some(journal) = &self.journal else { return };
        let stats = journal.stats();
        if stats.snapshots.load(Relaxed) < self.snapshots_asked {
            return;
        }
        let file = stats.file_bytes.load(Relaxed);
        let live = self.shards.memory().used();
        if journal.wants_snapshot() || file > live.saturating_mul(2) + SNAPSHOT_SLACK_BYTES {
            let sets = self
                .shards
                .saved_sets()
                .into_iter()
                .map(|(w, sets)| (self.windows.start_secs(w), sets))
                .collect();
            self.snapshots_asked = stats.snapshots.load(Relaxed) + 1;
            journal.snapshot(sets);
        }
    }

    /// Seals `window`: the shards' last ids are merged into its set. Also returns those of
    /// them that were not saved yet, serialized (with a state file).
    fn seal(&mut self, window: u64) -> (SealedWindow, Vec<u8>) {
        let sealed = self.shards.seal(window);
        self.refused(window, sealed.refused);
        if sealed.late > 0 {
            self.metrics.late_ids.fetch_add(sealed.late, Relaxed);
            log::warn!(
                "{} requests read the clock inside a window already sealed (the clock was \
                 stepped back, or a worker was held up past the settling delay): counted in \
                 the oldest window still open instead",
                sealed.late
            );
        }
        let window = SealedWindow {
            window,
            window_start: self.windows.start_secs(window),
            ids: sealed.ids,
            unshipped: sealed.unshipped,
            endpoints: sealed.endpoints,
            charge: sealed.charge,
        };
        (window, sealed.unsaved)
    }

    /// Seals the open window at shutdown and saves it to the state file, synced by
    /// `deadline`; reports it as usual (a partial count) if it cannot be saved, so nothing is
    /// lost silently.
    fn save_open(&mut self, window: u64, deadline: Instant) {
        let (sealed, unsaved) = self.seal(window);
        let unsaved = known(unsaved);
        let Some(journal) = &self.journal else {
            return self.sink.accept(sealed);
        };
        journal.append(records(sealed.window_start, unsaved, &sealed.endpoints));
        if journal.sync(deadline.saturating_duration_since(Instant::now())) {
            log::info!(
                "saved the open window {} ({} ids, {} endpoints) to {}",
                crate::clock::rfc3339_secs(sealed.window_start),
                sealed.ids.len(),
                sealed.endpoints.len(),
                journal.path().display()
            );
        } else {
            log::error!(
                "cannot save the open window {} to {}, reporting it now instead",
                crate::clock::rfc3339_secs(sealed.window_start),
                journal.path().display()
            );
            self.sink.accept(sealed);
        }
    }

    /// Shutdown: refuse further records, then report every window from `next` to the one
    /// open now, except that with a state file the open one is saved instead, then any later
    /// window that holds ids, then let the reporters finish, then close the state file.
    fn close(mut self, next: u64, deadline: Instant) {
        self.shards.close();
        // The clock's window, or `next` if the clock was stepped back behind it.
        let open = self.windows.index_of(self.clock.now_ms()).max(next);
        for window in next..=open {
            if self.journal.is_some() && window == open {
                self.save_open(window, deadline);
            } else {
                self.seal_and_hand_on(window);
            }
        }
        // Only a restored window ahead of the clock can be later. It is reported, but not the
        // empty windows before it, which have not begun: a window far ahead costs one line,
        // not one per interval up to it.
        for window in self.shards.windows_with_ids_after(open) {
            self.seal_and_hand_on(window);
        }
        self.sink.finish(deadline);
        // Last: the reporters record the calls and Kafka records they finished.
        if let Some(journal) = self.journal.take() {
            let path = journal.path().to_owned();
            // Its own moment after the reporters' deadline: their last records are worth
            // one more sync, and the process still exits well within its 5 s.
            if !journal.close(deadline.max(Instant::now() + JOURNAL_CLOSE)) {
                log::error!(
                    "--state-file {}: the last records were not synced by the shutdown \
                     deadline: the next start makes again the calls and Kafka records they \
                     would have marked done",
                    path.display()
                );
            }
        }
    }
}

/// The journal records of `ids` (serialized, possibly empty) and `endpoints` of the window
/// starting at `window_start`.
/// A sealed window's unsaved ids, or an empty set when none are left: so the journal knows
/// every sealed window, an empty one included. Its count line can be written before its
/// `reported` record is synced; after a crash there the restart must find the window to
/// report it again (the same count, 0) and produce its Kafka record, as for any other.
fn known(unsaved: Vec<u8>) -> Vec<u8> {
    if !unsaved.is_empty() {
        return unsaved;
    }
    let mut empty = Vec::new();
    IdSet::new().serialize_into(&mut empty);
    empty
}

fn records(window_start: u64, ids: Vec<u8>, endpoints: &[String]) -> Vec<Record> {
    let mut records = Vec::with_capacity(1 + endpoints.len());
    if !ids.is_empty() {
        records.push(Record::Ids {
            window_start,
            set: ids,
        });
    }
    records.extend(endpoints.iter().map(|url| Record::Endpoint {
        window_start,
        url: url.clone(),
    }));
    records
}

#[cfg(test)]
mod tests;
