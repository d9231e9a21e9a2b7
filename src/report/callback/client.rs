//! One call: GET with the count or POST the JSON body, through a ureq `Agent` that is bounded
//! (`--endpoint-timeout`, a connect timeout, no redirects, at most [`MAX_RESPONSE_BYTES`] read)
//! and whose resolver drops every address the policy refuses ([`GuardedResolver`]).

use std::time::Duration;

use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};
use ureq::Agent;

use super::Method;
use crate::clock::rfc3339_secs;
use crate::endpoints::EndpointPolicy;
use crate::endpoints::{CallError, CallResult};

/// Longest wait for a TCP connection. A reachable host accepts within one round trip (well
/// under a second anywhere on Earth); one that drops SYNs would otherwise keep the thread for
/// the whole `--endpoint-timeout`.
pub const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Response bytes read (and discarded) so the pooled connection can be reused; past this
/// the connection is dropped instead.
pub const MAX_RESPONSE_BYTES: u64 = 16 * 1024;

/// The connect timeout for calls bounded by `timeout`: half of it, at most
/// [`MAX_CONNECT_TIMEOUT`], so a host that does not accept leaves time to try its next
/// address.
pub fn connect_timeout(timeout: Duration) -> Duration {
    (timeout / 2).min(MAX_CONNECT_TIMEOUT)
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
/// policy refuses. When nothing is left the call fails with [`CallError::DeniedAddress`].
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
                CallError::DeniedAddress.as_str(),
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

/// Why a call got no answer, from ureq's error.
fn call_error(err: &ureq::Error) -> CallError {
    match err {
        ureq::Error::Timeout(_) => CallError::Timeout,
        ureq::Error::HostNotFound => CallError::HostNotFound,
        ureq::Error::ConnectionFailed => CallError::ConnectionFailed,
        ureq::Error::Io(e) => match e.kind() {
            // What `GuardedResolver` says when it leaves no address.
            std::io::ErrorKind::PermissionDenied => CallError::DeniedAddress,
            std::io::ErrorKind::ConnectionRefused => CallError::ConnectionRefused,
            std::io::ErrorKind::TimedOut => CallError::Timeout,
            _ => CallError::other(&err.to_string()),
        },
        // What ureq quotes (a host's answer, a TLS library's words) is outside text.
        other => CallError::other(&other.to_string()),
    }
}

/// Makes one call: GET `url` with the count, or POST the JSON body to it.
pub fn attempt(
    agent: &Agent,
    method: Method,
    url: &str,
    window_start: u64,
    count: u64,
) -> CallResult {
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
            CallResult::Status(response.status().as_u16())
        }
        Err(err) => CallResult::Failed(call_error(&err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::callback::test_support::{responder, stop, FixedResolver};
    use std::net::SocketAddr;

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
                CallResult::Failed(CallError::DeniedAddress),
                "{entries:?}"
            );
        }
        // An address entry that covers it lets the call through.
        let policy = EndpointPolicy::new(&["127.0.0.0/8"]).unwrap();
        let agent = agent_with_resolver(timeout, policy, resolver());
        assert_eq!(
            attempt(&agent, Method::Get, &url, 0, 1),
            CallResult::Status(200)
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
            CallResult::Status(200)
        );
        stop(addr);
        assert_eq!(served.join().unwrap(), 2);
    }

    #[test]
    fn reasons_stay_on_one_line_and_one_token() {
        let err = ureq::Error::BadUri("a b\nc".into());
        let r = call_error(&err);
        assert!(!r.as_str().contains([' ', '\n']), "{r:?}");
        assert_eq!(
            call_error(&ureq::Error::HostNotFound).as_str(),
            "host-not-found"
        );
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(
            call_error(&ureq::Error::Io(refused)),
            CallError::ConnectionRefused
        );
    }
}
