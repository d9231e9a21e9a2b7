//! The per-worker cache the two bodies are served from: one slot per worker, each its own
//! mutex on its own cache line holding both bodies as `Arc<[u8]>`. A request locks only its
//! worker's slot, copies the body into the connection's output buffer and unlocks: no
//! rendering, no allocation beyond the output buffer's own, no lock another worker takes.
//! The writer swaps the `Arc`s into every slot; the last reference to an old body is always
//! dropped by the writer, so a request never frees one either.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crossbeam_utils::CachePadded;

/// What the status page says before its first render.
const STARTING_PAGE: &[u8] = b"<!doctype html><title>verve</title><p>verve is starting</p>\n";

/// The two bodies, rendered together.
#[derive(Clone)]
pub struct Bodies {
    /// `GET /api/verve/windows`.
    pub windows: Arc<[u8]>,
    /// `GET /`.
    pub page: Arc<[u8]>,
}

impl Bodies {
    /// Before the first render: the `windows` body given, and a page that says verve is
    /// starting.
    pub fn starting(windows: Vec<u8>) -> Bodies {
        Bodies {
            windows: windows.into(),
            page: STARTING_PAGE.into(),
        }
    }
}

/// The read side: one copy of the bodies per worker (see the module doc).
pub struct Pages {
    slots: Box<[CachePadded<Mutex<Bodies>>]>,
}

impl Pages {
    pub fn new(workers: usize, bodies: Bodies) -> Pages {
        Pages {
            slots: (0..workers.max(1))
                .map(|_| CachePadded::new(Mutex::new(bodies.clone())))
                .collect(),
        }
    }

    fn slot(&self, shard: usize) -> MutexGuard<'_, Bodies> {
        // A poisoned slot still holds whole bodies: only assignments are made under it.
        self.slots[shard % self.slots.len()]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Calls `f` with the `/api/verve/windows` body, under the lock of `shard`'s slot only.
    pub fn windows(&self, shard: usize, f: impl FnOnce(&[u8])) {
        f(&self.slot(shard).windows)
    }

    /// Calls `f` with the status page, under the lock of `shard`'s slot only.
    pub fn page(&self, shard: usize, f: impl FnOnce(&[u8])) {
        f(&self.slot(shard).page)
    }

    /// Puts `bodies` in every slot.
    pub fn publish(&self, bodies: &Bodies) {
        for slot in self.slots.iter() {
            let old = std::mem::replace(
                &mut *slot.lock().unwrap_or_else(PoisonError::into_inner),
                bodies.clone(),
            );
            // Dropped here, outside the lock.
            drop(old);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(pages: &Pages, shard: usize) -> (String, String) {
        let (mut windows, mut page) = (Vec::new(), Vec::new());
        pages.windows(shard, |b| windows.extend_from_slice(b));
        pages.page(shard, |b| page.extend_from_slice(b));
        (
            String::from_utf8(windows).unwrap(),
            String::from_utf8(page).unwrap(),
        )
    }

    #[test]
    fn every_slot_serves_the_last_bodies_published() {
        let pages = Pages::new(3, Bodies::starting(b"[]".to_vec()));
        assert_eq!(text(&pages, 0).0, "[]");
        assert!(text(&pages, 2).1.contains("verve is starting"));
        let bodies = Bodies {
            windows: b"w".to_vec().into(),
            page: b"p".to_vec().into(),
        };
        pages.publish(&bodies);
        // Any shard, even past the worker count, maps to a slot holding the new bodies.
        for shard in 0..7 {
            assert_eq!(text(&pages, shard), ("w".into(), "p".into()));
        }
        // The slots share the bodies: one copy, whatever the worker count.
        assert_eq!(Arc::strong_count(&bodies.page), 4);
    }
}
