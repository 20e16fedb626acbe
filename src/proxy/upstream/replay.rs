//! A request kept so that it can be sent again on another upstream connection: its head, and the body
//! chunks it has sent so far, up to `MAX_KEPT_BODY`. Upstreams close connections and refuse streams without
//! having processed what was sent on them (HTTP/2 GOAWAY and REFUSED_STREAM, RFC 9113 §8.7; an HTTP/1.1
//! keep-alive connection closed as a request went out, RFC 9112 §9.3.1): `upstream` decides when a request
//! may go again, this module is what lets it. The client's body is read once, whatever the number of
//! attempts; an attempt that is given up on stops reading it.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use http::{HeaderMap, Method, Request, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::{Body, Bytes, Frame, SizeHint};

use crate::proxy::upstream::body::{BoxError, ProxyBody};

/// The most of a request body kept for sending it again. A larger body that has begun to go out cannot
/// be sent again: its start is gone.
pub const MAX_KEPT_BODY: usize = 64 * 1024;

/// Why a request cannot be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotReplayable {
    #[error("its body (over {} KiB) had already been partly sent and was not kept", MAX_KEPT_BODY / 1024)]
    BodyTooLarge,
    #[error("reading its body from the client failed")]
    BodyFailed,
}

/// A request's head as it was first sent, and its body so far.
pub struct Replayable {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    /// None for a request without a body.
    tape: Option<Arc<Mutex<Tape>>>,
}

/// The client's body, read once, and the chunks of it kept for later attempts.
struct Tape {
    /// None once the body has ended.
    source: Option<ProxyBody>,
    /// The length the body declared, if it did.
    length: Option<u64>,
    chunks: Vec<Bytes>,
    kept: usize,
    trailers: Option<HeaderMap>,
    /// More than `MAX_KEPT_BODY` has been read: `chunks` no longer holds all that went out.
    overflowed: bool,
    failed: bool,
    /// The attempt that reads on; an earlier one's body ends in an error when polled.
    current: u32,
}

impl Tape {
    fn lock(tape: &Mutex<Tape>) -> MutexGuard<'_, Tape> {
        tape.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One attempt's body: the kept chunks again, then the rest of the client's body.
struct AttemptBody {
    tape: Arc<Mutex<Tape>>,
    attempt: u32,
    /// The next kept chunk this attempt sends.
    next: usize,
    sent: u64,
    trailers_sent: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("the request went to another upstream connection")]
struct Superseded;

impl Replayable {
    /// Keeps what it takes to send `request` again, and gives back the request for the first attempt.
    pub fn new(request: Request<ProxyBody>) -> (Replayable, Request<ProxyBody>) {
        let (parts, body) = request.into_parts();
        let tape = (!body.is_end_stream()).then(|| {
            Arc::new(Mutex::new(Tape {
                length: body.size_hint().exact(),
                source: Some(body),
                chunks: Vec::new(),
                kept: 0,
                trailers: None,
                overflowed: false,
                failed: false,
                current: 0,
            }))
        });
        let kept = Replayable {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers: parts.headers.clone(),
            tape,
        };
        let first = match &kept.tape {
            Some(tape) => Request::from_parts(parts, attempt_body(tape, 0)),
            None => Request::from_parts(parts, empty()),
        };
        (kept, first)
    }

    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The request for another attempt; any earlier attempt's body stops reading the client's.
    pub fn again(&mut self) -> Result<Request<ProxyBody>, NotReplayable> {
        let body = match &self.tape {
            None => empty(),
            Some(tape) => {
                let attempt = {
                    let mut kept = Tape::lock(tape);
                    if kept.failed {
                        return Err(NotReplayable::BodyFailed);
                    }
                    if kept.overflowed {
                        return Err(NotReplayable::BodyTooLarge);
                    }
                    kept.current += 1;
                    kept.current
                };
                attempt_body(tape, attempt)
            }
        };
        let mut request = Request::new(body);
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers.clone();
        Ok(request)
    }
}

fn empty() -> ProxyBody {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed()
}

fn attempt_body(tape: &Arc<Mutex<Tape>>, attempt: u32) -> ProxyBody {
    AttemptBody {
        tape: tape.clone(),
        attempt,
        next: 0,
        sent: 0,
        trailers_sent: false,
    }
    .boxed()
}

impl AttemptBody {
    fn data(&mut self, data: Bytes) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.sent += data.len() as u64;
        Poll::Ready(Some(Ok(Frame::data(data))))
    }
}

impl Body for AttemptBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let tape = this.tape.clone();
        let mut tape = Tape::lock(&tape);
        if tape.current != this.attempt {
            return Poll::Ready(Some(Err(Superseded.into())));
        }
        if let Some(chunk) = tape.chunks.get(this.next) {
            let chunk = chunk.clone();
            this.next += 1;
            return this.data(chunk);
        }
        let Some(source) = tape.source.as_mut() else {
            if this.trailers_sent {
                return Poll::Ready(None);
            }
            this.trailers_sent = true;
            return Poll::Ready(tape.trailers.clone().map(|t| Ok(Frame::trailers(t))));
        };
        match Pin::new(source).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                tape.source = None;
                this.trailers_sent = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(error))) => {
                tape.failed = true;
                Poll::Ready(Some(Err(error)))
            }
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => {
                    if !tape.overflowed {
                        if tape.kept + data.len() <= MAX_KEPT_BODY {
                            tape.kept += data.len();
                            tape.chunks.push(data.clone());
                            this.next = tape.chunks.len();
                        } else {
                            tape.overflowed = true;
                            tape.chunks = Vec::new();
                            this.next = 0;
                        }
                    }
                    this.data(data)
                }
                Err(frame) => {
                    if let Some(trailers) = frame.trailers_ref() {
                        tape.trailers = Some(trailers.clone());
                        tape.source = None;
                        this.trailers_sent = true;
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        let tape = Tape::lock(&self.tape);
        if tape.current != self.attempt || self.next < tape.chunks.len() {
            return false;
        }
        match &tape.source {
            Some(source) => source.is_end_stream(),
            None => self.trailers_sent || tape.trailers.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        let tape = Tape::lock(&self.tape);
        match tape.length {
            Some(length) => SizeHint::with_exact(length.saturating_sub(self.sent)),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests;
