//! Counters for `/metrics`, in Prometheus text format. Request outcomes are counted per
//! worker shard (each on its own cache line, so workers never write a shared line on the
//! request path) and summed at scrape time; everything the collector and reporters count is
//! rare enough for plain shared atomics. [`Metrics::status`] holds the history of reported
//! windows and the cached `/api/verve/windows` and status pages (see [`crate::status`]).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use crossbeam_utils::CachePadded;

use crate::budget::IdMemory;
use crate::status::Status;

/// Outcomes of API requests, one set per shard.
#[derive(Debug, Default)]
pub struct WorkerCounters {
    pub ok: AtomicU64,
    pub bad_request: AtomicU64,
    pub unavailable: AtomicU64,
    pub error: AtomicU64,
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
    /// The reported windows' history and the pages rendered from it and these counters.
    pub status: Status,
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
            window_unique_ids: AtomicU64::new(0),
            last_window_unique_ids: AtomicU64::new(0),
            memory,
            accept_errors: AtomicU64::new(0),
            max_connections: AtomicU64::new(0),
            status: Status::new(workers),
            state_file: Arc::default(),
        }
    }

    pub fn worker(&self, shard: usize) -> &WorkerCounters {
        &self.workers[shard % self.workers.len()]
    }

    fn sum(&self, f: impl Fn(&WorkerCounters) -> &AtomicU64) -> u64 {
        self.workers.iter().map(|w| f(w).load(Relaxed)).sum()
    }

    /// The `/metrics` page: atomics only, so its cost does not depend on the window.
    /// `open_connections` comes from the accept loop, which counts them.
    pub fn render(&self, open_connections: u64) -> String {
        let mut out = String::with_capacity(2048);
        let mut family = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        family(
            "verve_requests_total",
            "counter",
            "Accept API requests by outcome.",
            &[
                ("{outcome=\"ok\"}", self.sum(|w| &w.ok)),
                ("{outcome=\"bad_request\"}", self.sum(|w| &w.bad_request)),
                ("{outcome=\"unavailable\"}", self.sum(|w| &w.unavailable)),
                ("{outcome=\"error\"}", self.sum(|w| &w.error)),
            ],
        );
        family(
            "verve_window_unique_ids",
            "gauge",
            "Distinct ids so far in the open window (merged once a second).",
            &[("", self.window_unique_ids.load(Relaxed))],
        );
        family(
            "verve_last_window_unique_ids",
            "gauge",
            "The count of the last window this instance reported.",
            &[("", self.last_window_unique_ids.load(Relaxed))],
        );
        family(
            "verve_id_memory_bytes",
            "gauge",
            "Bytes the id sets of every window held in memory take (with what workers reserved).",
            &[("", self.memory.used())],
        );
        let limit = self.memory.limit();
        family(
            "verve_id_memory_limit_bytes",
            "gauge",
            "The id memory budget, --max-memory (0: none).",
            &[("", if limit == u64::MAX { 0 } else { limit })],
        );
        family(
            "verve_memory_refused_ids_total",
            "counter",
            "Requests answered 503 and not counted because the id memory budget was spent.",
            &[("", self.memory.refused())],
        );
        family(
            "verve_windows_reported_total",
            "counter",
            "Windows whose count line was written.",
            &[("", self.windows_reported.load(Relaxed))],
        );
        let calls = &self.endpoint_calls;
        family(
            "verve_endpoint_calls_total",
            "counter",
            "Endpoint callbacks by result.",
            &[
                ("{result=\"success\"}", calls.success.load(Relaxed)),
                ("{result=\"http_error\"}", calls.http_error.load(Relaxed)),
                ("{result=\"failed\"}", calls.failed.load(Relaxed)),
                ("{result=\"denied\"}", calls.denied.load(Relaxed)),
                ("{result=\"dropped\"}", calls.dropped.load(Relaxed)),
                ("{result=\"refused\"}", calls.refused.load(Relaxed)),
            ],
        );
        family(
            "verve_redis_errors_total",
            "counter",
            "Failed Redis operations (cluster mode).",
            &[("", self.redis_errors.load(Relaxed))],
        );
        family(
            "verve_kafka_errors_total",
            "counter",
            "Kafka errors: broker errors, failed deliveries and topic checks.",
            &[("", self.kafka_errors.load(Relaxed))],
        );
        family(
            "verve_kafka_records_total",
            "counter",
            "Kafka records by result: delivered (acknowledged) or lost (logged).",
            &[
                (
                    "{result=\"delivered\"}",
                    self.kafka_records.delivered.load(Relaxed),
                ),
                ("{result=\"lost\"}", self.kafka_records.lost.load(Relaxed)),
            ],
        );
        family(
            "verve_backlog_windows",
            "gauge",
            "Sealed windows whose reports are not finished.",
            &[("", self.backlog_windows.load(Relaxed))],
        );
        family(
            "verve_cluster_shipments_total",
            "counter",
            "Shipments of ids stored in Redis (cluster mode).",
            &[("", self.cluster_shipments.load(Relaxed))],
        );
        family(
            "verve_cluster_shipped_bytes_total",
            "counter",
            "Bytes of serialized ids shipped to Redis (cluster mode).",
            &[("", self.cluster_shipped_bytes.load(Relaxed))],
        );
        family(
            "verve_cluster_local_windows_total",
            "counter",
            "Windows this instance reported alone, scope=local (cluster mode).",
            &[("", self.cluster_local_windows.load(Relaxed))],
        );
        family(
            "verve_cluster_late_windows_total",
            "counter",
            "Windows whose ids reached Redis after the cluster reported them (cluster mode).",
            &[("", self.cluster_late_windows.load(Relaxed))],
        );
        family(
            "verve_late_ids_total",
            "counter",
            "Requests whose window was already sealed, counted in the oldest open window.",
            &[("", self.late_ids.load(Relaxed))],
        );
        family(
            "verve_open_connections",
            "gauge",
            "Client connections open now.",
            &[("", open_connections)],
        );
        family(
            "verve_max_connections",
            "gauge",
            "The --max-connections limit.",
            &[("", self.max_connections.load(Relaxed))],
        );
        family(
            "verve_accept_errors_total",
            "counter",
            "Connections not taken: accept failed (descriptors, memory) or no coroutine could start.",
            &[("", self.accept_errors.load(Relaxed))],
        );
        let state = &self.state_file;
        family(
            "verve_state_file_bytes",
            "gauge",
            "Bytes in the --state-file journal now.",
            &[("", state.file_bytes.load(Relaxed))],
        );
        family(
            "verve_state_file_written_bytes_total",
            "counter",
            "Bytes written to the --state-file journal, rewrites included.",
            &[("", state.written_bytes.load(Relaxed))],
        );
        family(
            "verve_state_file_syncs_total",
            "counter",
            "Syncs of the --state-file journal to disk.",
            &[("", state.syncs.load(Relaxed))],
        );
        family(
            "verve_state_file_errors_total",
            "counter",
            "Writes, syncs and rewrites of the --state-file journal that failed.",
            &[("", state.errors.load(Relaxed))],
        );
        family(
            "verve_log_write_errors_total",
            "counter",
            "Log lines written nowhere: the log file and stderr both refused them.",
            &[("", crate::logging::write_errors())],
        );
        out
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
}
