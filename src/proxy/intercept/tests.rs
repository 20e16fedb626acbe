use super::*;

#[test]
fn a_request_that_ends_its_connection_is_told_apart() {
    let with = |value: &str| {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_str(value).unwrap());
        headers
    };
    let none = HeaderMap::new();
    assert!(!wants_close(Version::HTTP_11, &none));
    assert!(wants_close(Version::HTTP_11, &with("close")));
    assert!(wants_close(Version::HTTP_11, &with("TE, Close")));
    assert!(!wants_close(Version::HTTP_11, &with("closed")));
    assert!(wants_close(Version::HTTP_10, &none));
    assert!(!wants_close(Version::HTTP_10, &with("Keep-Alive")));
    assert!(!wants_close(Version::HTTP_2, &with("close")));
}

#[test]
fn a_header_list_counts_as_http2_counts_it() {
    let request = Request::builder()
        .uri("https://api.test/x?y")
        .header("ab", "cde")
        .header("ab", "f")
        .body(())
        .unwrap();
    // :method GET, :path /x?y, :authority api.test, :scheme; ab: cde; ab: f.
    assert_eq!(
        header_list_size(&request),
        3 + 4 + 8 + 4 * 32 + (5 + 32) + (3 + 32)
    );
}

#[test]
fn hop_by_hop_headers_do_not_cross() {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONNECTION,
        HeaderValue::from_static("keep-alive, x-private"),
    );
    headers.insert("x-private", HeaderValue::from_static("1"));
    headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
    headers.insert(
        header::TRANSFER_ENCODING,
        HeaderValue::from_static("chunked"),
    );
    headers.insert("x-kept", HeaderValue::from_static("1"));
    headers.insert(header::TE, HeaderValue::from_static("gzip"));
    strip_hop_by_hop(&mut headers, false);
    assert_eq!(headers.len(), 1);
    assert!(headers.contains_key("x-kept"));

    let mut headers = HeaderMap::new();
    headers.insert(header::CONNECTION, HeaderValue::from_static("TE"));
    headers.insert(header::TE, HeaderValue::from_static("gzip;q=0.5, Trailers"));
    strip_hop_by_hop(&mut headers, false);
    assert_eq!(headers.len(), 1);
    assert_eq!(headers[header::TE], "trailers");
}

#[test]
fn upgrade_survives_when_tunnelling() {
    let mut headers = HeaderMap::new();
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    assert!(is_upgrade(&headers));
    strip_hop_by_hop(&mut headers, true);
    assert_eq!(headers.get(header::UPGRADE).unwrap(), "websocket");
}
