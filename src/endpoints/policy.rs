//! The endpoint policy: which URLs verve agrees to call (`--endpoint-allow` and the refused
//! ranges), the checks a client's endpoint passes ([`canonicalize`]), and the same checks for an
//! endpoint read from somewhere untrusted ([`check_untrusted`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use url::{Host, Url};

use super::net::{refused_range, strip_brackets, Net};
use super::outcome::NotMade;
use crate::query::QueryError;

/// One `--endpoint-allow` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    /// A host name, lower case (IDNA form), without a trailing dot.
    Name(String),
    /// `*.example.com`, kept as `.example.com`: any subdomain, not the apex.
    Subdomains(String),
    /// An IP literal (a /32 or /128) or a CIDR range.
    Net(Net),
}

/// What may be called: the allow-list (none: any public host) and, whatever it lists, no
/// address of the ranges of [`refused_range`] unless an address entry covers it.
#[derive(Debug, Clone, Default)]
pub struct EndpointPolicy {
    allow: Vec<Entry>,
}

impl EndpointPolicy {
    /// Parses `--endpoint-allow` entries: `host`, `*.domain`, an IPv4 or IPv6 literal, or a
    /// CIDR range (`10.0.0.0/8`, `fd00::/8`).
    pub fn new<S: AsRef<str>>(entries: &[S]) -> Result<Self, String> {
        let mut allow = Vec::new();
        for entry in entries {
            let entry = entry.as_ref().trim();
            if entry.is_empty() {
                continue;
            }
            let lower = entry.to_ascii_lowercase();
            let parsed = if let Some(domain) = lower.strip_prefix("*.") {
                match Host::parse(domain.trim_end_matches('.')) {
                    Ok(Host::Domain(d)) if !d.is_empty() && !d.contains(['*', '/']) => {
                        Entry::Subdomains(format!(".{d}"))
                    }
                    _ => return Err(format!("bad host pattern {entry:?}")),
                }
            } else if lower.contains('/') {
                Entry::Net(Net::parse_cidr(&lower)?)
            } else if lower.contains(':') {
                // Only an IPv6 literal has a colon (a port is not part of an entry).
                let ip: Ipv6Addr = strip_brackets(&lower)
                    .parse()
                    .map_err(|_| format!("bad host {entry:?}"))?;
                Entry::Net(Net::new(IpAddr::V6(ip), 128))
            } else {
                // Parsed as a URL host is, so that `127.1` or `0x7f.0.0.1` here means what it
                // means in an endpoint, and a Unicode name is compared in its IDNA form.
                match Host::parse(&lower) {
                    Ok(Host::Domain(d)) if !d.is_empty() && !d.contains(['*', '/']) => {
                        Entry::Name(d.trim_end_matches('.').to_string())
                    }
                    Ok(Host::Ipv4(ip)) => Entry::Net(Net::new(IpAddr::V4(ip), 32)),
                    Ok(Host::Ipv6(ip)) => Entry::Net(Net::new(IpAddr::V6(ip), 128)),
                    _ => return Err(format!("bad host {entry:?}")),
                }
            };
            allow.push(parsed);
        }
        Ok(Self { allow })
    }

    pub fn has_allow_list(&self) -> bool {
        !self.allow.is_empty()
    }

    /// True when the host name `name` (lower case) matches a name or `*.domain` entry.
    pub fn name_listed(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.');
        self.allow.iter().any(|e| match e {
            Entry::Name(n) => n == name,
            Entry::Subdomains(suffix) => {
                name.len() > suffix.len() && name.ends_with(suffix.as_str())
            }
            Entry::Net(_) => false,
        })
    }

    /// True when an IP literal or CIDR entry covers `ip`.
    pub fn address_listed(&self, ip: IpAddr) -> bool {
        self.allow
            .iter()
            .any(|e| matches!(e, Entry::Net(net) if net.contains(ip)))
    }

    /// The check made when a request names the endpoint. A name must be on the allow-list
    /// when there is one, and is checked again once resolved, at call time
    /// ([`Self::address_allowed`]); `localhost` and `*.localhost` are loopback by definition
    /// and need an address entry for 127.0.0.1 or ::1 as well. A literal must be covered by
    /// an address entry when there is an allow-list, and also when it is in a refused range.
    pub fn host_allowed(&self, host: &Host<&str>) -> bool {
        match host {
            Host::Domain(name) => {
                let name = name.trim_end_matches('.');
                if self.has_allow_list() && !self.name_listed(name) {
                    return false;
                }
                !is_loopback_name(name)
                    || self.address_listed(Ipv4Addr::LOCALHOST.into())
                    || self.address_listed(Ipv6Addr::LOCALHOST.into())
            }
            Host::Ipv4(ip) => self.literal_allowed(IpAddr::V4(*ip)),
            Host::Ipv6(ip) => self.literal_allowed(IpAddr::V6(*ip)),
        }
    }

    fn literal_allowed(&self, ip: IpAddr) -> bool {
        if self.address_listed(ip) {
            return true;
        }
        !self.has_allow_list() && refused_range(ip).is_none()
    }

    /// The check made on every address a host name resolves to, just before connecting: an
    /// address in a refused range needs an address entry that covers it, whatever name led
    /// to it.
    pub fn address_allowed(&self, ip: IpAddr) -> bool {
        refused_range(ip).is_none() || self.address_listed(ip)
    }
}

/// `localhost` and any name under it (RFC 6761: they resolve to loopback), any case,
/// trailing dots ignored.
pub fn is_loopback_name(name: &str) -> bool {
    let name = name.trim_end_matches('.');
    let tail = name.len().saturating_sub("localhost".len());
    name.get(tail..)
        .is_some_and(|t| t.eq_ignore_ascii_case("localhost"))
        && (tail == 0 || name.as_bytes()[tail - 1] == b'.')
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
        Some(_) => return Err(QueryError::EndpointNotAllowed),
        None => return Err(QueryError::BadEndpoint),
    }
    url.set_fragment(None);
    // The URL is written to the count log; there it must not look like a count line
    // (no other line contains `unique_count=`: README, *The count log*).
    if url.as_str().len() > crate::query::MAX_ENDPOINT_BYTES || url.as_str().contains(COUNT_TOKEN) {
        return Err(QueryError::BadEndpoint);
    }
    Ok(url)
}

/// Checks an endpoint read from somewhere untrusted (cluster mode: Redis, where another
/// program may have written it) exactly as a client's would be checked, and returns the URL
/// to call, or the reason it is refused.
pub fn check_untrusted(bytes: &[u8], policy: &EndpointPolicy) -> Result<Url, NotMade> {
    if bytes.len() > crate::query::MAX_ENDPOINT_BYTES {
        return Err(NotMade::TooLong);
    }
    let text = std::str::from_utf8(bytes).map_err(|_| NotMade::NotUtf8)?;
    if text.contains(COUNT_TOKEN) {
        return Err(NotMade::CountToken);
    }
    canonicalize(text, policy).map_err(|_| NotMade::RefusedByPolicy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoints::net::tests::{ip, PUBLIC, REFUSED};

    fn allowed(policy: &EndpointPolicy, url: &str) -> bool {
        canonicalize(url, policy).is_ok()
    }

    #[test]
    fn names_that_resolve_to_an_embedded_internal_address_are_not_called() {
        let none = EndpointPolicy::default();
        for v6 in [
            "::ffff:0:a9fe:a9fe",
            "64:ff9b:1::a9fe:a9fe",
            "2002:a9fe:a9fe::",
            "2001:0:4136:e378:8000:63bf:80ff:fffe",
        ] {
            assert!(!none.address_allowed(ip(v6)), "{v6}");
        }
        // Public IPv4 addresses behind the same embeddings may be called.
        for v6 in ["2002:808:808::1", "64:ff9b:1::808:808"] {
            assert!(none.address_allowed(ip(v6)), "{v6}");
        }
    }

    #[test]
    fn refused_literals_are_refused_in_every_spelling_without_an_address_entry() {
        let none = EndpointPolicy::default();
        let by_name = EndpointPolicy::new(&["localhost", "*.localhost", "hooks.test"]).unwrap();
        for url in [
            // loopback, dotted and every numeric spelling the URL standard accepts
            "http://127.0.0.1/",
            "http://127.0.0.1:8080/hook?x=1",
            "https://127.1.2.3/",
            "http://127.1/",
            "http://127.0.1/",
            "http://2130706433/",
            "http://0x7f000001/",
            "http://0x7f.0.0.1/",
            "http://0177.0.0.1/",
            "http://017700000001/",
            "http://0x7F.1/",
            "http://127.0.0.1./",
            "http://%31%32%37.0.0.1/",
            "http://\u{ff11}\u{ff12}\u{ff17}.0.0.1/",
            "http://[::1]/",
            "http://[0:0:0:0:0:0:0:1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:7f00:1]/",
            "http://[::127.0.0.1]/",
            "http://[64:ff9b::127.0.0.1]/",
            "http://[::ffff:0:7f00:1]/",
            "http://[64:ff9b:1::7f00:1]/",
            "http://[2002:7f00:1::]/",
            "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/",
            // the names of loopback
            "http://localhost/",
            "http://LOCALHOST:9000/",
            "http://localhost./",
            "http://localhost../",
            "http://a.localhost/",
            "http://x.y.LocalHost./",
            "http://%6cocalhost/",
            // unspecified
            "http://0.0.0.0/",
            "http://0/",
            "http://0x0/",
            "http://0.1.2.3/",
            "http://[::]/",
            "http://[::ffff:0.0.0.0]/",
            // private
            "http://10.0.0.1/",
            "http://10.1/",
            "http://167772161/",
            "http://0xa.0.0.1/",
            "http://012.0.0.1/",
            "http://172.16.0.1/",
            "http://172.31.255.255/",
            "http://192.168.1.1/",
            "http://192.168.257/",
            "http://[::ffff:10.0.0.1]/",
            "http://[::ffff:192.168.0.1]/",
            "http://[::10.0.0.1]/",
            // shared
            "http://100.64.0.1/",
            "http://100.127.255.254/",
            // link-local, the metadata service's range
            "http://169.254.169.254/latest/meta-data",
            "http://2852039166/",
            "http://0xa9.0xfe.0xa9.0xfe/",
            "http://0251.0376.0251.0376/",
            "http://[fe80::1]/",
            "http://[febf::1]/",
            "http://[::ffff:169.254.169.254]/",
            "http://[::ffff:a9fe:a9fe]/",
            // unique-local and site-local
            "http://[fc00::1]/",
            "http://[fd00::1]:8080/",
            "http://[fec0::1]/",
            // multicast, broadcast, reserved
            "http://224.0.0.1/",
            "http://239.1.2.3/",
            "http://[ff02::1]/",
            "http://255.255.255.255/",
            "http://4294967295/",
            "http://240.0.0.1/",
            "http://[::ffff:240.0.0.1]/",
        ] {
            for (what, policy) in [("no list", &none), ("name entries", &by_name)] {
                assert_eq!(
                    canonicalize(url, policy).map(|u| u.to_string()),
                    Err(QueryError::EndpointNotAllowed),
                    "{url} with {what}"
                );
            }
        }
    }

    #[test]
    fn public_hosts_are_allowed_without_a_list() {
        let p = EndpointPolicy::default();
        for url in [
            "http://example.com/hook",
            "https://hooks.example.com:8443/x?y=1",
            "http://93.184.216.34/",
            "http://1.1.1.1/",
            "http://16843009/",
            "http://172.32.0.1/",
            "http://100.128.0.1/",
            "http://[2606:4700::1111]/",
            "http://[::ffff:1.1.1.1]/",
            "http://localhost.example.com/",
            "http://notlocalhost/",
        ] {
            assert!(allowed(&p, url), "{url}");
        }
    }

    #[test]
    fn an_address_entry_permits_what_it_covers_and_nothing_more() {
        let p = EndpointPolicy::new(&["127.0.0.1", "10.0.0.0/8", "fd00::/8", "169.254.169.254"])
            .unwrap();
        for url in [
            "http://127.0.0.1:9000/",
            "http://2130706433/",
            "http://127.1/",
            "http://[::ffff:127.0.0.1]/",
            "http://10.1.2.3/",
            "http://10.255.255.255/",
            "http://[::ffff:10.9.9.9]/",
            "http://[fd00::1]/",
            "http://[fdff:ffff::1]/",
            "http://169.254.169.254/",
            // an allow-list of addresses covers literals only: a name must be listed too
        ] {
            assert!(allowed(&p, url), "{url}");
        }
        for url in [
            "http://127.0.0.2/",
            "http://[::1]/",
            "http://11.0.0.1/",
            "http://[fc00::1]/",
            "http://169.254.169.253/",
            "http://192.168.0.1/",
            "http://example.com/",
            // localhost needs its name listed as well as its address
            "http://localhost/",
        ] {
            assert!(!allowed(&p, url), "{url}");
        }
        // An entry for an IPv6 range that embeds IPv4 addresses names that IPv6 range:
        // the NAT64 prefix is not every IPv4 address.
        let nat64 = EndpointPolicy::new(&["64:ff9b::/96"]).unwrap();
        assert!(allowed(&nat64, "http://[64:ff9b::7f00:1]/"));
        for url in [
            "http://127.0.0.1/",
            "http://169.254.169.254/",
            "http://8.8.8.8/",
            "http://[::ffff:127.0.0.1]/",
        ] {
            assert!(!allowed(&nat64, url), "{url}");
        }
        let named = EndpointPolicy::new(&["localhost", "127.0.0.0/8"]).unwrap();
        assert!(allowed(&named, "http://localhost:8080/"));
        assert!(allowed(&named, "http://LocalHost./"));
        assert!(!allowed(&named, "http://a.localhost/"));
    }

    #[test]
    fn resolved_addresses_in_refused_ranges_need_an_address_entry() {
        let none = EndpointPolicy::default();
        // A name entry lets the name through the allow-list, never into a refused range.
        let by_name = EndpointPolicy::new(&["rebind.example", "*.corp.test"]).unwrap();
        for (addr, _) in REFUSED {
            assert!(!none.address_allowed(ip(addr)), "{addr}");
            assert!(!by_name.address_allowed(ip(addr)), "{addr}");
        }
        for addr in ["::ffff:127.0.0.1", "::ffff:169.254.169.254", "::10.0.0.1"] {
            assert!(!by_name.address_allowed(ip(addr)), "{addr}");
        }
        for addr in PUBLIC {
            assert!(none.address_allowed(ip(addr)), "{addr}");
            assert!(by_name.address_allowed(ip(addr)), "{addr}");
        }
        let by_address = EndpointPolicy::new(&["10.1.2.3", "192.168.0.0/16", "::1"]).unwrap();
        for addr in ["10.1.2.3", "::ffff:10.1.2.3", "192.168.44.1", "::1"] {
            assert!(by_address.address_allowed(ip(addr)), "{addr}");
        }
        for addr in ["10.1.2.4", "127.0.0.1", "172.16.0.1"] {
            assert!(!by_address.address_allowed(ip(addr)), "{addr}");
        }
    }

    #[test]
    fn allow_list_restricts_hosts_and_wildcards_match_subdomains_only() {
        let p = EndpointPolicy::new(&["hooks.example.com", "*.corp.test", "203.0.113.5"]).unwrap();
        assert!(allowed(&p, "http://hooks.example.com/x"));
        assert!(allowed(&p, "https://HOOKS.Example.com./x"));
        assert!(allowed(&p, "http://a.corp.test/"));
        assert!(allowed(&p, "http://b.a.corp.test:81/"));
        assert!(allowed(&p, "http://203.0.113.5/"));
        assert!(!allowed(&p, "http://corp.test/"));
        assert!(!allowed(&p, "http://evilcorp.test/"));
        assert!(!allowed(&p, "http://example.com/"));
        assert!(!allowed(&p, "http://hooks.example.com.evil.org/"));
        assert!(!allowed(&p, "http://203.0.113.6/"));
        assert!(p.name_listed("x.corp.test"));
        assert!(!p.name_listed("203.0.113.5"), "addresses are not names");
    }

    #[test]
    fn allow_entries_in_other_spellings_mean_what_they_mean_in_a_url() {
        let p = EndpointPolicy::new(&[
            "127.1",
            "[::1]",
            "::ffff:10.0.0.0/104",
            "[fd00::]/8",
            "B\u{fc}cher.Example",
            "Hooks.Test.",
        ])
        .unwrap();
        assert!(p.address_listed(ip("127.0.0.1")));
        assert!(p.address_listed(ip("::1")));
        assert!(p.address_listed(ip("10.20.30.40")));
        assert!(p.address_listed(ip("fd99::1")));
        assert!(p.name_listed("xn--bcher-kva.example"));
        assert!(p.name_listed("hooks.test"));
        assert!(allowed(&p, "http://b\u{fc}cher.example/"));
    }

    #[test]
    fn bad_allow_entries_are_refused_with_a_reason() {
        for bad in [
            "*.",
            "a*.b",
            "*.10.0.0.1",
            "http://x/",
            "10.0.0.1/8",
            "10.0.0.0/33",
            "10.0.0.0/",
            "10.0.0.0/x",
            "fd00::1/8",
            "nonsense/8",
            "1:2:3",
            "a b",
        ] {
            assert!(EndpointPolicy::new(&[bad]).is_err(), "{bad}");
        }
        let err = EndpointPolicy::new(&["10.1.0.0/8"]).unwrap_err();
        assert!(err.contains("10.0.0.0"), "{err}");
    }

    #[test]
    fn cidr_ranges_cover_their_addresses_only() {
        let p = EndpointPolicy::new(&["192.168.0.0/23", "0.0.0.0/0"]).unwrap();
        assert!(p.address_listed(ip("8.8.8.8")), "/0 covers all of IPv4");
        assert!(!p.address_listed(ip("2001:db8::1")), "but not IPv6");
        let p = EndpointPolicy::new(&["192.168.0.0/23"]).unwrap();
        assert!(p.address_listed(ip("192.168.0.0")));
        assert!(p.address_listed(ip("192.168.1.255")));
        assert!(!p.address_listed(ip("192.168.2.0")));
        assert!(!p.address_listed(ip("192.167.255.255")));
    }

    #[test]
    fn loopback_names_are_localhost_and_below() {
        for name in [
            "localhost",
            "LocalHost",
            "localhost.",
            "a.localhost",
            "a.b.localhost..",
        ] {
            assert!(is_loopback_name(name), "{name}");
        }
        for name in [
            "notlocalhost",
            "localhost.example",
            "localhos",
            "",
            "xlocalhost.",
        ] {
            assert!(!is_loopback_name(name), "{name}");
        }
    }

    #[test]
    fn only_http_and_https_with_a_host() {
        let p = EndpointPolicy::default();
        assert_eq!(
            canonicalize("ftp://example.com/", &p).unwrap_err(),
            QueryError::BadEndpoint
        );
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
    fn untrusted_endpoints_are_checked_like_a_clients() {
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
            assert_eq!(
                check_untrusted(bad, &p).unwrap_err().as_str(),
                why,
                "{bad:?}"
            );
        }
    }
}
