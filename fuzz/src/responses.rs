//! The parsers of what verve writes, for the `request` checks: each response strictly in the
//! form verve writes it, and the `/metrics` page.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Connection {
    Close,
    KeepAlive,
}

#[derive(Debug)]
pub(super) enum Body {
    Ok,
    Failed,
    /// The answer to a HEAD request: headers only.
    None,
    Metrics(Page),
    /// `/api/verve/windows` or the status page: a body rendered off the request path.
    Cached,
}

#[derive(Debug)]
pub(super) struct Response {
    pub(super) status: u16,
    pub(super) connection: Option<Connection>,
    pub(super) body: Body,
}

/// Every status line verve writes (`response::Status::line`), with the header that goes
/// with it.
pub(super) const STATUS_LINES: [(u16, &str); 7] = [
    (200, "HTTP/1.1 200 OK"),
    (400, "HTTP/1.1 400 Bad Request"),
    (404, "HTTP/1.1 404 Not Found"),
    (405, "HTTP/1.1 405 Method Not Allowed"),
    (413, "HTTP/1.1 413 Content Too Large"),
    (431, "HTTP/1.1 431 Request Header Fields Too Large"),
    (503, "HTTP/1.1 503 Service Unavailable"),
];

pub(super) const TEXT: &str = "text/plain";
pub(super) const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";
const JSON: &str = "application/json";
const HTML: &str = "text/html; charset=utf-8";

/// The headers verve writes after `Date` for a content type (a `Reply::Page`'s `extra`).
fn extra_headers(content_type: &str) -> Vec<String> {
    let extra: &[u8] = match content_type {
        JSON => verve::http::response::JSON_HEADERS,
        HTML => verve::http::response::PAGE_HEADERS,
        _ => b"",
    };
    String::from_utf8_lossy(extra)
        .split("\r\n")
        .filter(|h| !h.is_empty())
        .map(str::to_string)
        .collect()
}

/// Parses the response at `out[pos..]` strictly in the form verve writes it and returns it
/// with the position after it.
pub(super) fn parse_response(out: &[u8], pos: usize) -> Result<(Response, usize), String> {
    let rest = &out[pos..];
    ensure!(
        rest.starts_with(b"HTTP/1.1 "),
        "does not start with HTTP/1.1"
    );
    let head_len = rest
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("head without an end")?;
    let head = std::str::from_utf8(&rest[..head_len]).map_err(|_| "head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or("");
    let status = STATUS_LINES
        .iter()
        .find(|(_, l)| *l == line)
        .map(|(code, _)| *code)
        .ok_or_else(|| format!("unknown status line {line:?}"))?;
    let mut next = || lines.next().unwrap_or("");
    let mut header = next();
    if status == 405 {
        ensure!(header == "Allow: GET", "405 without Allow: GET");
        header = next();
    }
    ensure!(header == "Server: verve", "expected Server, got {header:?}");
    let content_type = next()
        .strip_prefix("Content-Type: ")
        .ok_or("expected Content-Type")?
        .to_string();
    ensure!(
        [TEXT, PROMETHEUS, JSON, HTML].contains(&content_type.as_str()),
        "Content-Type {content_type:?}"
    );
    let length = next()
        .strip_prefix("Content-Length: ")
        .ok_or("expected Content-Length")?;
    ensure!(
        !length.is_empty()
            && length.bytes().all(|b| b.is_ascii_digit())
            && (length == "0" || !length.starts_with('0')),
        "Content-Length {length:?}"
    );
    let length: usize = length.parse().map_err(|_| "Content-Length overflows")?;
    let date = next().strip_prefix("Date: ").ok_or("expected Date")?;
    ensure!(
        date.len() == 29
            && date.ends_with(" GMT")
            && date.bytes().all(|b| b.is_ascii_graphic() || b == b' '),
        "Date {date:?}"
    );
    for expected in extra_headers(&content_type) {
        let header = next();
        ensure!(header == expected, "expected {expected:?}, got {header:?}");
    }
    let connection = match next() {
        "" => None,
        "Connection: close" => Some(Connection::Close),
        "Connection: keep-alive" => Some(Connection::KeepAlive),
        other => return Err(format!("unexpected header {other:?}")),
    };
    ensure!(lines.next().is_none(), "more headers than verve writes");
    let body_at = head_len + 4;
    let after = &rest[body_at..];
    let body_bytes = after.get(..length);
    let (body, used) = match (status, content_type.as_str()) {
        (200, TEXT) => {
            ensure!(body_bytes == Some(b"ok"), "200 text/plain without ok body");
            (Body::Ok, length)
        }
        (200, PROMETHEUS) => {
            let page = body_bytes.ok_or("metrics page shorter than Content-Length")?;
            (Body::Metrics(parse_page(page)?), length)
        }
        (200, JSON) => {
            let body = body_bytes.ok_or("windows shorter than Content-Length")?;
            ensure!(
                body.starts_with(b"{\"windows\":[") && body.ends_with(b"]}\n"),
                "windows body {:?}",
                String::from_utf8_lossy(body)
            );
            (Body::Cached, length)
        }
        (200, HTML) => {
            let body = body_bytes.ok_or("status page shorter than Content-Length")?;
            ensure!(
                body.starts_with(b"<!doctype html>"),
                "status page {:?}",
                String::from_utf8_lossy(body)
            );
            (Body::Cached, length)
        }
        (_, TEXT) => {
            ensure!(length == 6, "failed answer with Content-Length {length}");
            if body_bytes == Some(b"failed") {
                (Body::Failed, length)
            } else {
                // A HEAD answer: the headers of the GET answer, no body. Every HEAD answer
                // is a 404 or 405: only GET is routed anywhere.
                ensure!(
                    after.is_empty() || after.starts_with(b"HTTP/1.1 "),
                    "{status} body is neither failed nor absent"
                );
                ensure!(
                    matches!(status, 404 | 405),
                    "a bodyless {status} (HEAD is only ever 404 or 405)"
                );
                (Body::None, 0)
            }
        }
        _ => return Err(format!("{status} with Content-Type {content_type}")),
    };
    Ok((
        Response {
            status,
            connection,
            body,
        },
        pos + body_at + used,
    ))
}

/// What a `/metrics` page says.
#[derive(Debug, Default)]
pub(super) struct Page {
    pub(super) ok: u64,
    pub(super) bad_request: u64,
    pub(super) unavailable: u64,
    pub(super) error: u64,
    pub(super) unique: u64,
    /// Every other sample is 0: nothing in a socket-free `Conn` moves them.
    pub(super) others_zero: bool,
}

impl Page {
    pub(super) fn api_total(&self) -> u64 {
        self.ok + self.bad_request + self.unavailable + self.error
    }
}

/// The samples every page has, in order.
pub(super) const SAMPLES: [&str; 36] = [
    "verve_requests_total{outcome=\"ok\"}",
    "verve_requests_total{outcome=\"bad_request\"}",
    "verve_requests_total{outcome=\"unavailable\"}",
    "verve_requests_total{outcome=\"error\"}",
    "verve_window_unique_ids",
    "verve_last_window_unique_ids",
    "verve_id_memory_bytes",
    "verve_id_memory_limit_bytes",
    "verve_memory_refused_ids_total",
    "verve_windows_reported_total",
    "verve_endpoint_calls_total{result=\"success\"}",
    "verve_endpoint_calls_total{result=\"http_error\"}",
    "verve_endpoint_calls_total{result=\"failed\"}",
    "verve_endpoint_calls_total{result=\"denied\"}",
    "verve_endpoint_calls_total{result=\"dropped\"}",
    "verve_endpoint_calls_total{result=\"refused\"}",
    "verve_redis_errors_total",
    "verve_kafka_errors_total",
    "verve_kafka_records_total{result=\"delivered\"}",
    "verve_kafka_records_total{result=\"lost\"}",
    "verve_backlog_windows",
    "verve_cluster_shipments_total",
    "verve_cluster_shipped_bytes_total",
    "verve_cluster_local_windows_total",
    "verve_cluster_late_windows_total",
    "verve_cluster_partitions_counted_total",
    "verve_cluster_adopted_windows_total",
    "verve_late_ids_total",
    "verve_open_connections",
    "verve_max_connections",
    "verve_accept_errors_total",
    "verve_state_file_bytes",
    "verve_state_file_written_bytes_total",
    "verve_state_file_syncs_total",
    "verve_state_file_errors_total",
    "verve_log_write_errors_total",
];

/// Prometheus text format, as `Metrics::render` writes it: `# HELP`, `# TYPE`, samples.
pub(super) fn parse_page(page: &[u8]) -> Result<Page, String> {
    let text = std::str::from_utf8(page).map_err(|_| "metrics page is not UTF-8")?;
    ensure!(
        text.ends_with('\n'),
        "metrics page does not end in a newline"
    );
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(help) = line.strip_prefix("# HELP ") {
            ensure!(help.starts_with("verve_"), "HELP line {line:?}");
        } else if let Some(kind) = line.strip_prefix("# TYPE ") {
            ensure!(
                kind.starts_with("verve_")
                    && (kind.ends_with(" counter") || kind.ends_with(" gauge")),
                "TYPE line {line:?}"
            );
        } else {
            let (name, value) = line
                .rsplit_once(' ')
                .ok_or_else(|| format!("sample line {line:?}"))?;
            let value: u64 = value
                .parse()
                .map_err(|_| format!("sample value in {line:?}"))?;
            samples.push((name.to_string(), value));
        }
    }
    let names: Vec<&str> = samples.iter().map(|(n, _)| n.as_str()).collect();
    ensure!(names == SAMPLES, "samples {names:?}");
    let v = |i: usize| samples[i].1;
    Ok(Page {
        ok: v(0),
        bad_request: v(1),
        unavailable: v(2),
        error: v(3),
        unique: v(4),
        // `verve_id_memory_bytes` (6) holds what the workers drew from the budget for the
        // ids they recorded: not zero once anything was counted.
        others_zero: (5..samples.len()).filter(|&i| i != 6).all(|i| v(i) == 0),
    })
}
