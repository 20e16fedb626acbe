//! GitHub App installation tokens: the request (a JWT signed with the App's key, `POST
//! {api}/app/installations/{id}/access_tokens`) and what its answer means. Pure: the caller sends it.
//!
//! Success is a 201 with `token` and `expires_at`, and nothing else: a peer that took any 2xx for success
//! once handed a token on to its caller. The token's length and shape are GitHub's business (its new
//! tokens are about 520 characters).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use http::{HeaderMap, StatusCode};
use zeroize::Zeroizing;

use crate::secrets::dates;
use crate::secrets::exchange::{
    self, check_token, describe_body, Endpoint, Failure, FailureKind, Fetched, Minted,
    TokenRequest, TokenResponse,
};
use crate::secrets::jwt::{JwtError, RsaKey};
use crate::secrets::value::SecretValue;

pub const DEFAULT_API: &str = "https://api.github.com";
/// GitHub refuses a JWT whose `iat` is in the future by its clock; one minute back absorbs skew.
const BACKDATE: Duration = Duration::from_secs(60);
/// GitHub refuses a JWT that lives more than 10 minutes; 9 from now (10 from `iat`) leaves a margin.
const JWT_LIFETIME: Duration = Duration::from_secs(9 * 60);

/// A GitHub App installation, with its key, ready to mint from.
#[derive(Debug, PartialEq, Eq)]
pub struct GithubApp {
    /// `{api}/app/installations/{installation_id}/access_tokens`.
    pub endpoint: Endpoint,
    /// The App ID or the App's client ID: the JWT's `iss`.
    pub app_id: String,
    /// The App's private key (PEM), checked to be RSA when the config was read.
    pub private_key: SecretValue,
    pub repositories: Vec<String>,
    pub permissions: BTreeMap<String, String>,
}

/// The token request, its JWT issued at `now` - 60 s and expiring at `now` + 9 min.
pub fn request(app: &GithubApp, now: SystemTime) -> Result<TokenRequest, JwtError> {
    #[derive(serde::Serialize)]
    struct Claims<'a> {
        iat: u64,
        exp: u64,
        iss: &'a str,
    }
    let seconds = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let jwt = RsaKey::from_pem(app.private_key.expose())?.jwt(
        None,
        &Claims {
            iat: seconds.saturating_sub(BACKDATE.as_secs()),
            exp: seconds + JWT_LIFETIME.as_secs(),
            iss: &app.app_id,
        },
    )?;
    let mut headers = HeaderMap::new();
    headers.insert(
        ACCEPT,
        HeaderValue::from_static("application/vnd.github+json"),
    );
    headers.insert(
        "x-github-api-version",
        HeaderValue::from_static("2022-11-28"),
    );
    headers.insert(USER_AGENT, HeaderValue::from_static(exchange::USER_AGENT));
    let mut bearer =
        HeaderValue::try_from(format!("Bearer {}", jwt.as_str())).map_err(|_| JwtError::Sign)?;
    bearer.set_sensitive(true);
    headers.insert(AUTHORIZATION, bearer);
    let body = body(app);
    if !body.is_empty() {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    Ok(TokenRequest {
        endpoint: app.endpoint.clone(),
        headers,
        body: Zeroizing::new(body),
        mask: vec![jwt],
    })
}

/// `{"repositories": [...], "permissions": {...}}` with what is set; nothing (no body) for a token with
/// all of the installation's access.
fn body(app: &GithubApp) -> Vec<u8> {
    let mut body = serde_json::Map::new();
    if !app.repositories.is_empty() {
        body.insert("repositories".into(), app.repositories.clone().into());
    }
    if !app.permissions.is_empty() {
        let permissions = app
            .permissions
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::from(v.as_str())))
            .collect();
        body.insert("permissions".into(), serde_json::Value::Object(permissions));
    }
    if body.is_empty() {
        return Vec::new();
    }
    serde_json::Value::Object(body).to_string().into_bytes()
}

/// What GitHub's answer means, at `now` (the token's lifetime is `expires_at` - `now`).
pub fn response(response: &TokenResponse, now: SystemTime, mask: &[Zeroizing<String>]) -> Fetched {
    let status = response.status;
    if status != StatusCode::CREATED {
        if status.is_success() {
            return Err(Failure::transient(
                Some(status.as_u16()),
                format!(
                    "HTTP {}, but GitHub answers a new token with 201; {} is not taken",
                    status.as_u16(),
                    describe_body(response)
                ),
            ));
        }
        return Err(github_failure(response, now, mask));
    }
    #[derive(serde::Deserialize)]
    struct Created {
        token: Option<String>,
        expires_at: Option<String>,
    }
    let malformed = |what: String| {
        Err(Failure::transient(
            Some(201),
            format!("HTTP 201 with {what}"),
        ))
    };
    let Ok(created) = serde_json::from_slice::<Created>(&response.body) else {
        return malformed(format!("{} that is not a token", describe_body(response)));
    };
    // Into locked memory before anything else can copy it.
    let Some(token) = created.token.map(SecretValue::new) else {
        return malformed("no token".into());
    };
    if let Err(why) = check_token(token.expose()) {
        return malformed(why.into());
    }
    let Some(expires_at) = created.expires_at else {
        return malformed("a token but no expires_at".into());
    };
    let Some(expires_at) = dates::parse_rfc3339(&expires_at) else {
        return malformed(format!(
            "expires_at \"{}\", which is not an RFC 3339 date",
            // The token too: whatever the endpoint wrote there, the log gets no token from it.
            exchange::clean(
                &expires_at,
                &[mask, &[Zeroizing::new(token.expose().to_string())]].concat()
            )
        ));
    };
    let lifetime = match expires_at.duration_since(now) {
        Ok(lifetime) if !lifetime.is_zero() => lifetime.min(exchange::MAX_LIFETIME),
        _ => {
            return malformed(
                "a token that expired before it arrived (is this machine's clock right?)".into(),
            )
        }
    };
    Ok(Minted {
        value: token,
        lifetime,
        refresh_token: None,
        status: 201,
    })
}

/// A refusal, with GitHub's `message`. Rate limits are transient even as 403: a secondary rate limit
/// comes with Retry-After, the primary one with `x-ratelimit-remaining: 0` and the reset time.
fn github_failure(
    response: &TokenResponse,
    now: SystemTime,
    mask: &[Zeroizing<String>],
) -> Failure {
    let mut failure = exchange::failure_for_status(
        response,
        now,
        exchange::provider_error(&response.body, mask),
    );
    let header = |name: &str| {
        response
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if response.status == StatusCode::FORBIDDEN || response.status == StatusCode::TOO_MANY_REQUESTS
    {
        if failure.retry_after.is_some() {
            failure.kind = FailureKind::Transient;
        } else if header("x-ratelimit-remaining") == Some("0") {
            failure.kind = FailureKind::Transient;
            failure.retry_after = header("x-ratelimit-reset")
                .and_then(|reset| reset.parse::<u64>().ok())
                // A reset time from the server: checked, as a huge one would overflow.
                .and_then(|reset| UNIX_EPOCH.checked_add(Duration::from_secs(reset)))
                .map(|reset| reset.duration_since(now).unwrap_or_default());
        }
    }
    failure
}

#[cfg(test)]
mod tests;
