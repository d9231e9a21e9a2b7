//! The state file's format: a journal. A header, then records, each framed with its length
//! and a CRC-32, appended about twice a second and synced; now and then the whole file is
//! rewritten as a snapshot of what is still live ([`Book::snapshot`]) and renamed over the
//! old one.
//!
//! A crash can cut the last record short or leave it half written: replay stops at the
//! first record whose frame or checksum is wrong, and everything before it stands. Records
//! only ever add to the state (ids and endpoints to a window, a window reported, a call
//! made, a Kafka record acknowledged), and adding one twice changes nothing, so a record
//! written again after a crash, or present both in a snapshot and after it, is harmless.
//!
//! | bytes | header field (integers little-endian) |
//! | --- | --- |
//! | 8 | magic `VERVEJ01` |
//! | 8 | `--interval` of the instance that wrote it, seconds (1 to 86 400) |
//! | 4 | CRC-32 of the 16 bytes before it |
//!
//! | bytes | record field |
//! | --- | --- |
//! | 4 | length of kind and payload |
//! | 4 | CRC-32 of kind and payload |
//! | 1 | kind, then its payload: |
//! | | 1 `ids`: window start (8), an id set in its compact format ([`IdSet::serialize_into`]): ids of the window, answered `ok` |
//! | | 2 `endpoint`: window start (8), URL (UTF-8, at most 2048 bytes): an endpoint named in the window |
//! | | 3 `reported`: window start (8), count (8), Kafka record due (1): the window's count line is written |
//! | | 4 `called`: window start (8), URL: the window's call to that endpoint is settled |
//! | | 5 `produced`: window start (8): the window's Kafka record is acknowledged (or given up) |
//!
//! **The file is untrusted input** (whoever can write its directory can put anything
//! there): every length is checked before anything is allocated, window starts must be
//! aligned to the interval and before year 10000, URLs are bounded, and the id sets are
//! decoded with a bound taken from `--max-memory` ([`Limits`]).

use std::collections::{BTreeMap, BTreeSet, HashSet};

use anyhow::{bail, ensure, Context};

use crate::clock::END_OF_RFC3339_SECS;
use crate::ids::bytes::Reader;
use crate::ids::IdSet;
use crate::query::MAX_ENDPOINT_BYTES;
use crate::status::{Reported, HISTORY_LEN};

/// The journal's magic: format version 1 of the journal.
pub const MAGIC: &[u8; 8] = b"VERVEJ01";

/// Bytes of the header: magic, interval, checksum.
pub const HEADER_BYTES: usize = 8 + 8 + 4;

/// Bytes of a record's frame before its kind: length and checksum.
const FRAME_BYTES: usize = 8;

/// Longest `--interval` (the flag's own limit).
const MAX_INTERVAL_SECS: u64 = 86_400;

const IDS: u8 = 1;
const ENDPOINT: u8 = 2;
const REPORTED: u8 = 3;
const CALLED: u8 = 4;
const PRODUCED: u8 = 5;

pub use crate::ids::DENSEST_IDS_PER_BYTE;

/// One record. Ids travel as the serialized set: the collector serializes, this thread
/// only frames and writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Ids {
        window_start: u64,
        set: Vec<u8>,
    },
    Endpoint {
        window_start: u64,
        url: String,
    },
    Reported {
        window_start: u64,
        count: u64,
        kafka: bool,
    },
    Called {
        window_start: u64,
        url: String,
    },
    Produced {
        window_start: u64,
    },
}

impl Record {
    /// The window the record is about.
    pub fn window_start(&self) -> u64 {
        match self {
            Record::Ids { window_start, .. }
            | Record::Endpoint { window_start, .. }
            | Record::Reported { window_start, .. }
            | Record::Called { window_start, .. }
            | Record::Produced { window_start } => *window_start,
        }
    }

    /// Appends the framed record to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let at = out.len();
        out.extend_from_slice(&[0; FRAME_BYTES]);
        let body = out.len();
        match self {
            Record::Ids { window_start, set } => {
                out.push(IDS);
                out.extend_from_slice(&window_start.to_le_bytes());
                out.extend_from_slice(set);
            }
            Record::Endpoint { window_start, url } | Record::Called { window_start, url } => {
                out.push(if matches!(self, Record::Endpoint { .. }) {
                    ENDPOINT
                } else {
                    CALLED
                });
                out.extend_from_slice(&window_start.to_le_bytes());
                out.extend_from_slice(url.as_bytes());
            }
            Record::Reported {
                window_start,
                count,
                kafka,
            } => {
                out.push(REPORTED);
                out.extend_from_slice(&window_start.to_le_bytes());
                out.extend_from_slice(&count.to_le_bytes());
                out.push(u8::from(*kafka));
            }
            Record::Produced { window_start } => {
                out.push(PRODUCED);
                out.extend_from_slice(&window_start.to_le_bytes());
            }
        }
        let len = (out.len() - body) as u32;
        let crc = crc32fast::hash(&out[body..]);
        out[at..at + 4].copy_from_slice(&len.to_le_bytes());
        out[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
    }

    /// Reads one record's kind and payload (its frame already checked), with the checks of
    /// the module doc.
    fn decode(body: &[u8], interval_secs: u64) -> anyhow::Result<Record> {
        let mut r = Reader::new(body);
        let kind = r.u8().context("an empty record")?;
        let window_start = r.u64().context("a record without its window start")?;
        let payload = r.rest();
        ensure!(
            window_start.is_multiple_of(interval_secs),
            "window start {window_start} is not a multiple of the interval ({interval_secs} s)"
        );
        ensure!(
            window_start < END_OF_RFC3339_SECS,
            "window start {window_start} is after the year 9999"
        );
        let url = |payload: &[u8]| -> anyhow::Result<String> {
            ensure!(
                payload.len() <= MAX_ENDPOINT_BYTES,
                "an endpoint of {} bytes",
                payload.len()
            );
            Ok(std::str::from_utf8(payload)
                .context("an endpoint that is not UTF-8")?
                .to_owned())
        };
        Ok(match kind {
            IDS => Record::Ids {
                window_start,
                set: payload.to_vec(),
            },
            ENDPOINT => Record::Endpoint {
                window_start,
                url: url(payload)?,
            },
            CALLED => Record::Called {
                window_start,
                url: url(payload)?,
            },
            REPORTED => {
                ensure!(
                    payload.len() == 9,
                    "a reported record of {} bytes",
                    body.len()
                );
                let count = r.u64()?;
                let kafka = r.u8()?;
                ensure!(kafka <= 1, "a Kafka flag of {kafka}");
                Record::Reported {
                    window_start,
                    count,
                    kafka: kafka == 1,
                }
            }
            PRODUCED => {
                ensure!(payload.is_empty(), "a produced record with a payload");
                Record::Produced { window_start }
            }
            other => bail!("a record of unknown kind {other}"),
        })
    }
}

/// The header of a journal written by an instance with `interval_secs`.
pub fn header(interval_secs: u64) -> [u8; HEADER_BYTES] {
    let mut h = [0; HEADER_BYTES];
    h[..8].copy_from_slice(MAGIC);
    h[8..16].copy_from_slice(&interval_secs.to_le_bytes());
    let crc = crc32fast::hash(&h[..16]);
    h[16..].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Whether `bytes` start like a journal (rather than a state file of the older, single
/// snapshot format).
pub fn is_journal(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

/// A reported window whose deliveries are not all done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undelivered {
    pub count: u64,
    /// Endpoints named in the window whose call is not settled yet.
    pub calls: BTreeSet<String>,
    /// Its Kafka record is not acknowledged yet.
    pub kafka: bool,
}

/// What the journal says besides the ids: the endpoints of the windows not reported yet,
/// the reported windows with deliveries still to make, and the history of reported windows.
/// The writer keeps one up to date as it writes, so that a snapshot needs from the collector
/// only the ids; replay builds one from the file.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Book {
    /// Windows not reported: their endpoints, in the order named.
    pub open: BTreeMap<u64, Vec<String>>,
    /// Reported windows with calls or a Kafka record still due, oldest first.
    pub undelivered: BTreeMap<u64, Undelivered>,
    /// The last [`HISTORY_LEN`] reported windows, oldest first.
    pub history: BTreeMap<u64, u64>,
}

impl Book {
    /// Takes `record` into account. Ids are the caller's business (they are not kept here).
    /// Returns false for a record that adds nothing (already known): the writer skips it.
    pub fn apply(&mut self, record: &Record) -> bool {
        match record {
            Record::Ids { window_start, .. } => {
                if self.is_reported(*window_start) {
                    return false;
                }
                self.open.entry(*window_start).or_default();
                true
            }
            Record::Endpoint { window_start, url } => {
                if self.is_reported(*window_start) {
                    return false;
                }
                let endpoints = self.open.entry(*window_start).or_default();
                if endpoints.iter().any(|e| e == url) {
                    return false;
                }
                endpoints.push(url.clone());
                true
            }
            Record::Reported {
                window_start,
                count,
                kafka,
            } => {
                if self.is_reported(*window_start) {
                    return false;
                }
                let calls: BTreeSet<String> = self
                    .open
                    .remove(window_start)
                    .unwrap_or_default()
                    .into_iter()
                    .collect();
                self.history.insert(*window_start, *count);
                while self.history.len() > HISTORY_LEN {
                    self.history.pop_first();
                }
                if !calls.is_empty() || *kafka {
                    self.undelivered.insert(
                        *window_start,
                        Undelivered {
                            count: *count,
                            calls,
                            kafka: *kafka,
                        },
                    );
                }
                true
            }
            Record::Called { window_start, url } => {
                let Some(u) = self.undelivered.get_mut(window_start) else {
                    return false;
                };
                let removed = u.calls.remove(url);
                self.settle(*window_start);
                removed
            }
            Record::Produced { window_start } => {
                let Some(u) = self.undelivered.get_mut(window_start) else {
                    return false;
                };
                let was = std::mem::replace(&mut u.kafka, false);
                self.settle(*window_start);
                was
            }
        }
    }

    /// Whether `window_start` was reported (as far as this book remembers: the history and
    /// the windows with deliveries due).
    pub fn is_reported(&self, window_start: u64) -> bool {
        self.history.contains_key(&window_start) || self.undelivered.contains_key(&window_start)
    }

    /// Forgets a reported window once everything for it is delivered.
    fn settle(&mut self, window_start: u64) {
        if self
            .undelivered
            .get(&window_start)
            .is_some_and(|u| u.calls.is_empty() && !u.kafka)
        {
            self.undelivered.remove(&window_start);
        }
    }

    /// The history as the status page keeps it: newest first.
    pub fn history_newest_first(&self) -> Vec<Reported> {
        self.history
            .iter()
            .rev()
            .map(|(&window_start, &unique_count)| Reported {
                window_start,
                unique_count,
            })
            .collect()
    }

    /// The records that say everything this book says (ids aside): what a snapshot holds
    /// after the ids of the open windows. Replaying them gives an equal book.
    pub fn snapshot(&self) -> Vec<Record> {
        let mut records = Vec::new();
        for (&window_start, endpoints) in &self.open {
            for url in endpoints {
                records.push(Record::Endpoint {
                    window_start,
                    url: url.clone(),
                });
            }
        }
        // Reported windows, oldest first: those with deliveries due carry their endpoints
        // first, so that their `reported` record turns them into calls to make.
        let mut starts: BTreeSet<u64> = self.history.keys().copied().collect();
        starts.extend(self.undelivered.keys().copied());
        for window_start in starts {
            let (count, kafka) = match self.undelivered.get(&window_start) {
                Some(u) => {
                    for url in &u.calls {
                        records.push(Record::Endpoint {
                            window_start,
                            url: url.clone(),
                        });
                    }
                    (u.count, u.kafka)
                }
                None => (self.history[&window_start], false),
            };
            records.push(Record::Reported {
                window_start,
                count,
                kafka,
            });
        }
        records
    }
}

/// What the journal may hold: the instance's settings.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `--max-memory`: the ids of the windows not reported must fit in it once decoded.
    pub max_id_bytes: u64,
}

/// What a replay found.
#[derive(Debug, Default)]
pub struct Replayed {
    /// The `--interval` the journal was written with.
    pub interval_secs: u64,
    /// The ids of each window not reported.
    pub ids: BTreeMap<u64, IdSet>,
    pub book: Book,
    /// Records read.
    pub records: u64,
    /// Why replay stopped before the end of the file, and how many bytes it left unread: a
    /// record cut short by a crash (expected, at most the last one), or damage.
    pub torn: Option<(String, usize)>,
}

/// Reads a whole journal. An error is for a file that is not a journal at all (its header);
/// a bad record ends the replay there ([`Replayed::torn`]), keeping what came before.
pub fn replay(bytes: &[u8], limits: &Limits) -> anyhow::Result<Replayed> {
    ensure!(
        bytes.len() >= HEADER_BYTES,
        "too short ({} bytes)",
        bytes.len()
    );
    ensure!(is_journal(bytes), "not a verve journal (bad magic)");
    ensure!(
        crc32fast::hash(&bytes[..16]).to_le_bytes() == bytes[16..20],
        "the header's checksum is wrong"
    );
    let interval_secs = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    ensure!(
        (1..=MAX_INTERVAL_SECS).contains(&interval_secs),
        "interval of {interval_secs} s"
    );
    let mut replayed = Replayed {
        interval_secs,
        ..Replayed::default()
    };
    let max_ids = limits.max_id_bytes.saturating_mul(DENSEST_IDS_PER_BYTE);
    let mut held_bytes = 0u64;
    let mut at = HEADER_BYTES;
    while at < bytes.len() {
        match next_record(&bytes[at..], interval_secs) {
            Ok((record, used)) => {
                if let Err(e) = take(&mut replayed, record, max_ids, &mut held_bytes, limits) {
                    replayed.torn = Some((format!("{e:#}"), bytes.len() - at));
                    break;
                }
                replayed.records += 1;
                at += used;
            }
            Err(e) => {
                replayed.torn = Some((format!("{e:#}"), bytes.len() - at));
                break;
            }
        }
    }
    Ok(replayed)
}

/// The record at the front of `bytes` and the bytes it takes.
fn next_record(bytes: &[u8], interval_secs: u64) -> anyhow::Result<(Record, usize)> {
    let mut r = Reader::new(bytes);
    let frame = || format!("a record frame cut short ({} bytes)", bytes.len());
    let len = r.u32().with_context(frame)? as usize;
    let crc = r.u32().with_context(frame)?;
    let body = r
        .take(len)
        .with_context(|| format!("a record of {len} bytes cut short"))?;
    ensure!(crc32fast::hash(body) == crc, "a record's checksum is wrong");
    Ok((Record::decode(body, interval_secs)?, FRAME_BYTES + len))
}

/// Applies `record` to what the replay holds, decoding ids within the budget.
fn take(
    replayed: &mut Replayed,
    record: Record,
    max_ids: u64,
    held_bytes: &mut u64,
    limits: &Limits,
) -> anyhow::Result<()> {
    if let Record::Ids { window_start, set } = &record {
        if replayed.book.is_reported(*window_start) {
            return Ok(());
        }
        let delta = IdSet::deserialize_bounded(set, max_ids).context("an id set")?;
        let held = replayed.ids.entry(*window_start).or_default();
        let before = held.heap_bytes() as u64;
        *held = IdSet::union(std::mem::take(held), delta, None);
        *held_bytes = (*held_bytes + held.heap_bytes() as u64).saturating_sub(before);
        ensure!(
            *held_bytes <= limits.max_id_bytes,
            "its ids take more than --max-memory allows ({} bytes); restart with a larger \
             --max-memory to count them",
            limits.max_id_bytes
        );
    }
    if let Record::Reported { window_start, .. } = &record {
        if let Some(ids) = replayed.ids.remove(window_start) {
            *held_bytes = held_bytes.saturating_sub(ids.heap_bytes() as u64);
        }
    }
    replayed.book.apply(&record);
    Ok(())
}

/// Whether a replayed book's reported windows and ids agree: a window is either held (ids,
/// not reported) or reported, never both. Used by tests and the fuzz target.
pub fn consistent(replayed: &Replayed) -> bool {
    let held: HashSet<u64> = replayed.ids.keys().copied().collect();
    held.iter().all(|w| !replayed.book.is_reported(*w))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-18T17:46:00Z, a window start for 60 s windows.
    const START: u64 = 1_794_999_960;

    fn limits() -> Limits {
        Limits {
            max_id_bytes: 1 << 30,
        }
    }

    fn ids(set: &IdSet) -> Vec<u8> {
        let mut out = Vec::new();
        set.serialize_into(&mut out);
        out
    }

    fn journal(records: &[Record]) -> Vec<u8> {
        let mut out = header(60).to_vec();
        for r in records {
            r.encode_into(&mut out);
        }
        out
    }

    fn sample() -> Vec<Record> {
        vec![
            Record::Ids {
                window_start: START,
                set: ids(&IdSet::from_ids([1, 2, 3])),
            },
            Record::Endpoint {
                window_start: START,
                url: "http://a.test/".into(),
            },
            Record::Ids {
                window_start: START,
                set: ids(&IdSet::from_ids([3, 4, i64::MIN])),
            },
            Record::Endpoint {
                window_start: START,
                url: "http://b.test/".into(),
            },
            Record::Reported {
                window_start: START,
                count: 5,
                kafka: true,
            },
            Record::Called {
                window_start: START,
                url: "http://a.test/".into(),
            },
            Record::Ids {
                window_start: START + 60,
                set: ids(&IdSet::from_ids([7])),
            },
            Record::Endpoint {
                window_start: START + 60,
                url: "http://c.test/".into(),
            },
        ]
    }

    #[test]
    fn a_replay_gives_the_open_windows_ids_and_what_is_left_to_deliver() {
        let r = replay(&journal(&sample()), &limits()).unwrap();
        assert_eq!(r.interval_secs, 60);
        assert!(r.torn.is_none());
        assert_eq!(r.records, 8);
        assert_eq!(r.ids.len(), 1, "the reported window's ids are not kept");
        assert_eq!(r.ids[&(START + 60)], IdSet::from_ids([7]));
        assert_eq!(r.book.open[&(START + 60)], ["http://c.test/"]);
        let u = &r.book.undelivered[&START];
        assert_eq!(u.count, 5);
        assert!(u.kafka);
        assert_eq!(u.calls.iter().collect::<Vec<_>>(), ["http://b.test/"]);
        assert_eq!(r.book.history[&START], 5);
        assert!(consistent(&r));
    }

    #[test]
    fn records_written_twice_change_nothing() {
        let mut twice = sample();
        twice.extend(sample());
        let once = replay(&journal(&sample()), &limits()).unwrap();
        let again = replay(&journal(&twice), &limits()).unwrap();
        assert_eq!(once.book, again.book);
        assert_eq!(once.ids, again.ids);
    }

    #[test]
    fn a_window_is_forgotten_once_delivered_and_stays_in_the_history() {
        let mut records = sample();
        records.push(Record::Called {
            window_start: START,
            url: "http://b.test/".into(),
        });
        records.push(Record::Produced {
            window_start: START,
        });
        let r = replay(&journal(&records), &limits()).unwrap();
        assert!(r.book.undelivered.is_empty());
        assert_eq!(r.book.history_newest_first()[0].unique_count, 5);
    }

    #[test]
    fn a_snapshot_replays_to_the_same_book() {
        let r = replay(&journal(&sample()), &limits()).unwrap();
        let mut records: Vec<Record> = r
            .ids
            .iter()
            .map(|(&window_start, set)| Record::Ids {
                window_start,
                set: ids(set),
            })
            .collect();
        records.extend(r.book.snapshot());
        let again = replay(&journal(&records), &limits()).unwrap();
        assert_eq!(again.book, r.book);
        assert_eq!(again.ids, r.ids);
    }

    #[test]
    fn a_torn_tail_keeps_every_whole_record_before_it() {
        let bytes = journal(&sample());
        let whole = replay(&bytes, &limits()).unwrap();
        // Where each record ends.
        let mut ends = vec![HEADER_BYTES];
        let mut out = header(60).to_vec();
        for r in sample() {
            r.encode_into(&mut out);
            ends.push(out.len());
        }
        // Cut anywhere: the whole records before the cut stand, nothing after it is invented.
        for len in HEADER_BYTES..bytes.len() {
            let r = replay(&bytes[..len], &limits()).unwrap();
            let whole_before = ends.iter().filter(|&&e| e <= len).count() as u64 - 1;
            assert_eq!(r.records, whole_before, "cut at {len}");
            assert_eq!(r.torn.is_some(), !ends.contains(&len), "cut at {len}");
            assert!(consistent(&r));
        }
        // A flipped byte in the last record: the records before it stand.
        let mut bad = bytes.clone();
        let last = bad.len() - 2;
        bad[last] ^= 0x20;
        let r = replay(&bad, &limits()).unwrap();
        assert_eq!(r.records, whole.records - 1);
        assert!(r.torn.unwrap().0.contains("checksum"));
    }

    #[test]
    fn what_verve_never_writes_is_refused() {
        // The header.
        assert!(replay(b"VERVEJ01", &limits()).is_err());
        let mut h = header(60);
        h[3] ^= 1;
        assert!(replay(&h, &limits()).is_err());
        assert!(replay(&header(0), &limits()).is_err());
        assert!(replay(&header(86_401), &limits()).is_err());
        // Records: each stops the replay where it stands.
        for (record, why) in [
            (
                Record::Produced {
                    window_start: START + 7,
                },
                "not a multiple",
            ),
            (
                Record::Produced {
                    window_start: END_OF_RFC3339_SECS / 60 * 60 + 60,
                },
                "after the year 9999",
            ),
            (
                Record::Endpoint {
                    window_start: START,
                    url: "x".repeat(MAX_ENDPOINT_BYTES + 1),
                },
                "an endpoint of",
            ),
        ] {
            let r = replay(&journal(&[record]), &limits()).unwrap();
            assert_eq!(r.records, 0);
            assert!(r.torn.unwrap().0.contains(why), "{why}");
        }
    }

    #[test]
    fn ids_beyond_the_memory_budget_stop_the_replay() {
        let big = IdSet::from_ids((0..100_000).map(|i| i * 1_000_003));
        let records = [Record::Ids {
            window_start: START,
            set: ids(&big),
        }];
        let tight = Limits {
            max_id_bytes: big.heap_bytes() as u64 / 2,
        };
        let r = replay(&journal(&records), &tight).unwrap();
        assert!(r.torn.unwrap().0.contains("--max-memory"));
        // A dense set that would expand past what the budget could ever hold is refused
        // before it is expanded.
        let dense = IdSet::from_ids(0..1_000_000);
        let records = [Record::Ids {
            window_start: START,
            set: ids(&dense),
        }];
        let small = Limits { max_id_bytes: 1000 };
        let r = replay(&journal(&records), &small).unwrap();
        assert_eq!(r.records, 0);
        assert!(r.ids.is_empty());
    }
}
