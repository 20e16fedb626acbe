//! The frame codec (RFC 9113 sections 4 and 6), the same for both peers: the protocol's numbers (frame
//! types, flags, settings, error codes), a frame's `Head`, the writers of the frames the relay makes itself,
//! the checks of a frame's own shape, and the joining of a header block's frames (HEADERS, CONTINUATION).
//! Nothing here knows which peer a frame came from or what the relay does with it (`machine`); a frame that
//! breaks the rules is a `Fatal` error, which ends the connection with GOAWAY.

use std::borrow::Cow;

use tokio::time::Instant as Clock;

use crate::proxy::policy::MAX_HEADER_BYTES;

pub(super) const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub(super) const HEAD_LEN: usize = 9;

pub(super) const DATA: u8 = 0x0;
pub(super) const HEADERS: u8 = 0x1;
pub(super) const PRIORITY: u8 = 0x2;
pub(super) const RST_STREAM: u8 = 0x3;
pub(super) const SETTINGS: u8 = 0x4;
pub(super) const PUSH_PROMISE: u8 = 0x5;
pub(super) const PING: u8 = 0x6;
pub(super) const GOAWAY: u8 = 0x7;
pub(super) const WINDOW_UPDATE: u8 = 0x8;
pub(super) const CONTINUATION: u8 = 0x9;

pub(super) const END_STREAM: u8 = 0x1;
pub(super) const ACK: u8 = 0x1;
pub(super) const END_HEADERS: u8 = 0x4;
pub(super) const PADDED: u8 = 0x8;
pub(super) const PRIORITY_FLAG: u8 = 0x20;

pub(super) const HEADER_TABLE_SIZE: u16 = 0x1;
pub(super) const ENABLE_PUSH: u16 = 0x2;
pub(super) const MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub(super) const INITIAL_WINDOW_SIZE: u16 = 0x4;
pub(super) const MAX_FRAME_SIZE: u16 = 0x5;
pub(super) const MAX_HEADER_LIST_SIZE: u16 = 0x6;

pub(super) const NO_ERROR: u32 = 0x0;
pub(super) const PROTOCOL_ERROR: u32 = 0x1;
pub(super) const INTERNAL_ERROR: u32 = 0x2;
pub(super) const FLOW_CONTROL_ERROR: u32 = 0x3;
pub(super) const STREAM_CLOSED: u32 = 0x5;
pub(super) const FRAME_SIZE_ERROR: u32 = 0x6;
pub(super) const REFUSED_STREAM: u32 = 0x7;
pub(super) const CANCEL: u32 = 0x8;
pub(super) const COMPRESSION_ERROR: u32 = 0x9;
pub(super) const ENHANCE_YOUR_CALM: u32 = 0xb;
/// The frame size every HTTP/2 peer starts with.
pub(super) const DEFAULT_MAX_FRAME: usize = 16_384;

#[derive(Debug, Clone, Copy)]
pub(super) struct Head {
    pub(super) len: usize,
    pub(super) kind: u8,
    pub(super) flags: u8,
    pub(super) stream: u32,
}

/// A connection error: the peer that caused it gets GOAWAY with `code`.
#[derive(Debug)]
pub(super) struct Fatal {
    pub(super) code: u32,
    pub(super) why: String,
}

impl Fatal {
    pub(super) fn new(code: u32, why: impl Into<String>) -> Fatal {
        Fatal {
            code,
            why: why.into(),
        }
    }
}

fn write_head(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream: u32) {
    out.extend_from_slice(&encode_head(len, kind, flags, stream));
}

/// A frame's 9-byte head, for a frame whose payload is written before its length is known.
pub(super) fn encode_head(len: usize, kind: u8, flags: u8, stream: u32) -> [u8; HEAD_LEN] {
    let mut head = [0u8; HEAD_LEN];
    head[..4].copy_from_slice(&(len as u32).to_be_bytes());
    head.copy_within(1..4, 0);
    head[3] = kind;
    head[4] = flags;
    head[5..].copy_from_slice(&stream.to_be_bytes());
    head
}

pub(super) fn write_frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    write_head(out, payload.len(), kind, flags, stream);
    out.extend_from_slice(payload);
}

pub(super) fn write_settings(out: &mut Vec<u8>, settings: &[(u16, u32)]) {
    write_head(out, settings.len() * 6, SETTINGS, 0, 0);
    for (id, value) in settings {
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&value.to_be_bytes());
    }
}

pub(super) fn write_window_update(out: &mut Vec<u8>, stream: u32, increment: u32) {
    write_frame(out, WINDOW_UPDATE, 0, stream, &increment.to_be_bytes());
}

pub(super) fn write_rst(out: &mut Vec<u8>, stream: u32, code: u32) {
    write_frame(out, RST_STREAM, 0, stream, &code.to_be_bytes());
}

pub(super) fn write_goaway(out: &mut Vec<u8>, last_stream: u32, code: u32) {
    let mut payload = [0u8; 8];
    payload[..4].copy_from_slice(&last_stream.to_be_bytes());
    payload[4..].copy_from_slice(&code.to_be_bytes());
    write_frame(out, GOAWAY, 0, 0, &payload);
}

/// A header block split into HEADERS and as many CONTINUATION frames as `max_frame` asks.
pub(super) fn write_header_block(
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
pub(super) fn parse_settings(payload: &[u8]) -> Vec<(u16, u32)> {
    payload
        .chunks_exact(6)
        .map(|entry| (u16::from_be_bytes([entry[0], entry[1]]), be32(&entry[2..])))
        .collect()
}

/// The first four bytes of `bytes` as a big-endian number (0 where there are fewer).
pub(super) fn be32(bytes: &[u8]) -> u32 {
    bytes
        .first_chunk::<4>()
        .map_or(0, |chunk| u32::from_be_bytes(*chunk))
}

/// The rules of RFC 9113 section 6 about a frame's own shape, the same from either peer: which frames
/// belong to a stream and which to the connection, the lengths of the fixed-size ones, and that nothing
/// comes between a header block's frames.
pub(super) fn check_frame(
    head: &Head,
    payload: &[u8],
    pending: Option<&Block>,
) -> Result<(), Fatal> {
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
        SETTINGS => payload.len().is_multiple_of(6),
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

/// The part of a DATA or HEADERS payload after its pad length (and priority, for HEADERS) and before
/// its padding.
pub(super) fn unpadded<'a>(head: &Head, payload: &'a [u8]) -> Result<&'a [u8], Fatal> {
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

/// A WINDOW_UPDATE's increment; 0 is an error on the connection (a stream's is left to its peer).
pub(super) fn window_increment(head: &Head, payload: &[u8]) -> Result<u32, Fatal> {
    let increment = be32(payload) & 0x7fff_ffff;
    if increment == 0 && head.stream == 0 {
        return Err(Fatal::new(PROTOCOL_ERROR, "a WINDOW_UPDATE of 0"));
    }
    Ok(increment)
}

/// A header block being assembled from HEADERS and CONTINUATION frames.
pub(super) struct Block {
    pub(super) stream: u32,
    pub(super) end_stream: bool,
    pub(super) bytes: Vec<u8>,
    pub(super) started: Clock,
}

/// A header block whose last frame is in.
pub(super) struct WholeBlock<'p> {
    pub(super) stream: u32,
    pub(super) end_stream: bool,
    pub(super) bytes: Cow<'p, [u8]>,
}

/// Joins the frames of a header block (HEADERS, then CONTINUATION until END_HEADERS).
pub(super) fn join_block<'p>(
    pending: &mut Option<Block>,
    head: &Head,
    payload: &'p [u8],
) -> Result<Option<WholeBlock<'p>>, Fatal> {
    if head.kind == HEADERS {
        // Streams are only ever opened by the client (no push): odd numbers.
        if head.stream.is_multiple_of(2) {
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

/// An error code's name, for the audit record of a stream the peer reset.
pub(super) fn reason_name(code: u32) -> String {
    match code {
        NO_ERROR => "NO_ERROR".into(),
        PROTOCOL_ERROR => "PROTOCOL_ERROR".into(),
        INTERNAL_ERROR => "INTERNAL_ERROR".into(),
        FLOW_CONTROL_ERROR => "FLOW_CONTROL_ERROR".into(),
        STREAM_CLOSED => "STREAM_CLOSED".into(),
        REFUSED_STREAM => "REFUSED_STREAM".into(),
        CANCEL => "CANCEL".into(),
        ENHANCE_YOUR_CALM => "ENHANCE_YOUR_CALM".into(),
        other => format!("error code {other:#x}"),
    }
}

#[cfg(test)]
mod tests;
