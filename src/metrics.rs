//! Counters for `/metrics`, in Prometheus text format. Request outcomes are counted per
//! worker shard (each on its own cache line, so workers never write a shared line on the
//! request path) and summed at scrape time; everything the collector and reporters count is
//! rare enough for plain shared atomics. A scrape reads them once into a [`Snapshot`] with
//! named fields, which the status page ([`crate::status`]) renders too.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use crossbeam_utils::CachePadded;

use crate::budget::IdMemory;

/// Outcomes of API requests, one set per shard.
#[derive(Debug, Default)]
pub struct WorkerCounters {
    pub ok: AtomicU64,
    pub bad_request: AtomicU64,
    pub unavailable: AtomicU64,
}

/// Endpoint call results, by the `result` label.
#[derive(Debug, Default)]
pub struct EndpointCalls {
    /// A 2xx answer.
    pub success: AtomicU64,
    /// Any other HTTP status.
    pub http_error: AtomicU64,
    /// No HTTP answer: refused, timed out, DNS, TLS.
    pub failed: AtomicU64,
    /// Not made: every address of the host is in a range verve never calls unless an
    /// address entry of `--endpoint-allow` covers it (`error=denied-address`).
    pub denied: AtomicU64,
    /// Never attempted: the call queue was full, the call could not start within the window
    /// that follows (its host or every call thread busy), or shutdown ran out of time.
    pub dropped: AtomicU64,
    /// Never attempted: cluster mode, an endpoint read from Redis failed the checks a
    /// client's endpoint passes, or was past `--max-endpoints`.
    pub refused: AtomicU64,
}

/// Kafka records by the `result` label.
#[derive(Debug, Default)]
pub struct KafkaRecords {
    /// Acknowledged by the broker.
    pub delivered: AtomicU64,
    /// Given up: pushed off the backlog, or still waiting at exit.
    pub lost: AtomicU64,
}

/// `--state-file`'s writer (see [`crate::state::writer`]).
#[derive(Debug, Default)]
pub struct StateFileStats {
    /// Bytes in the file now.
    pub file_bytes: AtomicU64,
    /// Bytes written since start, rewrites included.
    pub written_bytes: AtomicU64,
    /// `fdatasync` calls that succeeded.
    pub syncs: AtomicU64,
    /// Writes, syncs and rewrites that failed.
    pub errors: AtomicU64,
    /// Rewrites finished (written or failed).
    pub snapshots: AtomicU64,
    /// Set after a failure: the file may be torn, a rewrite should follow.
    pub broken: std::sync::atomic::AtomicBool,
}

#[derive(Debug)]
pub struct Metrics {
    pub workers: Box<[CachePadded<WorkerCounters>]>,
    pub windows_reported: AtomicU64,
    pub endpoint_calls: EndpointCalls,
    /// Requests whose window had already been sealed, counted in the oldest open window
    /// instead (see `shards`).
    pub late_ids: AtomicU64,
    pub redis_errors: AtomicU64,
    pub kafka_errors: AtomicU64,
    pub kafka_records: KafkaRecords,
    /// Sealed windows whose reports are not finished yet: in single-instance mode, windows
    /// with endpoint calls still queued or running.
    pub backlog_windows: AtomicU64,
    /// Cluster mode: shipments stored in Redis, and their bytes.
    pub cluster_shipments: AtomicU64,
    pub cluster_shipped_bytes: AtomicU64,
    /// Cluster mode: windows this instance reported alone (`scope=local`).
    pub cluster_local_windows: AtomicU64,
    /// Cluster mode: windows whose ids reached Redis after the cluster had reported them.
    pub cluster_late_windows: AtomicU64,
    /// Cluster mode: partitions of windows this instance counted (its share of the work).
    pub cluster_partitions_counted: AtomicU64,
    /// Windows this instance took up because no instance holding them was left.
    pub cluster_adopted_windows: AtomicU64,
    /// Distinct ids so far in the open window: set by the collector after each merge (about
    /// once a second), so a scrape reads it and never touches the shards.
    pub window_unique_ids: AtomicU64,
    /// The count of the last window whose count line this instance wrote.
    pub last_window_unique_ids: AtomicU64,
    /// The `--max-memory` budget and what it holds.
    pub memory: Arc<IdMemory>,
    /// Connections that could not be taken: `accept` failed for want of descriptors or
    /// memory, or the connection's coroutine could not be started.
    pub accept_errors: AtomicU64,
    /// `--max-connections`, set once at start-up.
    pub max_connections: AtomicU64,
    /// `--state-file`'s writer (all zero without one).
    pub state_file: Arc<StateFileStats>,
}

impl Metrics {
    /// Metrics without a memory budget (tests, benchmarks).
    pub fn new(workers: usize) -> Self {
        Metrics::with_memory(workers, IdMemory::unlimited())
    }

    pub fn with_memory(workers: usize, memory: Arc<IdMemory>) -> Self {
        Metrics {
            workers: (0..workers.max(1))
                .map(|_| CachePadded::new(WorkerCounters::default()))
                .collect(),
            windows_reported: AtomicU64::new(0),
            endpoint_calls: EndpointCalls::default(),
            late_ids: AtomicU64::new(0),
            redis_errors: AtomicU64::new(0),
            kafka_errors: AtomicU64::new(0),
            kafka_records: KafkaRecords::default(),
            backlog_windows: AtomicU64::new(0),
            cluster_shipments: AtomicU64::new(0),
            cluster_shipped_bytes: AtomicU64::new(0),
            cluster_local_windows: AtomicU64::new(0),
            cluster_late_windows: AtomicU64::new(0),
            cluster_partitions_counted: AtomicU64::new(0),
            cluster_adopted_windows: AtomicU64::new(0),
            window_unique_ids: AtomicU64::new(0),
            last_window_unique_ids: AtomicU64::new(0),
            memory,
            accept_errors: AtomicU64::new(0),
            max_connections: AtomicU64::new(0),
            state_file: Arc::default(),
        }
    }

    pub fn worker(&self, shard: usize) -> &WorkerCounters {
        &self.workers[shard % self.workers.len()]
    }

    fn sum(&self, f: impl Fn(&WorkerCounters) -> &AtomicU64) -> u64 {
        self.workers.iter().map(|w| f(w).load(Relaxed)).sum()
    }

    /// Every counter and gauge, read once from the atomics: what `/metrics` and the status
    /// page render. Loads only, so its cost does not depend on the window.
    pub fn snapshot(&self) -> Snapshot {
        let calls = &self.endpoint_calls;
        let state = &self.state_file;
        let limit = self.memory.limit();
        Snapshot {
            requests: RequestCounts {
                ok: self.sum(|w| &w.ok),
                bad_request: self.sum(|w| &w.bad_request),
                unavailable: self.sum(|w| &w.unavailable),
            },
            window_unique_ids: self.window_unique_ids.load(Relaxed),
            last_window_unique_ids: self.last_window_unique_ids.load(Relaxed),
            id_memory: IdMemoryUse {
                used: self.memory.used(),
                limit: (limit != u64::MAX).then_some(limit),
                refused: self.memory.refused(),
            },
            windows_reported: self.windows_reported.load(Relaxed),
            endpoint_calls: EndpointCallCounts {
                success: calls.success.load(Relaxed),
                http_error: calls.http_error.load(Relaxed),
                failed: calls.failed.load(Relaxed),
                denied: calls.denied.load(Relaxed),
                dropped: calls.dropped.load(Relaxed),
                refused: calls.refused.load(Relaxed),
            },
            redis_errors: self.redis_errors.load(Relaxed),
            kafka_errors: self.kafka_errors.load(Relaxed),
            kafka_records: KafkaRecordCounts {
                delivered: self.kafka_records.delivered.load(Relaxed),
                lost: self.kafka_records.lost.load(Relaxed),
            },
            backlog_windows: self.backlog_windows.load(Relaxed),
            cluster_shipments: self.cluster_shipments.load(Relaxed),
            cluster_shipped_bytes: self.cluster_shipped_bytes.load(Relaxed),
            cluster_local_windows: self.cluster_local_windows.load(Relaxed),
            cluster_late_windows: self.cluster_late_windows.load(Relaxed),
            cluster_partitions_counted: self.cluster_partitions_counted.load(Relaxed),
            cluster_adopted_windows: self.cluster_adopted_windows.load(Relaxed),
            late_ids: self.late_ids.load(Relaxed),
            max_connections: self.max_connections.load(Relaxed),
            accept_errors: self.accept_errors.load(Relaxed),
            state_file: StateFileCounts {
                file_bytes: state.file_bytes.load(Relaxed),
                written_bytes: state.written_bytes.load(Relaxed),
                syncs: state.syncs.load(Relaxed),
                errors: state.errors.load(Relaxed),
            },
            log_write_errors: crate::logging::write_errors(),
        }
    }

    /// The `/metrics` page, from one [`Snapshot`]. `open_connections` comes from the accept
    /// loop, which counts them.
    pub fn render(&self, open_connections: u64) -> String {
        self.snapshot().render(open_connections)
    }
}

/// Accept API requests by outcome, summed over the workers.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RequestCounts {
    pub ok: u64,
    pub bad_request: u64,
    pub unavailable: u64,
}

impl RequestCounts {
    /// Every answer, whatever its outcome.
    pub fn total(&self) -> u64 {
        self.ok
            .saturating_add(self.bad_request)
            .saturating_add(self.unavailable)
    }
}

/// Endpoint call results (see [`EndpointCalls`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EndpointCallCounts {
    pub success: u64,
    pub http_error: u64,
    pub failed: u64,
    pub denied: u64,
    pub dropped: u64,
    pub refused: u64,
}

/// Kafka records by result (see [`KafkaRecords`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct KafkaRecordCounts {
    pub delivered: u64,
    pub lost: u64,
}

/// The `--max-memory` budget and what it holds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IdMemoryUse {
    /// Bytes the id sets take (with what workers reserved).
    pub used: u64,
    /// `--max-memory`; `None` without one.
    pub limit: Option<u64>,
    /// Requests answered 503 and not counted because the budget was spent.
    pub refused: u64,
}

/// `--state-file`'s writer (see [`StateFileStats`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StateFileCounts {
    pub file_bytes: u64,
    pub written_bytes: u64,
    pub syncs: u64,
    pub errors: u64,
}

/// [`Metrics`] at one moment: plain numbers, read once ([`Metrics::snapshot`]), so the
/// `/metrics` page and the status page show the same figures and never re-read the atomics.
/// The fields are those of [`Metrics`]; see there for what each counts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub requests: RequestCounts,
    pub window_unique_ids: u64,
    pub last_window_unique_ids: u64,
    pub id_memory: IdMemoryUse,
    pub windows_reported: u64,
    pub endpoint_calls: EndpointCallCounts,
    pub redis_errors: u64,
    pub kafka_errors: u64,
    pub kafka_records: KafkaRecordCounts,
    pub backlog_windows: u64,
    pub cluster_shipments: u64,
    pub cluster_shipped_bytes: u64,
    pub cluster_local_windows: u64,
    pub cluster_late_windows: u64,
    pub cluster_partitions_counted: u64,
    pub cluster_adopted_windows: u64,
    pub late_ids: u64,
    pub max_connections: u64,
    pub accept_errors: u64,
    pub state_file: StateFileCounts,
    /// Log lines written nowhere (see [`crate::logging::write_errors`]).
    pub log_write_errors: u64,
}

impl Snapshot {
    /// The `/metrics` page, in Prometheus text format. `open_connections` comes from the
    /// accept loop, which counts them.
    pub fn render(&self, open_connections: u64) -> String {
        let mut page = Exposition(String::with_capacity(2048));
        self.render_counting(&mut page);
        self.render_reporting(&mut page);
        self.render_cluster(&mut page);
        self.render_connections(&mut page, open_connections);
        self.render_persistence(&mut page);
        page.0
    }

    /// Requests, the windows' counts and the memory their ids take.
    fn render_counting(&self, page: &mut Exposition) {
        let requests = &self.requests;
        page.family(
            "verve_requests_total",
            "counter",
            "Accept API requests by outcome.",
            &[
                ("{outcome=\"ok\"}", requests.ok),
                ("{outcome=\"bad_request\"}", requests.bad_request),
                ("{outcome=\"unavailable\"}", requests.unavailable),
                // No request is answered 500 (every failure has its own status), but the
                // series stays, at 0, so that sums over the outcomes keep their shape.
                ("{outcome=\"error\"}", 0),
            ],
        );
        page.gauge(
            "verve_window_unique_ids",
            "Distinct ids so far in the open window (merged once a second).",
            self.window_unique_ids,
        );
        page.gauge(
            "verve_last_window_unique_ids",
            "The count of the last window this instance reported.",
            self.last_window_unique_ids,
        );
        page.gauge(
            "verve_id_memory_bytes",
            "Bytes the id sets of every window held in memory take (with what workers reserved).",
            self.id_memory.used,
        );
        page.gauge(
            "verve_id_memory_limit_bytes",
            "The id memory budget, --max-memory (0: none).",
            self.id_memory.limit.unwrap_or(0),
        );
        page.counter(
            "verve_memory_refused_ids_total",
            "Requests answered 503 and not counted because the id memory budget was spent.",
            self.id_memory.refused,
        );
        page.counter(
            "verve_windows_reported_total",
            "Windows whose count line was written.",
            self.windows_reported,
        );
    }

    /// The reporters: endpoint calls, Redis, Kafka and the windows still being reported.
    fn render_reporting(&self, page: &mut Exposition) {
        let calls = &self.endpoint_calls;
        page.family(
            "verve_endpoint_calls_total",
            "counter",
            "Endpoint callbacks by result.",
            &[
                ("{result=\"success\"}", calls.success),
                ("{result=\"http_error\"}", calls.http_error),
                ("{result=\"failed\"}", calls.failed),
                ("{result=\"denied\"}", calls.denied),
                ("{result=\"dropped\"}", calls.dropped),
                ("{result=\"refused\"}", calls.refused),
            ],
        );
        page.counter(
            "verve_redis_errors_total",
            "Failed Redis operations (cluster mode).",
            self.redis_errors,
        );
        page.counter(
            "verve_kafka_errors_total",
            "Kafka errors: broker errors, failed deliveries and topic checks.",
            self.kafka_errors,
        );
        page.family(
            "verve_kafka_records_total",
            "counter",
            "Kafka records by result: delivered (acknowledged) or lost (logged).",
            &[
                ("{result=\"delivered\"}", self.kafka_records.delivered),
                ("{result=\"lost\"}", self.kafka_records.lost),
            ],
        );
        page.gauge(
            "verve_backlog_windows",
            "Sealed windows whose reports are not finished.",
            self.backlog_windows,
        );
    }

    /// Cluster mode's shipments and windows, and ids that came late.
    fn render_cluster(&self, page: &mut Exposition) {
        page.counter(
            "verve_cluster_shipments_total",
            "Shipments of ids stored in Redis (cluster mode).",
            self.cluster_shipments,
        );
        page.counter(
            "verve_cluster_shipped_bytes_total",
            "Bytes of serialized ids shipped to Redis (cluster mode).",
            self.cluster_shipped_bytes,
        );
        page.counter(
            "verve_cluster_local_windows_total",
            "Windows this instance reported alone, scope=local (cluster mode).",
            self.cluster_local_windows,
        );
        page.counter(
            "verve_cluster_late_windows_total",
            "Windows whose ids reached Redis after the cluster reported them (cluster mode).",
            self.cluster_late_windows,
        );
        page.counter(
            "verve_cluster_partitions_counted_total",
            "Partitions of windows this instance counted for the cluster (cluster mode).",
            self.cluster_partitions_counted,
        );
        page.counter(
            "verve_cluster_adopted_windows_total",
            "Windows this instance took up because every instance holding them was gone (cluster mode).",
            self.cluster_adopted_windows,
        );
        page.counter(
            "verve_late_ids_total",
            "Requests whose window was already sealed, counted in the oldest open window.",
            self.late_ids,
        );
    }

    fn render_connections(&self, page: &mut Exposition, open_connections: u64) {
        page.gauge(
            "verve_open_connections",
            "Client connections open now.",
            open_connections,
        );
        page.gauge(
            "verve_max_connections",
            "The --max-connections limit.",
            self.max_connections,
        );
        page.counter(
            "verve_accept_errors_total",
            "Connections not taken: accept failed (descriptors, memory) or no coroutine could start.",
            self.accept_errors,
        );
    }

    /// The state file's journal and the log.
    fn render_persistence(&self, page: &mut Exposition) {
        let state = &self.state_file;
        page.gauge(
            "verve_state_file_bytes",
            "Bytes in the --state-file journal now.",
            state.file_bytes,
        );
        page.counter(
            "verve_state_file_written_bytes_total",
            "Bytes written to the --state-file journal, rewrites included.",
            state.written_bytes,
        );
        page.counter(
            "verve_state_file_syncs_total",
            "Syncs of the --state-file journal to disk.",
            state.syncs,
        );
        page.counter(
            "verve_state_file_errors_total",
            "Writes, syncs and rewrites of the --state-file journal that failed.",
            state.errors,
        );
        page.counter(
            "verve_log_write_errors_total",
            "Log lines written nowhere: the log file and stderr both refused them.",
            self.log_write_errors,
        );
    }
}

/// A page of Prometheus text being written, one metric family after another.
struct Exposition(String);

impl Exposition {
    /// `# HELP`, `# TYPE` and one line per sample (its labels, then its value).
    fn family(&mut self, name: &str, kind: &str, help: &str, samples: &[(&str, u64)]) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(self.0, "{name}{labels} {value}");
        }
    }

    /// A family of one counter without labels.
    fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, "counter", help, &[("", value)]);
    }

    /// A family of one gauge without labels.
    fn gauge(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, "gauge", help, &[("", value)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_sums_workers_and_lists_every_documented_metric() {
        let m = Metrics::new(2);
        m.worker(0).ok.fetch_add(3, Relaxed);
        m.worker(1).ok.fetch_add(4, Relaxed);
        m.worker(1).bad_request.fetch_add(1, Relaxed);
        m.endpoint_calls.http_error.fetch_add(2, Relaxed);
        m.window_unique_ids.store(17, Relaxed);
        let page = m.render(3);
        assert!(page.contains("verve_requests_total{outcome=\"ok\"} 7\n"));
        assert!(page.contains("verve_requests_total{outcome=\"bad_request\"} 1\n"));
        assert!(page.contains("verve_requests_total{outcome=\"unavailable\"} 0\n"));
        assert!(page.contains("verve_requests_total{outcome=\"error\"} 0\n"));
        assert!(page.contains("verve_window_unique_ids 17\n"));
        assert!(page.contains("verve_open_connections 3\n"));
        assert!(page.contains("verve_endpoint_calls_total{result=\"http_error\"} 2\n"));
        for name in [
            "verve_windows_reported_total ",
            "verve_redis_errors_total ",
            "verve_kafka_errors_total ",
            "verve_kafka_records_total{result=\"lost\"} ",
            "verve_backlog_windows ",
            "verve_last_window_unique_ids 0\n",
            "verve_id_memory_bytes 0\n",
            "verve_id_memory_limit_bytes 0\n",
            "verve_memory_refused_ids_total 0\n",
            "verve_log_write_errors_total ",
            "verve_state_file_bytes ",
            "verve_state_file_written_bytes_total ",
            "verve_state_file_syncs_total ",
            "verve_state_file_errors_total ",
        ] {
            assert!(page.contains(name), "{name}");
        }
    }

    #[test]
    fn a_snapshot_names_every_counter_and_renders_the_page() {
        let m = Metrics::with_memory(3, IdMemory::new(4096));
        m.worker(0).ok.fetch_add(3, Relaxed);
        m.worker(2).ok.fetch_add(4, Relaxed);
        m.worker(1).unavailable.fetch_add(2, Relaxed);
        m.endpoint_calls.dropped.fetch_add(5, Relaxed);
        m.kafka_records.lost.fetch_add(1, Relaxed);
        m.state_file.syncs.fetch_add(9, Relaxed);
        let counts = m.snapshot();
        assert_eq!(
            counts.requests,
            RequestCounts {
                ok: 7,
                unavailable: 2,
                ..RequestCounts::default()
            }
        );
        assert_eq!(counts.requests.total(), 9);
        assert_eq!(counts.endpoint_calls.dropped, 5);
        assert_eq!(counts.kafka_records.lost, 1);
        assert_eq!(counts.state_file.syncs, 9);
        assert_eq!(counts.id_memory.limit, Some(4096));
        assert_eq!(Metrics::new(1).snapshot().id_memory.limit, None);
        // Later counts change the atomics, not a snapshot already taken.
        m.worker(0).ok.fetch_add(1, Relaxed);
        assert_eq!(counts.requests.ok, 7);
        let page = counts.render(0);
        assert!(page.contains("verve_requests_total{outcome=\"ok\"} 7\n"));
        assert!(page.contains("verve_id_memory_limit_bytes 4096\n"));
        assert!(page.contains("verve_state_file_syncs_total 9\n"));
        assert!(m
            .render(0)
            .contains("verve_requests_total{outcome=\"ok\"} 8\n"));
    }
}
