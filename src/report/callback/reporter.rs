//! The callback [`Reporter`]: each reported window becomes one call per endpoint, handed to the
//! dispatcher; a window reported with this instance's count alone calls nobody.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use ureq::Agent;

use super::client::agent;
use super::dispatch::{Call, Command, Dispatcher};
use super::Settings;
use crate::clock::rfc3339_secs;
use crate::endpoints::{EndpointLine, NotMade};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::report::{Reporter, Resumed, Scope, WindowReport};
use crate::state::writer::JournalSender;

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
        let patience = settings.patience;
        let journal = settings.journal.clone();
        let (commands, dispatcher) = Dispatcher::start(settings, agent, metrics.clone(), health)?;
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
            // The dispatcher is gone (it never ends before `finish`, so the health check is
            // stopping the process): with a state file the calls are kept for the restart,
            // as at any stop; without one they are dropped, each said in the log.
            if let Command::Calls(calls) = unsent.into_inner() {
                for call in calls {
                    call.stop_unmade(&self.metrics, NotMade::DispatcherGone);
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
            let window_start = rfc3339_secs(report.window_start);
            for url in &report.endpoints {
                self.metrics.endpoint_calls.dropped.fetch_add(1, Relaxed);
                EndpointLine::not_made(&window_start, url, NotMade::ClusterCountUnavailable).log();
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
    use crate::endpoints::EndpointPolicy;
    use crate::report::callback::client::agent_with_resolver;
    use crate::report::callback::test_support::{
        responder, settings, stop, unused_port, FixedResolver,
    };

    /// Callbacks whose dispatcher is already gone (its channel has no receiver), with or
    /// without a state file.
    fn with_the_dispatcher_gone(
        metrics: &Arc<Metrics>,
        journal: Option<JournalSender>,
    ) -> Callbacks {
        let (commands, _) = crossbeam_channel::unbounded();
        Callbacks {
            commands: Some(commands),
            dispatcher: None,
            patience: Duration::from_secs(1),
            metrics: metrics.clone(),
            journal,
        }
    }

    #[test]
    fn calls_the_gone_dispatcher_cannot_take_are_kept_with_a_state_file_and_dropped_without() {
        let report = WindowReport {
            window_start: 60,
            unique_count: 1,
            endpoints: vec!["http://a.test/".into(), "http://b.test/".into()],
            scope: Scope::Global,
        };
        let metrics = Arc::new(Metrics::new(1));
        with_the_dispatcher_gone(&metrics, None).report(&report);
        assert_eq!(metrics.endpoint_calls.dropped.load(Relaxed), 2);
        assert_eq!(metrics.backlog_windows.load(Relaxed), 0);
        // With a state file they are kept for the restart: not dropped, off the backlog.
        let metrics = Arc::new(Metrics::new(1));
        let journal = crate::state::writer::Journal::stopped_for_test();
        with_the_dispatcher_gone(&metrics, Some(journal.sender())).report(&report);
        assert_eq!(metrics.endpoint_calls.dropped.load(Relaxed), 0);
        assert_eq!(metrics.backlog_windows.load(Relaxed), 0);
    }

    #[test]
    fn a_window_leaves_the_backlog_when_its_last_call_is_done() {
        let port = unused_port();
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
        let port = unused_port();
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
    fn the_host_of_a_url_is_its_lower_case_host_without_the_port() {
        assert_eq!(&*host_of("http://a.example:81/x"), "a.example");
        assert_eq!(&*host_of("http://[::1]:81/x"), "[::1]");
        assert_eq!(&*host_of("http://10.0.0.1/"), "10.0.0.1");
    }
}
