//! verve counts the distinct ids it receives in every wall-clock window and reports each
//! window's count to a log file, to the callback URLs clients named in the window and,
//! optionally, to a Kafka topic. In cluster mode several instances behind a load balancer
//! share one Redis: each ships its windows' ids there and the instance that leads a window
//! reports the exact count across all of them, once.
//!
//! The data path: a request is parsed on a may worker and its id recorded in that worker's
//! shard ([`shards`]); the collector thread ([`collector`]) merges the shards about once a
//! second and seals each window 200 ms after it closes; the sealed window goes to the
//! reporters ([`report`]: count log, callbacks, Kafka), or in cluster mode to the cluster
//! thread ([`cluster`]), which ships it to Redis and, when it leads the window, merges every
//! instance's shipments and reports. README.md draws it.
//!
//! Layout:
//! - [`config`]: flags and environment, checked once at start-up and resolved into the
//!   settings each component is started with.
//! - [`server`]: wiring and the shutdown sequence.
//! - [`http`]: the may coroutine front: accept loop and connection limits, connection loop,
//!   routing, responses, `Date` cache, and the drain shutdown waits for.
//! - [`query`]: parsing and validating the accept API's query string.
//! - [`cluster`]: cluster mode: shipping windows to Redis, leading them, the backlog.
//! - [`clock`]: the clock (real or test-driven) and window arithmetic.
//! - [`ids`]: the exact id set of a window (sorted blocks of bit-packed gaps), the open
//!   window's levels of such sets, its wire format, the buffer the request path records
//!   into, and the reader of untrusted bytes that the state file shares.
//! - [`budget`]: `--max-memory`, the budget the id sets are held to.
//! - [`shards`]: per-worker id shards, sealed per window; why they are sound under may.
//! - [`endpoints`]: which callback URLs are allowed; the per-window endpoint table; how a call
//!   to one ended (typed reasons) and the endpoint log line.
//! - [`collector`]: the thread that seals each window and hands it on.
//! - [`health`]: whether verve's own threads are alive; a dead one stops the process.
//! - [`sink`]: the sealed-window handover (reported here, or shipped to the cluster).
//! - [`state`]: `--state-file`, the open window kept across a restart.
//! - [`report`]: the reporters (count log, endpoint callbacks, Kafka) behind one trait.
//! - [`metrics`]: counters, the snapshot read from them, and the `/metrics` page.
//! - [`status`]: the reported windows' history, `/api/verve/windows` and the status page
//!   (`/`), rendered off the request path and served from a per-worker cache.
//! - [`logging`]: the log file format.

// The Kafka client's TLS (`security.protocol=ssl` or `sasl_ssl`) comes from exactly one
// OpenSSL: built from source (`vendored-openssl`, the default) or the system's
// (`system-openssl`). With neither, librdkafka would build without TLS and a TLS broker
// would fail only at run time; with both, the vendored one would silently win over the
// system's, whose security updates are the reason to choose it.
#[cfg(not(any(feature = "vendored-openssl", feature = "system-openssl")))]
compile_error!(
    "enable one OpenSSL feature: `vendored-openssl` (the default) or `system-openssl` \
     (cargo build --release --no-default-features --features system-openssl)"
);
#[cfg(all(feature = "vendored-openssl", feature = "system-openssl"))]
compile_error!(
    "`system-openssl` and `vendored-openssl` are both on: build with \
     `--no-default-features --features system-openssl` to link the system's OpenSSL"
);

pub mod budget;
pub mod clock;
pub mod cluster;
pub mod collector;
pub mod config;
pub mod endpoints;
pub mod health;
pub mod http;
pub mod ids;
pub mod logging;
pub mod metrics;
pub mod query;
pub mod report;
pub mod server;
pub mod shards;
pub mod sink;
pub mod state;
pub mod status;

/// Tunes the may runtime; call once, before the first coroutine.
///
/// `workers` threads, one per core by default, each pinned by may to its core. Coroutine
/// stacks of [`COROUTINE_STACK_WORDS`]; stack pages are only touched as used.
pub fn configure_runtime(workers: usize) {
    may::config()
        .set_workers(workers)
        .set_stack_size(COROUTINE_STACK_WORDS);
}

/// Stack per coroutine, in machine words as may counts it: 32 KiB on 64-bit targets. The
/// deepest connection path measured (a new endpoint with a long, internationalised URL, run
/// with may's stack-usage tracking, which an odd size turns on) used 1 092 words (8.5 KiB),
/// so this leaves almost four times that. may counts this in words, not bytes.
pub const COROUTINE_STACK_WORDS: usize = 0x1000;
