//! Wiring: builds the shards, the reporters, the collector and the HTTP front from the
//! config, and runs the shutdown sequence. Takes its listener and clock as arguments so tests
//! can bind `127.0.0.1:0` and move time by hand.

use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::budget::IdMemory;
use crate::clock::{Clock, Windows};
use crate::cluster::node::{ClusterSink, Extras, RecordHandoff, Settings};
use crate::cluster::store::Keys;
use crate::collector::{Collector, CollectorHandle};
use crate::config::Config;
use crate::health::Health;
use crate::http::drain::Drain;
use crate::http::limits::Resources;
use crate::http::{self, Admission, Ctx};
use crate::metrics::Metrics;
use crate::report::callback::{self, Callbacks};
use crate::report::count_log::CountLog;
use crate::report::kafka::{self, Kafka};
use crate::report::state_file::StateFileMark;
use crate::report::Fanout;
use crate::shards::Shards;
use crate::sink::{LocalSink, WindowSink};
use crate::state;

/// verve exits within 5 s of the signal (README, *Shutdown*); this leaves room for the
/// process to unwind after the reporters' deadline.
pub const SHUTDOWN_BUDGET: Duration = Duration::from_millis(4_000);

/// Longest wait for requests already read to be answered before the last window is sealed.
pub const DRAIN_TIMEOUT: Duration = Duration::from_millis(1_000);

/// Binds the listening socket: `SO_REUSEADDR` (restart while old connections linger) but not
/// `SO_REUSEPORT`, so a second instance on the same port fails instead of sharing it.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    // A deep accept queue absorbs connection bursts from load generators and balancers.
    socket.listen(4096)?;
    Ok(socket.into())
}

/// A running verve.
pub struct Server {
    ctx: Arc<Ctx>,
    /// Whether verve's threads are alive; `main` waits on it besides the signals.
    health: Health,
    addr: SocketAddr,
    acceptor: may::coroutine::JoinHandle<()>,
    reaper: std::thread::JoinHandle<()>,
    collector: CollectorHandle,
}

impl Server {
    /// Starts serving on `listener`. `shards` should equal the may worker count.
    pub fn start(
        config: &Config,
        listener: std::net::TcpListener,
        clock: Arc<dyn Clock>,
        shards: usize,
    ) -> anyhow::Result<Server> {
        let policy = config.endpoint_policy().clone();
        let health = Health::new();
        let memory = IdMemory::new(config.memory_limit());
        log::info!("id memory budget: {} bytes", memory.limit());
        let metrics = Arc::new(Metrics::with_memory(shards, memory.clone()));
        let shards = Arc::new(Shards::with_memory(
            shards,
            policy.clone(),
            config.max_endpoints as usize,
            memory,
        ));
        let windows = Windows::new(config.interval);
        let interval = Duration::from_secs(config.interval);
        // The state file is read and written afresh before the reporters start: they record
        // in it what they deliver.
        let recovered = match &config.state_file {
            Some(path) => {
                let limits = state::Limits::new(
                    shards.memory().limit(),
                    config.max_endpoints as usize,
                    windows,
                    clock.now_ms(),
                );
                shards.set_durable();
                Some(state::restore::open(
                    path, &limits, &policy, &metrics, &health,
                )?)
            }
            None => None,
        };
        let journal = recovered.as_ref().map(|(journal, _)| journal.sender());
        let callbacks = Callbacks::start(
            callback::Settings {
                method: config.endpoint_method,
                timeout: config.endpoint_timeout,
                policy: policy.clone(),
                queue_len: config.callback_queue_len(),
                host_calls: config.endpoint_host_calls as usize,
                threads: callback::call_threads(
                    config.max_endpoints as usize,
                    config.endpoint_timeout,
                    interval,
                ),
                patience: interval,
                journal: journal.clone(),
            },
            metrics.clone(),
            &health,
        )
        .context("starting the callback dispatcher")?;
        let mut reporters = Fanout::new().with(CountLog::new(metrics.clone()));
        if let Some(journal) = &journal {
            reporters = reporters.with(StateFileMark::new(
                journal.clone(),
                config.kafka_brokers.is_some(),
            ));
        }
        reporters = reporters.with(callbacks);
        let mut handoff = None;
        if let Some(brokers) = &config.kafka_brokers {
            let settings = kafka::Settings {
                brokers: brokers.clone(),
                topic: config.kafka_topic.clone(),
                backlog: config.kafka_backlog as usize,
                options: config.kafka_options.clone(),
                journal: journal.clone(),
            };
            log::info!("kafka: {}", settings.describe());
            for warning in settings.warnings() {
                log::warn!("kafka: {warning}");
            }
            let kafka = Kafka::start(settings, metrics.clone(), &health)?;
            // Cluster mode: a record its leader could not deliver is produced by another.
            handoff = Some(kafka.handoff());
            reporters = reporters.with(kafka);
        }
        let addr = listener
            .local_addr()
            .context("reading the listening address")?;
        metrics.status.configure(
            &metrics,
            crate::status::Info {
                interval_secs: config.interval,
                instance: config
                    .redis
                    .as_ref()
                    .map(|_| config.instance_id(addr.port())),
                kafka_topic: config
                    .kafka_brokers
                    .as_ref()
                    .map(|_| config.kafka_topic.clone()),
                state_file: config.state_file.is_some(),
            },
        );
        let mut sink: Box<dyn WindowSink> = match &config.redis {
            None => Box::new(LocalSink::new(reporters)),
            Some(target) => {
                let settings = Settings {
                    target: target.clone(),
                    keys: Keys::new(&config.redis_prefix),
                    instance: config.instance_id(addr.port()),
                    grace: config.cluster_grace,
                    backlog: config.cluster_backlog as usize,
                    windows,
                };
                log::info!(
                    "cluster mode: Redis {}, instance {}, grace {:?}, backlog {} windows",
                    target.display(),
                    settings.instance,
                    settings.grace,
                    settings.backlog
                );
                let extras = Extras {
                    records: handoff.map(|h| Box::new(h) as Box<dyn RecordHandoff>),
                    ..Extras::default()
                };
                let sink = ClusterSink::start_with(
                    settings,
                    shards.clone(),
                    clock.clone(),
                    Box::new(reporters),
                    metrics.clone(),
                    &health,
                    extras,
                )
                .context("starting the cluster thread")?;
                Box::new(sink)
            }
        };
        let journal = match recovered {
            Some((journal, recovery)) => {
                let kafka = config.kafka_brokers.is_some();
                recovery.apply(&shards, &metrics, &mut *sink, &journal.sender(), kafka);
                Some(journal)
            }
            None => None,
        };
        let collector = Collector {
            shards: shards.clone(),
            windows,
            clock: clock.clone(),
            sink,
            metrics: metrics.clone(),
            journal,
            memory_warned: None,
            snapshots_asked: 0,
        }
        .spawn(&health)
        .context("starting the collector thread")?;
        http::date::try_start().context("starting the Date header thread")?;
        http::fair::try_start().context("starting the thread that wakes heavy connections")?;
        listener
            .set_nonblocking(true)
            .context("making the listener non-blocking")?;
        // SAFETY: the descriptor comes from a listener we own and give up here.
        let listener = unsafe { may::net::TcpListener::from_raw_fd(listener.into_raw_fd()) };
        let idle_shards = shards.len();
        let idle = http::idle::Idle::new(idle_shards, config.idle_timeout);
        let reaper = idle
            .spawn_reaper(&health)
            .context("starting the idle-connection reaper")?;
        let resources = Resources::current();
        let max_connections = config.connection_limit(&resources);
        let holdable = resources.connection_limit();
        if max_connections > holdable {
            log::warn!(
                "--max-connections {max_connections} is more than this process can hold \
                 ({holdable}: RLIMIT_NOFILE {}, vm.max_map_count {}); past that, new \
                 connections fail to be accepted until others close (logged, /healthz 503)",
                resources.nofile,
                resources.max_map_count
            );
        }
        log::info!(
            "at most {max_connections} connections (RLIMIT_NOFILE {}, vm.max_map_count {})",
            resources.nofile,
            resources.max_map_count
        );
        metrics
            .max_connections
            .store(max_connections as u64, SeqCst);
        let ctx = Arc::new(Ctx {
            shards,
            metrics,
            clock,
            windows,
            drain: Drain::new(idle_shards),
            health: health.clone(),
            idle_timeout: config.idle_timeout,
            idle,
            admission: Admission::new(max_connections),
        });
        let acceptor = http::spawn_acceptor(listener, ctx.clone())
            .map_err(anyhow::Error::msg)
            .context("starting the accept loop")?;
        Ok(Server {
            ctx,
            health,
            addr,
            acceptor,
            collector,
            reaper,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether verve's threads are alive (see [`crate::health`]).
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// The graceful stop: `/healthz` turns 503, no new connections, requests already read
    /// are answered, then the open window is sealed and reported (a partial count) and the
    /// reporters get what is left of [`SHUTDOWN_BUDGET`]. False when the collector had died,
    /// so nothing was reported (see [`crate::health`]).
    pub fn shutdown(self) -> bool {
        let deadline = Instant::now() + SHUTDOWN_BUDGET;
        self.ctx.drain.start();
        http::wake(self.addr);
        let _ = self.acceptor.join();
        self.ctx.drain.wait(Instant::now() + DRAIN_TIMEOUT);
        let reported = self.collector.shutdown(deadline);
        self.ctx.idle.stop();
        let _ = self.reaper.join();
        reported
    }
}
