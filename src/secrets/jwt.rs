//! RS256 JSON Web Tokens (RFC 7515/7519), the assertions GitHub Apps and Google service accounts sign
//! their token requests with: the RSA key read from PEM (PKCS#1 `RSA PRIVATE KEY` or PKCS#8 `PRIVATE KEY`,
//! nothing else), RSASSA-PKCS1-v1_5 with SHA-256 by aws-lc-rs, base64url without padding.
//!
//! A key is parsed from its locked PEM for each token request and dropped right after signing, rather
//! than kept parsed: aws-lc clears its own copy when it is freed, so the key spends minutes an hour in
//! memory that is not locked instead of all the time.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rustls::pki_types::pem::{PemObject, SectionKind};
use serde::Serialize;
use zeroize::Zeroizing;

/// Why a PEM is not a key the daemon can sign with. None of these quote the PEM.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("no private key in it (expected \"-----BEGIN RSA PRIVATE KEY-----\" or \"-----BEGIN PRIVATE KEY-----\")")]
    NoKey,
    #[error("the PEM is malformed")]
    Malformed,
    #[error("the private key is encrypted; give the daemon the plain key (openssl pkey -in KEY -out PLAIN)")]
    Encrypted,
    #[error(
        "an EC key; RS256 needs an RSA key (PKCS#1 \"RSA PRIVATE KEY\" or PKCS#8 \"PRIVATE KEY\")"
    )]
    Ec,
    #[error("a certificate, not a private key")]
    Certificate,
    #[error("a public key, not the private key")]
    PublicKey,
    /// aws-lc refused it: a PKCS#8 key of another algorithm, a key under 2048 bits, bad components.
    #[error("not a usable RSA private key ({0})")]
    NotRsa(&'static str),
}

#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("signing failed")]
    Sign,
    #[error("encoding the claims: {0}")]
    Json(#[from] serde_json::Error),
}

/// An RSA private key, ready to sign.
pub struct RsaKey(RsaKeyPair);

impl std::fmt::Debug for RsaKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RsaKey(<redacted>)")
    }
}

impl RsaKey {
    /// The first private key of a PEM text. A bundle with certificates around the key is fine; a PEM
    /// whose only key is not RSA is refused, with what it is instead.
    pub fn from_pem(pem: &str) -> Result<RsaKey, KeyError> {
        // Both the PKCS#8 "ENCRYPTED PRIVATE KEY" and the old OpenSSL "Proc-Type: 4,ENCRYPTED" header.
        if pem.contains("ENCRYPTED") {
            return Err(KeyError::Encrypted);
        }
        let mut other = None;
        for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(pem.as_bytes()) {
            let (kind, der) = section.map_err(|_| KeyError::Malformed)?;
            let der = Zeroizing::new(der);
            let parsed = match kind {
                SectionKind::RsaPrivateKey => RsaKeyPair::from_der(&der),
                SectionKind::PrivateKey => RsaKeyPair::from_pkcs8(&der),
                SectionKind::EcPrivateKey => return Err(KeyError::Ec),
                kind => {
                    other.get_or_insert(kind);
                    continue;
                }
            };
            return parsed
                .map(RsaKey)
                .map_err(|rejected| KeyError::NotRsa(rejected.description_()));
        }
        Err(match other {
            Some(SectionKind::Certificate) => KeyError::Certificate,
            Some(SectionKind::PublicKey) => KeyError::PublicKey,
            _ => KeyError::NoKey,
        })
    }

    /// The JWS compact serialization `BASE64URL(header).BASE64URL(payload).BASE64URL(signature)` of the
    /// exact bytes given (RFC 7515 §7.1): what the known-answer test needs, as its payload has CRLFs.
    pub fn sign_compact(
        &self,
        header: &[u8],
        payload: &[u8],
    ) -> Result<Zeroizing<String>, JwtError> {
        let mut signature = vec![0; self.0.public_modulus_len()];
        let encoded_len = |n: usize| n.div_ceil(3) * 4;
        // Sized up front: a String that grew would leave copies of the token in freed memory.
        let mut out = Zeroizing::new(String::with_capacity(
            encoded_len(header.len())
                + encoded_len(payload.len())
                + encoded_len(signature.len())
                + 2,
        ));
        URL_SAFE_NO_PAD.encode_string(header, &mut out);
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(payload, &mut out);
        // PKCS#1 v1.5 is deterministic; the random source only blinds the private-key operation.
        self.0
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                out.as_bytes(),
                &mut signature,
            )
            .map_err(|_| JwtError::Sign)?;
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(&signature, &mut out);
        Ok(out)
    }

    /// A signed JWT of `claims`, with the header `{"alg":"RS256","typ":"JWT"}` and `kid` if given.
    pub fn jwt(
        &self,
        kid: Option<&str>,
        claims: &impl Serialize,
    ) -> Result<Zeroizing<String>, JwtError> {
        #[derive(Serialize)]
        struct Header<'a> {
            alg: &'static str,
            typ: &'static str,
            #[serde(skip_serializing_if = "Option::is_none")]
            kid: Option<&'a str>,
        }
        let header = serde_json::to_vec(&Header {
            alg: "RS256",
            typ: "JWT",
            kid,
        })?;
        let payload = Zeroizing::new(serde_json::to_vec(claims)?);
        self.sign_compact(&header, &payload)
    }
}

#[cfg(test)]
mod tests;
