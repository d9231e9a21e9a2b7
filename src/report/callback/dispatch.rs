//! The dispatcher thread: the calls that wait, one queue per host, handed to the call threads
//! round-robin over hosts, at most `--endpoint-host-calls` of one host at once; calls that
//! cannot start within their window's patience are dropped, each with its line.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, unbounded, Receiver, Sender};
use ureq::Agent;

use super::client::attempt;
use super::{Settings, TARGET};
use crate::clock::rfc3339_secs;
use crate::endpoints::{CallError, CallResult, EndpointLine, NotMade};
use crate::health::Health;
use crate::metrics::{EndpointCalls, Metrics};
use crate::state::journal::Record;
use crate::state::writer::JournalSender;

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

/// How many call threads may run: enough that a window of `max_endpoints` calls that all
/// take the whole `timeout` is done within one `interval`
/// (`ceil(max_endpoints * timeout / interval)`), within
/// [`MIN_CALL_THREADS`]..=[`MAX_CALL_THREADS`].
pub fn call_threads(max_endpoints: usize, timeout: Duration, interval: Duration) -> usize {
    let work = max_endpoints as f64 * timeout.as_secs_f64();
    let needed = (work / interval.as_secs_f64().max(0.001)).ceil() as usize;
    needed.clamp(MIN_CALL_THREADS, MAX_CALL_THREADS)
}

/// One call to make.
#[derive(Debug)]
pub(super) struct Call {
    pub(super) url: String,
    /// What the per-host limit counts: the URL's host (name or literal, no port).
    pub(super) host: Arc<str>,
    pub(super) window_start: u64,
    pub(super) count: u64,
    /// Not started by then: dropped and logged.
    pub(super) start_by: Instant,
    /// Calls of this window not settled yet: the last one takes the window off
    /// `verve_backlog_windows`.
    pub(super) window_left: Arc<AtomicU64>,
    /// Set by whoever settles the call first (its thread with the outcome, or shutdown
    /// giving up on it), so that each call has exactly one log line and one count.
    pub(super) settled: Arc<AtomicBool>,
    /// `--state-file`: told when the call is settled, so that a restart does not make it
    /// again; a call the process stops before settling is made after the restart.
    pub(super) journal: Option<JournalSender>,
}

impl Call {
    /// Logs and counts the result, unless the call was already settled. Returns false
    /// when it was.
    fn settle(&self, metrics: &Metrics, result: &CallResult) -> bool {
        if self.settled.swap(true, Relaxed) {
            return false;
        }
        counter(&metrics.endpoint_calls, result).fetch_add(1, Relaxed);
        let window_start = rfc3339_secs(self.window_start);
        EndpointLine::called(&window_start, &self.url, result).log();
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
    pub(super) fn drop_unmade(&self, metrics: &Metrics, reason: NotMade) {
        if self.settled.swap(true, Relaxed) {
            return;
        }
        metrics.endpoint_calls.dropped.fetch_add(1, Relaxed);
        self.log_unmade(reason);
        self.journal_settled();
        self.release(metrics);
    }

    /// The process stops before the call is made (or before it finished): with a state
    /// file it is kept there and made after the restart, logged `error=deferred-to-restart`
    /// and not counted as dropped; without one it is dropped with `reason`.
    pub(super) fn stop_unmade(&self, metrics: &Metrics, reason: NotMade) {
        if self.journal.is_none() {
            return self.drop_unmade(metrics, reason);
        }
        if self.settled.swap(true, Relaxed) {
            return;
        }
        self.log_unmade(NotMade::DeferredToRestart);
        self.release(metrics);
    }

    fn log_unmade(&self, reason: NotMade) {
        let window_start = rfc3339_secs(self.window_start);
        EndpointLine::not_made(&window_start, &self.url, reason).log();
    }
}

/// The `verve_endpoint_calls_total` counter of a call's result.
fn counter<'m>(calls: &'m EndpointCalls, result: &CallResult) -> &'m AtomicU64 {
    match result {
        CallResult::Status(200..=299) => &calls.success,
        CallResult::Status(_) => &calls.http_error,
        CallResult::Failed(CallError::DeniedAddress) => &calls.denied,
        CallResult::Failed(_) => &calls.failed,
    }
}

/// What the collector side sends the dispatcher.
pub(super) enum Command {
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
pub(super) struct Dispatcher {
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
    /// Starts the dispatcher thread with `agent` for the calls; it ends when the returned
    /// sender is dropped or after a [`Command::Finish`]. Its death (a bug) fails `health`, so
    /// the process exits and is restarted rather than dropping every later call.
    pub(super) fn start(
        settings: Settings,
        agent: Agent,
        metrics: Arc<Metrics>,
        health: &Health,
    ) -> std::io::Result<(Sender<Command>, JoinHandle<()>)> {
        let (commands, command_rx) = unbounded();
        let (work_tx, work_rx) = unbounded();
        let (done_tx, done_rx) = unbounded();
        let dispatcher = Dispatcher {
            settings: Settings {
                host_calls: settings.host_calls.max(1),
                threads: settings.threads.max(1),
                ..settings
            },
            agent,
            metrics,
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
        let handle = std::thread::Builder::new()
            .name("verve-callbacks".into())
            .spawn(move || {
                let _guard = guard;
                dispatcher.run(command_rx, done_rx)
            })?;
        Ok((commands, handle))
    }
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
                call.drop_unmade(&self.metrics, NotMade::QueueFull);
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
                    let result = attempt(&agent, method, &call.url, call.window_start, call.count);
                    call.settle(&metrics, &result);
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
                    NotMade::HostBusy
                } else {
                    NotMade::ThreadsBusy
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
                call.stop_unmade(&self.metrics, NotMade::NotSentAtExit);
            }
        }
        self.waiting = 0;
        for call in self.running.values() {
            call.stop_unmade(&self.metrics, NotMade::UnfinishedAtExit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_result_is_counted_once_under_its_label() {
        let calls = EndpointCalls::default();
        for result in [
            CallResult::Status(200),
            CallResult::Status(204),
            CallResult::Status(302),
            CallResult::Failed(CallError::DeniedAddress),
            CallResult::Failed(CallError::Timeout),
            CallResult::Failed(CallError::other("tls")),
        ] {
            counter(&calls, &result).fetch_add(1, Relaxed);
        }
        let n = |c: &AtomicU64| c.load(Relaxed);
        assert_eq!(n(&calls.success), 2);
        assert_eq!(n(&calls.http_error), 1);
        assert_eq!(n(&calls.denied), 1);
        assert_eq!(n(&calls.failed), 2);
        assert_eq!(n(&calls.dropped) + n(&calls.refused), 0);
    }

    #[test]
    fn enough_threads_for_a_window_of_timeouts_within_bounds() {
        let secs = Duration::from_secs;
        // 1000 endpoints x 2 s in 60 s: 34 calls at once.
        assert_eq!(call_threads(1000, secs(2), secs(60)), 34);
        assert_eq!(call_threads(10, secs(2), secs(60)), MIN_CALL_THREADS);
        assert_eq!(call_threads(1000, secs(2), secs(1)), MAX_CALL_THREADS);
    }
}
