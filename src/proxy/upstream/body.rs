//! The bodies of upstream traffic: what a request body is on its way up (`ProxyBody`), and a response's
//! body on its way down, HTTP/1.1 or an HTTP/2 stream whose window is given back as the client reads.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::header::{self, HeaderMap};
use http_body_util::combinators::BoxBody;
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// One request's place among its connection's open streams, given back when dropped (the response
/// ended, or failed).
pub(super) struct StreamSlot(pub(super) Arc<AtomicUsize>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The body of an upstream's response.
pub enum UpstreamBody {
    Http1(Incoming),
    Http2(Http2Body),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamBody::Http1(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|frame| frame.map(|frame| frame.map_err(BoxError::from))),
            UpstreamBody::Http2(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Http1(body) => body.is_end_stream(),
            UpstreamBody::Http2(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Http1(body) => body.size_hint(),
            UpstreamBody::Http2(body) => body.size_hint(),
        }
    }
}

/// A response body arriving on an HTTP/2 stream: its data, then its trailers if any. Each chunk handed on
/// is given back to the upstream's flow-control window, so the upstream sends no faster than the client
/// reads.
pub struct Http2Body {
    pub(super) stream: h2::RecvStream,
    pub(super) data_done: bool,
    /// What is left of the length the response declared: its size hint, which reaches 0 with the last
    /// byte even where END_STREAM comes in a frame of its own.
    pub(super) length: Option<u64>,
    pub(super) _slot: StreamSlot,
}

impl Http2Body {
    pub(super) fn new(stream: h2::RecvStream, headers: &HeaderMap, slot: StreamSlot) -> Self {
        let length = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse().ok());
        Http2Body {
            stream,
            data_done: false,
            length,
            _slot: slot,
        }
    }
}

impl Body for Http2Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if !self.data_done {
            match ready!(self.stream.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = self.stream.flow_control().release_capacity(data.len());
                    self.length = self
                        .length
                        .map(|left| left.saturating_sub(data.len() as u64));
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(error)) => return Poll::Ready(Some(Err(error.into()))),
                None => self.data_done = true,
            }
        }
        match ready!(self.stream.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(error) => Poll::Ready(Some(Err(error.into()))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.stream.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.stream.is_end_stream() {
            return SizeHint::with_exact(0);
        }
        match self.length {
            Some(length) if !self.data_done => SizeHint::with_exact(length),
            _ => SizeHint::default(),
        }
    }
}
