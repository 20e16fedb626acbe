//! Test fixtures the secrets tests share: RFC 7515 Appendix A.2's RSA key (its JWK members, and the
//! PKCS#1 and PKCS#8 DER and PEM built from them here, so that no key file is committed) and its JWS; a
//! local HTTPS server (127.0.0.1, a certificate made at run time) playing a token endpoint; a token
//! endpoint's answer as the providers read it (`token_response`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use http::header::HeaderValue;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;

use crate::secrets::client::MAX_BODY;
use crate::secrets::exchange::TokenResponse;

/// RFC 7515 Appendix A.2: the RSA key as a JWK (its members in base64url) and the JWS it signs.
pub const N: &str = "ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ";
pub const E: &str = "AQAB";
pub const D: &str = "Eq5xpGnNCivDflJsRQBXHx1hdR1k6Ulwe2JZD50LpXyWPEAeP88vLNO97IjlA7_GQ5sLKMgvfTeXZx9SE-7YwVol2NXOoAJe46sui395IW_GO-pWJ1O0BkTGoVEn2bKVRUCgu-GjBVaYLU6f3l9kJfFNS3E0QbVdxzubSu3Mkqzjkn439X0M_V51gfpRLI9JYanrC4D4qAdGcopV_0ZHHzQlBjudU2QvXt4ehNYTCBr6XCLQUShb1juUO1ZdiYoFaFQT5Tw8bGUl_x_jTj3ccPDVZFD9pIuhLhBOneufuBiB4cS98l2SR_RQyGWSeWjnczT0QU91p1DhOVRuOopznQ";
pub const P: &str = "4BzEEOtIpmVdVEZNCqS7baC4crd0pqnRH_5IB3jw3bcxGn6QLvnEtfdUdiYrqBdss1l58BQ3KhooKeQTa9AB0Hw_Py5PJdTJNPY8cQn7ouZ2KKDcmnPGBY5t7yLc1QlQ5xHdwW1VhvKn-nXqhJTBgIPgtldC-KDV5z-y2XDwGUc";
pub const Q: &str = "uQPEfgmVtjL0Uyyx88GZFF1fOunH3-7cepKmtH4pxhtCoHqpWmT8YAmZxaewHgHAjLYsp1ZSe7zFYHj7C6ul7TjeLQeZD_YwD66t62wDmpe_HlB-TnBA-njbglfIsRLtXlnDzQkv5dTltRJ11BKBBypeeF6689rjcJIDEz9RWdc";
pub const DP: &str = "BwKfV3Akq5_MFZDFZCnW-wzl-CCo83WoZvnLQwCTeDv8uzluRSnm71I3QCLdhrqE2e9YkxvuxdBfpT_PI7Yz-FOKnu1R6HsJeDCjn12Sk3vmAktV2zb34MCdy7cpdTh_YVr7tss2u6vneTwrA86rZtu5Mbr1C1XsmvkxHQAdYo0";
pub const DQ: &str = "h_96-mK1R_7glhsum81dZxjTnYynPbZpHziZjeeHcXYsXaaMwkOlODsWa7I9xXDoRwbKgB719rrmI2oKr6N3Do9U0ajaHF-NKJnwgjMd2w9cjz3_-kyNlxAr2v4IKhGNpmM5iIgOS1VZnOZ68m6_pbLBSp3nssTdlqvd0tIiTHU";
pub const QI: &str = "IYd7DHOhrWvxkwPQsRM2tOgrjbcrfvtQJipd-DlcxyVuuM9sQLdgjVk2oy26F0EmpScGLq2MowX7fhd_QJQ3ydy5cY7YIBi87w93IKLEdfnbJtoOPLUW0ITrJReOgo1cq9SbsxYawBgfp_gh6A5603k2-ZQwVK0JKSHuLFkuQ3U";
pub const A2_HEADER: &[u8] = br#"{"alg":"RS256"}"#;
pub const A2_PAYLOAD: &[u8] =
    b"{\"iss\":\"joe\",\r\n \"exp\":1300819380,\r\n \"http://example.com/is_root\":true}";
pub const A2_JWS: &str = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QOYEUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrBp0igcN_IoypGlUPQGe77Rw";

pub fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    match content.len() {
        n if n < 0x80 => out.push(n as u8),
        n if n < 0x100 => out.extend([0x81, n as u8]),
        n => out.extend([0x82, (n >> 8) as u8, n as u8]),
    }
    out.extend_from_slice(content);
    out
}

/// A DER INTEGER of an unsigned big-endian number: a leading zero byte keeps a high bit from making it
/// negative.
pub fn integer(base64url: &str) -> Vec<u8> {
    let mut bytes = URL_SAFE_NO_PAD.decode(base64url).unwrap();
    if bytes[0] & 0x80 != 0 {
        bytes.insert(0, 0);
    }
    der(0x02, &bytes)
}

/// RFC 8017 A.1.2 RSAPrivateKey, built from the JWK members.
pub fn pkcs1() -> Vec<u8> {
    let mut body = der(0x02, &[0]);
    for member in [N, E, D, P, Q, DP, DQ, QI] {
        body.extend(integer(member));
    }
    der(0x30, &body)
}

/// RFC 5208 PrivateKeyInfo around the PKCS#1 key: version 0, rsaEncryption with NULL parameters.
pub fn pkcs8() -> Vec<u8> {
    let rsa_encryption = [
        0x06, 9, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
    ];
    let mut algorithm = rsa_encryption.to_vec();
    algorithm.extend([0x05, 0x00]);
    let mut body = der(0x02, &[0]);
    body.extend(der(0x30, &algorithm));
    body.extend(der(0x04, &pkcs1()));
    der(0x30, &body)
}

pub fn pem(label: &str, der: &[u8]) -> String {
    let text = STANDARD.encode(der);
    let lines: Vec<&str> = text
        .as_bytes()
        .chunks(64)
        .map(|line| std::str::from_utf8(line).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// The RFC 7515 A.2 key as a PKCS#1 PEM.
pub fn rsa_pem() -> String {
    pem("RSA PRIVATE KEY", &pkcs1())
}

/// The public key (PKCS#1 RSAPublicKey DER), to verify signatures with.
pub fn rsa_public_der() -> Vec<u8> {
    der(0x30, &[integer(N), integer(E)].concat())
}

pub struct Server {
    pub address: SocketAddr,
    /// Client settings that trust this server's certificate, offering h2 and http/1.1.
    pub tls: Arc<rustls::ClientConfig>,
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
        // A token endpoint: client credentials with basic auth.
        "/token" => {
            let basic = parts
                .headers
                .get("authorization")
                .is_some_and(|v| v.as_bytes().starts_with(b"Basic "));
            if basic && body.starts_with(b"grant_type=client_credentials") {
                full(
                    200,
                    br#"{"access_token":"at-local","expires_in":60}"#.to_vec(),
                )
            } else {
                full(401, br#"{"error":"invalid_client"}"#.to_vec())
            }
        }
        // GitHub's installation token endpoint.
        "/app/installations/7/access_tokens" => {
            let expires_at = humantime::format_rfc3339_seconds(
                std::time::SystemTime::now() + std::time::Duration::from_secs(3600),
            );
            let created =
                serde_json::json!({"token": "ghs_local", "expires_at": expires_at.to_string()});
            full(201, created.to_string().into_bytes())
        }
        _ => full(404, Vec::new()),
    }
}

pub async fn https_server(alpn: &[&[u8]]) -> Server {
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

/// A token endpoint's answer: `status`, `headers` (name, value) and `body`.
pub fn token_response(status: u16, headers: &[(&str, &str)], body: &str) -> TokenResponse {
    let mut map = http::HeaderMap::new();
    for (name, value) in headers {
        map.insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    TokenResponse {
        status: StatusCode::from_u16(status).unwrap(),
        headers: map,
        body: zeroize::Zeroizing::new(body.as_bytes().to_vec()),
    }
}
