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
//!
//! The parts: [`client`] makes one call (the HTTP side, the address guard, the bounds),
//! [`dispatch`] decides when each call is made (the per-host queues and the call threads), and
//! [`reporter`] turns each reported window into its calls. What a call's line says (its
//! result, or why it was not made) is typed in [`crate::endpoints::outcome`].

use std::time::Duration;

use crate::endpoints::EndpointPolicy;
use crate::state::writer::JournalSender;

pub mod client;
pub mod dispatch;
pub mod reporter;
#[cfg(test)]
mod test_support;

pub use client::{
    agent, agent_with_resolver, attempt, connect_timeout, json_body, url_with_count,
    GuardedResolver, MAX_CONNECT_TIMEOUT, MAX_RESPONSE_BYTES,
};
pub use dispatch::{call_threads, DEFAULT_HOST_CALLS, MAX_CALL_THREADS, MIN_CALL_THREADS};
pub use reporter::Callbacks;

pub use crate::endpoints::outcome::TARGET;

/// `--endpoint-method`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Method {
    /// `GET <url>?count=N` (or `&count=N` when the URL has a query).
    Get,
    /// `POST <url>` with `{"unique_count": N, "window_start": "..."}`.
    Post,
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
