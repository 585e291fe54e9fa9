//! Connections per client address in one room, over all its listeners (`max_conns_per_ip`).
//!
//! One counter per address, O(1) per accept; a connection holds an
//! [`IpSlot`] for its whole life (handshakes included) and gives it back
//! when it ends. IPv6 addresses count per /64 (one host's or one
//! customer's prefix: a client that owns a /64 could otherwise take a fresh
//! address per connection); IPv4-mapped IPv6 addresses count as IPv4.
//! Off (no map at all) when the limit is 0.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;

use parking_lot::Mutex;

/// What addresses are counted by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum IpKey {
    /// An IPv4 address.
    V4(u32),
    /// The first 64 bits of an IPv6 address.
    V6(u64),
}

impl From<IpAddr> for IpKey {
    fn from(ip: IpAddr) -> IpKey {
        match ip {
            IpAddr::V4(v4) => IpKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpKey::V4(u32::from(v4)),
                None => IpKey::V6(prefix64(v6)),
            },
        }
    }
}

fn prefix64(ip: Ipv6Addr) -> u64 {
    (u128::from(ip) >> 64) as u64
}

/// The per-address counters of one room (every listener counts here).
pub(crate) struct PerIp {
    max: usize,
    counts: Mutex<HashMap<IpKey, usize>>,
}

impl PerIp {
    /// Counters allowing `max` connections per address; `None` for 0 (off).
    pub(crate) fn new(max: usize) -> Option<Arc<PerIp>> {
        (max > 0).then(|| {
            Arc::new(PerIp {
                max,
                counts: Mutex::new(HashMap::new()),
            })
        })
    }

    /// A slot for one more connection from `ip`, or `None` when it holds the maximum.
    pub(crate) fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        let key = IpKey::from(ip);
        let mut counts = self.counts.lock();
        let n = counts.entry(key).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            owner: Arc::clone(self),
            key,
        })
    }

    /// Addresses with at least one connection.
    #[cfg(test)]
    fn addresses(&self) -> usize {
        self.counts.lock().len()
    }
}

/// One connection's place in its address's count; given back on drop.
pub(crate) struct IpSlot {
    owner: Arc<PerIp>,
    key: IpKey,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut counts = self.owner.counts.lock();
        if let Some(n) = counts.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn counts_per_address_and_gives_back() {
        let p = PerIp::new(2).expect("on");
        let a1 = p.acquire(ip("10.0.0.1")).expect("first");
        let a2 = p.acquire(ip("10.0.0.1")).expect("second");
        assert!(p.acquire(ip("10.0.0.1")).is_none(), "third refused");
        let b = p.acquire(ip("10.0.0.2")).expect("another address");
        drop(a1);
        let a3 = p.acquire(ip("10.0.0.1")).expect("a slot came back");
        assert_eq!(p.addresses(), 2);
        drop((a2, a3, b));
        assert_eq!(p.addresses(), 0, "empty counters are removed");
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_v4_as_v4() {
        let p = PerIp::new(1).expect("on");
        let _a = p.acquire(ip("2001:db8:1:2::1")).expect("first");
        assert!(p.acquire(ip("2001:db8:1:2:ffff::9")).is_none(), "same /64");
        let _b = p.acquire(ip("2001:db8:1:3::1")).expect("another /64");
        let _c = p.acquire(ip("192.0.2.7")).expect("v4");
        assert!(p.acquire(ip("::ffff:192.0.2.7")).is_none(), "mapped = v4");
    }

    #[test]
    fn zero_is_off() {
        assert!(PerIp::new(0).is_none());
    }
}
