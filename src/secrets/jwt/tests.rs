use super::*;
use crate::secrets::testing::*;

#[test]
fn rfc7515_a2_signature_from_a_pkcs1_pem() {
    let key = RsaKey::from_pem(&pem("RSA PRIVATE KEY", &pkcs1())).unwrap();
    let jws = key.sign_compact(A2_HEADER, A2_PAYLOAD).unwrap();
    assert_eq!(jws.as_str(), A2_JWS);
}

#[test]
fn rfc7515_a2_signature_from_a_pkcs8_pem() {
    let key = RsaKey::from_pem(&pem("PRIVATE KEY", &pkcs8())).unwrap();
    let jws = key.sign_compact(A2_HEADER, A2_PAYLOAD).unwrap();
    assert_eq!(jws.as_str(), A2_JWS);
}

#[test]
fn jwt_has_the_rs256_header_the_claims_and_a_signature_that_verifies() {
    use aws_lc_rs::signature::{UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256};
    let key = RsaKey::from_pem(&pem("RSA PRIVATE KEY", &pkcs1())).unwrap();
    let claims = serde_json::json!({"iss": "123", "iat": 1, "exp": 2});
    let token = key.jwt(Some("kid-1"), &claims).unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3);
    assert_eq!(
        URL_SAFE_NO_PAD.decode(parts[0]).unwrap(),
        br#"{"alg":"RS256","typ":"JWT","kid":"kid-1"}"#
    );
    let decoded: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(decoded, claims);
    let public = rsa_public_der();
    let signed = format!("{}.{}", parts[0], parts[1]);
    UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &public)
        .verify(
            signed.as_bytes(),
            &URL_SAFE_NO_PAD.decode(parts[2]).unwrap(),
        )
        .unwrap();
    let no_kid = key.jwt(None, &claims).unwrap();
    assert!(no_kid.starts_with(&URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#)));
}

#[test]
fn the_key_is_found_after_a_certificate_in_a_bundle() {
    let ec = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["a.test".into()])
        .unwrap()
        .self_signed(&ec)
        .unwrap();
    let bundle = format!("{}{}", cert.pem(), pem("RSA PRIVATE KEY", &pkcs1()));
    let key = RsaKey::from_pem(&bundle).unwrap();
    assert_eq!(
        key.sign_compact(A2_HEADER, A2_PAYLOAD).unwrap().as_str(),
        A2_JWS
    );
}

#[test]
fn what_is_not_an_rsa_private_key_is_refused_with_what_it_is() {
    let ec = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["a.test".into()])
        .unwrap()
        .self_signed(&ec)
        .unwrap();
    let refused = |text: &str| RsaKey::from_pem(text).unwrap_err();
    // rcgen writes its ECDSA key as PKCS#8 "PRIVATE KEY": the label alone does not tell.
    assert!(matches!(refused(&ec.serialize_pem()), KeyError::NotRsa(_)));
    assert_eq!(refused(&pem("EC PRIVATE KEY", &[0x30, 0])), KeyError::Ec);
    assert_eq!(refused(&cert.pem()), KeyError::Certificate);
    assert_eq!(refused(&pem("PUBLIC KEY", &[0x30, 0])), KeyError::PublicKey);
    assert_eq!(
        refused(&pem("ENCRYPTED PRIVATE KEY", &[0x30, 0])),
        KeyError::Encrypted
    );
    assert_eq!(
        refused("-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n\nAAAA\n-----END RSA PRIVATE KEY-----\n"),
        KeyError::Encrypted
    );
    assert_eq!(refused(""), KeyError::NoKey);
    assert_eq!(refused("ghp_not_a_pem"), KeyError::NoKey);
    assert_eq!(
        refused("-----BEGIN RSA PRIVATE KEY-----\n!!!!\n-----END RSA PRIVATE KEY-----\n"),
        KeyError::Malformed
    );
    assert!(matches!(
        refused(&pem("RSA PRIVATE KEY", &[0x30, 0])),
        KeyError::NotRsa(_)
    ));
    // The messages never quote the PEM.
    let secret_pem = pem("RSA PRIVATE KEY", b"0123456789abcdef");
    let message = refused(&secret_pem).to_string();
    assert!(!message.contains("MDEy"), "{message}");
}
