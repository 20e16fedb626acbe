//! Google service account tokens: the OAuth2 JWT-bearer grant (RFC 7523) with an assertion signed by the
//! key of the service account's JSON key file, sent to the key file's `token_uri`. Its answer is an OAuth2
//! token response (`oauth2::response`). Pure: the caller sends the request.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use zeroize::Zeroizing;

use crate::secrets::exchange::{Endpoint, EndpointError, Fetched, TokenRequest, TokenResponse};
use crate::secrets::jwt::{JwtError, KeyError, RsaKey};
use crate::secrets::oauth2::{self, Form};
use crate::secrets::value::SecretValue;

pub const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// The assertion's `iat` is set back for clock skew; it lives 10 minutes from then (Google takes at most
/// an hour, and it is spent at once).
const BACKDATE: Duration = Duration::from_secs(60);
const ASSERTION_LIFETIME: Duration = Duration::from_secs(9 * 60);

/// A service account, with its key file, ready to mint from.
#[derive(Debug, PartialEq, Eq)]
pub struct GoogleServiceAccount {
    /// The key file's `token_uri`.
    pub endpoint: Endpoint,
    pub client_email: String,
    /// The key file's `private_key_id`: the assertion's `kid`.
    pub key_id: Option<String>,
    /// The whole JSON key file; its `private_key` is read from it for each request.
    pub key_file: SecretValue,
    pub scopes: Vec<String>,
}

/// Why a JSON key file cannot be used. None of these quote the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyFileError {
    #[error("not a JSON key file")]
    NotJson,
    #[error("a key file of type \"{0}\"; a service account's has \"type\": \"service_account\"")]
    NotServiceAccount(String),
    #[error("the key file has no client_email")]
    NoClientEmail,
    #[error("the key file has no private_key")]
    NoPrivateKey,
    #[error("the key file's private_key: {0}")]
    Key(#[from] KeyError),
    #[error("the key file's token_uri: {0}")]
    TokenUri(#[from] EndpointError),
}

/// What the daemon takes from a key file.
pub struct KeyFile {
    pub client_email: String,
    pub private_key: Zeroizing<String>,
    pub key_id: Option<String>,
    pub endpoint: Endpoint,
}

/// Reads a key file, and checks that its key is RSA and its token_uri https.
pub fn parse_key_file(json: &str) -> Result<KeyFile, KeyFileError> {
    #[derive(serde::Deserialize)]
    struct Raw {
        #[serde(rename = "type")]
        kind: Option<String>,
        client_email: Option<String>,
        private_key: Option<String>,
        private_key_id: Option<String>,
        token_uri: Option<String>,
    }
    let raw: Raw = serde_json::from_str(json).map_err(|_| KeyFileError::NotJson)?;
    // Into zeroed memory first, whatever else is wrong.
    let private_key = raw.private_key.map(Zeroizing::new);
    if let Some(kind) = raw.kind.filter(|kind| kind != "service_account") {
        return Err(KeyFileError::NotServiceAccount(kind));
    }
    let client_email = raw
        .client_email
        .filter(|email| !email.is_empty())
        .ok_or(KeyFileError::NoClientEmail)?;
    let private_key = private_key
        .filter(|key| !key.is_empty())
        .ok_or(KeyFileError::NoPrivateKey)?;
    RsaKey::from_pem(&private_key)?;
    let endpoint = Endpoint::parse(raw.token_uri.as_deref().unwrap_or(DEFAULT_TOKEN_URI))?;
    Ok(KeyFile {
        client_email,
        private_key,
        key_id: raw.private_key_id.filter(|id| !id.is_empty()),
        endpoint,
    })
}

/// The token request: an assertion with iss = client_email, scope = the scopes joined by spaces,
/// aud = token_uri, issued at `now` - 60 s, expiring at `now` + 9 min.
pub fn request(account: &GoogleServiceAccount, now: SystemTime) -> Result<TokenRequest, JwtError> {
    #[derive(serde::Serialize)]
    struct Claims<'a> {
        iss: &'a str,
        scope: String,
        aud: String,
        iat: u64,
        exp: u64,
    }
    let key_file = parse_key_file(account.key_file.expose()).map_err(|error| match error {
        KeyFileError::Key(key) => JwtError::Key(key),
        _ => JwtError::Key(KeyError::NoKey),
    })?;
    let seconds = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let assertion = RsaKey::from_pem(&key_file.private_key)?.jwt(
        account.key_id.as_deref(),
        &Claims {
            iss: &account.client_email,
            scope: account.scopes.join(" "),
            aud: account.endpoint.to_string(),
            iat: seconds.saturating_sub(BACKDATE.as_secs()),
            exp: seconds + ASSERTION_LIFETIME.as_secs(),
        },
    )?;
    let mut form = Form::with_capacity(64 + assertion.len());
    form.field("grant_type", GRANT_TYPE);
    form.field("assertion", &assertion);
    let mut headers = HeaderMap::new();
    oauth2::form_headers(&mut headers);
    Ok(TokenRequest {
        endpoint: account.endpoint.clone(),
        headers,
        body: Zeroizing::new(form.0.as_bytes().to_vec()),
        mask: vec![assertion],
    })
}

/// Google answers like any OAuth2 token endpoint (and always says `expires_in`).
pub fn response(response: &TokenResponse, now: SystemTime, mask: &[Zeroizing<String>]) -> Fetched {
    oauth2::response(response, oauth2::DEFAULT_LIFETIME, now, mask)
}

#[cfg(test)]
mod tests;
