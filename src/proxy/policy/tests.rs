use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;

use super::*;

fn get(authority: Option<&'static str>) -> Head<'static> {
    Head {
        method: b"GET",
        authority: authority.map(str::as_bytes),
        tunnel: false,
        h2c: false,
        too_large: false,
    }
}

/// The status of the refusal of `head` with these Host headers, on a connection for api.test:443.
fn refused(head: &Head<'_>, hosts: &[&'static str]) -> Option<u16> {
    head.refusal(hosts.iter().map(|h| h.as_bytes()), "api.test", 443)
        .map(|refusal| refusal.status)
}

#[test]
fn every_name_a_request_gives_must_be_the_sni() {
    assert_eq!(refused(&get(Some("api.test")), &[]), None);
    assert_eq!(
        refused(&get(None), &["api.test:443"]),
        None,
        "HTTP/1.1 names the host only in Host"
    );
    assert_eq!(refused(&get(Some("api.test")), &["api.test"]), None);
    assert_eq!(
        refused(&get(Some("api.test")), &["evil.test"]),
        Some(421),
        ":authority is the SNI, Host is not"
    );
    assert_eq!(refused(&get(None), &["api.test", "evil.test"]), Some(421));
    assert_eq!(refused(&get(Some("evil.test")), &["api.test"]), Some(421));
    let refusal = get(Some("evil.test")).refusal(std::iter::empty(), "api.test", 443);
    assert!(refusal.unwrap().message.contains("\"evil.test\""));
}

#[test]
fn a_request_without_a_host_or_with_a_host_not_text_is_bad() {
    assert_eq!(refused(&get(None), &[]), Some(400));
    let not_text: &[u8] = b"api.test\xff";
    let refusal = get(None).refusal([not_text].into_iter(), "api.test", 443);
    assert_eq!(refusal.map(|r| r.status), Some(400));
}

#[test]
fn methods_that_could_reflect_the_secret_and_tunnels_get_405() {
    for method in [&b"TRACE"[..], b"CONNECT"] {
        let head = Head {
            method,
            ..get(Some("api.test"))
        };
        assert_eq!(refused(&head, &[]), Some(405));
    }
    let tunnel = Head {
        tunnel: true,
        ..get(Some("api.test"))
    };
    assert_eq!(refused(&tunnel, &[]), Some(405));
}

#[test]
fn h2c_and_heads_over_the_limit_are_refused() {
    let h2c = Head {
        h2c: true,
        ..get(Some("api.test"))
    };
    assert_eq!(refused(&h2c, &[]), Some(400));
    let large = Head {
        too_large: true,
        ..get(Some("evil.test"))
    };
    assert_eq!(refused(&large, &[]), Some(431), "size is checked first");
}

#[test]
fn the_host_for_the_audit_is_the_authority_else_the_first_host() {
    assert_eq!(
        get(Some("API.test"))
            .host([&b"x"[..]].into_iter())
            .as_deref(),
        Some("api.test")
    );
    assert_eq!(
        get(None)
            .host([&b"Api.Test:443"[..]].into_iter())
            .as_deref(),
        Some("api.test:443")
    );
    assert_eq!(get(None).host(std::iter::empty()), None);
}

#[test]
fn host_must_name_the_sni_on_this_port() {
    assert!(host_matches("api.example.com", "api.example.com", 443));
    assert!(host_matches("API.example.com.", "api.example.com", 443));
    assert!(host_matches("api.example.com:443", "api.example.com", 443));
    assert!(host_matches(
        "api.example.com:8443",
        "api.example.com",
        8443
    ));
    assert!(!host_matches(
        "api.example.com:8443",
        "api.example.com",
        443
    ));
    assert!(!host_matches("evil.example.com", "api.example.com", 443));
    assert!(!host_matches(
        "api.example.com.evil.com",
        "api.example.com",
        443
    ));
    assert!(!host_matches("api.example.com:x", "api.example.com", 443));
    assert!(!host_matches("[::1]:443", "api.example.com", 443));
}

#[test]
fn secrets_go_into_headers_as_their_bytes_in_place_of_the_clients() {
    let config = crate::config::Config::parse(
        r#"
[secrets]
k = { env = "UNUSED" }
[[integration]]
name = "api"
hosts = ["api.test"]
headers = { Authorization = "Bearer ${secret:k}", X-Key = "${secret:k}" }
[[integration]]
name = "basic"
hosts = ["basic.test"]
basic_auth = { username = "u", password = "${secret:k}" }
"#,
        std::path::Path::new("test.toml"),
    )
    .unwrap();
    let secrets = Secrets::of(&[("k", "sk-ünï")]);
    let mut headers = HeaderMap::new();
    headers.append(header::AUTHORIZATION, HeaderValue::from_static("mine"));
    headers.append(header::AUTHORIZATION, HeaderValue::from_static("mine too"));
    inject(&mut headers, &config.integrations[0], &secrets).unwrap();
    let authorization: Vec<&[u8]> = headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    assert_eq!(authorization, ["Bearer sk-ünï".as_bytes()]);
    assert_eq!(headers["x-key"].as_bytes(), "sk-ünï".as_bytes());
    assert!(headers["x-key"].is_sensitive());

    let mut headers = HeaderMap::new();
    inject(&mut headers, &config.integrations[1], &secrets).unwrap();
    let expected = format!("Basic {}", BASE64.encode("u:sk-ünï"));
    assert_eq!(headers[header::AUTHORIZATION], expected.as_str());

    let none = Secrets::of(&[]);
    assert_eq!(
        inject(&mut HeaderMap::new(), &config.integrations[0], &none).unwrap_err(),
        "secret \"k\" is not loaded"
    );
}

#[test]
fn only_the_idempotent_methods_may_go_twice() {
    for method in ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"] {
        assert!(is_idempotent(method.as_bytes()), "{method}");
    }
    for method in ["POST", "PATCH", "CONNECT", "get", "PROPFIND", ""] {
        assert!(!is_idempotent(method.as_bytes()), "{method}");
    }
}

fn aws_config() -> crate::config::Config {
    crate::config::Config::parse(
        r#"
[secrets]
aws = { env = "UNUSED" }
token = { env = "UNUSED_TOO" }
[[integration]]
name = "s3"
hosts = ["s3.us-west-2.amazonaws.com"]
aws_sigv4 = { access_key_id = "AKIDREAL", secret_access_key = "aws", session_token = "token" }
"#,
        std::path::Path::new("test.toml"),
    )
    .unwrap()
}

/// The client's headers as the aws CLI sends them, signed with its dummy key.
fn client_headers(content_sha256: &'static str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::AUTHORIZATION,
        HeaderValue::from_static(
            "AWS4-HMAC-SHA256 Credential=sandbox/20260101/us-west-2/s3/aws4_request, \
             SignedHeaders=host;x-amz-date, Signature=0000",
        ),
    );
    headers.insert("x-amz-date", HeaderValue::from_static("20260101T000000Z"));
    headers.insert("x-amz-security-token", HeaderValue::from_static("client's"));
    headers.insert(
        "x-amz-content-sha256",
        HeaderValue::from_static(content_sha256),
    );
    headers.insert("x-amz-meta-note", HeaderValue::from_static("kept"));
    headers
}

#[test]
fn an_aws_request_is_signed_with_the_real_key_in_place_of_the_clients() {
    let config = aws_config();
    let aws = config.integrations[0].aws_sigv4.as_ref().unwrap();
    let secrets = Secrets::of(&[("aws", "real/secret+key"), ("token", "real-token")]);
    let values = Values {
        integration: &config.integrations[0],
        secrets: &secrets,
        tokens: &[],
    };
    let mut headers = client_headers("UNSIGNED-PAYLOAD");
    let authority = "s3.us-west-2.amazonaws.com";
    let signer = AwsSigner::new(aws, &values, b"/bucket/key", &headers, authority).unwrap();
    assert_eq!(signer.payload(), Some(&sigv4::PayloadHash::Unsigned));
    let payload = signer.payload().unwrap().clone();
    signer
        .sign(b"PUT", b"/bucket/key", authority, &payload, &mut headers)
        .unwrap();
    let authorization = headers[header::AUTHORIZATION].to_str().unwrap();
    assert!(
        authorization.starts_with("AWS4-HMAC-SHA256 Credential=AKIDREAL/"),
        "{authorization}"
    );
    assert!(
        authorization.contains("/us-west-2/s3/aws4_request"),
        "the scope the client named"
    );
    assert_eq!(headers.get_all(header::AUTHORIZATION).iter().count(), 1);
    assert_eq!(headers["x-amz-security-token"], "real-token");
    assert!(headers["x-amz-security-token"].is_sensitive());
    assert_ne!(headers["x-amz-date"], "20260101T000000Z");
    assert_eq!(headers["x-amz-content-sha256"], "UNSIGNED-PAYLOAD");
    assert_eq!(headers["x-amz-meta-note"], "kept");
    let everything = format!("{headers:?}");
    assert!(!everything.contains("real/secret+key"));
}

#[test]
fn what_cannot_be_signed_is_refused_before_the_body_is_read() {
    let config = aws_config();
    let aws = config.integrations[0].aws_sigv4.as_ref().unwrap();
    let secrets = Secrets::of(&[("aws", "real/secret+key"), ("token", "real-token")]);
    let authority = "s3.us-west-2.amazonaws.com";
    let refusal = |target: &[u8], headers: &HeaderMap, secrets: &Secrets| {
        let values = Values {
            integration: &config.integrations[0],
            secrets,
            tokens: &[],
        };
        AwsSigner::new(aws, &values, target, headers, authority)
            .err()
            .unwrap()
    };
    let unsigned = client_headers("UNSIGNED-PAYLOAD");
    let presigned = refusal(b"/b/k?X-Amz-Signature=abc", &unsigned, &secrets);
    assert_eq!(presigned.status, 400);
    assert!(presigned.message.contains("presigned URL"));
    let chunked = client_headers("STREAMING-AWS4-HMAC-SHA256-PAYLOAD");
    let chunk_signed = refusal(b"/b/k", &chunked, &secrets);
    assert_eq!(chunk_signed.status, 400);
    assert!(chunk_signed.message.contains("chunk-signed upload"));
    let no_token = Secrets::of(&[("aws", "real/secret+key")]);
    let missing = refusal(b"/b/k", &unsigned, &no_token);
    assert_eq!(
        (missing.status, missing.message.as_str()),
        (
            500,
            "sandbox: secret \"token\" is not loaded; see the daemon's log"
        )
    );
    let hashed = client_headers("UNSIGNED-PAYLOAD");
    let mut no_content_sha256 = hashed.clone();
    no_content_sha256.remove("x-amz-content-sha256");
    let values = Values {
        integration: &config.integrations[0],
        secrets: &secrets,
        tokens: &[],
    };
    let signer = AwsSigner::new(aws, &values, b"/", &no_content_sha256, authority).unwrap();
    assert_eq!(signer.payload(), None, "the body is to be hashed");
}

/// A minted secret signs with its current token, as a template renders it.
#[test]
fn a_minted_secret_access_key_signs_with_its_current_token() {
    let config = crate::config::Config::parse(
        r#"
[secrets.aws.oauth2]
token_url = "https://login.example/t"
client_id = "c"
[[integration]]
name = "s3"
hosts = ["s3.us-west-2.amazonaws.com"]
aws_sigv4 = { access_key_id = "AKIDREAL", secret_access_key = "aws" }
"#,
        std::path::Path::new("test.toml"),
    )
    .unwrap();
    let integration = &config.integrations[0];
    let aws = integration.aws_sigv4.as_ref().unwrap();
    let signed_with = |key: &str| {
        let tokens = [Arc::new(SecretValue::new(key.to_string()))];
        let values = Values {
            integration,
            secrets: &Secrets::of(&[]),
            tokens: &tokens,
        };
        let mut headers = client_headers("UNSIGNED-PAYLOAD");
        headers.remove("x-amz-security-token");
        let authority = "s3.us-west-2.amazonaws.com";
        let signer = AwsSigner::new(aws, &values, b"/b/k", &headers, authority).unwrap();
        let payload = signer.payload().unwrap().clone();
        signer
            .sign(b"GET", b"/b/k", authority, &payload, &mut headers)
            .unwrap();
        headers[header::AUTHORIZATION].to_str().unwrap().to_string()
    };
    let (first, second) = (signed_with("minted/key/one"), signed_with("minted/key/two"));
    assert!(
        first.starts_with("AWS4-HMAC-SHA256 Credential=AKIDREAL/"),
        "{first}"
    );
    // Same request, same second (the date is in the scope and x-amz-date): another key, another signature.
    assert_ne!(
        first.rsplit_once("Signature=").map(|(_, s)| s),
        second.rsplit_once("Signature=").map(|(_, s)| s)
    );
}
