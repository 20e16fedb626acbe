//! The client against a local HTTPS server (127.0.0.1 only), HTTP/1.1 and HTTP/2.

use std::convert::Infallible;
use std::net::SocketAddr;

use http::{HeaderMap, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::StreamBody;
use hyper::body::{Bytes, Frame};
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;

use super::*;
use crate::secrets::exchange::Endpoint;

struct Server {
    address: SocketAddr,
    /// Client settings that trust this server's certificate, offering h2 and http/1.1.
    tls: Arc<rustls::ClientConfig>,
}

type TestBody = BoxBody<Bytes, Infallible>;

async fn answer(request: Request<Incoming>) -> Result<Response<TestBody>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let full = |status: u16, bytes: Vec<u8>| {
        let mut response = Response::new(Full::new(Bytes::from(bytes)).boxed());
        *response.status_mut() = StatusCode::from_u16(status).unwrap();
        Ok(response)
    };
    match parts.uri.path() {
        "/echo" => {
            let header = |name| {
                parts
                    .headers
                    .get(name)
                    .map(|v: &HeaderValue| v.to_str().unwrap().to_owned())
            };
            let echo = serde_json::json!({
                "method": parts.method.as_str(),
                "path": parts.uri.path(),
                "query": parts.uri.query(),
                "version": format!("{:?}", parts.version),
                "host": header("host"),
                "authority": parts.uri.authority().map(|a| a.to_string()),
                "content_type": header("content-type"),
                "body": String::from_utf8_lossy(&body),
            });
            let mut response = full(201, echo.to_string().into_bytes())?;
            response
                .headers_mut()
                .insert("retry-after", HeaderValue::from_static("3"));
            Ok(response)
        }
        "/exact" => full(200, vec![b'x'; MAX_BODY]),
        "/big" => full(200, vec![b'x'; MAX_BODY + 1]),
        "/big-chunked" => {
            // No length announced: the cap must hold while reading.
            let chunks =
                (0..70).map(|_| Ok::<_, Infallible>(Frame::data(Bytes::from(vec![b'y'; 1024]))));
            Ok(Response::new(BoxBody::new(StreamBody::new(
                futures::stream::iter(chunks),
            ))))
        }
        "/hang" => std::future::pending().await,
        _ => full(404, Vec::new()),
    }
}

async fn server(alpn: &[&[u8]]) -> Server {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        )
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), hyper::service::service_fn(answer))
                    .await;
            });
        }
    });
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(cert.der().to_vec()))
        .unwrap();
    let mut client = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Server {
        address,
        tls: Arc::new(client),
    }
}

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
    let server = server(&[b"h2", b"http/1.1"]).await;
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
    let server = server(&[b"http/1.1"]).await;
    let response = post(&server.tls, &request(server.address, "/echo"))
        .await
        .unwrap();
    let echo = echoed(&response);
    assert_eq!(echo["version"], "HTTP/1.1");
    assert_eq!(echo["host"], server.address.to_string());
    assert_eq!(echo["body"], "grant_type=client_credentials");
    // A server without ALPN at all speaks HTTP/1.1 too.
    let plain = server_without_alpn().await;
    let response = post(&plain.tls, &request(plain.address, "/echo"))
        .await
        .unwrap();
    assert_eq!(echoed(&response)["version"], "HTTP/1.1");
}

async fn server_without_alpn() -> Server {
    server(&[]).await
}

#[tokio::test]
async fn bodies_are_capped_at_64_kib() {
    for alpn in [&[b"h2".as_slice()][..], &[b"http/1.1".as_slice()][..]] {
        let server = server(alpn).await;
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
    let server = server(&[b"h2", b"http/1.1"]).await;
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
    let server = server(&[b"h2"]).await;
    let other = server_without_alpn().await;
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
    let server = server(&[b"h2"]).await;
    let error = post(&server.tls, &request(address, "/echo"))
        .await
        .unwrap_err();
    assert!(matches!(error, ClientError::Connect { .. }), "{error}");
}
