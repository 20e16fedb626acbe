//! The server-to-client bytes of an upgraded connection (WebSocket and other `Upgrade:` protocols), masked
//! as they pass, without I/O: [`TunnelMasker::push`] takes what the upstream sent and gives what the client
//! may have now.
//!
//! A WebSocket (RFC 6455) is read frame by frame: the payload of each data message goes through one masker
//! (a secret split across the frames of a message is still caught), and what it releases goes out in
//! frames of its own, unmasked as a server's are: one per frame that arrived whole, more for one that
//! arrives over several reads, none while everything is held. A message's last frame carries all that was
//! held. Control frames (at most 125 bytes) go whole, masked (a close frame's reason, a ping's payload).
//! Extensions that transform payloads (permessage-deflate) are not offered upstream (`intercept`); a frame
//! that uses one (a reserved bit set), or breaks the framing rules, cannot be scanned: the tunnel ends.
//!
//! Any other protocol is one stream through one masker.

use std::sync::Arc;

use zeroize::Zeroizing;

use super::{Masker, Needles};

/// A control frame's payload may be no longer (RFC 6455 section 5.5).
const MAX_CONTROL: u64 = 125;
const CLOSE: u8 = 0x8;

/// Why the server's bytes cannot be scanned: the tunnel must end before they reach the client.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Unscannable {
    #[error(
        "the server used a WebSocket extension (reserved bits set) that the sandbox cannot scan"
    )]
    Extension,
    #[error("the server broke WebSocket framing: {0}")]
    Framing(&'static str),
}

/// One upgraded connection's server-to-client direction, masked.
pub enum TunnelMasker {
    Stream(Masker),
    WebSocket(Box<WebSocket>),
}

impl TunnelMasker {
    /// A masker for a WebSocket's frames (`websocket`) or a stream of any other protocol.
    pub fn new(needles: Arc<Needles>, websocket: bool) -> TunnelMasker {
        let masker = Masker::new(needles);
        if websocket {
            TunnelMasker::WebSocket(Box::new(WebSocket::new(masker)))
        } else {
            TunnelMasker::Stream(masker)
        }
    }

    /// The server's next bytes; what the client may have now is appended to `out`.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), Unscannable> {
        match self {
            TunnelMasker::Stream(masker) => {
                masker.push_into(input, out);
                Ok(())
            }
            TunnelMasker::WebSocket(websocket) => websocket.push(input, out),
        }
    }

    /// The server's side ended: a stream's last bytes (a WebSocket's end in the middle of a frame is cut
    /// short, as it came).
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if let TunnelMasker::Stream(masker) = self {
            out.extend_from_slice(&masker.finish());
        }
    }

    /// How many secrets were masked.
    pub fn redacted(&self) -> u64 {
        match self {
            TunnelMasker::Stream(masker) => masker.redacted(),
            TunnelMasker::WebSocket(websocket) => {
                websocket.masker.redacted() + websocket.control_masked
            }
        }
    }
}

/// A WebSocket's server frames, as they are read.
pub struct WebSocket {
    /// The current data message's masker (finished at each message's end).
    masker: Masker,
    /// A frame head being read: at most 2 + 8 (length) + 4 (masking key) bytes.
    head: Vec<u8>,
    /// The frame whose payload is being read.
    frame: Option<Frame>,
    /// The opcode of the data message in progress, and whether a frame of it went to the client (the next
    /// then continues it).
    message: Option<(u8, bool)>,
    /// A control frame's payload, unmasked, as it is read.
    control: Zeroizing<Vec<u8>>,
    control_masked: u64,
    /// A data frame's payload as it is read (unmasked) and as it is released.
    payload: Zeroizing<Vec<u8>>,
    released: Zeroizing<Vec<u8>>,
}

#[derive(Clone, Copy)]
struct Frame {
    fin: bool,
    opcode: u8,
    remaining: u64,
    /// A masked frame (servers must not send one, clients must: unmasked here either way).
    key: Option<[u8; 4]>,
    /// Payload bytes read so far: where the key's cycle is.
    read: u64,
}

impl WebSocket {
    fn new(masker: Masker) -> WebSocket {
        WebSocket {
            masker,
            head: Vec::with_capacity(14),
            frame: None,
            message: None,
            control: Zeroizing::new(Vec::new()),
            control_masked: 0,
            payload: Zeroizing::new(Vec::new()),
            released: Zeroizing::new(Vec::new()),
        }
    }

    fn push(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), Unscannable> {
        while !input.is_empty() || self.frame.is_some_and(|frame| frame.remaining == 0) {
            let Some(mut frame) = self.frame else {
                let taken = self.read_head(input)?;
                input = &input[taken..];
                continue;
            };
            let n = frame.remaining.min(input.len() as u64) as usize;
            let (piece, rest) = input.split_at(n);
            input = rest;
            self.payload.clear();
            self.payload.extend_from_slice(piece);
            if let Some(key) = frame.key {
                for (offset, byte) in self.payload.iter_mut().enumerate() {
                    *byte ^= key[((frame.read + offset as u64) % 4) as usize];
                }
            }
            frame.read += n as u64;
            frame.remaining -= n as u64;
            let ended = frame.remaining == 0;
            self.frame = (!ended).then_some(frame);
            if frame.opcode & 0x8 != 0 {
                self.control.extend_from_slice(&self.payload);
                if ended {
                    self.control_frame(frame.opcode, out);
                }
            } else {
                self.data(frame.fin && ended, out);
            }
        }
        Ok(())
    }

    /// Reads (part of) a frame head from `input`; how many bytes it took.
    fn read_head(&mut self, input: &[u8]) -> Result<usize, Unscannable> {
        let mut taken = 0;
        loop {
            let needed = head_len(&self.head);
            if self.head.len() == needed {
                break;
            }
            let Some(&byte) = input.get(taken) else {
                return Ok(taken);
            };
            self.head.push(byte);
            taken += 1;
        }
        // Whole now: `head_len` said how long it is from its second byte on.
        let head = self.head.as_slice();
        let (first, second) = (head[0], head[1]);
        if first & 0x70 != 0 {
            return Err(Unscannable::Extension);
        }
        let extended = &head[2..];
        let length = match second & 0x7f {
            126 => extended
                .first_chunk::<2>()
                .map_or(0, |bytes| u64::from(u16::from_be_bytes(*bytes))),
            127 => extended
                .first_chunk::<8>()
                .map_or(0, |bytes| u64::from_be_bytes(*bytes)),
            short => u64::from(short),
        };
        let key = (second & 0x80 != 0)
            .then(|| head.last_chunk::<4>().copied())
            .flatten();
        self.head.clear();
        let fin = first & 0x80 != 0;
        let opcode = first & 0x0f;
        if length >> 63 != 0 {
            return Err(Unscannable::Framing(
                "a payload length with its top bit set",
            ));
        }
        match opcode {
            0x8..=0xa => {
                if !fin || length > MAX_CONTROL {
                    return Err(Unscannable::Framing("a fragmented or long control frame"));
                }
                self.control.clear();
            }
            0x0 if self.message.is_none() => {
                return Err(Unscannable::Framing(
                    "a continuation frame outside a message",
                ));
            }
            0x1 | 0x2 if self.message.is_some() => {
                return Err(Unscannable::Framing("a new message inside another"));
            }
            0x1 | 0x2 => self.message = Some((opcode, false)),
            0x0 => {}
            _ => return Err(Unscannable::Framing("a reserved opcode")),
        }
        self.frame = Some(Frame {
            fin,
            opcode,
            remaining: length,
            key,
            read: 0,
        });
        Ok(taken)
    }

    /// The payload just read of a data frame through the message's masker, and what it releases out in a
    /// frame of its own (`last`: the message's last bytes, which release all).
    fn data(&mut self, last: bool, out: &mut Vec<u8>) {
        self.released.clear();
        self.masker.push_into(&self.payload, &mut self.released);
        if last {
            self.released.extend_from_slice(&self.masker.finish());
        }
        let Some((opcode, started)) = self.message else {
            return;
        };
        if self.released.is_empty() && !last {
            return;
        }
        write_frame(out, last, if started { 0 } else { opcode }, &self.released);
        self.message = (!last).then_some((opcode, true));
    }

    fn control_frame(&mut self, opcode: u8, out: &mut Vec<u8>) {
        // A close frame's first two bytes are its status code; the reason follows.
        let from = if opcode == CLOSE {
            self.control.len().min(2)
        } else {
            0
        };
        if let Some(masked) = self.masker.needles().mask_all(&self.control[from..]) {
            self.control.truncate(from);
            self.control.extend_from_slice(&masked.bytes);
            self.control_masked += masked.count;
        }
        write_frame(out, true, opcode, &self.control);
        self.control.clear();
    }
}

/// How long a frame head that begins with `head` is (2 until its second byte is known).
fn head_len(head: &[u8]) -> usize {
    let Some(&second) = head.get(1) else {
        return 2;
    };
    let length = match second & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let key = if second & 0x80 != 0 { 4 } else { 0 };
    2 + length + key
}

/// Appends an unmasked frame, as a server sends them.
fn write_frame(out: &mut Vec<u8>, fin: bool, opcode: u8, payload: &[u8]) {
    out.push(if fin { 0x80 } else { 0 } | opcode);
    match payload.len() {
        len if len < 126 => out.push(len as u8),
        len if len <= usize::from(u16::MAX) => {
            out.push(126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests;
