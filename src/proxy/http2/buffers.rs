//! The bytes on their way in and out: `InBuf` holds what was read and is not parsed yet (whole frames are cut
//! from it), `OutBuf` what is to be written; the polled reads and writes that fill and drain them, and the
//! worker's read buffer that its connections share. Bytes only: what the frames mean is `machine`'s.

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use zeroize::Zeroize;

use super::frame::{Fatal, Head, FRAME_SIZE_ERROR, HEAD_LEN};

/// How much room a read asks for.
pub(super) const READ_CHUNK: usize = 32 * 1024;

/// Bytes read and not yet parsed.
#[derive(Default)]
pub(super) struct InBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl InBuf {
    pub(super) fn unread(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    pub(super) fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Room for at least `min` more bytes, moving the unread ones to the front first when that makes it.
    pub(super) fn space(&mut self, min: usize) -> &mut [u8] {
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

    pub(super) fn filled(&mut self, n: usize) {
        self.end += n;
    }

    pub(super) fn append(&mut self, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.space(bytes.len())[..bytes.len()].copy_from_slice(bytes);
            self.filled(bytes.len());
        }
    }

    pub(super) fn frame_head(&self) -> Option<Head> {
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
    pub(super) fn whole_frame(&self, max: usize) -> Result<Option<(Head, &[u8])>, Fatal> {
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
    pub(super) fn shrink(&mut self) {
        if self.start == self.end {
            self.buf = Vec::new();
        }
    }
}

/// Bytes to write, and how many of them are written.
#[derive(Default)]
pub(super) struct OutBuf {
    pub(super) buf: Vec<u8>,
    pub(super) written: usize,
}

impl OutBuf {
    pub(super) fn pending(&self) -> usize {
        self.buf.len() - self.written
    }

    /// Lets go of the buffer if all of it is written; zeroed first, since the upstream's held the
    /// integration's headers.
    pub(super) fn shrink(&mut self) {
        if self.pending() == 0 {
            self.buf.zeroize();
            self.buf = Vec::new();
            self.written = 0;
        }
    }
}

/// Writes all that `out` holds, however many writes that takes (`poll_write_all` returns after one that
/// filled the socket's buffer, so that the relay can read meanwhile).
pub(super) fn poll_write_rest<T: AsyncWrite + Unpin>(
    io: &mut T,
    out: &mut OutBuf,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    while out.pending() > 0 {
        std::task::ready!(poll_write_all(io, out, cx))?;
    }
    Poll::Ready(Ok(()))
}

/// Writes what `out` holds; Ready(true) when something was written, Ready(false) when there was nothing.
pub(super) fn poll_write_all<T: AsyncWrite + Unpin>(
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

/// Reads what `io` has into `input`: how many bytes, 0 at the end of the stream.
pub(super) fn poll_read_some<T: AsyncRead + Unpin>(
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
pub(super) fn poll_read_frames<T: AsyncRead + Unpin>(
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
