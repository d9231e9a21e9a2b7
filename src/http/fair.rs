//! Turn-taking between the connections of one worker thread.
//!
//! A may worker thread runs every coroutine that is ready, one after the other, and only asks
//! epoll which sockets have become ready once none is left. A connection stops being ready
//! only when a read or a write would block. A client that pipelines heavy requests (a batch
//! of a thousand `GET /metrics`) on loopback never lets that happen: the next batch is there
//! before the last answer is written. Every other connection on that thread waited until it
//! paused: 200 ms at the p99 (`perf/scrape.sh`), where they wait 4 ms otherwise.
//! `may::coroutine::yield_now` does not help: it puts the coroutine back on the same
//! thread's ready queue, which the thread drains before polling epoll.
//!
//! So a turn ends once its answers pass [`HEAVY_TURN`] bytes, the requests left in the buffer
//! waiting for the next turn (`Conn::deferred`), and after such a turn the connection gives
//! way: it parks, and a small thread of its own wakes it from outside the workers. may queues such a
//! wake-up on a worker's global queue and pokes its epoll, so the worker polls its sockets,
//! runs the connections that are ready, and only then this one again. A connection answering
//! accept requests, even a full read buffer of them pipelined, writes less than that and
//! never gets here: the request path makes no extra syscall.

use std::sync::OnceLock;

use crossbeam_channel::Sender;
use may::coroutine::Coroutine;

/// A turn stops answering past this many bytes, and gives way. A full read buffer of the
/// shortest pipelined accept requests (16 KiB of 39-byte requests) is answered in about
/// 50 KiB; one of `/metrics` scrapes would take about 1.4 MiB, now cut into turns of ~34.
pub const HEAVY_TURN: usize = 128 * 1024;

/// Where a connection that gives way sends itself to be woken.
static WAKER: OnceLock<Sender<Coroutine>> = OnceLock::new();

/// Starts the thread that wakes connections that gave way; later calls do nothing. Until it
/// runs, [`give_way`] only yields (tests and tools that drive connections without a server).
pub fn try_start() -> std::io::Result<()> {
    if WAKER.get().is_some() {
        return Ok(());
    }
    let (tx, rx) = crossbeam_channel::unbounded::<Coroutine>();
    std::thread::Builder::new()
        .name("verve-fair".into())
        .spawn(move || {
            // From a thread that is not a worker, `unpark` goes through a global queue and
            // an epoll wake-up: the point of this thread.
            for co in rx {
                co.unpark();
            }
        })?;
    // A second caller racing this one started a thread of its own, which is idle and harmless.
    let _ = WAKER.set(tx);
    Ok(())
}

/// Lets every other ready connection of this worker thread take its turn before the calling
/// one goes on. Call it from a connection's coroutine, between turns.
pub fn give_way() {
    if let Some(waker) = WAKER.get() {
        if may::coroutine::is_coroutine() && waker.send(may::coroutine::current()).is_ok() {
            // An unpark that comes before this park is kept: park then returns at once.
            may::coroutine::park();
            return;
        }
    }
    may::coroutine::yield_now();
}
