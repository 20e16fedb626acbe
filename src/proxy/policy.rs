//! The request policy: what the daemon does with an intercepted request, whichever protocol carried it. The
//! HTTP/1.1 proxy (and hyper's HTTP/2 server) and the HTTP/2 relay both ask it, so the rule that guards the
//! secret is written once: may this request carry it (a refusal: 421 when a name it gives is not the TLS
//! server name, 405 for methods that could reflect it, 400 for h2c or no host, 431 for heads over the
//! limits), and which headers it gets (the integration's, with the secrets in them, or its AWS signature:
//! `AwsSigner`). And: may a request go again when its connection failed (idempotent methods).
//!
//! Minted secrets (DESIGN step 5b): a request takes the current token of each minted secret its
//! integration names from the store, which never waits; only when a secret has no valid token and its
//! first fetch is running does it wait for that fetch (`tokens`, bounded), and with no valid token at
//! all the daemon answers 503 itself. The tokens a request carried are kept with it, so that an
//! upstream's 401 tells the store which token was refused (`rejected`).

use std::cell::RefCell;
use std::sync::Arc;
use std::time::SystemTime;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::config::{
    basic_credentials, AwsSigV4, Integration, MissingSecret, SecretValues, Secrets,
};
use crate::secrets::store::WAIT_FOR_TOKEN;
use crate::secrets::{SecretValue, Store, Unavailable};

/// AWS Signature Version 4: for an AWS integration, the signature is what is injected.
pub mod sigv4;

/// The most a request's header list may hold, as HTTP/2 counts it (name, value and 32 per field); also the
/// most an HTTP/2 header block may take as sent (HEADERS and its CONTINUATIONs).
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// What the policy reads of a request's head: the same whatever protocol carried it.
pub struct Head<'a> {
    pub method: &'a [u8],
    /// The HTTP/2 :authority, or an absolute-form target's authority.
    pub authority: Option<&'a [u8]>,
    /// An extended CONNECT (RFC 8441 :protocol): a tunnel, like CONNECT.
    pub tunnel: bool,
    /// Asks to switch to cleartext HTTP/2 (`Upgrade: h2c`, `HTTP2-Settings`).
    pub h2c: bool,
    /// Over `MAX_HEADER_BYTES`, or over the number of fields its protocol allows.
    pub too_large: bool,
}

/// The daemon's own answer to a request that must not go out with the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub message: String,
}

impl<'a> Head<'a> {
    /// The host the request is for, for the audit log: the authority, else the first Host header.
    pub fn host(&self, mut hosts: impl Iterator<Item = &'a [u8]>) -> Option<String> {
        self.authority
            .or_else(|| hosts.next())
            .map(|host| String::from_utf8_lossy(host).to_ascii_lowercase())
    }

    /// Why this request, on a connection for `sni` to port `port`, must not be sent with the secret, if
    /// so. `hosts` are its Host headers. Every name the request gives must be the TLS server name: an
    /// HTTP/2 request whose Host header differs from its :authority is malformed (RFC 9113, 8.3.1), and
    /// which of the two an upstream would follow is its own choice.
    pub fn refusal(
        &self,
        hosts: impl Iterator<Item = &'a [u8]>,
        sni: &str,
        port: u16,
    ) -> Option<Refusal> {
        let refuse = |status, message: String| Some(Refusal { status, message });
        if self.too_large {
            return refuse(
                431,
                format!(
                    "sandbox: the request's header fields are over the limit ({} KiB)",
                    MAX_HEADER_BYTES / 1024
                ),
            );
        }
        let mut named = false;
        for host in self.authority.into_iter().chain(hosts) {
            named = true;
            let Ok(host) = std::str::from_utf8(host) else {
                return refuse(400, "sandbox: the Host header is not text".into());
            };
            if !host_matches(host, sni, port) {
                return refuse(
                    421,
                    format!("sandbox: request for {host:?} on a connection for {sni:?}; open a new connection for that host"),
                );
            }
        }
        if !named {
            return refuse(400, "sandbox: the request names no host".into());
        }
        if self.method == b"TRACE" || self.method == b"CONNECT" || self.tunnel {
            let method = String::from_utf8_lossy(self.method);
            return refuse(
                405,
                format!("sandbox: {method} is not allowed to {sni} (it could reveal the injected credentials)"),
            );
        }
        if self.h2c {
            return refuse(400, "sandbox: Upgrade: h2c is not allowed".into());
        }
        None
    }
}

/// Whether `host` (as sent, maybe with a port) names `sni` on the connection's port.
pub fn host_matches(host: &str, sni: &str, port: u16) -> bool {
    let (name, host_port) = match host.rsplit_once(':') {
        Some((name, port_text)) if !name.contains(':') => match port_text.parse::<u16>() {
            Ok(parsed) => (name, Some(parsed)),
            Err(_) => return false,
        },
        _ => (host, None),
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    name.eq_ignore_ascii_case(sni)
        && host_port.is_none_or(|p| p == port || (p == 443 && port == 443))
}

/// What a request's templates are rendered with: its sandbox's static secrets, and the tokens of the
/// minted secrets its integration names (in the order of `Integration::minted`).
pub struct Values<'a> {
    pub integration: &'a Integration,
    pub secrets: &'a Secrets,
    pub tokens: &'a [Arc<SecretValue>],
}

impl SecretValues for Values<'_> {
    fn value(&self, name: &str) -> Option<&str> {
        match self
            .integration
            .minted
            .iter()
            .position(|minted| minted == name)
        {
            Some(index) => self.tokens.get(index).map(|token| token.expose()),
            None => self.secrets.value(name),
        }
    }
}

/// The current token of each minted secret `integration` names, in its order; never waits.
pub fn current_tokens(
    integration: &Integration,
    store: &Store,
) -> Result<Vec<Arc<SecretValue>>, Unavailable> {
    integration
        .minted
        .iter()
        .map(|name| store.value(name))
        .collect()
}

/// As `current_tokens`, but a secret with no valid token whose fetch is running (the first one, after
/// the daemon started or a reload added it) is waited for, up to `WAIT_FOR_TOKEN`.
pub async fn tokens(
    integration: &Integration,
    store: &Store,
) -> Result<Vec<Arc<SecretValue>>, Unavailable> {
    let mut tokens = Vec::with_capacity(integration.minted.len());
    for name in &integration.minted {
        let token = match store.value(name) {
            Ok(token) => token,
            Err(_) => store.wait_value(name, WAIT_FOR_TOKEN).await?,
        };
        tokens.push(token);
    }
    Ok(tokens)
}

/// The daemon's answer to a request whose minted secret has no valid token: nothing goes upstream.
pub fn unavailable(why: &Unavailable) -> Refusal {
    Refusal {
        status: 503,
        message: format!("sandbox: {why}"),
    }
}

/// An upstream answered 401 to a request that carried `tokens` (of `integration`'s minted secrets):
/// the store fetches a new token at once, once, unless the refused one was replaced already.
pub fn rejected(integration: &Integration, store: &Store, tokens: &[Arc<SecretValue>]) {
    for (name, token) in integration.minted.iter().zip(tokens) {
        let outcome = store.refresh_now(name, token);
        tracing::debug!(secret = %name, ?outcome, "the upstream refused a minted token (401)");
    }
}

/// Sets the integration's headers, replacing any of the same name the client sent; else says why they
/// cannot be made.
pub fn inject(
    headers: &mut HeaderMap,
    integration: &Integration,
    values: &impl SecretValues,
) -> Result<(), String> {
    let not_loaded = |missing: MissingSecret| format!("secret {:?} is not loaded", missing.0);
    for (name, template) in &integration.headers {
        let value = template.render(values).map_err(not_loaded)?;
        let unusable = || {
            format!(
                "header {name:?} of integration {:?} is not a valid HTTP header",
                integration.name
            )
        };
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| unusable())?;
        // Bytes, not text: a secret may hold non-ASCII characters, which HTTP carries as they are.
        let mut value = HeaderValue::from_bytes(value.as_bytes()).map_err(|_| unusable())?;
        value.set_sensitive(true);
        headers.insert(name, value);
    }
    if let Some(basic) = &integration.basic_auth {
        let user = basic.username.render(values).map_err(not_loaded)?;
        let password = basic.password.render(values).map_err(not_loaded)?;
        let mut value = HeaderValue::from_str(&basic_credentials(&user, &password))
            .map_err(|_| "basic_auth does not encode to a header".to_string())?;
        value.set_sensitive(true);
        headers.insert(header::AUTHORIZATION, value);
    }
    Ok(())
}

thread_local! {
    /// The signing keys of the requests this thread signed: one cache per worker thread, as each
    /// sandbox's connections live on one worker, so a key is found without a lock or another thread's
    /// cache line.
    static SIGNING_KEYS: RefCell<sigv4::SigningKeys> = RefCell::default();
}

/// An `aws_sigv4` integration's signature for one request (DESIGN, "AWS SigV4"), in two steps around
/// reading its body: [`AwsSigner::new`] refuses what cannot be signed and finds the credentials and the
/// scope, so that nothing is read for a request that would fail; [`AwsSigner::sign`] signs the headers as
/// they leave.
pub struct AwsSigner<'s> {
    credentials: sigv4::Credentials<'s>,
    scope: sigv4::Scope,
    /// What the client's `x-amz-content-sha256` says the body is; None: the body must be hashed.
    payload: Option<sigv4::PayloadHash>,
}

impl<'s> AwsSigner<'s> {
    /// For a request to `target` (path and query) that goes out to `authority`, with these headers (the
    /// client's `Authorization` still among them: its credential scope may give region and service).
    /// Refused (400): a presigned URL, a chunk-signed body; (500): a secret that is not loaded, a scope
    /// that cannot be told.
    pub fn new(
        aws: &'s AwsSigV4,
        values: &'s Values<'s>,
        target: &[u8],
        headers: &HeaderMap,
        authority: &str,
    ) -> Result<AwsSigner<'s>, Refusal> {
        sigv4::check_not_presigned(target)?;
        let payload = headers
            .get(sigv4::X_AMZ_CONTENT_SHA256)
            .map(|value| sigv4::PayloadHash::from_header(value.as_bytes()))
            .transpose()?;
        // The same lookup as a template's, so that a secret's current value (a minted one's current
        // token) signs.
        let secret = |name: &str| {
            values.value(name).ok_or_else(|| Refusal {
                status: 500,
                message: format!("sandbox: secret {name:?} is not loaded; see the daemon's log"),
            })
        };
        let credentials = sigv4::Credentials {
            access_key_id: &aws.access_key_id,
            secret_access_key: secret(&aws.secret_access_key)?,
            session_token: aws.session_token.as_deref().map(secret).transpose()?,
        };
        let authorization = headers
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes);
        let scope = sigv4::Scope::resolve(
            aws.region.as_deref(),
            aws.service.as_deref(),
            authorization,
            authority,
        )?;
        Ok(AwsSigner {
            credentials,
            scope,
            payload,
        })
    }

    /// The client's payload hash, if it sent one; else the body is to be hashed whole.
    pub fn payload(&self) -> Option<&sigv4::PayloadHash> {
        self.payload.as_ref()
    }

    /// Replaces the client's signature in `headers` (as they leave the daemon) with the daemon's, over
    /// `method`, `target`, the `authority` the request goes out with, and `payload`.
    pub fn sign(
        &self,
        method: &[u8],
        target: &[u8],
        authority: &str,
        payload: &sigv4::PayloadHash,
        headers: &mut HeaderMap,
    ) -> Result<(), Refusal> {
        sigv4::strip_client_signature(headers);
        let request = sigv4::Request {
            method,
            target,
            host: authority.as_bytes(),
            payload,
        };
        let sign = |keys: &mut sigv4::SigningKeys| {
            let fields = sigv4::header_fields(headers);
            let now = SystemTime::now();
            sigv4::sign(&request, fields, &self.credentials, &self.scope, now, keys)
        };
        // Nothing signs while the cache is borrowed; were it, a key derived afresh signs as well.
        let signed = SIGNING_KEYS.with(|keys| match keys.try_borrow_mut() {
            Ok(mut keys) => sign(&mut keys),
            Err(_) => sign(&mut sigv4::SigningKeys::default()),
        })?;
        for (name, value) in signed.headers {
            headers.insert(name, value);
        }
        Ok(())
    }
}

/// Whether sending a request twice has the effect of sending it once (RFC 9110 §9.2.2): such a request
/// may go again when its connection closed before any of its answer came, processed or not.
pub fn is_idempotent(method: &[u8]) -> bool {
    matches!(
        method,
        b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE" | b"PUT" | b"DELETE"
    )
}

#[cfg(test)]
mod tests;
