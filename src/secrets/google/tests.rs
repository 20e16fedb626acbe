use aws_lc_rs::signature::{UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::StatusCode;

use super::*;
use crate::secrets::testing::{rsa_pem, rsa_public_der};

const NOW: u64 = 1_700_000_000;

fn key_file(token_uri: Option<&str>) -> String {
    let mut file = serde_json::json!({
        "type": "service_account",
        "project_id": "p",
        "private_key_id": "kid-9",
        "private_key": rsa_pem(),
        "client_email": "robot@p.iam.gserviceaccount.com",
        "client_id": "1",
    });
    if let Some(uri) = token_uri {
        file["token_uri"] = uri.into();
    }
    file.to_string()
}

fn account() -> GoogleServiceAccount {
    let json = key_file(Some("https://oauth2.test/token"));
    let parsed = parse_key_file(&json).unwrap();
    GoogleServiceAccount {
        endpoint: parsed.endpoint,
        client_email: parsed.client_email,
        key_id: parsed.key_id,
        key_file: SecretValue::new(json),
        scopes: vec![
            "https://www.googleapis.com/auth/cloud-platform".into(),
            "openid".into(),
        ],
    }
}

#[test]
fn the_request_is_a_jwt_bearer_grant_with_a_verifiable_assertion() {
    let request = request(&account(), UNIX_EPOCH + Duration::from_secs(NOW)).unwrap();
    assert_eq!(request.endpoint.to_string(), "https://oauth2.test/token");
    assert_eq!(
        request.headers["content-type"],
        "application/x-www-form-urlencoded"
    );
    let body = std::str::from_utf8(&request.body).unwrap();
    let assertion = body
        .strip_prefix("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=")
        .unwrap();
    assert_eq!(request.mask[0].as_str(), assertion);
    let parts: Vec<&str> = assertion.split('.').collect();
    assert_eq!(
        URL_SAFE_NO_PAD.decode(parts[0]).unwrap(),
        br#"{"alg":"RS256","typ":"JWT","kid":"kid-9"}"#
    );
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(
        claims,
        serde_json::json!({
            "iss": "robot@p.iam.gserviceaccount.com",
            "scope": "https://www.googleapis.com/auth/cloud-platform openid",
            "aud": "https://oauth2.test/token",
            "iat": NOW - 60,
            "exp": NOW + 540,
        })
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
fn key_files_need_an_email_and_an_rsa_key() {
    let parsed = parse_key_file(&key_file(None)).unwrap();
    assert_eq!(parsed.endpoint.to_string(), DEFAULT_TOKEN_URI);
    assert_eq!(parsed.key_id.as_deref(), Some("kid-9"));
    let without = |field: &str| {
        let mut file: serde_json::Value = serde_json::from_str(&key_file(None)).unwrap();
        file.as_object_mut().unwrap().remove(field);
        parse_key_file(&file.to_string()).err()
    };
    assert_eq!(without("client_email"), Some(KeyFileError::NoClientEmail));
    assert_eq!(without("private_key"), Some(KeyFileError::NoPrivateKey));
    assert!(without("type").is_none());
    assert!(without("private_key_id").is_none());
    let with = |field: &str, value: &str| {
        let mut file: serde_json::Value = serde_json::from_str(&key_file(None)).unwrap();
        file[field] = value.into();
        parse_key_file(&file.to_string()).err()
    };
    assert_eq!(
        with("type", "authorized_user"),
        Some(KeyFileError::NotServiceAccount("authorized_user".into()))
    );
    assert_eq!(
        with(
            "private_key",
            "-----BEGIN EC PRIVATE KEY-----\nMAA=\n-----END EC PRIVATE KEY-----\n"
        ),
        Some(KeyFileError::Key(KeyError::Ec))
    );
    assert!(matches!(
        with("token_uri", "http://oauth2.test/token"),
        Some(KeyFileError::TokenUri(EndpointError::NotHttps(_)))
    ));
    assert_eq!(
        parse_key_file("-----BEGIN").err(),
        Some(KeyFileError::NotJson)
    );
    assert_eq!(parse_key_file("[]").err(), Some(KeyFileError::NotJson));
}

#[test]
fn the_answer_is_an_oauth2_token_response() {
    let answer = |status: u16, body: &str| TokenResponse {
        status: StatusCode::from_u16(status).unwrap(),
        headers: HeaderMap::new(),
        body: Zeroizing::new(body.as_bytes().to_vec()),
    };
    let now = UNIX_EPOCH + Duration::from_secs(NOW);
    let minted = response(
        &answer(
            200,
            r#"{"access_token":"ya29.x","expires_in":3599,"token_type":"Bearer"}"#,
        ),
        now,
        &[],
    )
    .unwrap();
    assert_eq!(
        (minted.value.expose(), minted.lifetime),
        ("ya29.x", Duration::from_secs(3599))
    );
    let refused = response(
        &answer(
            400,
            r#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#,
        ),
        now,
        &[],
    )
    .unwrap_err();
    assert_eq!(
        refused.message,
        "HTTP 400: invalid_grant: Invalid JWT Signature."
    );
}
