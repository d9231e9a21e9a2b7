//! `--state-file`: the open window saved at shutdown and picked up at the next start, so a
//! restart (a deploy, a config change) loses no id and the window still gets one exact count.
//!
//! The file is written to `PATH.tmp`, synced, renamed over `PATH` and the directory synced:
//! a crash at any point leaves either the old file, no file, or the whole new one, never a
//! torn one. A checksum guards against everything else (a truncated copy, a bad disk).
//!
//! Layout, all integers little-endian:
//!
//! | bytes | field |
//! | --- | --- |
//! | 8 | magic `VERVEST2` (format version 2; version 1, `VERVEST1`, is still read) |
//! | 8 | `--interval` of the instance that saved it, seconds |
//! | 8 | window start, seconds since the epoch |
//! | 4 | number of endpoints, then per endpoint: 4-byte length, UTF-8 URL |
//! | 8 | length of the id set, then the set in its compact format ([`IdSet::serialize_into`]; version 1 held roaring's portable treemap format, which [`IdSet::deserialize`] also reads) |
//! | 4 | CRC-32 of everything before it |

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context};

use crate::ids::IdSet;

const MAGIC: &[u8; 8] = b"VERVEST2";

/// The magic of format version 1: the same layout with a roaring id set.
const MAGIC_V1: &[u8; 8] = b"VERVEST1";

/// Most endpoints a state file may list: far above `--max-endpoints`' useful range, low enough
/// that a corrupt count cannot make the loader allocate without bound.
const MAX_ENDPOINTS: u32 = 1 << 20;

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
    fn encode(&self) -> io::Result<Vec<u8>> {
        let set_bytes = self.ids.serialized_size();
        let mut out = Vec::with_capacity(64 + set_bytes);
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
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        Ok(out)
    }

    fn decode(bytes: &[u8]) -> anyhow::Result<SavedWindow> {
        ensure!(
            bytes.len() >= MAGIC.len() + 4,
            "too short ({} bytes)",
            bytes.len()
        );
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        ensure!(
            body.starts_with(MAGIC) || body.starts_with(MAGIC_V1),
            "not a verve state file (bad magic)"
        );
        ensure!(
            crc32fast::hash(body).to_le_bytes() == crc,
            "checksum mismatch (truncated or damaged)"
        );
        let mut r = Reader(&body[MAGIC.len()..]);
        let interval_secs = r.u64()?;
        let window_start = r.u64()?;
        ensure!(interval_secs > 0, "interval 0");
        let count = r.u32()?;
        ensure!(count <= MAX_ENDPOINTS, "{count} endpoints");
        let mut endpoints = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let len = r.u32()? as usize;
            let url = std::str::from_utf8(r.take(len)?).context("endpoint is not UTF-8")?;
            endpoints.push(url.to_owned());
        }
        let len = r.u64()?;
        let set = r.take(usize::try_from(len).context("id set length")?)?;
        let ids = IdSet::deserialize(set).context("id set")?;
        ensure!(r.0.is_empty(), "{} trailing bytes", r.0.len());
        Ok(SavedWindow {
            interval_secs,
            window_start,
            ids,
            endpoints,
        })
    }
}

/// Reads fixed fields off the front of a byte slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> anyhow::Result<&'a [u8]> {
        if n > self.0.len() {
            bail!("truncated: {n} bytes wanted, {} left", self.0.len());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u32(&mut self) -> anyhow::Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> anyhow::Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    PathBuf::from(tmp)
}

/// Writes `window` to `path` atomically (see the module doc).
pub fn save(path: &Path, window: &SavedWindow) -> anyhow::Result<()> {
    let bytes = window.encode().context("serializing the window")?;
    let tmp = tmp_path(path);
    let write = || -> io::Result<()> {
        let mut file = File::create(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()
    };
    if let Err(e) = write() {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", tmp.display()));
    }
    fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    // The rename is only durable once the directory is: without this a power cut can bring
    // back the old directory entry.
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing directory {}", dir.display()))?;
    Ok(())
}

/// Fails unless a state file can be written at `path` (its directory exists and is
/// writable): checked at start-up, so that a wrong path is found then, not at shutdown.
pub fn check_writable(path: &Path) -> anyhow::Result<()> {
    let tmp = tmp_path(path);
    File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    fs::remove_file(&tmp).with_context(|| format!("cannot remove {}", tmp.display()))?;
    Ok(())
}

/// What [`load`] found.
#[derive(Debug)]
pub enum Loaded {
    /// No state file: a normal start.
    Nothing,
    /// A saved window, read and removed from disk: it lives in memory from now on.
    Window(SavedWindow),
    /// A file that could not be read as a state file; it was renamed to `moved_to` so that
    /// it is kept for inspection and not read again at every start.
    Unreadable {
        error: anyhow::Error,
        moved_to: PathBuf,
    },
}

/// Reads and removes the state file at `path`. Errors are for what stops the start-up (the
/// file exists but cannot be read or removed); a damaged file is [`Loaded::Unreadable`].
pub fn load(path: &Path) -> anyhow::Result<Loaded> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Loaded::Nothing),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    match SavedWindow::decode(&bytes) {
        Ok(window) => {
            // Removed now: the ids are in memory, and a file left behind would be read again
            // after a later crash and reported a second time if its window had been reported.
            fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
            Ok(Loaded::Window(window))
        }
        Err(error) => {
            let mut moved = path.as_os_str().to_owned();
            moved.push(".unreadable");
            let moved_to = PathBuf::from(moved);
            fs::rename(path, &moved_to).with_context(|| {
                format!(
                    "{} is unreadable ({error:#}) and cannot be moved to {}",
                    path.display(),
                    moved_to.display()
                )
            })?;
            Ok(Loaded::Unreadable { error, moved_to })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SavedWindow {
        let ids = IdSet::from_ids(
            [i64::MIN, -1, 0, 7, u32::MAX as i64, 1 << 40, i64::MAX]
                .into_iter()
                .chain((0..100_000).map(|i| i * 37)),
        );
        SavedWindow {
            interval_secs: 60,
            window_start: 1_795_000_000,
            ids,
            endpoints: vec!["http://a.test/cb".into(), "https://b.test/x?y=1".into()],
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("verve-state-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn save_then_load_gives_the_same_window_and_removes_the_file() {
        let dir = temp_dir("roundtrip");
        let path = dir.join("window.state");
        save(&path, &sample()).unwrap();
        assert!(!tmp_path(&path).exists());
        match load(&path).unwrap() {
            Loaded::Window(w) => assert_eq!(w, sample()),
            other => panic!("{other:?}"),
        }
        assert!(!path.exists());
        assert!(matches!(load(&path).unwrap(), Loaded::Nothing));
    }

    #[test]
    fn a_file_of_format_version_1_is_still_read() {
        let window = sample();
        let mut tree = Vec::new();
        window.ids.to_treemap().serialize_into(&mut tree).unwrap();
        let mut v1 = Vec::new();
        v1.extend_from_slice(MAGIC_V1);
        v1.extend_from_slice(&window.interval_secs.to_le_bytes());
        v1.extend_from_slice(&window.window_start.to_le_bytes());
        v1.extend_from_slice(&(window.endpoints.len() as u32).to_le_bytes());
        for e in &window.endpoints {
            v1.extend_from_slice(&(e.len() as u32).to_le_bytes());
            v1.extend_from_slice(e.as_bytes());
        }
        v1.extend_from_slice(&(tree.len() as u64).to_le_bytes());
        v1.extend_from_slice(&tree);
        let crc = crc32fast::hash(&v1);
        v1.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(SavedWindow::decode(&v1).unwrap(), window);
        // And the current format is smaller for the same window.
        assert!(window.encode().unwrap().len() < v1.len());
    }

    #[test]
    fn every_truncation_and_any_flipped_byte_is_refused() {
        let bytes = sample().encode().unwrap();
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
        match load(&path).unwrap() {
            Loaded::Unreadable { moved_to, .. } => {
                assert_eq!(fs::read(&moved_to).unwrap(), b"not a state file");
            }
            other => panic!("{other:?}"),
        }
        assert!(!path.exists());
    }

    #[test]
    fn a_failed_write_leaves_the_previous_file_intact() {
        let dir = temp_dir("failed-write");
        let path = dir.join("window.state");
        save(&path, &sample()).unwrap();
        // A directory where the temporary file should go makes the write fail.
        fs::create_dir(tmp_path(&path)).unwrap();
        let mut other = sample();
        other.window_start += 60;
        assert!(save(&path, &other).is_err());
        fs::remove_dir(tmp_path(&path)).unwrap();
        match load(&path).unwrap() {
            Loaded::Window(w) => assert_eq!(w, sample()),
            other => panic!("{other:?}"),
        }
    }
}
