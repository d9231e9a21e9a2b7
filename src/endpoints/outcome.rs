//! What became of a call to an endpoint, as the log says it: the result of a call that was
//! made ([`CallResult`]), the reason one was not ([`NotMade`]), and the one line that says
//! either ([`EndpointLine`]). Each reason's `as_str()` is its `error=` token, which operators
//! match on: a reason is never renamed.

use std::borrow::Cow;
use std::fmt;

use crate::logging::token;

/// The log target of endpoint lines.
pub const TARGET: &str = "endpoint";

/// How a call that was made ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallResult {
    /// An HTTP answer with this status (`status=N`).
    Status(u16),
    /// No HTTP answer (`error=<reason>`).
    Failed(CallError),
}

/// Why a call got no HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// `--endpoint-timeout` passed, or the connect timeout on every address.
    Timeout,
    /// The name does not resolve.
    HostNotFound,
    /// No address of the host accepted a connection.
    ConnectionFailed,
    /// The host refused the connection.
    ConnectionRefused,
    /// Every address of the host is in a refused range.
    DeniedAddress,
    /// Anything else: the HTTP library's own words, made one token by [`token`].
    Other(String),
}

impl CallError {
    /// Every named reason ([`CallError::Other`] holds outside text, not a name).
    pub const NAMED: [CallError; 5] = [
        CallError::Timeout,
        CallError::HostNotFound,
        CallError::ConnectionFailed,
        CallError::ConnectionRefused,
        CallError::DeniedAddress,
    ];

    /// An error the HTTP library describes as `text`: its words as one token.
    pub fn other(text: &str) -> CallError {
        CallError::Other(token(text).into_owned())
    }

    /// The `error=` token.
    pub fn as_str(&self) -> &str {
        match self {
            CallError::Timeout => "timeout",
            CallError::HostNotFound => "host-not-found",
            CallError::ConnectionFailed => "connection-failed",
            CallError::ConnectionRefused => "connection-refused",
            CallError::DeniedAddress => "denied-address",
            CallError::Other(text) => text,
        }
    }
}

/// Why a call was not made, or not made now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotMade {
    /// More calls were waiting than the queue holds.
    QueueFull,
    /// Still waiting one interval after its window was reported, its host's calls all busy.
    HostBusy,
    /// Still waiting one interval after its window was reported, every call thread busy.
    ThreadsBusy,
    /// The dispatcher thread was gone (a bug; the process is restarted).
    DispatcherGone,
    /// Shutdown came before the call started.
    NotSentAtExit,
    /// Shutdown came while the call ran.
    UnfinishedAtExit,
    /// Shutdown came first, and `--state-file` keeps the call for after the restart.
    DeferredToRestart,
    /// Cluster mode: the window was reported with this instance's count alone, and an
    /// endpoint is promised the cluster's.
    ClusterCountUnavailable,
    /// An endpoint of a state file that the policy no longer allows.
    NotAllowedAfterRestart,
    /// An endpoint read from Redis longer than a client may send.
    TooLong,
    /// An endpoint read from Redis that is not UTF-8.
    NotUtf8,
    /// An endpoint read from Redis holding `unique_count=`.
    CountToken,
    /// An endpoint read from Redis that a client's request could not have named.
    RefusedByPolicy,
}

impl NotMade {
    /// Every reason, in declaration order.
    pub const ALL: [NotMade; 13] = [
        NotMade::QueueFull,
        NotMade::HostBusy,
        NotMade::ThreadsBusy,
        NotMade::DispatcherGone,
        NotMade::NotSentAtExit,
        NotMade::UnfinishedAtExit,
        NotMade::DeferredToRestart,
        NotMade::ClusterCountUnavailable,
        NotMade::NotAllowedAfterRestart,
        NotMade::TooLong,
        NotMade::NotUtf8,
        NotMade::CountToken,
        NotMade::RefusedByPolicy,
    ];

    /// The `error=` token.
    pub fn as_str(self) -> &'static str {
        match self {
            NotMade::QueueFull => "queue-full",
            NotMade::HostBusy => "host-busy",
            NotMade::ThreadsBusy => "threads-busy",
            NotMade::DispatcherGone => "dispatcher-gone",
            NotMade::NotSentAtExit => "not-sent-at-exit",
            NotMade::UnfinishedAtExit => "unfinished-at-exit",
            NotMade::DeferredToRestart => "deferred-to-restart",
            NotMade::ClusterCountUnavailable => "cluster-count-unavailable",
            NotMade::NotAllowedAfterRestart => "not-allowed-after-restart",
            NotMade::TooLong => "too-long",
            NotMade::NotUtf8 => "not-utf8",
            NotMade::CountToken => "count-token",
            NotMade::RefusedByPolicy => "refused-by-policy",
        }
    }
}

/// How an endpoint line ends.
#[derive(Debug, Clone, Copy)]
pub enum LineEnd<'a> {
    Called(&'a CallResult),
    NotMade(NotMade),
}

/// One endpoint line of the log (after its time, level and target):
/// `window_start=<RFC 3339> endpoint=<endpoint> status=<N>`, or `... error=<reason>`. The
/// endpoint is shown by [`token`], so one from a request, a state file or Redis looks the
/// same, and a canonical one as it is. Every endpoint line is written by [`EndpointLine::log`].
#[derive(Debug, Clone, Copy)]
pub struct EndpointLine<'a> {
    /// The window, as the count line shows it.
    pub window_start: &'a str,
    /// As read: a canonical URL, or bytes from outside.
    pub endpoint: &'a [u8],
    pub end: LineEnd<'a>,
}

impl<'a> EndpointLine<'a> {
    /// The line of a call made to `endpoint`.
    pub fn called(window_start: &'a str, endpoint: &'a str, result: &'a CallResult) -> Self {
        EndpointLine {
            window_start,
            endpoint: endpoint.as_bytes(),
            end: LineEnd::Called(result),
        }
    }

    /// The line of a call to `endpoint` not made.
    pub fn not_made<E: AsRef<[u8]> + ?Sized>(
        window_start: &'a str,
        endpoint: &'a E,
        reason: NotMade,
    ) -> Self {
        EndpointLine {
            window_start,
            endpoint: endpoint.as_ref(),
            end: LineEnd::NotMade(reason),
        }
    }

    /// The endpoint as the line shows it.
    pub fn endpoint(&self) -> Cow<'a, str> {
        token(self.endpoint)
    }

    /// Writes the line: at INFO for a 2xx answer, at WARN for anything else.
    pub fn log(&self) {
        let level = match self.end {
            LineEnd::Called(CallResult::Status(200..=299)) => log::Level::Info,
            _ => log::Level::Warn,
        };
        log::log!(target: TARGET, level, "{self}");
    }
}

impl fmt::Display for EndpointLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "window_start={} endpoint={} ",
            self.window_start,
            self.endpoint()
        )?;
        match self.end {
            LineEnd::Called(CallResult::Status(status)) => write!(f, "status={status}"),
            LineEnd::Called(CallResult::Failed(error)) => write!(f, "error={}", error.as_str()),
            LineEnd::NotMade(reason) => write!(f, "error={}", reason.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoints::{canonicalize, EndpointPolicy};

    const START: &str = "2026-11-21T23:50:00Z";

    #[test]
    fn the_line_says_the_status_or_the_reason() {
        let ok = CallResult::Status(200);
        assert_eq!(
            EndpointLine::called(START, "http://h/p?a=1", &ok).to_string(),
            "window_start=2026-11-21T23:50:00Z endpoint=http://h/p?a=1 status=200"
        );
        let timeout = CallResult::Failed(CallError::Timeout);
        assert_eq!(
            EndpointLine::called(START, "http://h/", &timeout).to_string(),
            "window_start=2026-11-21T23:50:00Z endpoint=http://h/ error=timeout"
        );
        assert_eq!(
            EndpointLine::not_made(START, "http://h/", NotMade::HostBusy).to_string(),
            "window_start=2026-11-21T23:50:00Z endpoint=http://h/ error=host-busy"
        );
    }

    #[test]
    fn an_endpoint_is_shown_the_same_from_a_request_a_state_file_and_redis() {
        // From a request: canonical, shown as it is.
        let policy = EndpointPolicy::default();
        let url = canonicalize("HTTP://Hooks.Example.com:80/a?b=1", &policy).unwrap();
        let request = EndpointLine::not_made(START, url.as_str(), NotMade::QueueFull);
        assert_eq!(request.endpoint(), "http://hooks.example.com/a?b=1");
        // The same text from a state file (a string) and from Redis (bytes) reads the same.
        for text in [
            "http://hooks.example.com/a?b=1",
            "http://a.test/x y\nINFO count window_start=x unique_count=9",
            "http://a.test/\u{2028}\t\u{a0}",
        ] {
            let state_file = EndpointLine::not_made(START, text, NotMade::NotAllowedAfterRestart);
            let redis = EndpointLine::not_made(START, text.as_bytes(), NotMade::RefusedByPolicy);
            assert_eq!(state_file.endpoint(), redis.endpoint(), "{text:?}");
        }
        let forged = "http://a.test/x y\nINFO count window_start=x unique_count=9";
        assert_eq!(
            EndpointLine::not_made(START, forged, NotMade::NotAllowedAfterRestart).to_string(),
            "window_start=2026-11-21T23:50:00Z endpoint=http://a.test/x%20y\\nINFO%20count\
             %20window_start=x%20unique_count%3D9 error=not-allowed-after-restart"
        );
        // Only Redis can hand over bytes that are not UTF-8.
        let line =
            EndpointLine::not_made(START, b"http://a.test/\xff".as_slice(), NotMade::NotUtf8);
        assert_eq!(line.endpoint(), "http://a.test/\\xFF");
    }

    #[test]
    fn every_reason_is_listed_once() {
        for (i, reason) in NotMade::ALL.into_iter().enumerate() {
            // Exhaustive: a new reason does not compile until it is given a place here; give
            // it the next one and put it in `ALL` at that place (the documentation test
            // below reads `ALL`).
            let place = match reason {
                NotMade::QueueFull => 0,
                NotMade::HostBusy => 1,
                NotMade::ThreadsBusy => 2,
                NotMade::DispatcherGone => 3,
                NotMade::NotSentAtExit => 4,
                NotMade::UnfinishedAtExit => 5,
                NotMade::DeferredToRestart => 6,
                NotMade::ClusterCountUnavailable => 7,
                NotMade::NotAllowedAfterRestart => 8,
                NotMade::TooLong => 9,
                NotMade::NotUtf8 => 10,
                NotMade::CountToken => 11,
                NotMade::RefusedByPolicy => 12,
            };
            assert_eq!(place, i, "{reason:?}");
        }
        for (i, error) in CallError::NAMED.iter().enumerate() {
            let place = match error {
                CallError::Timeout => 0,
                CallError::HostNotFound => 1,
                CallError::ConnectionFailed => 2,
                CallError::ConnectionRefused => 3,
                CallError::DeniedAddress => 4,
                CallError::Other(_) => usize::MAX,
            };
            assert_eq!(place, i, "{error:?}");
        }
    }

    /// README.md and every `docs/*.md`, concatenated.
    fn documentation() -> String {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut text = std::fs::read_to_string(root.join("README.md")).unwrap();
        if let Ok(dir) = std::fs::read_dir(root.join("docs")) {
            for entry in dir {
                let path = entry.unwrap().path();
                if path.extension().is_some_and(|e| e == "md") {
                    text.push_str(&std::fs::read_to_string(&path).unwrap());
                }
            }
        }
        text
    }

    #[test]
    fn every_reason_the_log_can_give_is_documented() {
        let docs = documentation();
        let named = NotMade::ALL
            .iter()
            .map(|r| r.as_str())
            .chain(CallError::NAMED.iter().map(CallError::as_str));
        // Named as a token (`` `host-busy` ``) or as it is logged (`error=host-busy`).
        let missing: Vec<&str> = named
            .filter(|r| !docs.contains(&format!("`{r}`")) && !docs.contains(&format!("error={r}")))
            .collect();
        assert!(
            missing.is_empty(),
            "not in README.md or docs/*.md: {missing:?}"
        );
    }
}
