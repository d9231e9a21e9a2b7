//! `--state-file`: the open window saved at shutdown and picked up at the next start, so a
//! restart (a deploy, a config change) loses no id and the window still gets one exact count.
//!
//! The file is written to `PATH.tmp`, synced, renamed over `PATH` and the directory synced:
//! a crash at any point leaves either the old file, no file, or the whole new one, never a
//! torn one. A checksum guards against everything else (a truncated copy, a bad disk).
//!
//! **The file is untrusted input.** Whoever can write its directory can put anything there,
//! so the loader opens it without following a symbolic link, reads at most
//! [`Limits::max_file_bytes`], decodes every field with bounds ([`journal::replay`],
//! [`SavedWindow::decode`]) and then checks each window against this instance
//! ([`Limits::check`]): a window far from now or an id set larger than `--max-memory` is
//! refused. A refused or unreadable file is moved
//! aside (never deleted, so an operator can look at it) and the service starts without it.
//! The temporary file is created afresh (`O_EXCL`, `O_NOFOLLOW`, mode 0600), so a link
//! planted at its name cannot redirect the write.
//!
//! The file also carries the history of reported windows that `/api/verve/windows` and the
//! status page show ([`crate::status`]), so that they go on after a restart.
//!
//! Files: `journal.rs` the file's format, `writer.rs` its writer thread, `restore.rs` the
//! start-up that puts what it holds back to work, `snapshot.rs` the single-snapshot format
//! an earlier build wrote (still read), `limits.rs` what a file must satisfy to be used.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::ids::IdSet;
use crate::status::Reported;
use journal::Book;

pub mod journal;
mod limits;
pub mod restore;
mod snapshot;
pub mod writer;

pub use limits::{Limits, MAX_AGE};
pub use snapshot::{save, SavedWindow};

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

/// Inputs and helpers shared by the tests of the state modules.
#[cfg(test)]
pub(crate) mod testing {
    use std::fs;
    use std::path::PathBuf;

    use super::{load, save, Limits, Loaded, SavedWindow};
    use crate::clock::Windows;
    use crate::ids::IdSet;
    use crate::status::Reported;

    /// 2026-11-18T17:46:00Z, a window start for 60 s windows.
    pub(crate) const START: u64 = 1_794_999_960;

    /// Limits of an instance with 60 s windows, 1 GiB for ids, 1000 endpoints, 5 s into the
    /// sample's window.
    pub(crate) fn limits() -> Limits {
        Limits::new(1 << 30, 1000, Windows::new(60), START * 1000 + 5_000)
    }

    pub(crate) fn sample() -> SavedWindow {
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
    pub(crate) fn history() -> Vec<Reported> {
        (1..=5)
            .map(|i| Reported {
                window_start: START - i * 60,
                unique_count: i * 1000 + 7,
            })
            .collect()
    }

    pub(crate) fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("verve-state-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Writes `window` as a state file and loads it with `limits`.
    pub(crate) fn round_trip(
        name: &str,
        window: &SavedWindow,
        limits: &Limits,
    ) -> (PathBuf, Loaded) {
        let dir = temp_dir(name);
        let path = dir.join("window.state");
        save(&path, window, &[]).unwrap();
        let loaded = load(&path, limits).unwrap();
        (path, loaded)
    }

    pub(crate) fn refused(loaded: Loaded, why: &str) -> PathBuf {
        match loaded {
            Loaded::Refused { error, moved_to } => {
                assert!(format!("{error:#}").contains(why), "{error:#}");
                moved_to
            }
            other => panic!("{other:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{history, limits, sample, temp_dir, START};
    use super::*;

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
