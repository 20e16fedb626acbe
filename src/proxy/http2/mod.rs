//! The HTTP/2 relay: an intercepted connection whose client and upstream both speak HTTP/2 is relayed frame
//! by frame over an upstream connection of its own, instead of being served as HTTP by one HTTP/2 stack and
//! sent again by another (`proxy::intercept`). Streams, flow control and most settings pass end to end:
//! DATA, WINDOW_UPDATE and RST_STREAM frames are forwarded as they came, so no body is ever buffered beyond
//! one frame and the peers' own windows bound what is in flight. What the relay owns:
//!
//! - every request's header block: decoded (HPACK), checked like `intercept` checks requests (the one
//!   request policy, `proxy::policy`: the host must be the TLS server name: 421; TRACE, CONNECT and
//!   `HTTP2-Settings`: refused; malformed: reset), and sent on re-encoded with the integration's headers in
//!   place of any the client sent;
//! - response header blocks pass as they came, decoded to follow the upstream's table and read the status
//!   for the audit record; with redaction (the default), every field is read, and a block with a secret in
//!   it is written again masked (`response_head`); a response in a content coding is refused with 502;
//! - response DATA passes through the exchange's masker (`redact`), which holds back only the bytes
//!   that could still begin a secret: a frame may come out shorter (or not at all, until the next), the
//!   upstream gets back the window of what never reaches the client (padding, bytes held when a stream is
//!   reset);
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
//!
//! A frame's way through this folder:
//!
//! - `upstream`: `handshake` opens HTTP/2 on the upstream connection before any client is relayed over
//!   it, and `Upstream::poll_idle` keeps it in order while it waits for one (the pool's spare).
//! - `relay`: `relay()` below runs a `Relay`, the I/O driver. It reads either peer's bytes into `buffers`
//!   (`InBuf`), hands the whole frames to `machine`, writes out what `machine` left for each peer (`OutBuf`),
//!   keeps the timer, and closes both connections at the end.
//! - `frame`: the codec the same for both peers: a frame's `Head`, the protocol's numbers, the checks of a
//!   frame's shape, the joining of a header block's frames, the frames the relay writes itself.
//! - `machine`: the state machine, without I/O: what becomes of each frame (passed on, rewritten, answered by
//!   the relay), the requests in flight (`Exchange`), settings, flow control credit, GOAWAY, deadlines.
//! - `request_head`: a request's header block as `hpack` decoded it, checked field by field, and encoded
//!   again for the upstream; `machine` adds the integration's headers (`scope`: `Scope`, `Injected`).
//! - `response_head`: a response's header block, read for its status and coding, and masked.
//!
//! Each file uses only files before it in this order: `frame`, `buffers`, `hpack`, `scope`,
//! `request_head`, `response_head`, `upstream`, `machine`, `relay`, and this one last.

mod buffers;
mod frame;
pub mod hpack;
mod machine;
mod relay;
mod request_head;
mod response_head;
mod scope;
mod upstream;

#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;

use std::future::poll_fn;

use tokio::io::{AsyncRead, AsyncWrite};

pub use self::scope::{Injected, Injection, Scope};
pub use self::upstream::{handshake, Upstream};

/// Relays `client` (whose TLS chose h2) over `upstream` until either ends.
pub async fn relay<C, U>(client: C, upstream: Upstream<U>, scope: Scope)
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let mut relay = self::relay::Relay::new(client, upstream, scope);
    let end = poll_fn(|cx| relay.poll_run(cx)).await;
    relay.close(end).await;
}
