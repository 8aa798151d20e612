//! CIDR ranges outbound federation may not connect to (Synapse's
//! `ip_range_blacklist` / `ip_range_whitelist`): a hostile server name or
//! `.well-known` must not turn hearth into a proxy onto its own network.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Synapse's `DEFAULT_IP_RANGE_BLACKLIST` (synapse/config/server.py):
/// loopback, private, CGNAT, link-local, documentation, benchmarking,
/// multicast and the old site-local ranges.
pub const DEFAULT_DENY: &[&str] = &[
    "127.0.0.0/8",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "192.0.0.0/24",
    "169.254.0.0/16",
    "192.88.99.0/24",
    "198.18.0.0/15",
    "192.0.2.0/24",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "::1/128",
    "fe80::/10",
    "fc00::/7",
    "2001:db8::/32",
    "ff00::/8",
    "fec0::/10",
];

/// One CIDR range, e.g. `10.0.0.0/8` or `fc00::/7` (a bare address is /32
/// or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    net: IpAddr,
    prefix: u8,
}

impl IpRange {
    pub fn parse(s: &str) -> Option<IpRange> {
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let net: IpAddr = addr.parse().ok()?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max)?,
            None => max,
        };
        Some(IpRange { net, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, canonical(ip)) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                masked(u32::from(n).into(), self.prefix, 32)
                    == masked(u32::from(a).into(), self.prefix, 32)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                masked(u128::from(n), self.prefix, 128) == masked(u128::from(a), self.prefix, 128)
            }
            _ => false,
        }
    }
}

fn masked(bits: u128, prefix: u8, width: u8) -> u128 {
    if prefix == 0 {
        return 0;
    }
    let shift = width - prefix;
    (bits >> shift) << shift
}

/// IPv4-mapped IPv6 (`::ffff:127.0.0.1`) is checked as the IPv4 address it
/// reaches, so it cannot slip past a v4 deny entry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// The deny and allow lists in force: an address is refused if a deny
/// range holds it and no allow range does. The unspecified addresses
/// (`0.0.0.0`, `::`) are always refused, as Synapse adds them to any list.
#[derive(Debug, Clone, Default)]
pub struct IpPolicy {
    deny: Vec<IpRange>,
    allow: Vec<IpRange>,
}

impl IpPolicy {
    /// Unparseable entries are skipped (config validation refuses them).
    pub fn new(deny: &[String], allow: &[String]) -> IpPolicy {
        IpPolicy {
            deny: deny.iter().filter_map(|s| IpRange::parse(s)).collect(),
            allow: allow.iter().filter_map(|s| IpRange::parse(s)).collect(),
        }
    }

    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        if ip == IpAddr::V4(Ipv4Addr::UNSPECIFIED) || ip == IpAddr::V6(Ipv6Addr::UNSPECIFIED) {
            return false;
        }
        !self.deny.iter().any(|r| r.contains(ip)) || self.allow.iter().any(|r| r.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default_policy(allow: &[&str]) -> IpPolicy {
        let deny: Vec<String> = DEFAULT_DENY.iter().map(|s| s.to_string()).collect();
        let allow: Vec<String> = allow.iter().map(|s| s.to_string()).collect();
        IpPolicy::new(&deny, &allow)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_ranges() {
        assert!(IpRange::parse("10.0.0.0/8").is_some());
        assert!(IpRange::parse("::1").is_some());
        assert!(IpRange::parse("10.0.0.0/33").is_none());
        assert!(IpRange::parse("fc00::/129").is_none());
        assert!(IpRange::parse("nope/8").is_none());
        assert!(IpRange::parse("").is_none());
        for r in DEFAULT_DENY {
            assert!(IpRange::parse(r).is_some(), "{r}");
        }
    }

    #[test]
    fn default_denies_private_and_loopback() {
        let p = default_policy(&[]);
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00::5",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "0.0.0.0",
            "::",
            "224.0.0.1",
        ] {
            assert!(!p.permits(ip(bad)), "{bad} must be denied");
        }
        for good in ["1.1.1.1", "172.32.0.1", "8.8.8.8", "2606:4700::1111"] {
            assert!(p.permits(ip(good)), "{good} must be allowed");
        }
    }

    #[test]
    fn allow_overrides_deny() {
        let p = default_policy(&["127.0.0.0/8"]);
        assert!(p.permits(ip("127.0.0.1")));
        assert!(p.permits(ip("127.9.9.9")));
        assert!(p.permits(ip("::ffff:127.0.0.1")));
        assert!(!p.permits(ip("10.0.0.1")));
        assert!(!p.permits(ip("::1")));
        // Unspecified is refused whatever the lists say.
        let p = default_policy(&["0.0.0.0/0"]);
        assert!(!p.permits(ip("0.0.0.0")));
        assert!(p.permits(ip("10.0.0.1")));
    }

    #[test]
    fn empty_deny_list_allows_all_but_unspecified() {
        let p = IpPolicy::new(&[], &[]);
        assert!(p.permits(ip("127.0.0.1")));
        assert!(!p.permits(ip("::")));
    }

    #[test]
    fn prefix_zero_and_edges() {
        let all = IpRange::parse("0.0.0.0/0").unwrap();
        assert!(all.contains(ip("255.255.255.255")));
        assert!(!all.contains(ip("::2")));
        let r = IpRange::parse("172.16.0.0/12").unwrap();
        assert!(r.contains(ip("172.16.0.0")));
        assert!(r.contains(ip("172.31.255.255")));
        assert!(!r.contains(ip("172.32.0.0")));
        assert!(!r.contains(ip("172.15.255.255")));
    }
}
