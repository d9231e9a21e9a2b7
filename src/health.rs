//! Whether verve's own threads are alive. The collector, the cluster thread, the Kafka
//! threads, the callback threads and the idle reaper each hold a [`ThreadGuard`] for their
//! whole life. Nothing in them is meant to panic, but if one does anyway (a bug), its
//! guard's `Drop` runs during the unwinding and marks the process failed: `/healthz` turns
//! 503 at once, the failure is said on stderr and in the log, and the main thread (woken by
//! [`Health::on_failure`]) stops the server and exits non-zero, so that systemd restarts it
//! (`Restart=on-failure`). Limping on would be worse: without the collector no window is
//! sealed again, its ids pile up in memory and no count line is ever written.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Shared by the server, its threads and `main`; cheap to clone.
#[derive(Clone, Default)]
pub struct Health(Arc<Inner>);

#[derive(Default)]
struct Inner {
    /// Set once, when the first thread dies: `/healthz` reads it on a worker thread, which
    /// takes no lock shared with other workers.
    failed: AtomicBool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The first thread that died, once one has.
    failed: Option<String>,
    /// Called once, when a thread dies (or at once, for one registered after it died).
    on_failure: Vec<Box<dyn FnOnce() + Send>>,
}

impl Health {
    pub fn new() -> Self {
        Self::default()
    }

    /// The guard a thread named `thread` holds for its whole life: create it first thing in
    /// the thread's closure, so that it is dropped last.
    pub fn guard(&self, thread: impl Into<String>) -> ThreadGuard {
        ThreadGuard {
            health: self.clone(),
            thread: thread.into(),
        }
    }

    /// The first of verve's threads that died, if any.
    pub fn failed(&self) -> Option<String> {
        self.lock().failed.clone()
    }

    /// True while no thread has died: what `/healthz` reports (with shutdown).
    #[inline]
    pub fn is_ok(&self) -> bool {
        !self.0.failed.load(Ordering::Acquire)
    }

    /// Runs `f` when a thread dies, on that thread; at once if one already has.
    pub fn on_failure(&self, f: impl FnOnce() + Send + 'static) {
        let mut state = self.lock();
        if state.failed.is_some() {
            drop(state);
            f();
        } else {
            state.on_failure.push(Box::new(f));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Nothing under this lock can panic, and the flag must be readable whatever happened.
        self.0.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks `thread` dead and wakes whoever waits for that. Runs during unwinding: nothing
    /// here may panic (a second panic would abort the process before the others hear).
    fn thread_died(&self, thread: &str) {
        let callbacks = {
            let mut state = self.lock();
            if state.failed.is_none() {
                state.failed = Some(thread.to_owned());
            }
            self.0.failed.store(true, Ordering::Release);
            std::mem::take(&mut state.on_failure)
        };
        // The logger never panics (see `crate::logging`); stderr is written directly as
        // well, because the log file may be what failed.
        let _ = writeln!(
            std::io::stderr().lock(),
            "verve: the {thread} thread died; stopping with a failure exit so that the \
             service is restarted"
        );
        log::error!("the {thread} thread died; stopping with a failure exit");
        for f in callbacks {
            f();
        }
    }
}

/// Held by a thread for its whole life; see the module doc.
pub struct ThreadGuard {
    health: Health,
    thread: String,
}

impl Drop for ThreadGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.health.thread_died(&self.thread);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering::SeqCst};

    #[test]
    fn a_thread_that_returns_is_not_a_failure_and_one_that_panics_is() {
        let health = Health::new();
        let woken = Arc::new(AtomicU32::new(0));
        let w = woken.clone();
        health.on_failure(move || {
            w.fetch_add(1, SeqCst);
        });
        let h = health.clone();
        std::thread::spawn(move || {
            let _guard = h.guard("quiet");
        })
        .join()
        .unwrap();
        assert!(health.is_ok());
        assert_eq!(woken.load(SeqCst), 0);
        let h = health.clone();
        let died = std::thread::spawn(move || {
            let _guard = h.guard("test-collector");
            panic!("a bug (this panic is expected by the test)");
        })
        .join();
        assert!(died.is_err());
        assert!(!health.is_ok());
        assert_eq!(health.failed().as_deref(), Some("test-collector"));
        assert_eq!(woken.load(SeqCst), 1);
        // Registered after the failure: called at once.
        let w = woken.clone();
        health.on_failure(move || {
            w.fetch_add(1, SeqCst);
        });
        assert_eq!(woken.load(SeqCst), 2);
    }
}
