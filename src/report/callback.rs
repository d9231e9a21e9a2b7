//! Endpoint callbacks: each distinct endpoint of a window is called once with the window's
//! final count, by plain threads sharing one pooled ureq `Agent`, so that a slow endpoint
//! delays neither the collector nor the next count line.
//!
//! **Fairness.** A dispatcher thread holds the calls that wait, one queue per host, and hands
//! them to the call threads round-robin over hosts, never more than `--endpoint-host-calls`
//! of one host at once. A host's waiting calls hold no thread, so a host that never answers
//! takes at most that many threads, and every other host's call goes out as soon as a thread
//! is free. The threads are started as needed, up to a number chosen so that even a window
//! whose every call times out is called within the next window ([`call_threads`]). A call
//! that has not started one interval after its window was reported is dropped, logged with
//! `error=host-busy` (or `threads-busy`) and counted in `verve_endpoint_calls_total{result="dropped"}`:
//! no call is ever dropped without its log line.
//!
//! **Bounds.** `--endpoint-timeout` for the whole call (DNS, connect, TLS, request, response),
//! a connect timeout of its own ([`connect_timeout`]), no redirects, at most
//! [`MAX_RESPONSE_BYTES`] of the response read. Host names are resolved by
//! [`GuardedResolver`], which drops every address the policy refuses (see
//! [`crate::endpoints`]), and ureq connects only to the addresses it returns, so a DNS answer
//! cannot point a call into the host's own network. Proxies from the environment are not
//! used, for the same reason.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, unbounded, Receiver, Sender};
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};
use ureq::Agent;

use crate::clock::rfc3339_secs;
use crate::endpoints::EndpointPolicy;
use crate::health::Health;
use crate::logging::sanitize;
use crate::metrics::Metrics;
use crate::report::{Reporter, Resumed, Scope, WindowReport};
use crate::state::journal::Record;
use crate::state::writer::JournalSender;

/// The log target of endpoint lines.
pub const TARGET: &str = "endpoint";

/// Fewest call threads allowed to start: calls that answer quickly need no more, and a few
/// slow hosts at `--endpoint-host-calls` each still leave room for the others.
pub const MIN_CALL_THREADS: usize = 16;

/// Most call threads. Each is a plain thread with a 2 MiB stack reservation (a few KiB
/// touched); past this the worst case below no longer fits in one window and calls that
/// cannot start in time are dropped and logged.
pub const MAX_CALL_THREADS: usize = 256;

/// Default of `--endpoint-host-calls`: calls in flight to one host at once. Four keeps a
/// webhook receiver that serves many endpoints busy (1000 calls of 50 ms take 12.5 s) while a
/// host that never answers holds four threads at most.
pub const DEFAULT_HOST_CALLS: u32 = 4;

/// Longest wait for a TCP connection. A reachable host accepts within one round trip (well
/// under a second anywhere on Earth); one that drops SYNs would otherwise keep the thread for
/// the whole `--endpoint-timeout`.
pub const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Response bytes read (and discarded) so the pooled connection can be reused; past this
/// the connection is dropped instead.
pub const MAX_RESPONSE_BYTES: u64 = 16 * 1024;

/// The `error=` token of a call refused because every address of its host is in a refused
/// range.
pub const DENIED: &str = "denied-address";

/// The `error=` reason of a call that the process stopped before making, kept in the state
/// file and made after the restart.
pub const DEFERRED: &str = "deferred-to-restart";

/// `--endpoint-method`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Method {
    /// `GET <url>?count=N` (or `&count=N` when the URL has a query).
    Get,
    /// `POST <url>` with `{"unique_count": N, "window_start": "..."}`.
    Post,
}

/// The connect timeout for calls bounded by `timeout`: half of it, at most
/// [`MAX_CONNECT_TIMEOUT`], so a host that does not accept leaves time to try its next
/// address.
pub fn connect_timeout(timeout: Duration) -> Duration {
    (timeout / 2).min(MAX_CONNECT_TIMEOUT)
}

/// How many call threads may run: enough that a window of `max_endpoints` calls that all
/// take the whole `timeout` is done within one `interval`
/// (`ceil(max_endpoints * timeout / interval)`), within
/// [`MIN_CALL_THREADS`]..=[`MAX_CALL_THREADS`].
pub fn call_threads(max_endpoints: usize, timeout: Duration, interval: Duration) -> usize {
    let work = max_endpoints as f64 * timeout.as_secs_f64();
    let needed = (work / interval.as_secs_f64().max(0.001)).ceil() as usize;
    needed.clamp(MIN_CALL_THREADS, MAX_CALL_THREADS)
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

/// Resolves with `inner` (ureq's own resolver in service), then removes the addresses the
/// policy refuses. When nothing is left the call fails with [`DENIED`].
#[derive(Debug)]
pub struct GuardedResolver<R = DefaultResolver> {
    inner: R,
    policy: EndpointPolicy,
}

impl<R: Resolver> Resolver for GuardedResolver<R> {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let resolved = self.inner.resolve(uri, config, timeout)?;
        let mut kept = self.empty();
        for addr in resolved.iter() {
            if self.policy.address_allowed(addr.ip()) {
                kept.push(*addr);
            }
        }
        if kept.is_empty() {
            return Err(ureq::Error::Io(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                DENIED,
            )));
        }
        Ok(kept)
    }
}

/// The agent every call uses, resolving with ureq's own resolver.
pub fn agent(timeout: Duration, policy: EndpointPolicy) -> Agent {
    agent_with_resolver(timeout, policy, DefaultResolver::default())
}

/// The agent with another name resolver under the guard (tests resolve names to loopback).
pub fn agent_with_resolver(
    timeout: Duration,
    policy: EndpointPolicy,
    resolver: impl Resolver,
) -> Agent {
    let config = Agent::config_builder()
        .timeout_global(Some(timeout))
        .timeout_connect(Some(connect_timeout(timeout)))
        .max_redirects(0)
        .http_status_as_error(false)
        .proxy(None)
        .user_agent(concat!("verve/", env!("CARGO_PKG_VERSION")))
        .build();
    Agent::with_parts(
        config,
        DefaultConnector::new(),
        GuardedResolver {
            inner: resolver,
            policy,
        },
    )
}

/// How one call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// An HTTP answer with this status.
    Status(u16),
    /// Every address of the host is in a refused range.
    Denied,
    /// No HTTP answer; the one-token reason.
    Failed(String),
}

/// A short, single-line reason for a failed call (the `error=` token).
fn reason(err: &ureq::Error) -> String {
    let text = match err {
        ureq::Error::Timeout(_) => "timeout".to_string(),
        ureq::Error::HostNotFound => "host-not-found".to_string(),
        ureq::Error::ConnectionFailed => "connection-failed".to_string(),
        ureq::Error::Io(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            DENIED.to_string()
        }
        ureq::Error::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            "connection-refused".to_string()
        }
        ureq::Error::Io(e) if e.kind() == std::io::ErrorKind::TimedOut => "timeout".to_string(),
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

/// Makes one call: GET `url` with the count, or POST the JSON body to it.
pub fn attempt(agent: &Agent, method: Method, url: &str, window_start: u64, count: u64) -> Outcome {
    let result = match method {
        Method::Get => agent.get(url_with_count(url, count)).call(),
        Method::Post => agent
            .post(url)
            .header("Content-Type", "application/json")
            .send(json_body(window_start, count)),
    };
    match result {
        Ok(mut response) => {
            // Read a little so the connection can return to the pool; ignore what it says.
            let _ = response
                .body_mut()
                .with_config()
                .limit(MAX_RESPONSE_BYTES)
                .read_to_vec();
            Outcome::Status(response.status().as_u16())
        }
        Err(err) => match reason(&err) {
            r if r == DENIED => Outcome::Denied,
            r => Outcome::Failed(r),
        },
    }
}

/// One call to make.
#[derive(Debug)]
struct Call {
    url: String,
    /// What the per-host limit counts: the URL's host (name or literal, no port).
    host: Arc<str>,
    window_start: u64,
    count: u64,
    /// Not started by then: dropped and logged.
    start_by: Instant,
    /// Calls of this window not settled yet: the last one takes the window off
    /// `verve_backlog_windows`.
    window_left: Arc<AtomicU64>,
    /// Set by whoever settles the call first (its thread with the outcome, or shutdown
    /// giving up on it), so that each call has exactly one log line and one count.
    settled: Arc<AtomicBool>,
    /// `--state-file`: told when the call is settled, so that a restart does not make it
    /// again; a call the process stops before settling is made after the restart.
    journal: Option<JournalSender>,
}

impl Call {
    /// Logs and counts the outcome, unless the call was already settled. Returns false
    /// when it was.
    fn settle(&self, metrics: &Metrics, outcome: &Outcome) -> bool {
        if self.settled.swap(true, Relaxed) {
            return false;
        }
        let window_start = rfc3339_secs(self.window_start);
        let url = &self.url;
        let calls = &metrics.endpoint_calls;
        match outcome {
            Outcome::Status(status @ 200..=299) => {
                calls.success.fetch_add(1, Relaxed);
                log::info!(target: TARGET, "window_start={window_start} endpoint={url} status={status}");
            }
            Outcome::Status(status) => {
                calls.http_error.fetch_add(1, Relaxed);
                log::warn!(target: TARGET, "window_start={window_start} endpoint={url} status={status}");
            }
            Outcome::Denied => {
                calls.denied.fetch_add(1, Relaxed);
                log::warn!(target: TARGET, "window_start={window_start} endpoint={url} error={DENIED}");
            }
            Outcome::Failed(reason) => {
                calls.failed.fetch_add(1, Relaxed);
                log::warn!(target: TARGET, "window_start={window_start} endpoint={url} error={reason}");
            }
        }
        self.journal_settled();
        self.release(metrics);
        true
    }

    /// Tells the state file that this call is done with (made, or dropped for good).
    fn journal_settled(&self) {
        if let Some(journal) = &self.journal {
            journal.record(Record::Called {
                window_start: self.window_start,
                url: self.url.clone(),
            });
        }
    }

    /// One call of the window fewer to settle: the last one takes it off the backlog.
    fn release(&self, metrics: &Metrics) {
        if self.window_left.fetch_sub(1, Relaxed) == 1 {
            metrics.backlog_windows.fetch_sub(1, Relaxed);
        }
    }

    /// Settles a call that was never made: `error=<reason>`, counted as dropped.
    fn drop_unmade(&self, metrics: &Metrics, reason: &str) {
        if self.settled.swap(true, Relaxed) {
            return;
        }
        metrics.endpoint_calls.dropped.fetch_add(1, Relaxed);
        log::warn!(
            target: TARGET,
            "window_start={} endpoint={} error={reason}",
            rfc3339_secs(self.window_start),
            self.url
        );
        self.journal_settled();
        self.release(metrics);
    }

    /// The process stops before the call is made (or before it finished): with a state
    /// file it is kept there and made after the restart, logged `error=deferred-to-restart`
    /// and not counted as dropped; without one it is dropped with `reason`.
    fn stop_unmade(&self, metrics: &Metrics, reason: &str) {
        if self.journal.is_none() {
            return self.drop_unmade(metrics, reason);
        }
        if self.settled.swap(true, Relaxed) {
            return;
        }
        log::warn!(
            target: TARGET,
            "window_start={} endpoint={} error={DEFERRED}",
            rfc3339_secs(self.window_start),
            self.url
        );
        self.release(metrics);
    }
}

/// How the callback reporter is set up.
#[derive(Debug, Clone)]
pub struct Settings {
    pub method: Method,
    /// `--endpoint-timeout`.
    pub timeout: Duration,
    pub policy: EndpointPolicy,
    /// Most calls waiting at once (each a URL of at most 2 KiB); past it, `queue-full`.
    pub queue_len: usize,
    /// `--endpoint-host-calls`.
    pub host_calls: usize,
    /// Most call threads (see [`call_threads`]).
    pub threads: usize,
    /// How long after its window is reported a call may wait to start: one interval, so
    /// that it happens within the window that follows.
    pub patience: Duration,
    /// `--state-file`: where settled calls are recorded.
    pub journal: Option<JournalSender>,
}

/// What the collector side sends the dispatcher.
enum Command {
    Calls(Vec<Call>),
    /// Shutdown: make what can be made until then, give up on the rest.
    Finish(Instant),
}

/// A host's waiting calls and how many of its calls are running.
#[derive(Default)]
struct HostQueue {
    waiting: VecDeque<Call>,
    running: usize,
    /// In the dispatcher's round-robin ring.
    ready: bool,
}

/// The dispatcher: per-host queues, the round-robin ring, the call threads.
struct Dispatcher {
    settings: Settings,
    agent: Agent,
    metrics: Arc<Metrics>,
    hosts: HashMap<Arc<str>, HostQueue>,
    /// Hosts with waiting calls and room under their limit, in the order they get a thread.
    ring: VecDeque<Arc<str>>,
    waiting: usize,
    /// Running calls by number, so that shutdown can settle the ones that do not finish.
    running: HashMap<u64, Arc<Call>>,
    next_id: u64,
    idle_threads: usize,
    threads: Vec<JoinHandle<()>>,
    /// A thread could not be started: said once.
    spawn_failed: bool,
    work_tx: Sender<(u64, Arc<Call>)>,
    work_rx: Receiver<(u64, Arc<Call>)>,
    done_tx: Sender<u64>,
    /// No call waits past this without being dropped: a lower bound of the waiting calls'
    /// `start_by`, so the dispatcher may wake early but never late.
    next_expiry: Option<Instant>,
}

impl Dispatcher {
    fn run(mut self, commands: Receiver<Command>, done_rx: Receiver<u64>) {
        let mut finish_by: Option<Instant> = None;
        loop {
            self.dispatch();
            if finish_by.is_some() && self.waiting == 0 && self.running.is_empty() {
                break;
            }
            let wake = match (self.next_expiry, finish_by) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let timeout = wake.map_or(Duration::from_secs(3600), |w| {
                w.saturating_duration_since(Instant::now())
            });
            select! {
                recv(commands) -> command => match command {
                    Ok(Command::Calls(calls)) => self.enqueue(calls),
                    Ok(Command::Finish(deadline)) => finish_by = Some(deadline),
                    // The reporter is gone without a finish: nothing more will come.
                    Err(_) => finish_by = finish_by.or(Some(Instant::now())),
                },
                recv(done_rx) -> id => {
                    if let Ok(id) = id {
                        self.finished(id);
                    }
                }
                default(timeout) => {}
            }
            let now = Instant::now();
            if self.next_expiry.is_some_and(|e| e <= now) {
                self.expire(now);
            }
            if finish_by.is_some_and(|f| f <= now) {
                self.abandon();
                break;
            }
        }
        // Dropping the work sender (with `self`) ends the idle threads.
    }

    fn enqueue(&mut self, calls: Vec<Call>) {
        for call in calls {
            if self.waiting >= self.settings.queue_len {
                call.drop_unmade(&self.metrics, "queue-full");
                continue;
            }
            self.next_expiry = Some(
                self.next_expiry
                    .map_or(call.start_by, |e| e.min(call.start_by)),
            );
            let host = call.host.clone();
            let queue = self.hosts.entry(host.clone()).or_default();
            queue.waiting.push_back(call);
            self.waiting += 1;
            if !queue.ready && queue.running < self.settings.host_calls {
                queue.ready = true;
                self.ring.push_back(host);
            }
        }
    }

    /// Hands waiting calls to threads, one host at a time round-robin, while threads are
    /// free or may be started.
    fn dispatch(&mut self) {
        while let Some(host) = self.ring.front().cloned() {
            if self.idle_threads == 0 && !self.start_thread() {
                return;
            }
            self.ring.pop_front();
            let limit = self.settings.host_calls;
            let Some(queue) = self.hosts.get_mut(&host) else {
                continue;
            };
            queue.ready = false;
            let Some(call) = queue.waiting.pop_front() else {
                continue;
            };
            queue.running += 1;
            if !queue.waiting.is_empty() && queue.running < limit {
                queue.ready = true;
                self.ring.push_back(host);
            }
            self.waiting -= 1;
            self.idle_threads -= 1;
            let id = self.next_id;
            self.next_id += 1;
            let call = Arc::new(call);
            self.running.insert(id, call.clone());
            // The dispatcher holds a receiver itself: this cannot fail.
            let _ = self.work_tx.send((id, call));
        }
    }

    /// Starts one more call thread if the limit allows. False when none could be started.
    fn start_thread(&mut self) -> bool {
        if self.threads.len() >= self.settings.threads {
            return false;
        }
        let (agent, work, done) = (
            self.agent.clone(),
            self.work_rx.clone(),
            self.done_tx.clone(),
        );
        let (method, metrics) = (self.settings.method, self.metrics.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("verve-callback-{}", self.threads.len()))
            .spawn(move || {
                for (id, call) in work {
                    let outcome = attempt(&agent, method, &call.url, call.window_start, call.count);
                    call.settle(&metrics, &outcome);
                    if done.send(id).is_err() {
                        return;
                    }
                }
            });
        match spawned {
            Ok(handle) => {
                self.threads.push(handle);
                self.idle_threads += 1;
                true
            }
            Err(e) => {
                if !self.spawn_failed {
                    self.spawn_failed = true;
                    log::warn!(
                        target: TARGET,
                        "cannot start callback thread {} ({e}); calls wait for the {} running",
                        self.threads.len() + 1,
                        self.threads.len()
                    );
                }
                false
            }
        }
    }

    /// A thread finished call `id`: the thread is free, its host has room again.
    fn finished(&mut self, id: u64) {
        self.idle_threads += 1;
        let Some(call) = self.running.remove(&id) else {
            return;
        };
        let host = &call.host;
        let limit = self.settings.host_calls;
        if let Some(queue) = self.hosts.get_mut(host) {
            queue.running -= 1;
            if queue.waiting.is_empty() && queue.running == 0 {
                self.hosts.remove(host);
            } else if !queue.ready && !queue.waiting.is_empty() && queue.running < limit {
                queue.ready = true;
                self.ring.push_back(host.clone());
            }
        }
    }

    /// Drops every waiting call whose time to start has passed.
    fn expire(&mut self, now: Instant) {
        let limit = self.settings.host_calls;
        let mut next: Option<Instant> = None;
        let mut emptied = Vec::new();
        for (host, queue) in self.hosts.iter_mut() {
            // Calls of one host wait in report order, so the oldest are at the front.
            while queue.waiting.front().is_some_and(|c| c.start_by <= now) {
                let call = queue.waiting.pop_front().expect("front exists");
                self.waiting -= 1;
                let reason = if queue.running >= limit {
                    "host-busy"
                } else {
                    "threads-busy"
                };
                call.drop_unmade(&self.metrics, reason);
            }
            if let Some(front) = queue.waiting.front() {
                next = Some(next.map_or(front.start_by, |n| n.min(front.start_by)));
            } else if queue.running == 0 {
                emptied.push(host.clone());
            }
        }
        for host in emptied {
            self.hosts.remove(&host);
        }
        self.next_expiry = next;
    }

    /// Shutdown ran out of time: every call still waiting or running is settled as not
    /// made, each with its line.
    fn abandon(&mut self) {
        for queue in self.hosts.values_mut() {
            for call in queue.waiting.drain(..) {
                call.stop_unmade(&self.metrics, "not-sent-at-exit");
            }
        }
        self.waiting = 0;
        for call in self.running.values() {
            call.stop_unmade(&self.metrics, "unfinished-at-exit");
        }
    }
}

/// The callback reporter: hands each window's calls to the dispatcher thread.
pub struct Callbacks {
    commands: Option<Sender<Command>>,
    dispatcher: Option<JoinHandle<()>>,
    patience: Duration,
    metrics: Arc<Metrics>,
    journal: Option<JournalSender>,
}

impl Callbacks {
    /// Starts the dispatcher; its death (a bug) fails `health`, so the process exits and is
    /// restarted rather than dropping every later call.
    pub fn start(
        settings: Settings,
        metrics: Arc<Metrics>,
        health: &Health,
    ) -> std::io::Result<Self> {
        let agent = agent(settings.timeout, settings.policy.clone());
        Self::start_with_agent(settings, agent, metrics, health)
    }

    /// [`Callbacks::start`] with a given agent (tests resolve names with their own resolver).
    pub fn start_with_agent(
        settings: Settings,
        agent: Agent,
        metrics: Arc<Metrics>,
        health: &Health,
    ) -> std::io::Result<Self> {
        let (commands, command_rx) = unbounded();
        let (work_tx, work_rx) = unbounded();
        let (done_tx, done_rx) = unbounded();
        let patience = settings.patience;
        let journal = settings.journal.clone();
        let dispatcher = Dispatcher {
            settings: Settings {
                host_calls: settings.host_calls.max(1),
                threads: settings.threads.max(1),
                ..settings
            },
            agent,
            metrics: metrics.clone(),
            hosts: HashMap::new(),
            ring: VecDeque::new(),
            waiting: 0,
            running: HashMap::new(),
            next_id: 0,
            idle_threads: 0,
            threads: Vec::new(),
            spawn_failed: false,
            work_tx,
            work_rx,
            done_tx,
            next_expiry: None,
        };
        let guard = health.guard("verve-callbacks");
        let dispatcher = std::thread::Builder::new()
            .name("verve-callbacks".into())
            .spawn(move || {
                let _guard = guard;
                dispatcher.run(command_rx, done_rx)
            })?;
        Ok(Callbacks {
            commands: Some(commands),
            dispatcher: Some(dispatcher),
            patience,
            metrics,
            journal,
        })
    }
}

/// The host part of a canonical endpoint, the key of the per-host limit.
fn host_of(url: &str) -> Arc<str> {
    let host = url::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_default();
    Arc::from(host)
}

impl Callbacks {
    /// Queues one call per endpoint of a window with its global count.
    fn call(&mut self, window_start: u64, count: u64, endpoints: &[String]) {
        let Some(commands) = &self.commands else {
            return;
        };
        if endpoints.is_empty() {
            return;
        }
        // The window is in the backlog until its last call is settled.
        self.metrics.backlog_windows.fetch_add(1, Relaxed);
        let window_left = Arc::new(AtomicU64::new(endpoints.len() as u64));
        let start_by = Instant::now() + self.patience;
        let calls: Vec<Call> = endpoints
            .iter()
            .map(|url| Call {
                url: url.clone(),
                host: host_of(url),
                window_start,
                count,
                start_by,
                window_left: window_left.clone(),
                settled: Arc::new(AtomicBool::new(false)),
                journal: self.journal.clone(),
            })
            .collect();
        if let Err(unsent) = commands.send(Command::Calls(calls)) {
            // The dispatcher is gone (it never ends before `finish`): say so for each call.
            if let Command::Calls(calls) = unsent.into_inner() {
                for call in calls {
                    call.drop_unmade(&self.metrics, "dispatcher-gone");
                }
            }
        }
    }
}

impl Reporter for Callbacks {
    fn report(&mut self, report: &WindowReport) {
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
        self.call(report.window_start, report.unique_count, &report.endpoints);
    }

    fn resume(&mut self, resumed: &Resumed) {
        self.call(
            resumed.window_start,
            resumed.unique_count,
            &resumed.endpoints,
        );
    }

    /// Lets calls go on until `deadline`; each one left is logged and counted as dropped.
    fn finish(&mut self, deadline: Instant) {
        if let Some(commands) = self.commands.take() {
            let _ = commands.send(Command::Finish(deadline));
        }
        if let Some(dispatcher) = self.dispatcher.take() {
            // The dispatcher gives up at the deadline by itself; it never blocks on a call.
            let _ = dispatcher.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener};

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
    fn post_body_is_the_documented_json() {
        assert_eq!(
            json_body(1_795_305_000, 1234),
            "{\"unique_count\": 1234, \"window_start\": \"2026-11-21T23:50:00Z\"}"
        );
    }

    #[test]
    fn connect_timeout_is_shorter_than_the_call_timeout() {
        assert_eq!(
            connect_timeout(Duration::from_secs(2)),
            Duration::from_secs(1)
        );
        assert_eq!(
            connect_timeout(Duration::from_secs(30)),
            MAX_CONNECT_TIMEOUT
        );
        assert_eq!(
            connect_timeout(Duration::from_millis(500)),
            Duration::from_millis(250)
        );
    }

    #[test]
    fn enough_threads_for_a_window_of_timeouts_within_bounds() {
        let secs = Duration::from_secs;
        // 1000 endpoints x 2 s in 60 s: 34 calls at once.
        assert_eq!(call_threads(1000, secs(2), secs(60)), 34);
        assert_eq!(call_threads(10, secs(2), secs(60)), MIN_CALL_THREADS);
        assert_eq!(call_threads(1000, secs(2), secs(1)), MAX_CALL_THREADS);
    }

    fn settings(policy: EndpointPolicy) -> Settings {
        Settings {
            method: Method::Get,
            timeout: Duration::from_secs(5),
            policy,
            queue_len: 8,
            host_calls: DEFAULT_HOST_CALLS as usize,
            threads: 4,
            patience: Duration::from_secs(60),
            journal: None,
        }
    }

    #[test]
    fn a_window_leaves_the_backlog_when_its_last_call_is_done() {
        // A port nobody listens on: the call fails at once with "connection refused".
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let metrics = Arc::new(Metrics::new(1));
        let policy = EndpointPolicy::new(&["127.0.0.1"]).unwrap();
        let mut callbacks =
            Callbacks::start(settings(policy), metrics.clone(), &Health::new()).unwrap();
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
        assert_eq!(metrics.endpoint_calls.dropped.load(Relaxed), 0);
        assert_eq!(metrics.backlog_windows.load(Relaxed), 0);
    }

    #[test]
    fn calls_past_the_queue_bound_are_dropped_and_counted() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let metrics = Arc::new(Metrics::new(1));
        let policy = EndpointPolicy::new(&["127.0.0.1"]).unwrap();
        let mut callbacks =
            Callbacks::start(settings(policy), metrics.clone(), &Health::new()).unwrap();
        callbacks.report(&WindowReport {
            window_start: 60,
            unique_count: 1,
            endpoints: (0..10)
                .map(|i| format!("http://127.0.0.1:{port}/{i}"))
                .collect(),
            scope: Scope::Global,
        });
        callbacks.finish(Instant::now() + Duration::from_secs(30));
        // A queue of 8: two of the ten are dropped on arrival, the eight others made.
        assert_eq!(metrics.endpoint_calls.dropped.load(Relaxed), 2);
        assert_eq!(metrics.endpoint_calls.failed.load(Relaxed), 8);
        assert_eq!(metrics.backlog_windows.load(Relaxed), 0);
    }

    /// Resolves every name to `addrs`, as a hostile or careless DNS server could.
    #[derive(Debug)]
    struct FixedResolver(Vec<SocketAddr>);

    impl Resolver for FixedResolver {
        fn resolve(
            &self,
            _uri: &ureq::http::Uri,
            _config: &ureq::config::Config,
            _timeout: NextTimeout,
        ) -> Result<ResolvedSocketAddrs, ureq::Error> {
            let mut out = self.empty();
            for a in &self.0 {
                out.push(*a);
            }
            Ok(out)
        }
    }

    /// A one-connection HTTP responder on loopback: answers 200 to the first request, and
    /// says how many connections it accepted.
    fn responder() -> (SocketAddr, std::thread::JoinHandle<usize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = std::thread::spawn(move || {
            let mut accepted = 0;
            listener.set_nonblocking(false).unwrap();
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { break };
                accepted += 1;
                let mut buf = [0u8; 4096];
                let n = stream.read(&mut buf).unwrap_or(0);
                if n == 0 || buf.starts_with(b"STOP") {
                    break;
                }
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                );
            }
            accepted
        });
        (addr, handle)
    }

    fn stop(addr: SocketAddr) {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(b"STOP").unwrap();
    }

    #[test]
    fn a_name_that_resolves_into_a_refused_range_is_not_called() {
        let (addr, served) = responder();
        let resolver = || FixedResolver(vec![addr]);
        let url = format!("http://rebind.example:{}/hook", addr.port());
        let timeout = Duration::from_secs(5);
        // No allow-list, and an allow-list naming the host: both refuse its loopback address.
        for entries in [&[][..], &["rebind.example"], &["*.example"]] {
            let policy = EndpointPolicy::new(entries).unwrap();
            let agent = agent_with_resolver(timeout, policy, resolver());
            assert_eq!(
                attempt(&agent, Method::Get, &url, 0, 1),
                Outcome::Denied,
                "{entries:?}"
            );
        }
        // An address entry that covers it lets the call through.
        let policy = EndpointPolicy::new(&["127.0.0.0/8"]).unwrap();
        let agent = agent_with_resolver(timeout, policy, resolver());
        assert_eq!(
            attempt(&agent, Method::Get, &url, 0, 1),
            Outcome::Status(200)
        );
        stop(addr);
        assert_eq!(
            served.join().unwrap(),
            2,
            "one call and the stop, nothing else"
        );
    }

    #[test]
    fn refused_addresses_are_removed_and_the_rest_is_called() {
        let (addr, served) = responder();
        let policy = EndpointPolicy::new(&["127.0.0.1"]).unwrap();
        // The name resolves to a link-local address first and to the responder second: the
        // link-local one is removed, never tried.
        let metadata: SocketAddr = format!("169.254.169.254:{}", addr.port()).parse().unwrap();
        let agent = agent_with_resolver(
            Duration::from_secs(5),
            policy,
            FixedResolver(vec![metadata, addr]),
        );
        let url = format!("http://mixed.example:{}/", addr.port());
        assert_eq!(
            attempt(&agent, Method::Get, &url, 0, 1),
            Outcome::Status(200)
        );
        stop(addr);
        assert_eq!(served.join().unwrap(), 2);
    }

    #[test]
    fn a_denied_call_is_logged_as_denied_and_counted() {
        let (addr, served) = responder();
        let metrics = Arc::new(Metrics::new(1));
        let s = settings(EndpointPolicy::default());
        let agent = agent_with_resolver(s.timeout, s.policy.clone(), FixedResolver(vec![addr]));
        let mut callbacks =
            Callbacks::start_with_agent(s, agent, metrics.clone(), &Health::new()).unwrap();
        callbacks.report(&WindowReport {
            window_start: 60,
            unique_count: 3,
            endpoints: vec![format!("http://internal.example:{}/", addr.port())],
            scope: Scope::Global,
        });
        callbacks.finish(Instant::now() + Duration::from_secs(30));
        assert_eq!(metrics.endpoint_calls.denied.load(Relaxed), 1);
        assert_eq!(metrics.endpoint_calls.success.load(Relaxed), 0);
        stop(addr);
        assert_eq!(
            served.join().unwrap(),
            1,
            "only the stop reached the responder"
        );
    }

    #[test]
    fn reasons_stay_on_one_line_and_one_token() {
        let err = ureq::Error::BadUri("a b\nc".into());
        let r = reason(&err);
        assert!(!r.contains(' ') && !r.contains('\n'), "{r}");
        assert_eq!(reason(&ureq::Error::HostNotFound), "host-not-found");
    }

    #[test]
    fn the_host_of_a_url_is_its_lower_case_host_without_the_port() {
        assert_eq!(&*host_of("http://a.example:81/x"), "a.example");
        assert_eq!(&*host_of("http://[::1]:81/x"), "[::1]");
        assert_eq!(&*host_of("http://10.0.0.1/"), "10.0.0.1");
    }
}
