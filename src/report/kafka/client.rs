//! The glue to librdkafka: the producer's and the admin client's callbacks (librdkafka's log
//! lines and errors, under verve's log target and counted; delivery reports, to the Kafka
//! thread), making the producer, and the topic check on a thread of its own, since a
//! metadata request blocks for seconds when no broker answers.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use crossbeam_channel::{bounded, Receiver, Sender};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, DeliveryResult, ProducerContext};

use super::config::{client_config, creation_error, producer_config, Settings};
use super::TARGET;
use crate::health::Health;
use crate::logging::{sanitize, token};
use crate::metrics::Metrics;

/// A metadata request or topic creation that gets no answer in this time has failed; the
/// admin thread does nothing else meanwhile (the Kafka thread goes on taking windows).
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Partitions of a topic verve creates: one, so that the topic's order is the window order
/// for every consumer.
const PARTITIONS: i32 = 1;

/// Replicas of a topic verve creates: three, or as many as the cluster has brokers.
const MAX_REPLICAS: i32 = 3;

/// What librdkafka said about a record, tagged with the producer it came from (a stale
/// report from a replaced producer must not settle the record the new one holds).
pub(super) struct Outcome {
    pub(super) generation: u64,
    pub(super) window_start: u64,
    pub(super) result: Result<(i32, i64), KafkaError>,
}

/// A short token naming a librdkafka error (`MessageTimedOut`, `AllBrokersDown`, ...).
pub(super) fn code(err: &KafkaError) -> String {
    match err.rdkafka_error_code() {
        Some(code) => format!("{code:?}"),
        None => token(&err.to_string()).into_owned(),
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
pub(super) struct ProducerCtx {
    generation: u64,
    outcomes: Sender<Outcome>,
    metrics: Arc<Metrics>,
    /// Set by a fatal error: the producer can send nothing more and must be replaced.
    pub(super) fatal: AtomicBool,
    /// Bumped by the Kafka thread before each `poll`, and the last error seen with the
    /// round it came in: see [`ProducerCtx::error`].
    pub(super) poll_round: AtomicU64,
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
pub(super) struct AdminCtx;

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

/// A producer whose delivery reports go to `outcomes`, tagged with `generation`.
pub(super) fn new_producer(
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

/// How a topic check found the topic (logged `topic <name> exists` or `... created`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TopicFound {
    Exists,
    Created,
}

impl TopicFound {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            TopicFound::Exists => "exists",
            TopicFound::Created => "created",
        }
    }
}

impl std::fmt::Display for TopicFound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a topic check answers: how the topic was found, or why it could not be (the error
/// chain on one line).
pub(super) type TopicChecked = Result<TopicFound, String>;

/// Makes the admin client (a bad setting fails here) and starts its thread, which checks the
/// topic each time it is asked on the first channel and answers on the second. It ends when
/// the asking side is dropped (at most one check later).
pub(super) fn start_topic_checks(
    settings: &Settings,
    health: &Health,
) -> anyhow::Result<(Sender<()>, Receiver<TopicChecked>)> {
    let admin: AdminClient<AdminCtx> = client_config(settings)
        .create_with_context(AdminCtx)
        .map_err(|e| creation_error(e, "creating the Kafka admin client", &settings.options))?;
    let (check_tx, check_rx) = bounded::<()>(1);
    let (checked_tx, checked) = bounded(1);
    let topic = settings.topic.clone();
    let guard = health.guard("verve-kafka-admin");
    std::thread::Builder::new()
        .name("verve-kafka-admin".into())
        .spawn(move || {
            let _guard = guard;
            for () in check_rx {
                let result = ensure_topic(&admin, &topic).map_err(|e| format!("{e:#}"));
                if checked_tx.send(result).is_err() {
                    break;
                }
            }
        })
        .context("starting the Kafka admin thread")?;
    Ok((check_tx, checked))
}

/// Makes sure `topic` exists, creating it when missing.
fn ensure_topic(admin: &AdminClient<AdminCtx>, topic: &str) -> anyhow::Result<TopicFound> {
    let metadata = admin
        .inner()
        .fetch_metadata(Some(topic), ADMIN_TIMEOUT)
        .map_err(|e| anyhow::anyhow!("{}", code(&e)))
        .context("metadata request")?;
    let listed = metadata.topics().iter().find(|t| t.name() == topic);
    match listed.map(|t| t.error().map(RDKafkaErrorCode::from)) {
        Some(None) => return Ok(TopicFound::Exists),
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
        Some(Ok(_)) => Ok(TopicFound::Created),
        Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => Ok(TopicFound::Exists),
        Some(Err((_, e))) => anyhow::bail!("create topic: {e:?}"),
        None => anyhow::bail!("create topic: no answer"),
    }
}
