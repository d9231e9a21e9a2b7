//! The speed baseline for `perf/compare.sh`: a bare may_minihttp 0.1.11 server that answers
//! every request `200 ok` (`Content-Type: text/plain`), written like may_minihttp's techempower
//! example (`HttpServiceFactory` + `HttpService`). It does no work per request, so verve's
//! requests per second divided by this one's is the cost of everything verve adds: its own
//! connection loop, query parsing, the shard lock and the roaring insert.
//!
//! The may runtime is configured exactly as the verve binary does it
//! ([`verve::configure_runtime`]: one worker per core this process may run on, 32 KiB
//! coroutine stacks), so the comparison is between the request paths, not the runtimes.
//!
//! ```sh
//! cargo run --release --example baseline -- 127.0.0.1:8081
//! ```

use std::io;

use may_minihttp::{HttpService, HttpServiceFactory, Request, Response};

/// Answers `ok` to anything.
struct Ok200;

impl HttpService for Ok200 {
    fn call(&mut self, _req: Request, rsp: &mut Response) -> io::Result<()> {
        rsp.header("Content-Type: text/plain").body("ok");
        Ok(())
    }
}

/// One service per connection, as in the techempower example.
struct Baseline;

impl HttpServiceFactory for Baseline {
    type Service = Ok200;

    fn new_service(&self, _id: usize) -> Self::Service {
        Ok200
    }
}

const DEFAULT_ADDR: &str = "127.0.0.1:8081";

fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| DEFAULT_ADDR.to_owned());
    // The same rule as `verve::config::Config::worker_count` without `--workers`.
    let workers = core_affinity::get_core_ids().map_or(1, |ids| ids.len().max(1));
    verve::configure_runtime(workers);
    let server = match Baseline.start(addr.as_str()) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("error: cannot listen on {addr}: {e}");
            std::process::exit(2);
        }
    };
    println!("baseline listening on {addr} ({workers} workers)");
    if server.join().is_err() {
        std::process::exit(1);
    }
}
