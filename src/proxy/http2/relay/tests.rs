//! The driver: a client that begins a header block and stops is cut off; a relay that ends writes all
//! its last frames.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::proxy::http2::buffers::READ_CHUNK;
use crate::proxy::http2::frame::{
    be32, write_frame, write_settings, DATA, DEFAULT_MAX_FRAME, END_HEADERS, END_STREAM, GOAWAY,
    HEADERS, HEAD_LEN, INTERNAL_ERROR, PREFACE, PROTOCOL_ERROR,
};
use crate::proxy::http2::test_support::*;
use crate::proxy::http2::{handshake, relay};

#[tokio::test]
async fn a_client_that_stops_mid_block_is_cut_off() {
    tokio::time::pause();
    let mut raw = Raw::start().await;
    let mut out = Vec::new();
    write_frame(&mut out, HEADERS, 0, 1, &[0x82]);
    raw.send(&out).await;
    // Time stands still until every task waits: the relay has read the frame by then.
    tokio::time::sleep(Duration::from_millis(1)).await;
    tokio::time::advance(HEADER_TIMEOUT + Duration::from_secs(1)).await;
    assert_eq!(raw.goaway_code().await, PROTOCOL_ERROR);
}

/// Found by the fuzz target: the relay ended, its client's socket buffer full, and it closed the
/// connection after one partial write of its last frames, cutting a DATA frame and losing the GOAWAY.
#[tokio::test]
async fn a_client_slow_to_read_gets_every_last_frame_and_the_goaway() {
    let (relay_up, mut upstream) = tokio::io::duplex(64 * 1024);
    let mut out = Vec::new();
    write_settings(&mut out, &[]);
    upstream.write_all(&out).await.unwrap();
    let up = handshake(relay_up).await.unwrap();
    // Far smaller than the response, so that most of it is still to be written when the relay ends.
    let (mut client, relay_client) = tokio::io::duplex(1024);
    let records = Records::default();
    let relayed = tokio::spawn(relay(relay_client, up, scope(&records, authorization())));
    let mut out = PREFACE.to_vec();
    write_settings(&mut out, &[]);
    let fields = get_fields("/echo");
    let fields: Vec<(&str, &str)> = fields.iter().map(|(n, v)| (*n, v.as_str())).collect();
    out.extend(headers_frame(1, END_STREAM, &fields));
    client.write_all(&out).await.unwrap();
    let mut preface = [0; PREFACE.len()];
    upstream.read_exact(&mut preface).await.unwrap();
    let mut at_upstream = InBuf::default();
    loop {
        match at_upstream.whole_frame(DEFAULT_MAX_FRAME).unwrap() {
            Some((head, _)) if head.kind == HEADERS => break,
            Some((head, _)) => at_upstream.consume(HEAD_LEN + head.len),
            None => {
                let read = upstream.read(at_upstream.space(READ_CHUNK));
                let n = tokio::time::timeout(Duration::from_secs(5), read)
                    .await
                    .expect("the request reaches the upstream")
                    .unwrap();
                at_upstream.filled(n);
            }
        }
    }
    let mut out = Vec::new();
    write_frame(&mut out, HEADERS, END_HEADERS, 1, &[0x88]);
    write_frame(&mut out, DATA, END_STREAM, 1, &[7u8; 10_000]);
    // A protocol error (no stream of the upstream's may open), so that the relay ends at once.
    write_frame(&mut out, HEADERS, END_HEADERS, 2, &[0x88]);
    upstream.write_all(&out).await.unwrap();
    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut received))
        .await
        .expect("the relay closes the connection")
        .unwrap();
    // As a client does at the end: the relay reads what it still sends (lingers) until then.
    client.shutdown().await.unwrap();
    relayed.await.unwrap();
    let mut input = InBuf::default();
    input.append(&received);
    let (mut data, mut last) = (0, None);
    while let Some((head, frame)) = input.whole_frame(usize::MAX).unwrap() {
        if head.kind == DATA {
            data += head.len;
        }
        last = Some((head.kind, frame.get(HEAD_LEN + 4..).map(be32)));
        input.consume(HEAD_LEN + head.len);
    }
    assert_eq!(input.unread().len(), 0, "no frame is cut short");
    assert_eq!(data, 10_000);
    assert_eq!(last, Some((GOAWAY, Some(INTERNAL_ERROR))));
}
