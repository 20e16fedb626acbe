//! The client against a local HTTPS server (127.0.0.1 only), HTTP/1.1 and HTTP/2.

use std::net::SocketAddr;

use http::{HeaderMap, StatusCode};
use tokio::net::TcpListener;

use super::*;
use crate::secrets::exchange::Endpoint;
use crate::secrets::testing::https_server;

fn request(address: SocketAddr, path: &str) -> TokenRequest {
    let mut headers = HeaderMap::new();
    headers.insert(
        "content-type",
        HeaderValue::from_static("application/x-www-form-urlencoded"),
    );
    TokenRequest {
        endpoint: Endpoint::parse(&format!("https://{address}{path}")).unwrap(),
        headers,
        body: Zeroizing::new(b"grant_type=client_credentials".to_vec()),
        mask: Vec::new(),
    }
}

fn echoed(response: &TokenResponse) -> serde_json::Value {
    serde_json::from_slice(&response.body).unwrap()
}

#[tokio::test]
async fn posts_over_http2_when_the_endpoint_offers_it() {
    let server = https_server(&[b"h2", b"http/1.1"]).await;
    let response = post(&server.tls, &request(server.address, "/echo?x=1"))
        .await
        .unwrap();
    assert_eq!(response.status, StatusCode::CREATED);
    assert_eq!(response.headers["retry-after"], "3");
    let echo = echoed(&response);
    assert_eq!(echo["version"], "HTTP/2.0");
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["query"], "x=1");
    assert_eq!(echo["authority"], server.address.to_string());
    assert_eq!(echo["content_type"], "application/x-www-form-urlencoded");
    assert_eq!(echo["body"], "grant_type=client_credentials");
}

#[tokio::test]
async fn posts_over_http1_with_a_host_header() {
    let server = https_server(&[b"http/1.1"]).await;
    let response = post(&server.tls, &request(server.address, "/echo"))
        .await
        .unwrap();
    let echo = echoed(&response);
    assert_eq!(echo["version"], "HTTP/1.1");
    assert_eq!(echo["host"], server.address.to_string());
    assert_eq!(echo["body"], "grant_type=client_credentials");
    // A server without ALPN at all speaks HTTP/1.1 too.
    let plain = https_server(&[]).await;
    let response = post(&plain.tls, &request(plain.address, "/echo"))
        .await
        .unwrap();
    assert_eq!(echoed(&response)["version"], "HTTP/1.1");
}

#[tokio::test]
async fn bodies_are_capped_at_64_kib() {
    for alpn in [&[b"h2".as_slice()][..], &[b"http/1.1".as_slice()][..]] {
        let server = https_server(alpn).await;
        let exact = post(&server.tls, &request(server.address, "/exact"))
            .await
            .unwrap();
        assert_eq!(exact.body.len(), MAX_BODY);
        for path in ["/big", "/big-chunked"] {
            let error = post(&server.tls, &request(server.address, path))
                .await
                .unwrap_err();
            assert!(
                matches!(error, ClientError::TooLarge { .. }),
                "{path}: {error}"
            );
        }
    }
}

#[tokio::test]
async fn a_silent_endpoint_times_out() {
    let server = https_server(&[b"h2", b"http/1.1"]).await;
    let started = std::time::Instant::now();
    let error = post_within(
        &server.tls,
        &request(server.address, "/hang"),
        Duration::from_millis(300),
    )
    .await
    .unwrap_err();
    assert!(matches!(error, ClientError::Timeout { .. }), "{error}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn an_unverified_certificate_is_refused() {
    let server = https_server(&[b"h2"]).await;
    let other = https_server(&[]).await;
    // Trusting another server's certificate: this one's does not verify.
    let error = post(&other.tls, &request(server.address, "/echo"))
        .await
        .unwrap_err();
    assert!(matches!(error, ClientError::Tls { .. }), "{error}");
    assert!(error.to_string().contains("certificate"), "{error}");
}

#[tokio::test]
async fn a_closed_port_is_a_connect_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    let server = https_server(&[b"h2"]).await;
    let error = post(&server.tls, &request(address, "/echo"))
        .await
        .unwrap_err();
    assert!(matches!(error, ClientError::Connect { .. }), "{error}");
}
