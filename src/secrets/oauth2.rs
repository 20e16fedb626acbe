//! OAuth2 token endpoint requests (RFC 6749 §4.4 `client_credentials`, §6 `refresh_token`) and the token
//! endpoint's answer (§5.1 success, §5.2 error), which Google's JWT-bearer grant shares. Pure: the caller
//! sends the request, and keeps the refresh token (`state`, `store`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use http::HeaderMap;
use zeroize::Zeroizing;

use crate::secrets::exchange::{
    self, check_token, describe_body, Endpoint, Failure, FailureKind, Fetched, Minted,
    TokenRequest, TokenResponse,
};
use crate::secrets::value::SecretValue;

/// When the endpoint does not say how long a token lives (`expires_in` is optional) and the config
/// gives no default.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

/// Form fields the daemon writes itself; `params` may not set them.
pub const RESERVED_PARAMS: [&str; 7] = [
    "grant_type",
    "client_id",
    "client_secret",
    "scope",
    "refresh_token",
    "assertion",
    "client_assertion",
];

/// An OAuth2 client, with its credentials, ready to mint from.
#[derive(Debug, PartialEq, Eq)]
pub struct Oauth2 {
    pub endpoint: Endpoint,
    pub client_id: String,
    /// None for a public client, which sends only its `client_id`.
    pub client_secret: Option<SecretValue>,
    pub grant: Grant,
    pub auth: ClientAuth,
    pub scope: Option<String>,
    /// Extra form fields (audience, resource).
    pub params: BTreeMap<String, String>,
    /// The lifetime of a token whose answer has no `expires_in`.
    pub default_lifetime: Duration,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Grant {
    ClientCredentials,
    RefreshToken {
        /// The refresh token of the config; a rotated one in `state_file` replaces it.
        configured: SecretValue,
        state_file: PathBuf,
    },
}

/// How the client authenticates (RFC 6749 §2.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAuth {
    /// `client_secret_basic`: HTTP basic auth, id and secret each form-urlencoded first.
    #[default]
    Basic,
    /// `client_secret_post`: `client_id` and `client_secret` in the form.
    Post,
}

/// The token request. `refresh_token` is the one to spend, for the `refresh_token` grant (the caller
/// knows whether a rotated one replaced the configured one).
pub fn request(client: &Oauth2, refresh_token: Option<&SecretValue>) -> TokenRequest {
    let mut form = Form::default();
    let mut mask = Vec::new();
    match (&client.grant, refresh_token) {
        (Grant::RefreshToken { .. }, Some(token)) => {
            form.field("grant_type", "refresh_token");
            form.field("refresh_token", token.expose());
            mask.push(Zeroizing::new(token.expose().to_owned()));
        }
        // A refresh grant always gets its token from the store; should it not, the endpoint says so.
        (Grant::RefreshToken { .. }, None) => form.field("grant_type", "refresh_token"),
        (Grant::ClientCredentials, _) => form.field("grant_type", "client_credentials"),
    }
    if let Some(scope) = &client.scope {
        form.field("scope", scope);
    }
    for (name, value) in &client.params {
        form.field(name, value);
    }
    let mut headers = HeaderMap::new();
    match (&client.client_secret, client.auth) {
        (Some(secret), ClientAuth::Basic) => {
            let mut pair =
                Form::with_capacity(3 * (client.client_id.len() + secret.expose().len()) + 1);
            pair.encode(&client.client_id);
            pair.0.push(':');
            pair.encode(secret.expose());
            let mut basic = Zeroizing::new(String::with_capacity(6 + pair.0.len().div_ceil(3) * 4));
            basic.push_str("Basic ");
            STANDARD.encode_string(pair.0.as_bytes(), &mut basic);
            if let Ok(mut value) = HeaderValue::try_from(basic.as_str()) {
                value.set_sensitive(true);
                headers.insert(AUTHORIZATION, value);
            }
        }
        (Some(secret), ClientAuth::Post) => {
            form.field("client_id", &client.client_id);
            form.field("client_secret", secret.expose());
        }
        // RFC 6749 §3.2.1: a public client identifies itself in the form.
        (None, _) => form.field("client_id", &client.client_id),
    }
    if let Some(secret) = &client.client_secret {
        mask.push(Zeroizing::new(secret.expose().to_owned()));
    }
    form_headers(&mut headers);
    TokenRequest {
        endpoint: client.endpoint.clone(),
        headers,
        body: Zeroizing::new(form.0.as_bytes().to_vec()),
        mask,
    }
}

/// The headers of every form POST to a token endpoint.
pub fn form_headers(headers: &mut HeaderMap) {
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-www-form-urlencoded"),
    );
    headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
    headers.insert(USER_AGENT, HeaderValue::from_static(exchange::USER_AGENT));
}

/// What a token endpoint's answer means, at `now`. Any 2xx with an `access_token` is a token (RFC 6749
/// says 200; some endpoints answer 201); its lifetime is `expires_in`, else `default_lifetime`.
pub fn response(
    response: &TokenResponse,
    default_lifetime: Duration,
    now: SystemTime,
    mask: &[Zeroizing<String>],
) -> Fetched {
    let status = response.status;
    if !status.is_success() {
        let detail = exchange::provider_error(&response.body, mask);
        let mut failure = exchange::failure_for_status(response, now, detail);
        if failure.kind == FailureKind::Permanent && transient_error_code(&response.body) {
            failure.kind = FailureKind::Transient;
        }
        return Err(failure);
    }
    #[derive(serde::Deserialize)]
    struct Success {
        access_token: Option<String>,
        expires_in: Option<serde_json::Value>,
        refresh_token: Option<String>,
    }
    let code = status.as_u16();
    let malformed = |what: String| {
        Err(Failure::transient(
            Some(code),
            format!("HTTP {code} with {what}"),
        ))
    };
    let Ok(success) = serde_json::from_slice::<Success>(&response.body) else {
        return malformed(format!(
            "{} that is not a token response",
            describe_body(response)
        ));
    };
    // Into locked memory before anything else can copy them.
    let refresh_token = success.refresh_token.map(SecretValue::new);
    let Some(token) = success.access_token.map(SecretValue::new) else {
        return malformed(match exchange::provider_error(&response.body, mask) {
            Some(error) => format!("no access_token but an error: {error}"),
            None => "no access_token".into(),
        });
    };
    if let Err(why) = check_token(token.expose()) {
        return malformed(why.into());
    }
    if let Some(Err(why)) = refresh_token.as_ref().map(|t| check_token(t.expose())) {
        return malformed(format!("{why} as refresh_token"));
    }
    let lifetime = match success.expires_in {
        None | Some(serde_json::Value::Null) => default_lifetime,
        Some(value) => match seconds(&value) {
            Some(seconds) if seconds > 0.0 => Duration::try_from_secs_f64(seconds)
                .map_or(exchange::MAX_LIFETIME, |d| d.min(exchange::MAX_LIFETIME)),
            Some(_) => {
                return malformed("a token that has already expired (expires_in <= 0)".into())
            }
            None => return malformed("an expires_in that is not a number".into()),
        },
    };
    Ok(Minted {
        value: token,
        lifetime,
        refresh_token,
        status: code,
    })
}

/// `expires_in` as a number, or a string holding one (some endpoints quote it).
fn seconds(value: &serde_json::Value) -> Option<f64> {
    match value {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => s.trim().parse::<f64>().ok().filter(|s| s.is_finite()),
        _ => None,
    }
}

/// Error codes that say "later" rather than "never", whatever the status they come with.
fn transient_error_code(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Code {
        error: Option<String>,
    }
    serde_json::from_slice::<Code>(body).is_ok_and(|code| {
        matches!(
            code.error.as_deref(),
            Some("temporarily_unavailable" | "server_error" | "slow_down")
        )
    })
}

/// An `application/x-www-form-urlencoded` body being written, in zeroed memory.
#[derive(Default)]
pub struct Form(pub Zeroizing<String>);

impl Form {
    pub fn with_capacity(capacity: usize) -> Form {
        Form(Zeroizing::new(String::with_capacity(capacity)))
    }

    pub fn field(&mut self, name: &str, value: &str) {
        // Reserved ahead for the worst case (every byte escaped): a String that grew would leave
        // copies of the credentials in freed memory.
        let needed = self.0.len() + 2 + 3 * (name.len() + value.len());
        if needed > self.0.capacity() {
            let mut bigger = Form::with_capacity(needed.max(256));
            bigger.0.push_str(&self.0);
            *self = bigger;
        }
        if !self.0.is_empty() {
            self.0.push('&');
        }
        self.encode(name);
        self.0.push('=');
        self.encode(value);
    }

    /// The WHATWG urlencoded serializer: alphanumerics and `*-._` as they are, space as `+`, every other
    /// byte `%XX`.
    pub fn encode(&mut self, text: &str) {
        const HEX: &[u8; 16] = b"0123456789ABCDEF";
        for &b in text.as_bytes() {
            match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                    self.0.push(char::from(b))
                }
                b' ' => self.0.push('+'),
                _ => {
                    self.0.push('%');
                    self.0.push(char::from(HEX[usize::from(b >> 4)]));
                    self.0.push(char::from(HEX[usize::from(b & 15)]));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
