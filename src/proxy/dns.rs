//! The DNS relay. nftables TPROXYs every UDP/53 datagram a sandbox sends to a transparent socket here; the
//! relay forwards the query to `daemon.dns` (or the host's resolvers) and answers from the address the
//! sandbox asked, so stub resolvers that check the source accept it. DNS over TCP (port 53) reaches the
//! TCP relay, which hands it to `serve_tcp` here: the same resolvers, asked over TCP. Sandboxes whose host
//! resolver they cannot reach (a loopback stub such as 127.0.0.53) get a resolv.conf naming the relay's
//! own address.
//!
//! Under `egress = "deny"` the relay looks up only the names the sandbox may reach (any other gets
//! NXDOMAIN), and remembers which addresses its answers gave for them (`Resolved`): the TCP relay and the
//! TLS listener let a connection out only to such an address. A name in a ClientHello or a Host header
//! costs nothing to forge; the answer of the daemon's own resolver is the one thing the sandbox cannot make
//! up.

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::socket::{self, sockopt, ControlMessageOwned, MsgFlags, SockType, SockaddrStorage};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpStream, UdpSocket};

use crate::audit::{Kind, Record, Verdict};
use crate::proxy::context::ProxyContext;
use crate::proxy::listener::transparent_socket;
use crate::sandbox::live::Sandbox;
use crate::sandbox::resolv_conf;

const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Queries of one sandbox awaiting an answer; more are dropped (the stub resolver retries).
const MAX_INFLIGHT_PER_SANDBOX: u64 = 256;

pub fn udp_socket(addr: SocketAddr) -> io::Result<UdpSocket> {
    let fd = transparent_socket(addr, SockType::Datagram)?;
    match addr {
        SocketAddr::V4(_) => socket::setsockopt(&fd, sockopt::Ipv4OrigDstAddr, &true)?,
        SocketAddr::V6(_) => socket::setsockopt(&fd, sockopt::Ipv6OrigDstAddr, &true)?,
    }
    UdpSocket::from_std(std::net::UdpSocket::from(fd))
}

pub async fn serve(socket: UdpSocket, context: Arc<ProxyContext>) {
    loop {
        let received = socket
            .async_io(Interest::READABLE, || receive(&socket))
            .await;
        let (query, client, asked) = match received {
            Ok(Some(datagram)) => datagram,
            Ok(None) => continue,
            Err(error) => {
                tracing::warn!(%error, "receiving on the DNS relay");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(sandbox) = context.sandboxes.by_addr(client.ip()) else {
            continue;
        };
        if sandbox.stats.dns_inflight.fetch_add(1, Ordering::Relaxed) >= MAX_INFLIGHT_PER_SANDBOX {
            sandbox.stats.dns_inflight.fetch_sub(1, Ordering::Relaxed);
            continue;
        }
        let context = context.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let (answer, mut record) =
                resolve(&context, &sandbox, asked, &query, Transport::Udp).await;
            sandbox.stats.dns_inflight.fetch_sub(1, Ordering::Relaxed);
            if !answer.is_empty() {
                if let Err(error) = send_from(asked, client, &answer) {
                    record
                        .error
                        .get_or_insert_with(|| format!("answering: {error}"));
                }
            }
            finish(&context, record, started).await;
        });
    }
}

/// How long a DNS-over-TCP connection may wait for its next query.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// DNS over TCP from a sandbox (RFC 7766: each message preceded by its length), which stub resolvers
/// switch to when an answer comes back truncated, or use throughout with `options use-vc`. Queries are
/// answered in turn, each forwarded over TCP as well: the client wants the whole answer.
pub async fn serve_tcp(
    context: &ProxyContext,
    sandbox: &Sandbox,
    mut client: TcpStream,
    asked: SocketAddr,
) {
    let _ = client.set_nodelay(true);
    loop {
        let query = match tokio::time::timeout(TCP_IDLE_TIMEOUT, read_message(&mut client)).await {
            Ok(Ok(query)) => query,
            _ => return,
        };
        let started = Instant::now();
        let (answer, mut record) = resolve(context, sandbox, asked, &query, Transport::Tcp).await;
        let written = if answer.is_empty() {
            Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "malformed query",
            ))
        } else {
            write_message(&mut client, &answer).await
        };
        if let Err(error) = &written {
            record
                .error
                .get_or_insert_with(|| format!("answering: {error}"));
        }
        finish(context, record, started).await;
        if written.is_err() {
            return;
        }
    }
}

/// How a query came, and so how it goes on to the resolvers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

/// The answer to one query of a sandbox (a SERVFAIL when no resolver answered; empty when the query is
/// too malformed to answer), and its audit record, to be finished once the answer is sent.
async fn resolve(
    context: &ProxyContext,
    sandbox: &Sandbox,
    asked: SocketAddr,
    query: &[u8],
    transport: Transport,
) -> (Vec<u8>, Record) {
    let mut record = Record::new(sandbox, Kind::Dns, asked);
    record.host = query_name(query);
    record.bytes_up = query.len() as u64;
    if !sandbox.egress_allowed() {
        // Not looked up at all: forwarded, the query would carry whatever its name encodes to that name's
        // own servers, a channel out of a sandbox that may not reach them. A name the relay cannot read
        // (compressed, or one of several questions) is one it cannot check, and resolvers read it all the
        // same.
        let refused = match record.host.as_deref() {
            Some(name) if sandbox.names_host(name) => None,
            Some(name) => Some((
                error_answer(query, NXDOMAIN).unwrap_or_default(),
                format!(
                    "profile {:?} does not allow {name}; answered NXDOMAIN",
                    sandbox.profile.name
                ),
            )),
            None => Some((
                formerr(query),
                "a query that is not one uncompressed question; answered FORMERR".to_string(),
            )),
        };
        if let Some((answer, why)) = refused {
            record.verdict = Verdict::Denied;
            record.error = Some(why);
            record.bytes_down = answer.len() as u64;
            return (answer, record);
        }
    }
    let answer = match forward(query, &upstreams(context), transport).await {
        Ok(answer) => answer,
        Err(error) => {
            record.error = Some(error.to_string());
            servfail(query).unwrap_or_default()
        }
    };
    record.bytes_down = answer.len() as u64;
    if !sandbox.egress_allowed() {
        if let Some(name) = query_name(&answer).filter(|name| sandbox.names_host(name)) {
            sandbox.resolved.remember(&name, &answer_addresses(&answer));
        }
    }
    (answer, record)
}

async fn finish(context: &ProxyContext, mut record: Record, started: Instant) {
    let verdict = match (record.verdict, &record.error) {
        (Verdict::Denied, _) => Verdict::Denied,
        (_, Some(_)) => Verdict::Error,
        (_, None) => Verdict::Passed,
    };
    let error = record.error.take();
    record.finish(verdict, error, started);
    context.audit.log(record).await;
}

async fn read_message(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let len = stream.read_u16().await?;
    let mut message = vec![0u8; usize::from(len)];
    stream.read_exact(&mut message).await?;
    Ok(message)
}

async fn write_message(stream: &mut TcpStream, message: &[u8]) -> io::Result<()> {
    let len = u16::try_from(message.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "answer over 64 KiB"))?;
    let mut framed = Vec::with_capacity(2 + message.len());
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(message);
    stream.write_all(&framed).await
}

/// One datagram with its sender and the address it was sent to.
fn receive(socket: &UdpSocket) -> io::Result<Option<(Vec<u8>, SocketAddr, SocketAddr)>> {
    let mut buffer = vec![0u8; 4096];
    let mut cmsg = nix::cmsg_space!(libc::sockaddr_in6);
    let mut iov = [IoSliceMut::new(&mut buffer)];
    let message = socket::recvmsg::<SockaddrStorage>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_DONTWAIT,
    )?;
    let len = message.bytes;
    let client = message.address.as_ref().and_then(to_socket_addr);
    let mut asked = None;
    for control in message.cmsgs()? {
        asked = match control {
            ControlMessageOwned::Ipv4OrigDstAddr(addr) => Some(SocketAddr::V4(SocketAddrV4::new(
                u32::from_be(addr.sin_addr.s_addr).into(),
                u16::from_be(addr.sin_port),
            ))),
            ControlMessageOwned::Ipv6OrigDstAddr(addr) => Some(SocketAddr::V6(SocketAddrV6::new(
                addr.sin6_addr.s6_addr.into(),
                u16::from_be(addr.sin6_port),
                0,
                addr.sin6_scope_id,
            ))),
            _ => asked,
        };
    }
    buffer.truncate(len);
    Ok(match (client, asked) {
        (Some(client), Some(asked)) if len >= 12 => Some((buffer, client, asked)),
        _ => None,
    })
}

fn to_socket_addr(addr: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::new(v4.ip(), v4.port())));
    }
    addr.as_sockaddr_in6().map(|v6| {
        SocketAddr::V6(SocketAddrV6::new(
            v6.ip(),
            v6.port(),
            v6.flowinfo(),
            v6.scope_id(),
        ))
    })
}

/// Answers from `from` (a non-local address, allowed by IP_TRANSPARENT) so the stub resolver sees the
/// reply come from the server it asked.
fn send_from(from: SocketAddr, to: SocketAddr, answer: &[u8]) -> io::Result<()> {
    let fd = transparent_socket(from, SockType::Datagram)?;
    socket::sendto(
        fd.as_raw_fd(),
        answer,
        &SockaddrStorage::from(to),
        MsgFlags::MSG_DONTWAIT,
    )?;
    Ok(())
}

/// How long the host's resolvers, as read from /etc/resolv.conf, are used before it is read again.
const RESOLV_CONF_TTL: Duration = Duration::from_secs(2);

fn upstreams(context: &ProxyContext) -> Vec<SocketAddr> {
    let configured = context.config.config().daemon.dns.clone();
    if !configured.is_empty() {
        return configured;
    }
    static HOST: Mutex<Option<(Instant, Vec<SocketAddr>)>> = Mutex::new(None);
    let mut host = HOST.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((read, resolvers)) = &*host {
        if read.elapsed() < RESOLV_CONF_TTL {
            return resolvers.clone();
        }
    }
    let resolvers: Vec<SocketAddr> = std::fs::read_to_string("/etc/resolv.conf")
        .map(|text| {
            resolv_conf::nameservers(&text)
                .into_iter()
                .map(|ip| SocketAddr::new(ip, 53))
                .collect()
        })
        .unwrap_or_default();
    *host = Some((Instant::now(), resolvers.clone()));
    resolvers
}

async fn forward(
    query: &[u8],
    upstreams: &[SocketAddr],
    transport: Transport,
) -> io::Result<Vec<u8>> {
    let mut last = io::Error::new(
        io::ErrorKind::NotFound,
        "no upstream resolver (set daemon.dns)",
    );
    for upstream in upstreams.iter().take(3) {
        let attempt = async {
            match transport {
                Transport::Udp => ask_over_udp(query, *upstream).await,
                Transport::Tcp => ask_over_tcp(query, *upstream).await,
            }
        };
        match tokio::time::timeout(UPSTREAM_TIMEOUT, attempt).await {
            Ok(Ok(answer)) => return Ok(answer),
            Ok(Err(error)) => {
                last = io::Error::new(error.kind(), format!("resolver {upstream}: {error}"))
            }
            Err(_) => {
                last = io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("resolver {upstream}: timed out"),
                )
            }
        }
    }
    Err(last)
}

async fn ask_over_udp(query: &[u8], upstream: SocketAddr) -> io::Result<Vec<u8>> {
    let local: SocketAddr = match upstream {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(upstream).await?;
    socket.send(query).await?;
    let mut buffer = vec![0u8; 65535];
    loop {
        let len = socket.recv(&mut buffer).await?;
        if is_answer_to(&buffer[..len], query) {
            buffer.truncate(len);
            return Ok(buffer);
        }
    }
}

async fn ask_over_tcp(query: &[u8], upstream: SocketAddr) -> io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(upstream).await?;
    let _ = stream.set_nodelay(true);
    write_message(&mut stream, query).await?;
    let answer = read_message(&mut stream).await?;
    if !is_answer_to(&answer, query) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the answer is for another query",
        ));
    }
    Ok(answer)
}

/// Same transaction id, or it is not the answer to `query`.
fn is_answer_to(answer: &[u8], query: &[u8]) -> bool {
    answer.len() >= 12 && query.len() >= 2 && answer[..2] == query[..2]
}

/// The question section's end, or None if the query is malformed.
fn question_end(query: &[u8]) -> Option<usize> {
    if query.len() < 12 || u16::from_be_bytes([query[4], query[5]]) != 1 {
        return None;
    }
    let mut at = 12;
    loop {
        let len = *query.get(at)? as usize;
        if len == 0 {
            at += 1;
            break;
        }
        if len & 0xc0 != 0 {
            return None;
        }
        at += 1 + len;
    }
    let end = at + 4;
    (end <= query.len()).then_some(end)
}

/// The name asked about, for the audit log.
pub fn query_name(query: &[u8]) -> Option<String> {
    let end = question_end(query)?;
    let mut labels = Vec::new();
    let mut at = 12;
    while at < end - 5 {
        let len = query[at] as usize;
        labels.push(String::from_utf8_lossy(&query[at + 1..at + 1 + len]).into_owned());
        at += 1 + len;
    }
    Some(labels.join("."))
}

/// The addresses of an answer's A and AAAA records (those at the end of a CNAME chain included: the
/// resolver followed it for the name asked). Nothing from an answer that reports an error; reading stops at
/// the first record that does not parse.
pub fn answer_addresses(answer: &[u8]) -> Vec<IpAddr> {
    let mut addresses = Vec::new();
    let Some(mut at) = question_end(answer) else {
        return addresses;
    };
    if answer[2] & 0x80 == 0 || answer[3] & 0x0f != 0 {
        return addresses;
    }
    let records = u16::from_be_bytes([answer[6], answer[7]]);
    for _ in 0..records {
        let Some(fixed) = skip_name(answer, at) else {
            break;
        };
        let Some(header) = answer.get(fixed..fixed + 10) else {
            break;
        };
        let kind = u16::from_be_bytes([header[0], header[1]]);
        let class = u16::from_be_bytes([header[2], header[3]]);
        let length = usize::from(u16::from_be_bytes([header[8], header[9]]));
        let Some(data) = answer.get(fixed + 10..fixed + 10 + length) else {
            break;
        };
        const IN: u16 = 1;
        const A: u16 = 1;
        const AAAA: u16 = 28;
        match (kind, class) {
            (A, IN) => {
                if let Ok(v4) = <[u8; 4]>::try_from(data) {
                    addresses.push(IpAddr::from(v4));
                }
            }
            (AAAA, IN) => {
                if let Ok(v6) = <[u8; 16]>::try_from(data) {
                    addresses.push(IpAddr::from(v6));
                }
            }
            _ => {}
        }
        at = fixed + 10 + length;
    }
    addresses
}

/// Where the (possibly compressed) name at `at` ends.
fn skip_name(message: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *message.get(at)?;
        match len & 0xc0 {
            0 if len == 0 => return Some(at + 1),
            0 => at += 1 + usize::from(len),
            0xc0 => return message.get(at + 1).map(|_| at + 2),
            _ => return None,
        }
    }
}

const FORMERR: u8 = 1;
const SERVFAIL: u8 = 2;
const NXDOMAIN: u8 = 3;

/// A SERVFAIL answer to `query`, so the stub fails at once instead of waiting out its timeout.
pub fn servfail(query: &[u8]) -> Option<Vec<u8>> {
    error_answer(query, SERVFAIL)
}

/// A FORMERR answer to a query whose question cannot be read: its header alone, no sections.
fn formerr(query: &[u8]) -> Vec<u8> {
    let Some(header) = query.get(..12) else {
        return Vec::new();
    };
    let mut answer = header.to_vec();
    answer[2] = 0x80 | (query[2] & 0x79);
    answer[3] = 0x80 | FORMERR;
    answer[4..12].fill(0);
    answer
}

/// An answer to `query` with this error code, its question, and no records.
fn error_answer(query: &[u8], rcode: u8) -> Option<Vec<u8>> {
    let end = question_end(query)?;
    let mut answer = query[..end].to_vec();
    answer[2] = 0x80 | (query[2] & 0x79); // response, same opcode and RD
    answer[3] = 0x80 | rcode; // RA
    answer[6..12].fill(0);
    Some(answer)
}

#[cfg(test)]
mod tests;
