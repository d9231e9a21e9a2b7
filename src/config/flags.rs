//! The command line and the environment as clap reads them: every flag of the README's
//! *Flags* table, each with a `VERVE_<FLAG>` environment fallback, parsed and range-checked,
//! with the rules between flags beside them. [`super::Config`] checks them as a whole and
//! resolves them; nothing else reads them.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::TypedValueParser;
use clap::error::ErrorKind;
use clap::{Arg, Command, Parser};

use crate::cluster::conn::{check_instance_id, Target};
use crate::report::callback::{Method, DEFAULT_HOST_CALLS, MAX_CALL_THREADS};
use crate::report::kafka::{self, KafkaOption};

/// The command line and the environment as clap reads them. [`super::Config`] checks them as a
/// whole; nothing else should read them.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "verve",
    // The version and the commit it was built from (build.rs).
    version = env!("VERVE_VERSION"),
    about = "Counts distinct ids per wall-clock window and reports them."
)]
pub struct Flags {
    /// Address to listen on.
    #[arg(
        long,
        env = "VERVE_LISTEN",
        default_value = "0.0.0.0:8080",
        value_name = "ADDR"
    )]
    pub listen: SocketAddr,

    /// Window length in seconds; windows are aligned to multiples of it since the epoch.
    #[arg(long, env = "VERVE_INTERVAL", allow_negative_numbers = true,
          default_value_t = 60, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub interval: u64,

    /// File the count lines and endpoint results are appended to.
    #[arg(
        long,
        env = "VERVE_LOG_FILE",
        default_value = "verve.log",
        value_name = "PATH"
    )]
    pub log_file: PathBuf,

    /// How endpoints are called with a window's count.
    #[arg(long, env = "VERVE_ENDPOINT_METHOD", value_enum, default_value = "get")]
    pub endpoint_method: Method,

    /// Limit for a whole endpoint call, in seconds (fractions allowed).
    #[arg(long, env = "VERVE_ENDPOINT_TIMEOUT", allow_negative_numbers = true,
          default_value = "2", value_name = "SECS",
          value_parser = parse_timeout)]
    pub endpoint_timeout: Duration,

    /// Most distinct endpoints per window; past it requests are answered 503 (ids still count).
    #[arg(long, env = "VERVE_MAX_ENDPOINTS", allow_negative_numbers = true,
          default_value_t = 1000, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_endpoints: u32,

    /// Hosts endpoints may name: host names, `*.domain` (subdomains only), IP literals and
    /// CIDR ranges (`10.0.0.0/8`); default: any public host. Loopback, private, shared,
    /// link-local, unique-local, multicast and reserved addresses are called only when an IP
    /// or CIDR entry covers them, never because a name entry resolves to them.
    #[arg(
        long,
        env = "VERVE_ENDPOINT_ALLOW",
        value_delimiter = ',',
        value_name = "ENTRY[,ENTRY...]"
    )]
    pub endpoint_allow: Vec<String>,

    /// Most endpoint calls in flight to one host at once; its other calls wait without
    /// holding a thread, and one that cannot start within the next window is dropped (logged).
    #[arg(long, env = "VERVE_ENDPOINT_HOST_CALLS", allow_negative_numbers = true,
          default_value_t = DEFAULT_HOST_CALLS, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=MAX_CALL_THREADS as i64))]
    pub endpoint_host_calls: u32,

    /// Seconds a keep-alive connection may stay silent (also mid-request) before it is closed.
    #[arg(long, env = "VERVE_IDLE_TIMEOUT", allow_negative_numbers = true,
          default_value = "60", value_name = "SECS",
          value_parser = parse_timeout)]
    pub idle_timeout: Duration,

    /// Most client connections open at once; past it new connections wait in the listen
    /// queue until one closes, and /healthz answers 503. Default: what the process limits
    /// allow, min(RLIMIT_NOFILE - min(512, RLIMIT_NOFILE / 2), (vm.max_map_count - 4096) / 2).
    #[arg(long, env = "VERVE_MAX_CONNECTIONS", allow_negative_numbers = true,
          value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: Option<u32>,

    /// HTTP worker threads (each runs many connection coroutines); default: one per core.
    #[arg(long, env = "VERVE_WORKERS", allow_negative_numbers = true,
          value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: Option<u16>,

    /// Where the open window is saved at shutdown and resumed from at start (single
    /// instance); without it, shutdown reports the open window at once with a partial count.
    /// Not with --redis: a cluster ships the open window to Redis at shutdown instead.
    #[arg(
        long,
        env = "VERVE_STATE_FILE",
        value_name = "PATH",
        conflicts_with = "redis"
    )]
    pub state_file: Option<PathBuf>,

    /// Cluster mode: the Redis all instances share, `redis://[USER:PASSWORD@]HOST:PORT[/DB]`
    /// (or several comma-separated seed nodes of a Redis Cluster).
    // The environment's value is not shown by --help: it may hold a password.
    #[arg(long, env = "VERVE_REDIS", value_name = "URL", hide_env_values = true,
          value_parser = RedisUrl)]
    pub redis: Option<Target>,

    /// Cluster mode: the prefix of every Redis key.
    #[arg(long, env = "VERVE_REDIS_PREFIX", default_value = "verve", value_name = "PREFIX",
          value_parser = parse_prefix)]
    pub redis_prefix: String,

    /// Cluster mode: longest wait after a window closes for the live instances to ship it.
    #[arg(long, env = "VERVE_CLUSTER_GRACE", allow_negative_numbers = true,
          default_value = "2", value_name = "SECS",
          value_parser = parse_timeout)]
    pub cluster_grace: Duration,

    /// Cluster mode: most sealed windows kept in memory while Redis is unavailable.
    #[arg(long, env = "VERVE_CLUSTER_BACKLOG", allow_negative_numbers = true,
          default_value_t = 10, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub cluster_backlog: u32,

    /// Cluster mode: this instance's name in Redis and in logs; default: host name and port.
    #[arg(long, env = "VERVE_INSTANCE_ID", value_name = "NAME",
          value_parser = parse_instance_id)]
    pub instance_id: Option<String>,

    /// Kafka: brokers to produce one record per window to, `HOST:PORT[,HOST:PORT...]`.
    #[arg(long, env = "VERVE_KAFKA_BROKERS", value_name = "HOST:PORT[,...]",
          value_parser = kafka::parse_brokers)]
    pub kafka_brokers: Option<String>,

    /// Kafka: the topic (created at start-up when missing).
    #[arg(long, env = "VERVE_KAFKA_TOPIC", default_value = "unique-requests",
          value_name = "TOPIC", value_parser = kafka::parse_topic)]
    pub kafka_topic: String,

    /// Kafka: most records kept, in order, while the brokers cannot take them.
    #[arg(long, env = "VERVE_KAFKA_BACKLOG", allow_negative_numbers = true,
          default_value_t = 1440, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub kafka_backlog: u32,

    /// Kafka: a librdkafka client property for both clients (TLS: security.protocol, ssl.*;
    /// SASL: sasl.*), repeatable. Properties that verve sets or that would weaken delivery
    /// (acks, enable.idempotence, message.timeout.ms, retries, ...) are refused. Environment:
    /// VERVE_KAFKA_OPTION, a comma-separated list in which `\,` is a comma of a value.
    /// Secret values (passwords, keys) are never shown.
    #[arg(long = "kafka-option", value_name = "KEY=VALUE",
          value_parser = KafkaOption::given, requires = "kafka_brokers")]
    pub kafka_options: Vec<KafkaOption>,

    /// Most memory the id sets of every window held in memory may take together (open,
    /// sealed and not reported, cluster backlog), e.g. `512MiB`, `2GiB`; past it, requests
    /// whose id would need more are answered 503 and not counted. Default: half the cgroup's
    /// `memory.max` when set, else half the physical memory.
    #[arg(long, env = "VERVE_MAX_MEMORY", value_name = "SIZE",
          value_parser = crate::budget::parse_size)]
    pub max_memory: Option<u64>,
}

/// A key prefix: no spaces, and no braces (they would change the Redis Cluster hash tag).
fn parse_prefix(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 100 {
        return Err("must be 1 to 100 bytes long".into());
    }
    if s.chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '{' || c == '}')
    {
        return Err("must not contain spaces, control characters or braces".into());
    }
    Ok(s.to_owned())
}

fn parse_instance_id(s: &str) -> Result<String, String> {
    check_instance_id(s).map_err(|e| format!("{e:#}"))?;
    Ok(s.to_owned())
}

/// Seconds as a positive, finite number, at most a day.
fn parse_timeout(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(secs > 0.0 && secs <= 86_400.0) {
        return Err(format!(
            "{s:?} must be more than 0 and at most 86400 seconds"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `--redis`'s parser. Unlike clap's for a plain function, its refusal does not quote the
/// value, which may hold a password.
#[derive(Debug, Clone, Copy)]
struct RedisUrl;

impl TypedValueParser for RedisUrl {
    type Value = Target;

    fn parse_ref(
        &self,
        cmd: &Command,
        _arg: Option<&Arg>,
        value: &OsStr,
    ) -> Result<Target, clap::Error> {
        let refuse = |why: &str| {
            cmd.clone().error(
                ErrorKind::ValueValidation,
                format!("invalid value for --redis: {why}"),
            )
        };
        let url = value.to_str().ok_or_else(|| refuse("not valid UTF-8"))?;
        Target::parse(url).map_err(|why| refuse(&why))
    }
}
