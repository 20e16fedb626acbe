//! The plain test servers and what they saw: in U, HTTP on :80, TCP echo on U's own two addresses :443
//! and UDP echo on :9999; in H, the host's own service on :8080 that sandboxes must never reach. Each
//! server is a thread on a socket bound inside its namespace ([`tcp_listen`], [`udp_bind`]), and every
//! request, datagram and connection is recorded in [`Seen`].

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use nix::sys::socket::{
    bind, listen, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType,
    SockaddrStorage,
};
use nix::sys::time::{TimeVal, TimeValLike};

use super::net::{in_netns, TestNet};

/// Appears in every body the upstream HTTP server sends.
pub const UPSTREAM_MARKER: &str = "sbx-e2e-upstream";
/// The first line of what the host's own service (H :8080) sends.
pub const HOST_SERVICE_BANNER: &str = "sbx-e2e-host-service";
/// How often a server's blocking accept()/recv() wakes up to see whether it should stop (ms).
const SERVER_POLL: i64 = 100;

/// A socket bound to `addr` in the calling thread's network namespace (servers bind inside
/// [`in_netns`]).
fn bound_socket(addr: SocketAddr, ty: SockType) -> OwnedFd {
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(family, ty, SockFlag::SOCK_CLOEXEC, None).expect("socket");
    setsockopt(&fd, sockopt::ReuseAddr, &true).unwrap();
    if addr.is_ipv6() {
        setsockopt(&fd, sockopt::Ipv6V6Only, &true).unwrap();
    }
    // Lets accept()/recv() wake up regularly, so servers notice that they should stop.
    setsockopt(
        &fd,
        sockopt::ReceiveTimeout,
        &TimeVal::milliseconds(SERVER_POLL),
    )
    .unwrap();
    bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))
        .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    fd
}

pub(super) fn tcp_listen(addr: SocketAddr) -> TcpListener {
    let fd = bound_socket(addr, SockType::Stream);
    listen(&fd, Backlog::new(256).unwrap()).expect("listen");
    TcpListener::from(fd)
}

pub(super) fn udp_bind(addr: SocketAddr) -> UdpSocket {
    UdpSocket::from(bound_socket(addr, SockType::Datagram))
}

/// The IPv4 and IPv6 wildcard addresses with `port`: the servers listen on both.
pub(super) fn wildcards(port: u16) -> [SocketAddr; 2] {
    [
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
        SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)),
    ]
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

pub(super) type TcpHandler = Arc<dyn Fn(TcpStream) + Send + Sync>;

/// Server threads; dropping this stops and joins them.
#[derive(Default)]
pub(super) struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Servers {
    pub(super) fn tcp(&mut self, listener: TcpListener, handler: TcpHandler) {
        let stop = self.stop.clone();
        self.threads.push(thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let h = handler.clone();
                        thread::spawn(move || {
                            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                            let _ = s.set_write_timeout(Some(Duration::from_secs(10)));
                            h(s)
                        });
                    }
                    Err(e) if is_timeout(&e) => {}
                    Err(_) => thread::sleep(Duration::from_millis(SERVER_POLL as u64)),
                }
            }
        }));
    }

    pub(super) fn udp(
        &mut self,
        sock: UdpSocket,
        handler: impl Fn(&UdpSocket, &[u8], SocketAddr) + Send + 'static,
    ) {
        let stop = self.stop.clone();
        self.threads.push(thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::SeqCst) {
                match sock.recv_from(&mut buf) {
                    Ok((n, peer)) => handler(&sock, &buf[..n], peer),
                    Err(e) if is_timeout(&e) => {}
                    Err(_) => thread::sleep(Duration::from_millis(SERVER_POLL as u64)),
                }
            }
        }));
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[derive(Clone, Debug)]
pub struct HttpRequest {
    pub local: SocketAddr,
    pub peer: SocketAddr,
    pub head: String,
}

/// What the test servers saw.
#[derive(Default)]
pub struct Seen {
    pub http: Mutex<Vec<HttpRequest>>,
    pub udp_echo: Mutex<Vec<(SocketAddr, Vec<u8>)>>,
    /// "name TYPE" per DNS question over UDP.
    pub dns: Mutex<Vec<String>>,
    /// "name TYPE" per DNS question over TCP.
    pub dns_tcp: Mutex<Vec<String>>,
    /// Every DNS message that arrived, over either transport, as it came (whether it parses or not).
    pub dns_raw: Mutex<Vec<Vec<u8>>>,
    /// Peers that connected to the host's own service (H :8080).
    pub host_service: Mutex<Vec<SocketAddr>>,
}

fn serve_http(mut s: TcpStream, name: &str, seen: &Seen) {
    let (Ok(local), Ok(peer)) = (s.local_addr(), s.peer_addr()) else {
        return;
    };
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    seen.http.lock().unwrap().push(HttpRequest {
        local,
        peer,
        head: head.clone(),
    });
    let body = format!("{UPSTREAM_MARKER} {name} local={local}\n{head}");
    let resp = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(resp.as_bytes());
}

fn serve_echo(mut s: TcpStream) {
    let mut buf = [0u8; 16384];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

impl Servers {
    /// U's HTTP server, TCP echo and UDP echo.
    pub(super) fn upstream(&mut self, ns: &str, u4: Ipv4Addr, u6: Ipv6Addr, seen: &Arc<Seen>) {
        let (http, echo, udp) = in_netns(ns, || {
            (
                wildcards(80).map(tcp_listen),
                // U's own two addresses only: other addresses of U may serve HTTPS on 443.
                [SocketAddr::from((u4, 443)), SocketAddr::from((u6, 443))].map(tcp_listen),
                wildcards(9999).map(udp_bind),
            )
        });
        for l in http {
            let (seen, name) = (seen.clone(), ns.to_string());
            self.tcp(l, Arc::new(move |s| serve_http(s, &name, &seen)));
        }
        for l in echo {
            self.tcp(l, Arc::new(serve_echo));
        }
        for s in udp {
            let seen = seen.clone();
            self.udp(s, move |sock, data, peer| {
                seen.udp_echo.lock().unwrap().push((peer, data.to_vec()));
                let _ = sock.send_to(data, peer);
            });
        }
    }

    /// H's own service: a banner line to whoever connects.
    pub(super) fn host_service(&mut self, ns: &str, seen: &Arc<Seen>) {
        for l in in_netns(ns, || wildcards(8080).map(tcp_listen)) {
            let seen = seen.clone();
            self.tcp(
                l,
                Arc::new(move |mut s: TcpStream| {
                    if let Ok(peer) = s.peer_addr() {
                        seen.host_service.lock().unwrap().push(peer);
                    }
                    let _ = s.write_all(format!("{HOST_SERVICE_BANNER}\n").as_bytes());
                }),
            );
        }
    }
}

impl TestNet {
    pub fn host_service_connections(&self) -> Vec<SocketAddr> {
        self.seen.host_service.lock().unwrap().clone()
    }

    pub fn http_requests(&self) -> Vec<HttpRequest> {
        self.seen.http.lock().unwrap().clone()
    }
}
