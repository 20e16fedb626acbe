//! The test's network: two throwaway network namespaces joined by a veth pair, with the servers of
//! `servers` and `resolver` in them; `in_netns` to run code inside one. Everything is removed by a
//! guard's `Drop`, also on panic.
//!
//! Topology (no interface in the real host's netns, so no packet can leave the test's namespaces):
//!   H-<suffix>  the test's "host": the daemon runs here; `uplink` 10.a.b.1/24, fd77:x::1/64;
//!               a TCP service on :8080 that sandboxes must never reach.
//!   U-<suffix>  the upstream: `eth0` 10.a.b.2/24, fd77:x::2/64 and 169.254.169.254/32 (a metadata impostor);
//!               HTTP :80, TCP echo :443, UDP echo :9999, DNS :53 (upstream.test; more names with
//!               `TestNet::add_dns_name`).
//!   `tls_upstream::TlsUpstream` adds HTTPS servers on further addresses of U (interception tests).

use std::fs::{self, File};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sandbox::kernel::netns::run_in;

use super::leaks::tagged_processes;
use super::resolver::{DnsNames, DNS_NAME};
use super::servers::{Seen, Servers};
use super::tools::{fnv, ip, run_tool, tool, unique_suffix};

/// Runs `f` on a thread that entered netns `ns` (one of `ip netns`), as the daemon does in a sandbox's:
/// sockets created there stay in that netns for their whole life, whichever thread uses them later.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = Path::new("/var/run/netns").join(ns);
    let netns = File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    run_in(netns.as_fd(), f).unwrap_or_else(|e| panic!("enter netns {ns}: {e}"))
}

/// Deletes the namespaces and /etc/netns/<H> and kills whatever still runs with this test's tag.
struct NetnsGuard {
    names: Vec<String>,
    etc_dir: PathBuf,
    run_tag: String,
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        for pid in tagged_processes(&self.run_tag) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        for n in &self.names {
            let _ = Command::new(tool("ip"))
                .args(["netns", "del", n])
                .stderr(Stdio::null())
                .status();
        }
        let _ = fs::remove_dir_all(&self.etc_dir);
    }
}

pub struct TestNet {
    pub suffix: String,
    /// The "host" netns the daemon runs in.
    pub h: String,
    /// The upstream netns.
    pub u: String,
    pub h4: Ipv4Addr,
    pub u4: Ipv4Addr,
    pub h6: Ipv6Addr,
    pub u6: Ipv6Addr,
    /// An address of U that plays the cloud metadata service (H routes it to U).
    pub metadata4: Ipv4Addr,
    pub seen: Arc<Seen>,
    /// What the test resolver in U answers (at first only [`DNS_NAME`]).
    pub dns_names: DnsNames,
    servers: Servers,
    guard: NetnsGuard,
}

impl TestNet {
    /// H and U with the veth between them, upstream servers in U and the host's own service in H.
    pub fn new() -> TestNet {
        let suffix = unique_suffix();
        let (h, u) = (format!("H-{suffix}"), format!("U-{suffix}"));
        let guard = NetnsGuard {
            names: vec![h.clone(), u.clone()],
            etc_dir: Path::new("/etc/netns").join(&h),
            run_tag: suffix.clone(),
        };
        let hash = fnv(&suffix);
        // Inside 10.0.0.0/8, never the sandbox pool 10.233/16 nor 10.255/16.
        let a = match 1 + (hash % 253) as u8 {
            233 => 234,
            a => a,
        };
        let b = (hash >> 8) as u8;
        let x = (hash >> 16) as u16;
        let h4 = Ipv4Addr::new(10, a, b, 1);
        let u4 = Ipv4Addr::new(10, a, b, 2);
        let h6 = Ipv6Addr::new(0xfd77, x, 0, 0, 0, 0, 0, 1);
        let u6 = Ipv6Addr::new(0xfd77, x, 0, 0, 0, 0, 0, 2);
        let metadata4 = Ipv4Addr::new(169, 254, 169, 254);

        run_tool("ip", &["netns", "add", &h]);
        run_tool("ip", &["netns", "add", &u]);
        ip(&h, &["link", "set", "lo", "up"]);
        ip(&u, &["link", "set", "lo", "up"]);
        ip(
            &h,
            &[
                "link", "add", "uplink", "type", "veth", "peer", "name", "eth0", "netns", &u,
            ],
        );
        ip(&h, &["addr", "add", &format!("{h4}/24"), "dev", "uplink"]);
        ip(
            &h,
            &["addr", "add", &format!("{h6}/64"), "dev", "uplink", "nodad"],
        );
        ip(&u, &["addr", "add", &format!("{u4}/24"), "dev", "eth0"]);
        ip(
            &u,
            &["addr", "add", &format!("{u6}/64"), "dev", "eth0", "nodad"],
        );
        ip(
            &u,
            &["addr", "add", &format!("{metadata4}/32"), "dev", "eth0"],
        );
        ip(&h, &["link", "set", "uplink", "up"]);
        ip(&u, &["link", "set", "eth0", "up"]);
        ip(
            &h,
            &["route", "add", &format!("{metadata4}/32"), "dev", "uplink"],
        );

        let seen = Arc::new(Seen::default());
        let dns_names: DnsNames = Arc::new(Mutex::new(vec![(DNS_NAME.to_string(), u4, u6)]));
        let mut servers = Servers::default();
        servers.upstream(&u, u4, u6, &seen);
        servers.resolver(&u, &seen, &dns_names);
        servers.host_service(&h, &seen);

        TestNet {
            suffix,
            h,
            u,
            h4,
            u4,
            h6,
            u6,
            metadata4,
            seen,
            dns_names,
            servers,
            guard,
        }
    }

    /// Gives U's `eth0` the further addresses `.N` and `::N` (in its /24 and /64), for another server.
    pub fn add_u_address(&self, n: u8) -> (Ipv4Addr, Ipv6Addr) {
        let [a, b, c, _] = self.u4.octets();
        let v4 = Ipv4Addr::new(a, b, c, n);
        let s = self.u6.segments();
        let v6 = Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, u16::from(n));
        ip(
            &self.u,
            &["addr", "add", &format!("{v4}/32"), "dev", "eth0"],
        );
        ip(
            &self.u,
            &["addr", "add", &format!("{v6}/128"), "dev", "eth0", "nodad"],
        );
        (v4, v6)
    }

    /// Sends one UDP datagram from H to `to` and waits up to 2 s for the echo.
    pub fn udp_roundtrip_from_h(&self, to: SocketAddr, payload: &[u8]) -> Option<Vec<u8>> {
        let local: SocketAddr = if to.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let sock = in_netns(&self.h, move || UdpSocket::bind(local).unwrap());
        sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        sock.send_to(payload, to).unwrap();
        let mut buf = [0u8; 2048];
        sock.recv_from(&mut buf)
            .ok()
            .map(|(n, _)| buf[..n].to_vec())
    }
}
