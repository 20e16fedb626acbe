use super::*;
use http_body_util::{Full, StreamBody};

fn streamed(chunks: Vec<&'static [u8]>, trailers: Option<HeaderMap>) -> ProxyBody {
    let mut frames: Vec<Result<Frame<Bytes>, BoxError>> = chunks
        .into_iter()
        .map(|chunk| Ok(Frame::data(Bytes::from_static(chunk))))
        .collect();
    if let Some(trailers) = trailers {
        frames.push(Ok(Frame::trailers(trailers)));
    }
    StreamBody::new(futures::stream::iter(frames)).boxed()
}

fn request(body: ProxyBody) -> Request<ProxyBody> {
    Request::builder()
        .method("PUT")
        .uri("https://api.test/x?y=1")
        .header("x-kept", "1")
        .body(body)
        .unwrap()
}

/// The data and trailers a body yields, to its end.
async fn read_all(body: ProxyBody) -> (Vec<u8>, Option<HeaderMap>) {
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    (collected.to_bytes().to_vec(), trailers)
}

#[tokio::test]
async fn a_request_without_a_body_goes_again_with_its_head() {
    let (mut kept, first) = Replayable::new(request(empty()));
    assert_eq!(kept.method(), Method::PUT);
    drop(first);
    let again = kept.again().unwrap();
    assert_eq!(again.uri(), "https://api.test/x?y=1");
    assert_eq!(again.headers()["x-kept"], "1");
    assert!(again.body().is_end_stream());
}

#[tokio::test]
async fn a_body_read_in_part_goes_again_whole_and_the_client_is_read_once() {
    let mut trailers = HeaderMap::new();
    trailers.insert("x-sum", "9".parse().unwrap());
    let (mut kept, first) =
        Replayable::new(request(streamed(vec![b"ab", b"cd", b"ef"], Some(trailers))));
    let mut first = first.into_body();
    let frame = first.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "ab");

    let second = kept.again().unwrap().into_body();
    // The first attempt was given up on: it reads no more of the client's body.
    assert!(first.frame().await.unwrap().is_err());
    let (data, trailers) = read_all(second).await;
    assert_eq!(data, b"abcdef");
    assert_eq!(trailers.unwrap()["x-sum"], "9");

    let (data, trailers) = read_all(kept.again().unwrap().into_body()).await;
    assert_eq!(data, b"abcdef", "a third attempt after the body ended");
    assert_eq!(trailers.unwrap()["x-sum"], "9");
}

#[tokio::test]
async fn a_declared_length_is_kept_for_every_attempt() {
    let body = Full::new(Bytes::from_static(b"12345"))
        .map_err(|never| match never {})
        .boxed();
    let (mut kept, first) = Replayable::new(request(body));
    assert_eq!(first.body().size_hint().exact(), Some(5));
    let (data, _) = read_all(first.into_body()).await;
    assert_eq!(data, b"12345");
    let again = kept.again().unwrap();
    assert_eq!(again.body().size_hint().exact(), Some(5));
    assert!(!again.body().is_end_stream());
    let (data, _) = read_all(again.into_body()).await;
    assert_eq!(data, b"12345");
}

#[tokio::test]
async fn a_body_over_the_limit_cannot_go_again_once_it_began() {
    static BIG: [u8; MAX_KEPT_BODY] = [7; MAX_KEPT_BODY];
    let (mut kept, first) = Replayable::new(request(streamed(vec![&BIG, b"x"], None)));
    // Not yet read: it can still go again from its start.
    let second = kept.again().unwrap();
    drop(first);
    let (data, _) = read_all(second.into_body()).await;
    assert_eq!(data.len(), MAX_KEPT_BODY + 1);
    assert_eq!(kept.again().unwrap_err(), NotReplayable::BodyTooLarge);
}

#[tokio::test]
async fn a_client_body_that_fails_cannot_go_again() {
    let frames: Vec<Result<Frame<Bytes>, BoxError>> = vec![
        Ok(Frame::data(Bytes::from_static(b"a"))),
        Err("client reset".into()),
    ];
    let body = StreamBody::new(futures::stream::iter(frames)).boxed();
    let (mut kept, first) = Replayable::new(request(body));
    assert!(first.into_body().collect().await.is_err());
    assert_eq!(kept.again().unwrap_err(), NotReplayable::BodyFailed);
}
