//! Frames that break RFC 9113's rules end the connection with the GOAWAY code the rule names.

use super::*;
use crate::proxy::http2::test_support::*;

#[tokio::test]
async fn protocol_errors_end_the_connection_with_goaway() {
    let cases: Vec<(&str, Vec<u8>, u32)> = vec![
        (
            "DATA on an unopened stream",
            {
                let mut out = Vec::new();
                write_frame(&mut out, DATA, 0, 3, b"x");
                out
            },
            PROTOCOL_ERROR,
        ),
        (
            "HEADERS on an even stream",
            headers_frame(2, END_STREAM, &[(":method", "GET")]),
            PROTOCOL_ERROR,
        ),
        (
            "a frame over the size limit",
            {
                let mut out = Vec::new();
                write_frame(&mut out, DATA, 0, 1, &vec![0u8; DEFAULT_MAX_FRAME + 1]);
                out
            },
            FRAME_SIZE_ERROR,
        ),
        (
            "CONTINUATION flood",
            {
                let mut out = Vec::new();
                write_frame(&mut out, HEADERS, 0, 1, &[0x82]);
                for _ in 0..(MAX_HEADER_BYTES / 1000 + 1) {
                    write_frame(&mut out, CONTINUATION, 0, 1, &[0x40; 1000]);
                }
                out
            },
            ENHANCE_YOUR_CALM,
        ),
        (
            "an interrupted header block",
            {
                let mut out = Vec::new();
                write_frame(&mut out, HEADERS, 0, 1, &[0x82]);
                write_frame(&mut out, PING, 0, 0, &[0; 8]);
                out
            },
            PROTOCOL_ERROR,
        ),
        (
            "a bad HPACK index",
            {
                let mut out = Vec::new();
                write_frame(
                    &mut out,
                    HEADERS,
                    END_HEADERS | END_STREAM,
                    1,
                    &[0xff, 0x7f],
                );
                out
            },
            COMPRESSION_ERROR,
        ),
    ];
    for (why, frames, code) in cases {
        let mut raw = Raw::start().await;
        raw.send(&frames).await;
        assert_eq!(raw.goaway_code().await, code, "{why}");
        assert!(raw.frame().await.is_none(), "{why}: the connection ends");
    }
}
