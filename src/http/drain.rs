//! The HTTP front's part of the graceful stop: whether shutdown has begun, and the batches of
//! requests read but not answered yet, which shutdown waits for before the last window is
//! sealed (so an id answered `ok` is in it). Each worker counts its own batches on its own
//! cache line: a batch costs one atomic add and one subtract on a line no other worker
//! writes, and no lock.

use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;

/// How often [`Drain::wait`] looks again: far below the drain deadline, and the batches it
/// waits for are answered in microseconds.
const POLL: Duration = Duration::from_millis(5);

/// Shutdown's flag and the batches in flight, one counter per worker shard.
#[derive(Debug)]
pub struct Drain {
    /// Set once when shutdown begins: `/healthz` turns 503, the accept loop ends, and every
    /// connection closes after its current batch.
    draining: AtomicBool,
    /// Per shard: connections between reading a batch and writing its answers.
    in_flight: Box<[CachePadded<AtomicU64>]>,
}

/// One batch in flight, counted until it is dropped (after its answers are written).
#[must_use = "the batch counts as in flight until it is dropped"]
pub struct InFlight<'a> {
    count: &'a AtomicU64,
    /// Shutdown had begun when the batch began: its answers close the connection.
    pub draining: bool,
}

impl Drop for InFlight<'_> {
    #[inline]
    fn drop(&mut self) {
        self.count.fetch_sub(1, SeqCst);
    }
}

impl Drain {
    /// Not draining, nothing in flight, one counter per worker shard.
    pub fn new(workers: usize) -> Drain {
        Drain {
            draining: AtomicBool::new(false),
            in_flight: (0..workers.max(1))
                .map(|_| CachePadded::new(AtomicU64::new(0)))
                .collect(),
        }
    }

    /// A batch of `shard` begins: it counts as in flight until the [`InFlight`] is dropped,
    /// which the connection does only once its answers are written. The counter is found
    /// by `shard` once here, so it is the same one however the coroutine moves meanwhile.
    #[inline]
    pub fn begin(&self, shard: usize) -> InFlight<'_> {
        let count = &self.in_flight[shard % self.in_flight.len()];
        // Dekker-style pairing with `start` then `wait`: either this batch sees `draining`,
        // or shutdown sees it in flight and waits for it (both sides use SeqCst).
        count.fetch_add(1, SeqCst);
        InFlight {
            count,
            draining: self.draining.load(SeqCst),
        }
    }

    /// Shutdown begins.
    pub fn start(&self) {
        self.draining.store(true, SeqCst);
    }

    /// True once shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(SeqCst)
    }

    /// True while any connection is between reading a batch and writing its answers.
    pub fn any_in_flight(&self) -> bool {
        self.in_flight.iter().any(|c| c.load(SeqCst) > 0)
    }

    /// Waits until no batch is in flight, or until `deadline`.
    pub fn wait(&self, deadline: Instant) {
        while self.any_in_flight() && Instant::now() < deadline {
            std::thread::sleep(POLL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_in_flight_until_dropped_and_sees_the_drain_that_began_before_it() {
        let drain = Drain::new(2);
        assert!(!drain.any_in_flight());
        let first = drain.begin(1);
        assert!(!first.draining);
        assert!(drain.any_in_flight());
        drain.start();
        let second = drain.begin(3);
        assert!(second.draining && drain.is_draining());
        drop(first);
        assert!(drain.any_in_flight());
        drop(second);
        assert!(!drain.any_in_flight());
        // Nothing in flight: no wait, whatever the deadline.
        drain.wait(Instant::now() + Duration::from_secs(3600));
    }
}
