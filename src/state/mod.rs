//! `--state-file`: the open window saved at shutdown and picked up at the next start, so a
//! restart (a deploy, a config change) loses no id and the window still gets one exact count.
//!
//! The file is written to `PATH.tmp`, synced, renamed over `PATH` and the directory synced:
//! a crash at any point leaves either the old file, no file, or the whole new one, never a
//! torn one. A checksum guards against everything else (a truncated copy, a bad disk).
//!
//! **The file is untrusted input.** Whoever can write its directory can put anything there,
//! so the loader opens it without following a symbolic link, reads at most
//! [`Limits::max_file_bytes`], decodes every field with bounds ([`SavedWindow::decode`]) and
//! then checks the window against this instance ([`Limits::check`]): a window far from now
//! or an id set larger than `--max-memory` is refused. A refused or unreadable file is moved
//! aside (never deleted, so an operator can look at it) and the service starts without it.
//! The temporary file is created afresh (`O_EXCL`, `O_NOFOLLOW`, mode 0600), so a link
//! planted at its name cannot redirect the write.
//!
//! The file also carries the history of reported windows that `/api/verve/windows` and the
//! status page show ([`crate::status`]), so that they go on after a restart.
//!
//! Layout, all integers little-endian:
//!
//! | bytes | field |
//! | --- | --- |
//! | 8 | magic `VERVEST3` (format version 3) |
//! | 8 | `--interval` of the instance that saved it, seconds (1 to 86 400) |
//! | 8 | window start, seconds since the epoch (a multiple of the interval, before year 10000) |
//! | 4 | number of endpoints, then per endpoint: 4-byte length (at most 2048), UTF-8 URL |
//! | 8 | length of the id set, then the set in its compact format ([`IdSet::serialize_into`]) |
//! | 4 | number of reported windows (at most 4096), then per window: 8-byte window start, 8-byte count; newest first, each start a multiple of the interval and before the next one's and the saved window's |
//! | 4 | CRC-32 of everything before it |

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context};

use crate::clock::{rfc3339_secs, Windows, END_OF_RFC3339_SECS};
use crate::ids::bytes::Reader;
use crate::ids::IdSet;
use crate::query::MAX_ENDPOINT_BYTES;
use crate::status::Reported;
use journal::Book;

pub mod journal;
pub mod restore;
pub mod writer;

const MAGIC: &[u8; 8] = b"VERVEST3";

/// Most reported windows a state file may hold: far more than the history keeps
/// ([`crate::status::HISTORY_LEN`]), so that a later version keeping more is still read.
const MAX_HISTORY: u32 = 4096;

/// Bytes of one reported window: its start and its count.
const REPORTED_BYTES: u64 = 16;

/// Most endpoints a state file may list: far above `--max-endpoints`' useful range, low enough
/// that a corrupt count cannot make the loader allocate without bound.
const MAX_ENDPOINTS: u32 = 1 << 20;

/// Longest `--interval` (the flag's own limit): a longer one is not a file verve wrote.
const MAX_INTERVAL_SECS: u64 = 86_400;

/// Bytes of a file around its id set and endpoints: magic, interval, window start, endpoint
/// count, set length, the history (its length and the most entries), checksum.
const FRAME_BYTES: u64 = 8 + 8 + 8 + 4 + 8 + (4 + MAX_HISTORY as u64 * REPORTED_BYTES) + 4;

/// How long after its end a saved window is still reported at start. A service stopped for a
/// weekend or a long maintenance is back well within it, and its late count is still news;
/// a window older than a week is history no consumer is waiting for, and a file that old was
/// more likely left behind (or put there) than saved by the last run.
pub const MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// One window's saved state.
#[derive(Debug, Clone, PartialEq)]
pub struct SavedWindow {
    /// The `--interval` it was counted with.
    pub interval_secs: u64,
    /// Window start, whole seconds since the epoch.
    pub window_start: u64,
    pub ids: IdSet,
    /// Canonical endpoint URLs named during the window, not yet called.
    pub endpoints: Vec<String>,
}

impl SavedWindow {
    /// The file's bytes (see the module doc), without history. Public for the fuzz target,
    /// which checks that what [`SavedWindow::decode`] accepts encodes back to an equal window.
    pub fn encode(&self) -> io::Result<Vec<u8>> {
        self.encode_with_history(&[])
    }

    /// The file's bytes with the windows reported before this one. Only what
    /// [`SavedWindow::decode_with_history`] accepts is written: windows aligned to the
    /// interval and before this one, newest first, one per start, at most 4096.
    pub fn encode_with_history(&self, history: &[Reported]) -> io::Result<Vec<u8>> {
        let interval = self.interval_secs.max(1);
        let mut history: Vec<Reported> = history
            .iter()
            .filter(|r| {
                r.window_start.is_multiple_of(interval) && r.window_start < self.window_start
            })
            .copied()
            .collect();
        history.sort_by_key(|r| std::cmp::Reverse(r.window_start));
        history.dedup_by_key(|r| r.window_start);
        history.truncate(MAX_HISTORY as usize);
        let set_bytes = self.ids.serialized_size();
        let mut out = Vec::with_capacity(64 + set_bytes + history.len() * 16);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.interval_secs.to_le_bytes());
        out.extend_from_slice(&self.window_start.to_le_bytes());
        out.extend_from_slice(&(self.endpoints.len() as u32).to_le_bytes());
        for e in &self.endpoints {
            out.extend_from_slice(&(e.len() as u32).to_le_bytes());
            out.extend_from_slice(e.as_bytes());
        }
        out.extend_from_slice(&(set_bytes as u64).to_le_bytes());
        self.ids.serialize_into(&mut out);
        out.extend_from_slice(&(history.len() as u32).to_le_bytes());
        for r in &history {
            out.extend_from_slice(&r.window_start.to_le_bytes());
            out.extend_from_slice(&r.unique_count.to_le_bytes());
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        Ok(out)
    }

    /// Reads a state file's bytes. Public for the fuzz target (`fuzz/fuzz_targets/state.rs`)
    /// and tests; [`load`] is what the server calls. The bytes are untrusted: every count and
    /// length is checked against what is left before anything is allocated, and the fields
    /// must be what verve writes (see the module doc), or the file is refused. The history
    /// is checked, and left out.
    pub fn decode(bytes: &[u8]) -> anyhow::Result<SavedWindow> {
        Ok(SavedWindow::decode_with_history(bytes)?.0)
    }

    /// [`SavedWindow::decode`], with the history of reported windows (newest first).
    pub fn decode_with_history(bytes: &[u8]) -> anyhow::Result<(SavedWindow, Vec<Reported>)> {
        SavedWindow::decode_bounded(bytes, crate::ids::MAX_DECODED_IDS)
    }

    /// [`SavedWindow::decode_with_history`] with an id set of at most `max_ids` ids: a set
    /// that would be larger is refused before it is expanded.
    pub fn decode_bounded(
        bytes: &[u8],
        max_ids: u64,
    ) -> anyhow::Result<(SavedWindow, Vec<Reported>)> {
        ensure!(
            bytes.len() >= MAGIC.len() + 4,
            "too short ({} bytes)",
            bytes.len()
        );
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        ensure!(
            body.starts_with(MAGIC),
            "not a verve state file (bad magic)"
        );
        ensure!(
            crc32fast::hash(body).to_le_bytes() == crc,
            "checksum mismatch (truncated or damaged)"
        );
        let mut r = Reader::new(&body[MAGIC.len()..]);
        let interval_secs = r.u64()?;
        let window_start = r.u64()?;
        ensure!(
            (1..=MAX_INTERVAL_SECS).contains(&interval_secs),
            "interval of {interval_secs} s"
        );
        ensure!(
            window_start % interval_secs == 0,
            "window start {window_start} is not a multiple of the interval ({interval_secs} s)"
        );
        ensure!(
            window_start < END_OF_RFC3339_SECS,
            "window start {window_start} is after the year 9999"
        );
        let count = r.u32()?;
        ensure!(count <= MAX_ENDPOINTS, "{count} endpoints");
        // Each endpoint takes at least its length field: a count the bytes cannot hold
        // allocates nothing.
        ensure!(
            count as usize <= r.len() / 4,
            "truncated: {count} endpoints"
        );
        let mut endpoints = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let len = r.u32()? as usize;
            ensure!(len <= MAX_ENDPOINT_BYTES, "an endpoint of {len} bytes");
            let url = std::str::from_utf8(r.take(len)?).context("endpoint is not UTF-8")?;
            endpoints.push(url.to_owned());
        }
        let len = r.u64()?;
        let set = r.take(usize::try_from(len).context("id set length")?)?;
        let ids = IdSet::deserialize_bounded(set, max_ids).context("id set")?;
        let history = read_history(&mut r, interval_secs, window_start)?;
        ensure!(r.is_empty(), "{} trailing bytes", r.len());
        let window = SavedWindow {
            interval_secs,
            window_start,
            ids,
            endpoints,
        };
        Ok((window, history))
    }
}

/// The history of reported windows: at most [`MAX_HISTORY`] windows, newest first, each
/// start a multiple of the interval and before the one read before it (the first before
/// the saved window's start), so also before year 10000.
fn read_history(
    r: &mut Reader<'_>,
    interval_secs: u64,
    window_start: u64,
) -> anyhow::Result<Vec<Reported>> {
    let count = r.u32()?;
    ensure!(count <= MAX_HISTORY, "{count} reported windows");
    ensure!(
        count as u64 <= r.len() as u64 / REPORTED_BYTES,
        "truncated: {count} reported windows"
    );
    let mut history = Vec::with_capacity(count as usize);
    let mut before = window_start;
    for _ in 0..count {
        let start = r.u64()?;
        let unique_count = r.u64()?;
        ensure!(
            start.is_multiple_of(interval_secs),
            "reported window start {start} is not a multiple of the interval ({interval_secs} s)"
        );
        ensure!(
            start < before,
            "reported window start {start} is not before {before} (newest first, all before \
             the saved window)"
        );
        before = start;
        history.push(Reported {
            window_start: start,
            unique_count,
        });
    }
    Ok(history)
}

pub(crate) fn tmp_path(path: &Path) -> PathBuf {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    PathBuf::from(tmp)
}

/// Creates `tmp` afresh for writing, readable by this user only. A stale file from a
/// crashed save is unlinked first (unlinking a symbolic link removes the link, not its
/// target); then `O_EXCL` and `O_NOFOLLOW` make the create fail, rather than write through a
/// link or into a file someone else opened, if anything appeared at the name meanwhile.
pub(crate) fn create_private(tmp: &Path) -> io::Result<File> {
    match fs::remove_file(tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(tmp)
}

/// Writes `window` and the `history` of windows reported before it to `path` atomically (see
/// the module doc).
pub fn save(path: &Path, window: &SavedWindow, history: &[Reported]) -> anyhow::Result<()> {
    let bytes = window
        .encode_with_history(history)
        .context("serializing the window")?;
    let tmp = tmp_path(path);
    let write = || -> io::Result<()> {
        let mut file = create_private(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()
    };
    if let Err(e) = write() {
        // Only a file this call created is removed; a directory or a link in the way stays.
        if fs::symlink_metadata(&tmp).is_ok_and(|m| m.is_file()) {
            let _ = fs::remove_file(&tmp);
        }
        return Err(e).with_context(|| format!("writing {}", tmp.display()));
    }
    // `rename` replaces the name `path`, never what a link there points to.
    fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    sync_dir(path)?;
    Ok(())
}

/// Syncs the directory of `path`: a rename is only durable once its directory is, or a
/// power cut can bring back the old entry.
pub(crate) fn sync_dir(path: &Path) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing directory {}", dir.display()))
}

/// Fails unless a state file can be written at `path` (its directory exists and is
/// writable): checked at start-up, so that a wrong path is found then, not at shutdown.
pub fn check_writable(path: &Path) -> anyhow::Result<()> {
    let tmp = tmp_path(path);
    create_private(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    fs::remove_file(&tmp).with_context(|| format!("cannot remove {}", tmp.display()))?;
    Ok(())
}

/// What a state file must satisfy besides its format: this instance's settings and clock.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest file read at all; a larger one is refused unread.
    pub max_file_bytes: u64,
    /// `--max-memory`: the most the window's ids may take once read. The ids were answered
    /// `ok` before the restart, so they would be charged past the budget: a set that alone
    /// exceeds it would refuse every request of the window, or worse.
    pub max_id_bytes: u64,
    /// Now, milliseconds since the epoch.
    pub now_ms: u64,
    /// This instance's `--interval`.
    pub windows: Windows,
}

impl Limits {
    /// Limits for an instance with `--max-memory` `memory_limit` and `--max-endpoints`
    /// `max_endpoints`: the file may hold an id set of the whole budget (its serialized form
    /// is never larger than the set in memory) and that many endpoints.
    pub fn new(memory_limit: u64, max_endpoints: usize, windows: Windows, now_ms: u64) -> Self {
        let endpoint_bytes = (max_endpoints as u64).saturating_mul(4 + MAX_ENDPOINT_BYTES as u64);
        Limits {
            // A journal is rewritten once it holds more than twice what is live (plus
            // `collector::SNAPSHOT_SLACK_BYTES`), so it stays well within three budgets; the
            // endpoints of a few windows whose calls are still due come on top.
            max_file_bytes: memory_limit
                .saturating_mul(3)
                .saturating_add(endpoint_bytes.saturating_mul(4))
                .saturating_add(FRAME_BYTES)
                .saturating_add(64 << 20),
            max_id_bytes: memory_limit,
            now_ms,
            windows,
        }
    }

    /// Whether `saved` may be resumed or reported: its window is neither more than one
    /// interval ahead of the one open now (the clock went back a little between the save and
    /// this start: it resumes when the clock gets there) nor older than [`MAX_AGE`], and its
    /// ids fit in `--max-memory`.
    pub fn check(&self, saved: &SavedWindow) -> anyhow::Result<()> {
        self.check_window(saved.interval_secs, saved.window_start, &saved.ids)
    }

    /// [`Limits::check`] for one window of a file written with `interval_secs`.
    pub fn check_window(
        &self,
        interval_secs: u64,
        window_start: u64,
        ids: &IdSet,
    ) -> anyhow::Result<()> {
        let bytes = ids.heap_bytes() as u64;
        ensure!(
            bytes <= self.max_id_bytes,
            "its {} ids take {bytes} bytes, more than --max-memory allows ({} bytes); restart \
             with a larger --max-memory and move the file back to count them",
            ids.len(),
            self.max_id_bytes
        );
        let start_ms = window_start.saturating_mul(1000);
        let end_ms = start_ms.saturating_add(interval_secs.saturating_mul(1000));
        let open = self.windows.index_of(self.now_ms);
        let next_start_ms = self.windows.end_ms(open);
        ensure!(
            start_ms <= next_start_ms,
            "its window {} starts more than one interval after the window open now ({}): the \
             clock is far behind the one that saved it, or the file is not this service's",
            rfc3339_secs(window_start),
            rfc3339_secs(self.windows.start_secs(open))
        );
        ensure!(
            self.now_ms.saturating_sub(end_ms) <= MAX_AGE.as_millis() as u64,
            "its window {} ended more than {} days ago: too old to be worth reporting",
            rfc3339_secs(window_start),
            MAX_AGE.as_secs() / 86_400
        );
        Ok(())
    }
}

/// What [`load`] found.
#[derive(Debug)]
pub enum Loaded {
    /// No state file: a normal start.
    Nothing,
    /// What the file holds: the windows not reported, the deliveries still due, the
    /// history. The file stays until the new journal is written over it.
    Found(Restored),
    /// A file that could not be read as a state file (damaged, not a regular file, a
    /// symbolic link); it was renamed to `moved_to` (`PATH.unreadable`) so that it is kept
    /// for inspection and not read again at every start.
    Unreadable {
        error: anyhow::Error,
        moved_to: PathBuf,
    },
    /// A well-formed file that [`Limits`] refuse (too large, a window far from now); renamed
    /// to `moved_to` (`PATH.refused`): an operator can still move it back.
    Refused {
        error: anyhow::Error,
        moved_to: PathBuf,
    },
}

/// Renames `path` to `PATH.suffix`.
fn set_aside(path: &Path, suffix: &str, error: &anyhow::Error) -> anyhow::Result<PathBuf> {
    let mut moved = path.as_os_str().to_owned();
    moved.push(".");
    moved.push(suffix);
    let moved_to = PathBuf::from(moved);
    fs::rename(path, &moved_to).with_context(|| {
        format!(
            "{} is {suffix} ({error:#}) and cannot be moved to {}",
            path.display(),
            moved_to.display()
        )
    })?;
    Ok(moved_to)
}

/// Reads and removes the state file at `path`. Errors are for what stops the start-up (the
/// file exists but cannot be opened or moved); a damaged file is [`Loaded::Unreadable`], one
/// that `limits` refuse is [`Loaded::Refused`].
pub fn load(path: &Path, limits: &Limits) -> anyhow::Result<Loaded> {
    // O_NONBLOCK: opening a FIFO planted at the path must not wait for a writer.
    let opened = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path);
    let file = match opened {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Loaded::Nothing),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            let error = anyhow::anyhow!("it is a symbolic link, which is never followed");
            let moved_to = set_aside(path, "unreadable", &error)?;
            return Ok(Loaded::Unreadable { error, moved_to });
        }
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let meta = file
        .metadata()
        .with_context(|| format!("reading {}", path.display()))?;
    if !meta.is_file() {
        let error = anyhow::anyhow!("it is not a regular file");
        let moved_to = set_aside(path, "unreadable", &error)?;
        return Ok(Loaded::Unreadable { error, moved_to });
    }
    if meta.len() > limits.max_file_bytes {
        let error = anyhow::anyhow!(
            "it holds {} bytes, more than a window within --max-memory and --max-endpoints \
             takes ({} bytes)",
            meta.len(),
            limits.max_file_bytes
        );
        let moved_to = set_aside(path, "refused", &error)?;
        return Ok(Loaded::Refused { error, moved_to });
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // The file may grow after the size check: never read past the limit.
    file.take(limits.max_file_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {}", path.display()))?;
    let found = if journal::is_journal(&bytes) {
        let limits = journal::Limits {
            max_id_bytes: limits.max_id_bytes,
        };
        journal::replay(&bytes, &limits).map(Restored::from_journal)
    } else {
        // Ids beyond what the budget could ever hold are refused before they are expanded.
        let max_ids = limits
            .max_id_bytes
            .saturating_mul(journal::DENSEST_IDS_PER_BYTE);
        SavedWindow::decode_bounded(&bytes, max_ids).map(Restored::from_snapshot)
    };
    match found.map(|r| (limits.check_all(&r), r)) {
        Ok((Ok(()), restored)) => Ok(Loaded::Found(restored)),
        Ok((Err(error), _)) => {
            let moved_to = set_aside(path, "refused", &error)?;
            Ok(Loaded::Refused { error, moved_to })
        }
        Err(error) => {
            let moved_to = set_aside(path, "unreadable", &error)?;
            Ok(Loaded::Unreadable { error, moved_to })
        }
    }
}

/// A window the file holds that was not reported: its start, ids and endpoints.
pub type HeldWindow = (u64, IdSet, Vec<String>);

/// What a state file holds, in either format.
#[derive(Debug, Default)]
pub struct Restored {
    /// The `--interval` it was written with.
    pub interval_secs: u64,
    /// The windows not reported: their ids (and, in `book.open`, their endpoints).
    pub ids: BTreeMap<u64, IdSet>,
    /// Endpoints of the windows not reported, deliveries due, history.
    pub book: Book,
    /// A journal whose end was cut short (a crash mid-write) or damaged: why, and the
    /// bytes after the last whole record.
    pub torn: Option<(String, usize)>,
}

impl Restored {
    fn from_journal(replayed: journal::Replayed) -> Restored {
        Restored {
            interval_secs: replayed.interval_secs,
            ids: replayed.ids,
            book: replayed.book,
            torn: replayed.torn,
        }
    }

    /// A file of the single-snapshot format (saved at a graceful stop by earlier versions):
    /// one window not reported, and the history.
    fn from_snapshot((saved, history): (SavedWindow, Vec<Reported>)) -> Restored {
        let mut book = Book::default();
        for r in &history {
            book.history.insert(r.window_start, r.unique_count);
        }
        book.open.insert(saved.window_start, saved.endpoints);
        Restored {
            interval_secs: saved.interval_secs,
            ids: BTreeMap::from([(saved.window_start, saved.ids)]),
            book,
            torn: None,
        }
    }

    /// The windows not reported, oldest first (start, ids, endpoints); the book without
    /// them; the interval.
    pub fn into_windows(mut self) -> (Vec<HeldWindow>, Book, u64) {
        let mut starts: Vec<u64> = self.ids.keys().copied().collect();
        starts.extend(self.book.open.keys().copied());
        starts.sort_unstable();
        starts.dedup();
        let windows = starts
            .into_iter()
            .map(|start| {
                let ids = self.ids.remove(&start).unwrap_or_default();
                let endpoints = self.book.open.remove(&start).unwrap_or_default();
                (start, ids, endpoints)
            })
            .collect();
        (windows, self.book, self.interval_secs)
    }
}

impl Limits {
    /// [`Limits::check`] for every window a file holds that is not reported.
    pub fn check_all(&self, restored: &Restored) -> anyhow::Result<()> {
        let mut starts: BTreeSet<u64> = restored.ids.keys().copied().collect();
        starts.extend(restored.book.open.keys().copied());
        let empty = IdSet::new();
        for start in starts {
            self.check_window(
                restored.interval_secs,
                start,
                restored.ids.get(&start).unwrap_or(&empty),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-18T17:46:00Z, a window start for 60 s windows.
    const START: u64 = 1_794_999_960;

    /// Limits of an instance with 60 s windows, 1 GiB for ids, 1000 endpoints, 5 s into the
    /// sample's window.
    fn limits() -> Limits {
        Limits::new(1 << 30, 1000, Windows::new(60), START * 1000 + 5_000)
    }

    fn sample() -> SavedWindow {
        let ids = IdSet::from_ids(
            [i64::MIN, -1, 0, 7, u32::MAX as i64, 1 << 40, i64::MAX]
                .into_iter()
                .chain((0..100_000).map(|i| i * 37)),
        );
        SavedWindow {
            interval_secs: 60,
            window_start: START,
            ids,
            endpoints: vec!["http://a.test/cb".into(), "https://b.test/x?y=1".into()],
        }
    }

    /// Windows reported before the sample's, newest first.
    fn history() -> Vec<Reported> {
        (1..=5)
            .map(|i| Reported {
                window_start: START - i * 60,
                unique_count: i * 1000 + 7,
            })
            .collect()
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("verve-state-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_snapshot_of_the_earlier_format_loads_as_one_window_and_its_history() {
        let dir = temp_dir("roundtrip");
        let path = dir.join("window.state");
        save(&path, &sample(), &history()).unwrap();
        assert!(!tmp_path(&path).exists());
        let sample = sample();
        match load(&path, &limits()).unwrap() {
            Loaded::Found(r) => {
                assert_eq!(r.interval_secs, 60);
                assert_eq!(r.ids[&START], sample.ids);
                assert_eq!(r.book.open[&START], sample.endpoints);
                assert_eq!(r.book.history_newest_first(), history());
            }
            other => panic!("{other:?}"),
        }
        // Left in place: the new journal is written over it.
        assert!(path.exists());
    }

    #[test]
    fn files_of_earlier_magics_are_not_state_files() {
        // Formats 1 and 2 were never released: their magics are refused like any other.
        let v3 = sample().encode().unwrap();
        for magic in [b"VERVEST1", b"VERVEST2"] {
            let mut old = v3[..v3.len() - 4].to_vec();
            old[..8].copy_from_slice(magic);
            let crc = crc32fast::hash(&old);
            old.extend_from_slice(&crc.to_le_bytes());
            let err = SavedWindow::decode(&old).unwrap_err();
            assert!(format!("{err:#}").contains("bad magic"), "{err:#}");
        }
    }

    #[test]
    fn the_history_is_written_as_the_decoder_accepts_it() {
        let window = sample();
        // Unordered, repeated, misaligned, not before the window: the encoder keeps what a
        // load accepts.
        let mut given = history();
        given.reverse();
        given.push(given[0]);
        given.push(Reported {
            window_start: START - 30,
            unique_count: 1,
        });
        given.push(Reported {
            window_start: START,
            unique_count: 1,
        });
        let bytes = window.encode_with_history(&given).unwrap();
        assert_eq!(
            SavedWindow::decode_with_history(&bytes).unwrap(),
            (window.clone(), history())
        );
        // The plain decoder reads the same window.
        assert_eq!(SavedWindow::decode(&bytes).unwrap(), window);
        // At most MAX_HISTORY windows.
        let many: Vec<Reported> = (1..=MAX_HISTORY as u64 + 10)
            .map(|i| Reported {
                window_start: START - i * 60,
                unique_count: i,
            })
            .collect();
        let bytes = window.encode_with_history(&many).unwrap();
        let (_, read) = SavedWindow::decode_with_history(&bytes).unwrap();
        assert_eq!(read.len(), MAX_HISTORY as usize);
        assert_eq!(read[0], many[0]);
    }

    /// The sample with `entries` (start, count) as its history, written as they are, with
    /// a right checksum.
    fn with_raw_history(count: u32, entries: &[(u64, u64)]) -> Vec<u8> {
        let mut bytes = sample().encode().unwrap();
        bytes.truncate(bytes.len() - 8);
        bytes.extend_from_slice(&count.to_le_bytes());
        for (start, n) in entries {
            bytes.extend_from_slice(&start.to_le_bytes());
            bytes.extend_from_slice(&n.to_le_bytes());
        }
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        bytes
    }

    #[test]
    fn a_history_verve_never_writes_is_refused() {
        let ok = with_raw_history(2, &[(START - 60, 5), (START - 600, 0)]);
        assert_eq!(SavedWindow::decode_with_history(&ok).unwrap().1.len(), 2);
        for (bytes, why) in [
            (
                with_raw_history(2, &[(START - 600, 5), (START - 60, 0)]),
                "is not before",
            ),
            (
                with_raw_history(2, &[(START - 60, 5), (START - 60, 5)]),
                "is not before",
            ),
            (with_raw_history(1, &[(START, 5)]), "is not before"),
            (with_raw_history(1, &[(START + 60, 5)]), "is not before"),
            (with_raw_history(1, &[(START - 61, 5)]), "not a multiple"),
            (
                with_raw_history(MAX_HISTORY + 1, &[]),
                "4097 reported windows",
            ),
            (with_raw_history(3, &[(START - 60, 5)]), "truncated"),
            (with_raw_history(u32::MAX, &[]), "reported windows"),
            (with_raw_history(0, &[(START - 60, 5)]), "16 trailing bytes"),
        ] {
            let err = SavedWindow::decode_with_history(&bytes).unwrap_err();
            assert!(format!("{err:#}").contains(why), "{why}: {err:#}");
        }
        // A history count cut short.
        let mut bytes = sample().encode().unwrap();
        bytes.truncate(bytes.len() - 6);
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        assert!(SavedWindow::decode_with_history(&bytes).is_err());
    }

    #[test]
    fn every_truncation_and_any_flipped_byte_is_refused() {
        let bytes = sample().encode_with_history(&history()).unwrap();
        for len in (0..bytes.len()).step_by(97).chain([bytes.len() - 1]) {
            assert!(SavedWindow::decode(&bytes[..len]).is_err(), "length {len}");
        }
        for at in (0..bytes.len()).step_by(211) {
            let mut bad = bytes.clone();
            bad[at] ^= 0x40;
            assert!(SavedWindow::decode(&bad).is_err(), "byte {at}");
        }
    }

    #[test]
    fn an_unreadable_file_is_moved_aside_not_deleted() {
        let dir = temp_dir("unreadable");
        let path = dir.join("window.state");
        fs::write(&path, b"not a state file").unwrap();
        match load(&path, &limits()).unwrap() {
            Loaded::Unreadable { moved_to, .. } => {
                assert_eq!(fs::read(&moved_to).unwrap(), b"not a state file");
            }
            other => panic!("{other:?}"),
        }
        assert!(!path.exists());
    }

    /// Writes `window` as a state file and loads it with `limits`.
    fn round_trip(name: &str, window: &SavedWindow, limits: &Limits) -> (PathBuf, Loaded) {
        let dir = temp_dir(name);
        let path = dir.join("window.state");
        save(&path, window, &[]).unwrap();
        let loaded = load(&path, limits).unwrap();
        (path, loaded)
    }

    fn refused(loaded: Loaded, why: &str) -> PathBuf {
        match loaded {
            Loaded::Refused { error, moved_to } => {
                assert!(format!("{error:#}").contains(why), "{error:#}");
                moved_to
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_window_far_from_now_is_refused_and_kept_aside() {
        // The next window (the clock went back a little since the save) is still resumed.
        let mut next = sample();
        next.window_start += 60;
        let (_, loaded) = round_trip("next", &next, &limits());
        assert!(matches!(loaded, Loaded::Found(..)), "{loaded:?}");
        // Two windows ahead is refused; the file is kept, renamed.
        let mut ahead = sample();
        ahead.window_start += 120;
        let (path, loaded) = round_trip("ahead", &ahead, &limits());
        let moved = refused(loaded, "more than one interval after");
        assert!(!path.exists());
        assert_eq!(
            SavedWindow::decode(&fs::read(moved).unwrap()).unwrap(),
            ahead
        );
        // The last window before year 10000 (what made RFC 3339 formatting panic).
        let mut far = sample();
        far.window_start = (END_OF_RFC3339_SECS - 1) / 60 * 60;
        let (_, loaded) = round_trip("far", &far, &limits());
        refused(
            loaded,
            "9999-12-31T23:59:00Z starts more than one interval after",
        );
        // Older than a week: not worth a report; a day old still is.
        let mut old = sample();
        old.window_start -= MAX_AGE.as_secs() + 120;
        let (_, loaded) = round_trip("old", &old, &limits());
        refused(loaded, "ended more than 7 days ago");
        let mut yesterday = sample();
        yesterday.window_start -= 86_400;
        let (_, loaded) = round_trip("yesterday", &yesterday, &limits());
        assert!(matches!(loaded, Loaded::Found(..)), "{loaded:?}");
    }

    #[test]
    fn ids_beyond_the_memory_budget_are_refused_unread_or_after_decoding() {
        let window = sample();
        let bytes = window.encode().unwrap().len() as u64;
        // A file larger than the budget allows is not even read: a journal's bound (three
        // budgets, room for the endpoints and the longest history, the frame, the slack).
        let small = Limits::new(bytes / 2, 0, Windows::new(60), START * 1000);
        assert_eq!(
            small.max_file_bytes,
            bytes / 2 * 3 + FRAME_BYTES + (64 << 20)
        );
        let small = Limits {
            max_file_bytes: bytes / 2,
            ..small
        };
        let (_, loaded) = round_trip("budget-file", &window, &small);
        refused(loaded, "more than a window within --max-memory");
        // A file that fits, whose set takes more in memory than the budget.
        let tight = Limits {
            max_file_bytes: bytes,
            max_id_bytes: window.ids.heap_bytes() as u64 / 2,
            ..limits()
        };
        let (_, loaded) = round_trip("budget-ids", &window, &tight);
        refused(loaded, "more than --max-memory allows");
    }

    #[test]
    fn a_dense_set_larger_than_the_budget_could_hold_is_refused_before_it_is_expanded() {
        // A few hundred bytes of consecutive ids stand for millions of them.
        let mut window = sample();
        window.ids = IdSet::from_ids(0..4_000_000);
        let dir = temp_dir("dense");
        let path = dir.join("window.state");
        save(&path, &window, &[]).unwrap();
        assert!(fs::metadata(&path).unwrap().len() < 4096);
        let small = Limits::new(8 << 10, 10, Windows::new(60), START * 1000 + 5_000);
        match load(&path, &small).unwrap() {
            Loaded::Unreadable { error, .. } => {
                assert!(format!("{error:#}").contains("4000000"), "{error:#}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn fields_verve_never_writes_are_refused() {
        let encode = |w: SavedWindow| w.encode().unwrap();
        let mut misaligned = sample();
        misaligned.window_start += 7;
        let mut zero = sample();
        zero.interval_secs = 0;
        let mut long = sample();
        long.interval_secs = 86_401;
        long.window_start = 0;
        let mut year_10000 = sample();
        year_10000.interval_secs = 1;
        year_10000.window_start = END_OF_RFC3339_SECS;
        let mut endpoint = sample();
        endpoint.endpoints = vec![format!("http://a.test/{}", "x".repeat(2048))];
        for (bytes, why) in [
            (encode(misaligned), "not a multiple of the interval"),
            (encode(zero), "interval of 0 s"),
            (encode(long), "interval of 86401 s"),
            (encode(year_10000), "after the year 9999"),
            (encode(endpoint), "an endpoint of 2062 bytes"),
        ] {
            let err = SavedWindow::decode(&bytes).unwrap_err();
            assert!(format!("{err:#}").contains(why), "{err:#}");
        }
        // An endpoint count the bytes cannot hold allocates nothing.
        let mut bytes = encode(sample());
        bytes[24..28].copy_from_slice(&(MAX_ENDPOINTS).to_le_bytes());
        let body = bytes.len() - 4;
        let crc = crc32fast::hash(&bytes[..body]);
        bytes[body..].copy_from_slice(&crc.to_le_bytes());
        let err = SavedWindow::decode(&bytes).unwrap_err();
        assert!(format!("{err:#}").contains("truncated"), "{err:#}");
    }

    #[test]
    fn links_and_special_files_are_never_followed_or_read() {
        use std::os::unix::fs::{symlink, PermissionsExt};
        let dir = temp_dir("links");
        let path = dir.join("window.state");
        // A link at the state file's name: moved aside (the link itself), target untouched.
        let target = dir.join("elsewhere");
        save(&target, &sample(), &[]).unwrap();
        symlink(&target, &path).unwrap();
        match load(&path, &limits()).unwrap() {
            Loaded::Unreadable { moved_to, .. } => {
                assert!(fs::symlink_metadata(moved_to).unwrap().is_symlink());
            }
            other => panic!("{other:?}"),
        }
        assert!(target.exists());
        // A FIFO does not block the start.
        let fifo = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: `fifo` is a NUL-terminated path that outlives the call; mkfifo only reads it.
        let made = unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) };
        assert_eq!(made, 0);
        assert!(matches!(
            load(&path, &limits()).unwrap(),
            Loaded::Unreadable { .. }
        ));
        // A link planted at the temporary name is replaced, never written through, and the
        // new file is private.
        let victim = dir.join("victim");
        fs::write(&victim, b"keep me").unwrap();
        symlink(&victim, tmp_path(&path)).unwrap();
        save(&path, &sample(), &[]).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"keep me");
        let meta = fs::symlink_metadata(&path).unwrap();
        assert!(meta.is_file());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_write_leaves_the_previous_file_intact() {
        let dir = temp_dir("failed-write");
        let path = dir.join("window.state");
        save(&path, &sample(), &[]).unwrap();
        // A directory where the temporary file should go makes the write fail.
        fs::create_dir(tmp_path(&path)).unwrap();
        let mut other = sample();
        other.window_start += 60;
        assert!(save(&path, &other, &[]).is_err());
        fs::remove_dir(tmp_path(&path)).unwrap();
        match load(&path, &limits()).unwrap() {
            Loaded::Found(r) => assert_eq!(r.ids[&START], sample().ids),
            other => panic!("{other:?}"),
        }
    }
}
