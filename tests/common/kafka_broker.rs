//! A real Kafka-protocol broker for the Kafka tests: tansu 0.6 (an Apache Kafka compatible
//! broker written in Rust, `cargo install --locked tansu --features dynostore`;
//! `scripts/test.sh` installs it when missing) with in-memory storage, on a free loopback port, killed on
//! drop. It can be frozen (SIGSTOP) and thawed: its memory storage forgets everything on a
//! restart, so a freeze is the outage these tests use.
//!
//! A broker can also advertise another port than the one it listens on
//! ([`Setup::advertised_port`]: a TLS proxy's or a SASL gate's in front of it; tansu 0.6 has
//! `--cert` and `--key` flags but cannot take both, and serves plain TCP all the same), and
//! require a SASL login, which it then refuses ([`Setup::authentication`]).
//!
//! Also a reader of a topic, with an rdkafka consumer of its own.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::{temp_dir, wait_until};

/// Where the `tansu` binary is: `$TANSU`, else on `PATH`, else in cargo's bin directory.
fn tansu_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("TANSU") {
        return path.into();
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("tansu"))
            .find(|p| p.is_file())
    });
    on_path.unwrap_or_else(|| {
        let cargo_home = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cargo"));
        cargo_home.join("bin").join("tansu")
    })
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// How a broker is set up beyond the defaults.
#[derive(Debug, Clone, Copy, Default)]
pub struct Setup {
    /// The port clients are told to use (`--advertised-listener-url`) when it is not the
    /// one tansu listens on: a TLS proxy's in front of it.
    pub advertised_port: Option<u16>,
    /// `--authentication`: every request but the SASL handshake needs a login first. tansu
    /// 0.6 accepts none with its in-memory storage (no PLAIN, no SCRAM users kept, no
    /// OAUTHBEARER validator), so this is a broker that refuses every login; the test's own
    /// clients cannot use it, and it counts as ready once it listens.
    pub authentication: bool,
}

/// A `tansu broker` of the test's own.
pub struct Broker {
    child: Option<Child>,
    pub port: u16,
    frozen: bool,
    /// Where the test's own clients (the readiness check, the reader) connect, and how.
    client_bootstrap: String,
    client_options: Vec<(String, String)>,
}

impl Broker {
    /// Starts a broker on a free port.
    pub fn start() -> Broker {
        Broker::start_on(free_port())
    }

    /// Starts a broker on `port` (one verve was told about before it existed) and waits
    /// until it answers a metadata request.
    pub fn start_on(port: u16) -> Broker {
        Broker::start_with(port, Setup::default())
    }

    /// [`Broker::start_on`] with a [`Setup`].
    pub fn start_with(port: u16, setup: Setup) -> Broker {
        let url = format!("tcp://127.0.0.1:{port}");
        let advertised = format!("tcp://127.0.0.1:{}", setup.advertised_port.unwrap_or(port));
        let dir = temp_dir("tansu");
        let bin = tansu_bin();
        let mut cmd = Command::new(&bin);
        // tansu reads its settings from the environment too: none of the test's may leak in.
        for key in [
            "CLUSTER_ID",
            "LISTENER_URL",
            "ADVERTISED_LISTENER_URL",
            "STORAGE_ENGINE",
            "SCHEMA_REGISTRY",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ] {
            cmd.env_remove(key);
        }
        let child = cmd
            .args(["broker", "--listener-url", &url])
            .args(["--advertised-listener-url", &advertised])
            .args(["--storage-engine", "memory://tansu/"])
            .args(setup.authentication.then_some("--authentication"))
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "starting {} ({e}): install it with `cargo install --locked tansu \
                     --features dynostore` (scripts/test.sh does)",
                    bin.display()
                )
            });
        let broker = Broker {
            child: Some(child),
            port,
            frozen: false,
            client_bootstrap: format!("127.0.0.1:{port}"),
            client_options: Vec::new(),
        };
        if setup.authentication {
            wait_until("tansu to listen", || {
                std::net::TcpStream::connect(("127.0.0.1", port)).ok()
            });
            return broker;
        }
        wait_until("tansu to answer a metadata request", || {
            let consumer: BaseConsumer = broker.client_config().create().ok()?;
            consumer
                .fetch_metadata(None, Duration::from_secs(2))
                .ok()
                .filter(|m| !m.brokers().is_empty())
        });
        broker
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// From now on the test's clients connect to `bootstrap` with `options` (through the TLS
    /// proxy, say, once it runs: the broker advertises its port).
    pub fn use_clients(&mut self, bootstrap: &str, options: &[(&str, &str)]) {
        self.client_bootstrap = bootstrap.to_owned();
        self.client_options = options
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    }

    fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.client_bootstrap)
            .set("group.id", "verve-tests")
            .set("enable.auto.commit", "false")
            .set("log_level", "3");
        for (key, value) in &self.client_options {
            config.set(key, value);
        }
        config
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().expect("broker running").id() as i32
    }

    /// SIGSTOP: the broker keeps its connections and its data but answers nothing.
    pub fn freeze(&mut self) {
        // SAFETY: kill(2) on our own child, not reaped yet.
        assert_eq!(unsafe { libc::kill(self.pid(), libc::SIGSTOP) }, 0);
        self.frozen = true;
    }

    /// SIGCONT: the broker goes on where it stopped.
    pub fn thaw(&mut self) {
        // SAFETY: as in `freeze`.
        assert_eq!(unsafe { libc::kill(self.pid(), libc::SIGCONT) }, 0);
        self.frozen = false;
    }

    /// Every record of partition 0 of `topic`, from the start: waits until at least `n` are
    /// there, then reads on to the partition's end (high watermark) so that a duplicate after
    /// the first `n` is seen too. Returns (key, value) pairs in offset order.
    pub fn read_topic(&self, topic: &str, n: usize) -> Vec<(String, String)> {
        let consumer: BaseConsumer = self.client_config().create().expect("creating a consumer");
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(topic, 0, Offset::Beginning)
            .unwrap();
        consumer.assign(&assignment).expect("assigning partition 0");
        let mut records = Vec::new();
        let mut next_offset = 0;
        wait_until(&format!("{n} records in topic {topic}"), || {
            while let Some(msg) = consumer.poll(Duration::from_millis(100)) {
                let msg = msg.expect("consuming");
                let text =
                    |b: Option<&[u8]>| String::from_utf8(b.unwrap_or_default().to_vec()).unwrap();
                records.push((text(msg.key()), text(msg.payload())));
                next_offset = msg.offset() + 1;
            }
            if records.len() < n {
                return None;
            }
            let (_, high) = consumer
                .fetch_watermarks(topic, 0, Duration::from_secs(5))
                .ok()?;
            (next_offset >= high).then_some(())
        });
        records
    }

    /// The number of partitions of `topic`, or `None` when the broker does not know it.
    pub fn partitions(&self, topic: &str) -> Option<usize> {
        let consumer: BaseConsumer = self.client_config().create().ok()?;
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .ok()?;
        let t = metadata.topics().iter().find(|t| t.name() == topic)?;
        if t.error().is_some() {
            return None;
        }
        Some(t.partitions().len())
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if self.frozen {
                // SAFETY: as in `freeze`; a stopped process still dies of SIGKILL, but
                // thawing first is harmless and keeps the order obvious.
                unsafe { libc::kill(child.id() as i32, libc::SIGCONT) };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
