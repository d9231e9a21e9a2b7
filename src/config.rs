//! The configuration, in two steps, as ripgrep reads its flags: [`Flags`] is every flag of
//! the README's *Flags* table, each with a `VERVE_<FLAG>` environment fallback,
//! parsed and range-checked by clap, with the rules between flags beside them (`conflicts_with`,
//! `requires`); [`Config`] is the flags checked as a whole and resolved (the endpoint policy,
//! the default instance id, the worker count, the memory budget), made once at start-up and
//! read-only afterwards, and it builds each component's settings. Every refusal is a
//! [`clap::Error`] that names the flag, exit status 2.
//!
//! `VERVE_KAFKA_OPTION` is read by [`Config`] rather than by clap: its list has an escape clap
//! cannot express, and clap's `--help` would print its value, secrets included. Nothing here
//! prints a secret: not a Kafka option's value, not a Redis password (see `flags::RedisUrl`).

mod flags;

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser};

use crate::clock::Windows;
use crate::cluster::conn::{check_instance_id, Target};
use crate::cluster::node;
use crate::cluster::store::Keys;
use crate::endpoints::EndpointPolicy;
use crate::http::limits::Resources;
use crate::report::callback::{self, Method};
use crate::report::kafka::{self, options};
use crate::state::{self, writer::JournalSender};
use crate::status;

pub use flags::Flags;

/// The configuration verve runs with: the [`Flags`] checked together and resolved (defaults
/// filled in, units chosen), made once at start-up and read-only afterwards. Each component
/// gets its settings from here, built whole ([`Config::callback_settings`],
/// [`Config::kafka_settings`], [`Config::cluster_settings`], [`Config::status_info`],
/// [`Config::state_limits`]); nothing outside this module reads a flag.
#[derive(Debug, Clone)]
pub struct Config {
    /// `--listen`.
    listen: SocketAddr,
    /// `--log-file`.
    log_file: PathBuf,
    /// `--interval`, as the window arithmetic every component shares.
    windows: Windows,
    /// `--idle-timeout`.
    idle_timeout: Duration,
    /// `--max-connections`; without it, what the process limits allow (see
    /// [`Config::connection_limit`]).
    max_connections: Option<usize>,
    /// `--workers`, or the cores this process may run on.
    worker_count: usize,
    /// `--state-file`.
    state_file: Option<PathBuf>,
    /// `--max-memory`, or its default.
    memory_limit: u64,
    /// `--max-endpoints`.
    max_endpoints: usize,
    /// `--endpoint-allow`, parsed.
    endpoint_policy: EndpointPolicy,
    /// `--endpoint-method`.
    endpoint_method: Method,
    /// `--endpoint-timeout`.
    endpoint_timeout: Duration,
    /// `--endpoint-host-calls`.
    endpoint_host_calls: usize,
    /// Cluster mode (`--redis` and its companions); `None`: a single instance.
    cluster: Option<Cluster>,
    /// The Kafka reporter's settings without a journal (the state file's is known only once
    /// it is open); `None` without `--kafka-brokers`.
    kafka: Option<kafka::Settings>,
}

/// Cluster mode's flags, resolved.
#[derive(Debug, Clone)]
struct Cluster {
    /// `--redis`.
    target: Target,
    /// `--redis-prefix`.
    keys: Keys,
    /// `--instance-id`; `None`: the host name and the port (see [`Config::instance_id`]).
    instance_id: Option<String>,
    /// The first half of the default `--instance-id`: this machine's host name, or
    /// `localhost` when it cannot be read or cannot name an instance.
    host_name: String,
    /// `--cluster-grace`.
    grace: Duration,
    /// `--cluster-backlog`.
    backlog: usize,
}

impl Config {
    /// The command line and the environment of this process.
    pub fn load() -> Result<Config, clap::Error> {
        Config::try_load(std::env::args_os(), std::env::var_os(options::ENV))
    }

    /// [`Config::load`] from given arguments and `VERVE_KAFKA_OPTION` value. Like clap's own
    /// fallbacks, the variable is read only when no `--kafka-option` is given.
    pub fn try_load<I, T>(args: I, kafka_env: Option<OsString>) -> Result<Config, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        Config::check(Flags::try_parse_from(args)?, kafka_env)
    }

    /// What clap cannot check (the `VERVE_KAFKA_OPTION` list, and the allow-list as a
    /// whole), then the flags resolved.
    fn check(mut flags: Flags, kafka_env: Option<OsString>) -> Result<Config, clap::Error> {
        let refuse = |kind, msg: String| Flags::command().error(kind, msg);
        if flags.kafka_options.is_empty() {
            if let Some(list) = kafka_env {
                let list = list.into_string().map_err(|_| {
                    refuse(
                        ErrorKind::ValueValidation,
                        format!("{} (--kafka-option) is not valid UTF-8", options::ENV),
                    )
                })?;
                flags.kafka_options = options::split_list(&list);
                // The rule clap checks for the flag (`requires`), for the variable.
                if !flags.kafka_options.is_empty() && flags.kafka_brokers.is_none() {
                    return Err(refuse(
                        ErrorKind::MissingRequiredArgument,
                        "--kafka-option is for the Kafka clients: it needs --kafka-brokers".into(),
                    ));
                }
            }
        }
        options::check(&flags.kafka_options)
            .map_err(|e| refuse(ErrorKind::ValueValidation, e.to_string()))?;
        let endpoint_policy = EndpointPolicy::new(&flags.endpoint_allow).map_err(|e| {
            refuse(
                ErrorKind::ValueValidation,
                format!("invalid value for --endpoint-allow: {e}"),
            )
        })?;
        Ok(Config::resolve(flags, endpoint_policy))
    }

    /// The checked flags with their defaults filled in.
    fn resolve(flags: Flags, endpoint_policy: EndpointPolicy) -> Config {
        let worker_count = match flags.workers {
            Some(n) => n as usize,
            None => core_affinity::get_core_ids().map_or(1, |ids| ids.len().max(1)),
        };
        // No budget only where neither the cgroup nor `/proc/meminfo` can be read.
        let memory_limit = flags
            .max_memory
            .or_else(crate::budget::default_limit)
            .unwrap_or(u64::MAX);
        let cluster = flags.redis.map(|target| Cluster {
            target,
            keys: Keys::new(&flags.redis_prefix),
            instance_id: flags.instance_id,
            host_name: host_name(),
            grace: flags.cluster_grace,
            backlog: flags.cluster_backlog as usize,
        });
        let kafka = flags.kafka_brokers.map(|brokers| kafka::Settings {
            brokers,
            topic: flags.kafka_topic,
            backlog: flags.kafka_backlog as usize,
            options: flags.kafka_options,
            journal: None,
        });
        Config {
            listen: flags.listen,
            log_file: flags.log_file,
            windows: Windows::new(flags.interval),
            idle_timeout: flags.idle_timeout,
            max_connections: flags.max_connections.map(|n| n as usize),
            worker_count,
            state_file: flags.state_file,
            memory_limit,
            max_endpoints: flags.max_endpoints as usize,
            endpoint_policy,
            endpoint_method: flags.endpoint_method,
            endpoint_timeout: flags.endpoint_timeout,
            endpoint_host_calls: flags.endpoint_host_calls as usize,
            cluster,
            kafka,
        }
    }

    /// `--listen`: the address to bind.
    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    /// `--log-file`.
    pub fn log_file(&self) -> &Path {
        &self.log_file
    }

    /// `--interval`: how time is cut into windows.
    pub fn windows(&self) -> Windows {
        self.windows
    }

    /// `--idle-timeout`.
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// `--state-file`.
    pub fn state_file(&self) -> Option<&Path> {
        self.state_file.as_deref()
    }

    /// `--max-endpoints`: most distinct endpoints per window.
    pub fn max_endpoints(&self) -> usize {
        self.max_endpoints
    }

    /// `--endpoint-allow`: which callback URLs may be called.
    pub fn endpoint_policy(&self) -> &EndpointPolicy {
        &self.endpoint_policy
    }

    /// `--max-memory`, or its default (see [`crate::budget::default_limit`]); no budget
    /// only where neither the cgroup nor `/proc/meminfo` can be read.
    pub fn memory_limit(&self) -> u64 {
        self.memory_limit
    }

    /// `--max-connections`, or what `resources` allow (see [`crate::http::limits`]).
    pub fn connection_limit(&self, resources: &Resources) -> usize {
        self.max_connections
            .unwrap_or_else(|| resources.connection_limit())
    }

    /// Worker threads: `--workers`, or the cores this process may run on.
    pub fn worker_count(&self) -> usize {
        self.worker_count
    }

    /// `--state-file`'s limits on what a restart reads back, at `now_ms`: a file of this
    /// instance's budget and endpoint table (see [`state::Limits::new`]).
    pub fn state_limits(&self, now_ms: u64) -> state::Limits {
        state::Limits::new(self.memory_limit, self.max_endpoints, self.windows, now_ms)
    }

    /// The callback dispatcher's settings, recording what it settles in `journal`
    /// (`--state-file`).
    pub fn callback_settings(&self, journal: Option<JournalSender>) -> callback::Settings {
        let interval = self.windows.length();
        callback::Settings {
            method: self.endpoint_method,
            timeout: self.endpoint_timeout,
            policy: self.endpoint_policy.clone(),
            // A window's worth of endpoints, four times over.
            queue_len: self.max_endpoints * 4,
            host_calls: self.endpoint_host_calls,
            threads: callback::call_threads(self.max_endpoints, self.endpoint_timeout, interval),
            patience: interval,
            journal,
        }
    }

    /// The Kafka reporter's settings, recording what it delivers in `journal`
    /// (`--state-file`); `None` without `--kafka-brokers`.
    pub fn kafka_settings(&self, journal: Option<JournalSender>) -> Option<kafka::Settings> {
        let mut settings = self.kafka.clone()?;
        settings.journal = journal;
        Some(settings)
    }

    /// True with `--kafka-brokers`: windows get a Kafka record.
    pub fn kafka(&self) -> bool {
        self.kafka.is_some()
    }

    /// Cluster mode's settings for an instance listening on `port` (part of the default
    /// instance id); `None` without `--redis`.
    pub fn cluster_settings(&self, port: u16) -> Option<node::Settings> {
        let cluster = self.cluster.as_ref()?;
        Some(node::Settings {
            target: cluster.target.clone(),
            keys: cluster.keys.clone(),
            instance: self.instance_id(cluster, port),
            grace: cluster.grace,
            backlog: cluster.backlog,
            windows: self.windows,
        })
    }

    /// What the status page says about this instance listening on `port`.
    pub fn status_info(&self, port: u16) -> status::Info {
        status::Info {
            interval_secs: self.windows.length().as_secs(),
            instance: self.cluster.as_ref().map(|c| self.instance_id(c, port)),
            kafka_topic: self.kafka.as_ref().map(|k| k.topic.clone()),
            state_file: self.state_file.is_some(),
        }
    }

    /// `--instance-id`, or the host name and the port this instance listens on (known only
    /// once it is bound: `--listen` may ask for any free port).
    fn instance_id(&self, cluster: &Cluster, port: u16) -> String {
        match &cluster.instance_id {
            Some(id) => id.clone(),
            None => format!("{}:{port}", cluster.host_name),
        }
    }
}

/// This machine's host name, or `localhost` when it cannot be read or cannot name an
/// instance.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| check_instance_id(h).is_ok())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::callback::DEFAULT_HOST_CALLS;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        load(args, None)
    }

    fn load(args: &[&str], kafka_env: Option<&str>) -> Result<Config, clap::Error> {
        Config::try_load(
            std::iter::once("verve").chain(args.iter().copied()),
            kafka_env.map(OsString::from),
        )
    }

    fn shown(config: &Config) -> Vec<(String, String)> {
        let kafka = config.kafka_settings(None).expect("--kafka-brokers given");
        kafka
            .options
            .iter()
            .map(|o| (o.key().to_owned(), o.value().to_owned()))
            .collect()
    }

    fn pairs<'a>(pairs: &[(&'a str, &'a str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|&(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
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
            shown(&c),
            pairs(&[("security.protocol", "sasl_ssl"), ("debug", "broker,topic")])
        );
        let c = load(&BROKERS, Some(r"sasl.mechanism=PLAIN,debug=broker\,topic")).unwrap();
        assert_eq!(
            shown(&c),
            pairs(&[("sasl.mechanism", "PLAIN"), ("debug", "broker,topic")])
        );
        assert!(shown(&parse(&BROKERS).unwrap()).is_empty());
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
        assert_eq!(c.listen(), "0.0.0.0:8080".parse().unwrap());
        assert_eq!(c.windows(), Windows::new(60));
        assert_eq!(c.log_file(), Path::new("verve.log"));
        assert_eq!(c.max_endpoints(), 1000);
        assert_eq!(c.idle_timeout(), Duration::from_secs(60));
        assert_eq!(c.state_file(), None);
        let calls = c.callback_settings(None);
        assert_eq!(calls.method, Method::Get);
        assert_eq!(calls.timeout, Duration::from_secs(2));
        assert_eq!(calls.host_calls, DEFAULT_HOST_CALLS as usize);
        let resources = Resources {
            nofile: 1024,
            max_map_count: 65_530,
        };
        assert_eq!(c.connection_limit(&resources), 512);
        let c7 = parse(&["--max-connections", "7"]).unwrap();
        assert_eq!(c7.connection_limit(&resources), 7);
        assert!(c.cluster_settings(8080).is_none());
        assert!(c.kafka_settings(None).is_none() && !c.kafka());
        assert_eq!(c.status_info(8080).instance, None);
        assert_eq!(c.memory_limit(), crate::budget::default_limit().unwrap());
        assert_eq!(
            parse(&["--max-memory", "8MiB"]).unwrap().memory_limit(),
            8 << 20
        );
        let cluster = parse(&REDIS).unwrap().cluster_settings(8080).unwrap();
        assert_eq!(cluster.keys.prefix(), "verve");
        assert_eq!(cluster.grace, Duration::from_secs(2));
        assert_eq!(cluster.backlog, 10);
        let id = cluster.instance;
        assert!(id.ends_with(":8080") && id.len() > 5, "{id}");
        assert!(check_instance_id(&id).is_ok(), "{id}");
        let kafka = parse(&BROKERS).unwrap().kafka_settings(None).unwrap();
        assert_eq!(kafka.brokers, "k:9092");
        assert_eq!(kafka.topic, "unique-requests");
        assert_eq!(kafka.backlog, 1440);
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
    fn allow_list_is_comma_separated_and_checked_at_load() {
        let c = parse(&[
            "--endpoint-allow",
            "a.test,*.b.test",
            "--endpoint-method",
            "post",
        ])
        .unwrap();
        assert!(c.endpoint_policy().name_listed("a.test"));
        assert!(c.endpoint_policy().name_listed("x.b.test"));
        assert!(!c.endpoint_policy().name_listed("b.test"));
        assert_eq!(c.callback_settings(None).method, Method::Post);
        for bad in ["*.", "10.0.0.1/8"] {
            let err = parse(&["--endpoint-allow", bad]).unwrap_err();
            assert_eq!(err.exit_code(), 2);
            assert!(err.to_string().contains("--endpoint-allow"), "{err}");
        }
    }

    const REDIS: [&str; 2] = ["--redis", "redis://verve:s3cret@127.0.0.1:6379/"];

    #[test]
    fn a_state_file_is_for_a_single_instance() {
        let err = parse(&[&["--state-file", "w.state"][..], &REDIS].concat()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ArgumentConflict);
        assert_eq!(err.exit_code(), 2);
        let text = err.to_string();
        assert!(
            text.contains("--state-file") && text.contains("--redis"),
            "{text}"
        );
        assert!(!text.contains("s3cret"), "{text}");
        assert!(parse(&["--state-file", "w.state"]).is_ok());
        assert!(parse(&REDIS).is_ok());
    }

    #[test]
    fn kafka_options_need_brokers() {
        let err = parse(&["--kafka-option", "debug=all"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);
        assert!(err.to_string().contains("--kafka-brokers"), "{err}");
        let err = load(&[], Some("debug=all")).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);
        assert!(parse(&[&BROKERS[..], &["--kafka-option", "debug=all"]].concat()).is_ok());
    }

    #[test]
    fn a_redis_password_is_never_shown() {
        for bad in [
            "redis://verve:s3cret@127.0.0.1:99999/",
            "http://verve:s3cret@127.0.0.1:6379/",
            "verve:s3cret@127.0.0.1:6379",
        ] {
            let err = parse(&["--redis", bad]).unwrap_err();
            assert_eq!(err.exit_code(), 2);
            let text = err.to_string();
            assert!(
                text.contains("--redis") && !text.contains("s3cret"),
                "{text}"
            );
        }
        // `--help` does not show the value of VERVE_REDIS.
        let command = Flags::command();
        let redis = command
            .get_arguments()
            .find(|a| a.get_id() == "redis")
            .unwrap();
        assert!(redis.is_hide_env_values_set());
    }

    #[test]
    fn what_derives_from_the_flags() {
        let c = parse(&["--max-endpoints", "10", "--interval", "5"]).unwrap();
        let calls = c.callback_settings(None);
        // A window's worth of endpoints, four times over; calls wait at most one window.
        assert_eq!(calls.queue_len, 40);
        assert_eq!(calls.patience, Duration::from_secs(5));
        assert_eq!(
            calls.threads,
            callback::call_threads(10, Duration::from_secs(2), Duration::from_secs(5))
        );
        let cluster = parse(&[&REDIS[..], &["--interval", "5"]].concat())
            .unwrap()
            .cluster_settings(8080)
            .unwrap();
        // Ten windows of backlog and three more, the grace and a minute.
        assert_eq!(cluster.key_ttl(), Duration::from_secs(5 * 13 + 2 + 60));
        let c = parse(&[&REDIS[..], &["--instance-id", "a", "--workers", "3"]].concat()).unwrap();
        assert_eq!(c.cluster_settings(8080).unwrap().instance, "a");
        assert_eq!(c.status_info(8080).instance.as_deref(), Some("a"));
        assert_eq!(c.worker_count(), 3);
        assert!(parse(&[]).unwrap().worker_count() >= 1);
        let c = parse(
            &[
                &BROKERS[..],
                &["--kafka-topic", "t", "--state-file", "w.state"],
            ]
            .concat(),
        )
        .unwrap();
        let info = c.status_info(1);
        assert_eq!(info.kafka_topic.as_deref(), Some("t"));
        assert!(info.state_file && info.instance.is_none());
        assert_eq!(c.state_file(), Some(Path::new("w.state")));
        let limits = c.state_limits(7);
        assert_eq!((limits.now_ms, limits.windows), (7, Windows::new(60)));
        assert_eq!(limits.max_id_bytes, c.memory_limit());
    }
}
