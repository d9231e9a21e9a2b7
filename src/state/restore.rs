//! Start-up with `--state-file`: what the previous run left is read, checked and written
//! into a fresh journal before a request is served, then put back to work. A window still
//! open resumes (or one not open yet: the clock went back), a window that closed while verve
//! was down is reported at once, late, and the calls and Kafka records that were due are
//! made, in window order.
//!
//! The file is untrusted (see [`crate::state`]): a file the limits refuse is set aside and
//! logged, and every endpoint in it is checked against the policy as if a client had just
//! sent it.

use std::path::Path;

use anyhow::Context;

use super::journal::{Book, Record, Undelivered};
use super::writer::{Journal, JournalSender};
use super::{load, Limits, Loaded, Restored};
use crate::clock::rfc3339_secs;
use crate::endpoints::{canonicalize, EndpointLine, EndpointPolicy, NotMade};
use crate::health::Health;
use crate::ids::IdSet;
use crate::logging::sanitize;
use crate::metrics::Metrics;
use crate::report::Resumed;
use crate::shards::Shards;
use crate::sink::{SealedWindow, WindowSink};
use crate::status::{Reported, Status};

/// A window the previous run did not report.
#[derive(Debug)]
struct Held {
    window_start: u64,
    /// Its index under the current `--interval`.
    window: u64,
    ids: IdSet,
    endpoints: Vec<String>,
}

/// What the previous run left, checked, ready to be put back once the reporters run.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Windows still open (or ahead of the clock): they resume.
    resume: Vec<Held>,
    /// Windows that closed while verve was down: reported at once, oldest first.
    closed: Vec<Held>,
    /// Reported windows whose calls or Kafka record were not done, oldest first.
    undelivered: Vec<(u64, Undelivered)>,
    /// Reported windows, newest first (only when counted with the same `--interval`).
    history: Vec<Reported>,
}

/// Reads the state file at `path` and writes a fresh journal there holding what is still
/// live, then starts its writer. Only what stops the start-up is an error (the file cannot
/// be opened, moved aside or written); a damaged file is set aside and logged.
pub fn open(
    path: &Path,
    limits: &Limits,
    policy: &EndpointPolicy,
    metrics: &Metrics,
    health: &Health,
) -> anyhow::Result<(Journal, Recovery)> {
    let restored = match load(path, limits).context("--state-file")? {
        Loaded::Nothing => Restored::default(),
        Loaded::Found(restored) => restored,
        Loaded::Unreadable { error, moved_to } => {
            log::error!(
                "--state-file {} is unreadable ({}); moved to {}, its ids are not counted",
                path.display(),
                sanitize(&format!("{error:#}")),
                moved_to.display()
            );
            Restored::default()
        }
        Loaded::Refused { error, moved_to } => {
            log::error!(
                "--state-file {} is refused: {}; moved to {}, its ids are not counted",
                path.display(),
                sanitize(&format!("{error:#}")),
                moved_to.display()
            );
            Restored::default()
        }
    };
    if let Some((why, bytes)) = &restored.torn {
        // A crash mid-append leaves at most the last round's records half written: those
        // ids were answered within the last second before the crash.
        log::warn!(
            "--state-file {}: the last {bytes} bytes are not whole records ({}), as a crash \
             while writing leaves them: read up to there",
            path.display(),
            sanitize(why)
        );
    }
    let interval = limits.windows.length().as_secs();
    let same_interval = restored.interval_secs == interval || restored.interval_secs == 0;
    let (windows, book, saved_interval) = restored.into_windows();
    let open_window = limits.windows.index_of(limits.now_ms);
    let mut recovery = Recovery::default();
    for (window_start, ids, endpoints) in windows {
        let start = rfc3339_secs(window_start);
        let endpoints = endpoints
            .iter()
            .filter_map(|e| allowed(&start, e, policy))
            .collect();
        let window = window_start / interval.max(1);
        let held = Held {
            window_start,
            window,
            ids,
            endpoints,
        };
        if same_interval && window >= open_window {
            recovery.resume.push(held);
        } else {
            if !same_interval {
                log::warn!(
                    "window {start} from {} was counted with --interval {saved_interval}: \
                     reporting it now, late",
                    path.display()
                );
            }
            recovery.closed.push(held);
        }
    }
    for (window_start, mut undelivered) in book.undelivered.clone() {
        let start = rfc3339_secs(window_start);
        undelivered.calls = undelivered
            .calls
            .iter()
            .filter_map(|e| allowed(&start, e, policy))
            .collect();
        recovery.undelivered.push((window_start, undelivered));
    }
    if same_interval {
        recovery.history = book.history_newest_first();
    } else if !book.history.is_empty() {
        log::info!(
            "the {} reported windows in {} were counted with --interval {saved_interval}: not \
             listed by /api/verve/windows",
            book.history.len(),
            path.display(),
        );
    }
    let journal = Journal::create(
        path,
        interval,
        recovery.book(same_interval),
        recovery.ids(same_interval),
        metrics.state_file.clone(),
        health,
    )?;
    Ok((journal, recovery))
}

/// The endpoint `url` of window `start` from the file, canonical, if it may still be
/// called; logged when not. The allow-list may have changed since, and the file may not be
/// the one this service wrote.
fn allowed(start: &str, url: &str, policy: &EndpointPolicy) -> Option<String> {
    match canonicalize(url, policy) {
        Ok(u) => Some(u.as_str().to_owned()),
        Err(_) => {
            refused_endpoint(start, url);
            None
        }
    }
}

/// The endpoint line (README, *The count log*) for an endpoint of a saved window that is
/// not called. The text is from the file: shown as the callback reporter shows outside
/// text, one token.
fn refused_endpoint(window_start: &str, endpoint: &str) {
    EndpointLine::not_made(window_start, endpoint, NotMade::NotAllowedAfterRestart).log();
}

impl Recovery {
    /// What the new journal says besides the ids. Windows of another `--interval` do not
    /// line up with this instance's, so they are not carried over: they are reported from
    /// memory as the service starts, and a crash in the moment before that loses them (the
    /// docs/operating.md, *State file*, says so).
    fn book(&self, same_interval: bool) -> Book {
        let mut book = Book::default();
        if !same_interval {
            return book;
        }
        for held in self.resume.iter().chain(&self.closed) {
            for url in &held.endpoints {
                book.apply(&Record::Endpoint {
                    window_start: held.window_start,
                    url: url.clone(),
                });
            }
            book.open.entry(held.window_start).or_default();
        }
        for r in self.history.iter().rev() {
            book.history.insert(r.window_start, r.unique_count);
        }
        for (window_start, undelivered) in &self.undelivered {
            book.history.insert(*window_start, undelivered.count);
            if !undelivered.calls.is_empty() || undelivered.kafka {
                book.undelivered.insert(*window_start, undelivered.clone());
            }
        }
        book
    }

    /// The ids of the windows not reported, serialized for the new journal.
    fn ids(&self, same_interval: bool) -> Vec<(u64, Vec<Vec<u8>>)> {
        if !same_interval {
            return Vec::new();
        }
        self.resume
            .iter()
            .chain(&self.closed)
            .filter(|h| !h.ids.is_empty())
            .map(|h| {
                let mut set = Vec::new();
                h.ids.serialize_into(&mut set);
                (h.window_start, vec![set])
            })
            .collect()
    }

    /// Puts it all back to work, before the collector starts: the history, the deliveries
    /// due (oldest first, before any window reported from now on), the windows that resume,
    /// and a late report of each window that closed meanwhile.
    pub fn apply(
        self,
        shards: &Shards,
        status: &Status,
        sink: &mut dyn WindowSink,
        journal: &JournalSender,
        kafka: bool,
    ) {
        status.restore(&self.history);
        for (window_start, undelivered) in self.undelivered {
            let start = rfc3339_secs(window_start);
            if undelivered.kafka && !kafka {
                log::warn!(
                    target: crate::report::kafka::TARGET,
                    "window_start={start} lost=kafka-not-configured"
                );
                journal.record(Record::Produced { window_start });
            }
            log::info!(
                "window {start}: {} endpoint calls{} still due from before the restart",
                undelivered.calls.len(),
                if undelivered.kafka && kafka {
                    " and its Kafka record"
                } else {
                    ""
                }
            );
            sink.resume(Resumed {
                window_start,
                unique_count: undelivered.count,
                endpoints: undelivered.calls.into_iter().collect(),
                kafka: undelivered.kafka && kafka,
            });
        }
        for held in self.resume {
            let start = rfc3339_secs(held.window_start);
            let (ids, count) = (held.ids.len(), held.endpoints.len());
            // The endpoint table may be fuller than the saving instance's (`--max-endpoints`).
            for endpoint in shards.restore(held.window, held.ids, &held.endpoints) {
                refused_endpoint(&start, &endpoint);
            }
            log::info!("resumed window {start} from the state file ({ids} ids, {count} endpoints)");
        }
        for held in self.closed {
            log::warn!(
                "window {} from the state file has closed: reporting it now, late",
                rfc3339_secs(held.window_start)
            );
            sink.accept(SealedWindow {
                window: held.window,
                window_start: held.window_start,
                ids: held.ids,
                unshipped: None,
                endpoints: held.endpoints,
                charge: Default::default(),
            });
        }
    }
}
