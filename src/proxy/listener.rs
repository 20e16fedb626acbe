//! The front door: the transparent listeners, and who may connect where. nftables TPROXYs every TCP
//! connection a sandbox opens to a listener here (IP_TRANSPARENT: the accepted socket's local address is the
//! original destination), and the accept loop hands it to a worker. Admission finds the sandbox by the
//! connection's source address and refuses destinations a sandbox may never reach (the host itself,
//! loopback, link-local and metadata addresses, other sandboxes) or that its profile does not allow.

use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use nix::sys::socket::{
    self, sockopt, AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage,
};
use tokio::net::{TcpListener, TcpStream};

use crate::kernel::host_addresses;
use crate::kernel::marks::SOCKET_MARK;
use crate::proxy::context::ProxyContext;
use crate::proxy::workers::Workers;
use crate::sandbox::live::Sandbox;

/// Open relayed connections one sandbox may hold, so it cannot exhaust the daemon's descriptors.
pub const MAX_CONNECTIONS_PER_SANDBOX: u64 = 4096;

/// A socket bound with IP_TRANSPARENT (IPV6_TRANSPARENT): as a listener it accepts connections TPROXYed to
/// it; as a UDP socket it may send from the original destination address of a redirected datagram.
pub fn transparent_socket(addr: SocketAddr, kind: SockType) -> io::Result<OwnedFd> {
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let fd = socket::socket(
        family,
        kind,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    match addr {
        SocketAddr::V4(_) => socket::setsockopt(&fd, sockopt::IpTransparent, &true)?,
        SocketAddr::V6(_) => {
            socket::setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
            let on: libc::c_int = 1;
            // SAFETY: setsockopt reads one c_int from a valid pointer.
            let result = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_IPV6,
                    libc::IPV6_TRANSPARENT,
                    (&on as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if result != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
    if kind == SockType::Stream {
        unpaced_congestion_control(&fd);
        socket::listen(&fd, Backlog::new(1024).unwrap_or(Backlog::MAXCONN))?;
    }
    Ok(fd)
}

/// Congestion control for the connections sandboxes open to the daemon, in order of preference. A
/// sandbox's link is a veth pair inside this machine, with nothing to probe or pace for; BBR, a common
/// default, paces every send with a timer, which on a virtual machine costs the daemon and the sandboxed
/// client more than copying the bytes (measured on 2 cores: 1 MiB bodies 800 -> 700 us of daemon CPU per
/// MiB, 0.52x -> 0.57x of direct). Connections to upstreams keep the system's choice.
const SANDBOX_CONGESTION_CONTROL: [&str; 2] = ["cubic", "reno"];

/// Sets a listener's congestion control, which the connections it accepts inherit.
fn unpaced_congestion_control(listener: &OwnedFd) {
    for name in SANDBOX_CONGESTION_CONTROL {
        if socket::setsockopt(listener, sockopt::TcpCongestion, &name.into()).is_ok() {
            return;
        }
    }
    tracing::debug!("neither cubic nor reno congestion control is available; keeping the default");
}

pub fn tcp_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::from_std(std::net::TcpListener::from(transparent_socket(
        addr,
        SockType::Stream,
    )?))
}

/// Accepts forever and hands each connection to a worker, where it stays until it closes. An accept error
/// (EMFILE...) is logged and retried after a pause instead of spinning.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    context: Arc<ProxyContext>,
    workers: Arc<Workers>,
    handle: F,
) where
    F: Fn(Arc<ProxyContext>, TcpStream, SocketAddr) -> Fut + Copy + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((client, peer)) => {
                if let Err(error) = socket::setsockopt(&client, sockopt::Mark, &SOCKET_MARK) {
                    tracing::debug!(%error, "marking an accepted connection");
                }
                let Ok(client) = client.into_std() else {
                    continue;
                };
                let context = context.clone();
                workers.spawn(peer.ip(), move || async move {
                    match TcpStream::from_std(client) {
                        Ok(client) => handle(context, client, peer).await,
                        Err(error) => tracing::warn!(%error, "registering a connection"),
                    }
                });
            }
            Err(error) => {
                tracing::warn!(%error, listener = ?listener.local_addr().ok(), "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The sandbox a relayed connection came from and where it was going; None (and the connection reset)
/// if it came from no live sandbox: a host process that found the listener, or a sandbox that just ended.
pub fn admit(
    context: &ProxyContext,
    client: &TcpStream,
    peer: SocketAddr,
) -> Option<(Arc<Sandbox>, SocketAddr)> {
    let destination = client.local_addr().ok()?;
    match context.sandboxes.by_addr(peer.ip()) {
        Some(sandbox) => Some((sandbox, destination)),
        None => {
            tracing::debug!(%peer, %destination, "connection from an unknown address closed");
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            let _ = socket::setsockopt(client, sockopt::Linger, &linger);
            None
        }
    }
}

/// Why this connection may not go out, if it may not. `check_egress`: whether a profile with
/// `egress = "deny"` refuses it (plain TCP to an address no allowed name resolved to).
pub fn refusal(
    context: &ProxyContext,
    sandbox: &Sandbox,
    destination: SocketAddr,
    over_limit: bool,
    check_egress: bool,
) -> Option<String> {
    if over_limit {
        return Some(format!(
            "more than {MAX_CONNECTIONS_PER_SANDBOX} open connections"
        ));
    }
    let blocked = blocked_reason(
        destination.ip(),
        &context.networks,
        &host_addresses::current(),
    );
    if let Some(reason) = blocked {
        return Some(format!("{destination} is {reason}"));
    }
    (check_egress && !sandbox.egress_allowed()).then(|| {
        format!(
            "profile {:?} does not allow {destination}: under egress = \"deny\", TCP goes only to addresses \
             the sandbox's DNS gave for its integrations' hosts and allow_hosts",
            sandbox.profile.name
        )
    })
}

/// Closes with RST so the client fails at once instead of seeing an orderly, empty connection.
pub fn reset(stream: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let _ = socket::setsockopt(&stream, sockopt::Linger, &linger);
}

pub struct ActiveConnection<'a> {
    sandbox: &'a Sandbox,
    pub over_limit: bool,
}

impl<'a> ActiveConnection<'a> {
    pub fn enter(sandbox: &'a Sandbox) -> Self {
        let before = sandbox.stats.active.fetch_add(1, Ordering::Relaxed);
        ActiveConnection {
            sandbox,
            over_limit: before >= MAX_CONNECTIONS_PER_SANDBOX,
        }
    }
}

impl Drop for ActiveConnection<'_> {
    fn drop(&mut self) {
        self.sandbox.stats.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why a sandbox may never connect to `ip`, if it may not. nftables already rejects most of these before
/// the relay sees them; this is the second wall, and it also covers IPv4-mapped IPv6 forms.
pub fn blocked_reason(
    ip: IpAddr,
    sandbox_networks: &[IpNet],
    host: &HashSet<IpAddr>,
) -> Option<&'static str> {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    const METADATA: [IpAddr; 3] = [
        IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)),
        IpAddr::V4(Ipv4Addr::new(100, 100, 100, 200)),
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
    ];
    if METADATA.contains(&ip) {
        return Some("a cloud metadata address");
    }
    let special = match ip {
        IpAddr::V4(v4) => {
            if v4.is_loopback() {
                Some("a loopback address")
            } else if v4.is_link_local() {
                Some("a link-local address")
            } else if v4.is_unspecified() || v4.octets()[0] == 0 {
                Some("an unspecified address")
            } else if v4.is_multicast() || v4.is_broadcast() {
                Some("a multicast or broadcast address")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            if v6.is_loopback() {
                Some("a loopback address")
            } else if v6.is_unspecified() {
                Some("an unspecified address")
            } else if v6.is_unicast_link_local() {
                Some("a link-local address")
            } else if v6.is_multicast() {
                Some("a multicast address")
            } else {
                None
            }
        }
    };
    if special.is_some() {
        return special;
    }
    if sandbox_networks.iter().any(|net| net.contains(&ip)) {
        return Some("in the sandbox network");
    }
    if host.contains(&ip) {
        return Some("an address of the host");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets() -> Vec<IpNet> {
        vec![
            "10.233.0.0/16".parse().unwrap(),
            "fd00:5ba:d::/48".parse().unwrap(),
        ]
    }

    #[test]
    fn the_host_and_special_addresses_are_blocked() {
        let host: HashSet<IpAddr> = ["192.0.2.10".parse().unwrap()].into();
        for (ip, why) in [
            ("127.0.0.1", "a loopback address"),
            ("::1", "a loopback address"),
            ("::ffff:127.0.0.1", "a loopback address"),
            ("169.254.169.254", "a cloud metadata address"),
            ("169.254.1.1", "a link-local address"),
            ("fe80::1", "a link-local address"),
            ("fd00:ec2::254", "a cloud metadata address"),
            ("0.0.0.0", "an unspecified address"),
            ("224.0.0.1", "a multicast or broadcast address"),
            ("10.233.0.5", "in the sandbox network"),
            ("fd00:5ba:d:7::2", "in the sandbox network"),
            ("192.0.2.10", "an address of the host"),
            ("::ffff:192.0.2.10", "an address of the host"),
        ] {
            assert_eq!(
                blocked_reason(ip.parse().unwrap(), &nets(), &host),
                Some(why),
                "{ip}"
            );
        }
    }

    #[test]
    fn connections_to_the_listeners_are_not_paced() {
        if !crate::testutil::root_or_skip("connections_to_the_listeners_are_not_paced") {
            return;
        }
        let fd = transparent_socket("127.0.0.1:0".parse().unwrap(), SockType::Stream).unwrap();
        let listener = std::net::TcpListener::from(fd);
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        let name = socket::getsockopt(&accepted, sockopt::TcpCongestion).unwrap();
        let name = name.to_string_lossy();
        let name = name.trim_end_matches('\0');
        let available =
            std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_congestion_control").unwrap();
        let want = if available.split_whitespace().any(|n| n == "cubic") {
            "cubic"
        } else {
            "reno"
        };
        assert_eq!(name, want, "available: {available}");
    }

    #[test]
    fn ordinary_destinations_pass() {
        let host: HashSet<IpAddr> = ["192.0.2.10".parse().unwrap()].into();
        for ip in ["192.0.2.11", "10.1.2.3", "2001:db8::1", "::ffff:8.8.8.8"] {
            assert_eq!(
                blocked_reason(ip.parse().unwrap(), &nets(), &host),
                None,
                "{ip}"
            );
        }
    }
}
