//! IP address management for one server: sessions get their physical
//! address on the server's subnet from a configured pool (DESIGN.md §3.3;
//! the virtual address starts equal to it).
//!
//! Sans I/O: [`Ipam`] is a plain value. The caller persists it (it is
//! `serde`) after every change and loads it after a restart; loading checks
//! it again ([`Ipam`] deserializes through [`IpamState`]).
//!
//! - [`Ipam::allocate`]: the next free pool address after the last one
//!   handed out (next fit: an address just released is taken again only
//!   after the rest of the pool, so stale ARP entries and connection state
//!   for it elsewhere have time to go away);
//! - [`Ipam::release`]: the session is gone (or has left the subnet);
//! - [`Ipam::reserve`]: a known session keeps a known address — re-adoption
//!   after a restart, or a session that arrives by migration with its
//!   address (which may lie outside this server's pool: another server's
//!   pool on the same subnet).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// At most this many addresses in one pool (a /16), and at most this many
/// leases in all (pool plus reserved addresses from elsewhere).
pub const MAX_POOL: u32 = 65_536;

/// Why an address could not be given, taken or returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    #[error("bad address pool {pool:?}: {reason}")]
    BadPool { pool: String, reason: String },
    #[error("address pool {pool} exhausted: all {size} addresses are leased")]
    Exhausted { pool: Pool, size: u32 },
    #[error("address {address} is taken by session {by}")]
    Taken { address: Ipv4Addr, by: String },
    #[error("address {0} is excluded from use on this server")]
    Excluded(Ipv4Addr),
    #[error("address {address} is not leased to session {session}")]
    NotLeased { address: Ipv4Addr, session: String },
    #[error("session {0:?} already holds address {1}")]
    SessionHasAddress(String, Ipv4Addr),
    #[error("too many leases ({0}), the bound is {MAX_POOL}")]
    TooManyLeases(usize),
    #[error("invalid session id {0:?}")]
    BadSession(String),
}

/// An inclusive range of IPv4 addresses, written `10.1.0.100-10.1.0.199`,
/// or a prefix `10.1.0.128/25` (all its addresses but network and
/// broadcast; /31 and /32 as they are).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    first: Ipv4Addr,
    last: Ipv4Addr,
}

impl Pool {
    pub fn new(first: Ipv4Addr, last: Ipv4Addr) -> Result<Pool, IpamError> {
        let bad = |reason: &str| IpamError::BadPool {
            pool: format!("{first}-{last}"),
            reason: reason.into(),
        };
        let (f, l) = (u32::from(first), u32::from(last));
        if f > l {
            return Err(bad("the first address is above the last"));
        }
        if l - f >= MAX_POOL {
            return Err(bad(&format!("more than {MAX_POOL} addresses")));
        }
        for a in [first, last] {
            if a.is_unspecified() || a.is_broadcast() || a.is_multicast() || a.is_loopback() {
                return Err(bad(&format!("{a} cannot be a host's address")));
            }
        }
        Ok(Pool { first, last })
    }

    pub fn first(&self) -> Ipv4Addr {
        self.first
    }
    pub fn last(&self) -> Ipv4Addr {
        self.last
    }

    /// How many addresses the pool holds.
    pub fn size(&self) -> u32 {
        u32::from(self.last) - u32::from(self.first) + 1
    }

    pub fn contains(&self, a: Ipv4Addr) -> bool {
        (u32::from(self.first)..=u32::from(self.last)).contains(&u32::from(a))
    }
}

impl fmt::Display for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl FromStr for Pool {
    type Err = IpamError;

    fn from_str(s: &str) -> Result<Pool, IpamError> {
        let bad = |reason: &str| IpamError::BadPool {
            pool: s.into(),
            reason: reason.into(),
        };
        let addr = |t: &str| {
            t.trim()
                .parse::<Ipv4Addr>()
                .map_err(|_| bad(&format!("{:?} is not an IPv4 address", t.trim())))
        };
        if let Some((a, b)) = s.split_once('-') {
            return Pool::new(addr(a)?, addr(b)?);
        }
        if let Some((a, len)) = s.split_once('/') {
            let len: u8 = len
                .trim()
                .parse()
                .ok()
                .filter(|l| *l <= 32)
                .ok_or_else(|| bad("the prefix length must be 0-32"))?;
            let net = u32::from(addr(a)?);
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            if net & !mask != 0 {
                return Err(bad("host bits set after the prefix"));
            }
            let (mut f, mut l) = (net, net | !mask);
            if len < 31 {
                // Neither the network nor the broadcast address.
                f += 1;
                l -= 1;
            }
            return Pool::new(Ipv4Addr::from(f), Ipv4Addr::from(l));
        }
        Err(bad("expected FIRST-LAST or ADDRESS/PREFIX"))
    }
}

impl Serialize for Pool {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Pool {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Pool, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The allocator of one server. Serialized as [`IpamState`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "IpamState", into = "IpamState")]
pub struct Ipam {
    pool: Pool,
    exclude: BTreeSet<Ipv4Addr>,
    leases: BTreeMap<Ipv4Addr, String>,
    by_session: BTreeMap<String, Ipv4Addr>,
    /// Where the next search starts (index into the pool).
    next: u32,
}

/// The persisted form of an [`Ipam`], checked again on load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpamState {
    pub pool: Pool,
    #[serde(default)]
    pub exclude: BTreeSet<Ipv4Addr>,
    /// Address -> session id.
    #[serde(default)]
    pub leases: BTreeMap<Ipv4Addr, String>,
    #[serde(default)]
    pub next: u32,
}

impl TryFrom<IpamState> for Ipam {
    type Error = IpamError;

    fn try_from(s: IpamState) -> Result<Ipam, IpamError> {
        let mut ipam = Ipam::new(s.pool, s.exclude);
        if s.leases.len() > MAX_POOL as usize {
            return Err(IpamError::TooManyLeases(s.leases.len()));
        }
        for (a, id) in s.leases {
            ipam.reserve(a, &id)?;
        }
        ipam.next = s.next % ipam.pool.size();
        Ok(ipam)
    }
}

impl From<Ipam> for IpamState {
    fn from(i: Ipam) -> IpamState {
        IpamState {
            pool: i.pool,
            exclude: i.exclude,
            leases: i.leases,
            next: i.next,
        }
    }
}

fn check_session(id: &str) -> Result<(), IpamError> {
    if id.is_empty() || id.len() > 128 || id.chars().any(char::is_control) {
        return Err(IpamError::BadSession(id.into()));
    }
    Ok(())
}

impl Ipam {
    /// An empty allocator over `pool`; `exclude`d addresses (the server's
    /// own, the gateway, anything else on the subnet) are never handed out
    /// nor reserved.
    pub fn new(pool: Pool, exclude: impl IntoIterator<Item = Ipv4Addr>) -> Ipam {
        Ipam {
            pool,
            exclude: exclude.into_iter().collect(),
            leases: BTreeMap::new(),
            by_session: BTreeMap::new(),
            next: 0,
        }
    }

    pub fn pool(&self) -> Pool {
        self.pool
    }

    /// Address -> session, in address order.
    pub fn leases(&self) -> impl Iterator<Item = (Ipv4Addr, &str)> {
        self.leases.iter().map(|(a, s)| (*a, s.as_str()))
    }

    /// The address a session holds.
    pub fn address_of(&self, session: &str) -> Option<Ipv4Addr> {
        self.by_session.get(session).copied()
    }

    /// Addresses of the pool still free.
    pub fn free(&self) -> u32 {
        let used = self
            .leases
            .keys()
            .filter(|a| self.pool.contains(**a))
            .count();
        let excluded = self
            .exclude
            .iter()
            .filter(|a| self.pool.contains(**a) && !self.leases.contains_key(*a))
            .count();
        self.pool
            .size()
            .saturating_sub(u32::try_from(used + excluded).unwrap_or(u32::MAX))
    }

    /// Gives `session` an address of the pool. A session that already holds
    /// one gets the same one again (a retried request is harmless).
    pub fn allocate(&mut self, session: &str) -> Result<Ipv4Addr, IpamError> {
        check_session(session)?;
        if let Some(a) = self.by_session.get(session) {
            return Ok(*a);
        }
        let size = self.pool.size();
        let first = u32::from(self.pool.first);
        for i in 0..size {
            let idx = (self.next + i) % size;
            let a = Ipv4Addr::from(first + idx);
            if self.exclude.contains(&a) || self.leases.contains_key(&a) {
                continue;
            }
            self.insert(a, session);
            self.next = (idx + 1) % size;
            return Ok(a);
        }
        Err(IpamError::Exhausted {
            pool: self.pool,
            size,
        })
    }

    /// Records that `session` holds `address` (in the pool or not). Refused
    /// when another session holds it, it is excluded, or the session holds
    /// another address. Reserving the same pair again is harmless.
    pub fn reserve(&mut self, address: Ipv4Addr, session: &str) -> Result<(), IpamError> {
        check_session(session)?;
        if self.exclude.contains(&address) {
            return Err(IpamError::Excluded(address));
        }
        if address.is_unspecified()
            || address.is_broadcast()
            || address.is_multicast()
            || address.is_loopback()
        {
            return Err(IpamError::Excluded(address));
        }
        match self.leases.get(&address) {
            Some(by) if by == session => return Ok(()),
            Some(by) => {
                return Err(IpamError::Taken {
                    address,
                    by: by.clone(),
                })
            }
            None => {}
        }
        if let Some(other) = self.by_session.get(session) {
            return Err(IpamError::SessionHasAddress(session.into(), *other));
        }
        if self.leases.len() >= MAX_POOL as usize {
            return Err(IpamError::TooManyLeases(self.leases.len()));
        }
        self.insert(address, session);
        Ok(())
    }

    /// Returns `session`'s address to the pool.
    pub fn release(&mut self, address: Ipv4Addr, session: &str) -> Result<(), IpamError> {
        match self.leases.get(&address) {
            Some(by) if by == session => {
                self.leases.remove(&address);
                self.by_session.remove(session);
                Ok(())
            }
            _ => Err(IpamError::NotLeased {
                address,
                session: session.into(),
            }),
        }
    }

    /// Returns whatever address `session` holds (none: nothing to do).
    pub fn release_session(&mut self, session: &str) -> Option<Ipv4Addr> {
        let a = self.by_session.remove(session)?;
        self.leases.remove(&a);
        Some(a)
    }

    fn insert(&mut self, a: Ipv4Addr, session: &str) {
        self.leases.insert(a, session.to_string());
        self.by_session.insert(session.to_string(), a);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn small() -> Ipam {
        Ipam::new("10.1.0.100-10.1.0.103".parse().unwrap(), [ip("10.1.0.101")])
    }

    #[test]
    fn pools_parse_and_bad_pools_are_refused() {
        let p: Pool = "10.1.0.100-10.1.0.199".parse().unwrap();
        assert_eq!(
            (p.first(), p.last(), p.size()),
            (ip("10.1.0.100"), ip("10.1.0.199"), 100)
        );
        assert_eq!(p.to_string(), "10.1.0.100-10.1.0.199");
        let p: Pool = "10.1.0.128/25".parse().unwrap();
        assert_eq!((p.first(), p.last()), (ip("10.1.0.129"), ip("10.1.0.254")));
        assert_eq!("10.1.0.7/32".parse::<Pool>().unwrap().size(), 1);
        for bad in [
            "10.1.0.199-10.1.0.100",
            "10.1.0.100",
            "10.1.0.100-",
            "10.1.0.300-10.1.0.301",
            "10.1.0.1/33",
            "10.1.0.1/24",
            "10.0.0.0/8",
            "0.0.0.0-0.0.0.5",
            "224.0.0.1-224.0.0.9",
            "",
        ] {
            let e = bad.parse::<Pool>().unwrap_err();
            assert!(matches!(e, IpamError::BadPool { .. }), "{bad}: {e}");
            assert!(e.to_string().contains("bad address pool"), "{e}");
        }
    }

    #[test]
    fn allocation_skips_excluded_and_exhaustion_is_a_clear_error() {
        let mut i = small();
        assert_eq!(i.free(), 3);
        assert_eq!(i.allocate("a").unwrap(), ip("10.1.0.100"));
        assert_eq!(i.allocate("b").unwrap(), ip("10.1.0.102"));
        assert_eq!(i.allocate("c").unwrap(), ip("10.1.0.103"));
        // Asking again gives the same address.
        assert_eq!(i.allocate("b").unwrap(), ip("10.1.0.102"));
        let e = i.allocate("d").unwrap_err();
        assert_eq!(
            e.to_string(),
            "address pool 10.1.0.100-10.1.0.103 exhausted: all 4 addresses are leased"
        );
        assert_eq!(i.free(), 0);
        assert_eq!(i.address_of("c"), Some(ip("10.1.0.103")));
    }

    #[test]
    fn released_addresses_are_reused_after_the_rest_of_the_pool() {
        let mut i = small();
        let a = i.allocate("a").unwrap();
        i.release(a, "a").unwrap();
        // Next fit: .102 and .103 come first.
        assert_eq!(i.allocate("b").unwrap(), ip("10.1.0.102"));
        assert_eq!(i.allocate("c").unwrap(), ip("10.1.0.103"));
        assert_eq!(i.allocate("d").unwrap(), a);
        assert!(i.allocate("e").is_err());
        assert_eq!(i.release_session("c"), Some(ip("10.1.0.103")));
        assert_eq!(i.allocate("e").unwrap(), ip("10.1.0.103"));
        // Only the holder can release.
        assert!(matches!(
            i.release(a, "e"),
            Err(IpamError::NotLeased { .. })
        ));
        assert_eq!(i.release_session("nobody"), None);
    }

    #[test]
    fn reserve_of_a_taken_or_excluded_address_is_refused() {
        let mut i = small();
        let a = i.allocate("a").unwrap();
        assert_eq!(
            i.reserve(a, "b").unwrap_err(),
            IpamError::Taken {
                address: a,
                by: "a".into()
            }
        );
        assert_eq!(
            i.reserve(ip("10.1.0.101"), "b").unwrap_err(),
            IpamError::Excluded(ip("10.1.0.101"))
        );
        // Harmless again for the holder; a second address is not.
        i.reserve(a, "a").unwrap();
        assert!(matches!(
            i.reserve(ip("10.1.0.103"), "a"),
            Err(IpamError::SessionHasAddress(..))
        ));
        // A migrated session keeps an address of another server's pool.
        i.reserve(ip("10.1.0.150"), "m").unwrap();
        assert_eq!(i.address_of("m"), Some(ip("10.1.0.150")));
        assert_eq!(i.free(), 2);
        // Reserved pool addresses are not handed out.
        i.reserve(ip("10.1.0.102"), "r").unwrap();
        assert_eq!(i.allocate("n").unwrap(), ip("10.1.0.103"));
        assert!(i.allocate("o").is_err());
        assert!(i.reserve(ip("0.0.0.0"), "z").is_err());
        assert!(i.allocate("").is_err());
    }

    #[test]
    fn state_round_trips_and_is_checked_on_load() {
        let mut i = small();
        i.allocate("a").unwrap();
        i.reserve(ip("10.1.0.150"), "m").unwrap();
        let json = serde_json::to_string(&i).unwrap();
        let back: Ipam = serde_json::from_str(&json).unwrap();
        assert_eq!(back, i);
        assert_eq!(back.address_of("m"), Some(ip("10.1.0.150")));
        // Next fit survives a restart.
        let mut back = back;
        assert_eq!(back.allocate("b").unwrap(), ip("10.1.0.102"));
        // A state with one address leased twice, or leased while excluded,
        // is refused.
        let bad = r#"{"pool":"10.1.0.100-10.1.0.103","exclude":["10.1.0.101"],
                      "leases":{"10.1.0.101":"x"}}"#;
        assert!(serde_json::from_str::<Ipam>(bad).is_err());
        let bad = r#"{"pool":"10.1.0.100-10.1.0.103",
                      "leases":{"10.1.0.100":"x","10.1.0.102":"x"}}"#;
        assert!(serde_json::from_str::<Ipam>(bad).is_err());
        let bad = r#"{"pool":"10.1.0.103-10.1.0.100"}"#;
        assert!(serde_json::from_str::<Ipam>(bad).is_err());
    }
}
