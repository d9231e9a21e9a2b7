//! `--idle-timeout` without a timer per read: a reaper thread closes silent connections.
//!
//! A read timeout on the socket (`set_read_timeout`) makes may arm a timer every time a read
//! would block, which under a closed-loop load is once per request: an allocation, a clock
//! read and a lock on may's timer list, ~2% of verve's CPU under wrk (`scripts/flamegraph.sh`)
//! and more than everything verve's own request code costs. Instead every connection
//! registers once, stamps a coarse tick (one relaxed store, no clock read) whenever a read
//! brings data, and a plain thread ticks [`TICK`] by tick and shuts down (`shutdown(2)`) the
//! sockets whose stamp is older than the timeout: the blocked read then returns 0 and the
//! connection ends as if the client had left. Precision is one tick, plenty for a limit
//! measured in seconds.
//!
//! The registry is split by worker like the id shards, so connect and close take a lock that
//! only their worker and, once per tick, the reaper use. A connection unregisters before its
//! socket is closed, and the reaper shuts a socket down only while holding the lock that
//! keeps it registered, so it can never hit a descriptor number that was closed and reused.

use std::os::fd::{BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_utils::CachePadded;

use crate::health::Health;

/// How often the reaper looks.
pub const TICK: Duration = Duration::from_millis(250);

/// One registered connection.
struct Entry {
    fd: RawFd,
    /// The tick of its last read that brought data.
    seen: Arc<AtomicU64>,
}

/// A worker's connections: a slab, so that registering reuses freed slots.
#[derive(Default)]
struct Slab {
    entries: Vec<Option<Entry>>,
    free: Vec<usize>,
}

/// All registered connections, and the tick counter.
pub struct Idle {
    shards: Box<[CachePadded<Mutex<Slab>>]>,
    tick: AtomicU64,
    /// The timeout in ticks (rounded up).
    limit: u64,
    stop: AtomicBool,
}

fn lock(m: &Mutex<Slab>) -> MutexGuard<'_, Slab> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Idle {
    pub fn new(shards: usize, timeout: Duration) -> Arc<Idle> {
        let limit = timeout.as_millis().div_ceil(TICK.as_millis()).max(1) as u64;
        Arc::new(Idle {
            shards: (0..shards.max(1)).map(|_| Default::default()).collect(),
            tick: AtomicU64::new(0),
            limit,
            stop: AtomicBool::new(false),
        })
    }

    /// Registers the connection on socket `fd` in `shard`'s slab; it is unregistered when the
    /// returned guard drops, which must happen before the socket is closed.
    pub fn register(self: &Arc<Self>, shard: usize, fd: RawFd) -> Watch {
        let shard = shard % self.shards.len();
        let seen = Arc::new(AtomicU64::new(self.tick.load(Relaxed)));
        let entry = Entry {
            fd,
            seen: seen.clone(),
        };
        let mut slab = lock(&self.shards[shard]);
        let slot = match slab.free.pop() {
            Some(slot) => {
                slab.entries[slot] = Some(entry);
                slot
            }
            None => {
                slab.entries.push(Some(entry));
                slab.entries.len() - 1
            }
        };
        Watch {
            idle: self.clone(),
            shard,
            slot,
            seen,
        }
    }

    /// One reaper pass: advances the tick and shuts down every connection silent for longer
    /// than the limit. Returns how many it shut down.
    pub fn reap(&self) -> usize {
        let now = self.tick.fetch_add(1, Relaxed) + 1;
        let mut reaped = 0;
        for shard in self.shards.iter() {
            let slab = lock(shard);
            for entry in slab.entries.iter().flatten() {
                if now.saturating_sub(entry.seen.load(Relaxed)) > self.limit {
                    // SAFETY: the entry is registered, so its connection has not closed the
                    // descriptor yet, and it cannot while we hold the slab's lock.
                    let fd = unsafe { BorrowedFd::borrow_raw(entry.fd) };
                    let _ = socket2::SockRef::from(&fd).shutdown(std::net::Shutdown::Both);
                    // Not again next tick: the connection is on its way out.
                    entry.seen.store(u64::MAX, Relaxed);
                    reaped += 1;
                }
            }
        }
        reaped
    }

    /// Starts the reaper thread; it stops after [`Idle::stop`].
    pub fn spawn_reaper(self: &Arc<Self>, health: &Health) -> std::io::Result<JoinHandle<()>> {
        let idle = self.clone();
        let guard = health.guard("verve-idle");
        std::thread::Builder::new()
            .name("verve-idle".into())
            .spawn(move || {
                let _guard = guard;
                while !idle.stop.load(Relaxed) {
                    std::thread::sleep(TICK);
                    idle.reap();
                }
            })
    }

    /// Asks the reaper thread to end (within one tick).
    pub fn stop(&self) {
        self.stop.store(true, Relaxed);
    }
}

/// A connection's registration; unregisters on drop.
pub struct Watch {
    idle: Arc<Idle>,
    shard: usize,
    slot: usize,
    seen: Arc<AtomicU64>,
}

impl Watch {
    /// Marks the connection active now: a relaxed load and store, no clock read.
    #[inline]
    pub fn active(&self) {
        let now = self.idle.tick.load(Relaxed);
        // A connection already shut down stays marked (u64::MAX).
        if self.seen.load(Relaxed) != u64::MAX {
            self.seen.store(now, Relaxed);
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut slab = lock(&self.idle.shards[self.shard]);
        slab.entries[self.slot] = None;
        slab.free.push(self.slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    #[test]
    fn silent_connections_are_shut_down_after_the_limit_and_active_ones_kept() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let _a = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let _b = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut silent, _) = listener.accept().unwrap();
        let (busy, _) = listener.accept().unwrap();
        // A limit of 2 ticks.
        let idle = Idle::new(2, TICK * 2);
        let silent_watch = idle.register(0, silent.as_raw_fd());
        let busy_watch = idle.register(1, busy.as_raw_fd());
        for _ in 0..2 {
            assert_eq!(idle.reap(), 0);
            busy_watch.active();
        }
        // Three ticks without activity: past the limit.
        assert_eq!(idle.reap(), 1);
        let mut buf = [0u8; 1];
        assert_eq!(
            silent.read(&mut buf).unwrap(),
            0,
            "shut down: reads see EOF"
        );
        // Reported once, not at every later tick.
        busy_watch.active();
        assert_eq!(idle.reap(), 0);
        drop(silent_watch);
        drop(busy_watch);
        for _ in 0..5 {
            assert_eq!(idle.reap(), 0, "unregistered connections are never touched");
        }
    }

    #[test]
    fn freed_slots_are_reused() {
        let idle = Idle::new(1, Duration::from_secs(60));
        let a = idle.register(0, 1000);
        drop(a);
        let _b = idle.register(0, 1001);
        assert_eq!(lock(&idle.shards[0]).entries.len(), 1);
    }
}
