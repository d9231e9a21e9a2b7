//! The model of the documented endpoint and id rules that both the `query` and the
//! `request` targets check verve against: which policy an endpoint was checked with, what
//! a canonical endpoint looks like under it, and the value of a decimal id.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use verve::endpoints::EndpointPolicy;
use verve::query::MAX_ENDPOINT_BYTES;

use super::ALLOW;

/// Which endpoint policy an endpoint was checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// No `--endpoint-allow`: any host but internal address literals and loopback names.
    Default,
    /// `--endpoint-allow` = [`ALLOW`].
    AllowList,
}

impl Policy {
    /// The policy of a run with `--endpoint-allow` = [`ALLOW`] (`allow_list`) or none.
    pub fn of(allow_list: bool) -> Policy {
        if allow_list {
            Policy::AllowList
        } else {
            Policy::Default
        }
    }

    pub fn build(self) -> EndpointPolicy {
        match self {
            Policy::Default => EndpointPolicy::default(),
            Policy::AllowList => EndpointPolicy::new(&ALLOW).expect("valid allow-list"),
        }
    }
}

/// A canonical endpoint as the table keeps it: lower-case http(s) scheme, a host allowed by
/// the policy, no fragment, at most 2048 bytes, no count token, nothing a log line or a URL
/// could hide (spaces, controls).
pub fn check_canonical(url: &str, policy: Policy) -> Result<(), String> {
    ensure!(url.len() <= MAX_ENDPOINT_BYTES, "{} bytes long", url.len());
    ensure!(!url.contains("unique_count="), "contains the count token");
    ensure!(!url.contains('#'), "has a fragment");
    ensure!(
        url.bytes().all(|b| b.is_ascii_graphic()),
        "has a byte that is not visible ASCII"
    );
    let after_scheme = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or("scheme is not http or https")?;
    let authority = &after_scheme[..after_scheme.find(['/', '?']).unwrap_or(after_scheme.len())];
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if host_port.starts_with('[') {
        &host_port[..host_port.find(']').ok_or("unclosed [")? + 1]
    } else {
        host_port.split(':').next().unwrap_or("")
    };
    ensure!(!host.is_empty(), "no host");
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let ip: Option<IpAddr> = bare.parse().ok();
    let name = host.trim_end_matches('.');
    // IPv6 spellings of IPv4 addresses name the IPv4 address.
    let ip = ip.map(embedded_v4);
    let loopback_name = {
        let n = name.to_ascii_lowercase();
        n == "localhost" || n.ends_with(".localhost")
    };
    match policy {
        Policy::Default => {
            ensure!(
                !ip.is_some_and(internal),
                "internal address {host} allowed without an address entry"
            );
            ensure!(!loopback_name, "loopback name {host} allowed");
        }
        Policy::AllowList => {
            let listed = match ip {
                Some(ip) => {
                    ip == IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5))
                        || ip == IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1))
                }
                None => {
                    name == "hooks.example.com"
                        || (name.len() > ".corp.test".len() && name.ends_with(".corp.test"))
                }
            };
            ensure!(listed, "host {host} is not on the allow-list");
            ensure!(
                !loopback_name,
                "loopback name {host} allowed by a name entry"
            );
        }
    }
    Ok(())
}

/// The IPv4 address inside an IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`,
/// but not `::` or `::1`) or NAT64 (`64:ff9b::a.b.c.d`) address; any other address as it is.
fn embedded_v4(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(a) = ip else { return ip };
    let s = a.segments();
    let v4 = || {
        IpAddr::V4(Ipv4Addr::new(
            (s[6] >> 8) as u8,
            s[6] as u8,
            (s[7] >> 8) as u8,
            s[7] as u8,
        ))
    };
    match s[..6] {
        [0, 0, 0, 0, 0, 0xffff] | [0x64, 0xff9b, 0, 0, 0, 0] => v4(),
        [0, 0, 0, 0, 0, 0] if s[6] != 0 || s[7] > 1 => v4(),
        _ => ip,
    }
}

/// The ranges never called without an address entry, as a table of (first address, prefix
/// length): loopback, unspecified, private, shared, link-local, multicast, reserved and
/// broadcast; unique-local, site-local and IPv6 multicast.
fn internal(ip: IpAddr) -> bool {
    const V4: [([u8; 4], u32); 10] = [
        ([0, 0, 0, 0], 8),
        ([10, 0, 0, 0], 8),
        ([100, 64, 0, 0], 10),
        ([127, 0, 0, 0], 8),
        ([169, 254, 0, 0], 16),
        ([172, 16, 0, 0], 12),
        ([192, 168, 0, 0], 16),
        ([224, 0, 0, 0], 4),
        ([240, 0, 0, 0], 4),
        ([255, 255, 255, 255], 32),
    ];
    const V6: [(u128, u32); 6] = [
        (0, 128),
        (1, 128),
        (0xfe80 << 112, 10),
        (0xfec0 << 112, 10),
        (0xfc00 << 112, 7),
        (0xff00 << 112, 8),
    ];
    match ip {
        IpAddr::V4(a) => V4.iter().any(|(net, len)| {
            u32::from(a) >> (32 - len) == u32::from(Ipv4Addr::from(*net)) >> (32 - len)
        }),
        IpAddr::V6(a) => V6.iter().any(|(net, len)| {
            u128::from(a).checked_shr(128 - len).unwrap_or(0)
                == net.checked_shr(128 - len).unwrap_or(0)
        }),
    }
}

/// The value of ASCII digits, when at most 38 significant ones (fits an `i128`).
pub fn decimal(digits: &[u8]) -> Option<i128> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let significant = &digits[digits.iter().take_while(|&&d| d == b'0').count()..];
    if significant.len() > 38 {
        return None;
    }
    Some(
        significant
            .iter()
            .fold(0i128, |n, &d| n * 10 + (d - b'0') as i128),
    )
}
