//! The HTTP front: an accept loop and one may coroutine per connection, speaking just the
//! HTTP/1.1 verve needs (keep-alive, pipelining, bounded heads and bodies). The released
//! may_minihttp does not bound what it buffers and cannot answer 400/431, so the connection
//! loop is ours, on `may::net` and `httparse`; may_minihttp remains the speed baseline
//! (`examples/baseline.rs`).

pub mod conn;
pub mod date;
pub mod idle;
pub mod response;

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use may::coroutine::JoinHandle;
use may::net::TcpListener;

use crate::clock::{Clock, Windows};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::shards::Shards;

/// What every connection shares: read-only but for the atomics.
pub struct Ctx {
    pub shards: Arc<Shards>,
    pub metrics: Arc<Metrics>,
    pub clock: Arc<dyn Clock>,
    pub windows: Windows,
    /// Set once when shutdown begins: `/healthz` turns 503 and every connection closes after
    /// its current batch.
    pub draining: AtomicBool,
    /// Turns `/healthz` 503 when one of verve's threads died (see [`crate::health`]).
    pub health: Health,
    /// `--idle-timeout`.
    pub idle_timeout: Duration,
    /// Closes connections silent for longer than `idle_timeout`.
    pub idle: Arc<idle::Idle>,
}

/// Pause after a failed accept (out of file descriptors, say) before trying again, so the
/// loop does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// Starts the accept loop. It ends once `ctx.draining` is set and one more connection
/// arrives (see [`wake`]).
pub fn spawn_acceptor(listener: TcpListener, ctx: Arc<Ctx>) -> JoinHandle<()> {
    may::go!(move || {
        for stream in listener.incoming() {
            if ctx.draining.load(std::sync::atomic::Ordering::SeqCst) {
                break;
            }
            match stream {
                Ok(stream) => {
                    let ctx = ctx.clone();
                    may::go!(move || conn::serve(stream, &ctx));
                }
                Err(_) => may::coroutine::sleep(ACCEPT_BACKOFF),
            }
        }
    })
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
