//! Kafka: one record per window to `--kafka-topic`, acknowledged by the broker, in window
//! order, from a plain thread of its own so that a slow or absent broker delays the records
//! and nothing else (the count line is written before this reporter is even called).
//!
//! Delivery, and why it is exact while the broker is up, slow, frozen or restarted with its
//! data (tests/kafka.rs freezes a real broker; a restart keeps its producer state):
//! - The producer is idempotent with `acks=all`, and a record handed to librdkafka is never
//!   timed out locally (`message.timeout.ms=0`): librdkafka retries it on every reconnect
//!   with the same producer id and sequence number, so a broker that wrote it once but could
//!   not say so writes it once. A record that timed out locally and was produced again would
//!   get a new sequence number and could be written twice.
//! - At most one record is with librdkafka at a time; the others wait in this thread's
//!   backlog, oldest first. The next is handed over only when the previous one is
//!   acknowledged, so the topic receives windows in order whatever the partition count.
//! - The backlog holds at most `--kafka-backlog` records. When a new window would exceed
//!   it, the oldest record that librdkafka does not hold yet is pushed off and logged as
//!   lost (`verve_kafka_records_total{result="lost"}`); so is every record still waiting
//!   when shutdown runs out of time.
//! - A delivery that fails for good (librdkafka reports it: the topic was deleted, the
//!   record was refused) is logged with its reason, counted in `verve_kafka_errors_total`
//!   and retried with a backoff; so is a fatal producer error, after which a new producer
//!   is made (the one case that may write a record twice, see the README).
//!
//! The topic is created at start-up when missing (many brokers do not create topics on
//! their own), with one partition and up to three replicas. A broker that cannot be reached
//! is a warning: the check is retried until it can, and records wait in the backlog. Checks
//! run on a thread of their own (a metadata request blocks for seconds when no broker
//! answers), so the Kafka thread always takes new windows and a shutdown at once.
//!
//! The operator's `--kafka-option`s (TLS, SASL, ...) go to both clients; [`options`] refuses
//! those that would undo any of the above.

pub mod options;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use crossbeam_channel::{bounded, unbounded, Receiver, RecvTimeoutError, Sender, TrySendError};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};

use crate::clock::rfc3339_secs;
use crate::health::Health;
use crate::logging::sanitize;
use crate::metrics::Metrics;
use crate::report::{Reporter, Scope, WindowReport};

pub use options::{KafkaOption, OptionError};

/// The log target of Kafka lines.
pub const TARGET: &str = "kafka";

/// How long the thread waits for news before it looks at the producer again.
const TICK: Duration = Duration::from_millis(50);

/// The wait for news while a record has just gone out (and during shutdown).
const IN_FLIGHT_POLL: Duration = Duration::from_millis(5);

/// librdkafka events served per wake-up (see [`Worker::serve_producer`]).
const EVENTS_PER_TICK: usize = 32;

/// How long before the shutdown deadline the Kafka thread gives up on what is left.
const FINISH_MARGIN: Duration = Duration::from_millis(100);

/// A metadata request or topic creation that gets no answer in this time has failed; the
/// thread does nothing else meanwhile (new windows wait in its channel).
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Backoff between attempts after a failed delivery or topic check: doubling up to the max.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// When the next attempt of something that failed may be made.
#[derive(Debug)]
struct Backoff {
    next_at: Instant,
    wait: Duration,
}

impl Backoff {
    fn new() -> Self {
        Backoff {
            next_at: Instant::now(),
            wait: FIRST_BACKOFF,
        }
    }

    fn due(&self) -> bool {
        Instant::now() >= self.next_at
    }

    /// Another failure: the next attempt after the current wait, which then doubles.
    /// Returns that wait (for the log line).
    fn failed(&mut self) -> Duration {
        let wait = self.wait;
        self.next_at = Instant::now() + wait;
        self.wait = (wait * 2).min(MAX_BACKOFF);
        wait
    }

    fn succeeded(&mut self) {
        self.wait = FIRST_BACKOFF;
    }
}

/// Windows reported but not yet taken by the thread. The thread takes them every [`TICK`]
/// except during a topic check, so this only has to cover [`ADMIN_TIMEOUT`] of 1 s windows.
const CHANNEL_LEN: usize = 64;

/// Partitions of a topic verve creates: one, so that the topic's order is the window order
/// for every consumer.
const PARTITIONS: i32 = 1;

/// Replicas of a topic verve creates: three, or as many as the cluster has brokers.
const MAX_REPLICAS: i32 = 3;

/// `--kafka-brokers`, `--kafka-topic`, `--kafka-backlog`, `--kafka-option`.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `HOST:PORT[,HOST:PORT...]`, librdkafka's `bootstrap.servers`.
    pub brokers: String,
    pub topic: String,
    /// Most records kept while they cannot be delivered.
    pub backlog: usize,
    /// Passed to both clients; checked by [`options::check`] (its `Debug` masks secrets).
    pub options: Vec<KafkaOption>,
}

impl Settings {
    /// The start-up log line's account of the settings, secrets masked.
    pub fn describe(&self) -> String {
        let mut line = format!(
            "brokers {}, topic {}, backlog {} records",
            self.brokers, self.topic, self.backlog
        );
        if !self.options.is_empty() {
            let options: Vec<String> = self.options.iter().map(|o| o.to_string()).collect();
            line.push_str(&format!(", options {}", options.join(" ")));
        }
        line
    }

    /// What the operator should hear about the options before the first record: settings
    /// that turn off the check of the broker's identity.
    pub fn warnings(&self) -> Vec<String> {
        self.options
            .iter()
            .filter(|o| {
                let value = o.value().to_ascii_lowercase();
                matches!(
                    (o.key(), value.as_str()),
                    // librdkafka's spellings of false.
                    ("enable.ssl.certificate.verification", "false" | "f" | "0")
                        | ("ssl.endpoint.identification.algorithm", "none")
                )
            })
            .map(|o| {
                format!(
                    "--kafka-option {o}: the broker's certificate or host name is not checked; \
                     anyone on the path can pose as the broker"
                )
            })
            .collect()
    }
}

/// The record key: the window start, RFC 3339.
pub fn key(window_start: u64) -> String {
    rfc3339_secs(window_start)
}

/// The record value: `{"window_start": "...", "unique_count": N}`.
pub fn value(window_start: u64, count: u64) -> String {
    format!(
        "{{\"window_start\": \"{}\", \"unique_count\": {count}}}",
        rfc3339_secs(window_start)
    )
}

/// Checks a `--kafka-brokers` value: comma-separated `HOST:PORT`, no spaces.
pub fn parse_brokers(s: &str) -> Result<String, String> {
    let mut out = Vec::new();
    for entry in s.split(',').map(str::trim) {
        let (host, port) = entry
            .rsplit_once(':')
            .ok_or_else(|| format!("{entry:?} is not HOST:PORT"))?;
        if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("{entry:?} has no valid host"));
        }
        match port.parse::<u16>() {
            Ok(p) if p > 0 => {}
            _ => return Err(format!("{entry:?} has no valid port")),
        }
        out.push(entry);
    }
    Ok(out.join(","))
}

/// Checks a `--kafka-topic` value by Kafka's own rules: 1 to 249 of `[a-zA-Z0-9._-]`, and
/// not `.` or `..`.
pub fn parse_topic(s: &str) -> Result<String, String> {
    let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if s.is_empty() || s.len() > 249 || s == "." || s == ".." || !s.chars().all(legal) {
        return Err(
            "must be 1 to 249 of the characters a-z A-Z 0-9 . _ - (and not . or ..)".into(),
        );
    }
    Ok(s.to_owned())
}

/// A window's record, until the broker has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Record {
    window_start: u64,
    count: u64,
}

enum Msg {
    Record(Record),
    /// Shutdown: deliver what is waiting until the deadline, then stop.
    Finish(Instant),
}

/// What librdkafka said about a record, tagged with the producer it came from (a stale
/// report from a replaced producer must not settle the record the new one holds).
struct Outcome {
    generation: u64,
    window_start: u64,
    result: Result<(i32, i64), KafkaError>,
}

/// A short token naming a librdkafka error (`MessageTimedOut`, `AllBrokersDown`, ...).
fn code(err: &KafkaError) -> String {
    match err.rdkafka_error_code() {
        Some(code) => format!("{code:?}"),
        None => sanitize(&format!("{err}").replace(|c: char| c.is_whitespace(), "_")).into_owned(),
    }
}

/// librdkafka's own log lines, under our target. Level 3 ("error") lines repeat what the
/// error events say (those are logged and counted in [`ProducerCtx::error`]), so they stay at
/// debug with everything routine; warnings and worse are shown. Returns whether the line
/// was shown: some failures are only said this way (a request to a frozen broker timing out
/// is a REQTMOUT warning and no error event), so the producer counts them as errors.
fn log_librdkafka(level: RDKafkaLogLevel, fac: &str, message: &str) -> bool {
    use RDKafkaLogLevel::*;
    // librdkafka's lines quote what brokers say: outside text.
    let (fac, message) = (sanitize(fac), sanitize(message));
    match level {
        Emerg | Alert | Critical => log::error!(target: TARGET, "librdkafka {fac}: {message}"),
        Warning => log::warn!(target: TARGET, "librdkafka {fac}: {message}"),
        // Only sent when the operator asked for them with `--kafka-option debug=...`.
        Debug => {
            log::info!(target: TARGET, "librdkafka {fac}: {message}");
            return false;
        }
        Error | Notice | Info => {
            log::debug!(target: TARGET, "librdkafka {fac}: {message}");
            return false;
        }
    }
    true
}

/// The producer's callbacks, which librdkafka runs inside `poll` on the Kafka thread.
struct ProducerCtx {
    generation: u64,
    outcomes: Sender<Outcome>,
    metrics: Arc<Metrics>,
    /// Set by a fatal error: the producer can send nothing more and must be replaced.
    fatal: AtomicBool,
    /// Bumped by the Kafka thread before each `poll`, and the last error seen with the
    /// round it came in: see [`ProducerCtx::error`].
    poll_round: AtomicU64,
    last_error: Mutex<(u64, String)>,
}

impl ClientContext for ProducerCtx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        if log_librdkafka(level, fac, message) {
            self.metrics.kafka_errors.fetch_add(1, Relaxed);
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // rdkafka 0.39's BaseProducer::poll hands each error event to this callback twice
        // (once in Client::poll_event, once in its own event match). librdkafka itself
        // folds identical consecutive errors into one ("N identical error(s) suppressed"),
        // so the same text twice in one poll round is that one event again.
        let text = format!("error={} detail={}", code(&error), sanitize(reason));
        let round = self.poll_round.load(Relaxed);
        {
            let mut last = self
                .last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if last.0 == round && last.1 == text {
                return;
            }
            *last = (round, text.clone());
        }
        self.metrics.kafka_errors.fetch_add(1, Relaxed);
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) {
            self.fatal.store(true, Relaxed);
        }
        log::warn!(target: TARGET, "{text}");
    }
}

impl ProducerContext for ProducerCtx {
    type DeliveryOpaque = Box<u64>;

    fn delivery(&self, result: &DeliveryResult<'_>, window_start: Box<u64>) {
        let result = match result {
            Ok(msg) => Ok((msg.partition(), msg.offset())),
            Err((err, _)) => Err(err.clone()),
        };
        // The receiver lives as long as the thread that runs this callback.
        let _ = self.outcomes.send(Outcome {
            generation: self.generation,
            window_start: *window_start,
            result,
        });
    }
}

/// The admin client's callbacks: errors are the producer's to report, so only logged here.
struct AdminCtx;

impl ClientContext for AdminCtx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        // Failed checks are counted once each where their answer arrives.
        log_librdkafka(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        log::debug!(
            target: TARGET,
            "admin error={} detail={}",
            code(&error),
            sanitize(reason)
        );
    }
}

/// The settings both clients share. The operator's options come after verve's defaults (so a
/// `client.id` of theirs wins) and before what verve owns (so nothing they pass can undo it,
/// even past [`options::check`]).
fn client_config(settings: &Settings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("client.id", concat!("verve/", env!("CARGO_PKG_VERSION")))
        // Brokers close idle connections; that is not news.
        .set("log.connection.close", "false");
    for option in &settings.options {
        config.set(option.key(), option.value());
    }
    // rdkafka sets the level after librdkafka has made the client, overriding the one
    // librdkafka derives from `debug`: without this, its debug lines would never come.
    let debugging = settings.options.iter().any(|o| o.key() == "debug");
    config
        .set("bootstrap.servers", &settings.brokers)
        .set_log_level(if debugging {
            RDKafkaLogLevel::Debug
        } else {
            RDKafkaLogLevel::Info
        });
    config
}

/// A client that librdkafka would not make, as an error. When the operator passed options,
/// they are the likely cause: an [`OptionError`] (a configuration error, exit 2) naming the
/// one librdkafka names, its secrets masked.
fn creation_error(err: KafkaError, what: &str, options: &[KafkaOption]) -> anyhow::Error {
    let (key, detail) = match &err {
        KafkaError::ClientConfig(_, desc, key, _) => (Some(key.clone()), desc.clone()),
        KafkaError::ClientCreation(msg) => (culprit(msg, options), msg.clone()),
        _ => (None, err.to_string()),
    };
    let detail = options::redact(&detail, options);
    if options.is_empty() {
        return anyhow::anyhow!("{what}: {detail}");
    }
    anyhow::Error::new(OptionError::new(
        key.as_deref(),
        format!("librdkafka: {detail}"),
    ))
}

/// The option a librdkafka message is about: the one whose name it holds ("ssl.ca.location
/// failed: ..."), else one whose value it holds ("No provider for SASL mechanism GSSAPI");
/// the longest match, and never by a secret's value.
fn culprit(msg: &str, options: &[KafkaOption]) -> Option<String> {
    /// Shorter values (`ssl`, `1`) turn up in messages about anything.
    const MIN_VALUE_LEN: usize = 4;
    let by_name = options
        .iter()
        .filter(|o| msg.contains(o.key()))
        .max_by_key(|o| o.key().len());
    let by_value = || {
        options
            .iter()
            .filter(|o| !o.is_secret() && o.value().len() >= MIN_VALUE_LEN)
            .filter(|o| msg.contains(o.value()))
            .max_by_key(|o| o.value().len())
    };
    by_name.or_else(by_value).map(|o| o.key().to_owned())
}

fn producer_config(settings: &Settings) -> ClientConfig {
    let mut config = client_config(settings);
    config
        .set("acks", "all")
        .set("enable.idempotence", "true")
        // Never give up on a record librdkafka holds: see the module comment.
        .set("message.timeout.ms", "0")
        // It never holds more than one; the bound is for the record's sake, not memory's.
        .set("queue.buffering.max.messages", "16")
        .set("queue.buffering.max.kbytes", "64")
        .set("linger.ms", "0");
    config
}

/// The Kafka reporter: hands each window to the Kafka thread.
pub struct Kafka {
    queue: Sender<Msg>,
    thread: Option<JoinHandle<()>>,
    /// Says when the Kafka thread has finished (so `finish` can wait with a deadline).
    done: Receiver<()>,
    /// Records reported and not yet delivered or logged as lost.
    pending: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
}

impl Kafka {
    /// Creates the producer (a bad setting fails here) and starts the thread, whose first
    /// act is the topic check.
    pub fn start(
        settings: Settings,
        metrics: Arc<Metrics>,
        health: &Health,
    ) -> anyhow::Result<Kafka> {
        let (outcomes_tx, outcomes) = unbounded();
        let producer = new_producer(&settings, 0, &outcomes_tx, &metrics)?;
        let admin: AdminClient<AdminCtx> = client_config(&settings)
            .create_with_context(AdminCtx)
            .map_err(|e| {
            creation_error(e, "creating the Kafka admin client", &settings.options)
        })?;
        let (check_tx, check_rx) = bounded::<()>(1);
        let (checked_tx, checked) = bounded(1);
        let topic = settings.topic.clone();
        let guard = health.guard("verve-kafka-admin");
        std::thread::Builder::new()
            .name("verve-kafka-admin".into())
            .spawn(move || {
                let _guard = guard;
                // Ends when the Kafka thread drops its end (at most one check later).
                for () in check_rx {
                    let result = ensure_topic(&admin, &topic).map_err(|e| format!("{e:#}"));
                    if checked_tx.send(result).is_err() {
                        break;
                    }
                }
            })
            .context("starting the Kafka admin thread")?;
        let (queue, rx) = bounded(CHANNEL_LEN);
        let (done_tx, done) = bounded(1);
        let pending = Arc::new(AtomicU64::new(0));
        let worker = Worker {
            settings,
            producer,
            check: check_tx,
            checked,
            checking: false,
            pending: pending.clone(),
            generation: 0,
            outcomes_tx,
            outcomes,
            rx,
            metrics: metrics.clone(),
            backlog: VecDeque::new(),
            in_flight: false,
            sent_at: Instant::now(),
            retry: Backoff::new(),
            topic_ready: false,
            topic_retry: Backoff::new(),
            reachable: None,
        };
        let guard = health.guard("verve-kafka");
        let thread = std::thread::Builder::new()
            .name("verve-kafka".into())
            .spawn(move || {
                let _guard = guard;
                worker.run();
                let _ = done_tx.send(());
            })
            .context("starting the Kafka thread")?;
        Ok(Kafka {
            queue,
            thread: Some(thread),
            done,
            pending,
            metrics,
        })
    }
}

fn new_producer(
    settings: &Settings,
    generation: u64,
    outcomes: &Sender<Outcome>,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<BaseProducer<ProducerCtx>> {
    let ctx = ProducerCtx {
        generation,
        outcomes: outcomes.clone(),
        metrics: metrics.clone(),
        fatal: AtomicBool::new(false),
        poll_round: AtomicU64::new(0),
        last_error: Mutex::new((u64::MAX, String::new())),
    };
    producer_config(settings)
        .create_with_context(ctx)
        .map_err(|e| creation_error(e, "creating the Kafka producer", &settings.options))
}

/// Logs a record that will never be produced and takes it off the books.
fn lost(metrics: &Metrics, pending: &AtomicU64, record: Record, why: &str) {
    pending.fetch_sub(1, Relaxed);
    metrics.kafka_records.lost.fetch_add(1, Relaxed);
    metrics.backlog_windows.fetch_sub(1, Relaxed);
    log::warn!(
        target: TARGET,
        "window_start={} lost={why}",
        rfc3339_secs(record.window_start)
    );
}

impl Reporter for Kafka {
    fn report(&mut self, report: &WindowReport) {
        if report.scope == Scope::Local {
            // Downstream is promised the cluster's count; this instance's alone would be a
            // second, wrong record for a window the leader may still report.
            log::warn!(
                target: TARGET,
                "window_start={} skipped=cluster-count-unavailable",
                rfc3339_secs(report.window_start)
            );
            return;
        }
        let record = Record {
            window_start: report.window_start,
            count: report.unique_count,
        };
        self.metrics.backlog_windows.fetch_add(1, Relaxed);
        self.pending.fetch_add(1, Relaxed);
        // Never blocks the collector: a thread that is this far behind has lost the record.
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.queue.try_send(Msg::Record(record))
        {
            lost(&self.metrics, &self.pending, record, "kafka-thread-behind");
        }
    }

    /// Lets the thread deliver what is waiting until `deadline`; it logs what is left. Only
    /// a thread that does not answer by then (it never blocks for long) leaves the count
    /// to this side.
    fn finish(&mut self, deadline: Instant) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        let finished = self
            .queue
            .send_deadline(Msg::Finish(deadline), deadline)
            .is_ok()
            && self.done.recv_deadline(deadline).is_ok();
        if finished {
            let _ = thread.join();
            return;
        }
        let left = self.pending.swap(0, Relaxed);
        if left > 0 {
            self.metrics.kafka_records.lost.fetch_add(left, Relaxed);
            log::warn!(target: TARGET, "{left} records not delivered at exit");
        }
    }
}

/// The Kafka thread's state.
struct Worker {
    settings: Settings,
    producer: BaseProducer<ProducerCtx>,
    /// Asks the admin thread for a topic check, and its answer.
    check: Sender<()>,
    checked: Receiver<Result<&'static str, String>>,
    checking: bool,
    pending: Arc<AtomicU64>,
    /// Which producer this is: bumped each time a fatal error replaces it.
    generation: u64,
    outcomes_tx: Sender<Outcome>,
    outcomes: Receiver<Outcome>,
    rx: Receiver<Msg>,
    metrics: Arc<Metrics>,
    /// Records not yet acknowledged, oldest first; the front one is with librdkafka when
    /// `in_flight`.
    backlog: VecDeque<Record>,
    in_flight: bool,
    /// When the front record was handed to librdkafka.
    sent_at: Instant,
    /// Attempts at the front record after a failure.
    retry: Backoff,
    topic_ready: bool,
    topic_retry: Backoff,
    /// What the last topic check found, so a broker that stays away is warned about once.
    reachable: Option<bool>,
}

impl Worker {
    fn run(mut self) {
        let mut deadline = None;
        loop {
            // Wait on the collector's channel, then serve librdkafka's events without
            // waiting: rdkafka's poll with a timeout rounds the time left down to whole
            // milliseconds and spins through the last one (2% of a core at 20 polls a
            // second). Quick while a record has just gone out, so a backlog goes out at one
            // record per round trip, not per tick.
            let quick = deadline.is_some()
                || (self.in_flight && self.sent_at.elapsed() < Duration::from_secs(1));
            let msg = self
                .rx
                .recv_timeout(if quick { IN_FLIGHT_POLL } else { TICK });
            self.serve_producer();
            let mut next = Some(msg);
            while let Some(msg) = next.take() {
                match msg {
                    Ok(Msg::Record(record)) => self.push(record),
                    Ok(Msg::Finish(at)) => deadline = Some(at),
                    Err(RecvTimeoutError::Timeout) => break,
                    // The reporter is gone without a word: stop now.
                    Err(RecvTimeoutError::Disconnected) => {
                        deadline.get_or_insert_with(Instant::now);
                        break;
                    }
                }
                next = self.rx.try_recv().ok().map(Ok);
            }
            while let Ok(outcome) = self.outcomes.try_recv() {
                self.settle(outcome);
            }
            if self.producer.context().fatal.load(Relaxed) {
                self.replace_producer();
            }
            self.topic_check();
            if self.topic_ready && !self.in_flight && self.retry.due() {
                self.send_front();
            }
            if let Some(at) = deadline {
                // Brokers that have not answered since before the shutdown will not take
                // the backlog in the seconds left: no reason to hold the exit up for them.
                let unreachable = !self.topic_ready && self.reachable == Some(false);
                // Stops a little early, so its account of what is left is in before
                // `Kafka::finish` stops waiting for it.
                let out_of_time = Instant::now() + FINISH_MARGIN >= at;
                if self.backlog.is_empty() || unreachable || out_of_time {
                    break;
                }
            }
        }
        for record in std::mem::take(&mut self.backlog) {
            lost(
                &self.metrics,
                &self.pending,
                record,
                "not-delivered-at-exit",
            );
        }
        // Dropping the producer purges what it still holds (its reports are not wanted).
    }

    /// Runs librdkafka's callbacks for what it has to say. A zero-timeout poll serves one
    /// event (a delivery report, an error, a log line), so it is called a few times: more
    /// events than this per tick is a storm of log lines, which the next tick serves.
    fn serve_producer(&self) {
        for _ in 0..EVENTS_PER_TICK {
            self.producer.context().poll_round.fetch_add(1, Relaxed);
            self.producer.poll(Duration::ZERO);
        }
    }

    /// A new window joins the backlog; past the bound the oldest record librdkafka does not
    /// hold is pushed off.
    fn push(&mut self, record: Record) {
        self.backlog.push_back(record);
        if self.backlog.len() > self.settings.backlog.max(1) {
            let index = usize::from(self.in_flight);
            if let Some(old) = self.backlog.remove(index) {
                lost(&self.metrics, &self.pending, old, "backlog-full");
            }
        }
    }

    fn send_front(&mut self) {
        let Some(&record) = self.backlog.front() else {
            return;
        };
        let key = key(record.window_start);
        let value = value(record.window_start, record.count);
        let sent = self.producer.send(
            BaseRecord::with_opaque_to(&self.settings.topic, Box::new(record.window_start))
                .key(&key)
                .payload(&value),
        );
        match sent {
            Ok(()) => {
                self.in_flight = true;
                self.sent_at = Instant::now();
            }
            Err((err, _)) => self.failed(record, &err),
        }
    }

    fn settle(&mut self, outcome: Outcome) {
        let front = self.backlog.front().copied();
        let current = outcome.generation == self.generation
            && self.in_flight
            && front.map(|r| r.window_start) == Some(outcome.window_start);
        if !current {
            return;
        }
        self.in_flight = false;
        let Some(record) = front else { return };
        match outcome.result {
            Ok((partition, offset)) => {
                self.backlog.pop_front();
                self.retry.succeeded();
                self.pending.fetch_sub(1, Relaxed);
                self.metrics.kafka_records.delivered.fetch_add(1, Relaxed);
                self.metrics.backlog_windows.fetch_sub(1, Relaxed);
                log::info!(
                    target: TARGET,
                    "window_start={} topic={} partition={partition} offset={offset}",
                    rfc3339_secs(record.window_start),
                    self.settings.topic
                );
            }
            Err(err) => {
                if matches!(
                    err.rdkafka_error_code(),
                    Some(
                        RDKafkaErrorCode::UnknownTopic | RDKafkaErrorCode::UnknownTopicOrPartition
                    )
                ) {
                    // Deleted under us: create it again before the retry.
                    self.topic_ready = false;
                }
                self.failed(record, &err);
            }
        }
    }

    /// A record that could not be handed over or was not delivered: logged, counted, retried
    /// after the backoff.
    fn failed(&mut self, record: Record, err: &KafkaError) {
        self.metrics.kafka_errors.fetch_add(1, Relaxed);
        let wait = self.retry.failed();
        log::warn!(
            target: TARGET,
            "window_start={} error={} retry_in={}ms detail={}",
            rfc3339_secs(record.window_start),
            code(err),
            wait.as_millis(),
            sanitize(&err.to_string())
        );
    }

    /// After a fatal error (the idempotent producer's sequence is broken) only a new
    /// producer can send; the record it held is sent again by the new one.
    fn replace_producer(&mut self) {
        self.generation += 1;
        match new_producer(
            &self.settings,
            self.generation,
            &self.outcomes_tx,
            &self.metrics,
        ) {
            Ok(producer) => {
                log::warn!(target: TARGET, "the producer hit a fatal error; replaced it");
                self.producer = producer;
                self.in_flight = false;
            }
            Err(e) => {
                // The settings made one before, so this is resources; try again next time.
                self.generation -= 1;
                log::error!(
                    target: TARGET,
                    "replacing the producer: {}",
                    sanitize(&format!("{e:#}"))
                );
            }
        }
    }

    /// Asks for a topic check when one is due, and takes its answer when it has come.
    fn topic_check(&mut self) {
        if self.checking {
            let Ok(result) = self.checked.try_recv() else {
                return;
            };
            self.checking = false;
            self.topic_checked(result);
        }
        if !self.topic_ready && !self.checking && self.topic_retry.due() {
            self.checking = self.check.try_send(()).is_ok();
        }
    }

    fn topic_checked(&mut self, result: Result<&'static str, String>) {
        let topic = &self.settings.topic;
        match result {
            Ok(how) => {
                self.topic_ready = true;
                self.topic_retry.succeeded();
                log::info!(
                    target: TARGET,
                    "topic {topic} {how} on {}",
                    self.settings.brokers
                );
                if self.reachable == Some(false) && !self.backlog.is_empty() {
                    log::info!(
                        target: TARGET,
                        "delivering the backlog of {} records",
                        self.backlog.len()
                    );
                }
                self.reachable = Some(true);
            }
            Err(e) => {
                // Warned about once per outage; the retries are routine until it ends.
                let first = self.reachable != Some(false);
                self.reachable = Some(false);
                self.metrics.kafka_errors.fetch_add(1, Relaxed);
                let wait = self.topic_retry.failed();
                let msg = format!(
                    "--kafka-brokers {}: topic {topic} not checked ({}); serving anyway, \
                     records wait in the backlog (next try in {} ms)",
                    self.settings.brokers,
                    sanitize(&e),
                    wait.as_millis()
                );
                if first {
                    log::warn!(target: TARGET, "{msg}");
                } else {
                    log::info!(target: TARGET, "{msg}");
                }
            }
        }
    }
}

/// Makes sure `topic` exists, creating it when missing: "exists" or "created".
fn ensure_topic(admin: &AdminClient<AdminCtx>, topic: &str) -> anyhow::Result<&'static str> {
    let metadata = admin
        .inner()
        .fetch_metadata(Some(topic), ADMIN_TIMEOUT)
        .map_err(|e| anyhow::anyhow!("{}", code(&e)))
        .context("metadata request")?;
    let listed = metadata.topics().iter().find(|t| t.name() == topic);
    match listed.map(|t| t.error().map(RDKafkaErrorCode::from)) {
        Some(None) => return Ok("exists"),
        Some(Some(RDKafkaErrorCode::UnknownTopicOrPartition)) | None => {}
        Some(Some(e)) => anyhow::bail!("metadata: {e:?}"),
    }
    let replicas = (metadata.brokers().len() as i32).clamp(1, MAX_REPLICAS);
    let new = NewTopic::new(topic, PARTITIONS, TopicReplication::Fixed(replicas));
    let options = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
    let results = futures_executor::block_on(admin.create_topics([&new], &options))
        .map_err(|e| anyhow::anyhow!("{}", code(&e)))
        .context("create topic")?;
    match results.into_iter().next() {
        Some(Ok(_)) => Ok("created"),
        Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => Ok("exists"),
        Some(Err((_, e))) => anyhow::bail!("create topic: {e:?}"),
        None => anyhow::bail!("create topic: no answer"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_and_value_are_the_documented_ones() {
        assert_eq!(key(1_795_305_000), "2026-11-21T23:50:00Z");
        assert_eq!(
            value(1_795_305_000, 1234),
            "{\"window_start\": \"2026-11-21T23:50:00Z\", \"unique_count\": 1234}"
        );
    }

    #[test]
    fn local_counts_are_not_produced_and_what_is_left_at_exit_is_counted_lost() {
        // Nothing listens on port 1: the producer starts (it connects lazily), and the
        // topic check fails, so nothing can be delivered.
        let metrics = Arc::new(Metrics::new(1));
        let settings = Settings {
            brokers: "127.0.0.1:1".into(),
            topic: "t".into(),
            backlog: 10,
            options: vec![],
        };
        let mut kafka = Kafka::start(settings, metrics.clone(), &Health::new()).unwrap();
        let mut report = WindowReport {
            window_start: 60,
            unique_count: 5,
            endpoints: vec![],
            scope: Scope::Local,
        };
        kafka.report(&report);
        assert_eq!(metrics.backlog_windows.load(Relaxed), 0);
        report.scope = Scope::Global;
        kafka.report(&report);
        report.window_start = 120;
        kafka.report(&report);
        assert_eq!(metrics.backlog_windows.load(Relaxed), 2);
        kafka.finish(Instant::now() + Duration::from_secs(10));
        assert_eq!(metrics.kafka_records.lost.load(Relaxed), 2);
        assert_eq!(metrics.kafka_records.delivered.load(Relaxed), 0);
        assert_eq!(metrics.backlog_windows.load(Relaxed), 0);
    }

    #[test]
    fn a_refused_client_names_the_option_and_masks_secrets() {
        let options = [
            KafkaOption::new("security.protocol", "sasl_plaintext"),
            KafkaOption::new("sasl.mechanism", "GSSAPI"),
            KafkaOption::new("sasl.password", "GSSAPI-and-more"),
            KafkaOption::new("ssl.ca.location", "/etc/ca.pem"),
        ];
        let culprit = |msg: &str| culprit(msg, &options);
        assert_eq!(
            culprit("No provider for SASL mechanism GSSAPI: recompile").as_deref(),
            Some("sasl.mechanism")
        );
        assert_eq!(
            culprit("ssl.ca.location failed: /etc/ca.pem: no such file").as_deref(),
            Some("ssl.ca.location")
        );
        assert_eq!(culprit("Failed to create thread"), None);
        let err = creation_error(
            KafkaError::ClientCreation("bad: GSSAPI-and-more".into()),
            "creating the Kafka producer",
            &options,
        );
        let option = err.downcast_ref::<OptionError>().expect("an option error");
        assert_eq!(
            option.to_string(),
            "--kafka-option sasl.mechanism: librdkafka: bad: ***"
        );
        // Without options, the configuration is verve's own: not the operator's error.
        let err = creation_error(
            KafkaError::ClientCreation("Failed to create thread".into()),
            "creating the Kafka producer",
            &[],
        );
        assert!(!err.is::<OptionError>());
    }

    #[test]
    fn backoff_doubles_up_to_its_max_and_resets_on_success() {
        let mut b = Backoff::new();
        assert!(b.due());
        let waits: Vec<Duration> = (0..7).map(|_| b.failed()).collect();
        assert_eq!(waits[0], FIRST_BACKOFF);
        assert_eq!(waits[1], FIRST_BACKOFF * 2);
        assert_eq!(*waits.last().unwrap(), MAX_BACKOFF);
        assert!(!b.due());
        b.succeeded();
        assert_eq!(b.failed(), FIRST_BACKOFF);
    }

    #[test]
    fn broker_lists_and_topics_are_checked() {
        assert_eq!(parse_brokers("a:9092, b:9093").unwrap(), "a:9092,b:9093");
        for bad in ["", "a", "a:", ":9092", "a:0", "a:x", "a:9092,", "a b:1"] {
            assert!(parse_brokers(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_topic("unique-requests").unwrap(), "unique-requests");
        for bad in ["", ".", "..", "a b", "a/b", &"x".repeat(250)] {
            assert!(parse_topic(bad).is_err(), "{bad:?}");
        }
    }
}
