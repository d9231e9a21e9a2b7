//! The configuration: every flag of the README's *Flags* table, each with a
//! `VERVE_<FLAG>` environment fallback, parsed and range-checked by clap (which names the
//! flag and exits 2 on a bad value) and read-only after start-up. `VERVE_KAFKA_OPTION` is
//! read here rather than by clap: its list has an escape clap cannot express, and clap's
//! `--help` would print its value, secrets included.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser};

use crate::cluster::conn::{check_instance_id, Target};
use crate::endpoints::EndpointPolicy;
use crate::http::limits::Resources;
use crate::report::callback::{Method, DEFAULT_HOST_CALLS, MAX_CALL_THREADS};
use crate::report::kafka::{self, options, KafkaOption};

#[derive(Debug, Clone, Parser)]
#[command(
    name = "verve",
    version,
    about = "Counts distinct ids per wall-clock window and reports them."
)]
pub struct Config {
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
    #[arg(long, env = "VERVE_STATE_FILE", value_name = "PATH")]
    pub state_file: Option<PathBuf>,

    /// Cluster mode: the Redis all instances share, `redis://[USER:PASSWORD@]HOST:PORT[/DB]`
    /// (or several comma-separated seed nodes of a Redis Cluster).
    #[arg(long, env = "VERVE_REDIS", value_name = "URL",
          value_parser = Target::parse)]
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
          value_parser = KafkaOption::given)]
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

impl Config {
    /// The command line and the environment, or exit 2 with a message naming the flag at
    /// fault (clap's own exit).
    pub fn load() -> Config {
        Config::try_load(std::env::args_os(), std::env::var_os(options::ENV))
            .unwrap_or_else(|e| e.exit())
    }

    /// [`Config::load`] from given arguments and `VERVE_KAFKA_OPTION` value. Like clap's own
    /// fallbacks, the variable is read only when no `--kafka-option` is given.
    pub fn try_load<I, T>(args: I, kafka_env: Option<OsString>) -> Result<Config, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let mut config = Config::try_parse_from(args)?;
        let refuse = |msg: String| Config::command().error(ErrorKind::ValueValidation, msg);
        if config.kafka_options.is_empty() {
            if let Some(list) = kafka_env {
                let list = list.into_string().map_err(|_| {
                    refuse(format!(
                        "{} (--kafka-option) is not valid UTF-8",
                        options::ENV
                    ))
                })?;
                config.kafka_options = options::split_list(&list);
            }
        }
        options::check(&config.kafka_options).map_err(|e| refuse(e.to_string()))?;
        if !config.kafka_options.is_empty() && config.kafka_brokers.is_none() {
            return Err(Config::command().error(
                ErrorKind::MissingRequiredArgument,
                "--kafka-option is for the Kafka clients: it needs --kafka-brokers",
            ));
        }
        Ok(config)
    }

    /// Checks what clap cannot: the allow-list entries.
    pub fn endpoint_policy(&self) -> Result<EndpointPolicy, String> {
        EndpointPolicy::new(&self.endpoint_allow)
            .map_err(|e| format!("invalid value for --endpoint-allow: {e}"))
    }

    /// `--instance-id`, or the host name and the port this instance listens on.
    pub fn instance_id(&self, port: u16) -> String {
        if let Some(id) = &self.instance_id {
            return id.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| check_instance_id(h).is_ok())
            .unwrap_or_else(|| "localhost".into());
        format!("{host}:{port}")
    }

    /// `--max-memory`, or its default (see [`crate::budget::default_limit`]); no budget
    /// only where neither the cgroup nor `/proc/meminfo` can be read.
    pub fn memory_limit(&self) -> u64 {
        self.max_memory
            .or_else(crate::budget::default_limit)
            .unwrap_or(u64::MAX)
    }

    /// `--max-connections`, or what `resources` allow (see [`crate::http::limits`]).
    pub fn connection_limit(&self, resources: &Resources) -> usize {
        match self.max_connections {
            Some(n) => n as usize,
            None => resources.connection_limit(),
        }
    }

    /// Worker threads: the flag, or the cores this process may run on.
    pub fn worker_count(&self) -> usize {
        match self.workers {
            Some(n) => n as usize,
            None => core_affinity::get_core_ids().map_or(1, |ids| ids.len().max(1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        load(args, None)
    }

    fn load(args: &[&str], kafka_env: Option<&str>) -> Result<Config, clap::Error> {
        Config::try_load(
            std::iter::once("verve").chain(args.iter().copied()),
            kafka_env.map(OsString::from),
        )
    }

    fn shown(options: &[KafkaOption]) -> Vec<(&str, &str)> {
        options.iter().map(|o| (o.key(), o.value())).collect()
    }

    const BROKERS: [&str; 2] = ["--kafka-brokers", "k:9092"];

    #[test]
    fn kafka_options_come_from_the_flag_or_else_the_environment() {
        let c = load(
            &[
                &BROKERS[..],
                &["--kafka-option", "security.protocol=sasl_ssl"],
                &["--kafka-option", "debug=broker,topic"],
            ]
            .concat(),
            Some("ignored.when.flags.are.given=1"),
        )
        .unwrap();
        assert_eq!(
            shown(&c.kafka_options),
            [("security.protocol", "sasl_ssl"), ("debug", "broker,topic")]
        );
        let c = load(&BROKERS, Some(r"sasl.mechanism=PLAIN,debug=broker\,topic")).unwrap();
        assert_eq!(
            shown(&c.kafka_options),
            [("sasl.mechanism", "PLAIN"), ("debug", "broker,topic")]
        );
        assert!(parse(&BROKERS).unwrap().kafka_options.is_empty());
    }

    #[test]
    fn refused_kafka_options_exit_2_naming_the_key_and_never_a_secret() {
        for (args, env, names) in [
            (vec!["--kafka-option", "acks=1"], None, "acks"),
            (
                vec![],
                Some("sasl.password=hunter2,enable.idempotence=false"),
                "enable.idempotence",
            ),
            (
                vec!["--kafka-option", "topic.message.timeout.ms=5"],
                None,
                "topic.message.timeout.ms",
            ),
            (
                vec!["--kafka-option", "sasl.password"],
                None,
                "sasl.password",
            ),
            (vec![], Some("sasl.password=hunter2,"), "KEY=VALUE"),
            (
                vec![
                    "--kafka-option",
                    "sasl.password=hunter2",
                    "--kafka-option",
                    "sasl.password=hunter2",
                ],
                None,
                "given twice",
            ),
        ] {
            let err = load(&[&BROKERS[..], &args].concat(), env).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?} {env:?}");
            let text = err.to_string();
            assert!(
                text.contains("--kafka-option") && text.contains(names),
                "{text}"
            );
            assert!(!text.contains("hunter2"), "{text}");
        }
        let err = parse(&["--kafka-option", "sasl.password=hunter2"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("--kafka-brokers"), "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let err = load(&[], Some("debug=all")).unwrap_err();
        assert!(err.to_string().contains("--kafka-brokers"), "{err}");
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.interval, 60);
        assert_eq!(c.log_file, PathBuf::from("verve.log"));
        assert_eq!(c.endpoint_method, Method::Get);
        assert_eq!(c.endpoint_timeout, Duration::from_secs(2));
        assert_eq!(c.max_endpoints, 1000);
        assert!(c.endpoint_allow.is_empty());
        assert_eq!(c.endpoint_host_calls, DEFAULT_HOST_CALLS);
        assert_eq!(c.idle_timeout, Duration::from_secs(60));
        let resources = Resources {
            nofile: 1024,
            max_map_count: 65_530,
        };
        assert_eq!(c.connection_limit(&resources), 512);
        let c = parse(&["--max-connections", "7"]).unwrap();
        assert_eq!(c.connection_limit(&resources), 7);
        assert!(c.redis.is_none());
        assert_eq!(c.redis_prefix, "verve");
        assert_eq!(c.cluster_grace, Duration::from_secs(2));
        assert_eq!(c.cluster_backlog, 10);
        assert!(c.kafka_brokers.is_none());
        assert_eq!(c.kafka_topic, "unique-requests");
        assert_eq!(c.kafka_backlog, 1440);
        assert_eq!(c.max_memory, None);
        assert_eq!(c.memory_limit(), crate::budget::default_limit().unwrap());
        assert_eq!(
            parse(&["--max-memory", "8MiB"]).unwrap().memory_limit(),
            8 << 20
        );
        let id = c.instance_id(8080);
        assert!(id.ends_with(":8080") && id.len() > 5, "{id}");
    }

    #[test]
    fn bad_values_name_the_flag() {
        for (args, flag) in [
            (&["--interval", "0"][..], "--interval"),
            (&["--interval", "x"], "--interval"),
            (&["--listen", "nowhere"], "--listen"),
            (&["--endpoint-timeout", "0"], "--endpoint-timeout"),
            (&["--endpoint-timeout", "NaN"], "--endpoint-timeout"),
            (&["--endpoint-method", "put"], "--endpoint-method"),
            (&["--max-endpoints", "0"], "--max-endpoints"),
            (&["--endpoint-host-calls", "0"], "--endpoint-host-calls"),
            (&["--endpoint-host-calls", "257"], "--endpoint-host-calls"),
            (&["--max-connections", "0"], "--max-connections"),
            (&["--max-connections", "-1"], "--max-connections"),
            (&["--bogus"], "--bogus"),
            (&["--interval", "-5"], "--interval"),
            (&["--idle-timeout", "-1"], "--idle-timeout"),
            (&["--redis", "http://x"], "--redis"),
            (&["--redis", ""], "--redis"),
            (&["--redis-prefix", "a{b}"], "--redis-prefix"),
            (&["--cluster-grace", "0"], "--cluster-grace"),
            (&["--cluster-backlog", "0"], "--cluster-backlog"),
            (&["--instance-id", "a b"], "--instance-id"),
            (&["--kafka-brokers", "nohost"], "--kafka-brokers"),
            (&["--kafka-brokers", "a:99999"], "--kafka-brokers"),
            (&["--kafka-topic", "a/b"], "--kafka-topic"),
            (&["--kafka-backlog", "0"], "--kafka-backlog"),
            (&["--max-memory", "512KiB"], "--max-memory"),
            (&["--max-memory", "lots"], "--max-memory"),
        ] {
            let err = parse(args).unwrap_err();
            assert_eq!(err.exit_code(), 2);
            assert!(err.to_string().contains(flag), "{args:?}: {err}");
        }
    }

    #[test]
    fn allow_list_is_comma_separated_and_checked() {
        let c = parse(&[
            "--endpoint-allow",
            "a.test,*.b.test",
            "--endpoint-method",
            "post",
        ])
        .unwrap();
        assert_eq!(c.endpoint_allow, ["a.test", "*.b.test"]);
        assert!(c.endpoint_policy().unwrap().name_listed("x.b.test"));
        let bad = parse(&["--endpoint-allow", "*."]).unwrap();
        assert!(bad
            .endpoint_policy()
            .unwrap_err()
            .contains("--endpoint-allow"));
    }
}
