//! The state file's writer: a plain thread of its own (never a may worker, never the
//! collector) that appends the journal's records, syncs them, and rewrites the file as a
//! snapshot when the collector asks. Group commit: it takes every record waiting, writes
//! them in one go and syncs once, so a burst of records from the collector, the callbacks
//! and Kafka costs one `fdatasync`.
//!
//! A failed write or sync (disk full, I/O error) is logged, counted in
//! `verve_state_file_errors_total` and leaves the file possibly torn; the next snapshot
//! (asked for at once, see [`Journal::wants_snapshot`]) writes it whole again.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use crossbeam_channel::{bounded, unbounded, Receiver, RecvTimeoutError, Sender};

use super::journal::{header, Book, Record};
use crate::health::Health;
use crate::logging::sanitize;
pub use crate::metrics::StateFileStats as Stats;

/// What the writer is asked to do, in order.
enum Op {
    Append(Vec<Record>),
    /// Answered once everything sent before it is synced (true) or failed to be (false).
    Sync(Sender<bool>),
    /// Rewrite the file: these ids (window start, serialized sets) for the windows not
    /// reported, then what the book says.
    Snapshot(Vec<(u64, Vec<Vec<u8>>)>),
    /// Sync, answer, and stop.
    Close(Sender<bool>),
}

/// Where records go: cheap to clone, for the reporters' threads.
#[derive(Clone)]
pub struct JournalSender {
    tx: Sender<Op>,
}

impl std::fmt::Debug for JournalSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JournalSender")
    }
}

impl JournalSender {
    /// Queues `record`; it is synced within the writer's next round (a few ms, or as long
    /// as one sync takes).
    pub fn record(&self, record: Record) {
        // The writer only goes away after the reporters (it is closed last): a record sent
        // after that is one the next start replays as not done, and does again.
        let _ = self.tx.send(Op::Append(vec![record]));
    }
}

/// The running writer.
pub struct Journal {
    tx: Sender<Op>,
    thread: Option<JoinHandle<()>>,
    stats: Arc<Stats>,
    path: PathBuf,
}

impl Journal {
    /// Writes a fresh journal at `path` holding `ids` and what `book` says (synced, and
    /// renamed over whatever was there), then starts the writer on it. Runs on the
    /// caller's thread: at start-up, before any request is served.
    pub fn create(
        path: &Path,
        interval_secs: u64,
        book: Book,
        ids: Vec<(u64, Vec<Vec<u8>>)>,
        stats: Arc<Stats>,
        health: &Health,
    ) -> anyhow::Result<Journal> {
        let mut writer = Writer {
            path: path.to_owned(),
            interval_secs,
            file: None,
            book,
            stats: stats.clone(),
            buffer: Vec::new(),
            last_error_log: None,
        };
        writer
            .snapshot(ids)
            .with_context(|| format!("writing --state-file {}", path.display()))?;
        let (tx, rx) = unbounded();
        let guard = health.guard("verve-state");
        let thread = std::thread::Builder::new()
            .name("verve-state".into())
            .spawn(move || {
                let _guard = guard;
                writer.run(rx);
            })
            .context("starting the state file thread")?;
        Ok(Journal {
            tx,
            thread: Some(thread),
            stats,
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// A sender for the reporters' threads.
    pub fn sender(&self) -> JournalSender {
        JournalSender {
            tx: self.tx.clone(),
        }
    }

    pub fn append(&self, records: Vec<Record>) {
        if !records.is_empty() {
            let _ = self.tx.send(Op::Append(records));
        }
    }

    /// Waits until everything sent so far is synced, at most `timeout`. False when the
    /// sync failed or took longer.
    pub fn sync(&self, timeout: Duration) -> bool {
        let (done, wait) = bounded(1);
        if self.tx.send(Op::Sync(done)).is_err() {
            return false;
        }
        wait.recv_timeout(timeout).unwrap_or(false)
    }

    /// Asks for the file to be rewritten with `ids` for the windows not reported.
    pub fn snapshot(&self, ids: Vec<(u64, Vec<Vec<u8>>)>) {
        let _ = self.tx.send(Op::Snapshot(ids));
    }

    /// Whether the file should be rewritten: a write failed since the last snapshot.
    pub fn wants_snapshot(&self) -> bool {
        self.stats.broken.load(Relaxed)
    }

    /// A journal whose writer is gone, as if it had died: every sync fails.
    #[cfg(test)]
    pub(crate) fn stopped_for_test() -> Journal {
        let (tx, _) = unbounded();
        Journal {
            tx,
            thread: None,
            stats: Arc::new(Stats::default()),
            path: PathBuf::from("/nonexistent/stopped.state"),
        }
    }

    /// Syncs what is left and stops the writer, waiting at most until `deadline`. False
    /// when the last sync failed or did not finish in time.
    pub fn close(mut self, deadline: Instant) -> bool {
        let (done, wait) = bounded(1);
        let synced =
            self.tx.send(Op::Close(done)).is_ok() && wait.recv_deadline(deadline).unwrap_or(false);
        if let Some(thread) = self.thread.take() {
            if synced {
                let _ = thread.join();
            }
        }
        synced
    }
}

/// Least time between two log lines about failures (each is counted).
const ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

/// The writer thread's state.
struct Writer {
    path: PathBuf,
    interval_secs: u64,
    /// The journal, open for appending; `None` after a failed snapshot left none open.
    file: Option<File>,
    book: Book,
    stats: Arc<Stats>,
    /// Framed records not written yet.
    buffer: Vec<u8>,
    last_error_log: Option<Instant>,
}

impl Writer {
    fn run(mut self, rx: Receiver<Op>) {
        loop {
            let first = match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(op) => op,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => {
                    self.flush();
                    return;
                }
            };
            let mut waiting = Vec::new();
            let mut close = None;
            let mut next = Some(first);
            while let Some(op) = next.take() {
                match op {
                    Op::Append(records) => self.take(records),
                    Op::Sync(done) => waiting.push(done),
                    Op::Snapshot(ids) => match self.snapshot(ids) {
                        // What came before is in the snapshot (the book, and the
                        // collector's ids): the buffer is not needed any more.
                        Ok(()) => self.buffer.clear(),
                        // The old file stays: the buffer still goes to it.
                        Err(e) => self.failed("rewriting", &e),
                    },
                    Op::Close(done) => {
                        close = Some(done);
                        break;
                    }
                }
                next = rx.try_recv().ok();
            }
            let synced = self.flush();
            for done in waiting {
                let _ = done.send(synced);
            }
            if let Some(done) = close {
                let _ = done.send(synced);
                return;
            }
        }
    }

    /// Frames the records that add something to the book (ids always do).
    fn take(&mut self, records: Vec<Record>) {
        for record in records {
            let new = self.book.apply(&record);
            if new || matches!(record, Record::Ids { .. }) {
                record.encode_into(&mut self.buffer);
            }
        }
    }

    /// Writes the buffer and syncs it. True when the file holds everything taken so far.
    fn flush(&mut self) -> bool {
        if self.buffer.is_empty() {
            return !self.stats.broken.load(Relaxed);
        }
        let bytes = std::mem::take(&mut self.buffer);
        let Some(file) = self.file.as_mut() else {
            self.stats.errors.fetch_add(1, Relaxed);
            return false;
        };
        let result = file.write_all(&bytes).and_then(|()| file.sync_data());
        match result {
            Ok(()) => {
                self.stats.syncs.fetch_add(1, Relaxed);
                self.stats.file_bytes.fetch_add(bytes.len() as u64, Relaxed);
                self.stats
                    .written_bytes
                    .fetch_add(bytes.len() as u64, Relaxed);
                true
            }
            Err(e) => {
                let e = anyhow::Error::new(e);
                self.failed("appending to", &e);
                false
            }
        }
    }

    fn failed(&mut self, doing: &str, e: &anyhow::Error) {
        self.stats.errors.fetch_add(1, Relaxed);
        self.stats.broken.store(true, Relaxed);
        let now = Instant::now();
        if self
            .last_error_log
            .is_none_or(|at| now.duration_since(at) >= ERROR_LOG_EVERY)
        {
            self.last_error_log = Some(now);
            log::error!(
                "--state-file: {doing} {} failed ({}): the ids of the open window are kept in \
                 memory and the file is rewritten whole at the next chance; a crash before \
                 then loses what the file lacks",
                self.path.display(),
                sanitize(&format!("{e:#}"))
            );
        }
    }

    /// Writes a whole new journal: `ids`, then the book, to `PATH.tmp`, synced, renamed
    /// over `PATH`, the directory synced; appends go to it from then on. A crash at any
    /// point leaves the old file or the whole new one.
    fn snapshot(&mut self, ids: Vec<(u64, Vec<Vec<u8>>)>) -> anyhow::Result<()> {
        let mut bytes = header(self.interval_secs).to_vec();
        for (window_start, sets) in ids {
            for set in sets {
                let record = Record::Ids { window_start, set };
                self.book.apply(&record);
                record.encode_into(&mut bytes);
            }
        }
        for record in self.book.snapshot() {
            record.encode_into(&mut bytes);
        }
        let tmp = super::tmp_path(&self.path);
        let write = || -> io::Result<File> {
            let mut file = super::create_private(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            Ok(file)
        };
        let file = match write() {
            Ok(file) => file,
            Err(e) => {
                if fs::symlink_metadata(&tmp).is_ok_and(|m| m.is_file()) {
                    let _ = fs::remove_file(&tmp);
                }
                return Err(e).with_context(|| format!("writing {}", tmp.display()));
            }
        };
        fs::rename(&tmp, &self.path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), self.path.display()))?;
        // The descriptor written through is the file at `PATH` now, its offset at the end:
        // appends go on in it.
        self.file = Some(file);
        super::sync_dir(&self.path)?;
        self.stats.file_bytes.store(bytes.len() as u64, Relaxed);
        self.stats
            .written_bytes
            .fetch_add(bytes.len() as u64, Relaxed);
        self.stats.snapshots.fetch_add(1, Relaxed);
        self.stats.broken.store(false, Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::IdSet;
    use crate::state::journal::{replay, Limits};

    fn dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("verve-writer-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn set(ids: impl IntoIterator<Item = i64>) -> Vec<u8> {
        let mut out = Vec::new();
        IdSet::from_ids(ids).serialize_into(&mut out);
        out
    }

    fn read(path: &Path) -> crate::state::journal::Replayed {
        replay(
            &fs::read(path).unwrap(),
            &Limits {
                max_id_bytes: 1 << 30,
            },
        )
        .unwrap()
    }

    #[test]
    fn appends_are_synced_and_a_rewrite_keeps_only_what_is_live() {
        let dir = dir("rewrite");
        let path = dir.join("j");
        let journal = Journal::create(
            &path,
            60,
            Book::default(),
            vec![],
            Default::default(),
            &Health::new(),
        )
        .unwrap();
        for w in 0..20u64 {
            let start = w * 60;
            journal.append(vec![
                Record::Ids {
                    window_start: start,
                    set: set((0..2000).map(|i| i * 7 + w as i64)),
                },
                Record::Endpoint {
                    window_start: start,
                    url: "http://a.test/".into(),
                },
                Record::Reported {
                    window_start: start,
                    count: 2000,
                    kafka: false,
                },
            ]);
            journal.sender().record(Record::Called {
                window_start: start,
                url: "http://a.test/".into(),
            });
        }
        journal.append(vec![Record::Ids {
            window_start: 1200,
            set: set([1, 2, 3]),
        }]);
        assert!(journal.sync(Duration::from_secs(10)));
        let before = fs::metadata(&path).unwrap().len();
        assert_eq!(journal.stats().file_bytes.load(Relaxed), before);
        let r = read(&path);
        assert_eq!(r.book.history.len(), 20);
        assert!(r.book.undelivered.is_empty());
        assert_eq!(r.ids[&1200].len(), 3);
        // The rewrite: the open window's ids as the collector holds them, and the book.
        journal.snapshot(vec![(1200, vec![set([1, 2, 3, 4])])]);
        assert!(journal.sync(Duration::from_secs(10)));
        let after = fs::metadata(&path).unwrap().len();
        assert!(after * 20 < before, "{after} bytes after, {before} before");
        let r = read(&path);
        assert_eq!(r.book.history.len(), 20);
        assert_eq!(r.ids.len(), 1);
        assert_eq!(r.ids[&1200].len(), 4);
        // Appends go on in the new file.
        journal.append(vec![Record::Ids {
            window_start: 1200,
            set: set([9]),
        }]);
        assert!(journal.close(Instant::now() + Duration::from_secs(10)));
        assert_eq!(read(&path).ids[&1200].len(), 5);
        assert!(!crate::state::tmp_path(&path).exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_rewrite_that_fails_leaves_the_file_as_it_was_and_asks_for_another() {
        let dir = dir("failed-rewrite");
        let path = dir.join("j");
        let journal = Journal::create(
            &path,
            60,
            Book::default(),
            vec![],
            Default::default(),
            &Health::new(),
        )
        .unwrap();
        journal.append(vec![Record::Ids {
            window_start: 60,
            set: set([5, 6]),
        }]);
        assert!(journal.sync(Duration::from_secs(10)));
        // A directory where the temporary file goes makes the rewrite fail, as a crash before
        // the rename would leave it: the journal stays whole and readable.
        fs::create_dir(crate::state::tmp_path(&path)).unwrap();
        journal.snapshot(vec![(60, vec![set([5, 6])])]);
        assert!(!journal.sync(Duration::from_secs(10)));
        assert!(journal.wants_snapshot());
        assert_eq!(journal.stats().errors.load(Relaxed), 1);
        assert_eq!(read(&path).ids[&60].len(), 2);
        fs::remove_dir(crate::state::tmp_path(&path)).unwrap();
        journal.snapshot(vec![(60, vec![set([5, 6, 7])])]);
        assert!(journal.sync(Duration::from_secs(10)));
        assert!(!journal.wants_snapshot());
        assert_eq!(read(&path).ids[&60].len(), 3);
        fs::remove_dir_all(&dir).unwrap();
    }
}
