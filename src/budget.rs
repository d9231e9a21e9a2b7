//! `--max-memory`: the budget for the id sets of every window held in memory (the open one,
//! sealed ones not reported yet, the cluster backlog), and its default.
//!
//! The request path cannot tell a new id from a repeat without looking into the window's
//! merged set, which belongs to the collector. So each id it records reserves
//! [`RESERVE_PER_ID`] bytes, an upper bound of what the id can take, from an allowance its
//! shard draws from the shared budget [`GRANT_BYTES`] at a time (so workers touch the shared
//! counter once per few thousand ids, never per request). When the collector merges the
//! shard's ids into the window's set it gives the reservations back and charges what the set
//! really grew by. Past the budget, a shard that cannot draw an allowance refuses the id:
//! a 503 `failed`, never an `ok` whose id could not be kept.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// Bytes reserved per recorded id until the collector merges it: a packed run spends at
/// most 8 bytes per id on its gap plus a share of the block and run headers (under 1 byte
/// at [`crate::ids::BATCH`] ids a run), and after the merge the window's set at most the
/// same. The rest is slack for the header of a run flushed early.
pub const RESERVE_PER_ID: u64 = 12;

/// What a shard draws from the budget at a time: about 5 000 ids' worth, so that two
/// workers recording 100 000 ids a second each touch the shared counter ~20 times a second.
pub const GRANT_BYTES: u64 = 64 * 1024;

/// The smallest `--max-memory`.
pub const MIN_BYTES: u64 = 1 << 20;

/// The share of the memory the process may use (cgroup limit, else physical memory) that
/// the default budget takes: ids are verve's only data that grows; the other half covers
/// the transient copy a merge makes, the coroutine stacks, the allocator's slack and the
/// other windows' endpoint tables.
pub const DEFAULT_SHARE: (u64, u64) = (1, 2);

/// The shared budget.
#[derive(Debug)]
pub struct IdMemory {
    /// `--max-memory`, bytes.
    limit: u64,
    /// Bytes taken: allowances drawn by shards (spent or not) and merged sets.
    used: AtomicU64,
    /// Ids refused because the budget was spent, since start.
    refused: AtomicU64,
}

impl IdMemory {
    pub fn new(limit: u64) -> Arc<IdMemory> {
        Arc::new(IdMemory {
            limit,
            used: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        })
    }

    /// No budget (tests, benchmarks, examples).
    pub fn unlimited() -> Arc<IdMemory> {
        IdMemory::new(u64::MAX)
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes taken now (the `verve_id_memory_bytes` gauge).
    pub fn used(&self) -> u64 {
        self.used.load(Relaxed)
    }

    /// Ids refused since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Relaxed)
    }

    pub(crate) fn count_refused(&self, ids: u64) {
        self.refused.fetch_add(ids, Relaxed);
    }

    /// Draws up to [`GRANT_BYTES`] for a shard's allowance; 0 when not even one id's
    /// reservation is left.
    pub(crate) fn draw(&self) -> u64 {
        let mut used = self.used.load(Relaxed);
        loop {
            let grant = self.limit.saturating_sub(used).min(GRANT_BYTES);
            if grant < RESERVE_PER_ID {
                return 0;
            }
            match self
                .used
                .compare_exchange_weak(used, used + grant, Relaxed, Relaxed)
            {
                Ok(_) => return grant,
                Err(now) => used = now,
            }
        }
    }

    /// Charges `bytes` whether or not they fit: a merge's growth, a restored window.
    pub(crate) fn charge(&self, bytes: u64) {
        self.used.fetch_add(bytes, Relaxed);
    }

    /// Gives back `bytes` charged or drawn before.
    pub(crate) fn release(&self, bytes: u64) {
        let _ = self
            .used
            .fetch_update(Relaxed, Relaxed, |u| Some(u.saturating_sub(bytes)));
    }
}

/// Bytes of a sealed window's sets, charged to the budget until the window is dropped.
#[derive(Debug, Default)]
pub struct Charge {
    memory: Option<Arc<IdMemory>>,
    bytes: u64,
}

impl Charge {
    pub(crate) fn new(memory: &Arc<IdMemory>, bytes: u64) -> Charge {
        Charge {
            memory: Some(memory.clone()),
            bytes,
        }
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if let Some(memory) = &self.memory {
            memory.release(self.bytes);
        }
    }
}

/// A charge is bookkeeping, not part of what a window is.
impl PartialEq for Charge {
    fn eq(&self, _: &Charge) -> bool {
        true
    }
}

/// Parses a `--max-memory` size: a whole number with an optional unit, `B`, `KiB`, `MiB`,
/// `GiB`, `TiB` (or `K`, `M`, `G`, `T`, also 1024-based, as systemd reads them), at least
/// [`MIN_BYTES`].
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size such as 512MiB or 2GiB"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        "t" | "tib" => 40,
        _ => {
            return Err(format!(
                "unit {unit:?} of {text:?} is not one of B, KiB, MiB, GiB, TiB"
            ))
        }
    };
    let bytes = number
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))?;
    if bytes < MIN_BYTES {
        return Err(format!("{text:?} is below the smallest budget, 1MiB"));
    }
    Ok(bytes)
}

/// The default budget: [`DEFAULT_SHARE`] of the cgroup v2 `memory.max` of this process when
/// one is set, else of the physical memory; `None` when neither can be read.
pub fn default_limit() -> Option<u64> {
    let (num, den) = DEFAULT_SHARE;
    let available = cgroup_limit().or_else(physical_memory)?;
    Some((available / den * num).max(MIN_BYTES))
}

/// `memory.max` of this process's cgroup (v2), when it is a number.
fn cgroup_limit() -> Option<u64> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    // cgroup v2: the one line `0::/path`.
    let path = cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
    let max = std::fs::read_to_string(format!("/sys/fs/cgroup{}/memory.max", path.trim())).ok()?;
    max.trim().parse().ok()
}

/// `MemTotal` from `/proc/meminfo`, bytes.
fn physical_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units_and_a_floor() {
        assert_eq!(parse_size("8MiB"), Ok(8 << 20));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("1 tib"), Ok(1 << 40));
        for bad in [
            "",
            "MiB",
            "1.5GiB",
            "-1GiB",
            "12 parsecs",
            "1KiB",
            "99999999999TiB",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn draws_stop_at_the_limit_and_releases_make_room_again() {
        let m = IdMemory::new(GRANT_BYTES + 100);
        assert_eq!(m.draw(), GRANT_BYTES);
        assert_eq!(m.draw(), 100);
        assert_eq!(m.draw(), 0, "less than one id's reservation left");
        assert_eq!(m.used(), m.limit());
        m.release(GRANT_BYTES);
        assert_eq!(m.draw(), GRANT_BYTES);
        m.charge(10);
        assert_eq!(m.used(), GRANT_BYTES + 110);
        m.release(u64::MAX);
        assert_eq!(m.used(), 0);
    }

    #[test]
    fn a_charge_is_released_when_dropped() {
        let m = IdMemory::new(1 << 30);
        m.charge(500);
        let c = Charge::new(&m, 500);
        assert_eq!(c.bytes(), 500);
        drop(c);
        assert_eq!(m.used(), 0);
        drop(Charge::default());
    }

    #[test]
    fn the_default_is_a_share_of_what_this_machine_has() {
        let limit = default_limit().expect("Linux has /proc/meminfo");
        assert!(limit >= MIN_BYTES);
        assert!(limit <= physical_memory().unwrap());
    }
}
