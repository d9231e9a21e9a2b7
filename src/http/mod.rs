//! The HTTP front: an accept loop and one may coroutine per connection, speaking just the
//! HTTP/1.1 verve needs (keep-alive, pipelining, bounded heads and bodies). The released
//! may_minihttp does not bound what it buffers and cannot answer 400/431, so the connection
//! loop is ours, on `may::net` and `httparse`; may_minihttp remains the speed baseline
//! (`examples/baseline.rs`).
//!
//! **The accept loop never dies.** Each connection costs a descriptor and a coroutine, whose
//! stack is a mapping of its own plus a guard page: a flood of idle connections can run out
//! of either (`RLIMIT_NOFILE`, `vm.max_map_count`). At `--max-connections` the loop stops
//! accepting, so new connections wait in the kernel's listen queue until one closes. A failed
//! `accept` (out of descriptors) leaves its connection in that queue; a coroutine that cannot
//! be started (its stack cannot be mapped: may panics then, inside the acceptor, which would
//! end the loop and drop the listening socket with it) is caught and its connection closed.
//! Either is counted, logged at most once per [`LOG_EVERY`] and retried after a growing pause.
//! While any of that lasts `/healthz` answers 503.

pub mod conn;
pub mod date;
pub mod drain;
pub mod fair;
pub mod idle;
pub mod limits;
pub mod response;

use std::cell::Cell;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use may::coroutine::JoinHandle;
use may::net::{TcpListener, TcpStream};

use crate::clock::{Clock, Windows};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::shards::Shards;
use crate::status::Status;

/// What every connection shares: read-only but for the atomics.
pub struct Ctx {
    pub shards: Arc<Shards>,
    pub metrics: Arc<Metrics>,
    /// The cached `/api/verve/windows` body and status page.
    pub status: Arc<Status>,
    pub clock: Arc<dyn Clock>,
    pub windows: Windows,
    /// Whether shutdown has begun, and the batches it waits for.
    pub drain: drain::Drain,
    /// Turns `/healthz` 503 when one of verve's threads died (see [`crate::health`]).
    pub health: Health,
    /// `--idle-timeout`.
    pub idle_timeout: Duration,
    /// Closes connections silent for longer than `idle_timeout`.
    pub idle: Arc<idle::Idle>,
    /// `--max-connections` and whether new connections can be taken now.
    pub admission: Admission,
}

/// First pause after a failed accept or spawn, doubled at each failure in a row up to
/// [`MAX_ACCEPT_BACKOFF`]: the loop must not spin while descriptors or memory are short, but
/// should resume soon after they are back.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// Longest pause between two attempts while accepting keeps failing: how late serving can
/// resume after the shortage ends.
pub const MAX_ACCEPT_BACKOFF: Duration = Duration::from_millis(500);

/// How often the loop looks again while at `--max-connections`. A poll rather than a wake-up
/// from every closing connection: it costs nothing on the request path, and 10 ms is far
/// below what a waiting client notices.
pub const LIMIT_POLL: Duration = Duration::from_millis(10);

/// At most one line per kind of accept trouble this often (with how many times it happened),
/// so a flood cannot fill the log, and no blocking log write per connection.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// How long `/healthz` stays 503 after a failed accept or spawn: longer than the longest
/// pause between two attempts, so it stays 503 for as long as the attempts keep failing.
pub const UNHEALTHY_HOLD: Duration = Duration::from_secs(2);

/// Connection admission: `--max-connections`, the connections open now, and how long
/// `/healthz` must still answer 503 after a failure to take a connection.
pub struct Admission {
    /// `--max-connections`.
    pub max: usize,
    /// Connections accepted and not closed yet. Counted by the acceptor before the
    /// connection's coroutine starts (so the limit holds even before it runs) and released
    /// by [`Admitted`] when it ends, or when a coroutine that could not start is dropped.
    open: AtomicUsize,
    /// `/healthz` answers 503 until this many ms after `epoch`.
    unhealthy_until_ms: AtomicU64,
    epoch: Instant,
}

impl Admission {
    pub fn new(max: usize) -> Admission {
        Admission {
            max: max.max(1),
            open: AtomicUsize::new(0),
            unhealthy_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Connections accepted and not closed yet.
    pub fn open(&self) -> usize {
        self.open.load(Relaxed)
    }

    /// True when a new connection can be taken: below the limit, and no failed accept or
    /// spawn in the last [`UNHEALTHY_HOLD`].
    pub fn can_accept(&self) -> bool {
        self.open() < self.max && self.now_ms() >= self.unhealthy_until_ms.load(Relaxed)
    }

    fn failed(&self) {
        let until = self.now_ms() + UNHEALTHY_HOLD.as_millis() as u64;
        self.unhealthy_until_ms.fetch_max(until, Relaxed);
    }
}

/// One open connection's share of [`Admission::open`], released on drop.
struct Admitted(Arc<Ctx>);

impl Admitted {
    fn new(ctx: &Arc<Ctx>) -> Admitted {
        ctx.admission.open.fetch_add(1, Relaxed);
        Admitted(ctx.clone())
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.admission.open.fetch_sub(1, Relaxed);
    }
}

thread_local! {
    /// Set while the acceptor spawns a coroutine on this thread: a panic then is a spawn
    /// failure the acceptor catches, reports in its own words and survives, so the panic hook
    /// stays silent instead of printing one message per refused connection.
    static SPAWNING: Cell<bool> = const { Cell::new(false) };
}

/// Installs (once) a panic hook that is silent for spawn failures and otherwise does what
/// the previous hook did.
fn quiet_spawn_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !SPAWNING.with(Cell::get) {
                previous(info);
            }
        }));
    });
}

/// Spawns a coroutine, turning may's panic when no stack can be mapped into an error.
/// may's `Builder::spawn` returns an `io::Result`, but its stack allocation panics
/// (`failed to alloc sys stack`) rather than returning an error, so the panic is caught
/// here; nothing was started, and what `f` owns is dropped.
fn try_spawn<F>(name: Option<&str>, f: F) -> Result<JoinHandle<()>, String>
where
    F: FnOnce() + Send + 'static,
{
    quiet_spawn_panics();
    let mut builder = may::coroutine::Builder::new();
    if let Some(name) = name {
        builder = builder.name(name.to_string());
    }
    // Set and cleared on this thread with no yield in between (spawning does not yield), so
    // a coroutine that migrates between worker threads never sees a stale flag.
    SPAWNING.with(|s| s.set(true));
    // SAFETY: what `go!` does. The coroutines verve spawns keep no thread-local reference
    // across a yield (see `Shards::current`) and fit the stack `configure_runtime` sets.
    let spawned = catch_unwind(AssertUnwindSafe(|| unsafe { builder.spawn(f) }));
    SPAWNING.with(|s| s.set(false));
    match spawned {
        Ok(Ok(handle)) => Ok(handle),
        Ok(Err(e)) => Err(e.to_string()),
        Err(panic) => Err(panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "coroutine spawn panicked".into())
            .replace('\n', " ")),
    }
}

/// Logs that something keeps happening at most once per [`LOG_EVERY`], with how many times
/// it happened since it was last logged.
struct Throttled {
    last: Option<Instant>,
    unlogged: u64,
}

impl Throttled {
    const fn new() -> Throttled {
        Throttled {
            last: None,
            unlogged: 0,
        }
    }

    /// Notes one more occurrence; returns how many to log when a line is due.
    fn note(&mut self) -> Option<u64> {
        self.unlogged += 1;
        let now = Instant::now();
        if self.last.is_some_and(|last| now < last + LOG_EVERY) {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }

    /// A warning that `what` failed with `error`, if one is due.
    fn failed(&mut self, what: &str, error: &dyn std::fmt::Display) {
        if let Some(n) = self.note() {
            log::warn!(
                "{what} failed {n} time(s) since this was last logged, the last with: {error}; \
                 retrying after a pause, /healthz answers 503 meanwhile"
            );
        }
    }
}

/// Failures of `accept` that mean the process or the system is short of something (and
/// waiting helps); any other error concerns one connection only.
fn is_shortage(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Starts the accept loop. It ends once shutdown has begun (`ctx.drain`) and one more connection
/// arrives (see [`wake`]).
pub fn spawn_acceptor(listener: TcpListener, ctx: Arc<Ctx>) -> Result<JoinHandle<()>, String> {
    try_spawn(Some("verve-acceptor"), move || accept_loop(&listener, &ctx))
}

fn accept_loop(listener: &TcpListener, ctx: &Arc<Ctx>) {
    let mut backoff = ACCEPT_BACKOFF;
    let mut accept_errors = Throttled::new();
    let mut spawn_errors = Throttled::new();
    let mut limit_reached = Throttled::new();
    let mut at_limit = false;
    loop {
        if ctx.drain.is_draining() {
            return;
        }
        if ctx.admission.open() >= ctx.admission.max {
            if !at_limit {
                at_limit = true;
                if let Some(n) = limit_reached.note() {
                    log::warn!(
                        "{} connections open, the --max-connections limit (reached {n} time(s) \
                         since this was last logged): new connections wait in the listen queue \
                         until one closes; /healthz answers 503 meanwhile",
                        ctx.admission.max
                    );
                }
            }
            may::coroutine::sleep(LIMIT_POLL);
            continue;
        }
        at_limit = false;
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) => {
                if is_shortage(&e) {
                    ctx.admission.failed();
                    ctx.metrics.accept_errors.fetch_add(1, Relaxed);
                    accept_errors.failed("accepting a connection", &e);
                    may::coroutine::sleep(backoff);
                    backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                } else {
                    // The client gave up before we took it (ECONNABORTED and the like).
                    may::coroutine::sleep(ACCEPT_BACKOFF);
                }
                continue;
            }
        };
        if ctx.drain.is_draining() {
            return;
        }
        match spawn_connection(stream, Admitted::new(ctx)) {
            Ok(()) => backoff = ACCEPT_BACKOFF,
            Err(e) => {
                ctx.admission.failed();
                ctx.metrics.accept_errors.fetch_add(1, Relaxed);
                spawn_errors.failed("starting a connection's coroutine", &e);
                may::coroutine::sleep(backoff);
                backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
            }
        }
    }
}

/// Starts the coroutine that serves `stream`. On failure the stream is closed (dropped with
/// the closure) and its admission released.
fn spawn_connection(stream: TcpStream, admitted: Admitted) -> Result<(), String> {
    try_spawn(None, move || {
        let admitted = admitted;
        conn::serve(stream, &admitted.0);
    })
    .map(drop)
}

/// Unblocks the accept loop by connecting to it once.
pub fn wake(addr: SocketAddr) {
    let mut target = addr;
    if target.ip().is_unspecified() {
        target.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let _ = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(1));
}
