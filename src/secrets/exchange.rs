//! What every token fetch has in common, whichever the provider: the endpoint (an https URL), the request
//! sent and the response received, and what came of it: a minted token, or a failure that says whether to
//! retry soon (transient) or slowly (permanent), with the status and the provider's own words for the logs.
//!
//! Failure messages are built from the status, the provider's `error`/`error_description` (or GitHub's
//! `message`) and fixed text, never from the rest of a body: a body may hold a token. The provider's words
//! are cleaned of control characters, cut short, and any credential the request carried is masked in them,
//! should an endpoint echo one back.

use std::time::{Duration, SystemTime};

use http::header::{HeaderMap, RETRY_AFTER};
use http::{StatusCode, Uri};
use zeroize::Zeroizing;

use crate::secrets::dates;
use crate::secrets::value::SecretValue;

pub const USER_AGENT: &str = concat!("sandbox/", env!("CARGO_PKG_VERSION"));
/// The longest lifetime a token is taken to have. Longer ones (or absurd `expires_in` values) are
/// refreshed as if they lived this long, which keeps every deadline computable.
pub const MAX_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);
/// How much of a provider's error text reaches the logs.
const MAX_DETAIL: usize = 300;

/// A token endpoint: an `https` URL with a host, no user info.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    uri: Uri,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("\"{0}\" is not a URL")]
    NotUrl(String),
    #[error("\"{0}\" is not https; token endpoints are reached over verified TLS only")]
    NotHttps(String),
    #[error("\"{0}\" has no host")]
    NoHost(String),
    #[error(
        "a URL with a user name or password is not taken; give credentials in their own fields"
    )]
    UserInfo,
}

impl Endpoint {
    pub fn parse(text: &str) -> Result<Endpoint, EndpointError> {
        // The user info check comes first: its error must not quote a URL that holds a password.
        let uri: Uri = text.parse().map_err(|_| {
            if text.contains('@') {
                EndpointError::UserInfo
            } else {
                EndpointError::NotUrl(text.to_owned())
            }
        })?;
        let Some(authority) = uri.authority() else {
            return Err(EndpointError::NoHost(text.to_owned()));
        };
        if authority.as_str().contains('@') {
            return Err(EndpointError::UserInfo);
        }
        if uri.scheme() != Some(&http::uri::Scheme::HTTPS) {
            return Err(EndpointError::NotHttps(text.to_owned()));
        }
        if authority.host().is_empty() {
            return Err(EndpointError::NoHost(text.to_owned()));
        }
        Ok(Endpoint { uri })
    }

    /// This endpoint with `path` appended to its path (`https://ghe.example.com/api/v3` + `/app/...`).
    pub fn join(&self, path: &str) -> Result<Endpoint, EndpointError> {
        let base = self.uri.to_string();
        Endpoint::parse(&format!("{}{path}", base.trim_end_matches('/')))
    }

    pub fn uri(&self) -> &Uri {
        &self.uri
    }

    /// The host name or address (IPv6 without brackets), for TLS verification, the logs and the audit log.
    pub fn host(&self) -> &str {
        let host = self.uri.host().unwrap_or_default();
        host.strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
    }

    pub fn port(&self) -> u16 {
        self.uri.port_u16().unwrap_or(443)
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.uri.fmt(f)
    }
}

/// One POST to a token endpoint. Header values that hold a credential are marked sensitive (HPACK then
/// never indexes them).
pub struct TokenRequest {
    pub endpoint: Endpoint,
    pub headers: HeaderMap,
    pub body: Zeroizing<Vec<u8>>,
    /// The credentials the request carries (client secret, refresh token, assertion), to be masked in
    /// whatever the endpoint answers.
    pub mask: Vec<Zeroizing<String>>,
}

impl std::fmt::Debug for TokenRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenRequest")
            .field("endpoint", &self.endpoint.to_string())
            .finish_non_exhaustive()
    }
}

/// What a token endpoint answered; the body is at most `client::MAX_BODY` bytes.
pub struct TokenResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse")
            .field("status", &self.status)
            .field("body_len", &self.body.len())
            .finish_non_exhaustive()
    }
}

/// A token, and how long it lives from the moment it was received.
#[derive(Debug)]
pub struct Minted {
    pub value: SecretValue,
    pub lifetime: Duration,
    /// A new refresh token the server rotated to (OAuth2 `refresh_token` grant).
    pub refresh_token: Option<SecretValue>,
    pub status: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Network, timeouts, 5xx, 408, 429, a success without a usable token: retried with backoff.
    Transient,
    /// The endpoint refused the credentials or the request (invalid_client, invalid_grant, 401, 403...):
    /// retrying soon would only repeat it.
    Permanent,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    pub kind: FailureKind,
    pub status: Option<u16>,
    pub retry_after: Option<Duration>,
    pub message: String,
}

impl Failure {
    pub fn transient(status: Option<u16>, message: impl Into<String>) -> Failure {
        Failure {
            kind: FailureKind::Transient,
            status,
            retry_after: None,
            message: message.into(),
        }
    }
}

pub type Fetched = Result<Minted, Failure>;

/// A failed answer (not a success): transient for 408, 429 and 5xx, permanent for the rest, with the
/// Retry-After the endpoint asked for. `detail` is the provider's error, already cleaned.
pub fn failure_for_status(
    response: &TokenResponse,
    now: SystemTime,
    detail: Option<String>,
) -> Failure {
    let status = response.status;
    let transient = status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS;
    let mut message = format!("HTTP {}", status.as_u16());
    if let Some(detail) = detail {
        message.push_str(": ");
        message.push_str(&detail);
    }
    if status.is_redirection() {
        message.push_str(" (redirects are not followed; give the endpoint's final URL)");
    }
    Failure {
        kind: if transient {
            FailureKind::Transient
        } else {
            FailureKind::Permanent
        },
        status: Some(status.as_u16()),
        retry_after: retry_after(&response.headers, now),
        message,
    }
}

/// `Retry-After` in seconds or as an HTTP date; a date in the past is zero.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = dates::parse_http_date(value)?;
    Some(at.duration_since(now).unwrap_or_default())
}

/// The provider's error in its own words: `error` and `error_description` (OAuth2, RFC 6749 §5.2), or
/// `message` (GitHub), cleaned for the logs. None if the body is not JSON or has neither.
pub fn provider_error(body: &[u8], mask: &[Zeroizing<String>]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        error: Option<serde_json::Value>,
        error_description: Option<serde_json::Value>,
        message: Option<serde_json::Value>,
    }
    let parsed: ErrorBody = serde_json::from_slice(body).ok()?;
    let text = |value: Option<serde_json::Value>| match value {
        Some(serde_json::Value::String(s)) => Some(s),
        Some(serde_json::Value::Null) | None => None,
        Some(other) => Some(other.to_string()),
    };
    let words = match (text(parsed.error), text(parsed.error_description)) {
        (Some(error), Some(description)) => format!("{error}: {description}"),
        (Some(error), None) => error,
        (None, Some(description)) => description,
        (None, None) => text(parsed.message)?,
    };
    Some(clean(&words, mask))
}

/// A short description of a body that is not what was expected, without quoting it.
pub fn describe_body(response: &TokenResponse) -> String {
    let content_type = response
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| clean(v, &[]));
    match (response.body.is_empty(), content_type) {
        (true, _) => "an empty body".into(),
        (false, Some(content_type)) => {
            format!("a {} byte {content_type} body", response.body.len())
        }
        (false, None) => format!("a {} byte body", response.body.len()),
    }
}

/// Text from a server, fit for a log line: control characters dropped, at most `MAX_DETAIL` characters,
/// every credential in `mask` replaced by `***`.
pub fn clean(text: &str, mask: &[Zeroizing<String>]) -> String {
    let mut text: String = text.chars().filter(|c| !c.is_control()).collect();
    for secret in mask {
        if !secret.is_empty() {
            text = text.replace(secret.as_str(), "***");
        }
    }
    match text.char_indices().nth(MAX_DETAIL) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text,
    }
}

/// A token fit for an HTTP header: not empty, no control characters (as for static secrets).
pub fn check_token(token: &str) -> Result<(), &'static str> {
    if token.is_empty() {
        return Err("an empty token");
    }
    if token.chars().any(char::is_control) {
        return Err("a token with control characters, which cannot go in an HTTP header");
    }
    Ok(())
}

#[cfg(test)]
mod tests;
