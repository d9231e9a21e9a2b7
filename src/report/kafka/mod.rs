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
//!   is made (the one case that may write a record twice, see docs/failures.md, *Kafka*).
//!
//! The topic is created at start-up when missing (many brokers do not create topics on
//! their own), with one partition and up to three replicas. A broker that cannot be reached
//! is a warning: the check is retried until it can, and records wait in the backlog. Checks
//! run on a thread of their own (a metadata request blocks for seconds when no broker
//! answers), so the Kafka thread always takes new windows and a shutdown at once.
//!
//! The operator's `--kafka-option`s (TLS, SASL, ...) go to both clients; [`options`] refuses
//! those that would undo any of the above.
//!
//! Files: `config`, the settings and the librdkafka configuration made of them;
//! [`options`], the operator's `--kafka-option`s; `client`, the glue to librdkafka (callbacks,
//! the producer, the topic check); `delivery`, the Kafka thread. This file is the reporter
//! that hands windows to that thread.

mod client;
mod config;
mod delivery;
pub mod options;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::Context as _;
use crossbeam_channel::{bounded, unbounded, Receiver, Sender, TrySendError};

use crate::clock::rfc3339_secs;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::report::{Reporter, Resumed, Scope, WindowReport};
use crate::state::journal::Record as JournalRecord;
use crate::state::writer::JournalSender;
use client::{new_producer, start_topic_checks};
use delivery::{Delivery, ReporterLink};

pub use config::{parse_brokers, parse_topic, Settings};
pub use options::{KafkaOption, OptionError};

/// The log target of Kafka lines.
pub const TARGET: &str = "kafka";

/// Windows reported but not yet taken by the Kafka thread, which takes them at least every
/// `delivery::TICK` (the topic check runs on a thread of its own): room for the thread
/// being held up for about a minute of 1 s windows.
const CHANNEL_LEN: usize = 64;

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

/// The Kafka reporter: hands each window to the Kafka thread.
pub struct Kafka {
    queue: Sender<Msg>,
    thread: Option<JoinHandle<()>>,
    /// Says when the Kafka thread has finished (so `finish` can wait with a deadline).
    done: Receiver<()>,
    /// Records reported and not yet delivered or logged as lost.
    pending: Arc<AtomicU64>,
    /// See [`Kafka::handoff`].
    acked: Receiver<u64>,
    metrics: Arc<Metrics>,
    /// `--state-file`: records acknowledged or lost for good are recorded there; those the
    /// process stops before delivering stay there and are produced after the restart.
    journal: Option<JournalSender>,
}

impl Kafka {
    /// Creates the producer (a bad setting fails here) and starts the thread, whose first
    /// act is the topic check.
    pub fn start(
        settings: Settings,
        metrics: Arc<Metrics>,
        health: &Health,
    ) -> anyhow::Result<Kafka> {
        let journal = settings.journal.clone();
        let (outcomes_tx, outcomes) = unbounded();
        let producer = new_producer(&settings, 0, &outcomes_tx, &metrics)?;
        let topic_checks = start_topic_checks(&settings, health)?;
        let (queue, rx) = bounded(CHANNEL_LEN);
        let (done_tx, done) = bounded(1);
        let pending = Arc::new(AtomicU64::new(0));
        let (acked_tx, acked) = bounded(ACKED_LEN);
        let delivery = Delivery::new(
            settings,
            producer,
            (outcomes_tx, outcomes),
            topic_checks,
            ReporterLink {
                rx,
                pending: pending.clone(),
                acked: acked_tx,
            },
            metrics.clone(),
        );
        let guard = health.guard("verve-kafka");
        let thread = std::thread::Builder::new()
            .name("verve-kafka".into())
            .spawn(move || {
                let _guard = guard;
                delivery.run();
                let _ = done_tx.send(());
            })
            .context("starting the Kafka thread")?;
        Ok(Kafka {
            queue,
            thread: Some(thread),
            done,
            pending,
            acked,
            metrics,
            journal,
        })
    }

    /// What cluster mode needs to hand records over between instances (see
    /// [`crate::cluster::node::RecordHandoff`]).
    pub fn handoff(&self) -> Handoff {
        Handoff {
            queue: self.queue.clone(),
            acked: self.acked.clone(),
            pending: self.pending.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

/// Acknowledgements kept for [`Handoff::acknowledged`]: far more than one call's worth (the
/// cluster thread asks every half second); past it they are dropped, and a dropped one
/// makes a record pending in Redis until its instance stops, then produced again elsewhere.
const ACKED_LEN: usize = 4096;

/// Cluster mode's side door to the Kafka thread: produces records of windows another
/// instance reported, and tells which records the broker acknowledged.
pub struct Handoff {
    queue: Sender<Msg>,
    acked: Receiver<u64>,
    pending: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
}

impl Handoff {
    /// Queues the window's record, as a report of it would (no count line, no call).
    pub fn produce(&self, window_start: u64, count: u64) {
        let record = Record {
            window_start,
            count,
        };
        self.metrics.backlog_windows.fetch_add(1, Relaxed);
        self.pending.fetch_add(1, Relaxed);
        if self.queue.try_send(Msg::Record(record)).is_err() {
            record_lost(
                &self.metrics,
                &self.pending,
                None,
                record,
                "kafka-thread-behind",
            );
        }
    }

    /// The windows whose record the broker acknowledged since the last call.
    pub fn acknowledged(&self) -> Vec<u64> {
        self.acked.try_iter().collect()
    }
}

/// Logs a record that will never be produced and takes it off the books (and, with a state
/// file, off it too: it is not produced after a restart either).
fn record_lost(
    metrics: &Metrics,
    pending: &AtomicU64,
    journal: Option<&JournalSender>,
    record: Record,
    why: &str,
) {
    pending.fetch_sub(1, Relaxed);
    metrics.kafka_records.lost.fetch_add(1, Relaxed);
    metrics.backlog_windows.fetch_sub(1, Relaxed);
    log::warn!(
        target: TARGET,
        "window_start={} lost={why}",
        rfc3339_secs(record.window_start)
    );
    if let Some(journal) = journal {
        journal.record(JournalRecord::Produced {
            window_start: record.window_start,
        });
    }
}

/// A record the process stops before delivering: with a state file it stays there and is
/// produced after the restart (`deferred=restart`, not counted as lost); without one it is
/// lost with `why`.
fn record_stopped(
    metrics: &Metrics,
    pending: &AtomicU64,
    journal: Option<&JournalSender>,
    record: Record,
    why: &str,
) {
    if journal.is_none() {
        return record_lost(metrics, pending, None, record, why);
    }
    pending.fetch_sub(1, Relaxed);
    metrics.backlog_windows.fetch_sub(1, Relaxed);
    log::warn!(
        target: TARGET,
        "window_start={} deferred=restart",
        rfc3339_secs(record.window_start)
    );
}

impl Kafka {
    /// Hands a window's record to the Kafka thread.
    fn produce(&mut self, record: Record) {
        self.metrics.backlog_windows.fetch_add(1, Relaxed);
        self.pending.fetch_add(1, Relaxed);
        // Never blocks the collector: a thread that is this far behind has lost the record.
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.queue.try_send(Msg::Record(record))
        {
            record_lost(
                &self.metrics,
                &self.pending,
                self.journal.as_ref(),
                record,
                "kafka-thread-behind",
            );
        }
    }
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
        self.produce(Record {
            window_start: report.window_start,
            count: report.unique_count,
        });
    }

    fn resume(&mut self, resumed: &Resumed) {
        if resumed.kafka {
            self.produce(Record {
                window_start: resumed.window_start,
                count: resumed.unique_count,
            });
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
        if left > 0 && self.journal.is_some() {
            log::warn!(
                target: TARGET,
                "{left} records not delivered at exit: kept in the state file, produced \
                 after the restart"
            );
        } else if left > 0 {
            self.metrics.kafka_records.lost.fetch_add(left, Relaxed);
            log::warn!(target: TARGET, "{left} records not delivered at exit");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
            journal: None,
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
}
