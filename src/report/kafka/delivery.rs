//! The Kafka thread: takes each window's record from the reporter, keeps them in order in
//! its backlog, hands the oldest to librdkafka once the one before is acknowledged, retries
//! with a backoff, replaces a producer that hit a fatal error, and asks for the topic check
//! until the topic is there (see the `kafka` module for why delivery is exact).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use super::client::{code, new_producer, Outcome, ProducerCtx, TopicChecked};
use super::config::Settings;
use super::{key, record_lost, record_stopped, value, Msg, Record, TARGET};
use crate::clock::rfc3339_secs;
use crate::logging::sanitize;
use crate::metrics::Metrics;
use crate::state::journal::Record as JournalRecord;
use crate::state::writer::JournalSender;

/// How long the thread waits for news before it looks at the producer again.
const TICK: Duration = Duration::from_millis(50);

/// The wait for news while a record has just gone out (and during shutdown).
const IN_FLIGHT_POLL: Duration = Duration::from_millis(5);

/// librdkafka events served per wake-up (see [`Delivery::serve_producer`]).
const EVENTS_PER_TICK: usize = 32;

/// How long before the shutdown deadline the Kafka thread gives up on what is left.
const FINISH_MARGIN: Duration = Duration::from_millis(100);

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

/// What ties the Kafka thread to its reporter ([`super::Kafka`]).
pub(super) struct ReporterLink {
    /// The reporter's records and its call to finish.
    pub rx: Receiver<Msg>,
    /// Records reported and not yet delivered or logged as lost.
    pub pending: Arc<AtomicU64>,
    /// Each acknowledged window (see [`Delivery::acked`]).
    pub acked: Sender<u64>,
}

/// The Kafka thread: its backlog of records, the one record with librdkafka, and the topic
/// check.
pub(super) struct Delivery {
    settings: Settings,
    producer: BaseProducer<ProducerCtx>,
    /// Asks the admin thread for a topic check, and its answer.
    check: Sender<()>,
    checked: Receiver<TopicChecked>,
    checking: bool,
    /// Records reported and not yet delivered or logged as lost, shared with the reporter.
    pending: Arc<AtomicU64>,
    /// The window of each record the broker acknowledged, for cluster mode's record
    /// hand-over ([`super::Handoff`]); dropped when nobody takes them.
    acked: Sender<u64>,
    /// Which producer this is: bumped each time a fatal error replaces it.
    generation: u64,
    outcomes_tx: Sender<Outcome>,
    outcomes: Receiver<Outcome>,
    /// The reporter's records and its call to finish.
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
    /// `--state-file`: told of each record acknowledged or lost for good.
    journal: Option<JournalSender>,
}

impl Delivery {
    /// The thread's state before its first record: nothing to deliver, the topic not
    /// checked yet. `outcomes` carries `producer`'s delivery reports (and its successors');
    /// `topic_checks` is the admin thread's (see [`super::client::start_topic_checks`]).
    pub(super) fn new(
        settings: Settings,
        producer: BaseProducer<ProducerCtx>,
        outcomes: (Sender<Outcome>, Receiver<Outcome>),
        topic_checks: (Sender<()>, Receiver<TopicChecked>),
        reporter: ReporterLink,
        metrics: Arc<Metrics>,
    ) -> Delivery {
        let journal = settings.journal.clone();
        let ReporterLink { rx, pending, acked } = reporter;
        Delivery {
            settings,
            producer,
            check: topic_checks.0,
            checked: topic_checks.1,
            checking: false,
            pending,
            acked,
            generation: 0,
            outcomes_tx: outcomes.0,
            outcomes: outcomes.1,
            rx,
            metrics,
            backlog: VecDeque::new(),
            in_flight: false,
            sent_at: Instant::now(),
            retry: Backoff::new(),
            topic_ready: false,
            topic_retry: Backoff::new(),
            reachable: None,
            journal,
        }
    }

    /// Delivers until told to finish (and then until the deadline, or the backlog is empty),
    /// or until the reporter is gone.
    pub(super) fn run(mut self) {
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
            record_stopped(
                &self.metrics,
                &self.pending,
                self.journal.as_ref(),
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
                record_lost(
                    &self.metrics,
                    &self.pending,
                    self.journal.as_ref(),
                    old,
                    "backlog-full",
                );
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
                if let Some(journal) = &self.journal {
                    journal.record(JournalRecord::Produced {
                        window_start: record.window_start,
                    });
                }
                let _ = self.acked.try_send(record.window_start);
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

    fn topic_checked(&mut self, result: TopicChecked) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
