//! Fuzzes how the daemon reads a token endpoint's answer (`sandbox::secrets::github::response` and
//! `oauth2::response`, which Google's uses too): arbitrary status, `Retry-After` and body. Nothing may
//! panic, and:
//!
//! - a token taken is the one the body's JSON names (`token` for GitHub, `access_token` for OAuth2), read
//!   again here by `serde_json::Value`, and lives more than nothing and at most `MAX_LIFETIME`;
//! - GitHub's `expires_at`, where humantime (a parser the daemon does not use) reads it too, gives the
//!   same lifetime;
//! - a failure's message, which goes to the logs, holds neither the client secret (even when the body
//!   echoes it) nor any token or refresh token the body carries (of 16 characters or more, no spaces).
//!
//! Input: a byte choosing the provider (bit 0) and the `Retry-After` (bits 1-2: none, seconds, a date,
//! text), two bytes of status (mapped onto 100-599), then the body.
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue, StatusCode};
use libfuzzer_sys::fuzz_target;
use sandbox::secrets::exchange::{TokenResponse, MAX_LIFETIME};
use sandbox::secrets::{github, oauth2};
use zeroize::Zeroizing;

const CLIENT_SECRET: &str = "client-secret-0123456789";
/// 2026-01-01T00:00:00Z: seeds write expiries around it.
const NOW: u64 = 1_767_225_600;

fuzz_target!(|data: &[u8]| {
    let [flags, high, low, body @ ..] = data else {
        return;
    };
    let github = flags & 1 == 0;
    let code = 100 + u16::from_be_bytes([*high, *low]) % 500;
    let Ok(status) = StatusCode::from_u16(code) else {
        return;
    };
    let mut headers = HeaderMap::new();
    let retry_after = match (flags >> 1) & 3 {
        0 => None,
        1 => Some("120"),
        2 => Some("Thu, 01 Jan 2026 00:02:00 GMT"),
        _ => Some("soon"),
    };
    if let Some(value) = retry_after {
        headers.insert(http::header::RETRY_AFTER, HeaderValue::from_static(value));
    }
    let response = TokenResponse {
        status,
        headers,
        body: Zeroizing::new(body.to_vec()),
    };
    let now = UNIX_EPOCH + Duration::from_secs(NOW);
    let mask = [Zeroizing::new(CLIENT_SECRET.to_string())];
    let fetched = if github {
        github::response(&response, now, &mask)
    } else {
        oauth2::response(&response, oauth2::DEFAULT_LIFETIME, now, &mask)
    };
    // Lossy: serde_json's reader of the daemon's few fields skips the others without checking their
    // UTF-8 (a field it keeps must be valid, so the lossy text names the same token).
    let json: Option<serde_json::Value> = serde_json::from_str(&String::from_utf8_lossy(body)).ok();
    let field = |name: &str| {
        json.as_ref()
            .and_then(|json| json.get(name))
            .and_then(|value| value.as_str())
            .map(str::to_string)
    };
    match fetched {
        Ok(minted) => {
            let named = field(if github { "token" } else { "access_token" });
            assert_eq!(
                Some(minted.value.expose()),
                named.as_deref(),
                "the token taken is the one the body names"
            );
            assert!(
                !minted.lifetime.is_zero() && minted.lifetime <= MAX_LIFETIME,
                "a lifetime of {:?}",
                minted.lifetime
            );
            if github {
                let expires_at = field("expires_at").expect("a GitHub token has expires_at");
                if let Ok(at) = humantime::parse_rfc3339(&expires_at) {
                    let lifetime = at.duration_since(now).unwrap_or_default().min(MAX_LIFETIME);
                    assert_eq!(minted.lifetime, lifetime, "the lifetime of {expires_at}");
                }
            }
        }
        Err(failure) => {
            assert!(
                !failure.message.contains(CLIENT_SECRET),
                "the client secret in a failure: {}",
                failure.message
            );
            for name in ["token", "access_token", "refresh_token", "id_token"] {
                // Long and without spaces, as tokens are: shorter ones, or words, may be part of the
                // daemon's own wording ("a token but no expires_at").
                let token_like =
                    |value: &String| value.len() >= 16 && !value.chars().any(char::is_whitespace);
                if let Some(secret) = field(name).filter(token_like) {
                    assert!(
                        !failure.message.contains(&secret),
                        "the body's {name} in a failure: {}",
                        failure.message
                    );
                }
            }
        }
    }
});
