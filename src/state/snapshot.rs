//! The single-snapshot state file (`VERVEST3`): one window not reported, its endpoints and
//! the history of reported windows, as the build before the journal wrote it at a graceful
//! stop. It is still read at start (a file the previous build left), and written only by
//! [`save`] for tests and by hand-crafted files; the live format is the journal
//! ([`super::journal`]).
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

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use anyhow::{ensure, Context};

use super::{create_private, sync_dir, tmp_path};
use crate::clock::END_OF_RFC3339_SECS;
use crate::ids::bytes::Reader;
use crate::ids::IdSet;
use crate::query::MAX_ENDPOINT_BYTES;
use crate::status::Reported;

const MAGIC: &[u8; 8] = b"VERVEST3";

/// Most reported windows a state file may hold: far more than the history keeps
/// ([`crate::status::HISTORY_LEN`]), so that a later version keeping more is still read.
pub(super) const MAX_HISTORY: u32 = 4096;

/// Bytes of one reported window: its start and its count.
const REPORTED_BYTES: u64 = 16;

/// Most endpoints a state file may list: far above `--max-endpoints`' useful range, low enough
/// that a corrupt count cannot make the loader allocate without bound.
pub(super) const MAX_ENDPOINTS: u32 = 1 << 20;

/// Longest `--interval` (the flag's own limit): a longer one is not a file verve wrote.
const MAX_INTERVAL_SECS: u64 = 86_400;

/// Bytes of a file around its id set and endpoints: magic, interval, window start, endpoint
/// count, set length, the history (its length and the most entries), checksum.
pub(super) const FRAME_BYTES: u64 =
    8 + 8 + 8 + 4 + 8 + (4 + MAX_HISTORY as u64 * REPORTED_BYTES) + 4;

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
    /// and tests; [`load`](super::load) is what the server calls. The bytes are untrusted: every count and
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::testing::{history, sample, START};

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
}
