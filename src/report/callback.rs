//! Endpoint callbacks: each distinct endpoint of a window is called once with the window's
//! final count, by a small pool of plain threads sharing one pooled ureq `Agent`, so that a
//! slow endpoint delays neither the collector nor the next count line.
//!
//! Every call is bounded: `--endpoint-timeout` for the whole call (DNS, connect, TLS,
//! request, response), no redirects, at most [`MAX_RESPONSE_BYTES`] of the response read. Host
//! names are resolved by [`GuardedResolver`], which drops link-local addresses unless the
//! host is on the allow-list, and ureq connects only to the addresses it returns, so a DNS
//! answer cannot redirect a call to a metadata service. Proxies from the environment are not
//! used, for the same reason.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};
use ureq::Agent;

use crate::clock::rfc3339_secs;
use crate::endpoints::EndpointPolicy;
use crate::health::Health;
use crate::logging::sanitize;
use crate::metrics::Metrics;
use crate::report::{Reporter, Scope, WindowReport};

/// The log target of endpoint lines.
pub const TARGET: &str = "endpoint";

/// Threads making calls. Calls are I/O-bound; 16 in parallel keeps 1000 endpoints that all
/// time out at 2 s to about two minutes, without a thread per endpoint.
pub const CALL_THREADS: usize = 16;

/// Response bytes read (and discarded) so the pooled connection can be reused; past this
/// the connection is dropped instead.
pub const MAX_RESPONSE_BYTES: u64 = 16 * 1024;

/// `--endpoint-method`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Method {
    /// `GET <url>?count=N` (or `&count=N` when the URL has a query).
    Get,
    /// `POST <url>` with `{"unique_count": N, "window_start": "..."}`.
    Post,
}

/// One call to make.
#[derive(Debug, Clone)]
struct Call {
    url: String,
    window_start: u64,
    count: u64,
    /// Calls of this window not finished yet: the last one to finish takes the window off
    /// `verve_backlog_windows`.
    window_left: Arc<AtomicU64>,
}

impl Call {
    /// Marks this call finished (made, or given up).
    fn done(&self, metrics: &Metrics) {
        if self.window_left.fetch_sub(1, Relaxed) == 1 {
            metrics.backlog_windows.fetch_sub(1, Relaxed);
        }
    }
}

/// The GET form of a callback URL: `count=N` appended as a query parameter.
pub fn url_with_count(url: &str, count: u64) -> String {
    let sep = if url.contains('?') {
        if url.ends_with('?') || url.ends_with('&') {
            ""
        } else {
            "&"
        }
    } else {
        "?"
    };
    format!("{url}{sep}count={count}")
}

/// The POST body.
pub fn json_body(window_start: u64, count: u64) -> String {
    format!(
        "{{\"unique_count\": {count}, \"window_start\": \"{}\"}}",
        rfc3339_secs(window_start)
    )
}

/// Resolves like ureq does, then removes addresses the policy forbids (link-local unless
/// listed). When nothing is left the call fails with a "denied" error.
#[derive(Debug)]
pub struct GuardedResolver {
    inner: DefaultResolver,
    policy: EndpointPolicy,
}

impl Resolver for GuardedResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let resolved = self.inner.resolve(uri, config, timeout)?;
        let host = uri
            .host()
            .unwrap_or("")
            .trim_start_matches('[')
            .trim_end_matches(']');
        let mut kept = self.empty();
        for addr in resolved.iter() {
            if self.policy.address_allowed(host, addr.ip()) {
                kept.push(*addr);
            }
        }
        if kept.is_empty() {
            return Err(ureq::Error::Io(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "denied: resolves to a link-local address",
            )));
        }
        Ok(kept)
    }
}

/// The agent every call uses.
pub fn agent(timeout: Duration, policy: EndpointPolicy) -> Agent {
    let config = Agent::config_builder()
        .timeout_global(Some(timeout))
        .max_redirects(0)
        .http_status_as_error(false)
        .proxy(None)
        .user_agent(concat!("verve/", env!("CARGO_PKG_VERSION")))
        .build();
    Agent::with_parts(
        config,
        DefaultConnector::new(),
        GuardedResolver {
            inner: DefaultResolver::default(),
            policy,
        },
    )
}

/// A short, single-line reason for a failed call (the `error=` token).
fn reason(err: &ureq::Error) -> String {
    let text = match err {
        ureq::Error::Timeout(_) => "timeout".to_string(),
        ureq::Error::HostNotFound => "host-not-found".to_string(),
        ureq::Error::ConnectionFailed => "connection-failed".to_string(),
        ureq::Error::Io(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            "denied-link-local".to_string()
        }
        ureq::Error::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            "connection-refused".to_string()
        }
        other => format!("{other}"),
    };
    // Never let a reason break the one-line-per-event log format: it is one token, and what
    // ureq quotes (a host's answer, a TLS library's words) is outside text.
    sanitize(&text.replace(|c: char| c.is_whitespace() || c.is_control(), "_")).into_owned()
}

/// An endpoint as the `endpoint=` token shows it: sanitized, spaces encoded, so that one
/// from outside (Redis, in cluster mode) stays one token on one line. A canonical URL is shown
/// as it is.
pub fn endpoint_token(url: &str) -> std::borrow::Cow<'_, str> {
    if url.contains(' ') {
        std::borrow::Cow::Owned(sanitize(&url.replace(' ', "%20")).into_owned())
    } else {
        sanitize(url)
    }
}

/// Makes one call and logs its outcome.
fn call(agent: &Agent, method: Method, job: &Call, metrics: &Metrics) {
    let result = match method {
        Method::Get => agent.get(url_with_count(&job.url, job.count)).call(),
        Method::Post => agent
            .post(&job.url)
            .header("Content-Type", "application/json")
            .send(json_body(job.window_start, job.count)),
    };
    let window_start = rfc3339_secs(job.window_start);
    // Canonical when a client sent it, but in cluster mode it was read from Redis.
    let url = endpoint_token(&job.url);
    match result {
        Ok(mut response) => {
            let status = response.status().as_u16();
            // Read a little so the connection can return to the pool; ignore what it says.
            let _ = response
                .body_mut()
                .with_config()
                .limit(MAX_RESPONSE_BYTES)
                .read_to_vec();
            if (200..300).contains(&status) {
                metrics.endpoint_calls.success.fetch_add(1, Relaxed);
                log::info!(target: TARGET, "window_start={window_start} endpoint={url} status={status}");
            } else {
                metrics.endpoint_calls.http_error.fetch_add(1, Relaxed);
                log::warn!(target: TARGET, "window_start={window_start} endpoint={url} status={status}");
            }
        }
        Err(err) => {
            metrics.endpoint_calls.failed.fetch_add(1, Relaxed);
            log::warn!(
                target: TARGET,
                "window_start={window_start} endpoint={url} error={}",
                reason(&err)
            );
        }
    }
}

/// The callback reporter: queues one call per endpoint for its thread pool.
pub struct Callbacks {
    queue: Option<Sender<Call>>,
    done: Receiver<()>,
    threads: Vec<JoinHandle<()>>,
    pending: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
}

impl Callbacks {
    /// `queue_len` bounds the calls waiting for a thread (each a URL of at most 2 KiB).
    pub fn start(
        method: Method,
        timeout: Duration,
        policy: EndpointPolicy,
        queue_len: usize,
        metrics: Arc<Metrics>,
        health: &Health,
    ) -> std::io::Result<Self> {
        let agent = agent(timeout, policy);
        let (tx, rx) = bounded::<Call>(queue_len.max(1));
        let (done_tx, done) = bounded::<()>(CALL_THREADS);
        let pending = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::with_capacity(CALL_THREADS);
        for i in 0..CALL_THREADS {
            let (agent, rx, done_tx) = (agent.clone(), rx.clone(), done_tx.clone());
            let (pending, metrics) = (pending.clone(), metrics.clone());
            let guard = health.guard(format!("verve-callback-{i}"));
            threads.push(
                std::thread::Builder::new()
                    .name(format!("verve-callback-{i}"))
                    .spawn(move || {
                        let _guard = guard;
                        for job in rx {
                            call(&agent, method, &job, &metrics);
                            job.done(&metrics);
                            pending.fetch_sub(1, Relaxed);
                        }
                        let _ = done_tx.send(());
                    })?,
            );
        }
        Ok(Callbacks {
            queue: Some(tx),
            done,
            threads,
            pending,
            metrics,
        })
    }
}

impl Reporter for Callbacks {
    fn report(&mut self, report: &WindowReport) {
        let Some(queue) = &self.queue else { return };
        if report.endpoints.is_empty() {
            return;
        }
        if report.scope == Scope::Local {
            // Endpoints are promised the cluster's count; this instance's alone would be
            // wrong, so none is sent, and each endpoint says why.
            for url in &report.endpoints {
                self.metrics.endpoint_calls.dropped.fetch_add(1, Relaxed);
                log::warn!(
                    target: TARGET,
                    "window_start={} endpoint={} error=cluster-count-unavailable",
                    rfc3339_secs(report.window_start),
                    endpoint_token(url)
                );
            }
            return;
        }
        // The window is in the backlog until its last call is finished.
        self.metrics.backlog_windows.fetch_add(1, Relaxed);
        let window_left = Arc::new(AtomicU64::new(report.endpoints.len() as u64));
        for url in &report.endpoints {
            let job = Call {
                url: url.clone(),
                window_start: report.window_start,
                count: report.unique_count,
                window_left: window_left.clone(),
            };
            self.pending.fetch_add(1, Relaxed);
            if let Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) =
                queue.try_send(job)
            {
                self.pending.fetch_sub(1, Relaxed);
                job.done(&self.metrics);
                self.metrics.endpoint_calls.dropped.fetch_add(1, Relaxed);
                log::warn!(
                    target: TARGET,
                    "window_start={} endpoint={} error=queue-full",
                    rfc3339_secs(job.window_start),
                    endpoint_token(&job.url)
                );
            }
        }
    }

    /// Lets queued calls finish until `deadline`; what is left is logged and counted.
    fn finish(&mut self, deadline: Instant) {
        self.queue = None;
        let mut exited = 0;
        while exited < self.threads.len() {
            match self.done.recv_deadline(deadline) {
                Ok(()) => exited += 1,
                Err(_) => break,
            }
        }
        if exited == self.threads.len() {
            for t in self.threads.drain(..) {
                let _ = t.join();
            }
        } else {
            // The deadline may have passed before the threads saw the queue close (another
            // reporter used the budget): only calls still queued or running are news.
            let left = self.pending.load(Relaxed);
            if left > 0 {
                self.metrics.endpoint_calls.dropped.fetch_add(left, Relaxed);
                log::warn!(target: TARGET, "{left} endpoint calls not finished at exit");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_from_outside_is_shown_as_one_token_on_one_line() {
        assert_eq!(endpoint_token("http://h/p?a=1"), "http://h/p?a=1");
        assert_eq!(
            endpoint_token("http://h/x y\nINFO count unique_count=5"),
            "http://h/x%20y\\nINFO%20count%20unique_count%3D5"
        );
    }

    #[test]
    fn count_is_appended_as_a_query_parameter() {
        assert_eq!(url_with_count("http://h/p", 5), "http://h/p?count=5");
        assert_eq!(
            url_with_count("http://h/p?a=1", 5),
            "http://h/p?a=1&count=5"
        );
        assert_eq!(url_with_count("http://h/p?", 0), "http://h/p?count=0");
        assert_eq!(
            url_with_count("http://h/p?a=1&", 7),
            "http://h/p?a=1&count=7"
        );
    }

    #[test]
    fn post_body_is_the_contract_json() {
        assert_eq!(
            json_body(1_795_305_000, 1234),
            "{\"unique_count\": 1234, \"window_start\": \"2026-11-21T23:50:00Z\"}"
        );
    }

    #[test]
    fn a_window_leaves_the_backlog_when_its_last_call_is_done() {
        // A port nobody listens on: the call fails at once with "connection refused".
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let metrics = Arc::new(Metrics::new(1));
        let mut callbacks = Callbacks::start(
            Method::Get,
            Duration::from_secs(5),
            EndpointPolicy::default(),
            8,
            metrics.clone(),
            &Health::new(),
        )
        .unwrap();
        callbacks.report(&WindowReport {
            window_start: 60,
            unique_count: 1,
            endpoints: vec![
                format!("http://127.0.0.1:{port}/a"),
                format!("http://127.0.0.1:{port}/b"),
            ],
            scope: Scope::Global,
        });
        callbacks.report(&WindowReport {
            window_start: 120,
            unique_count: 0,
            endpoints: vec![],
            scope: Scope::Global,
        });
        callbacks.finish(Instant::now() + Duration::from_secs(30));
        assert_eq!(metrics.endpoint_calls.failed.load(Relaxed), 2);
        assert_eq!(metrics.backlog_windows.load(Relaxed), 0);
    }

    #[test]
    fn reasons_stay_on_one_line_and_one_token() {
        let err = ureq::Error::BadUri("a b\nc".into());
        let r = reason(&err);
        assert!(!r.contains(' ') && !r.contains('\n'), "{r}");
        assert_eq!(reason(&ureq::Error::HostNotFound), "host-not-found");
    }
}
