//! Masking an HTTP response as hyper carries it (HTTP/1.1 and HTTP/2 clients the daemon serves itself): its
//! header fields and trailers ([`mask_headers`]), its status line's reason ([`mask_reason`]), and its body
//! as it streams ([`Redacted`]). Whether a response can be scanned at all is [`unscannable`]'s answer.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use hyper::body::{Body, Frame, SizeHint};
use hyper::ext::ReasonPhrase;

use super::{Masker, Needles};

/// Masks every header field's name and value in place; how many were masked (runs, as
/// [`Needles::mask_all`] counts them).
pub fn mask_headers(headers: &mut HeaderMap, needles: &Needles) -> u64 {
    let mut count = 0;
    for value in headers.values_mut() {
        if let Some(masked) = needles.mask_all(value.as_bytes()) {
            // Masking turns bytes into `*`, which a header value may hold anywhere: never an error, but
            // were it one, nothing of the value would pass.
            *value = HeaderValue::from_bytes(&masked.bytes)
                .unwrap_or_else(|_| HeaderValue::from_static(""));
            count += masked.count;
        }
    }
    // Names rarely hold anything (and `*` is a token character, so a masked name is still one): the map is
    // only rebuilt when one does.
    let masked_names: Vec<(HeaderName, HeaderName, u64)> = headers
        .keys()
        .filter_map(|name| {
            let masked = needles.mask_all(name.as_str().as_bytes())?;
            let new = HeaderName::from_bytes(&masked.bytes).ok()?;
            Some((name.clone(), new, masked.count))
        })
        .collect();
    for (old, new, masked) in masked_names {
        let values: Vec<HeaderValue> = headers.get_all(&old).iter().cloned().collect();
        headers.remove(&old);
        for value in values {
            headers.append(new.clone(), value);
        }
        count += masked;
    }
    count
}

/// Masks an HTTP/1.1 upstream's own reason phrase (hyper keeps one that is not the standard text, and
/// sends it on); how many were masked.
pub fn mask_reason<B>(response: &mut Response<B>, needles: &Needles) -> u64 {
    let Some(reason) = response.extensions().get::<ReasonPhrase>() else {
        return 0;
    };
    let Some(masked) = needles.mask_all(reason.as_bytes()) else {
        return 0;
    };
    match ReasonPhrase::try_from(masked.bytes) {
        Ok(reason) => {
            response.extensions_mut().insert(reason);
        }
        // `*` is allowed in a reason: never so, but were it, the standard text goes instead.
        Err(_) => {
            response.extensions_mut().remove::<ReasonPhrase>();
        }
    }
    masked.count
}

/// Why a response cannot be scanned and must not reach the sandbox, if so: a body in a content coding
/// (compressed). The request asked for none (`Accept-Encoding: identity`); an upstream that sends one
/// anyway gets its response refused. A response without a body (HEAD, 204, 304) has nothing to hide.
pub fn unscannable<B>(response: &Response<B>, head_request: bool) -> Option<String> {
    let status = response.status();
    if head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return None;
    }
    let values = response.headers().get_all(header::CONTENT_ENCODING);
    codings(values.iter().map(HeaderValue::as_bytes)).map(|codings| refusal(&codings))
}

/// The content codings that Content-Encoding `values` name other than identity, lower case and
/// comma-separated; `None` when they name none.
pub fn codings<'v>(values: impl IntoIterator<Item = &'v [u8]>) -> Option<String> {
    let named: Vec<String> = values
        .into_iter()
        .flat_map(|value| value.split(|&byte| byte == b','))
        .map(|coding| String::from_utf8_lossy(coding.trim_ascii()).to_ascii_lowercase())
        .filter(|coding| !coding.is_empty() && coding != "identity")
        .collect();
    (!named.is_empty()).then(|| named.join(", "))
}

/// What the sandbox is told of a response in `codings` it refused.
pub fn refusal(codings: &str) -> String {
    format!(
        "the upstream's response is in Content-Encoding {codings}, which the sandbox cannot scan for \
         secrets; it was asked for none (Accept-Encoding: identity). `redact = false` on the integration \
         lets such responses through unscanned"
    )
}

/// A response body with every secret masked as it streams: only the bytes that could still begin a
/// secret are held back, until the next bytes decide or the body ends. Lengths do not change, so a
/// Content-Length stays true. `masked` counts what was masked, for the audit record.
pub struct Redacted<B> {
    inner: B,
    masker: Masker,
    masked: Arc<AtomicU64>,
    /// Trailers that wait for the held bytes to go first.
    trailers: Option<HeaderMap>,
}

impl<B> Redacted<B> {
    pub fn new(inner: B, masker: Masker, masked: Arc<AtomicU64>) -> Self {
        Redacted {
            inner,
            masker,
            masked,
            trailers: None,
        }
    }

    fn count(&self, headers: u64) {
        self.masked
            .store(self.masker.redacted() + headers, Ordering::Relaxed);
    }
}

impl<B> Body for Redacted<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        if let Some(mut trailers) = this.trailers.take() {
            let masked = mask_headers(&mut trailers, this.masker.needles());
            this.count(masked);
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        loop {
            let frame = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => frame,
                Some(Err(error)) => return Poll::Ready(Some(Err(error))),
                None => {
                    let tail = this.masker.finish();
                    return Poll::Ready((!tail.is_empty()).then(|| Ok(Frame::data(tail))));
                }
            };
            match frame.into_data() {
                Ok(data) => {
                    let mut out = this.masker.push(data);
                    // hyper stops polling a body whose length it knows is reached: what is held goes
                    // with the last bytes.
                    if this.inner.is_end_stream() {
                        out = join(out, this.masker.finish());
                    }
                    this.count(0);
                    if out.is_empty() && !this.inner.is_end_stream() {
                        continue;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(out))));
                }
                Err(frame) => {
                    let Ok(mut trailers) = frame.into_trailers() else {
                        continue;
                    };
                    let tail = this.masker.finish();
                    if !tail.is_empty() {
                        this.trailers = Some(trailers);
                        return Poll::Ready(Some(Ok(Frame::data(tail))));
                    }
                    let masked = mask_headers(&mut trailers, this.masker.needles());
                    this.count(masked);
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream() && self.masker.pending() == 0 && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.inner.size_hint();
        let pending = self.masker.pending() as u64;
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + pending);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + pending);
        }
        hint
    }
}

/// `front` then `back`, copied only when both hold bytes.
fn join(front: Bytes, back: Bytes) -> Bytes {
    if back.is_empty() {
        return front;
    }
    if front.is_empty() {
        return back;
    }
    let mut joined = BytesMut::with_capacity(front.len() + back.len());
    joined.extend_from_slice(&front);
    joined.extend_from_slice(&back);
    joined.freeze()
}

#[cfg(test)]
mod tests;
