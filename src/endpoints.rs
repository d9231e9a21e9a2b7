//! Callback endpoints: which URLs verve agrees to call (scheme, host allow-list, no
//! link-local targets), and the bounded per-window table of distinct endpoints that the
//! collector drains when the window closes.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::sync::Mutex;

use url::{Host, Url};

use crate::query::QueryError;

/// One `--endpoint-allow` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    /// A host name (lower case) or an IP address literal.
    Exact(String),
    /// `*.example.com`, kept as `.example.com`: any subdomain, not the apex.
    Subdomains(String),
}

/// What may be called. Without an allow-list any host is allowed except link-local addresses
/// (169.254.0.0/16, fe80::/10: cloud metadata services live there), which are called only
/// when listed explicitly.
#[derive(Debug, Clone, Default)]
pub struct EndpointPolicy {
    allow: Vec<HostPattern>,
}

impl EndpointPolicy {
    /// Parses `--endpoint-allow` entries (`host`, `*.domain`, an IPv4 or IPv6 literal).
    pub fn new<S: AsRef<str>>(entries: &[S]) -> Result<Self, String> {
        let mut allow = Vec::new();
        for entry in entries {
            let entry = entry.as_ref().trim();
            if entry.is_empty() {
                continue;
            }
            let lower = entry.to_ascii_lowercase();
            let pattern = if let Some(domain) = lower.strip_prefix("*.") {
                if domain.is_empty() || domain.contains('*') {
                    return Err(format!("bad host pattern {entry:?}"));
                }
                HostPattern::Subdomains(format!(".{domain}"))
            } else {
                let bare = lower.trim_start_matches('[').trim_end_matches(']');
                if bare.contains(['*', '/', ' ']) {
                    return Err(format!("bad host {entry:?}"));
                }
                match bare.parse::<IpAddr>() {
                    Ok(ip) => HostPattern::Exact(ip.to_string()),
                    Err(_) => HostPattern::Exact(bare.trim_end_matches('.').to_string()),
                }
            };
            allow.push(pattern);
        }
        Ok(Self { allow })
    }

    pub fn has_allow_list(&self) -> bool {
        !self.allow.is_empty()
    }

    /// True when `host` (as `url` prints it, IPv6 without brackets) is on the allow-list.
    pub fn listed(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.');
        self.allow.iter().any(|p| match p {
            HostPattern::Exact(h) => h == host,
            HostPattern::Subdomains(suffix) => {
                host.len() > suffix.len() && host.ends_with(suffix.as_str())
            }
        })
    }

    /// The check made when a request names the endpoint: the host must be on the allow-list
    /// when there is one, and an address literal must not be link-local unless listed.
    /// Host names are checked again once resolved, at call time ([`Self::address_allowed`]).
    pub fn host_allowed(&self, host: &Host<&str>) -> bool {
        let (name, ip) = match host {
            Host::Domain(d) => (d.to_string(), None),
            Host::Ipv4(ip) => (ip.to_string(), Some(IpAddr::V4(*ip))),
            Host::Ipv6(ip) => (ip.to_string(), Some(IpAddr::V6(*ip))),
        };
        let listed = self.listed(&name);
        if self.has_allow_list() && !listed {
            return false;
        }
        !matches!(ip, Some(ip) if is_link_local(ip) && !listed)
    }

    /// The check made on every address a host name resolves to, just before connecting.
    pub fn address_allowed(&self, host: &str, ip: IpAddr) -> bool {
        !is_link_local(ip) || self.listed(host) || self.listed(&ip.to_string())
    }
}

/// 169.254.0.0/16 and fe80::/10, also when written as an IPv4-mapped IPv6 address.
pub fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.is_link_local(),
            None => (v6.segments()[0] & 0xffc0) == 0xfe80,
        },
    }
}

/// The token that marks count lines in the log.
const COUNT_TOKEN: &str = "unique_count=";

/// Parses a decoded endpoint into the URL that will be called: http or https, a host, no
/// fragment (never sent anyway), and allowed by `policy`.
pub fn canonicalize(decoded: &str, policy: &EndpointPolicy) -> Result<Url, QueryError> {
    let mut url = Url::parse(decoded).map_err(|_| QueryError::BadEndpoint)?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(QueryError::BadEndpoint);
    }
    match url.host() {
        Some(host) if policy.host_allowed(&host) => {}
        _ => return Err(QueryError::BadEndpoint),
    }
    url.set_fragment(None);
    // The URL is written to the count log; there it must not look like a count line
    // (contract §3: no other line contains `unique_count=`).
    if url.as_str().len() > crate::query::MAX_ENDPOINT_BYTES || url.as_str().contains(COUNT_TOKEN) {
        return Err(QueryError::BadEndpoint);
    }
    Ok(url)
}

/// Checks an endpoint read from somewhere untrusted (cluster mode: Redis, where another
/// program may have written it) exactly as a client's would be checked, and returns the URL
/// to call, or the reason it is refused: the `error=` token of its log line.
pub fn check_untrusted(bytes: &[u8], policy: &EndpointPolicy) -> Result<Url, &'static str> {
    if bytes.len() > crate::query::MAX_ENDPOINT_BYTES {
        return Err("too-long");
    }
    let text = std::str::from_utf8(bytes).map_err(|_| "not-utf8")?;
    if text.contains(COUNT_TOKEN) {
        return Err("count-token");
    }
    canonicalize(text, policy).map_err(|_| "refused-by-policy")
}

/// An untrusted endpoint as one log token that cannot break the log's format: at most
/// [`crate::query::MAX_ENDPOINT_BYTES`] of its bytes, with every byte that is not printable
/// ASCII, and every `=`, percent-encoded (so that no line but a count line holds
/// `unique_count=`).
pub fn sanitize_for_log(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(crate::query::MAX_ENDPOINT_BYTES)];
    let mut out = String::with_capacity(cut.len());
    for &b in cut {
        if b.is_ascii_graphic() && b != b'=' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if cut.len() < bytes.len() {
        out.push_str("...");
    }
    out
}

/// What admitting an endpoint to a window's table did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Added,
    Known,
    /// The window already holds `--max-endpoints` distinct endpoints.
    Full,
}

/// Distinct endpoints per window, at most `max` each. Shared by all workers but touched only
/// the first time a worker sees an endpoint in a window (each shard caches what it admitted),
/// so the request path does not take this lock in the common case.
#[derive(Debug)]
pub struct EndpointTable {
    max: usize,
    windows: Mutex<BTreeMap<u64, HashSet<String>>>,
}

impl EndpointTable {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            windows: Mutex::new(BTreeMap::new()),
        }
    }

    /// The most distinct endpoints per window.
    pub fn max(&self) -> usize {
        self.max
    }

    pub fn admit(&self, window: u64, url: &str) -> Admit {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let set = windows.entry(window).or_default();
        if set.contains(url) {
            Admit::Known
        } else if set.len() >= self.max {
            Admit::Full
        } else {
            set.insert(url.to_string());
            Admit::Added
        }
    }

    /// The endpoints of `window` so far (cluster mode ships them during the window).
    pub fn snapshot(&self, window: u64) -> Vec<String> {
        let windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        windows
            .get(&window)
            .map(|set| set.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Removes and returns the endpoints of `window`, sorted (so calls happen in a stable
    /// order), and forgets any older window that was somehow left behind.
    pub fn take(&self, window: u64) -> Vec<String> {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let mut taken: Vec<String> = windows.remove(&window).into_iter().flatten().collect();
        let stale: Vec<u64> = windows.range(..window).map(|(w, _)| *w).collect();
        for w in stale {
            taken.extend(windows.remove(&w).into_iter().flatten());
        }
        taken.sort();
        taken.dedup();
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(policy: &EndpointPolicy, url: &str) -> bool {
        canonicalize(url, policy).is_ok()
    }

    #[test]
    fn any_host_is_allowed_without_a_list_except_link_local() {
        let p = EndpointPolicy::default();
        assert!(allowed(&p, "http://example.com/hook"));
        assert!(allowed(&p, "https://127.0.0.1:8080/x?y=1"));
        assert!(allowed(&p, "http://[::1]:9/"));
        assert!(!allowed(&p, "http://169.254.169.254/latest/meta-data"));
        assert!(!allowed(&p, "http://169.254.0.1:80/"));
        assert!(!allowed(&p, "http://[fe80::1]/"));
        assert!(!allowed(&p, "http://[febf::1]/"));
        assert!(!allowed(&p, "http://[::ffff:169.254.169.254]/"));
        assert!(allowed(&p, "http://[fec0::1]/"));
        // The url crate normalises other spellings of an IPv4 address.
        assert!(!allowed(&p, "http://2852039166/"));
        assert!(!allowed(&p, "http://0xa9.0xfe.0xa9.0xfe/"));
    }

    #[test]
    fn link_local_is_allowed_when_listed() {
        let p = EndpointPolicy::new(&["169.254.169.254", "[fe80::1]"]).unwrap();
        assert!(allowed(&p, "http://169.254.169.254/"));
        assert!(allowed(&p, "http://[fe80::1]:8080/"));
        assert!(!allowed(&p, "http://169.254.0.1/"));
        assert!(p.address_allowed("169.254.169.254", "169.254.169.254".parse().unwrap()));
    }

    #[test]
    fn allow_list_restricts_hosts_and_wildcards_match_subdomains_only() {
        let p = EndpointPolicy::new(&["hooks.example.com", "*.corp.test", "10.0.0.5"]).unwrap();
        assert!(allowed(&p, "http://hooks.example.com/x"));
        assert!(allowed(&p, "https://HOOKS.Example.com./x"));
        assert!(allowed(&p, "http://a.corp.test/"));
        assert!(allowed(&p, "http://b.a.corp.test:81/"));
        assert!(allowed(&p, "http://10.0.0.5/"));
        assert!(!allowed(&p, "http://corp.test/"));
        assert!(!allowed(&p, "http://evilcorp.test/"));
        assert!(!allowed(&p, "http://example.com/"));
        assert!(!allowed(&p, "http://hooks.example.com.evil.org/"));
        assert!(!allowed(&p, "http://10.0.0.6/"));
    }

    #[test]
    fn bad_allow_entries_are_refused() {
        assert!(EndpointPolicy::new(&["*."]).is_err());
        assert!(EndpointPolicy::new(&["a*.b"]).is_err());
        assert!(EndpointPolicy::new(&["http://x/"]).is_err());
    }

    #[test]
    fn resolved_addresses_are_checked_too() {
        let p = EndpointPolicy::default();
        assert!(!p.address_allowed("rebind.example", "169.254.169.254".parse().unwrap()));
        assert!(!p.address_allowed("rebind.example", "fe80::2".parse().unwrap()));
        assert!(p.address_allowed("ok.example", "93.184.216.34".parse().unwrap()));
        let listed = EndpointPolicy::new(&["meta.internal"]).unwrap();
        assert!(listed.address_allowed("meta.internal", "169.254.169.254".parse().unwrap()));
    }

    #[test]
    fn only_http_and_https_with_a_host() {
        let p = EndpointPolicy::default();
        assert!(!allowed(&p, "ftp://example.com/"));
        assert!(!allowed(&p, "http://"));
        let url = canonicalize("HTTP://Example.COM:80/a?b=1#frag", &p).unwrap();
        assert!(!allowed(
            &p,
            "http://x.test/?window_start=2020-01-01T00:00:00Z&unique_count=9"
        ));
        assert!(!allowed(&p, "http://x.test/unique_count=9"));
        assert_eq!(url.as_str(), "http://example.com/a?b=1");
    }

    #[test]
    fn untrusted_endpoints_are_checked_like_a_clients_and_logged_harmlessly() {
        let p = EndpointPolicy::new(&["ok.test"]).unwrap();
        assert_eq!(
            check_untrusted(b"HTTP://OK.test/a#x", &p).unwrap().as_str(),
            "http://ok.test/a"
        );
        let long = format!(
            "http://ok.test/{}",
            "a".repeat(crate::query::MAX_ENDPOINT_BYTES)
        );
        for (bad, why) in [
            (long.as_bytes(), "too-long"),
            (b"http://ok.test/\xff".as_slice(), "not-utf8"),
            (b"http://ok.test:99999/", "refused-by-policy"),
            (b"http://ok.test/?unique_count=5", "count-token"),
            (b"http://other.test/", "refused-by-policy"),
            (b"ftp://ok.test/", "refused-by-policy"),
            (b"", "refused-by-policy"),
        ] {
            assert_eq!(check_untrusted(bad, &p).unwrap_err(), why, "{bad:?}");
        }
        assert_eq!(
            sanitize_for_log(b"http://x/?unique_count=5 a\n\xff"),
            "http://x/?unique_count%3D5%20a%0A%FF"
        );
        let logged = sanitize_for_log(long.as_bytes());
        assert!(
            logged.ends_with("...") && logged.len() < long.len() + 4,
            "{logged}"
        );
    }

    #[test]
    fn table_is_bounded_per_window_and_drained_by_take() {
        let t = EndpointTable::new(2);
        assert_eq!(t.admit(7, "http://a/"), Admit::Added);
        assert_eq!(t.admit(7, "http://a/"), Admit::Known);
        assert_eq!(t.admit(7, "http://b/"), Admit::Added);
        assert_eq!(t.admit(7, "http://c/"), Admit::Full);
        assert_eq!(t.admit(7, "http://a/"), Admit::Known);
        assert_eq!(t.admit(8, "http://c/"), Admit::Added);
        assert_eq!(
            t.take(7),
            vec!["http://a/".to_string(), "http://b/".to_string()]
        );
        assert!(t.take(7).is_empty());
        assert_eq!(t.take(8), vec!["http://c/".to_string()]);
    }
}
