//! What verve says about its Kafka records, for the Kafka tests: the windows its log reports
//! as acknowledged or lost, a `/metrics` sample, and the records its count lines promise.

use super::{parse_rfc3339_secs, CountLine, Server};
use verve::report::kafka::{key, value};

/// The record every count line promises: (key, value).
pub fn expected(lines: &[CountLine]) -> Vec<(String, String)> {
    lines
        .iter()
        .map(|c| (key(c.window_start), value(c.window_start, c.unique_count)))
        .collect()
}

/// Windows whose record the broker acknowledged, from the log's `kafka` lines, in log order.
pub fn delivered(server: &Server) -> Vec<u64> {
    server
        .log_lines()
        .iter()
        .filter(|l| l.contains(" kafka ") && l.contains(" offset="))
        .filter_map(|l| token(l, "window_start=").and_then(|t| parse_rfc3339_secs(&t)))
        .collect()
}

/// Windows logged as lost, with the reason.
pub fn lost(server: &Server) -> Vec<(u64, String)> {
    server
        .log_lines()
        .iter()
        .filter(|l| l.contains(" kafka "))
        .filter_map(|l| {
            let why = token(l, "lost=")?;
            Some((parse_rfc3339_secs(&token(l, "window_start=")?)?, why))
        })
        .collect()
}

/// The value of `name=` in a log line.
pub fn token(line: &str, name: &str) -> Option<String> {
    line.split(' ')
        .find_map(|t| t.strip_prefix(name))
        .map(str::to_string)
}

/// One unlabelled or labelled sample of `/metrics`.
pub fn metric(server: &Server, sample: &str) -> u64 {
    let page = server.get("/metrics").text();
    page.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{sample} not in /metrics:\n{page}"))
}

/// Stops verve with SIGTERM and returns every count line it wrote.
pub fn stop(mut server: Server) -> (Server, Vec<CountLine>) {
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit().success(), "stderr: {}", server.stderr());
    let lines = server.count_lines();
    (server, lines)
}
