//! What the rest of the daemon may read of a running sandbox: who it runs for (`Caller`), what it was given
//! (profile, integrations, secrets, what its responses are masked with, its CA), what it has done
//! (`Stats`), the addresses its DNS lookups returned (`Resolved`), and the `Registry` that finds a sandbox
//! by id or by address. The data plane reads sandboxes through this module only; `lifecycle` alone makes
//! and ends them.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use crate::config::{Egress, Integration, Profile, Secrets};
use crate::protocol::SandboxInfo;
use crate::redact::profiles::ProfileRedaction;
use crate::sandbox::ca::SandboxCa;
use crate::sandbox::pool::Slot;

/// Addresses a sandbox's `Resolved` holds; past this it starts over (the next lookups fill it again).
const MAX_RESOLVED_ADDRESSES: usize = 1024;
/// Names one address is remembered for (a CDN's address answers for many).
const MAX_NAMES_PER_ADDRESS: usize = 8;

/// Who is calling, as the kernel reported it on the control socket.
#[derive(Debug, Clone)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub user: String,
    pub group_names: Vec<String>,
}

impl Caller {
    pub fn lookup(uid: u32, gid: u32, groups: Vec<u32>) -> io::Result<Caller> {
        let user = user_name(uid).unwrap_or_else(|| uid.to_string());
        let mut group_names: Vec<String> = std::iter::once(gid)
            .chain(groups.iter().copied())
            .filter_map(group_name)
            .collect();
        group_names.dedup();
        Ok(Caller {
            uid,
            gid,
            groups,
            user,
            group_names,
        })
    }
}

#[derive(Debug, Default)]
pub struct Stats {
    pub connections: AtomicU64,
    pub active: AtomicU64,
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
    pub dns_inflight: AtomicU64,
    /// Bytes of request bodies held whole in the daemon's memory to be hashed for an AWS signature.
    pub signing_held: AtomicU64,
}

impl Stats {
    /// Counts what a connection or request carried each way.
    pub fn add_bytes(&self, up: u64, down: u64) {
        self.bytes_up.fetch_add(up, Ordering::Relaxed);
        self.bytes_down.fetch_add(down, Ordering::Relaxed);
    }
}

/// A live sandbox, as the proxies and `sandbox ls` see it.
#[derive(Debug)]
pub struct Sandbox {
    pub id: String,
    pub caller: Caller,
    pub profile: Profile,
    /// The profile's integrations and the secrets as they were when the sandbox started: a reload
    /// changes what new sandboxes get, never what a running one was given.
    pub integrations: Vec<Integration>,
    pub secrets: Arc<Secrets>,
    /// What its responses are masked with: every form of those secrets (shared with the sandboxes given
    /// the same integrations and secrets).
    pub redaction: Arc<ProfileRedaction>,
    /// This sandbox's own CA; its key never leaves the daemon's memory.
    pub ca: SandboxCa,
    pub pid: u32,
    pub command: String,
    pub started: Instant,
    pub slot: Slot,
    pub stats: Stats,
    /// Under `egress = "deny"`, the addresses the DNS relay gave this sandbox for the names it may reach.
    pub resolved: Resolved,
}

impl Sandbox {
    pub fn egress_allowed(&self) -> bool {
        self.profile.egress == Egress::Allow
    }

    /// Whether `host` is one of this sandbox's integration hosts or in its profile's `allow_hosts`.
    pub fn names_host(&self, host: &str) -> bool {
        self.integrations
            .iter()
            .flat_map(|integration| &integration.hosts)
            .chain(&self.profile.allow_hosts)
            .any(|pattern| pattern.matches(host))
    }

    pub fn info(&self) -> SandboxInfo {
        SandboxInfo {
            id: self.id.clone(),
            user: self.caller.user.clone(),
            uid: self.caller.uid,
            profile: self.profile.name.clone(),
            pid: self.pid,
            command: self.command.clone(),
            age_secs: self.started.elapsed().as_secs(),
            connections: self.stats.connections.load(Ordering::Relaxed),
            bytes_up: self.stats.bytes_up.load(Ordering::Relaxed),
            bytes_down: self.stats.bytes_down.load(Ordering::Relaxed),
        }
    }
}

fn user_name(uid: u32) -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|user| user.name)
}

fn group_name(gid: u32) -> Option<String> {
    nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
        .ok()
        .flatten()
        .map(|group| group.name)
}

/// The addresses the relay's answers gave one sandbox, each with the names (lower case, no trailing dot)
/// it was the answer for. Kept for the sandbox's life, not for the records' TTL: a program may connect
/// long after its lookup, and the address was the name's when the sandbox's resolver said so.
#[derive(Debug, Default)]
pub struct Resolved {
    names: Mutex<HashMap<IpAddr, Vec<String>>>,
}

impl Resolved {
    pub fn remember(&self, name: &str, addresses: &[IpAddr]) {
        let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        let mut names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        for address in addresses {
            if names.len() >= MAX_RESOLVED_ADDRESSES && !names.contains_key(address) {
                names.clear();
            }
            let known = names.entry(*address).or_default();
            if !known.contains(&name) && known.len() < MAX_NAMES_PER_ADDRESS {
                known.push(name.clone());
            }
        }
    }

    /// Whether an answer gave `address` for `name`.
    pub fn resolves(&self, address: IpAddr, name: &str) -> bool {
        let name = name.strip_suffix('.').unwrap_or(name);
        let names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        names
            .get(&address)
            .is_some_and(|known| known.iter().any(|n| n.eq_ignore_ascii_case(name)))
    }

    /// The first name an answer gave `address` for, if any did.
    pub fn name_of(&self, address: IpAddr) -> Option<String> {
        let names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        names.get(&address).and_then(|known| known.first().cloned())
    }
}

/// A live sandbox and the addresses it is found at.
type Entry = (Arc<Sandbox>, Vec<IpAddr>);

/// The live sandboxes, by id and by each of their addresses.
#[derive(Default)]
pub struct Registry {
    by_id: Mutex<HashMap<String, Entry>>,
    by_addr: RwLock<HashMap<IpAddr, Arc<Sandbox>>>,
}

impl Registry {
    /// The sandbox a connection came from, by its source address (spoofing is dropped by nftables).
    pub fn by_addr(&self, addr: IpAddr) -> Option<Arc<Sandbox>> {
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(addr),
            v4 => v4,
        };
        self.by_addr
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&addr)
            .cloned()
    }

    /// Adds a sandbox, found from now on at `addresses`.
    pub fn insert(&self, sandbox: &Arc<Sandbox>, addresses: Vec<IpAddr>) {
        let mut by_addr = self.by_addr.write().unwrap_or_else(|e| e.into_inner());
        for address in &addresses {
            by_addr.insert(*address, sandbox.clone());
        }
        drop(by_addr);
        self.by_id
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(sandbox.id.clone(), (sandbox.clone(), addresses));
    }

    pub fn remove(&self, id: &str) {
        let removed = self
            .by_id
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        if let Some((_, addresses)) = removed {
            let mut by_addr = self.by_addr.write().unwrap_or_else(|e| e.into_inner());
            for address in addresses {
                by_addr.remove(&address);
            }
        }
    }

    /// Every live sandbox.
    pub fn all(&self) -> Vec<Arc<Sandbox>> {
        let by_id = self.by_id.lock().unwrap_or_else(|e| e.into_inner());
        by_id.values().map(|(sandbox, _)| sandbox.clone()).collect()
    }

    pub fn len(&self) -> usize {
        self.by_id.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolved_addresses_answer_for_their_own_names_only() {
        let resolved = Resolved::default();
        let cdn = IpAddr::from([192, 0, 2, 7]);
        let other = IpAddr::from([192, 0, 2, 8]);
        resolved.remember("API.Example.com.", &[cdn]);
        resolved.remember("www.example.com", &[cdn]);
        assert!(resolved.resolves(cdn, "api.example.com"));
        assert!(resolved.resolves(cdn, "WWW.example.com."));
        assert!(!resolved.resolves(cdn, "evil.example.com"));
        assert!(!resolved.resolves(other, "api.example.com"));
        assert_eq!(resolved.name_of(cdn).as_deref(), Some("api.example.com"));
        assert_eq!(resolved.name_of(other), None);
        for n in 0..MAX_NAMES_PER_ADDRESS + 4 {
            resolved.remember(&format!("n{n}.example.com"), &[cdn]);
        }
        assert_eq!(
            resolved.names.lock().unwrap()[&cdn].len(),
            MAX_NAMES_PER_ADDRESS
        );
        let many: Vec<IpAddr> = (0..MAX_RESOLVED_ADDRESSES as u32)
            .map(|n| IpAddr::from((0x0a00_0000 + n).to_be_bytes()))
            .collect();
        resolved.remember("many.example.com", &many);
        assert!(resolved.names.lock().unwrap().len() <= MAX_RESOLVED_ADDRESSES);
        assert!(resolved.resolves(many[many.len() - 1], "many.example.com"));
    }
}
