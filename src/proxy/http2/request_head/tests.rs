//! Request heads through the whole relay: malformed ones reset, oversized ones answered 431, Host checked.

use http::StatusCode;

use super::*;
use crate::audit::Verdict;
use crate::proxy::http2::frame::{END_STREAM, HEADERS, PROTOCOL_ERROR, RST_STREAM};
use crate::proxy::http2::test_support::*;

fn with(fields: Vec<(&'static str, String)>, extra: &[(&'static str, &str)]) -> Vec<u8> {
    let mut all: Vec<(&str, &str)> = fields.iter().map(|(n, v)| (*n, v.as_str())).collect();
    all.extend_from_slice(extra);
    headers_frame_owned(&all)
}

fn headers_frame_owned(fields: &[(&str, &str)]) -> Vec<u8> {
    headers_frame(1, END_STREAM, fields)
}

#[tokio::test]
async fn header_lists_over_the_limits_get_431_and_the_connection_goes_on() {
    let mut s = setup(1 << 20, authorization(), None).await;
    // Digits take 5 bits in HPACK's Huffman code: the block stays under 64 KiB, its list does not.
    let mut big = request("GET", "https://api.test/echo");
    big.headers_mut()
        .insert("x-big", "0".repeat(70 * 1024).parse().unwrap());
    let mut many = request("GET", "https://api.test/echo");
    for i in 0..=MAX_FIELDS {
        many.headers_mut().insert(
            format!("x-field-{i}").parse::<http::HeaderName>().unwrap(),
            "1".parse().unwrap(),
        );
    }
    for (what, oversized) in [("big", big), ("many", many)] {
        let (response, _, _) = get(&mut s.client, oversized, None).await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "{what}"
        );
    }
    let (response, _, _) = get(&mut s.client, request("GET", "https://api.test/echo"), None)
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(s.seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn malformed_requests_are_reset_and_never_forwarded() {
    for (why, extra) in [
        ("upper-case name", vec![("Authorization", "Bearer x")]),
        ("connection-specific", vec![("connection", "close")]),
        ("transfer-encoding", vec![("transfer-encoding", "chunked")]),
        (
            "pseudo after regular",
            vec![("x-a", "1"), (":method", "POST")],
        ),
        ("CR in a value", vec![("x-a", "1\r\nauthorization: x")]),
    ] {
        let mut raw = Raw::start().await;
        raw.send(&with(get_fields("/echo"), &extra)).await;
        let (_, payload) = raw.until(RST_STREAM, 1).await;
        assert_eq!(
            u32::from_be_bytes(payload[..4].try_into().unwrap()),
            PROTOCOL_ERROR,
            "{why}"
        );
        assert!(raw.seen.lock().unwrap().is_empty(), "{why}");
        let records = records_settled(&raw.records, 1).await;
        assert_eq!(records[0].verdict, Verdict::Denied, "{why}");
    }
}

#[tokio::test]
async fn the_host_header_must_agree_with_the_authority() {
    let mut raw = Raw::start().await;
    raw.send(&with(get_fields("/echo"), &[("host", "evil.test")]))
        .await;
    let (_, block) = raw.until(HEADERS, 1).await;
    assert_eq!(status(&block), b"421");
    assert!(raw.seen.lock().unwrap().is_empty());
}
