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
use crate::clock::Clock;
use crate::cluster::node::{ClusterSink, Extras, RecordHandoff, Shared};
use crate::collector::{Collector, CollectorHandle};
use crate::config::Config;
use crate::health::Health;
use crate::http::drain::Drain;
use crate::http::limits::Resources;
use crate::http::{self, Admission, Ctx};
use crate::metrics::Metrics;
use crate::report::callback::Callbacks;
use crate::report::count_log::CountLog;
use crate::report::kafka::{self, Kafka};
use crate::report::state_file::StateFileMark;
use crate::report::Fanout;
use crate::shards::Shards;
use crate::sink::{LocalSink, WindowSink};
use crate::state;
use crate::state::restore::Recovery;
use crate::state::writer::{Journal, JournalSender};
use crate::status::Status;

/// verve exits within 5 s of the signal (docs/operating.md, *Signals and shutdown*); this
/// leaves room for the process to unwind after the reporters' deadline.
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

/// What every component is started with, all of it shared.
#[derive(Clone)]
struct Parts {
    /// The per-worker id shards the requests record into.
    shards: Arc<Shards>,
    metrics: Arc<Metrics>,
    /// The status page and `/api/verve/windows`: the reported windows and the service's state.
    status: Arc<Status>,
    clock: Arc<dyn Clock>,
    /// Whether verve's threads are alive; each thread holds a guard of it.
    health: Health,
}

impl Parts {
    /// `workers` shards and counters, held to the config's memory budget.
    fn new(config: &Config, clock: Arc<dyn Clock>, workers: usize) -> Parts {
        let memory = IdMemory::new(config.memory_limit());
        log::info!("id memory budget: {} bytes", memory.limit());
        let metrics = Arc::new(Metrics::with_memory(workers, memory.clone()));
        let shards = Shards::with_memory(
            workers,
            config.endpoint_policy().clone(),
            config.max_endpoints(),
            memory,
        );
        Parts {
            shards: Arc::new(shards),
            status: Arc::new(Status::new(metrics.clone(), clock.clone())),
            metrics,
            clock,
            health: Health::new(),
        }
    }
}

impl Server {
    /// Starts serving on `listener`. `shards` should equal the may worker count.
    pub fn start(
        config: &Config,
        listener: std::net::TcpListener,
        clock: Arc<dyn Clock>,
        shards: usize,
    ) -> anyhow::Result<Server> {
        let addr = listener
            .local_addr()
            .context("reading the listening address")?;
        let parts = Parts::new(config, clock, shards);
        // The state file is read and written afresh before the reporters start: they record
        // in it what they deliver.
        let recovered = open_state_file(config, &parts)?;
        let journal = recovered.as_ref().map(|(journal, _)| journal.sender());
        let (reporters, handoff) = start_reporters(config, journal, &parts)?;
        parts.status.configure(config.status_info(addr.port()));
        let mut sink = start_sink(config, addr.port(), reporters, handoff, &parts)?;
        let journal = recovered.map(|(journal, recovery)| {
            let (shards, status) = (&parts.shards, &parts.status);
            recovery.apply(
                shards,
                status,
                &mut *sink,
                &journal.sender(),
                config.kafka(),
            );
            journal
        });
        let collector = start_collector(config, sink, journal, &parts)?;
        let front = start_front(config, listener, parts)?;
        Ok(Server {
            health: front.ctx.health.clone(),
            ctx: front.ctx,
            addr,
            acceptor: front.acceptor,
            collector,
            reaper: front.reaper,
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

/// `--state-file`: what the previous run left, read and checked, and the fresh journal
/// written in its place; `None` without a state file.
fn open_state_file(config: &Config, parts: &Parts) -> anyhow::Result<Option<(Journal, Recovery)>> {
    let Some(path) = config.state_file() else {
        return Ok(None);
    };
    let limits = config.state_limits(parts.clock.now_ms());
    parts.shards.set_durable();
    let policy = config.endpoint_policy();
    let opened = state::restore::open(path, &limits, policy, &parts.metrics, &parts.health)?;
    Ok(Some(opened))
}

/// The reporters, in the order each window reaches them: the count log, the state file's
/// mark, the endpoint callbacks, Kafka. With Kafka, also its side of the cluster's record
/// hand-overs.
fn start_reporters(
    config: &Config,
    journal: Option<JournalSender>,
    parts: &Parts,
) -> anyhow::Result<(Fanout, Option<kafka::Handoff>)> {
    let metrics = &parts.metrics;
    let mut reporters = Fanout::new().with(CountLog::new(metrics.clone(), parts.status.clone()));
    if let Some(journal) = &journal {
        reporters = reporters.with(StateFileMark::new(journal.clone(), config.kafka()));
    }
    let callbacks = Callbacks::start(
        config.callback_settings(journal.clone()),
        metrics.clone(),
        &parts.health,
    )
    .context("starting the callback dispatcher")?;
    reporters = reporters.with(callbacks);
    let Some(settings) = config.kafka_settings(journal) else {
        return Ok((reporters, None));
    };
    log::info!("kafka: {}", settings.describe());
    for warning in settings.warnings() {
        log::warn!("kafka: {warning}");
    }
    let kafka = Kafka::start(settings, metrics.clone(), &parts.health)?;
    // Cluster mode: a record its leader could not deliver is produced by another.
    let handoff = kafka.handoff();
    Ok((reporters.with(kafka), Some(handoff)))
}

/// Where sealed windows go: straight to the reporters, or in cluster mode (`--redis`) to the
/// cluster thread, which ships them to Redis and reports the windows it leads.
fn start_sink(
    config: &Config,
    port: u16,
    reporters: Fanout,
    handoff: Option<kafka::Handoff>,
    parts: &Parts,
) -> anyhow::Result<Box<dyn WindowSink>> {
    let Some(settings) = config.cluster_settings(port) else {
        return Ok(Box::new(LocalSink::new(reporters)));
    };
    log::info!(
        "cluster mode: Redis {}, instance {}, grace {:?}, backlog {} windows",
        settings.target.display(),
        settings.instance,
        settings.grace,
        settings.backlog
    );
    let extras = Extras {
        records: handoff.map(|h| Box::new(h) as Box<dyn RecordHandoff>),
        status: Some(parts.status.clone()),
        ..Extras::default()
    };
    let shared = Shared {
        shards: parts.shards.clone(),
        clock: parts.clock.clone(),
        metrics: parts.metrics.clone(),
    };
    let sink = ClusterSink::start(settings, shared, Box::new(reporters), &parts.health, extras)
        .context("starting the cluster thread")?;
    Ok(Box::new(sink))
}

/// The collector thread, sealing the windows of `parts.shards` into `sink`, saving what they
/// record in `journal` (`--state-file`).
fn start_collector(
    config: &Config,
    sink: Box<dyn WindowSink>,
    journal: Option<Journal>,
    parts: &Parts,
) -> anyhow::Result<CollectorHandle> {
    Collector {
        shards: parts.shards.clone(),
        windows: config.windows(),
        clock: parts.clock.clone(),
        sink,
        metrics: parts.metrics.clone(),
        status: parts.status.clone(),
        journal,
        memory_warned: None,
        snapshots_asked: 0,
    }
    .spawn(&parts.health)
    .context("starting the collector thread")
}

/// The HTTP front, serving.
struct Front {
    ctx: Arc<Ctx>,
    acceptor: may::coroutine::JoinHandle<()>,
    reaper: std::thread::JoinHandle<()>,
}

/// Starts the HTTP front on `listener`: the `Date` and fairness threads, the idle reaper and
/// the accept loop.
fn start_front(
    config: &Config,
    listener: std::net::TcpListener,
    parts: Parts,
) -> anyhow::Result<Front> {
    http::date::try_start().context("starting the Date header thread")?;
    http::fair::try_start().context("starting the thread that wakes heavy connections")?;
    listener
        .set_nonblocking(true)
        .context("making the listener non-blocking")?;
    // SAFETY: the descriptor comes from a listener we own and give up here.
    let listener = unsafe { may::net::TcpListener::from_raw_fd(listener.into_raw_fd()) };
    let workers = parts.shards.len();
    let idle = http::idle::Idle::new(workers, config.idle_timeout());
    let reaper = idle
        .spawn_reaper(&parts.health)
        .context("starting the idle-connection reaper")?;
    let max_connections = connection_limit(config);
    parts
        .metrics
        .max_connections
        .store(max_connections as u64, SeqCst);
    let ctx = Arc::new(Ctx {
        shards: parts.shards,
        metrics: parts.metrics,
        status: parts.status,
        clock: parts.clock,
        windows: config.windows(),
        drain: Drain::new(workers),
        health: parts.health,
        idle_timeout: config.idle_timeout(),
        idle,
        admission: Admission::new(max_connections),
    });
    let acceptor = http::spawn_acceptor(listener, ctx.clone())
        .map_err(anyhow::Error::msg)
        .context("starting the accept loop")?;
    Ok(Front {
        ctx,
        acceptor,
        reaper,
    })
}

/// `--max-connections` or its default, logged with the process limits it was held against.
fn connection_limit(config: &Config) -> usize {
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
    max_connections
}
