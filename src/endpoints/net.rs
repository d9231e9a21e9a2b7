//! Address ranges: a CIDR range of `--endpoint-allow` ([`Net`]), the ranges of the host's own
//! network that are never called without an address entry ([`refused_range`]), and the IPv4
//! address an IPv6 address stands for ([`canonical_ip`]), so that no spelling slips past.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An address range: `addr` with its host bits zero. An IPv4-mapped IPv6 range
/// (`::ffff:10.0.0.0/104`) is kept as the IPv4 range it maps (see [`canonical_ip`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net {
    addr: IpAddr,
    prefix: u8,
}

impl Net {
    /// `10.0.0.0/8`, `fd00::/8`, `[fd00::]/8`. The address must have no bit set past the
    /// prefix: `10.1.2.3/8` is refused as most likely a mistake for `10.0.0.0/8` or
    /// `10.1.2.3/32`.
    pub fn parse_cidr(entry: &str) -> Result<Net, String> {
        let (addr, prefix) = entry.split_once('/').unwrap_or((entry, ""));
        let addr: IpAddr = strip_brackets(addr)
            .parse()
            .map_err(|_| format!("{entry:?}: not an IP address before the '/'"))?;
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| format!("{entry:?}: not a prefix length after the '/'"))?;
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > bits {
            return Err(format!("{entry:?}: the prefix is longer than {bits} bits"));
        }
        let start = masked(addr, prefix);
        if start != addr {
            return Err(format!(
                "{entry:?}: bits are set past the prefix (the range starts at {start})"
            ));
        }
        Ok(Net::new(addr, prefix))
    }

    /// The range of `prefix` bits that holds `addr`. Only an IPv4-mapped range is kept as
    /// the IPv4 range it spells; a range of another embedding (NAT64, 6to4, ...) stays the
    /// IPv6 range it names: `64:ff9b::/96` is the NAT64 prefix, not every IPv4 address.
    pub fn new(addr: IpAddr, prefix: u8) -> Net {
        let mapped =
            matches!(addr, IpAddr::V6(v6) if v6.segments()[..6] == [0, 0, 0, 0, 0, 0xffff]);
        match (addr, canonical_ip(addr)) {
            (IpAddr::V6(_), IpAddr::V4(v4)) if mapped && prefix >= 96 => Net {
                addr: masked(IpAddr::V4(v4), prefix - 96),
                prefix: prefix - 96,
            },
            _ => Net {
                addr: masked(addr, prefix),
                prefix,
            },
        }
    }

    /// True when `ip`, in the spelling given or as the IPv4 address it embeds, is in the
    /// range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let within = |ip: IpAddr| {
            ip.is_ipv4() == self.addr.is_ipv4() && masked(ip, self.prefix) == self.addr
        };
        within(ip) || within(canonical_ip(ip))
    }
}

/// `ip` with every bit past the first `prefix` cleared.
fn masked(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(prefix.min(32)))
                .unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask))
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(prefix.min(128)))
                .unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
    }
}

pub fn strip_brackets(s: &str) -> &str {
    s.strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(s)
}

/// The IPv4 address an IPv6 address stands for, where it embeds one: IPv4-mapped
/// (`::ffff:a.b.c.d`, what a dual-stack socket connects to), IPv4-translated (SIIT,
/// `::ffff:0:a.b.c.d`), IPv4-compatible (`::a.b.c.d`, deprecated but still parsed; `::` and
/// `::1` keep their IPv6 meaning), the NAT64 prefixes (`64:ff9b::a.b.c.d` and the local-use
/// `64:ff9b:1::/48`, translated to the IPv4 address by a NAT64 gateway), 6to4
/// (`2002:AABB:CCDD::/48`, a relay forwards to `AA.BB.CC.DD`) and Teredo (`2001:0::/32`, the
/// client's address is the last 32 bits inverted). Every other address is returned as it is.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = ip else { return ip };
    let s = v6.segments();
    let v4 = |hi: u16, lo: u16| {
        let [a, b] = hi.to_be_bytes();
        let [c, d] = lo.to_be_bytes();
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    };
    match s {
        [0, 0, 0, 0, 0, 0xffff, ..] | [0, 0, 0, 0, 0xffff, 0, ..] => v4(s[6], s[7]),
        [0, 0, 0, 0, 0, 0, ..] if !v6.is_unspecified() && !v6.is_loopback() => v4(s[6], s[7]),
        [0x64, 0xff9b, 0, 0, 0, 0, ..] | [0x64, 0xff9b, 1, ..] => v4(s[6], s[7]),
        [0x2002, hi, lo, ..] => v4(hi, lo),
        [0x2001, 0, ..] => v4(!s[6], !s[7]),
        _ => ip,
    }
}

/// The range of the host's own network that `ip` (any spelling) is in, by name, or `None`
/// for an address that may be called without an address entry.
pub fn refused_range(ip: IpAddr) -> Option<&'static str> {
    match canonical_ip(ip) {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            match (a, b) {
                (0, _) => Some("unspecified"),
                (10, _) | (192, 168) => Some("private"),
                (172, 16..=31) => Some("private"),
                (100, 64..=127) => Some("shared"),
                (127, _) => Some("loopback"),
                (169, 254) => Some("link-local"),
                (224..=239, _) => Some("multicast"),
                _ if v4.is_broadcast() => Some("broadcast"),
                (240..=255, _) => Some("reserved"),
                _ => None,
            }
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            if v6.is_unspecified() {
                Some("unspecified")
            } else if v6.is_loopback() {
                Some("loopback")
            } else if first & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else if first & 0xffc0 == 0xfec0 {
                // Site-local: deprecated in favour of unique-local, and just as internal.
                Some("site-local")
            } else if first & 0xfe00 == 0xfc00 {
                Some("unique-local")
            } else if first & 0xff00 == 0xff00 {
                Some("multicast")
            } else {
                None
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(crate) fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// One address of every refused range, with the range's name, in the usual spelling.
    pub(crate) const REFUSED: &[(&str, &str)] = &[
        ("127.0.0.1", "loopback"),
        ("127.255.255.254", "loopback"),
        ("::1", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("0.1.2.3", "unspecified"),
        ("::", "unspecified"),
        ("10.0.0.1", "private"),
        ("10.255.255.255", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.255", "private"),
        ("192.168.0.1", "private"),
        ("192.168.255.255", "private"),
        ("100.64.0.1", "shared"),
        ("100.127.255.255", "shared"),
        ("169.254.169.254", "link-local"),
        ("169.254.0.1", "link-local"),
        ("fe80::1", "link-local"),
        ("febf::1", "link-local"),
        ("fc00::1", "unique-local"),
        ("fd12:3456::1", "unique-local"),
        ("fec0::1", "site-local"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("ff02::1", "multicast"),
        ("ff0e::1", "multicast"),
        ("255.255.255.255", "broadcast"),
        ("240.0.0.1", "reserved"),
        ("254.1.2.3", "reserved"),
    ];

    /// Public neighbours of the refused ranges: called without any entry.
    pub(crate) const PUBLIC: &[&str] = &[
        "1.1.1.1",
        "9.255.255.255",
        "11.0.0.0",
        "172.15.255.255",
        "172.32.0.0",
        "192.167.255.255",
        "192.169.0.0",
        "100.63.255.255",
        "100.128.0.0",
        "126.255.255.255",
        "128.0.0.0",
        "169.253.255.255",
        "169.255.0.0",
        "223.255.255.255",
        "93.184.216.34",
        "2001:4860:4860::8888",
        "2606:4700::1111",
        "fbff::1",
        "fe00::1",
        "::2:0:0:1",
    ];

    #[test]
    fn every_refused_range_is_named_and_its_neighbours_are_public() {
        for (addr, range) in REFUSED {
            assert_eq!(refused_range(ip(addr)), Some(*range), "{addr}");
        }
        for addr in PUBLIC {
            assert_eq!(refused_range(ip(addr)), None, "{addr}");
        }
    }

    #[test]
    fn ipv6_spellings_of_ipv4_addresses_are_the_ipv4_address() {
        for (v6, v4) in [
            ("::ffff:127.0.0.1", "127.0.0.1"),
            ("::ffff:7f00:1", "127.0.0.1"),
            ("::ffff:10.1.2.3", "10.1.2.3"),
            ("::ffff:169.254.169.254", "169.254.169.254"),
            ("::127.0.0.1", "127.0.0.1"),
            ("::10.0.0.1", "10.0.0.1"),
            ("64:ff9b::10.0.0.1", "10.0.0.1"),
            ("64:ff9b::8.8.8.8", "8.8.8.8"),
            // SIIT, local-use NAT64, 6to4, Teredo (the client's address, inverted)
            ("::ffff:0:a9fe:a9fe", "169.254.169.254"),
            ("64:ff9b:1::a9fe:a9fe", "169.254.169.254"),
            ("64:ff9b:1:2:3:4:7f00:1", "127.0.0.1"),
            ("2002:a9fe:a9fe::", "169.254.169.254"),
            ("2002:7f00:1:5::1", "127.0.0.1"),
            ("2002:808:808::1", "8.8.8.8"),
            ("2001:0:4136:e378:8000:63bf:80ff:fffe", "127.0.0.1"),
            ("2001::5601:5601", "169.254.169.254"),
        ] {
            assert_eq!(canonical_ip(ip(v6)), ip(v4), "{v6}");
            assert_eq!(refused_range(ip(v6)), refused_range(ip(v4)), "{v6}");
        }
        // IPv6's own loopback and unspecified addresses are not IPv4-compatible ones.
        assert_eq!(canonical_ip(ip("::1")), ip("::1"));
        assert_eq!(canonical_ip(ip("::")), ip("::"));
        assert_eq!(canonical_ip(ip("2001:db8::1")), ip("2001:db8::1"));
    }
}
