use std::convert::Infallible;

use http_body_util::{BodyExt, StreamBody};

use super::*;

const SECRET: &[u8] = b"sk-test-0123456789abcdef";

fn needles() -> Arc<Needles> {
    Arc::new(Needles::new([SECRET]).unwrap())
}

type Frames = Vec<Frame<Bytes>>;

/// A body of these frames, optionally of a known length (as hyper's HTTP/1.1 body with a Content-Length
/// says it has ended once the last byte is in).
struct Known {
    frames: std::collections::VecDeque<Frame<Bytes>>,
    left: Option<u64>,
}

impl Body for Known {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let frame = self.frames.pop_front();
        if let (Some(left), Some(data)) = (&mut self.left, frame.as_ref().and_then(Frame::data_ref))
        {
            *left -= data.len() as u64;
        }
        Poll::Ready(frame.map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        self.left == Some(0) || (self.left.is_none() && self.frames.is_empty())
    }
}

/// What a client gets of `frames` through a masker: its data and trailers, and the count.
async fn through(frames: Frames, known: bool) -> (Vec<u8>, Option<HeaderMap>, u64, bool) {
    let length: u64 = frames
        .iter()
        .filter_map(|f| f.data_ref().map(|d| d.len() as u64))
        .sum();
    let inner = Known {
        frames: frames.into(),
        left: known.then_some(length),
    };
    let masked = Arc::new(AtomicU64::new(0));
    let mut body = Redacted::new(inner, Masker::new(needles()), masked.clone());
    let mut data = Vec::new();
    let mut trailers = None;
    let mut ended_with_last_data = false;
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap();
        if let Some(chunk) = frame.data_ref() {
            data.extend_from_slice(chunk);
            ended_with_last_data = body.is_end_stream();
        }
        if let Ok(t) = frame.into_trailers() {
            trailers = Some(t);
        }
    }
    (
        data,
        trailers,
        masked.load(Ordering::Relaxed),
        ended_with_last_data,
    )
}

fn split(input: &[u8], at: usize) -> Frames {
    vec![
        Frame::data(Bytes::copy_from_slice(&input[..at])),
        Frame::data(Bytes::copy_from_slice(&input[at..])),
    ]
}

#[tokio::test]
async fn a_secret_split_at_every_offset_is_masked_and_lengths_stay() {
    let input = [b"{\"echo\": \"".as_slice(), SECRET, b"\"}\n"].concat();
    let want = [b"{\"echo\": \"".as_slice(), &[b'*'; SECRET.len()], b"\"}\n"].concat();
    for at in 0..=input.len() {
        for known in [false, true] {
            let (data, _, count, ended) = through(split(&input, at), known).await;
            assert_eq!(data, want, "cut at {at}, known length {known}");
            assert_eq!(count, 1);
            // With a known length hyper stops polling at the last byte: nothing may still be held then.
            if known {
                assert!(
                    ended,
                    "cut at {at}: the body did not end with its last bytes"
                );
            }
        }
    }
}

#[tokio::test]
async fn held_bytes_go_before_the_trailers_which_are_masked_too() {
    let mut trailers = HeaderMap::new();
    trailers.insert("x-echo", HeaderValue::from_bytes(SECRET).unwrap());
    let mut frames = split(b"tail sk-test-0123", 5);
    frames.push(Frame::trailers(trailers));
    let (data, trailers, count, _) = through(frames, false).await;
    assert_eq!(data, b"tail sk-test-0123");
    let trailers = trailers.unwrap();
    assert_eq!(trailers["x-echo"], "*".repeat(SECRET.len()));
    assert_eq!(count, 1);
}

#[tokio::test]
async fn an_event_is_not_held_and_a_body_without_secrets_is_not_copied() {
    let (tx, rx) = futures::channel::mpsc::unbounded::<Result<Frame<Bytes>, Infallible>>();
    let masked = Arc::new(AtomicU64::new(0));
    let mut body = Redacted::new(StreamBody::new(rx), Masker::new(needles()), masked);
    let event = Bytes::from_static(b"data: sk-test-01 and more\n\n");
    tx.unbounded_send(Ok(Frame::data(event.clone()))).unwrap();
    let frame = body.frame().await.unwrap().unwrap();
    let data = frame.into_data().unwrap();
    assert_eq!(data, event);
    assert_eq!(data.as_ptr(), event.as_ptr(), "passed without a copy");
    drop(tx);
    assert!(body.frame().await.is_none());
}

#[test]
fn header_names_values_and_reasons_are_masked() {
    let needles = needles();
    let mut headers = HeaderMap::new();
    headers.insert("x-echo", HeaderValue::from_bytes(SECRET).unwrap());
    headers.append(
        "set-cookie",
        HeaderValue::from_bytes(&[b"token=".as_slice(), SECRET].concat()).unwrap(),
    );
    headers.append("set-cookie", HeaderValue::from_static("plain=1"));
    headers.insert(
        HeaderName::from_bytes(&[b"x-".as_slice(), SECRET].concat()).unwrap(),
        HeaderValue::from_static("named"),
    );
    assert_eq!(mask_headers(&mut headers, &needles), 3);
    let stars = "*".repeat(SECRET.len());
    assert_eq!(headers["x-echo"], stars.as_str());
    let cookies: Vec<_> = headers.get_all("set-cookie").iter().collect();
    assert_eq!(cookies, [format!("token={stars}").as_str(), "plain=1"]);
    assert_eq!(headers[format!("x-{stars}").as_str()], "named");

    let mut response = Response::new(());
    response
        .extensions_mut()
        .insert(ReasonPhrase::try_from([b"Hello ".as_slice(), SECRET].concat()).unwrap());
    assert_eq!(mask_reason(&mut response, &needles), 1);
    let reason = response.extensions().get::<ReasonPhrase>().unwrap();
    assert_eq!(reason.as_bytes(), format!("Hello {stars}").as_bytes());
}

#[test]
fn a_coded_body_cannot_be_scanned_unless_there_is_none() {
    let response = |status: u16, coding: Option<&str>| {
        let mut response = Response::new(());
        *response.status_mut() = StatusCode::from_u16(status).unwrap();
        if let Some(coding) = coding {
            response.headers_mut().insert(
                header::CONTENT_ENCODING,
                HeaderValue::from_str(coding).unwrap(),
            );
        }
        response
    };
    let why = unscannable(&response(200, Some("GZip")), false).unwrap();
    assert!(why.contains("Content-Encoding gzip"), "{why}");
    assert!(unscannable(&response(200, Some("br, identity")), false).is_some());
    assert!(unscannable(&response(200, Some("identity")), false).is_none());
    assert!(unscannable(&response(200, None), false).is_none());
    assert!(unscannable(&response(200, Some("zstd")), true).is_none());
    assert!(unscannable(&response(304, Some("gzip")), false).is_none());
    assert!(unscannable(&response(204, Some("gzip")), false).is_none());
    assert_eq!(
        codings([b"gzip, deflate".as_slice(), b" br "]).as_deref(),
        Some("gzip, deflate, br")
    );
}
