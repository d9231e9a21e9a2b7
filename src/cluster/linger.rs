//! A graceful stop's last duty: the windows it left to the other instances must be on Redis's
//! disk before their ids leave this process.
//!
//! Redis answers a write once it is in memory; with `appendfsync everysec` (the usual setting)
//! it is on disk within about a second, two when the disk lags. A stopping instance that exits
//! right after its last shipments leaves those ids in Redis's memory alone: a Redis crash in
//! the next second or two loses them, and no process holds them any more (the instances it left
//! the windows to hold none of their ids). So it keeps the windows it handed over for
//! [`LINGER`](crate::cluster::settings::LINGER) after its last shipment, within the shutdown
//! budget, and watches its connection: if Redis went away meanwhile (a crash closes every
//! connection), it connects again, puts back the `done` marks it knows, ships every one of
//! those windows again, whole, and waits [`LINGER`](crate::cluster::settings::LINGER) anew.
//! Leaders trust nothing for `--cluster-grace` after their own reconnect, which leaves it the
//! time.

use std::time::Instant;

use crate::clock::rfc3339_secs;
use crate::cluster::conn;
use crate::cluster::node::Node;
use crate::cluster::settings::TICK;
use crate::cluster::ship::{ship_window, Load};
use crate::cluster::store;
use crate::logging::sanitize;

impl Node {
    /// Shutdown: window `start`, handed over to the other instances, leaves the backlog but
    /// stays in memory until [`Node::linger`] is over.
    pub(crate) fn handed_over(&mut self, start: u64) {
        if let Some(held) = self.backlog.remove(start) {
            if !held.is_adopted() {
                self.lingering.push(held, Instant::now());
            }
        }
    }

    /// Shutdown, last: keeps the windows handed over for
    /// [`LINGER`](crate::cluster::settings::LINGER) after their last shipment, and, if Redis
    /// went away meanwhile, until they are shipped again (then that long anew); never past
    /// `deadline`.
    pub(crate) fn linger(&mut self, deadline: Instant) {
        let Some(mut shipped_at) = self.lingering.shipped_at() else {
            return;
        };
        let mut lost = false;
        loop {
            let now = Instant::now();
            let until = if lost {
                deadline
            } else {
                (shipped_at + self.lingering.linger()).min(deadline)
            };
            if now >= until {
                break;
            }
            std::thread::sleep(TICK.min(until - now));
            if self.redis.is_none() {
                lost = true;
                if Instant::now() < self.next_connect {
                    continue;
                }
                // Puts the known `done` marks back too (see `Node::connect`).
                self.connect();
                if self.redis.is_some() && self.ship_lingering() {
                    self.outage_over();
                    (shipped_at, lost) = (Instant::now(), false);
                    // And what it still holds, which the connect marked to go again.
                    if let Err(e) = self.ship_sealed_windows(shipped_at) {
                        self.drop_connection(e);
                    }
                }
                continue;
            }
            // A Redis that crashed (or restarted) closed this connection: the ping fails.
            let ping = match self.redis.as_mut() {
                Some(redis) => redis::cmd("PING").query::<String>(redis.con()),
                None => continue,
            };
            if let Err(e) = ping {
                self.drop_connection(e.into());
            }
        }
        if lost {
            log::error!(
                "Redis went away while this instance stopped and it could not ship the {} \
                 windows it handed over again before its shutdown deadline: their ids are \
                 lost if Redis lost them",
                self.lingering.windows().len()
            );
        }
        self.lingering.clear();
    }

    /// Ships every window handed over again, whole: true when all of them were (stored, or
    /// refused because their leader had frozen them: their first shipment was in before).
    fn ship_lingering(&mut self) -> bool {
        let Some(redis) = self.redis.as_mut() else {
            return false;
        };
        let mut outage = None;
        for held in self.lingering.windows() {
            let load = Load {
                window_start: held.window_start,
                ids: &held.ids,
                endpoints: &held.endpoints,
                last: true,
                register: true,
            };
            match ship_window(redis.con(), &self.settings, &self.metrics, load) {
                Ok(_) => {}
                Err(store::Error::Redis(e)) if conn::is_outage(&e) => {
                    outage = Some(e);
                    break;
                }
                Err(e) => log::warn!(
                    "window {}: shipping it again before this instance stops failed ({})",
                    rfc3339_secs(held.window_start),
                    sanitize(&e.to_string())
                ),
            }
        }
        match outage {
            Some(e) => {
                self.drop_connection(e.into());
                false
            }
            None => true,
        }
    }
}
