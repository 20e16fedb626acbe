//! Reading the TLS ClientHello of an intercepted connection without consuming it.
//!
//! The TLS listener must know a connection's SNI and ALPN before it decides whether to terminate TLS
//! (rustls, for hosts with an integration) or to splice the bytes untouched to the real upstream. Both
//! paths need every byte the client sent, so this module only ever peeks (MSG_PEEK) at the socket.
//!
//! It owns two things: [`parse`], a pure parser that reassembles the ClientHello from however many TLS
//! records and TCP segments carry it (post-quantum key shares make it bigger than one packet) and says how
//! many more bytes it needs at least; and [`peek`], which waits for those bytes with SO_RCVLOWAT so that a
//! client trickling its hello costs one wakeup per "enough", never a busy loop.
//!
//! Everything here is hostile input: every length is checked, nothing panics, and a hello bigger than
//! [`MAX_HELLO_LEN`] is refused.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use libc::{c_int, socklen_t};
use nix::errno::Errno;
use nix::sys::socket::{recv, MsgFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Largest ClientHello accepted, counting every byte of the records that carry it (headers included).
/// Real ones are under 2 KiB even with post-quantum key shares; anything near this is an attack.
pub const MAX_HELLO_LEN: usize = 64 * 1024;

const CONTENT_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const RECORD_HEADER_LEN: usize = 5;
const HANDSHAKE_HEADER_LEN: usize = 4;
/// RFC 8446 section 5.1: a plaintext record carries at most 2^14 bytes.
const MAX_FRAGMENT_LEN: usize = 1 << 14;
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
const NAME_TYPE_HOST_NAME: u8 = 0;
/// Large enough for nearly every real hello in one peek; [`peek`] grows it when the records say more.
const INITIAL_PEEK_LEN: usize = 4096;

/// What the daemon needs from a ClientHello to route the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello {
    /// The host name, lowercased and without a trailing dot; `None` when the client sent none or sent
    /// an IP address (RFC 6066 forbids those, so such a client names no host).
    pub sni: Option<String>,
    /// The ALPN protocol names in the client's order; empty when the client offered none.
    pub alpn: Vec<Vec<u8>>,
}

/// How far [`parse`] got with the bytes it was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// The whole ClientHello was there.
    Complete(ClientHello),
    /// The hello cannot be complete before at least this many more bytes arrive (always >= 1). It is a
    /// lower bound, never an overestimate, so waiting for exactly this many can never stall.
    NeedAtLeast(usize),
}

/// Why no ClientHello could be read. Each one ends the connection; `NotTls` is what a plain-HTTP (or
/// other non-TLS) client on port 443 gets.
#[derive(Debug, thiserror::Error)]
pub enum HelloError {
    #[error("not TLS: {0}")]
    NotTls(&'static str),
    #[error("malformed ClientHello: {0}")]
    Malformed(&'static str),
    #[error("ClientHello larger than {MAX_HELLO_LEN} bytes")]
    TooLarge,
    #[error("invalid SNI host name: {0}")]
    BadSni(&'static str),
    #[error("closed before the ClientHello was complete")]
    Closed,
    #[error("reading the ClientHello: {0}")]
    Io(#[from] io::Error),
}

/// Parses the start of a TLS connection. Bytes after the ClientHello's last record (early data, a
/// ChangeCipherSpec) are ignored. An error is final: more bytes cannot fix it.
pub fn parse(buf: &[u8]) -> Result<Progress, HelloError> {
    match buf.first() {
        None | Some(&CONTENT_HANDSHAKE) => {}
        // SSLv2 framing starts with a 2-byte length whose top bit is set. Nothing current sends it, it
        // carries no SNI, and rustls would refuse it anyway.
        Some(first) if first & 0x80 != 0 => {
            return Err(HelloError::NotTls("SSLv2-style ClientHello"))
        }
        Some(_) => {
            return Err(HelloError::NotTls(
                "the first byte is not a TLS handshake record",
            ))
        }
    }
    // The handshake message, reassembled from the fragments of consecutive records.
    let mut message = Vec::new();
    // Its full length (header included), once its header has arrived.
    let mut target = None;
    let mut pos = 0;
    loop {
        let rest = buf.get(pos..).unwrap_or_default();
        let header = rest.get(..RECORD_HEADER_LEN).unwrap_or(rest);
        check_record_header(header, pos == 0)?;
        let Some(&[_, _, _, len_hi, len_lo]) = header.first_chunk::<RECORD_HEADER_LEN>() else {
            // Each record carries at least one byte, and the message needs at least its header.
            let missing = target
                .unwrap_or(HANDSHAKE_HEADER_LEN)
                .saturating_sub(message.len())
                .max(1);
            return need(buf.len(), RECORD_HEADER_LEN - header.len() + missing);
        };
        let len = usize::from(u16::from_be_bytes([len_hi, len_lo]));
        if len == 0 {
            // RFC 8446 section 5.1 forbids empty handshake fragments; allowing them would let a client
            // make us loop over headers for nothing.
            return Err(HelloError::Malformed("empty handshake record"));
        }
        if len > MAX_FRAGMENT_LEN {
            return Err(HelloError::Malformed("record longer than 2^14 bytes"));
        }
        let start = pos + RECORD_HEADER_LEN;
        let end = start + len;
        if end > MAX_HELLO_LEN {
            return Err(HelloError::TooLarge);
        }
        let fragment = buf.get(start..end.min(buf.len())).unwrap_or_default();
        message.extend_from_slice(fragment);
        target = message_len(&message)?;
        let missing_here = len - fragment.len();
        if let Some(total) = target {
            // RFC 8446 section 5.1: the ClientHello must end at a record boundary (a key change may
            // follow it). Anything else in its record would be seen by rustls but not by us.
            if message.len() + missing_here > total {
                return Err(HelloError::Malformed(
                    "the ClientHello's last record carries more than the ClientHello",
                ));
            }
        }
        if missing_here > 0 {
            let after = message.len() + missing_here;
            let total = target.unwrap_or(HANDSHAKE_HEADER_LEN);
            let later = match total.checked_sub(after) {
                Some(0) | None => 0,
                Some(short) => RECORD_HEADER_LEN + short,
            };
            return need(buf.len(), missing_here + later);
        }
        if target == Some(message.len()) {
            let body = message.get(HANDSHAKE_HEADER_LEN..).unwrap_or_default();
            return parse_client_hello(body).map(Progress::Complete);
        }
        pos = end;
    }
}

/// Checks as much of a record header as has arrived, so that garbage is refused at its first byte.
fn check_record_header(header: &[u8], first: bool) -> Result<(), HelloError> {
    if header
        .first()
        .is_some_and(|&kind| kind != CONTENT_HANDSHAKE)
    {
        // An alert or application data before the hello is complete is never legitimate.
        return Err(HelloError::Malformed(
            "a non-handshake record arrived before the ClientHello was complete",
        ));
    }
    if header.get(1).is_some_and(|&major| major != 3) {
        return Err(if first {
            HelloError::NotTls("the record version is not 3.x")
        } else {
            HelloError::Malformed("a record version is not 3.x")
        });
    }
    Ok(())
}

/// The handshake message's full length once its 4-byte header is in, after checking that it is a
/// ClientHello that can fit.
fn message_len(message: &[u8]) -> Result<Option<usize>, HelloError> {
    if message
        .first()
        .is_some_and(|&kind| kind != HANDSHAKE_CLIENT_HELLO)
    {
        return Err(HelloError::Malformed(
            "the first handshake message is not a ClientHello",
        ));
    }
    let Some(&[_, a, b, c]) = message.first_chunk::<HANDSHAKE_HEADER_LEN>() else {
        return Ok(None);
    };
    let len = usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c);
    // Refusing a huge announced length at once, before its bytes arrive, keeps a hostile client from
    // making us wait for (and buffer) them.
    if RECORD_HEADER_LEN + HANDSHAKE_HEADER_LEN + len > MAX_HELLO_LEN {
        return Err(HelloError::TooLarge);
    }
    Ok(Some(HANDSHAKE_HEADER_LEN + len))
}

/// `more` further bytes are needed, unless that already makes the hello too large.
fn need(have: usize, more: usize) -> Result<Progress, HelloError> {
    if have + more > MAX_HELLO_LEN {
        return Err(HelloError::TooLarge);
    }
    Ok(Progress::NeedAtLeast(more))
}

/// The ClientHello body (RFC 8446 section 4.1.2; also the TLS 1.0-1.2 layout).
fn parse_client_hello(body: &[u8]) -> Result<ClientHello, HelloError> {
    let mut r = Reader(body);
    let version = r.u16("legacy_version is truncated")?;
    if version >> 8 != 3 {
        return Err(HelloError::Malformed("legacy_version is not 3.x"));
    }
    r.take(32, "random is truncated")?;
    if r.vec8("session_id overruns the message")?.len() > 32 {
        return Err(HelloError::Malformed("session_id longer than 32 bytes"));
    }
    let suites = r.vec16("cipher_suites overrun the message")?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(HelloError::Malformed("bad cipher_suites length"));
    }
    if r.vec8("compression_methods overrun the message")?
        .is_empty()
    {
        return Err(HelloError::Malformed("no compression method"));
    }
    let mut hello = ClientHello {
        sni: None,
        alpn: Vec::new(),
    };
    // Before TLS 1.3 the extensions block may be absent altogether.
    if r.0.is_empty() {
        return Ok(hello);
    }
    let extensions = r.vec16("extensions overrun the message")?;
    r.finish("data after the extensions")?;
    // A repeated extension is illegal (RFC 8446 section 4.2) and would let us read one SNI while rustls
    // or the upstream reads another. One bit per possible extension type.
    let mut seen = [0u64; 1024];
    let mut r = Reader(extensions);
    while !r.0.is_empty() {
        let kind = r.u16("an extension header is truncated")?;
        let data = r.vec16("an extension overruns the extensions")?;
        // In bounds for every u16: kind / 64 < 1024.
        let word = &mut seen[usize::from(kind / 64)];
        let bit = 1u64 << (kind % 64);
        if *word & bit != 0 {
            return Err(HelloError::Malformed("an extension appears twice"));
        }
        *word |= bit;
        match kind {
            EXT_SERVER_NAME => hello.sni = parse_server_name(data)?,
            EXT_ALPN => hello.alpn = parse_alpn(data)?,
            _ => {}
        }
    }
    Ok(hello)
}

/// The server_name extension (RFC 6066 section 3).
fn parse_server_name(data: &[u8]) -> Result<Option<String>, HelloError> {
    let mut r = Reader(data);
    let list = r.vec16("the server_name list overruns its extension")?;
    r.finish("data after the server_name list")?;
    let mut r = Reader(list);
    // Like OpenSSL: host_name is the only name type there ever was, and one name per type is allowed, so
    // the list holds exactly one host_name. Accepting more would let two parsers pick different names.
    if r.u8("empty server_name list")? != NAME_TYPE_HOST_NAME {
        return Err(HelloError::Malformed(
            "a server_name entry is not a host_name",
        ));
    }
    let name = r.vec16("the host_name overruns the server_name list")?;
    r.finish("more than one server_name entry")?;
    host_name(name)
}

/// Validates and normalises an SNI host name. The rules are rustls' (rustls-pki-types' DnsName), so a
/// name accepted here is one rustls accepts too, when the daemon mints a certificate for it or verifies
/// the upstream against it.
fn host_name(raw: &[u8]) -> Result<Option<String>, HelloError> {
    if raw.contains(&0) {
        return Err(HelloError::BadSni("contains NUL"));
    }
    if !raw.is_ascii() {
        return Err(HelloError::BadSni("not ASCII"));
    }
    let name = raw.strip_suffix(b".").unwrap_or(raw);
    let text = std::str::from_utf8(name).map_err(|_| HelloError::BadSni("not ASCII"))?;
    if text.parse::<IpAddr>().is_ok() {
        return Ok(None);
    }
    if name.is_empty() {
        return Err(HelloError::BadSni("empty"));
    }
    if name.len() > 253 {
        return Err(HelloError::BadSni("longer than 253 bytes"));
    }
    let mut last_is_number = false;
    for label in name.split(|&b| b == b'.') {
        if label.is_empty() {
            return Err(HelloError::BadSni("empty label"));
        }
        if label.len() > 63 {
            return Err(HelloError::BadSni("label longer than 63 bytes"));
        }
        if !label
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(HelloError::BadSni(
                "only letters, digits, '-', '_' and '.' are allowed",
            ));
        }
        if label.starts_with(b"-") || label.ends_with(b"-") {
            return Err(HelloError::BadSni("a label starts or ends with '-'"));
        }
        last_is_number = is_number(label);
    }
    // The WHATWG URL rule that rustls follows: a name ending in a number is an IPv4 address in another
    // spelling ("127.1", "0x7f.1"), so it names no host either.
    if last_is_number {
        return Ok(None);
    }
    Ok(Some(text.to_ascii_lowercase()))
}

/// A decimal number, or a hex one ("0x" and hex digits), as a URL parser reads an IPv4 part.
fn is_number(label: &[u8]) -> bool {
    match label {
        [b'0', b'x' | b'X', hex @ ..] => hex.iter().all(u8::is_ascii_hexdigit),
        _ => label.iter().all(u8::is_ascii_digit),
    }
}

/// The ALPN extension (RFC 7301 section 3.1).
fn parse_alpn(data: &[u8]) -> Result<Vec<Vec<u8>>, HelloError> {
    let mut r = Reader(data);
    let list = r.vec16("the ALPN list overruns its extension")?;
    r.finish("data after the ALPN list")?;
    if list.is_empty() {
        return Err(HelloError::Malformed("empty ALPN list"));
    }
    let mut r = Reader(list);
    let mut protocols = Vec::new();
    while !r.0.is_empty() {
        let name = r.vec8("an ALPN protocol name overruns the list")?;
        if name.is_empty() {
            return Err(HelloError::Malformed("empty ALPN protocol name"));
        }
        protocols.push(name.to_vec());
    }
    Ok(protocols)
}

/// A cursor over TLS wire structures. Every read is bounds-checked and fails with the caller's
/// description, so no input can make the parser panic.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], HelloError> {
        let (head, rest) = self
            .0
            .split_at_checked(n)
            .ok_or(HelloError::Malformed(what))?;
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], HelloError> {
        self.take(N, what)?
            .try_into()
            .map_err(|_| HelloError::Malformed(what))
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, HelloError> {
        let [b] = self.array(what)?;
        Ok(b)
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, HelloError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    /// An opaque vector with a 1-byte length prefix.
    fn vec8(&mut self, what: &'static str) -> Result<&'a [u8], HelloError> {
        let len = self.u8(what)?;
        self.take(usize::from(len), what)
    }

    /// An opaque vector with a 2-byte length prefix.
    fn vec16(&mut self, what: &'static str) -> Result<&'a [u8], HelloError> {
        let len = self.u16(what)?;
        self.take(usize::from(len), what)
    }

    fn finish(self, what: &'static str) -> Result<(), HelloError> {
        match self.0.is_empty() {
            true => Ok(()),
            false => Err(HelloError::Malformed(what)),
        }
    }
}

/// Waits until the whole ClientHello has arrived on `stream` and parses it, without consuming a byte:
/// afterwards the socket still holds everything the client sent, for rustls or for the splice.
///
/// There is no timeout here: a client that never completes its hello keeps this pending forever, so the
/// caller wraps it in `tokio::time::timeout`. Dropping the future (a timeout does) is safe: nothing was
/// consumed, and SO_RCVLOWAT is restored then too. While waiting, the socket's SO_RCVLOWAT is raised to
/// the number of bytes the hello needs at least, so epoll reports it readable only once they are there
/// (or on EOF or an error): a trickling client costs one wakeup per step of the parser, not one per
/// segment, and never a busy loop. It is put back to its previous value (1 by default) before this
/// returns, whatever the outcome, because later reads on the socket must not wait for a low-water mark.
pub async fn peek(stream: &TcpStream) -> Result<ClientHello, HelloError> {
    peek_observed(stream, || {}).await
}

/// [`peek`], calling `on_attempt` each time it looks at the socket (tests count wakeups with it).
async fn peek_observed(
    stream: &TcpStream,
    mut on_attempt: impl FnMut(),
) -> Result<ClientHello, HelloError> {
    let mut lowat = RcvLowat {
        fd: stream.as_fd(),
        original: None,
    };
    let mut buf = vec![0; INITIAL_PEEK_LEN];
    loop {
        // `ready` + `try_io` rather than `async_io`, because the loop needs the readiness set: when the
        // peer has sent part of a hello and then FIN, the socket stays readable and every peek returns
        // the same incomplete bytes. Only READ_CLOSED tells that apart from "more is coming"; without it
        // this would spin.
        let ready = stream.ready(Interest::READABLE).await?;
        // `ready()` takes nothing from the task's cooperative budget. Should a socket ever stay ready
        // without progress, this still yields now and then, so the caller's timeout can fire.
        tokio::task::consume_budget().await;
        on_attempt();
        match stream.try_io(Interest::READABLE, || {
            look(stream.as_fd(), &mut buf, &mut lowat)
        }) {
            Ok(verdict) => return verdict,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if ready.is_read_closed() {
                    return Err(HelloError::Closed);
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// One look at the bytes queued on the socket: the parser's verdict, or WouldBlock once the kernel has
/// been told (SO_RCVLOWAT) how many bytes to wait for.
fn look(
    fd: BorrowedFd<'_>,
    buf: &mut Vec<u8>,
    lowat: &mut RcvLowat<'_>,
) -> io::Result<Result<ClientHello, HelloError>> {
    loop {
        let n = match recv(
            fd.as_raw_fd(),
            buf,
            MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            return Ok(Err(HelloError::Closed));
        }
        let filled = n == buf.len();
        match parse(buf.get(..n).unwrap_or_default()) {
            Ok(Progress::Complete(hello)) => return Ok(Ok(hello)),
            Err(e) => return Ok(Err(e)),
            Ok(Progress::NeedAtLeast(more)) => {
                // parse() guarantees n + more <= MAX_HELLO_LEN, which bounds the buffer.
                let want = n + more;
                if want > buf.len() {
                    buf.resize(want, 0);
                }
                if filled {
                    // The queue may hold more than the buffer could show: look again at once.
                    continue;
                }
                lowat.set(want)?;
                return Err(io::ErrorKind::WouldBlock.into());
            }
        }
    }
}

/// SO_RCVLOWAT on the peeked socket, put back to its first value when dropped. The kernel wakes epoll
/// for a TCP socket only once this many bytes are queued (EOF and errors wake it regardless), and
/// setting it wakes at once if enough is already there, so no wakeup is lost in between.
struct RcvLowat<'a> {
    fd: BorrowedFd<'a>,
    original: Option<c_int>,
}

impl RcvLowat<'_> {
    fn set(&mut self, bytes: usize) -> io::Result<()> {
        if self.original.is_none() {
            self.original = Some(get_rcvlowat(self.fd)?);
        }
        // The kernel caps the value at half the receive buffer; that only means an earlier wakeup.
        set_rcvlowat(self.fd, c_int::try_from(bytes).unwrap_or(c_int::MAX))
    }
}

impl Drop for RcvLowat<'_> {
    fn drop(&mut self) {
        if let Some(original) = self.original {
            // Nothing to do on failure: it means the socket is broken, which its next read reports.
            let _ = set_rcvlowat(self.fd, original);
        }
    }
}

fn set_rcvlowat(fd: BorrowedFd<'_>, value: c_int) -> io::Result<()> {
    // SAFETY: `fd` is an open socket for the borrow's lifetime, and the option value is a c_int of the
    // length passed, as SO_RCVLOWAT expects.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&value as *const c_int).cast(),
            size_of::<c_int>() as socklen_t,
        )
    };
    match rc {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

fn get_rcvlowat(fd: BorrowedFd<'_>) -> io::Result<c_int> {
    let mut value: c_int = 0;
    let mut len = size_of::<c_int>() as socklen_t;
    // SAFETY: `fd` is an open socket for the borrow's lifetime; `value` and `len` are valid for writes
    // and `len` holds the size of `value`.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&mut value as *mut c_int).cast(),
            &mut len,
        )
    };
    match rc {
        0 => Ok(value),
        _ => Err(io::Error::last_os_error()),
    }
}

#[cfg(test)]
mod tests;
