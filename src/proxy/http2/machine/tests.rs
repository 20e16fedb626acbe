//! What `Core` makes of frames, through the whole relay: its own answers (421, 500, refusals), settings,
//! flow control credit, PING, interim responses, and an upstream going away.

use http::{Request, StatusCode};
use hyper::body::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::proxy::http2::frame::PADDED;
use crate::proxy::http2::test_support::*;
use crate::proxy::http2::{handshake, relay};

#[tokio::test]
async fn a_host_other_than_the_server_name_gets_421_and_nothing_is_sent() {
    let mut s = setup(1 << 20, authorization(), None).await;
    let (response, body, _) = get(
        &mut s.client,
        request("GET", "https://other.test/echo"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::MISDIRECTED_REQUEST);
    assert!(
        String::from_utf8_lossy(&body).contains("other.test"),
        "{body:?}"
    );
    let mut host = request("GET", "https://api.test/echo");
    host.headers_mut()
        .insert("host", "other.test".parse().unwrap());
    let (response, _, _) = get(&mut s.client, host, None).await.unwrap();
    assert_eq!(response.status(), StatusCode::MISDIRECTED_REQUEST);
    for method in ["TRACE", "CONNECT"] {
        let req = Request::builder()
            .method(method)
            .uri("https://api.test/")
            .body(())
            .unwrap();
        let (response, _, _) = get(&mut s.client, req, None).await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{method}"
        );
    }
    // The connection still works, and only this request reached the upstream.
    let (response, _, _) = get(
        &mut s.client,
        request("GET", "https://api.test:443/echo"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(s.seen.lock().unwrap().len(), 1);
    let records = records_settled(&s.records, 5).await;
    let denied: Vec<_> = records
        .iter()
        .filter(|r| r.verdict == Verdict::Denied)
        .collect();
    assert_eq!(denied.len(), 4, "{records:?}");
}

#[tokio::test]
async fn without_window_to_spare_a_refusal_comes_without_its_body() {
    let mut s = setup(65_535, authorization(), None).await;
    let (response, body, _) = get(&mut s.client, request("GET", "https://other.test/"), None)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::MISDIRECTED_REQUEST);
    assert!(body.is_empty());
    // The window the upstream knows of is whole: a download of all of it passes.
    let (_, body, _) = get(
        &mut s.client,
        request("GET", "https://api.test/big?200000"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(body.len(), 200_000);
}

#[tokio::test]
async fn a_missing_secret_gets_500_and_nothing_is_sent() {
    let mut s = setup(1 << 20, Err("secret \"openai\" is not loaded".into()), None).await;
    let (response, body, _) = get(&mut s.client, request("GET", "https://api.test/echo"), None)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(String::from_utf8_lossy(&body).contains("openai"));
    assert!(s.seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn an_early_answer_ends_the_request_and_the_connection_goes_on() {
    let mut s = setup(1 << 20, authorization(), None).await;
    let upload: Bytes = vec![7u8; 1_000_000].into();
    let mut client = s.client.clone().ready().await.unwrap();
    let (response, mut send) = client
        .send_request(request("POST", "https://api.test/early"), false)
        .unwrap();
    send.reserve_capacity(upload.len());
    let response = response.await.unwrap();
    assert_eq!(response.status(), 413);
    drop(send);
    let (response, body, _) = get(
        &mut s.client,
        request("GET", "https://api.test/big?100000"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(body.len(), 100_000);
}

#[tokio::test]
async fn the_upstreams_stream_limit_and_a_cap_reach_the_client() {
    for (upstream_limit, seen_by_client) in [(3, 3), (10_000, MAX_STREAMS as usize)] {
        let mut s = setup(1 << 20, authorization(), Some(upstream_limit)).await;
        // A response means the relay's SETTINGS, which come first, were read.
        get(&mut s.client, request("GET", "https://api.test/echo"), None)
            .await
            .unwrap();
        assert_eq!(s.client.current_max_send_streams(), seen_by_client);
    }
}

/// A client and an upstream both written frame by frame, with the relay between them.
async fn raw_pair() -> (Raw, Raw) {
    let records = Records::default();
    let (relay_up, mut up) = tokio::io::duplex(256 * 1024);
    let mut settings = Vec::new();
    write_settings(&mut settings, &[]);
    up.write_all(&settings).await.unwrap();
    let upstream = handshake(relay_up).await.unwrap();
    let mut preface = [0u8; PREFACE.len()];
    up.read_exact(&mut preface).await.unwrap();
    let (mut io, relay_client) = tokio::io::duplex(256 * 1024);
    tokio::spawn(relay(
        relay_client,
        upstream,
        scope(&records, authorization()),
    ));
    let mut out = PREFACE.to_vec();
    write_settings(&mut out, &[]);
    io.write_all(&out).await.unwrap();
    let peer = |io| Raw {
        io,
        input: InBuf::default(),
        records: records.clone(),
        seen: Seen::default(),
    };
    (peer(io), peer(up))
}

/// Every frame until the connection ends: (kind, stream, first 4 bytes of the payload, next 4).
async fn frames_to_end(raw: &mut Raw) -> Vec<(u8, u32, u32, u32)> {
    let mut frames = Vec::new();
    while let Some((head, payload)) = raw.frame().await {
        let word = |at: usize| {
            payload
                .get(at..at + 4)
                .map_or(0, |w| u32::from_be_bytes(w.try_into().unwrap()))
        };
        frames.push((head.kind, head.stream, word(0), word(4)));
    }
    frames
}

fn error_of(records: &[Record], path: &str) -> String {
    let record = records
        .iter()
        .find(|r| r.path.as_deref() == Some(path))
        .unwrap_or_else(|| panic!("no record for {path}: {records:#?}"));
    record.error.clone().unwrap_or_default()
}

/// The upstream's GOAWAY goes to the client as it came, so the client sends again the streams above its
/// last; when the upstream then closes, an idempotent request below it without an answer is refused
/// (REFUSED_STREAM: the client sends it again too), and a POST fails with the connection.
#[tokio::test]
async fn an_upstream_going_away_tells_the_client_what_to_send_again() {
    let (mut client, mut upstream) = raw_pair().await;
    let mut requests = Vec::new();
    for (stream, method, path) in [(1, "GET", "/a"), (3, "POST", "/b"), (5, "GET", "/c")] {
        let mut fields = get_fields(path);
        fields[0].1 = method.into();
        let fields: Vec<(&str, &str)> = fields.iter().map(|(n, v)| (*n, v.as_str())).collect();
        requests.extend(headers_frame(stream, END_STREAM, &fields));
    }
    client.send(&requests).await;
    upstream.until(HEADERS, 5).await;
    let mut out = Vec::new();
    write_goaway(&mut out, 3, NO_ERROR);
    upstream.send(&out).await;
    drop(upstream);

    let frames = frames_to_end(&mut client).await;
    let goaways: Vec<(u32, u32)> = frames
        .iter()
        .filter(|f| f.0 == GOAWAY)
        .map(|f| (f.2, f.3))
        .collect();
    assert_eq!(
        goaways,
        [(3, NO_ERROR), (3, INTERNAL_ERROR)],
        "the upstream's, then the relay's for the POST cut short"
    );
    let resets: Vec<(u32, u32)> = frames
        .iter()
        .filter(|f| f.0 == RST_STREAM)
        .map(|f| (f.1, f.2))
        .collect();
    assert_eq!(resets, [(1, REFUSED_STREAM)]);
    let records = records_settled(&client.records, 3).await;
    assert!(error_of(&records, "/c").contains("GOAWAY"));
    assert!(error_of(&records, "/a").contains("REFUSED_STREAM"));
    let post = error_of(&records, "/b");
    assert!(
        post.contains("the upstream closed the connection") && !post.contains("REFUSED"),
        "{post}"
    );
}

/// After the upstream's GOAWAY a stream the client opens is refused (and audited), and the client gets
/// no second GOAWAY when the upstream closes with nothing open.
#[tokio::test]
async fn after_an_upstream_goaway_new_streams_are_refused() {
    let (mut client, mut upstream) = raw_pair().await;
    client
        .send(&headers_frame(
            1,
            END_STREAM,
            &[
                (":method", "GET"),
                (":scheme", "https"),
                (":authority", SNI),
                (":path", "/a"),
            ],
        ))
        .await;
    upstream.until(HEADERS, 1).await;
    let mut out = headers_frame(1, END_STREAM, &[(":status", "200")]);
    write_goaway(&mut out, 1, NO_ERROR);
    upstream.send(&out).await;
    client.until(HEADERS, 1).await;
    client.until(GOAWAY, 0).await;
    let mut fields = get_fields("/b");
    fields.truncate(4);
    let fields: Vec<(&str, &str)> = fields.iter().map(|(n, v)| (*n, v.as_str())).collect();
    client.send(&headers_frame(3, END_STREAM, &fields)).await;
    let (_, payload) = client.until(RST_STREAM, 3).await;
    assert_eq!(be32(&payload), REFUSED_STREAM);
    drop(upstream);
    let frames = frames_to_end(&mut client).await;
    assert!(
        frames.iter().all(|f| f.0 != GOAWAY),
        "one GOAWAY only: {frames:?}"
    );
    let records = records_settled(&client.records, 2).await;
    assert!(error_of(&records, "/b").contains("GOAWAY"), "{records:#?}");
}

#[tokio::test]
async fn padded_data_on_a_refused_stream_gives_its_window_back() {
    let mut raw = Raw::start().await;
    let mut out = Vec::new();
    // Refused (wrong host) while its body is still coming.
    let mut fields = get_fields("/upload");
    fields[2].1 = "other.test".into();
    let all: Vec<(&str, &str)> = fields.iter().map(|(n, v)| (*n, v.as_str())).collect();
    out.extend(headers_frame(1, 0, &all));
    let mut padded = vec![10u8];
    padded.extend_from_slice(&[1u8; 100]);
    padded.extend_from_slice(&[0u8; 10]);
    write_frame(&mut out, DATA, PADDED | END_STREAM, 1, &padded);
    raw.send(&out).await;
    let (_, payload) = raw.until(WINDOW_UPDATE, 0).await;
    assert_eq!(u32::from_be_bytes(payload[..4].try_into().unwrap()), 111);
}

#[tokio::test]
async fn an_interim_100_continue_reaches_the_client_before_its_body_is_sent() {
    let mut raw = Raw::start().await;
    let fields = get_fields("/continue");
    let mut all: Vec<(&str, &str)> = fields.iter().map(|(n, v)| (*n, v.as_str())).collect();
    all[0].1 = "POST";
    all.push(("expect", "100-continue"));
    raw.send(&headers_frame(1, 0, &all)).await;
    let (head, block) = raw.until(HEADERS, 1).await;
    assert_eq!(status(&block), b"100");
    assert_eq!(head.flags & END_STREAM, 0);
    let mut out = Vec::new();
    write_frame(&mut out, DATA, END_STREAM, 1, b"the body");
    raw.send(&out).await;
    let (_, block) = raw.until(HEADERS, 1).await;
    assert_eq!(status(&block), b"200");
    let records = records_settled(&raw.records, 1).await;
    assert_eq!(records[0].status, Some(200));
    assert_eq!(records[0].bytes_up, 8);
}

#[tokio::test]
async fn settings_faster_than_the_upstream_acknowledges_them_end_the_connection() {
    let mut raw = Raw::start().await;
    let mut out = Vec::new();
    // In one read, so all are taken before the upstream could acknowledge any.
    for _ in 0..2 * MAX_UNACKED_SETTINGS {
        write_settings(&mut out, &[(INITIAL_WINDOW_SIZE, 65_535)]);
    }
    raw.send(&out).await;
    assert_eq!(raw.goaway_code().await, ENHANCE_YOUR_CALM);
}

/// The upstream's PING goes to the client and the client's answer back to the upstream, after the
/// streams the client sent before it: a server's graceful shutdown (GOAWAY with the highest stream id,
/// then a PING; then the final GOAWAY) counts them as processed. Before, the relay answered the PING
/// itself, and a stream in flight from the client was left out of the final GOAWAY (curl 7.88 failed it).
/// An answer to no PING the upstream sent is not passed on.
#[tokio::test]
async fn an_upstreams_ping_is_answered_by_the_client_after_what_it_sent() {
    let (mut client, mut upstream) = raw_pair().await;
    let mut out = Vec::new();
    write_goaway(&mut out, 0x7fff_ffff, NO_ERROR);
    write_frame(&mut out, PING, 0, 0, b"shutdown");
    upstream.send(&out).await;
    client.until(GOAWAY, 0).await;
    let (head, payload) = client.until(PING, 0).await;
    assert_eq!((head.flags, payload.as_slice()), (0, &b"shutdown"[..]));

    let fields = get_fields("/in-flight");
    let fields: Vec<(&str, &str)> = fields.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let mut out = headers_frame(1, END_STREAM, &fields);
    write_frame(&mut out, PING, ACK, 0, b"shutdown");
    write_frame(&mut out, PING, ACK, 0, b"unasked!");
    out.extend(headers_frame(3, END_STREAM, &fields));
    client.send(&out).await;
    let mut seen = Vec::new();
    loop {
        let (head, payload) = upstream.frame().await.expect("the relay goes on");
        seen.push((head.kind, head.stream, head.flags, payload));
        if head.kind == HEADERS && head.stream == 3 {
            break;
        }
    }
    let order: Vec<(u8, u32)> = seen
        .iter()
        .filter(|f| f.0 == HEADERS || f.0 == PING)
        .map(|f| (f.0, f.1))
        .collect();
    assert_eq!(order, [(HEADERS, 1), (PING, 0), (HEADERS, 3)]);
    let ping = seen.iter().find(|f| f.0 == PING).unwrap();
    assert_eq!((ping.2, ping.3.as_slice()), (ACK, &b"shutdown"[..]));
}

#[tokio::test]
async fn a_clients_pings_are_answered_by_the_relay() {
    let mut raw = Raw::start().await;
    let mut out = Vec::new();
    write_frame(&mut out, PING, 0, 0, b"12345678");
    raw.send(&out).await;
    let (head, payload) = raw.until(PING, 0).await;
    assert_eq!(head.flags, ACK);
    assert_eq!(payload, b"12345678");
}
