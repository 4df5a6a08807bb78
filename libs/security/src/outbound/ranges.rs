//! Which addresses an outbound call may reach: the public internet only.
//!
//! The ranges are IANA's special-purpose registries (RFC 6890 and its
//! updates), written out because `Ipv4Addr::is_global` and friends are not
//! stable. IPv4-mapped IPv6 addresses are judged as the IPv4 address they
//! carry, so `::ffff:127.0.0.1` is loopback.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// IPv4 ranges no outbound call may reach: (network, prefix length, name).
const FORBIDDEN_V4: &[(Ipv4Addr, u8, &str)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8, "this network (0.0.0.0/8)"),
    (Ipv4Addr::new(10, 0, 0, 0), 8, "private (10.0.0.0/8)"),
    (
        Ipv4Addr::new(100, 64, 0, 0),
        10,
        "shared address space (100.64.0.0/10)",
    ),
    (Ipv4Addr::new(127, 0, 0, 0), 8, "loopback (127.0.0.0/8)"),
    (
        Ipv4Addr::new(169, 254, 0, 0),
        16,
        "link-local and cloud metadata (169.254.0.0/16)",
    ),
    (Ipv4Addr::new(172, 16, 0, 0), 12, "private (172.16.0.0/12)"),
    (
        Ipv4Addr::new(192, 0, 0, 0),
        24,
        "IETF protocol assignments (192.0.0.0/24)",
    ),
    (
        Ipv4Addr::new(192, 0, 2, 0),
        24,
        "documentation (192.0.2.0/24)",
    ),
    (
        Ipv4Addr::new(192, 88, 99, 0),
        24,
        "6to4 relay anycast (192.88.99.0/24)",
    ),
    (
        Ipv4Addr::new(192, 168, 0, 0),
        16,
        "private (192.168.0.0/16)",
    ),
    (
        Ipv4Addr::new(198, 18, 0, 0),
        15,
        "benchmarking (198.18.0.0/15)",
    ),
    (
        Ipv4Addr::new(198, 51, 100, 0),
        24,
        "documentation (198.51.100.0/24)",
    ),
    (
        Ipv4Addr::new(203, 0, 113, 0),
        24,
        "documentation (203.0.113.0/24)",
    ),
    (Ipv4Addr::new(224, 0, 0, 0), 4, "multicast (224.0.0.0/4)"),
    (
        Ipv4Addr::new(240, 0, 0, 0),
        4,
        "reserved and broadcast (240.0.0.0/4)",
    ),
];

/// IPv6 ranges no outbound call may reach (IPv4-mapped addresses are
/// judged by [`FORBIDDEN_V4`] instead).
const FORBIDDEN_V6: &[(Ipv6Addr, u8, &str)] = &[
    (Ipv6Addr::UNSPECIFIED, 128, "unspecified (::)"),
    (Ipv6Addr::LOCALHOST, 128, "loopback (::1)"),
    (
        Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0),
        96,
        "IPv4-compatible (::/96)",
    ),
    (
        Ipv6Addr::new(0, 0, 0, 0, 0xffff, 0, 0, 0),
        96,
        "IPv4-translated (::ffff:0:0:0/96)",
    ),
    (
        Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0),
        96,
        "NAT64 (64:ff9b::/96)",
    ),
    (
        Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0),
        48,
        "local NAT64 (64:ff9b:1::/48)",
    ),
    (
        Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0),
        64,
        "discard-only (100::/64)",
    ),
    (
        Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0),
        23,
        "IETF protocol assignments (2001::/23)",
    ),
    (
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0),
        32,
        "documentation (2001:db8::/32)",
    ),
    (
        Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0),
        16,
        "6to4 (2002::/16)",
    ),
    (
        Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0),
        20,
        "documentation (3fff::/20)",
    ),
    (
        Ipv6Addr::new(0x5f00, 0, 0, 0, 0, 0, 0, 0),
        16,
        "segment routing (5f00::/16)",
    ),
    (
        Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0),
        10,
        "site-local, deprecated (fec0::/10)",
    ),
    (
        Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0),
        7,
        "unique local (fc00::/7)",
    ),
    (
        Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0),
        10,
        "link-local (fe80::/10)",
    ),
    (
        Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0),
        8,
        "multicast (ff00::/8)",
    ),
];

/// The special-purpose range `ip` is in, named, or `None` for a public
/// address an outbound call may reach.
pub fn forbidden_range(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => forbidden_v4(v4),
            None => FORBIDDEN_V6
                .iter()
                .find(|(net, len, _)| in_v6(v6, *net, *len))
                .map(|(_, _, name)| *name),
        },
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    FORBIDDEN_V4
        .iter()
        .find(|(net, len, _)| in_v4(ip, *net, *len))
        .map(|(_, _, name)| *name)
}

fn in_v4(ip: Ipv4Addr, net: Ipv4Addr, len: u8) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    u32::from(ip) & mask == u32::from(net) & mask
}

fn in_v6(ip: Ipv6Addr, net: Ipv6Addr, len: u8) -> bool {
    let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
    u128::from(ip) & mask == u128::from(net) & mask
}

/// Why a network setting does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidNetwork(pub String);

/// A network an operator allows despite the ranges above (tests, an
/// on-premises receiver): `10.1.2.0/24`, `::1/128`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllowedNet {
    network: IpAddr,
    prefix: u8,
}

impl AllowedNet {
    /// Parses `address[/prefix]`; the error says what is wrong.
    pub fn parse(raw: &str) -> Result<Self, InvalidNetwork> {
        let (address, prefix) = raw
            .trim()
            .split_once('/')
            .map_or((raw.trim(), None), |(a, p)| (a, Some(p)));
        let network: IpAddr = address
            .parse()
            .map_err(|_| InvalidNetwork(format!("{address:?} is not an IP address")))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| InvalidNetwork(format!("prefix {p:?} is not 0 to {max}")))?,
        };
        Ok(Self { network, prefix })
    }

    /// Whether `ip` is inside this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => in_v4(ip, net, self.prefix),
            (IpAddr::V6(net), IpAddr::V6(ip)) => in_v6(ip, net, self.prefix),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn ip(raw: &str) -> IpAddr {
        raw.parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }

    #[test]
    fn the_classic_targets_are_refused_and_named() {
        for (address, range) in [
            ("127.0.0.1", "loopback (127.0.0.0/8)"),
            (
                "169.254.169.254",
                "link-local and cloud metadata (169.254.0.0/16)",
            ),
            ("10.0.0.5", "private (10.0.0.0/8)"),
            ("172.31.255.255", "private (172.16.0.0/12)"),
            ("192.168.1.1", "private (192.168.0.0/16)"),
            ("100.100.100.200", "shared address space (100.64.0.0/10)"),
            ("0.0.0.0", "this network (0.0.0.0/8)"),
            ("255.255.255.255", "reserved and broadcast (240.0.0.0/4)"),
            ("224.0.0.1", "multicast (224.0.0.0/4)"),
            ("198.51.100.7", "documentation (198.51.100.0/24)"),
            ("::1", "loopback (::1)"),
            ("::", "unspecified (::)"),
            ("::ffff:127.0.0.1", "loopback (127.0.0.0/8)"),
            (
                "::ffff:169.254.169.254",
                "link-local and cloud metadata (169.254.0.0/16)",
            ),
            ("64:ff9b::7f00:1", "NAT64 (64:ff9b::/96)"),
            ("fd00:ec2::254", "unique local (fc00::/7)"),
            ("fe80::1", "link-local (fe80::/10)"),
            ("2001:db8::1", "documentation (2001:db8::/32)"),
            ("ff02::1", "multicast (ff00::/8)"),
            ("::ffff:0:7f00:1", "IPv4-translated (::ffff:0:0:0/96)"),
            ("fec0::1", "site-local, deprecated (fec0::/10)"),
        ] {
            assert_eq!(forbidden_range(ip(address)), Some(range), "{address}");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for address in [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.215.14",
            "172.32.0.1",
            "2606:4700:4700::1111",
        ] {
            assert_eq!(forbidden_range(ip(address)), None, "{address}");
        }
    }

    #[test]
    fn allowed_networks_parse_and_match() {
        let net = AllowedNet::parse("127.0.0.0/8").unwrap_or_else(|e| panic!("{e}"));
        assert!(net.contains(ip("127.1.2.3")));
        assert!(
            net.contains(ip("::ffff:127.0.0.1")),
            "IPv4-mapped is the same host"
        );
        assert!(!net.contains(ip("128.0.0.1")));
        let one = AllowedNet::parse("::1").unwrap_or_else(|e| panic!("{e}"));
        assert!(one.contains(ip("::1")) && !one.contains(ip("::2")));
        assert_eq!(
            AllowedNet::parse("10.0.0.0/33").map_err(|e| e.to_string()),
            Err("prefix \"33\" is not 0 to 32".to_owned())
        );
        assert_eq!(
            AllowedNet::parse("intranet/8").map_err(|e| e.to_string()),
            Err("\"intranet\" is not an IP address".to_owned())
        );
    }

    proptest! {
        /// Every address of a forbidden IPv4 range is refused, bare and
        /// IPv4-mapped, and nothing outside every range is.
        #[test]
        fn membership_agrees_with_a_plain_comparison(raw in any::<u32>()) {
            let v4 = Ipv4Addr::from(raw);
            let expected = FORBIDDEN_V4.iter().any(|(net, len, _)| {
                let size = 1u64 << (32 - u32::from(*len));
                let start = u64::from(u32::from(*net));
                (start..start + size).contains(&u64::from(raw))
            });
            prop_assert_eq!(forbidden_range(IpAddr::V4(v4)).is_some(), expected);
            prop_assert_eq!(
                forbidden_range(IpAddr::V6(v4.to_ipv6_mapped())).is_some(),
                expected
            );
        }
    }
}
