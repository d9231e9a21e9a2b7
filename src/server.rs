//! Wiring: builds the shards, the reporters, the collector and the HTTP front from the
//! config, and runs the shutdown sequence. Takes its listener and clock as arguments so tests
//! can bind `127.0.0.1:0` and move time by hand.

use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::path::Path;
use std::sync::atomic::AtomicBool;
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
use crate::endpoints::{canonicalize, EndpointPolicy};
use crate::health::Health;
use crate::http::limits::Resources;
use crate::http::{self, Admission, Ctx};
use crate::logging::sanitize;
use crate::metrics::Metrics;
use crate::report::callback::{self, Callbacks};
use crate::report::count_log::CountLog;
use crate::report::kafka::{self, Kafka};
use crate::report::Fanout;
use crate::shards::Shards;
use crate::sink::{LocalSink, SealedWindow, WindowSink};
use crate::state::{self, Loaded};

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

/// Start-up with `--state-file`: a window saved by the previous run resumes if it is still
/// open (or not yet open: the clock went back), and is reported at once, late, if it has
/// closed or was counted with another `--interval`. The file is untrusted (see
/// [`crate::state`]): a window `limits` refuse is set aside and logged, and its endpoints are
/// checked against `policy` as if a client had just sent them.
fn restore(
    path: &Path,
    shards: &Shards,
    limits: &state::Limits,
    policy: &EndpointPolicy,
    metrics: &Metrics,
    sink: &mut dyn WindowSink,
) -> anyhow::Result<()> {
    let (saved, history) = match state::load(path, limits).context("--state-file")? {
        Loaded::Nothing => return Ok(()),
        Loaded::Window(saved, history) => (saved, history),
        Loaded::Unreadable { error, moved_to } => {
            log::error!(
                "--state-file {} is unreadable ({}); moved to {}, its ids are not counted",
                path.display(),
                sanitize(&format!("{error:#}")),
                moved_to.display()
            );
            return Ok(());
        }
        Loaded::Refused { error, moved_to } => {
            log::error!(
                "--state-file {} is refused: {}; moved to {}, its ids are not counted",
                path.display(),
                sanitize(&format!("{error:#}")),
                moved_to.display()
            );
            return Ok(());
        }
    };
    let windows = limits.windows;
    let start = crate::clock::rfc3339_secs(saved.window_start);
    // First, so that a window reported below joins it in order. Windows of another
    // `--interval` would not line up with this instance's.
    if saved.interval_secs == windows.length().as_secs() {
        metrics.status.restore(metrics, &history);
    } else if !history.is_empty() {
        log::info!(
            "the {} reported windows in {} were counted with --interval {}: not listed by \
             /api/verve/windows",
            history.len(),
            path.display(),
            saved.interval_secs
        );
    }
    // Endpoints are re-checked whichever way the window goes: the file may not be the one
    // this service wrote, and the allow-list may have changed since.
    let mut endpoints = Vec::with_capacity(saved.endpoints.len());
    for endpoint in &saved.endpoints {
        match canonicalize(endpoint, policy) {
            Ok(url) => endpoints.push(url.as_str().to_owned()),
            Err(_) => refused_endpoint(&start, endpoint),
        }
    }
    let window = saved.window_start / windows.length().as_secs().max(1);
    let resumable = saved.interval_secs == windows.length().as_secs()
        && window >= windows.index_of(limits.now_ms);
    if resumable {
        let (ids, count) = (saved.ids.len(), endpoints.len());
        // The endpoint table may be fuller than the saving instance's (`--max-endpoints`).
        for endpoint in shards.restore(window, saved.ids, &endpoints) {
            refused_endpoint(&start, &endpoint);
        }
        log::info!(
            "resumed window {start} from {} ({ids} ids, {count} endpoints)",
            path.display(),
        );
    } else {
        log::warn!(
            "window {start} (interval {} s) from {} has closed: reporting it now, late",
            saved.interval_secs,
            path.display()
        );
        sink.accept(SealedWindow {
            window,
            window_start: saved.window_start,
            ids: saved.ids,
            unshipped: None,
            endpoints,
            charge: Default::default(),
        });
    }
    Ok(())
}

/// The endpoint line (README, *The count log*) for an endpoint of a saved window that is
/// not called. The text is from the file: shown as the callback reporter shows outside
/// text, one token.
fn refused_endpoint(window_start: &str, endpoint: &str) {
    log::warn!(
        target: crate::report::callback::TARGET,
        "window_start={window_start} endpoint={} error=not-allowed-after-restart",
        crate::report::callback::endpoint_token(endpoint)
    );
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
            },
            metrics.clone(),
            &health,
        )
        .context("starting the callback dispatcher")?;
        let mut reporters = Fanout::new()
            .with(CountLog::new(metrics.clone()))
            .with(callbacks);
        let mut handoff = None;
        if let Some(brokers) = &config.kafka_brokers {
            let settings = kafka::Settings {
                brokers: brokers.clone(),
                topic: config.kafka_topic.clone(),
                backlog: config.kafka_backlog as usize,
                options: config.kafka_options.clone(),
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
        if let Some(path) = &config.state_file {
            let limits = state::Limits::new(
                shards.memory().limit(),
                config.max_endpoints as usize,
                windows,
                clock.now_ms(),
            );
            restore(path, &shards, &limits, &policy, &metrics, &mut *sink)?;
        }
        let collector = Collector {
            shards: shards.clone(),
            windows,
            clock: clock.clone(),
            sink,
            metrics: metrics.clone(),
            state_file: config.state_file.clone(),
            memory_warned: None,
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
        let idle = http::idle::Idle::new(shards.len(), config.idle_timeout);
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
            draining: AtomicBool::new(false),
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
        self.ctx.draining.store(true, SeqCst);
        http::wake(self.addr);
        let _ = self.acceptor.join();
        let drain_until = Instant::now() + DRAIN_TIMEOUT;
        while self.ctx.metrics.any_busy() && Instant::now() < drain_until {
            std::thread::sleep(Duration::from_millis(5));
        }
        let reported = self.collector.shutdown(deadline);
        self.ctx.idle.stop();
        let _ = self.reaper.join();
        reported
    }
}
