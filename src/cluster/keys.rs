//! What cluster mode keeps where in Redis: the key names of one deployment, under
//! `--redis-prefix` (`P`), for the window starting at `S` (epoch seconds), and the one value
//! format several keys share (a count).
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `P:{wS}:ids` | list | shipments of ids, each an id set's compact serialization, from every instance |
//! | `P:{wS}:shipped` | set | instances that made their last shipment of the window |
//! | `P:{wS}:endpoints` | set | endpoints named anywhere in the cluster during the window |
//! | `P:{wS}:lease` | string | the instance leading the window, with an expiry |
//! | `P:{wS}:frozen` | string | the leader that began its final read: later shipments are refused |
//! | `P:{wS}:done` | string | the window's global count, once reported |
//! | `P:{wS}:record` | string | the count of the window's Kafka record, until the broker acknowledged it |
//! | `P:{wS}:record-owner` | string | the instance whose producer holds that record, with an expiry it renews |
//! | `P:live` | sorted set | instance -> Redis's time (`TIME`, ms) at its last heartbeat |
//! | `P:interval` | string | the deployment's `--interval`, refreshed by every heartbeat |
//!
//! `{wS}` is a Redis Cluster hash tag: all keys of one window live in one slot, so each
//! operation on a window is one atomic script, on Redis Cluster too.

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
        format!("{}:{{w{window_start}}}:{what}", self.prefix)
    }

    pub fn ids(&self, window_start: u64) -> String {
        self.window(window_start, "ids")
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

    /// Every key of the window, as a `SCAN`/`KEYS` pattern: for messages.
    pub fn window_keys(&self, window_start: u64) -> String {
        self.window(window_start, "*")
    }

    pub fn live(&self) -> String {
        format!("{}:live", self.prefix)
    }

    pub fn interval(&self) -> String {
        format!("{}:interval", self.prefix)
    }

    /// The start-up check's scratch key: under the prefix, so that a Redis user limited to
    /// the prefix's keys passes it.
    pub fn startup_check(&self) -> String {
        format!("{}:startup-check", self.prefix)
    }
}

/// A window's global count as `done` holds it: decimal digits only, no sign, no spaces, no
/// more than a `u64` (Redis's own `tonumber`-like parsing would take `1e3` or ` 7`).
pub fn parse_count(text: &[u8]) -> Option<u64> {
    if text.is_empty() || text.len() > 20 || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(text).ok()?.parse().ok()
}
