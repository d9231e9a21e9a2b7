//! What cluster mode keeps where in Redis: the key names of one deployment, under
//! `--redis-prefix` (`P`), for the window starting at `S` (epoch seconds) and its
//! partitions `p` (see [`crate::ids::partition`]), and the one value format several keys
//! share (a count).
//!
//! The layout has a version ([`LAYOUT`]), in the key names (`P:v2:...`) and in `P:layout`:
//! instances of another layout under the same prefix would ship where these never read,
//! and are refused at start-up, as instances with another `--interval` are.
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `P:v2:{wS}:shipped` | set | instances that made their last shipment of the window |
//! | `P:v2:{wS}:endpoints` | set | endpoints named anywhere in the cluster during the window |
//! | `P:v2:{wS}:lease` | string | the instance leading the window (its report), with an expiry |
//! | `P:v2:{wS}:frozen` | string | the leader that froze the window: later shipments are refused |
//! | `P:v2:{wS}:done` | string | the window's global count, once reported |
//! | `P:v2:{wS}:record` | string | the count of the window's Kafka record, until the broker acknowledged it |
//! | `P:v2:{wS}:record-owner` | string | the instance whose producer holds that record, with an expiry it renews |
//! | `P:v2:{wS.p.x}:ids` | list | shipments of partition `p`'s ids, each an id set's compact serialization of the partition's values |
//! | `P:v2:{wS.p.x}:frozen` | string | the partition's list no longer changes: later shipments of it are refused |
//! | `P:v2:{wS.p.x}:lease` | string | the instance counting the partition, with an expiry |
//! | `P:v2:{wS.p.x}:count` | string | the partition's count, once counted |
//! | `P:v2:windows` | sorted set | window start -> window start: the windows shipped and not reported yet, so that any instance can find one whose holders are all gone |
//! | `P:live` | sorted set | instance -> Redis's time (`TIME`, ms) at its last heartbeat |
//! | `P:interval` | string | the deployment's `--interval` and layout (`60 layout 2/16`), refreshed by every heartbeat |
//! | `P:layout` | string | the deployment's key layout ([`LAYOUT`]), refreshed by every heartbeat |
//!
//! `{...}` is a Redis Cluster hash tag: the keys of one window (and those of one partition of
//! it) live in one slot, so each operation on them is one atomic script, on Redis Cluster
//! too. The partitions of a window each have a slot of their own, spread evenly over the
//! 16384 slots (`x` is the first number that puts partition `p` in the `p`-th sixteenth of
//! them), so that a Redis Cluster whose nodes own equal ranges of slots holds about as
//! much of every window on each node, and no node most of it.

use crate::ids::partition::PARTITIONS;

/// The key layout: its version and how many partitions a window is cut into. Stored in
/// `P:layout`; another value there means instances that would not read what this one ships.
pub const LAYOUT: &str = "2/16";

/// Redis Cluster's slots.
const SLOTS: u32 = 16384;

/// The Redis Cluster slot of a hash tag's content.
pub fn slot(tag: &str) -> u16 {
    (u32::from(crc16::State::<crc16::XMODEM>::calculate(tag.as_bytes())) % SLOTS) as u16
}

/// The hash tag of partition `p` of the window starting at `window_start`: `wS.p.x`, with
/// the first `x` whose slot falls in the `p`-th of [`PARTITIONS`] equal ranges of slots. A
/// few dozen CRCs at most: about one in [`PARTITIONS`] numbers lands in each range.
pub fn partition_tag(window_start: u64, p: usize) -> String {
    let per = SLOTS / PARTITIONS as u32;
    let range = (p as u32 * per)..((p as u32 + 1) * per);
    (0u32..)
        .map(|x| format!("w{window_start}.{p}.{x}"))
        .find(|tag| range.contains(&u32::from(slot(tag))))
        .expect("some number lands in every range")
}

/// The key names of one deployment (`--redis-prefix`).
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    /// `--redis-prefix`, for messages.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn window(&self, window_start: u64, what: &str) -> String {
        format!("{}:v2:{{w{window_start}}}:{what}", self.prefix)
    }

    /// The keys of partition `p` of a window.
    pub fn partition(&self, window_start: u64, p: usize) -> PartitionKeys {
        let tag = partition_tag(window_start, p);
        let key = |what: &str| format!("{}:v2:{{{tag}}}:{what}", self.prefix);
        PartitionKeys {
            ids: key("ids"),
            frozen: key("frozen"),
            lease: key("lease"),
            count: key("count"),
        }
    }

    pub fn shipped(&self, window_start: u64) -> String {
        self.window(window_start, "shipped")
    }

    pub fn endpoints(&self, window_start: u64) -> String {
        self.window(window_start, "endpoints")
    }

    pub fn lease(&self, window_start: u64) -> String {
        self.window(window_start, "lease")
    }

    pub fn frozen(&self, window_start: u64) -> String {
        self.window(window_start, "frozen")
    }

    pub fn done(&self, window_start: u64) -> String {
        self.window(window_start, "done")
    }

    pub fn record(&self, window_start: u64) -> String {
        self.window(window_start, "record")
    }

    pub fn record_owner(&self, window_start: u64) -> String {
        self.window(window_start, "record-owner")
    }

    /// Every key of the window and of its partitions, as a `SCAN`/`KEYS` pattern: for
    /// messages.
    pub fn window_keys(&self, window_start: u64) -> String {
        format!("{}:v2:{{w{window_start}[.}}]*", self.prefix)
    }

    /// The windows shipped and not reported yet (see [`crate::cluster::orphans`]).
    pub fn windows(&self) -> String {
        format!("{}:v2:windows", self.prefix)
    }

    pub fn live(&self) -> String {
        format!("{}:live", self.prefix)
    }

    pub fn interval(&self) -> String {
        format!("{}:interval", self.prefix)
    }

    pub fn layout(&self) -> String {
        format!("{}:layout", self.prefix)
    }

    /// The start-up check's scratch key: under the prefix, so that a Redis user limited to
    /// the prefix's keys passes it.
    pub fn startup_check(&self) -> String {
        format!("{}:startup-check", self.prefix)
    }
}

/// The keys of one partition of one window (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionKeys {
    pub ids: String,
    pub frozen: String,
    pub lease: String,
    pub count: String,
}

/// A window's global count as `done` holds it: decimal digits only, no sign, no spaces, no
/// more than a `u64` (Redis's own `tonumber`-like parsing would take `1e3` or ` 7`).
pub fn parse_count(text: &[u8]) -> Option<u64> {
    if text.is_empty() || text.len() > 20 || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(text).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_of_a_window_spread_evenly_over_the_slots() {
        for start in [0u64, 60, 1_765_000_000, 1_765_000_060, u64::MAX / 2] {
            let keys = Keys::new("verve");
            let mut slots = Vec::new();
            for p in 0..PARTITIONS {
                let k = keys.partition(start, p);
                let tag = partition_tag(start, p);
                assert!(k.ids.contains(&format!("{{{tag}}}")) && k.count.ends_with(":count"));
                let slot = u32::from(slot(&tag));
                assert_eq!(slot / (SLOTS / PARTITIONS as u32), p as u32, "{tag}");
                slots.push(slot);
            }
            // Three masters with equal ranges (what `redis-cli --cluster create` makes): no
            // node holds more than 6 of the 16 partitions.
            for node in 0..3 {
                let owned = slots.iter().filter(|&&s| s * 3 / SLOTS == node).count();
                assert!(owned <= 6, "node {node}: {owned}");
            }
        }
    }

    #[test]
    fn slots_are_redis_clusters() {
        // Values given in the Redis Cluster specification and by `CLUSTER KEYSLOT`.
        assert_eq!(slot("123456789"), 0x31C3);
        assert_eq!(slot("foo"), 12182);
    }
}
