//! Requests on pooled HTTP/2 upstream connections, driven with the h2 crate: a stream each, its body
//! streamed by a task of its own under the upstream's flow control.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};

use http::{Request, Response};
use hyper::body::{Body, Bytes};

use super::body::{Http2Body, ProxyBody, StreamSlot, UpstreamBody};
use super::retry::{http2_failure, Failure};

/// A handle on a pooled HTTP/2 upstream connection.
#[derive(Clone)]
pub(super) struct Http2Sender {
    pub(super) send: h2::client::SendRequest<Bytes>,
    /// Set by the connection's task when the connection ends.
    pub(super) closed: Arc<AtomicBool>,
    /// Requests whose responses have not ended yet.
    pub(super) open: Arc<AtomicUsize>,
}

impl Http2Sender {
    pub(super) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Whether the connection can take no new stream: it ended, or the upstream sent GOAWAY (h2 then
    /// refuses new streams at once, without waiting to be polled).
    pub(super) fn is_going_away(&mut self) -> bool {
        self.is_closed()
            || matches!(
                self.send
                    .poll_ready(&mut Context::from_waker(Waker::noop())),
                Poll::Ready(Err(_))
            )
    }

    pub(super) fn is_busy(&self) -> bool {
        self.open.load(Ordering::Relaxed) > 0
    }

    /// Whether the upstream would take one more stream on this connection now.
    pub(super) fn has_room(&self) -> bool {
        self.open.load(Ordering::Relaxed) < self.send.current_max_send_streams()
    }

    pub(super) fn claim(&self) -> StreamSlot {
        self.open.fetch_add(1, Ordering::Relaxed);
        StreamSlot(self.open.clone())
    }
}

/// Opens a stream for `request` on an HTTP/2 connection and waits for the response head. The request body,
/// if any, is streamed by a task of its own, since the response may begin before the body ends.
pub(super) async fn send_http2(
    sender: Http2Sender,
    request: Request<ProxyBody>,
) -> Result<Response<UpstreamBody>, (Failure, h2::Error)> {
    let slot = sender.claim();
    let mut send = sender.send;
    // Until a stream is opened, nothing of the request has gone out: whatever the error, the upstream
    // did not process it (a malformed request fails the same way each time, and retries are counted).
    let unsent = |error| (Failure::Unprocessed, error);
    poll_fn(|cx| send.poll_ready(cx)).await.map_err(unsent)?;
    let (parts, body) = request.into_parts();
    let end_of_stream = body.is_end_stream();
    let (response, stream) = send
        .send_request(Request::from_parts(parts, ()), end_of_stream)
        .map_err(unsent)?;
    if !end_of_stream {
        tokio::spawn(send_body(body, stream));
    }
    match response.await {
        Ok(response) => {
            let (parts, stream) = response.into_parts();
            let body = Http2Body::new(stream, &parts.headers, slot);
            Ok(Response::from_parts(parts, UpstreamBody::Http2(body)))
        }
        Err(error) => Err((http2_failure(&error), error)),
    }
}

/// Streams a request body onto its HTTP/2 stream. As hyper does: the next chunk is read from the client
/// only once the last one found send window, so a slow upstream slows the upload instead of filling
/// memory; and no window is reserved before a chunk is in hand (two streams could otherwise hold the
/// connection's window against each other). A client's body that fails resets the upstream stream.
pub(super) async fn send_body(mut body: ProxyBody, mut stream: h2::SendStream<Bytes>) {
    loop {
        let next = poll_fn(|cx| {
            if stream.poll_reset(cx).is_ready() {
                return Poll::Ready(None);
            }
            Pin::new(&mut body).poll_frame(cx).map(Some)
        })
        .await;
        let frame = match next {
            // The upstream reset the stream, or the connection is gone: it wants no more.
            None => return,
            Some(None) => {
                let _ = stream.send_data(Bytes::new(), true);
                return;
            }
            Some(Some(Err(_))) => {
                stream.send_reset(h2::Reason::CANCEL);
                return;
            }
            Some(Some(Ok(frame))) => frame,
        };
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    let _ = stream.send_trailers(trailers);
                    return;
                }
                continue;
            }
        };
        let end_of_stream = body.is_end_stream();
        if !data.is_empty() {
            stream.reserve_capacity(1);
            let has_window = poll_fn(|cx| loop {
                if stream.capacity() > 0 {
                    return Poll::Ready(true);
                }
                match ready!(stream.poll_capacity(cx)) {
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return Poll::Ready(false),
                }
            })
            .await;
            if !has_window {
                return;
            }
        }
        if stream.send_data(data, end_of_stream).is_err() || end_of_stream {
            return;
        }
    }
}
