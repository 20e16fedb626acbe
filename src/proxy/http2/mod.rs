//! The HTTP/2 relay: an intercepted connection whose client and upstream both speak HTTP/2 is relayed frame
//! by frame over an upstream connection of its own, instead of being served as HTTP by one HTTP/2 stack and
//! sent again by another (`http_proxy`). Streams, flow control and most settings pass end to end: DATA,
//! WINDOW_UPDATE and RST_STREAM frames are forwarded as they came, so no body is ever buffered beyond one
//! frame and the peers' own windows bound what is in flight. What the relay owns:
//!
//! - every request's header block: decoded (HPACK), checked like `http_proxy` checks requests (the host
//!   must be the TLS server name: 421; TRACE, CONNECT and `HTTP2-Settings`: refused; malformed: reset),
//!   and sent on re-encoded with the integration's headers in place of any the client sent;
//! - response header blocks pass as they came, decoded only to follow the upstream's table and read the
//!   status for the audit record;
//! - settings that concern the relay itself are rewritten: push is off, header tables, frame sizes and
//!   concurrent streams are capped;
//! - PING is answered by the relay on each side; answers the relay gives itself (421 and the like) draw
//!   their body's window from a small reserve it keeps of the client's connection window;
//! - an upstream going away: its GOAWAY passes as it came and later streams are refused (REFUSED_STREAM), so
//!   that the client sends what was not processed again on a new connection (its own upstream connection is
//!   the one going away); when the upstream connection ends, idempotent requests without an answer are
//!   refused too.
//!
//! Why: two full HTTP/2 stacks cost the daemon about twice the CPU per request of this relay (38 against 20
//! µs here), which decided whether an HTTP/2 client behind the sandbox got half of its direct speed.

pub mod hpack;

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::future::{poll_fn, Future};
use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant as Clock, Sleep};
use zeroize::{Zeroize, Zeroizing};

use crate::audit::{PolledLog, Record, Verdict};
use crate::config::{Integration, Secrets};
use crate::proxy::policy::{self, is_idempotent, MAX_HEADER_BYTES};
use crate::proxy::workers::InFlight;

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEAD_LEN: usize = 9;

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PUSH_PROMISE: u8 = 0x5;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;

const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY_FLAG: u8 = 0x20;

const HEADER_TABLE_SIZE: u16 = 0x1;
const ENABLE_PUSH: u16 = 0x2;
const MAX_CONCURRENT_STREAMS: u16 = 0x3;
const INITIAL_WINDOW_SIZE: u16 = 0x4;
const MAX_FRAME_SIZE: u16 = 0x5;
const MAX_HEADER_LIST_SIZE: u16 = 0x6;

const NO_ERROR: u32 = 0x0;
const PROTOCOL_ERROR: u32 = 0x1;
const INTERNAL_ERROR: u32 = 0x2;
const FLOW_CONTROL_ERROR: u32 = 0x3;
const STREAM_CLOSED: u32 = 0x5;
const FRAME_SIZE_ERROR: u32 = 0x6;
const REFUSED_STREAM: u32 = 0x7;
const COMPRESSION_ERROR: u32 = 0x9;
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// The frame size every HTTP/2 peer starts with.
const DEFAULT_MAX_FRAME: usize = 16_384;
/// The largest frame the relay lets either peer send it: each is told this or less.
const MAX_FRAME: u32 = 65_536;
/// The header table size both of the relay's decoders start with, and the most it lets a peer use.
const TABLE_SIZE: usize = 4096;
/// Streams a client may have open at once (less when the upstream allows fewer).
const MAX_STREAMS: u32 = 128;
/// Fields in one request's header list.
const MAX_FIELDS: usize = 256;
/// SETTINGS of the client's that the upstream has not acknowledged yet: each is remembered until it is.
const MAX_UNACKED_SETTINGS: usize = 64;
/// An output holding this much stops the relay reading from either peer until it drains.
const HIGH_WATER: usize = 256 * 1024;
/// How much of the client's connection window the relay keeps back from the upstream, for the bodies of
/// the answers it gives itself.
const RESERVE: u32 = 16 * 1024;
const READ_CHUNK: usize = 32 * 1024;
/// A connection with no open stream for this long is closed (GOAWAY to both peers).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The client's preface, and every header block once begun, must arrive within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// An idle connection lets go of its buffers after this (not at once: a client between two requests would
/// have them made again).
const SHRINK_AFTER: Duration = Duration::from_secs(2);
/// Closing: how long the last frames (GOAWAY) may take to be written.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the relay needs to know about the connection it serves, and where its audit records go.
pub struct Scope {
    /// The TLS server name the client asked for, and the port it connected to: every request must name them.
    pub sni: String,
    pub port: u16,
    /// The integration's headers, HPACK-encoded (never indexed), and their names in lower case; or why
    /// they cannot be made (a secret that is not loaded).
    pub injected: Result<Injected, String>,
    /// Filled in per request (method, host, path, status, bytes, verdict), counted and logged.
    pub record: Record,
    pub log: PolledLog,
    /// Told of each request's record as it is logged (the sandbox's byte counts).
    pub counted: Box<dyn Fn(&Record) + Send + Sync>,
}

pub struct Injected {
    pub names: Vec<String>,
    pub block: Zeroizing<Vec<u8>>,
}

impl Injected {
    /// The integration's headers as one HPACK block of never-indexed fields, with their names; or why they
    /// cannot be made (a secret that is not loaded).
    pub fn for_integration(
        integration: &Integration,
        secrets: &Secrets,
    ) -> Result<Injected, String> {
        let mut headers = http::HeaderMap::new();
        policy::inject(&mut headers, integration, secrets)?;
        let mut block = Zeroizing::new(Vec::new());
        let mut names = Vec::new();
        for (name, value) in &headers {
            hpack::encode_field(name.as_str().as_bytes(), value.as_bytes(), true, &mut block);
            names.push(name.as_str().to_string());
        }
        names.dedup();
        Ok(Injected { names, block })
    }
}

impl Scope {
    fn finished(&mut self, record: Record) {
        (self.counted)(&record);
        self.log.log(record);
    }

    fn authority(&self) -> String {
        if self.port == 443 {
            self.sni.clone()
        } else {
            format!("{}:{}", self.sni, self.port)
        }
    }
}

/// An upstream HTTP/2 connection whose prefaces have been exchanged: the relay's SETTINGS sent (server
/// push off), the upstream's first SETTINGS read and acknowledged.
pub struct Upstream<U> {
    io: U,
    input: InBuf,
    /// The upstream's settings so far (the latest value of each).
    settings: Vec<(u16, u32)>,
    /// SETTINGS the relay sent on its own that the upstream has not acknowledged yet.
    unacked: u32,
    /// Connection window the upstream granted while idle, not yet passed on to a client.
    window: u32,
    /// Answers written while idle (PING and SETTINGS acknowledgements), not yet sent.
    output: OutBuf,
}

impl<U: AsyncRead + AsyncWrite + Unpin> Upstream<U> {
    /// Keeps a connection that waits for a client in order: acknowledges SETTINGS, answers PING, notes
    /// window granted. Ready (with why) once it cannot be used: closed, going away, or anything a
    /// connection without streams should not get.
    pub fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            // Frames may be waiting already: they came with the upstream's first SETTINGS.
            while let Some((head, frame)) = match self.input.whole_frame(DEFAULT_MAX_FRAME) {
                Ok(next) => next,
                Err(fatal) => return Poll::Ready(invalid_data(fatal)),
            } {
                let payload = &frame[HEAD_LEN..];
                if let Err(fatal) = check_frame(&head, payload, None) {
                    return Poll::Ready(invalid_data(fatal));
                }
                match (head.kind, head.stream) {
                    (SETTINGS, _) if head.flags & ACK != 0 => {
                        self.unacked = self.unacked.saturating_sub(1);
                    }
                    (SETTINGS, _) => {
                        for (id, value) in parse_settings(payload) {
                            self.settings.retain(|(known, _)| *known != id);
                            self.settings.push((id, value));
                        }
                        write_frame(&mut self.output.buf, SETTINGS, ACK, 0, &[]);
                    }
                    (PING, _) if head.flags & ACK == 0 => {
                        write_frame(&mut self.output.buf, PING, ACK, 0, payload);
                    }
                    (WINDOW_UPDATE, 0) => {
                        self.window = self.window.saturating_add(be32(payload) & 0x7fff_ffff);
                    }
                    (GOAWAY, _) => return Poll::Ready(invalid("the upstream went away")),
                    (kind, _) if kind > CONTINUATION => {}
                    _ => return Poll::Ready(invalid("an unexpected frame on an idle connection")),
                }
                self.input.consume(HEAD_LEN + head.len);
            }
            if let Poll::Ready(Err(error)) = poll_write_all(&mut self.io, &mut self.output, cx) {
                return Poll::Ready(error);
            }
            if let Poll::Ready(Err(error)) = Pin::new(&mut self.io).poll_flush(cx) {
                return Poll::Ready(error);
            }
            match poll_read_some(&mut self.io, &mut self.input, cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => return Poll::Ready(io::ErrorKind::UnexpectedEof.into()),
                Poll::Ready(Err(error)) => return Poll::Ready(error),
                Poll::Ready(Ok(_)) => {}
            }
        }
    }
}

/// Opens HTTP/2 on `io`, a connection to the upstream that chose h2 in ALPN.
pub async fn handshake<U: AsyncRead + AsyncWrite + Unpin>(mut io: U) -> io::Result<Upstream<U>> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(PREFACE);
    write_settings(&mut out, &[(ENABLE_PUSH, 0)]);
    io.write_all(&out).await?;
    io.flush().await?;
    let mut input = InBuf::default();
    let settings = loop {
        if let Some(head) = input.frame_head() {
            if head.kind != SETTINGS || head.flags & ACK != 0 || head.stream != 0 {
                return Err(invalid("the upstream did not begin with SETTINGS"));
            }
            if head.len > DEFAULT_MAX_FRAME {
                return Err(invalid("the upstream's SETTINGS frame is too large"));
            }
            if input.unread().len() >= HEAD_LEN + head.len {
                let payload = &input.unread()[HEAD_LEN..HEAD_LEN + head.len];
                if payload.len() % 6 != 0 {
                    return Err(invalid("the upstream's SETTINGS are not in 6-byte entries"));
                }
                let settings = parse_settings(payload);
                input.consume(HEAD_LEN + head.len);
                break settings;
            }
        }
        let space = input.space(READ_CHUNK);
        let n = io.read(space).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        input.filled(n);
    };
    out.clear();
    write_frame(&mut out, SETTINGS, ACK, 0, &[]);
    io.write_all(&out).await?;
    io.flush().await?;
    Ok(Upstream {
        io,
        input,
        settings,
        unacked: 1,
        window: 0,
        output: OutBuf::default(),
    })
}

fn invalid(message: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

fn invalid_data(fatal: Fatal) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, fatal.why)
}

/// Relays `client` (whose TLS chose h2) over `upstream` until either ends.
pub async fn relay<C, U>(client: C, upstream: Upstream<U>, scope: Scope)
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let mut relay = Relay::new(client, upstream, scope);
    let end = poll_fn(|cx| relay.poll_run(cx)).await;
    relay.close(end).await;
}

#[derive(Debug, Clone, Copy)]
struct Head {
    len: usize,
    kind: u8,
    flags: u8,
    stream: u32,
}

/// Bytes read and not yet parsed.
#[derive(Default)]
struct InBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl InBuf {
    fn unread(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Room for at least `min` more bytes, moving the unread ones to the front first when that makes it.
    fn space(&mut self, min: usize) -> &mut [u8] {
        if self.buf.len() - self.end < min {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.buf.len() - self.end < min {
                self.buf.resize(self.end + min, 0);
            }
        }
        &mut self.buf[self.end..]
    }

    fn filled(&mut self, n: usize) {
        self.end += n;
    }

    fn append(&mut self, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.space(bytes.len())[..bytes.len()].copy_from_slice(bytes);
            self.filled(bytes.len());
        }
    }

    fn frame_head(&self) -> Option<Head> {
        let b = self.unread().get(..HEAD_LEN)?;
        Some(Head {
            len: usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        })
    }

    /// The next frame, its head and all its bytes, once they are all here. A frame larger than `max`
    /// (what the peer was told it may send) is an error.
    fn whole_frame(&self, max: usize) -> Result<Option<(Head, &[u8])>, Fatal> {
        let Some(head) = self.frame_head() else {
            return Ok(None);
        };
        if head.len > max {
            return Err(Fatal::new(
                FRAME_SIZE_ERROR,
                format!("a frame of {} bytes", head.len),
            ));
        }
        Ok(self
            .unread()
            .get(..HEAD_LEN + head.len)
            .map(|frame| (head, frame)))
    }

    /// Lets go of the buffer if everything in it is parsed (an idle connection keeps little).
    fn shrink(&mut self) {
        if self.start == self.end {
            self.buf = Vec::new();
        }
    }
}

/// Bytes to write, and how many of them are written.
#[derive(Default)]
struct OutBuf {
    buf: Vec<u8>,
    written: usize,
}

impl OutBuf {
    fn pending(&self) -> usize {
        self.buf.len() - self.written
    }

    /// Lets go of the buffer if all of it is written; zeroed first, since the upstream's held the
    /// integration's headers.
    fn shrink(&mut self) {
        if self.pending() == 0 {
            self.buf.zeroize();
            self.buf = Vec::new();
            self.written = 0;
        }
    }
}

fn write_head(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream: u32) {
    let len = len as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
}

fn write_frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    write_head(out, payload.len(), kind, flags, stream);
    out.extend_from_slice(payload);
}

fn write_settings(out: &mut Vec<u8>, settings: &[(u16, u32)]) {
    write_head(out, settings.len() * 6, SETTINGS, 0, 0);
    for (id, value) in settings {
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&value.to_be_bytes());
    }
}

fn write_window_update(out: &mut Vec<u8>, stream: u32, increment: u32) {
    write_frame(out, WINDOW_UPDATE, 0, stream, &increment.to_be_bytes());
}

fn write_rst(out: &mut Vec<u8>, stream: u32, code: u32) {
    write_frame(out, RST_STREAM, 0, stream, &code.to_be_bytes());
}

fn write_goaway(out: &mut Vec<u8>, last_stream: u32, code: u32) {
    let mut payload = [0u8; 8];
    payload[..4].copy_from_slice(&last_stream.to_be_bytes());
    payload[4..].copy_from_slice(&code.to_be_bytes());
    write_frame(out, GOAWAY, 0, 0, &payload);
}

/// A header block split into HEADERS and as many CONTINUATION frames as `max_frame` asks.
fn write_header_block(
    out: &mut Vec<u8>,
    stream: u32,
    end_stream: bool,
    block: &[u8],
    max_frame: usize,
) {
    let mut chunks = block.chunks(max_frame.max(1)).peekable();
    let mut kind = HEADERS;
    let mut flags = if end_stream { END_STREAM } else { 0 };
    if chunks.peek().is_none() {
        write_frame(out, HEADERS, flags | END_HEADERS, stream, &[]);
        return;
    }
    while let Some(chunk) = chunks.next() {
        if chunks.peek().is_none() {
            flags |= END_HEADERS;
        }
        write_frame(out, kind, flags, stream, chunk);
        kind = CONTINUATION;
        flags = 0;
    }
}

/// The entries of a SETTINGS payload (whose length `check_frame` found a multiple of 6).
fn parse_settings(payload: &[u8]) -> Vec<(u16, u32)> {
    payload
        .chunks_exact(6)
        .map(|entry| (u16::from_be_bytes([entry[0], entry[1]]), be32(&entry[2..])))
        .collect()
}

/// The first four bytes of `bytes` as a big-endian number (0 where there are fewer).
fn be32(bytes: &[u8]) -> u32 {
    bytes
        .first_chunk::<4>()
        .map_or(0, |chunk| u32::from_be_bytes(*chunk))
}

/// The rules of RFC 9113 section 6 about a frame's own shape, the same from either peer: which frames
/// belong to a stream and which to the connection, the lengths of the fixed-size ones, and that nothing
/// comes between a header block's frames.
fn check_frame(head: &Head, payload: &[u8], pending: Option<&Block>) -> Result<(), Fatal> {
    if let Some(block) = pending {
        if head.kind != CONTINUATION || head.stream != block.stream {
            return Err(Fatal::new(PROTOCOL_ERROR, "a header block was interrupted"));
        }
    }
    let on_stream = matches!(
        head.kind,
        DATA | HEADERS | PRIORITY | RST_STREAM | PUSH_PROMISE | CONTINUATION
    );
    let on_connection = matches!(head.kind, SETTINGS | PING | GOAWAY);
    if (on_stream && head.stream == 0) || (on_connection && head.stream != 0) {
        return Err(Fatal::new(
            PROTOCOL_ERROR,
            format!("frame type {} on stream {}", head.kind, head.stream),
        ));
    }
    let size_ok = match head.kind {
        PRIORITY => payload.len() == 5,
        RST_STREAM | WINDOW_UPDATE => payload.len() == 4,
        PING => payload.len() == 8,
        GOAWAY => payload.len() >= 8,
        SETTINGS if head.flags & ACK != 0 => payload.is_empty(),
        SETTINGS => payload.len() % 6 == 0,
        _ => true,
    };
    if !size_ok {
        return Err(Fatal::new(
            FRAME_SIZE_ERROR,
            format!("frame type {} of {} bytes", head.kind, payload.len()),
        ));
    }
    Ok(())
}

/// Takes a SETTINGS acknowledgement: whether it answers SETTINGS forwarded from the other peer (and is
/// passed on) rather than ones the relay sent on its own (`own` of those still unanswered).
fn answers_forwarded(own: &mut u32) -> bool {
    if *own > 0 {
        *own -= 1;
        false
    } else {
        true
    }
}

/// The part of a DATA or HEADERS payload after its pad length (and priority, for HEADERS) and before
/// its padding.
fn unpadded<'a>(head: &Head, payload: &'a [u8]) -> Result<&'a [u8], Fatal> {
    let mut body = payload;
    let mut pad = 0usize;
    if head.flags & PADDED != 0 {
        let (&length, rest) = body
            .split_first()
            .ok_or_else(|| Fatal::new(FRAME_SIZE_ERROR, "padded frame without a pad length"))?;
        pad = usize::from(length);
        body = rest;
    }
    if head.kind == HEADERS && head.flags & PRIORITY_FLAG != 0 {
        body = body
            .get(5..)
            .ok_or_else(|| Fatal::new(FRAME_SIZE_ERROR, "HEADERS too short for its priority"))?;
    }
    if pad > body.len() {
        return Err(Fatal::new(PROTOCOL_ERROR, "padding longer than the frame"));
    }
    Ok(&body[..body.len() - pad])
}

/// A header block whose last frame is in.
struct WholeBlock<'p> {
    stream: u32,
    end_stream: bool,
    bytes: Cow<'p, [u8]>,
}

/// Joins the frames of a header block (HEADERS, then CONTINUATION until END_HEADERS).
fn join_block<'p>(
    pending: &mut Option<Block>,
    head: &Head,
    payload: &'p [u8],
) -> Result<Option<WholeBlock<'p>>, Fatal> {
    if head.kind == HEADERS {
        // Streams are only ever opened by the client (no push): odd numbers.
        if head.stream % 2 == 0 {
            return Err(Fatal::new(PROTOCOL_ERROR, "HEADERS on an even stream"));
        }
        let fragment = unpadded(head, payload)?;
        let end_stream = head.flags & END_STREAM != 0;
        if head.flags & END_HEADERS != 0 {
            return Ok(Some(WholeBlock {
                stream: head.stream,
                end_stream,
                bytes: Cow::Borrowed(fragment),
            }));
        }
        *pending = Some(Block {
            stream: head.stream,
            end_stream,
            bytes: fragment.to_vec(),
            started: Clock::now(),
        });
        return Ok(None);
    }
    let Some(mut block) = pending.take() else {
        return Err(Fatal::new(PROTOCOL_ERROR, "CONTINUATION without HEADERS"));
    };
    if block.bytes.len() + payload.len() > MAX_HEADER_BYTES {
        return Err(Fatal::new(ENHANCE_YOUR_CALM, "a header block over 64 KiB"));
    }
    block.bytes.extend_from_slice(payload);
    if head.flags & END_HEADERS == 0 {
        *pending = Some(block);
        return Ok(None);
    }
    Ok(Some(WholeBlock {
        stream: block.stream,
        end_stream: block.end_stream,
        bytes: Cow::Owned(block.bytes),
    }))
}

/// A connection error: the peer that caused it gets GOAWAY with `code`.
#[derive(Debug)]
struct Fatal {
    code: u32,
    why: String,
}

impl Fatal {
    fn new(code: u32, why: impl Into<String>) -> Fatal {
        Fatal {
            code,
            why: why.into(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Peer {
    Client,
    Upstream,
}

impl Peer {
    fn name(self) -> &'static str {
        match self {
            Peer::Client => "client",
            Peer::Upstream => "upstream",
        }
    }
}

/// How the relay ended, and whose fault it was if anyone's.
#[derive(Debug)]
enum End {
    ClientClosed,
    UpstreamClosed,
    Idle,
    Client(Fatal),
    Upstream(Fatal),
    Io(io::Error),
}

/// A header block being assembled from HEADERS and CONTINUATION frames.
struct Block {
    stream: u32,
    end_stream: bool,
    bytes: Vec<u8>,
    started: Clock,
}

/// A request forwarded upstream, until both its halves end or either side resets it.
struct Exchange {
    record: Record,
    started: Instant,
    request_open: bool,
    response_open: bool,
    status: Option<u16>,
    bytes_up: u64,
    bytes_down: u64,
    _in_flight: InFlight,
}

/// A request's fields as the client sent them, their bytes in one buffer that each request reuses.
#[derive(Default)]
struct RequestHead {
    bytes: Vec<u8>,
    method: Option<Range<usize>>,
    scheme: Option<Range<usize>>,
    authority: Option<Range<usize>>,
    path: Option<Range<usize>>,
    protocol: bool,
    hosts: Vec<Range<usize>>,
    fields: Vec<(Range<usize>, Range<usize>)>,
    malformed: Option<&'static str>,
    list_size: usize,
    too_large: bool,
}

/// Everything the relay knows between frames; the I/O lives beside it in `Relay`.
struct Core {
    scope: Scope,
    authority: String,
    to_client: OutBuf,
    to_upstream: OutBuf,
    client_decoder: hpack::Decoder,
    upstream_decoder: hpack::Decoder,
    client_block: Option<Block>,
    upstream_block: Option<Block>,
    exchanges: HashMap<u32, Exchange>,
    /// The highest stream the client has opened.
    last_stream: u32,
    /// The client's preface: the magic bytes, then its first SETTINGS.
    awaiting_magic: bool,
    awaiting_settings: bool,
    /// ACKs that answer SETTINGS the relay sent on its own (not forwarded), to be dropped.
    own_settings_client: u32,
    own_settings_upstream: u32,
    /// For each SETTINGS forwarded to the upstream, the header table size it set, if it did: the
    /// upstream's ACK says when its encoder uses it.
    table_sizes_sent: VecDeque<Option<u32>>,
    /// A header table size the client's decoder has been promised an update to in the next block it gets.
    table_update_due: Option<u32>,
    client_table_size: u32,
    /// Frame sizes each peer has told the relay it accepts (for header blocks the relay writes itself).
    client_max_frame: usize,
    upstream_max_frame: usize,
    /// What each peer may send the relay (the most it was told, as a new value applies only once acknowledged).
    client_recv_max_frame: usize,
    upstream_recv_max_frame: usize,
    client_initial_window: u32,
    max_streams: u32,
    /// Of the client's connection window, the part the upstream does not know about.
    reserve: u32,
    /// Connection window to give back to each peer for DATA the relay dropped (a stream already closed).
    credit_client: u32,
    credit_upstream: u32,
    /// The last stream the upstream's GOAWAY says it processed: no stream above it goes there.
    upstream_goaway: Option<u32>,
    /// The last stream named in the GOAWAY sent to the client: a later GOAWAY may not name a higher one.
    goaway_sent: Option<u32>,
    idle_since: Option<Clock>,
    started: Clock,
    scratch: Vec<u8>,
    /// The request being decoded (kept for its buffers).
    request: RequestHead,
}

struct Relay<C, U> {
    client: C,
    upstream: U,
    client_in: InBuf,
    upstream_in: InBuf,
    client_eof: bool,
    upstream_eof: bool,
    /// Whether the frames that came with the upstream's preface have been handled.
    primed: bool,
    /// Whether the buffers were let go of since the connection last went idle.
    lean: bool,
    timer: Pin<Box<Sleep>>,
    core: Core,
}

impl<C, U> Relay<C, U>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    fn new(client: C, upstream: Upstream<U>, scope: Scope) -> Self {
        let now = Clock::now();
        let authority = scope.authority();
        let mut core = Core {
            scope,
            authority,
            to_client: OutBuf::default(),
            to_upstream: OutBuf::default(),
            client_decoder: hpack::Decoder::new(TABLE_SIZE),
            upstream_decoder: hpack::Decoder::new(TABLE_SIZE),
            client_block: None,
            upstream_block: None,
            exchanges: HashMap::new(),
            last_stream: 0,
            awaiting_magic: true,
            awaiting_settings: true,
            own_settings_client: 0,
            own_settings_upstream: upstream.unacked,
            table_sizes_sent: VecDeque::new(),
            table_update_due: None,
            client_table_size: TABLE_SIZE as u32,
            client_max_frame: DEFAULT_MAX_FRAME,
            upstream_max_frame: DEFAULT_MAX_FRAME,
            client_recv_max_frame: DEFAULT_MAX_FRAME,
            upstream_recv_max_frame: DEFAULT_MAX_FRAME,
            client_initial_window: 65_535,
            max_streams: MAX_STREAMS,
            reserve: 0,
            credit_client: 0,
            credit_upstream: 0,
            upstream_goaway: None,
            goaway_sent: None,
            idle_since: Some(now),
            started: now,
            scratch: Vec::new(),
            request: RequestHead::default(),
        };
        core.server_preface(&upstream.settings);
        if upstream.window > 0 {
            write_window_update(&mut core.to_client.buf, 0, upstream.window);
        }
        let mut to_upstream = upstream.output;
        to_upstream.buf.drain(..to_upstream.written);
        core.to_upstream.buf = to_upstream.buf;
        Relay {
            client,
            upstream: upstream.io,
            client_in: InBuf::default(),
            upstream_in: upstream.input,
            client_eof: false,
            upstream_eof: false,
            primed: false,
            lean: false,
            timer: Box::pin(tokio::time::sleep_until(now + HEADER_TIMEOUT)),
            core,
        }
    }

    fn poll_run(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        if !self.primed {
            self.primed = true;
            if let Err(fatal) = self.core.upstream_frames(&mut self.upstream_in) {
                return Poll::Ready(End::Upstream(fatal));
            }
        }
        loop {
            let mut progress = false;
            // Requests first: the upstream can begin on them while the client's answers are written.
            match poll_write_all(&mut self.upstream, &mut self.core.to_upstream, cx) {
                Poll::Ready(Ok(wrote)) => progress |= wrote,
                Poll::Ready(Err(error)) => return Poll::Ready(End::Io(error)),
                Poll::Pending => {}
            }
            match poll_write_all(&mut self.client, &mut self.core.to_client, cx) {
                Poll::Ready(Ok(wrote)) => progress |= wrote,
                Poll::Ready(Err(error)) => return Poll::Ready(End::Io(error)),
                Poll::Pending => {}
            }
            // Everything each peer has sent is read before anything is written, so that the frames of
            // several TLS records leave in one write. Not from a client whose requests' audit records
            // wait for room in the log's queue (`PolledLog`).
            let logged = self.core.scope.log.poll_drain(cx).is_ready();
            while logged && !self.client_eof && self.core.room() && self.core.scope.log.is_clear() {
                let core = &mut self.core;
                let read = poll_read_frames(&mut self.client, &mut self.client_in, cx, |input| {
                    core.client_frames(input)
                });
                match read {
                    Poll::Ready(Ok(None)) => {
                        self.client_eof = true;
                        return Poll::Ready(End::ClientClosed);
                    }
                    Poll::Ready(Ok(Some(handled))) => {
                        progress = true;
                        self.lean = false;
                        if let Err(fatal) = handled {
                            return Poll::Ready(End::Client(fatal));
                        }
                    }
                    Poll::Ready(Err(error)) => return Poll::Ready(End::Io(error)),
                    Poll::Pending => break,
                }
            }
            while !self.upstream_eof && self.core.room() {
                let core = &mut self.core;
                let read =
                    poll_read_frames(&mut self.upstream, &mut self.upstream_in, cx, |input| {
                        core.upstream_frames(input)
                    });
                match read {
                    Poll::Ready(Ok(None)) => {
                        self.upstream_eof = true;
                        return Poll::Ready(End::UpstreamClosed);
                    }
                    Poll::Ready(Ok(Some(handled))) => {
                        progress = true;
                        if let Err(fatal) = handled {
                            return Poll::Ready(End::Upstream(fatal));
                        }
                    }
                    Poll::Ready(Err(error)) => return Poll::Ready(End::Io(error)),
                    Poll::Pending => break,
                }
            }
            self.core.give_credit();
            if progress {
                continue;
            }
            if let Err(error) = poll_flush_both(&mut self.client, &mut self.upstream, cx) {
                return Poll::Ready(End::Io(error));
            }
            // The timer is armed for the first deadline only; one that came sooner since (the connection
            // went idle: its buffers go in SHRINK_AFTER) moves it earlier.
            if let Some(since) = self.core.idle_since.filter(|_| !self.lean) {
                let shrink_at = since + SHRINK_AFTER;
                if shrink_at < self.timer.deadline() {
                    self.timer.as_mut().reset(shrink_at);
                }
            }
            if self.timer.as_mut().poll(cx).is_ready() {
                let now = Clock::now();
                if !self.lean && self.core.idle_for(now) >= SHRINK_AFTER {
                    self.lean = true;
                    self.client_in.shrink();
                    self.upstream_in.shrink();
                    self.core.shrink();
                }
                match self.core.deadline(now, self.lean) {
                    Err(end) => return Poll::Ready(end),
                    Ok(next) => {
                        self.timer.as_mut().reset(next);
                        // Polled once so the new deadline is registered with this task.
                        if self.timer.as_mut().poll(cx).is_ready() {
                            continue;
                        }
                    }
                }
            }
            return Poll::Pending;
        }
    }

    /// Ends the exchanges still open, tells the peers why, and closes both connections.
    async fn close(&mut self, end: End) {
        let core = &mut self.core;
        let (client_error, upstream_error, reason) = match &end {
            End::ClientClosed => (
                None,
                Some(NO_ERROR),
                "the client closed the connection".into(),
            ),
            End::UpstreamClosed => (
                Some(NO_ERROR),
                None,
                "the upstream closed the connection".to_string(),
            ),
            End::Idle => (Some(NO_ERROR), Some(NO_ERROR), "idle".into()),
            End::Client(fatal) => (
                Some(fatal.code),
                Some(NO_ERROR),
                format!("client protocol error: {}", fatal.why),
            ),
            End::Upstream(fatal) => (
                Some(INTERNAL_ERROR),
                Some(fatal.code),
                format!("upstream protocol error: {}", fatal.why),
            ),
            // Whichever side failed: the other is told, if it is still there.
            End::Io(error) => (
                Some(NO_ERROR),
                Some(NO_ERROR),
                format!("connection failed: {error}"),
            ),
        };
        tracing::debug!(sni = %core.scope.sni, %reason, "HTTP/2 relay ended");
        // The upstream closed after a GOAWAY the client has, with nothing left open: another GOAWAY would
        // only repeat it (and curl 7.88, given a second, fails a stream the first had it send again).
        let told = matches!(end, End::UpstreamClosed)
            && core.goaway_sent.is_some()
            && core.exchanges.is_empty();
        // A request without an answer yet that may go twice is refused (REFUSED_STREAM), so that the client
        // sends it again on a new connection, as the daemon does for HTTP/1.1 clients: the upstream going
        // (a restart) should not fail it.
        let upstream_gone = matches!(end, End::UpstreamClosed | End::Io(_));
        let mut exchanges: Vec<(u32, Exchange)> = core.exchanges.drain().collect();
        exchanges.sort_unstable_by_key(|(id, _)| *id);
        let mut failed = false;
        for (id, exchange) in exchanges {
            let again = upstream_gone
                && exchange.status.is_none()
                && exchange
                    .record
                    .method
                    .as_deref()
                    .is_some_and(|method| is_idempotent(method.as_bytes()));
            if again {
                write_rst(&mut core.to_client.buf, id, REFUSED_STREAM);
                let why = format!(
                    "{reason} before answering; the client was told (REFUSED_STREAM) and may send it \
                     again (it is idempotent)"
                );
                finish(&mut core.scope, exchange, Some(why));
            } else {
                failed = true;
                finish(&mut core.scope, exchange, Some(reason.clone()));
            }
        }
        // The client's streams cut short fail with the connection.
        let client_error = match client_error {
            Some(NO_ERROR) if failed && upstream_gone => Some(INTERNAL_ERROR),
            code => code,
        };
        if let Some(code) = client_error.filter(|_| !told) {
            // A GOAWAY may repeat an earlier one, never name a later stream.
            let last = core
                .goaway_sent
                .map_or(core.last_stream, |last| last.min(core.last_stream));
            write_goaway(&mut core.to_client.buf, last, code);
        }
        if let Some(code) = upstream_error {
            write_goaway(&mut core.to_upstream.buf, 0, code);
        }
        let client = &mut self.client;
        let upstream = &mut self.upstream;
        let to_client = &mut core.to_client;
        let to_upstream = &mut core.to_upstream;
        let log = &mut core.scope.log;
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            let _ = tokio::join!(
                poll_fn(|cx| log.poll_drain(cx)),
                async {
                    if poll_fn(|cx| poll_write_rest(client, to_client, cx))
                        .await
                        .is_ok()
                        && client.shutdown().await.is_ok()
                    {
                        linger(client).await;
                    }
                },
                async {
                    if poll_fn(|cx| poll_write_rest(upstream, to_upstream, cx))
                        .await
                        .is_ok()
                    {
                        let _ = upstream.shutdown().await;
                    }
                }
            );
        })
        .await;
        to_upstream.buf.zeroize();
    }
}

/// Reads and drops what the client still sends until it closes its side (bounded by the caller): closing a
/// socket with unread data resets the connection, and a reset makes the client's kernel drop what it has
/// received and not yet read, such as the last frames just written (as nginx lingers, for the same reason).
async fn linger<C: AsyncRead + Unpin>(client: &mut C) {
    let mut sink = [0u8; 4096];
    while matches!(client.read(&mut sink).await, Ok(n) if n > 0) {}
}

impl<C, U> Drop for Relay<C, U> {
    fn drop(&mut self) {
        // It held the integration's headers on their way out.
        self.core.to_upstream.buf.zeroize();
        self.core.scratch.zeroize();
    }
}

/// Writes what `out` holds; Ready(true) when something was written, Ready(false) when there was nothing.
fn poll_write_all<T: AsyncWrite + Unpin>(
    io: &mut T,
    out: &mut OutBuf,
    cx: &mut Context<'_>,
) -> Poll<io::Result<bool>> {
    let mut wrote = false;
    while out.written < out.buf.len() {
        match Pin::new(&mut *io).poll_write(cx, &out.buf[out.written..]) {
            Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            Poll::Ready(Ok(n)) => {
                out.written += n;
                wrote = true;
            }
            Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
            Poll::Pending => {
                return if wrote {
                    Poll::Ready(Ok(true))
                } else {
                    Poll::Pending
                }
            }
        }
    }
    out.buf.clear();
    out.written = 0;
    Poll::Ready(Ok(wrote))
}

/// Writes all that `out` holds, however many writes that takes (`poll_write_all` returns after one that
/// filled the socket's buffer, so that the relay can read meanwhile).
fn poll_write_rest<T: AsyncWrite + Unpin>(
    io: &mut T,
    out: &mut OutBuf,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    while out.pending() > 0 {
        std::task::ready!(poll_write_all(io, out, cx))?;
    }
    Poll::Ready(Ok(()))
}

fn poll_flush_both<C, U>(client: &mut C, upstream: &mut U, cx: &mut Context<'_>) -> io::Result<()>
where
    C: AsyncWrite + Unpin,
    U: AsyncWrite + Unpin,
{
    if let Poll::Ready(Err(error)) = Pin::new(client).poll_flush(cx) {
        return Err(error);
    }
    if let Poll::Ready(Err(error)) = Pin::new(upstream).poll_flush(cx) {
        return Err(error);
    }
    Ok(())
}

fn poll_read_some<T: AsyncRead + Unpin>(
    io: &mut T,
    input: &mut InBuf,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    let space = input.space(READ_CHUNK);
    let mut buf = ReadBuf::new(space);
    match Pin::new(io).poll_read(cx, &mut buf) {
        Poll::Ready(Ok(())) => {
            let n = buf.filled().len();
            input.filled(n);
            Poll::Ready(Ok(n))
        }
        Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
        Poll::Pending => Poll::Pending,
    }
}

thread_local! {
    /// The worker's read buffer, shared by its connections: a connection needs one of its own only while
    /// a frame it has read part of waits for the rest, so an idle one keeps none.
    static READ_BUFFER: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// Reads what `io` has and hands it to `handle`, which takes the whole frames: None at the end of the
/// stream, else what `handle` made of it. A partial frame left over waits in `own`.
fn poll_read_frames<T: AsyncRead + Unpin>(
    io: &mut T,
    own: &mut InBuf,
    cx: &mut Context<'_>,
    handle: impl FnOnce(&mut InBuf) -> Result<(), Fatal>,
) -> Poll<io::Result<Option<Result<(), Fatal>>>> {
    let read = |input: &mut InBuf| {
        poll_read_some(io, input, cx).map_ok(|n| (n > 0).then(|| handle(input)))
    };
    if !own.unread().is_empty() {
        return read(own);
    }
    let mut shared = InBuf {
        buf: READ_BUFFER.take(),
        start: 0,
        end: 0,
    };
    let polled = read(&mut shared);
    own.append(shared.unread());
    READ_BUFFER.set(shared.buf);
    polled
}

/// Writes the audit record of an exchange that ended (`error`: why it did not end well).
fn finish(scope: &mut Scope, exchange: Exchange, error: Option<String>) {
    let mut record = exchange.record;
    record.status = exchange.status;
    record.bytes_up = exchange.bytes_up;
    record.bytes_down = exchange.bytes_down;
    let complete = exchange.status.is_some() && !exchange.response_open;
    let (verdict, error) = if complete {
        (Verdict::Injected, None)
    } else {
        (
            Verdict::Error,
            Some(error.unwrap_or_else(|| "the response did not end".into())),
        )
    };
    record.finish(verdict, error, exchange.started);
    scope.finished(record);
}

/// Whether `name` may appear in an HTTP/2 field name: a token, in lower case.
fn valid_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.iter().all(|&b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b)
        })
}

fn valid_value(value: &[u8]) -> bool {
    !value.iter().any(|&b| b == 0 || b == b'\r' || b == b'\n')
}

/// Fields that are about one HTTP/1.1 connection and have no place in HTTP/2 (RFC 9113 §8.2.2).
fn connection_specific(name: &[u8], value: &[u8]) -> bool {
    matches!(
        name,
        b"connection" | b"keep-alive" | b"proxy-connection" | b"transfer-encoding" | b"upgrade"
    ) || (name == b"te" && value != b"trailers")
}

impl RequestHead {
    fn clear(&mut self) {
        self.bytes.clear();
        self.method = None;
        self.scheme = None;
        self.authority = None;
        self.path = None;
        self.protocol = false;
        self.hosts.clear();
        self.fields.clear();
        self.malformed = None;
        self.list_size = 0;
        self.too_large = false;
    }

    fn keep(&mut self, bytes: &[u8]) -> Range<usize> {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(bytes);
        start..self.bytes.len()
    }

    fn get(&self, range: &Range<usize>) -> &[u8] {
        self.bytes.get(range.clone()).unwrap_or_default()
    }

    fn method(&self) -> &[u8] {
        self.method.as_ref().map_or(&[], |range| self.get(range))
    }

    fn path(&self) -> Option<&[u8]> {
        self.path.as_ref().map(|range| self.get(range))
    }

    fn authority(&self) -> Option<&[u8]> {
        self.authority.as_ref().map(|range| self.get(range))
    }

    fn hosts(&self) -> impl Iterator<Item = &[u8]> {
        self.hosts.iter().map(|range| self.get(range))
    }

    fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.fields
            .iter()
            .map(|(name, value)| (self.get(name), self.get(value)))
    }

    /// Takes one decoded field (in order) into the request, noting the first way it is malformed.
    fn field(&mut self, name: &[u8], value: &[u8]) {
        self.list_size += name.len() + value.len() + 32;
        if self.list_size > MAX_HEADER_BYTES || self.fields.len() >= MAX_FIELDS {
            self.too_large = true;
            return;
        }
        if self.malformed.is_some() {
            return;
        }
        if !valid_value(value) {
            self.malformed = Some("a field value holds NUL, CR or LF");
            return;
        }
        if let Some(pseudo) = name.strip_prefix(b":") {
            if !self.fields.is_empty() || !self.hosts.is_empty() {
                self.malformed = Some("a pseudo-header after the regular fields");
                return;
            }
            if pseudo == b"protocol" {
                if self.protocol {
                    self.malformed = Some("a repeated pseudo-header");
                }
                self.protocol = true;
                return;
            }
            let kept = self.keep(value);
            let slot = match pseudo {
                b"method" => &mut self.method,
                b"scheme" => &mut self.scheme,
                b"authority" => &mut self.authority,
                b"path" => &mut self.path,
                _ => {
                    self.malformed = Some("an unknown pseudo-header");
                    return;
                }
            };
            if slot.is_some() {
                self.malformed = Some("a repeated pseudo-header");
                return;
            }
            *slot = Some(kept);
            return;
        }
        if !valid_name(name) {
            self.malformed = Some("a field name that is not a lower-case token");
            return;
        }
        if connection_specific(name, value) {
            self.malformed = Some("a connection-specific field (Connection, Upgrade, ...)");
            return;
        }
        if name == b"host" {
            let kept = self.keep(value);
            self.hosts.push(kept);
            return;
        }
        let name = self.keep(name);
        let value = self.keep(value);
        self.fields.push((name, value));
    }

    fn check(&self) -> Result<(), &'static str> {
        if let Some(why) = self.malformed {
            return Err(why);
        }
        if self.method().is_empty() {
            return Err("no :method");
        }
        if self.method() != b"CONNECT"
            && (self.scheme.is_none() || self.path().is_none_or(<[u8]>::is_empty))
        {
            return Err("no :scheme or :path");
        }
        Ok(())
    }

    fn check_trailers(&self) -> Result<(), &'static str> {
        if let Some(why) = self.malformed {
            return Err(why);
        }
        if self.method.is_some()
            || self.scheme.is_some()
            || self.authority.is_some()
            || self.path.is_some()
            || self.protocol
        {
            return Err("pseudo-headers in trailers");
        }
        Ok(())
    }
}

impl Core {
    /// The relay's own first SETTINGS to the client, from what the upstream said in its preface.
    fn server_preface(&mut self, upstream_settings: &[(u16, u32)]) {
        let mut settings = self.settings_for_client(upstream_settings);
        if !settings.iter().any(|(id, _)| *id == MAX_CONCURRENT_STREAMS) {
            settings.push((MAX_CONCURRENT_STREAMS, self.max_streams));
        }
        if !settings.iter().any(|(id, _)| *id == MAX_HEADER_LIST_SIZE) {
            settings.push((MAX_HEADER_LIST_SIZE, MAX_HEADER_BYTES as u32));
        }
        write_settings(&mut self.to_client.buf, &settings);
        self.own_settings_client += 1;
    }

    /// The upstream's settings as the client gets them: its header table is the relay's business, push
    /// and extended CONNECT are not offered, streams and frame sizes are capped.
    fn settings_for_client(&mut self, upstream_settings: &[(u16, u32)]) -> Vec<(u16, u32)> {
        let mut settings = Vec::with_capacity(upstream_settings.len());
        for &(id, value) in upstream_settings {
            match id {
                MAX_CONCURRENT_STREAMS => {
                    self.max_streams = value.min(MAX_STREAMS);
                    settings.push((id, self.max_streams));
                }
                INITIAL_WINDOW_SIZE => settings.push((id, value)),
                MAX_FRAME_SIZE => {
                    self.upstream_max_frame = value as usize;
                    let capped = value.min(MAX_FRAME);
                    self.client_recv_max_frame = self.client_recv_max_frame.max(capped as usize);
                    settings.push((id, capped));
                }
                MAX_HEADER_LIST_SIZE => {
                    settings.push((id, value.min(MAX_HEADER_BYTES as u32)));
                }
                _ => {}
            }
        }
        settings
    }

    /// Parses and handles every complete frame the client sent.
    fn client_frames(&mut self, input: &mut InBuf) -> Result<(), Fatal> {
        if self.awaiting_magic {
            let unread = input.unread();
            let n = unread.len().min(PREFACE.len());
            if unread[..n] != PREFACE[..n] {
                return Err(Fatal::new(PROTOCOL_ERROR, "not the HTTP/2 client preface"));
            }
            if n < PREFACE.len() {
                return Ok(());
            }
            input.consume(PREFACE.len());
            self.awaiting_magic = false;
        }
        while let Some((head, frame)) = input.whole_frame(self.client_recv_max_frame)? {
            self.client_frame(head, frame)?;
            input.consume(HEAD_LEN + head.len);
        }
        Ok(())
    }

    fn upstream_frames(&mut self, input: &mut InBuf) -> Result<(), Fatal> {
        while let Some((head, frame)) = input.whole_frame(self.upstream_recv_max_frame)? {
            self.upstream_frame(head, frame)?;
            input.consume(HEAD_LEN + head.len);
        }
        Ok(())
    }

    /// One frame from the client (`frame` includes its 9-byte head).
    fn client_frame(&mut self, head: Head, frame: &[u8]) -> Result<(), Fatal> {
        let payload = &frame[HEAD_LEN..];
        if self.awaiting_settings {
            if head.kind != SETTINGS || head.flags & ACK != 0 {
                return Err(Fatal::new(
                    PROTOCOL_ERROR,
                    "the preface is not followed by SETTINGS",
                ));
            }
            self.awaiting_settings = false;
        }
        check_frame(&head, payload, self.client_block.as_ref())?;
        match head.kind {
            DATA => {
                let data_len = unpadded(&head, payload)?.len() as u64;
                let end = head.flags & END_STREAM != 0;
                match self.exchanges.get_mut(&head.stream) {
                    Some(exchange) if exchange.request_open => {
                        exchange.bytes_up += data_len;
                        self.to_upstream.buf.extend_from_slice(frame);
                        if end {
                            exchange.request_open = false;
                            self.maybe_done(head.stream);
                        }
                    }
                    _ if head.stream > self.last_stream => {
                        return Err(Fatal::new(PROTOCOL_ERROR, "DATA on a stream never opened"));
                    }
                    // Closed (or answered by the relay): the upstream never sees these bytes, so the client
                    // gets their window back from the relay.
                    _ => self.credit_client = self.credit_client.saturating_add(head.len as u32),
                }
            }
            HEADERS | CONTINUATION => {
                if let Some(block) = join_block(&mut self.client_block, &head, payload)? {
                    self.client_block_done(block.stream, block.end_stream, &block.bytes)?;
                }
            }
            RST_STREAM => {
                let forwarded = self.pass_reset(Peer::Client, &head, frame);
                if !forwarded && head.stream > self.last_stream {
                    return Err(Fatal::new(
                        PROTOCOL_ERROR,
                        "RST_STREAM on a stream never opened",
                    ));
                }
            }
            SETTINGS => self.client_settings(head, payload)?,
            PUSH_PROMISE => return Err(Fatal::new(PROTOCOL_ERROR, "a client may not push")),
            PING if head.flags & ACK == 0 => {
                write_frame(&mut self.to_client.buf, PING, ACK, 0, payload);
            }
            GOAWAY => {
                // Its last stream counts the upstream's streams: there are none (no push).
                self.to_upstream.buf.extend_from_slice(frame);
            }
            WINDOW_UPDATE => {
                let increment = window_increment(&head, payload)?;
                if head.stream == 0 {
                    let kept = increment.min(RESERVE.saturating_sub(self.reserve));
                    self.reserve += kept;
                    if increment > kept {
                        write_window_update(&mut self.to_upstream.buf, 0, increment - kept);
                    }
                } else if self.exchanges.contains_key(&head.stream) {
                    self.to_upstream.buf.extend_from_slice(frame);
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn client_settings(&mut self, head: Head, payload: &[u8]) -> Result<(), Fatal> {
        if head.flags & ACK != 0 {
            if answers_forwarded(&mut self.own_settings_client) {
                write_frame(&mut self.to_upstream.buf, SETTINGS, ACK, 0, &[]);
            }
            return Ok(());
        }
        let settings = parse_settings(payload);
        let mut forwarded = Vec::with_capacity(settings.len());
        let mut table_size = None;
        for (id, value) in settings {
            match id {
                HEADER_TABLE_SIZE => {
                    let capped = value.min(TABLE_SIZE as u32);
                    table_size = Some(capped);
                    forwarded.push((id, capped));
                }
                ENABLE_PUSH if value > 1 => {
                    return Err(Fatal::new(PROTOCOL_ERROR, "ENABLE_PUSH above 1"));
                }
                INITIAL_WINDOW_SIZE => {
                    if value > 0x7fff_ffff {
                        return Err(Fatal::new(
                            FLOW_CONTROL_ERROR,
                            "INITIAL_WINDOW_SIZE above 2^31-1",
                        ));
                    }
                    self.client_initial_window = value;
                    forwarded.push((id, value));
                }
                MAX_FRAME_SIZE => {
                    if !(16_384..=16_777_215).contains(&value) {
                        return Err(Fatal::new(PROTOCOL_ERROR, "MAX_FRAME_SIZE out of range"));
                    }
                    self.client_max_frame = value as usize;
                    let capped = value.min(MAX_FRAME);
                    self.upstream_recv_max_frame =
                        self.upstream_recv_max_frame.max(capped as usize);
                    forwarded.push((id, capped));
                }
                MAX_HEADER_LIST_SIZE => forwarded.push((id, value)),
                _ => {}
            }
        }
        if self.table_sizes_sent.len() >= MAX_UNACKED_SETTINGS {
            return Err(Fatal::new(
                ENHANCE_YOUR_CALM,
                "SETTINGS faster than the upstream acknowledges them",
            ));
        }
        write_settings(&mut self.to_upstream.buf, &forwarded);
        self.table_sizes_sent.push_back(table_size);
        Ok(())
    }

    /// A complete header block from the client: a new request, or a request's trailers.
    fn client_block_done(
        &mut self,
        stream: u32,
        end_stream: bool,
        block: &[u8],
    ) -> Result<(), Fatal> {
        let mut request = std::mem::take(&mut self.request);
        request.clear();
        let decoded = self
            .client_decoder
            .decode(block, |name, value| request.field(name, value))
            .map_err(|error| Fatal::new(COMPRESSION_ERROR, error.to_string()));
        let handled = decoded.map(|()| self.client_request(stream, end_stream, &request));
        self.request = request;
        handled
    }

    /// The decoded header block of `stream`.
    fn client_request(&mut self, stream: u32, end_stream: bool, request: &RequestHead) {
        if let Some(exchange) = self.exchanges.get_mut(&stream) {
            if !exchange.request_open || !end_stream {
                self.reset_both(
                    stream,
                    PROTOCOL_ERROR,
                    "trailers that do not end the request",
                );
                return;
            }
            if request.check_trailers().is_err() {
                self.reset_both(stream, PROTOCOL_ERROR, "malformed trailers");
                return;
            }
            exchange.request_open = false;
            self.scratch.clear();
            let injected_names = match &self.scope.injected {
                Ok(injected) => injected.names.as_slice(),
                Err(_) => &[],
            };
            for (name, value) in request.fields() {
                if !injected_names.iter().any(|n| n.as_bytes() == name) {
                    hpack::encode_field(name, value, false, &mut self.scratch);
                }
            }
            write_header_block(
                &mut self.to_upstream.buf,
                stream,
                true,
                &self.scratch,
                self.upstream_max_frame,
            );
            self.maybe_done(stream);
            return;
        }
        if stream <= self.last_stream {
            // A stream that is closed (or that the relay answered): nothing more goes on it.
            return;
        }
        self.last_stream = stream;
        self.new_request(stream, end_stream, request);
    }

    fn new_request(&mut self, stream: u32, end_stream: bool, request: &RequestHead) {
        let mut record = self.scope.record.clone();
        record.method = Some(String::from_utf8_lossy(request.method()).into_owned());
        let path = request.path().unwrap_or_default();
        let path = path.split(|&b| b == b'?').next().unwrap_or_default();
        record.path = Some(String::from_utf8_lossy(path).into_owned());
        let head = policy::Head {
            method: request.method(),
            authority: request.authority(),
            tunnel: request.protocol,
            // Upgrade itself is connection-specific, which makes a request malformed in HTTP/2.
            h2c: request.fields().any(|(name, _)| name == b"http2-settings"),
            too_large: request.too_large,
        };
        record.host = head.host(request.hosts());
        if let Some(why) = self.refused_stream(stream) {
            write_rst(&mut self.to_client.buf, stream, REFUSED_STREAM);
            if let Some(why) = why {
                record.finish(Verdict::Error, Some(why.into()), Instant::now());
                self.scope.finished(record);
            }
            return;
        }
        // A head over the limits was not read whole: it is refused for its size, not as malformed.
        let malformed = if head.too_large {
            None
        } else {
            request.check().err()
        };
        if let Some(why) = malformed {
            write_rst(&mut self.to_client.buf, stream, PROTOCOL_ERROR);
            record.finish(
                Verdict::Denied,
                Some(format!("malformed HTTP/2 request: {why}")),
                Instant::now(),
            );
            self.scope.finished(record);
            return;
        }
        if let Some(refusal) = head.refusal(request.hosts(), &self.scope.sni, self.scope.port) {
            let (status, message) = (refusal.status, refusal.message);
            return self.answer(
                stream,
                !end_stream,
                record,
                status,
                message,
                Verdict::Denied,
            );
        }
        let injected = match &self.scope.injected {
            Ok(injected) => injected,
            Err(reason) => {
                let message = format!("sandbox: {reason}; see the daemon's log");
                return self.answer(stream, !end_stream, record, 500, message, Verdict::Error);
            }
        };
        self.scratch.clear();
        hpack::encode_field(b":method", request.method(), false, &mut self.scratch);
        hpack::encode_field(b":scheme", b"https", false, &mut self.scratch);
        hpack::encode_field(
            b":authority",
            self.authority.as_bytes(),
            false,
            &mut self.scratch,
        );
        hpack::encode_field(
            b":path",
            request.path().unwrap_or(b"/"),
            false,
            &mut self.scratch,
        );
        for (name, value) in request.fields() {
            if !injected.names.iter().any(|n| n.as_bytes() == name) {
                hpack::encode_field(name, value, false, &mut self.scratch);
            }
        }
        self.scratch.extend_from_slice(&injected.block);
        write_header_block(
            &mut self.to_upstream.buf,
            stream,
            end_stream,
            &self.scratch,
            self.upstream_max_frame,
        );
        self.scratch.fill(0);
        self.exchanges.insert(
            stream,
            Exchange {
                record,
                started: Instant::now(),
                request_open: !end_stream,
                response_open: true,
                status: None,
                bytes_up: 0,
                bytes_down: 0,
                _in_flight: InFlight::start(),
            },
        );
        self.idle_since = None;
    }

    /// Whether a new stream must be refused (REFUSED_STREAM) before anything else: the upstream is going
    /// away, or the client opened more streams than it was allowed. With why, for the audit record, in the
    /// first case; the second is a client ignoring SETTINGS, which gets no record per stream.
    fn refused_stream(&self, stream: u32) -> Option<Option<&'static str>> {
        if self.upstream_goaway.is_some_and(|last| stream > last) {
            return Some(Some(
                "not sent: the upstream is going away (GOAWAY); the client was told (REFUSED_STREAM) \
                 and may send it again on a new connection",
            ));
        }
        (self.exchanges.len() >= self.max_streams as usize).then_some(None)
    }

    /// The relay's own answer on a stream it does not forward; a request still sending is then reset (it
    /// was answered, RFC 9113 §8.1).
    fn answer(
        &mut self,
        stream: u32,
        request_open: bool,
        mut record: Record,
        status: u16,
        message: String,
        verdict: Verdict,
    ) {
        let body = format!("{message}\n");
        let send_body = body.len() as u32 <= self.reserve
            && body.len() as u32 <= self.client_initial_window
            && body.len() <= self.client_max_frame;
        let mut block = Vec::with_capacity(64);
        if let Some(size) = self.table_update_due.take() {
            hpack::encode_size_update(size as usize, &mut block);
        }
        hpack::encode_field(b":status", status.to_string().as_bytes(), false, &mut block);
        hpack::encode_field(
            b"content-type",
            b"text/plain; charset=utf-8",
            false,
            &mut block,
        );
        if send_body {
            hpack::encode_field(
                b"content-length",
                body.len().to_string().as_bytes(),
                false,
                &mut block,
            );
        }
        write_header_block(
            &mut self.to_client.buf,
            stream,
            !send_body,
            &block,
            self.client_max_frame,
        );
        if send_body {
            self.reserve -= body.len() as u32;
            write_frame(
                &mut self.to_client.buf,
                DATA,
                END_STREAM,
                stream,
                body.as_bytes(),
            );
        }
        if request_open {
            write_rst(&mut self.to_client.buf, stream, NO_ERROR);
        }
        record.status = Some(status);
        record.bytes_down = if send_body { body.len() as u64 } else { 0 };
        record.finish(verdict, Some(message), Instant::now());
        self.scope.finished(record);
    }

    /// Passes a RST_STREAM from `from` to the other peer and ends its exchange, if the stream is one the
    /// relay forwards; whether it was.
    fn pass_reset(&mut self, from: Peer, head: &Head, frame: &[u8]) -> bool {
        let Some(exchange) = self.exchanges.remove(&head.stream) else {
            return false;
        };
        let to = match from {
            Peer::Client => &mut self.to_upstream,
            Peer::Upstream => &mut self.to_client,
        };
        to.buf.extend_from_slice(frame);
        let code = be32(&frame[HEAD_LEN..]);
        let why = format!(
            "the {} reset the stream ({})",
            from.name(),
            reason_name(code)
        );
        finish(&mut self.scope, exchange, Some(why));
        self.note_idle();
        true
    }

    /// Resets a forwarded stream on both sides (a protocol error in it).
    fn reset_both(&mut self, stream: u32, code: u32, why: &str) {
        if let Some(exchange) = self.exchanges.remove(&stream) {
            write_rst(&mut self.to_client.buf, stream, code);
            write_rst(&mut self.to_upstream.buf, stream, code);
            finish(&mut self.scope, exchange, Some(why.to_string()));
            self.note_idle();
        }
    }

    /// Ends an exchange whose request and response are both complete.
    fn maybe_done(&mut self, stream: u32) {
        let done = self
            .exchanges
            .get(&stream)
            .is_some_and(|exchange| !exchange.request_open && !exchange.response_open);
        if done {
            if let Some(exchange) = self.exchanges.remove(&stream) {
                finish(&mut self.scope, exchange, None);
            }
            self.note_idle();
        }
    }

    fn note_idle(&mut self) {
        if self.exchanges.is_empty() && self.idle_since.is_none() {
            self.idle_since = Some(Clock::now());
        }
    }

    /// One frame from the upstream.
    fn upstream_frame(&mut self, head: Head, frame: &[u8]) -> Result<(), Fatal> {
        let payload = &frame[HEAD_LEN..];
        check_frame(&head, payload, self.upstream_block.as_ref())?;
        match head.kind {
            DATA => {
                let data_len = unpadded(&head, payload)?.len() as u64;
                match self.exchanges.get_mut(&head.stream) {
                    Some(exchange) if exchange.response_open => {
                        exchange.bytes_down += data_len;
                        self.to_client.buf.extend_from_slice(frame);
                        if head.flags & END_STREAM != 0 {
                            exchange.response_open = false;
                            self.maybe_done(head.stream);
                        }
                    }
                    _ => {
                        self.credit_upstream = self.credit_upstream.saturating_add(head.len as u32)
                    }
                }
            }
            HEADERS | CONTINUATION => {
                if let Some(block) = join_block(&mut self.upstream_block, &head, payload)? {
                    self.upstream_block_done(block.stream, block.end_stream, &block.bytes)?;
                }
            }
            RST_STREAM => {
                self.pass_reset(Peer::Upstream, &head, frame);
            }
            SETTINGS => self.upstream_settings(head, payload)?,
            PUSH_PROMISE => {
                return Err(Fatal::new(
                    PROTOCOL_ERROR,
                    "PUSH_PROMISE with push disabled",
                ))
            }
            PING if head.flags & ACK == 0 => {
                write_frame(&mut self.to_upstream.buf, PING, ACK, 0, payload);
            }
            GOAWAY => self.upstream_goaway(frame),
            WINDOW_UPDATE => {
                window_increment(&head, payload)?;
                if head.stream == 0 || self.exchanges.contains_key(&head.stream) {
                    self.to_client.buf.extend_from_slice(frame);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The upstream is going away: the streams above its last one were not processed. The GOAWAY goes to
    /// the client as it came (its last stream counts the client's streams, which the relay forwards with
    /// their own numbers): the client sends those streams again on a new connection, as it would if it
    /// talked to the upstream directly.
    fn upstream_goaway(&mut self, frame: &[u8]) {
        let last = be32(&frame[HEAD_LEN..]) & 0x7fff_ffff;
        self.upstream_goaway = Some(last);
        if self.goaway_sent.is_none_or(|sent| last <= sent) {
            self.to_client.buf.extend_from_slice(frame);
            self.goaway_sent = Some(last);
        }
        let refused: Vec<u32> = self
            .exchanges
            .keys()
            .copied()
            .filter(|&id| id > last)
            .collect();
        for id in refused {
            if let Some(exchange) = self.exchanges.remove(&id) {
                finish(
                    &mut self.scope,
                    exchange,
                    Some(
                        "the upstream went away before taking it (GOAWAY); the client was told, \
                         and may send it again on a new connection"
                            .into(),
                    ),
                );
            }
        }
        self.note_idle();
    }

    fn upstream_settings(&mut self, head: Head, payload: &[u8]) -> Result<(), Fatal> {
        if head.flags & ACK != 0 {
            if !answers_forwarded(&mut self.own_settings_upstream) {
                return Ok(());
            }
            write_frame(&mut self.to_client.buf, SETTINGS, ACK, 0, &[]);
            if let Some(Some(size)) = self.table_sizes_sent.pop_front() {
                // The upstream's encoder now works within this: its next block starts with the update, and
                // the relay's own answers, which may come first, must carry it too.
                self.upstream_decoder.set_max_table_size(size as usize);
                if size < self.client_table_size {
                    self.table_update_due = Some(size);
                }
                self.client_table_size = size;
            }
            return Ok(());
        }
        let forwarded = self.settings_for_client(&parse_settings(payload));
        write_settings(&mut self.to_client.buf, &forwarded);
        Ok(())
    }

    /// A complete header block from the upstream: a response head (informational or final) or trailers.
    fn upstream_block_done(
        &mut self,
        stream: u32,
        end_stream: bool,
        block: &[u8],
    ) -> Result<(), Fatal> {
        let mut status = None;
        self.upstream_decoder
            .decode_wanted(
                block,
                |name| name == b":status",
                |_, value| {
                    status = std::str::from_utf8(value)
                        .ok()
                        .and_then(|v| v.parse::<u16>().ok());
                },
            )
            .map_err(|error| Fatal::new(COMPRESSION_ERROR, error.to_string()))?;
        let well_formed = match self.exchanges.get_mut(&stream) {
            Some(exchange) if exchange.response_open => match status {
                Some(code) if exchange.status.is_none() && code >= 200 => {
                    exchange.status = Some(code);
                    true
                }
                Some(code) if exchange.status.is_none() && (100..200).contains(&code) => true,
                None => exchange.status.is_some() && end_stream,
                Some(_) => false,
            },
            // Its client went away (reset); the block was decoded to keep the table in step.
            _ => return Ok(()),
        };
        if !well_formed {
            self.reset_both(
                stream,
                PROTOCOL_ERROR,
                "the upstream sent a malformed response head",
            );
            return Ok(());
        }
        self.table_update_due = None;
        write_header_block(
            &mut self.to_client.buf,
            stream,
            end_stream,
            block,
            self.client_max_frame,
        );
        if end_stream {
            if let Some(exchange) = self.exchanges.get_mut(&stream) {
                exchange.response_open = false;
            }
            self.maybe_done(stream);
        }
        Ok(())
    }

    /// Whether both outputs have room for what reading more would add.
    fn room(&self) -> bool {
        self.to_client.pending() < HIGH_WATER && self.to_upstream.pending() < HIGH_WATER
    }

    /// Window updates for DATA the relay dropped.
    fn give_credit(&mut self) {
        if self.credit_client > 0 {
            write_window_update(
                &mut self.to_client.buf,
                0,
                std::mem::take(&mut self.credit_client),
            );
        }
        if self.credit_upstream > 0 {
            write_window_update(
                &mut self.to_upstream.buf,
                0,
                std::mem::take(&mut self.credit_upstream),
            );
        }
    }

    /// Lets go of the buffers an idle connection does not need.
    fn shrink(&mut self) {
        self.to_client.shrink();
        self.to_upstream.shrink();
        self.scratch.zeroize();
        self.scratch = Vec::new();
        self.request = RequestHead::default();
        self.exchanges.shrink_to_fit();
    }

    fn idle_for(&self, now: Clock) -> Duration {
        self.idle_since
            .map_or(Duration::ZERO, |since| now.saturating_duration_since(since))
    }

    /// When the timer fires: the end, if a deadline has passed; else when to look again (`lean`: whether
    /// the buffers of an idle connection were let go of already).
    fn deadline(&self, now: Clock, lean: bool) -> Result<Clock, End> {
        let mut next = now + IDLE_TIMEOUT;
        if self.awaiting_magic || self.awaiting_settings {
            let due = self.started + HEADER_TIMEOUT;
            if now >= due {
                return Err(End::Client(Fatal::new(
                    PROTOCOL_ERROR,
                    "no preface in time",
                )));
            }
            next = next.min(due);
        }
        if let Some(block) = &self.client_block {
            let due = block.started + HEADER_TIMEOUT;
            if now >= due {
                return Err(End::Client(Fatal::new(
                    PROTOCOL_ERROR,
                    "a header block did not end in time",
                )));
            }
            next = next.min(due);
        }
        if let Some(since) = self.idle_since {
            let due = since + IDLE_TIMEOUT;
            if now >= due {
                return Err(End::Idle);
            }
            next = next.min(due);
            if !lean {
                next = next.min(since + SHRINK_AFTER);
            }
        }
        Ok(next)
    }
}

fn window_increment(head: &Head, payload: &[u8]) -> Result<u32, Fatal> {
    let increment = be32(payload) & 0x7fff_ffff;
    if increment == 0 && head.stream == 0 {
        return Err(Fatal::new(PROTOCOL_ERROR, "a WINDOW_UPDATE of 0"));
    }
    Ok(increment)
}

fn reason_name(code: u32) -> String {
    match code {
        NO_ERROR => "NO_ERROR".into(),
        PROTOCOL_ERROR => "PROTOCOL_ERROR".into(),
        INTERNAL_ERROR => "INTERNAL_ERROR".into(),
        FLOW_CONTROL_ERROR => "FLOW_CONTROL_ERROR".into(),
        STREAM_CLOSED => "STREAM_CLOSED".into(),
        REFUSED_STREAM => "REFUSED_STREAM".into(),
        0x8 => "CANCEL".into(),
        ENHANCE_YOUR_CALM => "ENHANCE_YOUR_CALM".into(),
        other => format!("error code {other:#x}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::Kind;
    use http::{HeaderMap, Method, Request, Response, StatusCode};
    use hyper::body::Bytes;
    use std::sync::{Arc, Mutex};
    use tokio::io::DuplexStream;

    const SNI: &str = "api.test";
    const SECRET: &str = "Bearer s3cret-value";

    type Records = Arc<Mutex<Vec<Record>>>;
    /// Requests as the upstream saw them: (method, authority, path, headers).
    type Seen = Arc<Mutex<Vec<(Method, String, String, HeaderMap)>>>;

    /// A scope whose audit records end up in `records`, through a queue.
    fn scope(records: &Records, injected: Result<Injected, String>) -> Scope {
        let records = records.clone();
        let (queue, mut logged) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            while let Some(record) = logged.recv().await {
                records.lock().unwrap().push(record);
            }
        });
        Scope {
            sni: SNI.into(),
            port: 443,
            injected,
            record: Record {
                time: std::time::SystemTime::UNIX_EPOCH,
                sandbox: "t1".into(),
                uid: 1000,
                profile: "default".into(),
                kind: Kind::Https,
                destination: "10.0.0.3:443".into(),
                sni: Some(SNI.into()),
                method: None,
                host: None,
                path: None,
                status: None,
                integration: Some("api".into()),
                bytes_up: 0,
                bytes_down: 0,
                duration_ms: 0,
                verdict: Verdict::Passed,
                error: None,
                retries: 0,
            },
            log: PolledLog::new(queue),
            counted: Box::new(|_| {}),
        }
    }

    fn authorization() -> Result<Injected, String> {
        let mut block = Zeroizing::new(Vec::new());
        hpack::encode_field(b"authorization", SECRET.as_bytes(), true, &mut block);
        Ok(Injected {
            names: vec!["authorization".into()],
            block,
        })
    }

    /// The test upstream: records each request, then answers by path. `/echo`: 200 "ok"; `/upload`: the
    /// body's length; `/big?N`: N bytes; `/trailers`: a body and trailers; `/early`: 413 at once, without
    /// reading the body; `/continue`: 100 before it reads the body.
    /// `pong`: told when a PING the upstream sends at once has been answered.
    async fn upstream(
        io: DuplexStream,
        seen: Seen,
        max_streams: Option<u32>,
        pong: Option<tokio::sync::oneshot::Sender<()>>,
    ) {
        let mut builder = h2::server::Builder::new();
        if let Some(max) = max_streams {
            builder.max_concurrent_streams(max);
        }
        let Ok(mut connection) = builder.handshake::<_, Bytes>(io).await else {
            return;
        };
        if let (Some(pong), Some(mut pinger)) = (pong, connection.ping_pong()) {
            tokio::spawn(async move {
                if pinger.ping(h2::Ping::opaque()).await.is_ok() {
                    let _ = pong.send(());
                }
            });
        }
        while let Some(Ok((request, mut respond))) = connection.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let (parts, mut body) = request.into_parts();
                seen.lock().unwrap().push((
                    parts.method.clone(),
                    parts
                        .uri
                        .authority()
                        .map(|a| a.to_string())
                        .unwrap_or_default(),
                    parts.uri.path().to_string(),
                    parts.headers.clone(),
                ));
                let path = parts.uri.path().to_string();
                let query = parts.uri.query().unwrap_or_default().to_string();
                if path == "/early" {
                    let response = Response::builder().status(413).body(()).unwrap();
                    let _ = respond.send_response(response, true);
                    return;
                }
                if path == "/continue" {
                    let go_on = Response::builder().status(100).body(()).unwrap();
                    let _ = respond.send_informational(go_on);
                }
                let mut received = 0usize;
                while let Some(Ok(chunk)) = body.data().await {
                    received += chunk.len();
                    let _ = body.flow_control().release_capacity(chunk.len());
                }
                let response = Response::builder().status(200).body(()).unwrap();
                let Ok(mut send) = respond.send_response(response, false) else {
                    return;
                };
                let payload: Vec<u8> = match path.as_str() {
                    "/upload" => received.to_string().into_bytes(),
                    "/big" => (0..query.parse::<usize>().unwrap())
                        .map(|i| (i % 251) as u8)
                        .collect(),
                    _ => b"ok".to_vec(),
                };
                let mut rest = Bytes::from(payload);
                while !rest.is_empty() {
                    send.reserve_capacity(rest.len());
                    let Some(Ok(n)) = std::future::poll_fn(|cx| send.poll_capacity(cx)).await
                    else {
                        return;
                    };
                    let chunk = rest.split_to(n.min(rest.len()));
                    if send.send_data(chunk, false).is_err() {
                        return;
                    }
                }
                if path == "/trailers" {
                    let mut trailers = HeaderMap::new();
                    trailers.insert("x-checksum", "abc".parse().unwrap());
                    let _ = send.send_trailers(trailers);
                } else {
                    let _ = send.send_data(Bytes::new(), true);
                }
            });
        }
    }

    struct Setup {
        client: h2::client::SendRequest<Bytes>,
        records: Records,
        seen: Seen,
    }

    /// client ⇄ relay ⇄ upstream over in-memory pipes.
    async fn setup(
        connection_window: u32,
        injected: Result<Injected, String>,
        max_streams: Option<u32>,
    ) -> Setup {
        let records = Records::default();
        let seen = Seen::default();
        let (relay_up, upstream_io) = tokio::io::duplex(64 * 1024);
        tokio::spawn(upstream(upstream_io, seen.clone(), max_streams, None));
        let up = handshake(relay_up).await.unwrap();
        let (client_io, relay_client) = tokio::io::duplex(64 * 1024);
        tokio::spawn(relay(relay_client, up, scope(&records, injected)));
        let (client, connection) = h2::client::Builder::new()
            .initial_connection_window_size(connection_window)
            .handshake::<_, Bytes>(client_io)
            .await
            .unwrap();
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Setup {
            client,
            records,
            seen,
        }
    }

    async fn get(
        client: &mut h2::client::SendRequest<Bytes>,
        request: Request<()>,
        body: Option<Bytes>,
    ) -> Result<(Response<()>, Vec<u8>, Option<HeaderMap>), h2::Error> {
        let mut client = client.clone().ready().await?;
        let (response, mut send) = client.send_request(request, body.is_none())?;
        if let Some(body) = body {
            let mut rest = body;
            while !rest.is_empty() {
                send.reserve_capacity(rest.len());
                let n = std::future::poll_fn(|cx| send.poll_capacity(cx))
                    .await
                    .unwrap()?;
                let chunk = rest.split_to(n.min(rest.len()));
                send.send_data(chunk, rest.is_empty())?;
            }
        }
        let (parts, mut body) = response.await?.into_parts();
        let mut data = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk?;
            let _ = body.flow_control().release_capacity(chunk.len());
            data.extend_from_slice(&chunk);
        }
        let trailers = body.trailers().await?;
        Ok((Response::from_parts(parts, ()), data, trailers))
    }

    fn request(method: &str, uri: &str) -> Request<()> {
        Request::builder().method(method).uri(uri).body(()).unwrap()
    }

    async fn records_settled(records: &Records, n: usize) -> Vec<Record> {
        for _ in 0..200 {
            if records.lock().unwrap().len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        records.lock().unwrap().clone()
    }

    #[tokio::test]
    async fn requests_get_the_secret_in_place_of_the_clients_and_responses_pass() {
        let mut s = setup(1 << 20, authorization(), None).await;
        let mut req = request("GET", "https://api.test/trailers?q=1");
        req.headers_mut()
            .insert("authorization", "Bearer client-made-up".parse().unwrap());
        req.headers_mut().insert("x-kept", "yes".parse().unwrap());
        let (response, body, trailers) = get(&mut s.client, req, None).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(body, b"ok");
        assert_eq!(trailers.unwrap()["x-checksum"], "abc");
        let seen = s.seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 1);
        let (method, authority, path, headers) = &seen[0];
        assert_eq!(
            (method.as_str(), authority.as_str(), path.as_str()),
            ("GET", SNI, "/trailers")
        );
        assert_eq!(
            headers.get_all("authorization").iter().collect::<Vec<_>>(),
            vec![SECRET]
        );
        assert_eq!(headers["x-kept"], "yes");
        let records = records_settled(&s.records, 1).await;
        let record = &records[0];
        assert_eq!(record.verdict, Verdict::Injected);
        assert_eq!(record.status, Some(200));
        assert_eq!(record.path.as_deref(), Some("/trailers"));
        assert_eq!(record.host.as_deref(), Some(SNI));
        assert_eq!(record.bytes_down, 2);
        assert!(!format!("{record:?}").contains("s3cret"));
    }

    #[tokio::test]
    async fn bodies_stream_both_ways_under_flow_control_on_many_streams() {
        let s = setup(1 << 20, authorization(), None).await;
        let upload: Bytes = (0..3_000_000usize)
            .map(|i| (i % 7) as u8)
            .collect::<Vec<_>>()
            .into();
        let mut tasks = Vec::new();
        for i in 0..8 {
            let mut client = s.client.clone();
            let upload = upload.clone();
            tasks.push(tokio::spawn(async move {
                if i % 2 == 0 {
                    let (response, body, _) = get(
                        &mut client,
                        request("POST", "https://api.test/upload"),
                        Some(upload),
                    )
                    .await
                    .unwrap();
                    assert_eq!(response.status(), 200);
                    assert_eq!(body, b"3000000");
                } else {
                    let (_, body, _) = get(
                        &mut client,
                        request("GET", "https://api.test/big?2500000"),
                        None,
                    )
                    .await
                    .unwrap();
                    assert_eq!(body.len(), 2_500_000);
                    assert!(body.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let records = records_settled(&s.records, 8).await;
        assert!(
            records.iter().all(|r| r.verdict == Verdict::Injected),
            "{records:?}"
        );
        let up: u64 = records.iter().map(|r| r.bytes_up).sum();
        let down: u64 = records.iter().map(|r| r.bytes_down).sum();
        assert_eq!((up, down), (4 * 3_000_000, 4 * 2_500_000 + 4 * 7));
    }

    #[tokio::test]
    async fn a_host_other_than_the_server_name_gets_421_and_nothing_is_sent() {
        let mut s = setup(1 << 20, authorization(), None).await;
        let (response, body, _) = get(
            &mut s.client,
            request("GET", "https://other.test/echo"),
            None,
        )
        .await
        .unwrap();
        assert_eq!(response.status(), StatusCode::MISDIRECTED_REQUEST);
        assert!(
            String::from_utf8_lossy(&body).contains("other.test"),
            "{body:?}"
        );
        let mut host = request("GET", "https://api.test/echo");
        host.headers_mut()
            .insert("host", "other.test".parse().unwrap());
        let (response, _, _) = get(&mut s.client, host, None).await.unwrap();
        assert_eq!(response.status(), StatusCode::MISDIRECTED_REQUEST);
        for method in ["TRACE", "CONNECT"] {
            let req = Request::builder()
                .method(method)
                .uri("https://api.test/")
                .body(())
                .unwrap();
            let (response, _, _) = get(&mut s.client, req, None).await.unwrap();
            assert_eq!(
                response.status(),
                StatusCode::METHOD_NOT_ALLOWED,
                "{method}"
            );
        }
        // The connection still works, and only this request reached the upstream.
        let (response, _, _) = get(
            &mut s.client,
            request("GET", "https://api.test:443/echo"),
            None,
        )
        .await
        .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(s.seen.lock().unwrap().len(), 1);
        let records = records_settled(&s.records, 5).await;
        let denied: Vec<_> = records
            .iter()
            .filter(|r| r.verdict == Verdict::Denied)
            .collect();
        assert_eq!(denied.len(), 4, "{records:?}");
    }

    #[tokio::test]
    async fn without_window_to_spare_a_refusal_comes_without_its_body() {
        let mut s = setup(65_535, authorization(), None).await;
        let (response, body, _) = get(&mut s.client, request("GET", "https://other.test/"), None)
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::MISDIRECTED_REQUEST);
        assert!(body.is_empty());
        // The window the upstream knows of is whole: a download of all of it passes.
        let (_, body, _) = get(
            &mut s.client,
            request("GET", "https://api.test/big?200000"),
            None,
        )
        .await
        .unwrap();
        assert_eq!(body.len(), 200_000);
    }

    #[tokio::test]
    async fn header_lists_over_the_limits_get_431_and_the_connection_goes_on() {
        let mut s = setup(1 << 20, authorization(), None).await;
        // Digits take 5 bits in HPACK's Huffman code: the block stays under 64 KiB, its list does not.
        let mut big = request("GET", "https://api.test/echo");
        big.headers_mut()
            .insert("x-big", "0".repeat(70 * 1024).parse().unwrap());
        let mut many = request("GET", "https://api.test/echo");
        for i in 0..=MAX_FIELDS {
            many.headers_mut().insert(
                format!("x-field-{i}").parse::<http::HeaderName>().unwrap(),
                "1".parse().unwrap(),
            );
        }
        for (what, oversized) in [("big", big), ("many", many)] {
            let (response, _, _) = get(&mut s.client, oversized, None).await.unwrap();
            assert_eq!(
                response.status(),
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "{what}"
            );
        }
        let (response, _, _) = get(&mut s.client, request("GET", "https://api.test/echo"), None)
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(s.seen.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_missing_secret_gets_500_and_nothing_is_sent() {
        let mut s = setup(1 << 20, Err("secret \"openai\" is not loaded".into()), None).await;
        let (response, body, _) = get(&mut s.client, request("GET", "https://api.test/echo"), None)
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(String::from_utf8_lossy(&body).contains("openai"));
        assert!(s.seen.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_early_answer_ends_the_request_and_the_connection_goes_on() {
        let mut s = setup(1 << 20, authorization(), None).await;
        let upload: Bytes = vec![7u8; 1_000_000].into();
        let mut client = s.client.clone().ready().await.unwrap();
        let (response, mut send) = client
            .send_request(request("POST", "https://api.test/early"), false)
            .unwrap();
        send.reserve_capacity(upload.len());
        let response = response.await.unwrap();
        assert_eq!(response.status(), 413);
        drop(send);
        let (response, body, _) = get(
            &mut s.client,
            request("GET", "https://api.test/big?100000"),
            None,
        )
        .await
        .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(body.len(), 100_000);
    }

    #[tokio::test]
    async fn a_spare_kept_idle_answers_the_upstream_and_then_relays() {
        let records = Records::default();
        let seen = Seen::default();
        let (pong, ponged) = tokio::sync::oneshot::channel();
        let (relay_up, upstream_io) = tokio::io::duplex(64 * 1024);
        tokio::spawn(upstream(upstream_io, seen.clone(), None, Some(pong)));
        let mut spare = handshake(relay_up).await.unwrap();
        let idle = tokio::time::timeout(
            Duration::from_millis(300),
            std::future::poll_fn(|cx| {
                let _ = spare.poll_idle(cx);
                Poll::<()>::Pending
            }),
        );
        let (idled, ponged) = tokio::join!(idle, ponged);
        assert!(idled.is_err(), "still usable after its idle time");
        ponged.expect("the spare answered the upstream's PING");
        assert_eq!(
            spare.unacked, 0,
            "the upstream acknowledged the relay's SETTINGS meanwhile"
        );
        let (client_io, relay_client) = tokio::io::duplex(64 * 1024);
        tokio::spawn(relay(relay_client, spare, scope(&records, authorization())));
        let (mut client, connection) = h2::client::handshake(client_io).await.unwrap();
        tokio::spawn(connection);
        let (response, body, _) = get(&mut client, request("GET", "https://api.test/echo"), None)
            .await
            .unwrap();
        assert_eq!(
            (response.status(), body.as_slice()),
            (StatusCode::OK, &b"ok"[..])
        );
        assert_eq!(seen.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn the_upstreams_stream_limit_and_a_cap_reach_the_client() {
        for (upstream_limit, seen_by_client) in [(3, 3), (10_000, MAX_STREAMS as usize)] {
            let mut s = setup(1 << 20, authorization(), Some(upstream_limit)).await;
            // A response means the relay's SETTINGS, which come first, were read.
            get(&mut s.client, request("GET", "https://api.test/echo"), None)
                .await
                .unwrap();
            assert_eq!(s.client.current_max_send_streams(), seen_by_client);
        }
    }

    /// A raw client: frames written by hand, so that it can send what no library would.
    struct Raw {
        io: DuplexStream,
        input: InBuf,
        records: Records,
        seen: Seen,
    }

    impl Raw {
        async fn start() -> Raw {
            let records = Records::default();
            let seen = Seen::default();
            let (relay_up, upstream_io) = tokio::io::duplex(64 * 1024);
            tokio::spawn(upstream(upstream_io, seen.clone(), None, None));
            let up = handshake(relay_up).await.unwrap();
            let (mut io, relay_client) = tokio::io::duplex(256 * 1024);
            tokio::spawn(relay(relay_client, up, scope(&records, authorization())));
            let mut out = PREFACE.to_vec();
            write_settings(&mut out, &[]);
            write_window_update(&mut out, 0, 1 << 20);
            io.write_all(&out).await.unwrap();
            Raw {
                io,
                input: InBuf::default(),
                records,
                seen,
            }
        }

        async fn send(&mut self, frames: &[u8]) {
            self.io.write_all(frames).await.unwrap();
        }

        /// The next frame (head, payload); None at the end of the connection.
        async fn frame(&mut self) -> Option<(Head, Vec<u8>)> {
            loop {
                if let Some(head) = self.input.frame_head() {
                    if self.input.unread().len() >= HEAD_LEN + head.len {
                        let payload = self.input.unread()[HEAD_LEN..HEAD_LEN + head.len].to_vec();
                        self.input.consume(HEAD_LEN + head.len);
                        return Some((head, payload));
                    }
                }
                let space = self.input.space(READ_CHUNK);
                let n = tokio::time::timeout(Duration::from_secs(5), self.io.read(space))
                    .await
                    .expect("the relay answers within 5 s")
                    .ok()?;
                if n == 0 {
                    return None;
                }
                self.input.filled(n);
            }
        }

        /// Frames until one of `kind` (on `stream`) comes; returns it.
        async fn until(&mut self, kind: u8, stream: u32) -> (Head, Vec<u8>) {
            loop {
                let (head, payload) = self.frame().await.expect("the connection ended first");
                if head.kind == kind && head.stream == stream {
                    return (head, payload);
                }
            }
        }

        async fn goaway_code(&mut self) -> u32 {
            let (_, payload) = self.until(GOAWAY, 0).await;
            u32::from_be_bytes(payload[4..8].try_into().unwrap())
        }
    }

    /// A client and an upstream both written frame by frame, with the relay between them.
    async fn raw_pair() -> (Raw, Raw) {
        let records = Records::default();
        let (relay_up, mut up) = tokio::io::duplex(256 * 1024);
        let mut settings = Vec::new();
        write_settings(&mut settings, &[]);
        up.write_all(&settings).await.unwrap();
        let upstream = handshake(relay_up).await.unwrap();
        let mut preface = [0u8; PREFACE.len()];
        up.read_exact(&mut preface).await.unwrap();
        let (mut io, relay_client) = tokio::io::duplex(256 * 1024);
        tokio::spawn(relay(
            relay_client,
            upstream,
            scope(&records, authorization()),
        ));
        let mut out = PREFACE.to_vec();
        write_settings(&mut out, &[]);
        io.write_all(&out).await.unwrap();
        let peer = |io| Raw {
            io,
            input: InBuf::default(),
            records: records.clone(),
            seen: Seen::default(),
        };
        (peer(io), peer(up))
    }

    /// Every frame until the connection ends: (kind, stream, first 4 bytes of the payload, next 4).
    async fn frames_to_end(raw: &mut Raw) -> Vec<(u8, u32, u32, u32)> {
        let mut frames = Vec::new();
        while let Some((head, payload)) = raw.frame().await {
            let word = |at: usize| {
                payload
                    .get(at..at + 4)
                    .map_or(0, |w| u32::from_be_bytes(w.try_into().unwrap()))
            };
            frames.push((head.kind, head.stream, word(0), word(4)));
        }
        frames
    }

    fn error_of(records: &[Record], path: &str) -> String {
        let record = records
            .iter()
            .find(|r| r.path.as_deref() == Some(path))
            .unwrap_or_else(|| panic!("no record for {path}: {records:#?}"));
        record.error.clone().unwrap_or_default()
    }

    /// The upstream's GOAWAY goes to the client as it came, so the client sends again the streams above its
    /// last; when the upstream then closes, an idempotent request below it without an answer is refused
    /// (REFUSED_STREAM: the client sends it again too), and a POST fails with the connection.
    #[tokio::test]
    async fn an_upstream_going_away_tells_the_client_what_to_send_again() {
        let (mut client, mut upstream) = raw_pair().await;
        let mut requests = Vec::new();
        for (stream, method, path) in [(1, "GET", "/a"), (3, "POST", "/b"), (5, "GET", "/c")] {
            let mut fields = get_fields(path);
            fields[0].1 = method.into();
            let fields: Vec<(&str, &str)> = fields.iter().map(|(n, v)| (*n, v.as_str())).collect();
            requests.extend(headers_frame(stream, END_STREAM, &fields));
        }
        client.send(&requests).await;
        upstream.until(HEADERS, 5).await;
        let mut out = Vec::new();
        write_goaway(&mut out, 3, NO_ERROR);
        upstream.send(&out).await;
        drop(upstream);

        let frames = frames_to_end(&mut client).await;
        let goaways: Vec<(u32, u32)> = frames
            .iter()
            .filter(|f| f.0 == GOAWAY)
            .map(|f| (f.2, f.3))
            .collect();
        assert_eq!(
            goaways,
            [(3, NO_ERROR), (3, INTERNAL_ERROR)],
            "the upstream's, then the relay's for the POST cut short"
        );
        let resets: Vec<(u32, u32)> = frames
            .iter()
            .filter(|f| f.0 == RST_STREAM)
            .map(|f| (f.1, f.2))
            .collect();
        assert_eq!(resets, [(1, REFUSED_STREAM)]);
        let records = records_settled(&client.records, 3).await;
        assert!(error_of(&records, "/c").contains("GOAWAY"));
        assert!(error_of(&records, "/a").contains("REFUSED_STREAM"));
        let post = error_of(&records, "/b");
        assert!(
            post.contains("the upstream closed the connection") && !post.contains("REFUSED"),
            "{post}"
        );
    }

    /// After the upstream's GOAWAY a stream the client opens is refused (and audited), and the client gets
    /// no second GOAWAY when the upstream closes with nothing open.
    #[tokio::test]
    async fn after_an_upstream_goaway_new_streams_are_refused() {
        let (mut client, mut upstream) = raw_pair().await;
        client
            .send(&headers_frame(
                1,
                END_STREAM,
                &[
                    (":method", "GET"),
                    (":scheme", "https"),
                    (":authority", SNI),
                    (":path", "/a"),
                ],
            ))
            .await;
        upstream.until(HEADERS, 1).await;
        let mut out = headers_frame(1, END_STREAM, &[(":status", "200")]);
        write_goaway(&mut out, 1, NO_ERROR);
        upstream.send(&out).await;
        client.until(HEADERS, 1).await;
        client.until(GOAWAY, 0).await;
        let mut fields = get_fields("/b");
        fields.truncate(4);
        let fields: Vec<(&str, &str)> = fields.iter().map(|(n, v)| (*n, v.as_str())).collect();
        client.send(&headers_frame(3, END_STREAM, &fields)).await;
        let (_, payload) = client.until(RST_STREAM, 3).await;
        assert_eq!(be32(&payload), REFUSED_STREAM);
        drop(upstream);
        let frames = frames_to_end(&mut client).await;
        assert!(
            frames.iter().all(|f| f.0 != GOAWAY),
            "one GOAWAY only: {frames:?}"
        );
        let records = records_settled(&client.records, 2).await;
        assert!(error_of(&records, "/b").contains("GOAWAY"), "{records:#?}");
    }

    fn headers_frame(stream: u32, flags: u8, fields: &[(&str, &str)]) -> Vec<u8> {
        let mut block = Vec::new();
        for (name, value) in fields {
            hpack::encode_field(name.as_bytes(), value.as_bytes(), false, &mut block);
        }
        let mut out = Vec::new();
        write_frame(&mut out, HEADERS, flags | END_HEADERS, stream, &block);
        out
    }

    fn get_fields(path: &str) -> Vec<(&'static str, String)> {
        vec![
            (":method", "GET".into()),
            (":scheme", "https".into()),
            (":authority", SNI.into()),
            (":path", path.into()),
        ]
    }

    fn with(fields: Vec<(&'static str, String)>, extra: &[(&'static str, &str)]) -> Vec<u8> {
        let mut all: Vec<(&str, &str)> = fields.iter().map(|(n, v)| (*n, v.as_str())).collect();
        all.extend_from_slice(extra);
        headers_frame_owned(&all)
    }

    fn headers_frame_owned(fields: &[(&str, &str)]) -> Vec<u8> {
        headers_frame(1, END_STREAM, fields)
    }

    #[tokio::test]
    async fn malformed_requests_are_reset_and_never_forwarded() {
        for (why, extra) in [
            ("upper-case name", vec![("Authorization", "Bearer x")]),
            ("connection-specific", vec![("connection", "close")]),
            ("transfer-encoding", vec![("transfer-encoding", "chunked")]),
            (
                "pseudo after regular",
                vec![("x-a", "1"), (":method", "POST")],
            ),
            ("CR in a value", vec![("x-a", "1\r\nauthorization: x")]),
        ] {
            let mut raw = Raw::start().await;
            raw.send(&with(get_fields("/echo"), &extra)).await;
            let (_, payload) = raw.until(RST_STREAM, 1).await;
            assert_eq!(
                u32::from_be_bytes(payload[..4].try_into().unwrap()),
                PROTOCOL_ERROR,
                "{why}"
            );
            assert!(raw.seen.lock().unwrap().is_empty(), "{why}");
            let records = records_settled(&raw.records, 1).await;
            assert_eq!(records[0].verdict, Verdict::Denied, "{why}");
        }
    }

    #[tokio::test]
    async fn the_host_header_must_agree_with_the_authority() {
        let mut raw = Raw::start().await;
        raw.send(&with(get_fields("/echo"), &[("host", "evil.test")]))
            .await;
        let (_, block) = raw.until(HEADERS, 1).await;
        assert_eq!(status(&block), b"421");
        assert!(raw.seen.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn padded_data_on_a_refused_stream_gives_its_window_back() {
        let mut raw = Raw::start().await;
        let mut out = Vec::new();
        // Refused (wrong host) while its body is still coming.
        let mut fields = get_fields("/upload");
        fields[2].1 = "other.test".into();
        let all: Vec<(&str, &str)> = fields.iter().map(|(n, v)| (*n, v.as_str())).collect();
        out.extend(headers_frame(1, 0, &all));
        let mut padded = vec![10u8];
        padded.extend_from_slice(&[1u8; 100]);
        padded.extend_from_slice(&[0u8; 10]);
        write_frame(&mut out, DATA, PADDED | END_STREAM, 1, &padded);
        raw.send(&out).await;
        let (_, payload) = raw.until(WINDOW_UPDATE, 0).await;
        assert_eq!(u32::from_be_bytes(payload[..4].try_into().unwrap()), 111);
    }

    #[tokio::test]
    async fn protocol_errors_end_the_connection_with_goaway() {
        let cases: Vec<(&str, Vec<u8>, u32)> = vec![
            (
                "DATA on an unopened stream",
                {
                    let mut out = Vec::new();
                    write_frame(&mut out, DATA, 0, 3, b"x");
                    out
                },
                PROTOCOL_ERROR,
            ),
            (
                "HEADERS on an even stream",
                headers_frame(2, END_STREAM, &[(":method", "GET")]),
                PROTOCOL_ERROR,
            ),
            (
                "a frame over the size limit",
                {
                    let mut out = Vec::new();
                    write_frame(&mut out, DATA, 0, 1, &vec![0u8; DEFAULT_MAX_FRAME + 1]);
                    out
                },
                FRAME_SIZE_ERROR,
            ),
            (
                "CONTINUATION flood",
                {
                    let mut out = Vec::new();
                    write_frame(&mut out, HEADERS, 0, 1, &[0x82]);
                    for _ in 0..(MAX_HEADER_BYTES / 1000 + 1) {
                        write_frame(&mut out, CONTINUATION, 0, 1, &[0x40; 1000]);
                    }
                    out
                },
                ENHANCE_YOUR_CALM,
            ),
            (
                "an interrupted header block",
                {
                    let mut out = Vec::new();
                    write_frame(&mut out, HEADERS, 0, 1, &[0x82]);
                    write_frame(&mut out, PING, 0, 0, &[0; 8]);
                    out
                },
                PROTOCOL_ERROR,
            ),
            (
                "a bad HPACK index",
                {
                    let mut out = Vec::new();
                    write_frame(
                        &mut out,
                        HEADERS,
                        END_HEADERS | END_STREAM,
                        1,
                        &[0xff, 0x7f],
                    );
                    out
                },
                COMPRESSION_ERROR,
            ),
        ];
        for (why, frames, code) in cases {
            let mut raw = Raw::start().await;
            raw.send(&frames).await;
            assert_eq!(raw.goaway_code().await, code, "{why}");
            assert!(raw.frame().await.is_none(), "{why}: the connection ends");
        }
    }

    fn status(block: &[u8]) -> Vec<u8> {
        let mut status = Vec::new();
        hpack::Decoder::new(TABLE_SIZE)
            .decode(block, |name, value| {
                if name == b":status" {
                    status = value.to_vec();
                }
            })
            .unwrap();
        status
    }

    #[tokio::test]
    async fn an_interim_100_continue_reaches_the_client_before_its_body_is_sent() {
        let mut raw = Raw::start().await;
        let fields = get_fields("/continue");
        let mut all: Vec<(&str, &str)> = fields.iter().map(|(n, v)| (*n, v.as_str())).collect();
        all[0].1 = "POST";
        all.push(("expect", "100-continue"));
        raw.send(&headers_frame(1, 0, &all)).await;
        let (head, block) = raw.until(HEADERS, 1).await;
        assert_eq!(status(&block), b"100");
        assert_eq!(head.flags & END_STREAM, 0);
        let mut out = Vec::new();
        write_frame(&mut out, DATA, END_STREAM, 1, b"the body");
        raw.send(&out).await;
        let (_, block) = raw.until(HEADERS, 1).await;
        assert_eq!(status(&block), b"200");
        let records = records_settled(&raw.records, 1).await;
        assert_eq!(records[0].status, Some(200));
        assert_eq!(records[0].bytes_up, 8);
    }

    #[tokio::test]
    async fn settings_faster_than_the_upstream_acknowledges_them_end_the_connection() {
        let mut raw = Raw::start().await;
        let mut out = Vec::new();
        // In one read, so all are taken before the upstream could acknowledge any.
        for _ in 0..2 * MAX_UNACKED_SETTINGS {
            write_settings(&mut out, &[(INITIAL_WINDOW_SIZE, 65_535)]);
        }
        raw.send(&out).await;
        assert_eq!(raw.goaway_code().await, ENHANCE_YOUR_CALM);
    }

    #[tokio::test]
    async fn pings_are_answered_by_the_relay() {
        let mut raw = Raw::start().await;
        let mut out = Vec::new();
        write_frame(&mut out, PING, 0, 0, b"12345678");
        raw.send(&out).await;
        let (head, payload) = raw.until(PING, 0).await;
        assert_eq!(head.flags, ACK);
        assert_eq!(payload, b"12345678");
    }

    #[tokio::test]
    async fn a_client_that_stops_mid_block_is_cut_off() {
        tokio::time::pause();
        let mut raw = Raw::start().await;
        let mut out = Vec::new();
        write_frame(&mut out, HEADERS, 0, 1, &[0x82]);
        raw.send(&out).await;
        // Time stands still until every task waits: the relay has read the frame by then.
        tokio::time::sleep(Duration::from_millis(1)).await;
        tokio::time::advance(HEADER_TIMEOUT + Duration::from_secs(1)).await;
        assert_eq!(raw.goaway_code().await, PROTOCOL_ERROR);
    }

    /// Found by the fuzz target: the relay ended, its client's socket buffer full, and it closed the
    /// connection after one partial write of its last frames, cutting a DATA frame and losing the GOAWAY.
    #[tokio::test]
    async fn a_client_slow_to_read_gets_every_last_frame_and_the_goaway() {
        let (relay_up, mut upstream) = tokio::io::duplex(64 * 1024);
        let mut out = Vec::new();
        write_settings(&mut out, &[]);
        upstream.write_all(&out).await.unwrap();
        let up = handshake(relay_up).await.unwrap();
        // Far smaller than the response, so that most of it is still to be written when the relay ends.
        let (mut client, relay_client) = tokio::io::duplex(1024);
        let records = Records::default();
        let relayed = tokio::spawn(relay(relay_client, up, scope(&records, authorization())));
        let mut out = PREFACE.to_vec();
        write_settings(&mut out, &[]);
        out.extend(with(get_fields("/echo"), &[]));
        client.write_all(&out).await.unwrap();
        let mut preface = [0; PREFACE.len()];
        upstream.read_exact(&mut preface).await.unwrap();
        let mut at_upstream = InBuf::default();
        loop {
            match at_upstream.whole_frame(DEFAULT_MAX_FRAME).unwrap() {
                Some((head, _)) if head.kind == HEADERS => break,
                Some((head, _)) => at_upstream.consume(HEAD_LEN + head.len),
                None => {
                    let read = upstream.read(at_upstream.space(READ_CHUNK));
                    let n = tokio::time::timeout(Duration::from_secs(5), read)
                        .await
                        .expect("the request reaches the upstream")
                        .unwrap();
                    at_upstream.filled(n);
                }
            }
        }
        let mut out = Vec::new();
        write_frame(&mut out, HEADERS, END_HEADERS, 1, &[0x88]);
        write_frame(&mut out, DATA, END_STREAM, 1, &[7u8; 10_000]);
        // A protocol error (no stream of the upstream's may open), so that the relay ends at once.
        write_frame(&mut out, HEADERS, END_HEADERS, 2, &[0x88]);
        upstream.write_all(&out).await.unwrap();
        let mut received = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut received))
            .await
            .expect("the relay closes the connection")
            .unwrap();
        // As a client does at the end: the relay reads what it still sends (lingers) until then.
        client.shutdown().await.unwrap();
        relayed.await.unwrap();
        let mut input = InBuf::default();
        input.append(&received);
        let (mut data, mut last) = (0, None);
        while let Some((head, frame)) = input.whole_frame(usize::MAX).unwrap() {
            if head.kind == DATA {
                data += head.len;
            }
            last = Some((head.kind, frame.get(HEAD_LEN + 4..).map(be32)));
            input.consume(HEAD_LEN + head.len);
        }
        assert_eq!(input.unread().len(), 0, "no frame is cut short");
        assert_eq!(data, 10_000);
        assert_eq!(last, Some((GOAWAY, Some(INTERNAL_ERROR))));
    }
}
