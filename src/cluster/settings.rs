//! What the cluster thread is told at start-up ([`Settings`]), and the periods it keeps:
//! how often it ships, heartbeats and reconnects, and how long a silent instance or a
//! leader's lease is trusted.

use std::time::Duration;

use crate::clock::Windows;
use crate::cluster::conn::Target;
use crate::cluster::keys::Keys;

/// How often the thread looks at its windows and the channel.
pub const TICK: Duration = Duration::from_millis(100);
/// How often the open window's new ids are shipped: what a hard crash can lose. Below a
/// second by the thread's [`TICK`] and room for the shipment itself, so that an id answered
/// `ok` is in Redis within a second, as docs/failures.md promises (*Cluster mode*).
pub const SHIP_EVERY: Duration = Duration::from_millis(800);
pub const HEARTBEAT_EVERY: Duration = Duration::from_millis(500);
pub use crate::cluster::presence::LIVE_TTL;
/// A leader that stops renewing its lease (it died, or hangs) is replaced after this long.
pub const LEASE: Duration = Duration::from_secs(5);
pub const RECONNECT_EVERY: Duration = Duration::from_millis(500);
/// How long a stopping instance keeps the windows it handed over after it shipped them last
/// (see `cluster/linger.rs`): Redis's `appendfsync everysec` writes to disk at least this
/// often, a lagging disk included.
pub const LINGER: Duration = Duration::from_secs(2);

/// How long a window's keys live: long enough that a window shipped late from a full
/// backlog still finds its `done` mark (and is refused rather than reported twice). The
/// claims on the prefix (`P:interval`, `P:layout`) live as long after the last heartbeat, so
/// that no instance with another interval or key layout starts while those keys are there.
pub fn key_ttl(window: Duration, backlog: usize, grace: Duration) -> Duration {
    window * (backlog as u32 + 3) + grace + Duration::from_secs(60)
}

/// What the cluster thread needs to know.
#[derive(Debug, Clone)]
pub struct Settings {
    pub target: Target,
    pub keys: Keys,
    /// `--instance-id`.
    pub instance: String,
    /// `--cluster-grace`.
    pub grace: Duration,
    /// `--cluster-backlog`.
    pub backlog: usize,
    pub windows: Windows,
}

impl Settings {
    /// See [`key_ttl`].
    pub fn key_ttl(&self) -> Duration {
        key_ttl(self.windows.length(), self.backlog, self.grace)
    }
}
