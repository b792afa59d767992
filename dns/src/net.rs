//! Client networks: CIDR blocks (region hints, forwarding allow-lists) and the client
//! prefixes latency is aggregated by (/24 for IPv4, /56 for IPv6, as RFC 7871 recommends).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Prefix length client latency is aggregated by, for IPv4.
pub const CLIENT_PREFIX_V4: u8 = 24;
/// Prefix length client latency is aggregated by, for IPv6.
pub const CLIENT_PREFIX_V6: u8 = 56;

/// A block of addresses, `203.0.113.0/24` or `2001:db8::/32`. The address is stored with
/// its host bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Cidr {
    address: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The block of `prefix` bits containing `address` (prefix capped at the family's width).
    pub fn new(address: IpAddr, prefix: u8) -> Cidr {
        let prefix = prefix.min(width(&address));
        Cidr { address: mask(address, prefix), prefix }
    }

    /// The client prefix `address` belongs to (/24 or /56).
    pub fn client_prefix(address: IpAddr) -> Cidr {
        match address {
            IpAddr::V4(_) => Cidr::new(address, CLIENT_PREFIX_V4),
            IpAddr::V6(_) => Cidr::new(address, CLIENT_PREFIX_V6),
        }
    }

    pub fn address(&self) -> IpAddr {
        self.address
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn contains(&self, address: IpAddr) -> bool {
        width(&address) == width(&self.address) && mask(address, self.prefix) == self.address
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

/// Why a CIDR did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a network (expected e.g. 203.0.113.0/24 or 2001:db8::/32)")]
pub struct CidrError(String);

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let bad = || CidrError(s.to_string());
        let (address, prefix) = s.split_once('/').ok_or_else(bad)?;
        let address: IpAddr = address.trim().parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.trim().parse().map_err(|_| bad())?;
        if prefix > width(&address) {
            return Err(bad());
        }
        Ok(Cidr::new(address, prefix))
    }
}

fn width(address: &IpAddr) -> u8 {
    match address {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

fn mask(address: IpAddr, prefix: u8) -> IpAddr {
    match address {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let kept = if prefix == 0 { 0 } else { bits & (u32::MAX << (32 - u32::from(prefix))) };
            IpAddr::V4(kept.into())
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let kept = if prefix == 0 { 0 } else { bits & (u128::MAX << (128 - u32::from(prefix))) };
            IpAddr::V6(kept.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// `contains` agrees with comparing the leading `prefix` bits, for IPv4 and IPv6,
        /// and never mixes the families (the WAF and region hints rely on it).
        #[test]
        fn contains_is_a_comparison_of_the_leading_bits(
            network in any::<u128>(), probe in any::<u128>(), prefix in 0u8..=128, v4 in any::<bool>(),
        ) {
            let (width, network, probe) = if v4 {
                (32u8, network & 0xffff_ffff, probe & 0xffff_ffff)
            } else {
                (128u8, network, probe)
            };
            let prefix = prefix.min(width);
            let address = |bits: u128| -> IpAddr {
                if v4 { IpAddr::V4(std::net::Ipv4Addr::from(bits as u32)) } else { IpAddr::V6(std::net::Ipv6Addr::from(bits)) }
            };
            let cidr = Cidr::new(address(network), prefix);
            let shift = u32::from(width - prefix);
            let same = prefix == 0 || (network >> shift) == (probe >> shift);
            prop_assert_eq!(cidr.contains(address(probe)), same);
            prop_assert!(cidr.contains(address(network)));
            // The other family is never inside.
            let other: IpAddr = if v4 { "::1".parse().unwrap() } else { "127.0.0.1".parse().unwrap() };
            prop_assert!(!cidr.contains(other));
            // What it prints parses back to itself.
            prop_assert_eq!(cidr.to_string().parse::<Cidr>().unwrap(), cidr);
        }
    }

    #[test]
    fn parses_masks_and_contains() {
        let c: Cidr = "203.0.113.77/24".parse().unwrap();
        assert_eq!(c.to_string(), "203.0.113.0/24");
        assert!(c.contains("203.0.113.1".parse().unwrap()));
        assert!(!c.contains("203.0.114.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        let v6: Cidr = "2001:db8::1/32".parse().unwrap();
        assert!(v6.contains("2001:db8:ffff::".parse().unwrap()));
        assert_eq!(Cidr::client_prefix("2001:db8:1:2:3::9".parse().unwrap()).to_string(), "2001:db8:1::/56");
    }

    #[test]
    fn rejects_bad_networks() {
        for bad in ["10.0.0.0", "10.0.0.0/33", "x/8", "::/129", "10.0.0.0/-1"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }
}

/// Open connections per client address, with a limit: what keeps one address from holding
/// every connection a listener allows (the DNS TCP listener, the gateway's listeners).
///
/// ```
/// use meridian_dns::net::ConnectionsPerClient;
/// let limit = ConnectionsPerClient::new(2);
/// let ip = "192.0.2.1".parse().unwrap();
/// let a = limit.open(ip).unwrap();
/// let _b = limit.open(ip).unwrap();
/// assert!(limit.open(ip).is_none());
/// drop(a);
/// assert!(limit.open(ip).is_some());
/// ```
#[derive(Debug, Clone)]
pub struct ConnectionsPerClient {
    max: usize,
    open: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>>,
}

/// One counted connection; dropping it gives the place back.
#[derive(Debug)]
pub struct ClientConnection {
    client: IpAddr,
    open: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>>,
}

impl ConnectionsPerClient {
    pub fn new(max: usize) -> Self {
        ConnectionsPerClient { max, open: Default::default() }
    }

    /// Counts a new connection from `client`, or `None` when it already has `max` open.
    pub fn open(&self, client: IpAddr) -> Option<ClientConnection> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(client).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(ClientConnection { client, open: self.open.clone() })
    }

    /// Counts a connection from `client` even past the limit (its caller has asked one of
    /// the client's other connections to close).
    pub fn open_past_limit(&self, client: IpAddr) -> ClientConnection {
        *self.open.lock().unwrap_or_else(|p| p.into_inner()).entry(client).or_insert(0) += 1;
        ClientConnection { client, open: self.open.clone() }
    }
}

impl Drop for ClientConnection {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.client);
            }
        }
    }
}
