//! The upstream connection before a client's frames go over it: `handshake` exchanges the prefaces (the
//! relay's SETTINGS with push off; the upstream's first SETTINGS, acknowledged), and `Upstream::poll_idle`
//! keeps a connection that waits for a client in order. `Relay::new` takes over what it learnt.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::buffers::{poll_read_some, poll_write_all, InBuf, OutBuf, READ_CHUNK};
use super::frame::{
    be32, check_frame, parse_settings, write_frame, write_settings, Fatal, ACK, CONTINUATION,
    DEFAULT_MAX_FRAME, ENABLE_PUSH, GOAWAY, HEAD_LEN, PING, PREFACE, SETTINGS, WINDOW_UPDATE,
};

/// An upstream HTTP/2 connection whose prefaces have been exchanged: the relay's SETTINGS sent (server
/// push off), the upstream's first SETTINGS read and acknowledged.
pub struct Upstream<U> {
    pub(super) io: U,
    pub(super) input: InBuf,
    /// The upstream's settings so far (the latest value of each).
    pub(super) settings: Vec<(u16, u32)>,
    /// SETTINGS the relay sent on its own that the upstream has not acknowledged yet.
    pub(super) unacked: u32,
    /// Connection window the upstream granted while idle, not yet passed on to a client.
    pub(super) window: u32,
    /// Answers written while idle (PING and SETTINGS acknowledgements), not yet sent.
    pub(super) output: OutBuf,
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

#[cfg(test)]
mod tests;
