//! The relay's state machine, without I/O: `Core` takes the frames each peer sent (whole, as `buffers` cut
//! them) and writes what each peer gets into its `OutBuf`. Everything between frames is here: the client's
//! preface, settings rewritten both ways, each request's head checked by the one request policy and sent on
//! with the integration's headers (`Exchange`: a request until both its halves end), each response masked
//! (its header blocks through `response_head`, its DATA through a `Masker`), answers the relay gives
//! itself, flow control credit, GOAWAY, deadlines, and the last frames when the relay ends (`End`).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::time::Instant as Clock;
use zeroize::Zeroize;

use super::buffers::{InBuf, OutBuf};
use super::frame::{
    be32, check_frame, encode_head, join_block, parse_settings, reason_name, unpadded,
    window_increment, write_frame, write_goaway, write_header_block, write_rst, write_settings,
    write_window_update, Block, Fatal, Head, ACK, CANCEL, COMPRESSION_ERROR, CONTINUATION, DATA,
    DEFAULT_MAX_FRAME, ENABLE_PUSH, END_STREAM, ENHANCE_YOUR_CALM, FLOW_CONTROL_ERROR, GOAWAY,
    HEADERS, HEADER_TABLE_SIZE, HEAD_LEN, INITIAL_WINDOW_SIZE, INTERNAL_ERROR,
    MAX_CONCURRENT_STREAMS, MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE, NO_ERROR, PING, PREFACE,
    PROTOCOL_ERROR, PUSH_PROMISE, REFUSED_STREAM, RST_STREAM, SETTINGS, WINDOW_UPDATE,
};
use super::hpack;
use super::request_head::RequestHead;
use super::response_head::{self, Rewrite};
use super::scope::{Injected, Scope};
use crate::audit::{Record, Verdict};
use crate::proxy::policy::{self, is_idempotent, MAX_HEADER_BYTES};
use crate::proxy::workers::InFlight;
use crate::redact::{self, Masker};

/// The largest frame the relay lets either peer send it: each is told this or less.
const MAX_FRAME: u32 = 65_536;
/// The header table size both of the relay's decoders start with, and the most it lets a peer use.
pub(super) const TABLE_SIZE: usize = 4096;
/// Streams a client may have open at once (less when the upstream allows fewer).
pub(super) const MAX_STREAMS: u32 = 128;
/// SETTINGS of the client's that the upstream has not acknowledged yet: each is remembered until it is.
pub(super) const MAX_UNACKED_SETTINGS: usize = 64;
/// The upstream's PINGs the client has not answered yet; past this many, the relay answers the next
/// itself.
const MAX_PINGS_IN_FLIGHT: usize = 8;
/// An output holding this much stops the relay reading from either peer until it drains.
const HIGH_WATER: usize = 256 * 1024;
/// How much of the client's connection window the relay keeps back from the upstream, for the bodies of
/// the answers it gives itself.
const RESERVE: u32 = 16 * 1024;
/// A connection with no open stream for this long is closed (GOAWAY to both peers).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The client's preface, and every header block once begun, must arrive within this.
pub(super) const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// An idle connection lets go of its buffers after this (not at once: a client between two requests would
/// have them made again).
pub(super) const SHRINK_AFTER: Duration = Duration::from_secs(2);

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
pub(super) enum End {
    ClientClosed,
    UpstreamClosed,
    Idle,
    Client(Fatal),
    Upstream(Fatal),
    Io(io::Error),
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
    /// The headers it was sent with, when they hold minted tokens.
    minted: Option<Arc<Injected>>,
    /// Masks the response's DATA, and holds the needles its header blocks are masked with; `None` when
    /// nothing is masked.
    masker: Option<Masker>,
    /// Secrets masked in its response's header blocks.
    masked_in_heads: u64,
    /// A HEAD request's response has no body, whatever its Content-Encoding says.
    head_request: bool,
    _in_flight: InFlight,
}

/// Everything the relay knows between frames; the I/O lives beside it in `Relay`.
pub(super) struct Core {
    pub(super) scope: Scope,
    authority: String,
    pub(super) to_client: OutBuf,
    pub(super) to_upstream: OutBuf,
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
    /// Payloads of the upstream's PINGs passed to the client, whose answers go back to the upstream.
    upstream_pings: VecDeque<[u8; 8]>,
    pub(super) idle_since: Option<Clock>,
    started: Clock,
    scratch: Vec<u8>,
    /// The request being decoded (kept for its buffers).
    request: RequestHead,
    /// A response's header block as it is masked (kept for its buffers).
    rewrite: Rewrite,
}

impl Core {
    /// A relay's state as it starts on an upstream connection that said `upstream_settings` so far, with
    /// `unacked` of the relay's own SETTINGS not acknowledged yet, `window` of connection window granted
    /// while idle, and `to_upstream` holding what was to be written to it meanwhile.
    pub(super) fn new(
        scope: Scope,
        now: Clock,
        upstream_settings: &[(u16, u32)],
        unacked: u32,
        window: u32,
        mut to_upstream: OutBuf,
    ) -> Core {
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
            own_settings_upstream: unacked,
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
            upstream_pings: VecDeque::new(),
            idle_since: Some(now),
            started: now,
            scratch: Vec::new(),
            request: RequestHead::default(),
            rewrite: Rewrite::default(),
        };
        core.server_preface(upstream_settings);
        if window > 0 {
            write_window_update(&mut core.to_client.buf, 0, window);
        }
        to_upstream.buf.drain(..to_upstream.written);
        core.to_upstream.buf = to_upstream.buf;
        core
    }

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
    pub(super) fn client_frames(&mut self, input: &mut InBuf) -> Result<(), Fatal> {
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

    pub(super) fn upstream_frames(&mut self, input: &mut InBuf) -> Result<(), Fatal> {
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
            PING => {
                let forwarded = self.upstream_pings.iter().position(|ping| ping == payload);
                if let Some(at) = forwarded {
                    self.upstream_pings.remove(at);
                    self.to_upstream.buf.extend_from_slice(frame);
                }
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
            request.encode_fields(self.scope.injection.names(), &mut self.scratch);
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
        let injected = match self.scope.injection.for_request() {
            Ok(injected) => injected,
            Err((status, message)) => {
                return self.answer(stream, !end_stream, record, status, message, Verdict::Error);
            }
        };
        // Kept with the request only when it carries minted tokens: an upstream's 401 names them.
        let minted = (!injected.tokens.is_empty()).then(|| injected.clone());
        self.scratch.clear();
        request.encode_for_upstream(
            self.authority.as_bytes(),
            &injected.names,
            &mut self.scratch,
        );
        self.scratch.extend_from_slice(&injected.block);
        write_header_block(
            &mut self.to_upstream.buf,
            stream,
            end_stream,
            &self.scratch,
            self.upstream_max_frame,
        );
        self.scratch.fill(0);
        let masker = self
            .scope
            .redaction
            .as_ref()
            .map(|redaction| redaction.needles())
            .filter(|needles| !needles.is_empty())
            .map(Masker::new);
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
                minted,
                masker,
                masked_in_heads: 0,
                head_request: request.method() == b"HEAD",
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
        self.credit_held(&exchange);
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
            self.credit_held(&exchange);
            write_rst(&mut self.to_client.buf, stream, code);
            write_rst(&mut self.to_upstream.buf, stream, code);
            finish(&mut self.scope, exchange, Some(why.to_string()));
            self.note_idle();
        }
    }

    /// Gives the upstream back the connection window of response bytes a masker held for an exchange that
    /// ends without them (reset): the client never gets them, so never gives that window back itself.
    fn credit_held(&mut self, exchange: &Exchange) {
        let held = exchange.masker.as_ref().map_or(0, Masker::pending);
        self.credit_upstream = self.credit_upstream.saturating_add(held as u32);
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
                let data = unpadded(&head, payload)?;
                match self.exchanges.get_mut(&head.stream) {
                    Some(exchange) if exchange.response_open => {
                        exchange.bytes_down += data.len() as u64;
                        let end = head.flags & END_STREAM != 0;
                        match &mut exchange.masker {
                            None => self.to_client.buf.extend_from_slice(frame),
                            Some(masker) => {
                                // Padding is not passed on, so the client never gives its window back:
                                // the relay does, for the stream and the connection.
                                let padding = (head.len - data.len()) as u32;
                                if padding > 0 {
                                    self.credit_upstream =
                                        self.credit_upstream.saturating_add(padding);
                                    if !end {
                                        write_window_update(
                                            &mut self.to_upstream.buf,
                                            head.stream,
                                            padding,
                                        );
                                    }
                                }
                                write_masked_data(
                                    &mut self.to_client.buf,
                                    head.stream,
                                    masker,
                                    data,
                                    end,
                                    self.client_max_frame,
                                );
                            }
                        }
                        if end {
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
            // Passed to the client, whose answer comes back: a server's graceful shutdown (GOAWAY with
            // the highest stream id, then a PING) counts as processed every stream sent before the PING's
            // answer. Answered here, that would leave out the streams the client sent meanwhile, which
            // the server's final GOAWAY would then refuse; RFC 9113 lets the client send those again,
            // but curl 7.88 fails them instead.
            PING if head.flags & ACK == 0 => match <[u8; 8]>::try_from(payload) {
                Ok(ping) if self.upstream_pings.len() < MAX_PINGS_IN_FLIGHT => {
                    self.upstream_pings.push_back(ping);
                    self.to_client.buf.extend_from_slice(frame);
                }
                _ => write_frame(&mut self.to_upstream.buf, PING, ACK, 0, payload),
            },
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
        let needles = self
            .exchanges
            .get(&stream)
            .filter(|exchange| exchange.response_open)
            .and_then(|exchange| exchange.masker.as_ref())
            .map(Masker::needles);
        let read = response_head::read(
            &mut self.upstream_decoder,
            block,
            needles,
            &mut self.rewrite,
        )
        .map_err(|error| Fatal::new(COMPRESSION_ERROR, error.to_string()))?;
        let exchange = match self.exchanges.get_mut(&stream) {
            Some(exchange) if exchange.response_open => exchange,
            // Its client went away (reset); the block was decoded to keep the table in step.
            _ => return Ok(()),
        };
        let well_formed = match read.status {
            Some(code) if exchange.status.is_none() && code >= 200 => {
                exchange.status = Some(code);
                if let (401, Some(injected)) = (code, &exchange.minted) {
                    self.scope.injection.rejected(injected);
                }
                true
            }
            Some(code) if exchange.status.is_none() && (100..200).contains(&code) => true,
            None => exchange.status.is_some() && end_stream,
            Some(_) => false,
        };
        if !well_formed {
            self.reset_both(
                stream,
                PROTOCOL_ERROR,
                "the upstream sent a malformed response head",
            );
            return Ok(());
        }
        exchange.masked_in_heads += read.masked;
        let has_body = read
            .status
            .is_some_and(|code| code >= 200 && code != 204 && code != 304)
            && !end_stream
            && !exchange.head_request;
        if let Some(codings) = read.coded.as_deref().filter(|_| has_body) {
            if exchange.masker.is_some() {
                let message = format!("sandbox: {}", redact::messages::refusal(codings));
                self.refuse_unscannable(stream, message);
                return Ok(());
            }
        }
        // Trailers: the bytes the masker still holds go before them.
        if read.status.is_none() {
            if let Some(masker) = exchange.masker.as_mut() {
                let tail = masker.finish();
                for chunk in tail.chunks(self.client_max_frame.max(1)) {
                    write_frame(&mut self.to_client.buf, DATA, 0, stream, chunk);
                }
            }
        }
        self.table_update_due = None;
        let block = if read.masked > 0 {
            self.rewrite.masked.as_slice()
        } else {
            block
        };
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

    /// A response whose body is in a content coding, which the relay cannot scan for secrets: the upstream's
    /// stream is cancelled and the client gets the relay's 502 instead, after an informational head that
    /// carries what the upstream's block did to the header table (so that the client's stays in step).
    fn refuse_unscannable(&mut self, stream: u32, message: String) {
        let Some(exchange) = self.exchanges.remove(&stream) else {
            return;
        };
        self.credit_held(&exchange);
        write_rst(&mut self.to_upstream.buf, stream, CANCEL);
        write_header_block(
            &mut self.to_client.buf,
            stream,
            false,
            &self.rewrite.informational,
            self.client_max_frame,
        );
        self.table_update_due = None;
        let request_open = exchange.request_open;
        self.answer(
            stream,
            request_open,
            exchange.record,
            502,
            message,
            Verdict::Error,
        );
        self.note_idle();
    }

    /// Whether both outputs have room for what reading more would add.
    pub(super) fn room(&self) -> bool {
        self.to_client.pending() < HIGH_WATER && self.to_upstream.pending() < HIGH_WATER
    }

    /// Window updates for DATA the relay dropped.
    pub(super) fn give_credit(&mut self) {
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
    pub(super) fn shrink(&mut self) {
        self.to_client.shrink();
        self.to_upstream.shrink();
        self.scratch.zeroize();
        self.scratch = Vec::new();
        self.request = RequestHead::default();
        self.exchanges.shrink_to_fit();
    }

    pub(super) fn idle_for(&self, now: Clock) -> Duration {
        self.idle_since
            .map_or(Duration::ZERO, |since| now.saturating_duration_since(since))
    }

    /// When the timer fires: the end, if a deadline has passed; else when to look again (`lean`: whether
    /// the buffers of an idle connection were let go of already).
    pub(super) fn deadline(&self, now: Clock, lean: bool) -> Result<Clock, End> {
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

    /// The relay ended (`end`): ends the exchanges still open and writes the last frames each peer gets,
    /// for the driver to send before it closes both connections.
    pub(super) fn end(&mut self, end: End) {
        let (client_error, upstream_error, reason) = end.goaway_codes();
        tracing::debug!(sni = %self.scope.sni, %reason, "HTTP/2 relay ended");
        // The upstream closed after a GOAWAY the client has, with nothing left open: another GOAWAY would
        // only repeat it (and curl 7.88, given a second, fails a stream the first had it send again).
        let told = matches!(end, End::UpstreamClosed)
            && self.goaway_sent.is_some()
            && self.exchanges.is_empty();
        let upstream_gone = matches!(end, End::UpstreamClosed | End::Io(_));
        let failed = self.end_exchanges(upstream_gone, &reason);
        // The client's streams cut short fail with the connection.
        let client_error = match client_error {
            Some(NO_ERROR) if failed && upstream_gone => Some(INTERNAL_ERROR),
            code => code,
        };
        if let Some(code) = client_error.filter(|_| !told) {
            // A GOAWAY may repeat an earlier one, never name a later stream.
            let last = self
                .goaway_sent
                .map_or(self.last_stream, |last| last.min(self.last_stream));
            write_goaway(&mut self.to_client.buf, last, code);
        }
        if let Some(code) = upstream_error {
            write_goaway(&mut self.to_upstream.buf, 0, code);
        }
    }

    /// Ends every exchange still open, in stream order, with `reason`; whether any failed. A request
    /// without an answer yet that may go twice is refused (REFUSED_STREAM) instead when the upstream is gone
    /// (`upstream_gone`), so that the client sends it again on a new connection, as the daemon does for
    /// HTTP/1.1 clients: the upstream going (a restart) should not fail it.
    fn end_exchanges(&mut self, upstream_gone: bool, reason: &str) -> bool {
        let mut exchanges: Vec<(u32, Exchange)> = self.exchanges.drain().collect();
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
                write_rst(&mut self.to_client.buf, id, REFUSED_STREAM);
                let why = format!(
                    "{reason} before answering; the client was told (REFUSED_STREAM) and may send it \
                     again (it is idempotent)"
                );
                finish(&mut self.scope, exchange, Some(why));
            } else {
                failed = true;
                finish(&mut self.scope, exchange, Some(reason.to_string()));
            }
        }
        failed
    }
}

impl End {
    /// The code of the GOAWAY each peer gets (None: none, it closed the connection itself), and why the
    /// relay ended.
    fn goaway_codes(&self) -> (Option<u32>, Option<u32>, String) {
        match self {
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
        }
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        // It held the integration's headers on their way out.
        self.to_upstream.buf.zeroize();
        self.scratch.zeroize();
    }
}

/// Writes response bytes to the client through its masker: what the masker releases of `data` (with all it
/// still held, at the end of the stream), in DATA frames of at most `max_frame`; nothing when it releases
/// nothing and the stream goes on. The client's windows have room for it: the upstream was charged for
/// every byte pushed, the client only for those released.
fn write_masked_data(
    out: &mut Vec<u8>,
    stream: u32,
    masker: &mut Masker,
    data: &[u8],
    end: bool,
    max_frame: usize,
) {
    let start = out.len();
    out.extend_from_slice(&[0; HEAD_LEN]);
    masker.push_into(data, out);
    if end {
        out.extend_from_slice(&masker.finish());
    }
    let len = out.len() - start - HEAD_LEN;
    if len == 0 && !end {
        out.truncate(start);
        return;
    }
    let flags = if end { END_STREAM } else { 0 };
    if len <= max_frame {
        out[start..start + HEAD_LEN].copy_from_slice(&encode_head(len, DATA, flags, stream));
        return;
    }
    // Held bytes with a frame of the largest size: more than the client takes in one frame.
    let released = out.split_off(start + HEAD_LEN);
    out.truncate(start);
    let mut chunks = released.chunks(max_frame.max(1)).peekable();
    while let Some(chunk) = chunks.next() {
        let last = chunks.peek().is_none();
        write_frame(out, DATA, if last { flags } else { 0 }, stream, chunk);
    }
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

/// Writes the audit record of an exchange that ended (`error`: why it did not end well).
fn finish(scope: &mut Scope, exchange: Exchange, error: Option<String>) {
    let mut record = exchange.record;
    record.status = exchange.status;
    record.bytes_up = exchange.bytes_up;
    record.bytes_down = exchange.bytes_down;
    record.redacted =
        exchange.masked_in_heads + exchange.masker.as_ref().map_or(0, Masker::redacted);
    record.log_redacted();
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

#[cfg(test)]
mod tests;
