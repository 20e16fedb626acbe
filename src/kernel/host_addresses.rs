//! The host's own addresses, as last read from the kernel: no sandbox may reach them, and a host resolver
//! among them is one a sandbox cannot reach. Kept in a process-wide cache, refreshed every 2 s.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::{OnceLock, RwLock, RwLockReadGuard};
use std::time::Duration;

use crate::kernel::netlink::Netlink;

fn cache() -> &'static RwLock<HashSet<IpAddr>> {
    static CACHE: OnceLock<RwLock<HashSet<IpAddr>>> = OnceLock::new();
    CACHE.get_or_init(RwLock::default)
}

/// The host's addresses. A read guard, not a copy: this is asked for every connection.
pub fn current() -> RwLockReadGuard<'static, HashSet<IpAddr>> {
    cache().read().unwrap_or_else(|e| e.into_inner())
}

/// Keeps the cache current: addresses come and go (DHCP, new interfaces). Uses a netlink socket of its
/// own: the kernel refuses a second dump on a socket while one runs.
pub async fn refresh_forever(netlink: Netlink) {
    loop {
        match netlink.local_addresses().await {
            Ok(addresses) => {
                *cache().write().unwrap_or_else(|e| e.into_inner()) =
                    addresses.into_iter().collect();
            }
            Err(error) => tracing::warn!(%error, "reading the host's addresses"),
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
