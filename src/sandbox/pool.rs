//! The sandbox address pool: slot N is the N-th /30 block of `daemon.subnet` (host side .1,
//! sandbox .2) and, when `daemon.subnet6` is set, the N-th /64 inside it (host ::1, sandbox ::2).

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

pub const PREFIX_V4: u8 = 30;
pub const PREFIX_V6: u8 = 64;

/// One sandbox's addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub index: u32,
    pub host_v4: Ipv4Addr,
    pub sandbox_v4: Ipv4Addr,
    pub prefix_v4: u8,
    pub host_v6: Option<Ipv6Addr>,
    pub sandbox_v6: Option<Ipv6Addr>,
    pub prefix_v6: u8,
}

impl Slot {
    /// At most "sbx" + 10 digits: fits IFNAMSIZ (15 bytes and a NUL) for every u32 index.
    pub fn host_ifname(&self) -> String {
        format!("sbx{}", self.index)
    }
}

#[derive(Debug)]
pub struct AddressPool {
    subnet: Ipv4Net,
    subnet6: Option<Ipv6Net>,
    capacity: u32,
    /// Every index below `next` has been handed out at least once.
    next: u32,
    /// Released indices below `next`; so the lowest free slot is the first of these, or `next`.
    released: BTreeSet<u32>,
}

impl AddressPool {
    pub fn new(subnet: Ipv4Net, subnet6: Option<Ipv6Net>) -> Self {
        let v4 = blocks(subnet.prefix_len(), PREFIX_V4);
        let v6 = subnet6.map_or(u32::MAX, |net| blocks(net.prefix_len(), PREFIX_V6));
        AddressPool {
            subnet: subnet.trunc(),
            subnet6: subnet6.map(|net| net.trunc()),
            capacity: v4.min(v6),
            next: 0,
            released: BTreeSet::new(),
        }
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// The lowest free slot, or None when all are in use.
    pub fn allocate(&mut self) -> Option<Slot> {
        let index = match self.released.pop_first() {
            Some(index) => index,
            None if self.next < self.capacity => {
                self.next += 1;
                self.next - 1
            }
            None => return None,
        };
        let v4 = u32::from(self.subnet.network()) + index * 4;
        let v6 = self
            .subnet6
            .map(|net| u128::from(net.network()) + (u128::from(index) << 64));
        Some(Slot {
            index,
            host_v4: Ipv4Addr::from(v4 + 1),
            sandbox_v4: Ipv4Addr::from(v4 + 2),
            prefix_v4: PREFIX_V4,
            host_v6: v6.map(|base| Ipv6Addr::from(base + 1)),
            sandbox_v6: v6.map(|base| Ipv6Addr::from(base + 2)),
            prefix_v6: PREFIX_V6,
        })
    }

    /// Returns a slot to the pool. Releasing a free slot again is harmless.
    pub fn release(&mut self, index: u32) {
        if index < self.next {
            self.released.insert(index);
        }
    }
}

/// How many blocks of length `block_prefix` a network of length `prefix` holds, saturating.
fn blocks(prefix: u8, block_prefix: u8) -> u32 {
    block_prefix
        .checked_sub(prefix)
        .map_or(0, |bits| u32::try_from(1u128 << bits).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests;
