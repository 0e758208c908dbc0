//! IP networks in CIDR notation (`10.0.0.0/8`, `fd00::/8`), as written in flags, config and
//! annotations.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An IPv4 or IPv6 network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// Why a CIDR string is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid CIDR {input:?}: {reason} (write e.g. 10.0.0.0/8 or fd00::/8)")]
pub struct InvalidCidr {
    /// The offending input.
    pub input: String,
    /// What is wrong.
    pub reason: &'static str,
}

impl Cidr {
    /// Parses `addr/prefix`; a bare address means a single host. Host bits must be zero.
    pub fn parse(input: &str) -> Result<Self, InvalidCidr> {
        let err = |reason| InvalidCidr {
            input: input.to_string(),
            reason,
        };
        let (addr, prefix) = match input.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (input.trim(), None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| err("not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .map_err(|_| err("the prefix length is not a number"))?,
            None => max,
        };
        if prefix > max {
            return Err(err("the prefix length is too long for the address family"));
        }
        let cidr = Self { addr, prefix };
        if cidr.network() != addr {
            return Err(err("host bits are set; use the network address"));
        }
        Ok(cidr)
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether this is an IPv6 network.
    pub fn is_ipv6(&self) -> bool {
        self.addr.is_ipv6()
    }

    fn network(&self) -> IpAddr {
        mask(self.addr, self.prefix)
    }

    /// Whether `ip` is in this network (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.prefix) == self.addr
    }
}

fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let m = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - prefix)
            };
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let m = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - prefix)
            };
            IpAddr::V6((bits & m).into())
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = InvalidCidr;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl serde::Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Cidr::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Parses a comma-separated list of CIDRs (empty entries ignored).
pub fn parse_list(input: &str) -> Result<Vec<Cidr>, InvalidCidr> {
    input
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(Cidr::parse)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_table() {
        let ok = [
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("192.168.1.7", "192.168.1.7/32"),
            ("0.0.0.0/0", "0.0.0.0/0"),
            ("fd00::/8", "fd00::/8"),
            ("::/0", "::/0"),
            ("2001:db8::1", "2001:db8::1/128"),
        ];
        for (input, shown) in ok {
            assert_eq!(Cidr::parse(input).unwrap().to_string(), shown);
        }
        let bad = [
            ("10.0.0.1/8", "host bits"),
            ("10.0.0.0/33", "too long"),
            ("fd00::/129", "too long"),
            ("10.0.0.0/x", "not a number"),
            ("ten/8", "not an IP"),
            ("", "not an IP"),
        ];
        for (input, why) in bad {
            let err = Cidr::parse(input).unwrap_err().to_string();
            assert!(err.contains(why), "{input}: {err}");
        }
    }

    #[test]
    fn membership() {
        let net = Cidr::parse("10.213.0.0/16").unwrap();
        assert!(net.contains("10.213.5.6".parse().unwrap()));
        assert!(
            net.contains("::ffff:10.213.5.6".parse().unwrap()),
            "v4-mapped counts"
        );
        assert!(!net.contains("10.214.0.1".parse().unwrap()));
        assert!(!net.contains("fd00::1".parse().unwrap()));
        let v6 = Cidr::parse("fd00::/8").unwrap();
        assert!(v6.contains("fd00:213::2".parse().unwrap()));
        assert!(!v6.contains("fe80::1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert_eq!(parse_list(" 10.0.0.0/8, ,fd00::/8").unwrap().len(), 2);
    }
}
