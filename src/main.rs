//! The verve binary: read the config, open the log, check what the config points at, bind,
//! serve until SIGTERM or SIGINT; SIGHUP reopens the log file (after rotation) and serving
//! goes on. If one of verve's own threads dies (see `verve::health`), it stops as for
//! SIGTERM and exits with [`EXIT_THREAD_DIED`], so that systemd restarts it.
//!
//! Every way out is a [`Failure`], and `main` is its one exit point: the kind of failure
//! gives the exit status.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use verve::clock::SystemClock;
use verve::cluster::conn::{self, Problem};
use verve::cluster::keys::LAYOUT;
use verve::cluster::node::Settings;
use verve::cluster::presence::LAYOUT_1;
use verve::config::Config;
use verve::report::kafka::OptionError;
use verve::server::{self, Server};

// Measured against the system allocator in perf/RESULTS.md; off by default.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Start-up failures caused by the configuration exit with 2, like clap's own errors.
const EXIT_CONFIG: u8 = 2;

/// Other failures: the machine, not the configuration (signal handlers that cannot be
/// installed, a thread that cannot be started).
const EXIT_RUNTIME: u8 = 1;

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

/// Why verve did not start, or stopped other than by a signal: each kind has its exit status.
#[derive(Debug, thiserror::Error)]
enum Failure {
    /// A flag that clap or [`Config`] refused (exit 2), or `--help` and `--version` (exit
    /// 0): clap's own message and status.
    #[error(transparent)]
    Flags(#[from] clap::Error),
    /// The configuration points at something that cannot be used: a log file that cannot be
    /// opened, an address that cannot be bound, a Redis that is not one, a Kafka option that
    /// librdkafka refuses (exit 2). The message names the flag.
    #[error("{0}")]
    Config(String),
    /// One of verve's own threads died while serving (exit 70); `reported`: the open window
    /// was reported all the same.
    #[error(
        "the {thread} thread died{}",
        if *.reported { "" } else { "; the open window was not reported" }
    )]
    ThreadDied { thread: String, reported: bool },
    /// Anything else (exit 1).
    #[error("{0:#}")]
    Runtime(#[from] anyhow::Error),
}

impl Failure {
    fn exit_code(&self) -> u8 {
        match self {
            Failure::Flags(e) => u8::try_from(e.exit_code()).unwrap_or(EXIT_CONFIG),
            Failure::Config(_) => EXIT_CONFIG,
            Failure::ThreadDied { .. } => EXIT_THREAD_DIED,
            Failure::Runtime(_) => EXIT_RUNTIME,
        }
    }

    /// Says it on stderr (`--help` and `--version` on stdout, as clap does).
    fn print(&self) {
        match self {
            Failure::Flags(e) => {
                let _ = e.print();
            }
            Failure::ThreadDied { .. } => {
                say!("verve: exiting with status {EXIT_THREAD_DIED}: {self}")
            }
            Failure::Config(_) | Failure::Runtime(_) => say!("error: {self}"),
        }
    }

    /// A failed [`Server::start`]: librdkafka refusing the operator's `--kafka-option` is a
    /// configuration error, anything else is not.
    fn of_start(e: anyhow::Error) -> Failure {
        match e.chain().find_map(|c| c.downcast_ref::<OptionError>()) {
            Some(option) => Failure::Config(option.to_string()),
            None => Failure::Runtime(e),
        }
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            failure.print();
            ExitCode::from(failure.exit_code())
        }
    }
}

fn run() -> Result<(), Failure> {
    let config = Config::load()?;
    // Register first, so an early signal is not lost and an early SIGHUP (logrotate right
    // after a start) does not kill the process by its default action.
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(|e| anyhow::Error::new(e).context("installing signal handlers"))?;
    let log_file =
        verve::logging::init(config.log_file()).map_err(|e| Failure::Config(format!("{e:#}")))?;
    // Checked before binding, so the port is the one asked for (a free port, `:0`, is not
    // known yet): the default instance id it is part of plays no part in the check.
    if let Some(cluster) = config.cluster_settings(config.listen().port()) {
        check_redis(&cluster)?;
    }
    // A state file that cannot be written would only fail at shutdown: find out now.
    if let Some(path) = config.state_file() {
        verve::state::check_writable(path)
            .map_err(|e| Failure::Config(format!("--state-file {}: {e:#}", path.display())))?;
    }
    let listen = config.listen();
    let listener = server::bind(listen)
        .map_err(|e| Failure::Config(format!("--listen {listen}: cannot bind: {e}")))?;
    let workers = config.worker_count();
    verve::configure_runtime(workers);
    let server = Server::start(&config, listener, Arc::new(SystemClock), workers)
        .map_err(Failure::of_start)?;
    log::info!(
        "verve {} listening on {} ({workers} workers, interval {} s, log {})",
        env!("CARGO_PKG_VERSION"),
        server.local_addr(),
        config.windows().length().as_secs(),
        config.log_file().display()
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
        return Err(Failure::ThreadDied { thread, reported });
    }
    log::info!("stopped");
    log::logger().flush();
    Ok(())
}

/// Cluster mode: whether `--redis` can be used, said plainly now rather than at the first
/// window boundary. A Redis that cannot be reached yet is only a warning: windows wait in
/// the backlog until it can.
fn check_redis(cluster: &Settings) -> Result<(), Failure> {
    let (target, keys) = (&cluster.target, &cluster.keys);
    let interval = cluster.windows.length().as_secs();
    let key_ttl = cluster.key_ttl();
    match conn::check(target, keys, interval, key_ttl.as_millis() as u64) {
        Ok(kind) => log::info!("{kind} at {} is ready", target.display()),
        Err(Problem::Unreachable(e)) => {
            let msg = format!(
                "--redis {}: not reachable ({}); serving anyway, windows wait in the backlog \
                 until it is",
                target.display(),
                conn::describe(&e)
            );
            say!("warning: {msg}");
            log::warn!("{msg}");
        }
        Err(Problem::Unusable(e)) => {
            return Err(Failure::Config(format!(
                "--redis {}: {}",
                target.display(),
                conn::describe(&e)
            )))
        }
        Err(Problem::OtherInterval(theirs)) => {
            return Err(Failure::Config(format!(
                "--interval {}: the instances already using --redis-prefix {} on --redis {} \
                 count with --interval {theirs}; give every instance of a cluster the same \
                 --interval, or this one another --redis-prefix (Redis forgets their interval \
                 {} s after the last of them stops)",
                interval,
                keys.prefix(),
                target.display(),
                key_ttl.as_secs()
            )))
        }
        Err(Problem::OtherLayout(theirs)) => {
            let which = if theirs == LAYOUT_1 {
                " (an earlier verve, which does not store its layout)"
            } else {
                ""
            };
            return Err(Failure::Config(format!(
                "--redis-prefix {}: the instances already using it on --redis {} keep their \
                 keys in layout {theirs}{which}, this one in layout {LAYOUT}, and neither would \
                 read what the other ships; give each layout its own --redis-prefix, or start \
                 this one once the others have stopped (Redis forgets them {} s after the last \
                 of them stops)",
                keys.prefix(),
                target.display(),
                key_ttl.as_secs()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_failure_has_its_exit_status() {
        let flags = |args: &[&str]| Failure::from(Config::try_load(args, None).unwrap_err());
        assert_eq!(
            flags(&["verve", "--interval", "0"]).exit_code(),
            EXIT_CONFIG
        );
        assert_eq!(flags(&["verve", "--help"]).exit_code(), 0);
        assert_eq!(flags(&["verve", "--version"]).exit_code(), 0);
        assert_eq!(Failure::Config("--listen".into()).exit_code(), EXIT_CONFIG);
        let died = Failure::ThreadDied {
            thread: "verve-collector".into(),
            reported: false,
        };
        assert_eq!(died.exit_code(), EXIT_THREAD_DIED);
        assert_eq!(
            died.to_string(),
            "the verve-collector thread died; the open window was not reported"
        );
        let runtime = Failure::from(anyhow::anyhow!("no threads").context("starting"));
        assert_eq!(runtime.exit_code(), EXIT_RUNTIME);
        assert_eq!(runtime.to_string(), "starting: no threads");
    }

    #[test]
    fn a_kafka_option_that_librdkafka_refuses_is_a_configuration_error() {
        let refused = anyhow::Error::new(OptionError::new(
            Some("ssl.key.password"),
            "librdkafka: bad key",
        ))
        .context("starting the Kafka reporter");
        let failure = Failure::of_start(refused);
        assert_eq!(failure.exit_code(), EXIT_CONFIG);
        assert!(
            failure
                .to_string()
                .starts_with("--kafka-option ssl.key.password"),
            "{failure}"
        );
        let other = Failure::of_start(anyhow::anyhow!("starting the collector thread"));
        assert_eq!(other.exit_code(), EXIT_RUNTIME);
    }
}
