use aws_lc_rs::signature::{UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use super::*;
use crate::secrets::testing::token_response as answer;
use crate::secrets::testing::{rsa_pem, rsa_public_der};

const NOW: u64 = 1_700_000_000;

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW)
}

fn app(repositories: &[&str], permissions: &[(&str, &str)]) -> GithubApp {
    GithubApp {
        endpoint: Endpoint::parse("https://api.github.com")
            .unwrap()
            .join("/app/installations/7890123/access_tokens")
            .unwrap(),
        app_id: "123456".into(),
        private_key: SecretValue::new(rsa_pem()),
        repositories: repositories.iter().map(|r| r.to_string()).collect(),
        permissions: permissions
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

#[test]
fn the_request_carries_a_verifiable_jwt_and_githubs_headers() {
    let request = request(&app(&[], &[]), now()).unwrap();
    assert_eq!(
        request.endpoint.to_string(),
        "https://api.github.com/app/installations/7890123/access_tokens"
    );
    let header = |name: &str| request.headers.get(name).unwrap().to_str().unwrap();
    assert_eq!(header("accept"), "application/vnd.github+json");
    assert_eq!(header("x-github-api-version"), "2022-11-28");
    assert!(header("user-agent").starts_with("sandbox/"));
    assert!(request.headers["authorization"].is_sensitive());
    assert!(request.headers.get("content-type").is_none());
    assert!(request.body.is_empty());
    let jwt = header("authorization").strip_prefix("Bearer ").unwrap();
    assert_eq!(request.mask[0].as_str(), jwt);
    let parts: Vec<&str> = jwt.split('.').collect();
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(
        claims,
        serde_json::json!({"iat": NOW - 60, "exp": NOW + 540, "iss": "123456"})
    );
    let signed = format!("{}.{}", parts[0], parts[1]);
    UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, rsa_public_der())
        .verify(
            signed.as_bytes(),
            &URL_SAFE_NO_PAD.decode(parts[2]).unwrap(),
        )
        .unwrap();
}

#[test]
fn repositories_and_permissions_narrow_the_token_in_the_body() {
    let request = request(
        &app(
            &["repo", "other"],
            &[("contents", "read"), ("pull_requests", "write")],
        ),
        now(),
    )
    .unwrap();
    assert_eq!(request.headers["content-type"], "application/json");
    let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({
            "repositories": ["repo", "other"],
            "permissions": {"contents": "read", "pull_requests": "write"},
        })
    );
    let only_permissions = request_body(&app(&[], &[("issues", "read")]));
    assert_eq!(
        only_permissions,
        serde_json::json!({"permissions": {"issues": "read"}})
    );
}

fn request_body(app: &GithubApp) -> serde_json::Value {
    serde_json::from_slice(&request(app, now()).unwrap().body).unwrap()
}

fn failure(status: u16, headers: &[(&str, &str)], body: &str) -> Failure {
    response(&answer(status, headers, body), now(), &[]).unwrap_err()
}

#[test]
fn a_201_with_token_and_expiry_is_a_token_of_any_length() {
    let token = format!("ghs_{}", "a".repeat(516));
    // 2023-11-14T22:13:20Z is NOW; an hour later:
    let body =
        format!(r#"{{"token":"{token}","expires_at":"2023-11-14T23:13:20Z","permissions":{{}}}}"#);
    let minted = response(&answer(201, &[], &body), now(), &[]).unwrap();
    assert_eq!(minted.value.expose(), token);
    assert_eq!(minted.lifetime, Duration::from_secs(3600));
    assert_eq!(minted.status, 201);
    assert!(minted.refresh_token.is_none());
    let odd = r#"{"token":"v1.0123456789abcdef","expires_at":"2023-11-15T00:13:20+01:00"}"#;
    let minted = response(&answer(201, &[], odd), now(), &[]).unwrap();
    assert_eq!(minted.value.expose(), "v1.0123456789abcdef");
    assert_eq!(minted.lifetime, Duration::from_secs(3600));
}

#[test]
fn only_201_is_success_and_a_success_without_a_usable_token_is_transient() {
    let good = r#"{"token":"ghs_x","expires_at":"2023-11-14T23:13:20Z"}"#;
    for (status, body, says) in [
        (
            200,
            good,
            "HTTP 200, but GitHub answers a new token with 201",
        ),
        (201, "{}", "HTTP 201 with no token"),
        (
            201,
            "<html>hi</html>",
            "HTTP 201 with a 15 byte body that is not a token",
        ),
        (
            201,
            r#"{"token":"ghs_x"}"#,
            "HTTP 201 with a token but no expires_at",
        ),
        (
            201,
            r#"{"token":"ghs_x","expires_at":"tomorrow"}"#,
            "HTTP 201 with expires_at \"tomorrow\", which is not an RFC 3339 date",
        ),
        (
            201,
            r#"{"token":"ghs_x","expires_at":"2023-11-14T22:13:20Z"}"#,
            "HTTP 201 with a token that expired before it arrived",
        ),
        (
            201,
            r#"{"token":"","expires_at":"2023-11-14T23:13:20Z"}"#,
            "HTTP 201 with an empty token",
        ),
        (
            201,
            r#"{"token":7,"expires_at":"2023-11-14T23:13:20Z"}"#,
            "that is not a token",
        ),
    ] {
        let failure = failure(status, &[], body);
        assert_eq!(failure.kind, FailureKind::Transient, "{body}");
        assert!(failure.message.contains(says), "{}", failure.message);
        assert!(!failure.message.contains("ghs_x"), "{}", failure.message);
    }
}

#[test]
fn refusals_are_permanent_with_githubs_message_and_rate_limits_are_transient() {
    let bad = failure(
        401,
        &[],
        r#"{"message":"'Expiration time' claim ('exp') is too far in the future","documentation_url":"https://docs.github.com"}"#,
    );
    assert_eq!(bad.kind, FailureKind::Permanent);
    assert_eq!(bad.status, Some(401));
    assert_eq!(
        bad.message,
        "HTTP 401: 'Expiration time' claim ('exp') is too far in the future"
    );
    assert_eq!(failure(404, &[], "{}").kind, FailureKind::Permanent);
    assert_eq!(
        failure(403, &[], r#"{"message":"no"}"#).kind,
        FailureKind::Permanent
    );
    let secondary = failure(403, &[("retry-after", "60")], "{}");
    assert_eq!(
        (secondary.kind, secondary.retry_after),
        (FailureKind::Transient, Some(Duration::from_secs(60)))
    );
    let primary = failure(
        403,
        &[
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", &(NOW + 90).to_string()),
        ],
        "{}",
    );
    assert_eq!(
        (primary.kind, primary.retry_after),
        (FailureKind::Transient, Some(Duration::from_secs(90)))
    );
    let absurd = failure(
        403,
        &[
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "18446744073709551615"),
        ],
        "{}",
    );
    assert_eq!(
        (absurd.kind, absurd.retry_after),
        (FailureKind::Transient, None)
    );
    let down = failure(502, &[], "<html>bad gateway</html>");
    assert_eq!(
        (down.kind, down.message.as_str()),
        (FailureKind::Transient, "HTTP 502")
    );
}

#[test]
fn the_jwt_is_masked_should_github_echo_it() {
    let request = request(&app(&[], &[]), now()).unwrap();
    let jwt = request.mask[0].as_str().to_owned();
    let body = format!(r#"{{"message":"bad token {jwt}"}}"#);
    let failure = response(&answer(401, &[], &body), now(), &request.mask).unwrap_err();
    assert_eq!(failure.message, "HTTP 401: bad token ***");
}

#[test]
fn a_key_that_is_not_rsa_fails_the_request_not_the_daemon() {
    let mut app = app(&[], &[]);
    app.private_key = SecretValue::new("not a key".into());
    assert!(matches!(
        request(&app, now()),
        Err(JwtError::Key(crate::secrets::jwt::KeyError::NoKey))
    ));
}

/// Found by the token_response fuzz target: an `expires_at` that is not a date went into the failure
/// (which is logged) as written, with the token if the endpoint had put it there.
#[test]
fn an_expires_at_that_is_no_date_is_logged_without_the_token() {
    let token = "ghs_0123456789abcdefABCDEF";
    let body = format!(r#"{{"token":"{token}","expires_at":"soon, says {token}"}}"#);
    let failure = failure(201, &[], &body);
    assert!(
        failure.message.contains("soon, says ***"),
        "{}",
        failure.message
    );
    assert!(!failure.message.contains(token), "{}", failure.message);
}
