//! The I/O driver: `Relay` owns both connections and the bytes read from them, hands `Core` every whole
//! frame either peer sent and writes out what `Core` has for each (`poll_run`), keeps the timer (deadlines,
//! and letting an idle connection's buffers go), and closes both connections when the relay ends (`close`).

use std::future::{poll_fn, Future};
use std::io;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant as Clock, Sleep};
use zeroize::Zeroize;

use super::buffers::{poll_read_frames, poll_write_all, poll_write_rest, InBuf, OutBuf};
use super::machine::{Core, End, HEADER_TIMEOUT, SHRINK_AFTER};
use super::scope::Scope;
use super::upstream::Upstream;

/// Closing: how long the last frames (GOAWAY) may take to be written.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) struct Relay<C, U> {
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
    pub(super) fn new(client: C, upstream: Upstream<U>, scope: Scope) -> Self {
        let now = Clock::now();
        let core = Core::new(
            scope,
            now,
            &upstream.settings,
            upstream.unacked,
            upstream.window,
            upstream.output,
        );
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

    /// Relays until the end: Ready with how it came.
    pub(super) fn poll_run(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        match self.run(cx) {
            ControlFlow::Break(end) => Poll::Ready(end),
            ControlFlow::Continue(()) => Poll::Pending,
        }
    }

    /// Writes, reads and handles frames as long as either connection moves; Continue once both wait (their
    /// wake-ups and the timer's registered with `cx`), Break at the end.
    fn run(&mut self, cx: &mut Context<'_>) -> ControlFlow<End> {
        if !self.primed {
            self.primed = true;
            if let Err(fatal) = self.core.upstream_frames(&mut self.upstream_in) {
                return ControlFlow::Break(End::Upstream(fatal));
            }
        }
        loop {
            // Requests first: the upstream can begin on them while the client's answers are written.
            let mut progress = write_some(&mut self.upstream, &mut self.core.to_upstream, cx)?;
            progress |= write_some(&mut self.client, &mut self.core.to_client, cx)?;
            // Everything each peer has sent is read before anything is written, so that the frames of
            // several TLS records leave in one write.
            progress |= self.read_client(cx)?;
            progress |= self.read_upstream(cx)?;
            self.core.give_credit();
            if progress {
                continue;
            }
            if let Err(error) = poll_flush_both(&mut self.client, &mut self.upstream, cx) {
                return ControlFlow::Break(End::Io(error));
            }
            if !self.poll_timer(cx)? {
                return ControlFlow::Continue(());
            }
        }
    }

    /// Reads and handles what the client sent while there is room for what it adds; not from a client
    /// whose requests' audit records wait for room in the log's queue (`PolledLog`). Whether it read any.
    fn read_client(&mut self, cx: &mut Context<'_>) -> ControlFlow<End, bool> {
        let mut progress = false;
        let logged = self.core.scope.log.poll_drain(cx).is_ready();
        while logged && !self.client_eof && self.core.room() && self.core.scope.log.is_clear() {
            let core = &mut self.core;
            let read = poll_read_frames(&mut self.client, &mut self.client_in, cx, |input| {
                core.client_frames(input)
            });
            match read {
                Poll::Ready(Ok(None)) => {
                    self.client_eof = true;
                    return ControlFlow::Break(End::ClientClosed);
                }
                Poll::Ready(Ok(Some(handled))) => {
                    progress = true;
                    self.lean = false;
                    if let Err(fatal) = handled {
                        return ControlFlow::Break(End::Client(fatal));
                    }
                }
                Poll::Ready(Err(error)) => return ControlFlow::Break(End::Io(error)),
                Poll::Pending => break,
            }
        }
        ControlFlow::Continue(progress)
    }

    /// Reads and handles what the upstream sent while there is room for what it adds. Whether it read any.
    fn read_upstream(&mut self, cx: &mut Context<'_>) -> ControlFlow<End, bool> {
        let mut progress = false;
        while !self.upstream_eof && self.core.room() {
            let core = &mut self.core;
            let read = poll_read_frames(&mut self.upstream, &mut self.upstream_in, cx, |input| {
                core.upstream_frames(input)
            });
            match read {
                Poll::Ready(Ok(None)) => {
                    self.upstream_eof = true;
                    return ControlFlow::Break(End::UpstreamClosed);
                }
                Poll::Ready(Ok(Some(handled))) => {
                    progress = true;
                    if let Err(fatal) = handled {
                        return ControlFlow::Break(End::Upstream(fatal));
                    }
                }
                Poll::Ready(Err(error)) => return ControlFlow::Break(End::Io(error)),
                Poll::Pending => break,
            }
        }
        ControlFlow::Continue(progress)
    }

    /// The timer: when it fires, lets go of an idle connection's buffers, ends the relay if a deadline has
    /// passed, and arms it for the next. Whether to go round again (the next deadline is here already).
    fn poll_timer(&mut self, cx: &mut Context<'_>) -> ControlFlow<End, bool> {
        // The timer is armed for the first deadline only; one that came sooner since (the connection
        // went idle: its buffers go in SHRINK_AFTER) moves it earlier.
        if let Some(since) = self.core.idle_since.filter(|_| !self.lean) {
            let shrink_at = since + SHRINK_AFTER;
            if shrink_at < self.timer.deadline() {
                self.timer.as_mut().reset(shrink_at);
            }
        }
        if self.timer.as_mut().poll(cx).is_pending() {
            return ControlFlow::Continue(false);
        }
        let now = Clock::now();
        if !self.lean && self.core.idle_for(now) >= SHRINK_AFTER {
            self.lean = true;
            self.client_in.shrink();
            self.upstream_in.shrink();
            self.core.shrink();
        }
        match self.core.deadline(now, self.lean) {
            Err(end) => ControlFlow::Break(end),
            Ok(next) => {
                self.timer.as_mut().reset(next);
                // Polled once so the new deadline is registered with this task.
                ControlFlow::Continue(self.timer.as_mut().poll(cx).is_ready())
            }
        }
    }

    /// Ends the exchanges still open, tells the peers why, and closes both connections.
    pub(super) async fn close(&mut self, end: End) {
        self.core.end(end);
        let client = &mut self.client;
        let upstream = &mut self.upstream;
        let core = &mut self.core;
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

/// Writes what `out` holds as far as `io` takes it now: whether anything was written.
fn write_some<T: AsyncWrite + Unpin>(
    io: &mut T,
    out: &mut OutBuf,
    cx: &mut Context<'_>,
) -> ControlFlow<End, bool> {
    match poll_write_all(io, out, cx) {
        Poll::Ready(Ok(wrote)) => ControlFlow::Continue(wrote),
        Poll::Ready(Err(error)) => ControlFlow::Break(End::Io(error)),
        Poll::Pending => ControlFlow::Continue(false),
    }
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

/// Reads and drops what the client still sends until it closes its side (bounded by the caller): closing a
/// socket with unread data resets the connection, and a reset makes the client's kernel drop what it has
/// received and not yet read, such as the last frames just written (as nginx lingers, for the same reason).
async fn linger<C: AsyncRead + Unpin>(client: &mut C) {
    let mut sink = [0u8; 4096];
    while matches!(client.read(&mut sink).await, Ok(n) if n > 0) {}
}

#[cfg(test)]
mod tests;
