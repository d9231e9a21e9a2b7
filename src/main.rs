//! The verve binary: read the config, open the log, bind, serve until SIGTERM or SIGINT;
//! SIGHUP reopens the log file (after rotation) and serving goes on. If one of verve's own
//! threads dies (see `verve::health`), it stops as for SIGTERM and exits with
//! [`EXIT_THREAD_DIED`], so that systemd restarts it.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use verve::clock::SystemClock;
use verve::cluster::conn::Problem;
use verve::cluster::node::key_ttl;
use verve::cluster::store::Keys;
use verve::config::Config;
use verve::report::kafka::OptionError;
use verve::server::{self, Server};

// Measured against the system allocator in perf/RESULTS.md; off by default.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Start-up failures caused by the configuration exit with 2, like clap's own errors.
const EXIT_CONFIG: u8 = 2;

/// One of verve's threads died: a bug, not a configuration error, so systemd's
/// `Restart=on-failure` restarts the service (70 is `EX_SOFTWARE`, "internal software error").
const EXIT_THREAD_DIED: u8 = 70;

/// `eprintln!` without its panic when stderr cannot be written (a full disk under it, a
/// closed pipe): the message is lost, the process goes on to its exit code.
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

fn main() -> ExitCode {
    let config = Config::load();
    // Register first, so an early signal is not lost and an early SIGHUP (logrotate right
    // after a start) does not kill the process by its default action.
    let mut signals = match Signals::new([SIGTERM, SIGINT, SIGHUP]) {
        Ok(s) => s,
        Err(e) => {
            say!("error: installing signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let policy_check = config.endpoint_policy();
    if let Err(e) = policy_check {
        say!("error: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let log_file = match verve::logging::init(&config.log_file) {
        Ok(f) => f,
        Err(e) => {
            say!("error: {e:#}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Some(target) = &config.redis {
        if config.state_file.is_some() {
            say!(
                "error: --state-file is for a single instance; with --redis the open window is \
                 shipped to Redis at shutdown instead"
            );
            return ExitCode::from(EXIT_CONFIG);
        }
        // Said plainly now rather than at the first window boundary.
        let keys = Keys::new(&config.redis_prefix);
        let key_ttl = key_ttl(
            Duration::from_secs(config.interval),
            config.cluster_backlog as usize,
            config.cluster_grace,
        );
        match verve::cluster::conn::check(
            target,
            &keys,
            config.interval,
            key_ttl.as_millis() as u64,
        ) {
            Ok(kind) => log::info!("{kind} at {} is ready", target.display()),
            Err(Problem::Unreachable(e)) => {
                let msg = format!(
                    "--redis {}: not reachable ({}); serving anyway, windows wait in the \
                     backlog until it is",
                    target.display(),
                    verve::cluster::conn::describe(&e)
                );
                say!("warning: {msg}");
                log::warn!("{msg}");
            }
            Err(Problem::Unusable(e)) => {
                let why = verve::cluster::conn::describe(&e);
                say!("error: --redis {}: {why}", target.display());
                return ExitCode::from(EXIT_CONFIG);
            }
            Err(Problem::OtherInterval(theirs)) => {
                eprintln!(
                    "error: --interval {}: the instances already using --redis-prefix {} on                      --redis {} count with --interval {theirs}; give every instance of a                      cluster the same --interval, or this one another --redis-prefix (Redis                      forgets their interval {} s after the last of them stops)",
                    config.interval,
                    config.redis_prefix,
                    target.display(),
                    key_ttl.as_secs()
                );
                return ExitCode::from(EXIT_CONFIG);
            }
        }
    }
    // A state file that cannot be written would only fail at shutdown: find out now.
    if let Some(path) = &config.state_file {
        if let Err(e) = verve::state::check_writable(path) {
            say!("error: --state-file {}: {e:#}", path.display());
            return ExitCode::from(EXIT_CONFIG);
        }
    }
    let listener = match server::bind(config.listen) {
        Ok(l) => l,
        Err(e) => {
            say!("error: --listen {}: cannot bind: {e}", config.listen);
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let workers = config.worker_count();
    verve::configure_runtime(workers);
    let server = match Server::start(&config, listener, Arc::new(SystemClock), workers) {
        Ok(s) => s,
        Err(e) => {
            // librdkafka refused the operator's --kafka-option: a configuration error.
            if let Some(option) = e.chain().find_map(|c| c.downcast_ref::<OptionError>()) {
                say!("error: {option}");
                return ExitCode::from(EXIT_CONFIG);
            }
            say!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    log::info!(
        "verve {} listening on {} ({workers} workers, interval {} s, log {})",
        env!("CARGO_PKG_VERSION"),
        server.local_addr(),
        config.interval,
        config.log_file.display()
    );
    // One line on stdout for scripts and tests to learn the port; never fatal (stdout may be
    // closed under a supervisor).
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "verve listening on {}", server.local_addr());
    let _ = stdout.flush();
    // A dead thread ends the wait below as a signal would.
    let handle = signals.handle();
    server.health().on_failure(move || handle.close());
    let mut signal = None;
    for received in signals.forever() {
        if received != SIGHUP {
            signal = Some(received);
            break;
        }
        if let Err(e) = log_file.reopen() {
            log::warn!("signal {received}: {e:#}; still writing to the old file");
        }
    }
    match signal {
        Some(signal) => log::info!("signal {signal}: shutting down"),
        None => log::error!("shutting down: one of verve's threads died"),
    }
    let health = server.health().clone();
    let reported = server.shutdown();
    log::logger().flush();
    if let Some(thread) = health.failed() {
        say!(
            "verve: exiting with status {EXIT_THREAD_DIED}: the {thread} thread died{}",
            if reported {
                ""
            } else {
                "; the open window was not reported"
            }
        );
        return ExitCode::from(EXIT_THREAD_DIED);
    }
    log::info!("stopped");
    log::logger().flush();
    ExitCode::SUCCESS
}
