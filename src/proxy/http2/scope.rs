//! What the relay is told about the connection it serves (`Scope`): the server name and port every request
//! must name, the integration's headers ready to add (`Injection`), what its responses are masked with,
//! and where each request's audit record goes.
//!
//! The headers are encoded once for a connection whose secrets are all static. With minted secrets they
//! follow the current tokens: each request compares the store's current values with those the headers
//! were made from (by pointer, no copy), and only a changed token makes them again. The relay is sans-IO
//! and never waits: a secret without a valid token gets its request answered 503 (the wait for a first
//! token, if any, happens before the relay starts).

use std::sync::Arc;

use http::header::{self, HeaderValue};
use zeroize::Zeroizing;

use super::hpack;
use crate::audit::{PolledLog, Record};
use crate::config::{Integration, Secrets};
use crate::proxy::policy::{self, Values};
use crate::redact::profiles::ProfileRedaction;
use crate::secrets::{SecretValue, Store};

/// What the relay needs to know about the connection it serves, and where its audit records go.
pub struct Scope {
    /// The TLS server name the client asked for, and the port it connected to: every request must name them.
    pub sni: String,
    pub port: u16,
    /// The integration's headers, HPACK-encoded (never indexed), and their names in lower case.
    pub injection: Injection,
    /// What responses are masked with (each request takes the needles in force when it starts); `None`
    /// when the integration says `redact = false`.
    pub redaction: Option<Arc<ProfileRedaction>>,
    /// Filled in per request (method, host, path, status, bytes, verdict), counted and logged.
    pub record: Record,
    pub log: PolledLog,
    /// Told of each request's record as it is logged (the sandbox's byte counts).
    pub counted: Box<dyn Fn(&Record) + Send + Sync>,
}

pub struct Injected {
    pub names: Vec<String>,
    pub block: Zeroizing<Vec<u8>>,
    /// The minted tokens the block holds, in the order of `Integration::minted`.
    pub tokens: Vec<Arc<SecretValue>>,
}

impl Injected {
    /// The integration's headers as one HPACK block (the secret ones never indexed), with their names; or
    /// why they cannot be made (a secret that is not loaded). Where responses are masked, the request asks
    /// for a body the relay can scan: `Accept-Encoding: identity`, in place of the client's.
    fn make(integration: &Integration, values: &Values<'_>) -> Result<Injected, String> {
        let mut headers = http::HeaderMap::new();
        policy::inject(&mut headers, integration, values)?;
        if integration.redact {
            headers.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            );
        }
        let mut block = Zeroizing::new(Vec::new());
        let mut names = Vec::new();
        for (name, value) in &headers {
            let sensitive = value.is_sensitive();
            hpack::encode_field(
                name.as_str().as_bytes(),
                value.as_bytes(),
                sensitive,
                &mut block,
            );
            names.push(name.as_str().to_string());
        }
        names.dedup();
        Ok(Injected {
            names,
            block,
            tokens: values.tokens.to_vec(),
        })
    }
}

/// The headers a connection's requests get, made again when a minted token changes.
pub struct Injection {
    /// The headers last made, or why they could not be (a secret that is not loaded).
    current: Result<Arc<Injected>, String>,
    /// What remaking them takes, for an integration that names minted secrets.
    minted: Option<Minted>,
}

struct Minted {
    integration: Integration,
    secrets: Arc<Secrets>,
    store: Store,
}

impl Injection {
    /// The headers of `integration`, with the static `secrets` of its sandbox and the current tokens of
    /// `store`.
    pub fn new(integration: &Integration, secrets: Arc<Secrets>, store: &Store) -> Injection {
        if integration.minted.is_empty() {
            let values = Values {
                integration,
                secrets: &secrets,
                tokens: &[],
            };
            return Injection::fixed(Injected::make(integration, &values));
        }
        let mut injection = Injection {
            current: Err(String::new()),
            minted: Some(Minted {
                integration: integration.clone(),
                secrets,
                store: store.clone(),
            }),
        };
        // Made now if the tokens are there, so that the first request only compares.
        let _ = injection.for_request();
        injection
    }

    /// Headers that never change.
    pub fn fixed(injected: Result<Injected, String>) -> Injection {
        Injection {
            current: injected.map(Arc::new),
            minted: None,
        }
    }

    /// The headers for the next request; else the status and text of the daemon's own answer (500: a
    /// secret not loaded; 503: a minted secret without a valid token).
    pub(super) fn for_request(&mut self) -> Result<&Arc<Injected>, (u16, String)> {
        if let Some(minted) = &self.minted {
            let unchanged = match &self.current {
                Ok(current) => {
                    let mut unchanged = true;
                    for (index, name) in minted.integration.minted.iter().enumerate() {
                        match minted.store.value(name) {
                            Ok(token) => {
                                if !current
                                    .tokens
                                    .get(index)
                                    .is_some_and(|t| Arc::ptr_eq(t, &token))
                                {
                                    unchanged = false;
                                    break;
                                }
                            }
                            Err(why) => {
                                let refusal = policy::unavailable(&why);
                                return Err((refusal.status, refusal.message));
                            }
                        }
                    }
                    unchanged
                }
                Err(_) => false,
            };
            if !unchanged {
                let tokens = match policy::current_tokens(&minted.integration, &minted.store) {
                    Ok(tokens) => tokens,
                    Err(why) => {
                        let refusal = policy::unavailable(&why);
                        return Err((refusal.status, refusal.message));
                    }
                };
                let values = Values {
                    integration: &minted.integration,
                    secrets: &minted.secrets,
                    tokens: &tokens,
                };
                self.current = Injected::make(&minted.integration, &values).map(Arc::new);
            }
        }
        self.current
            .as_ref()
            .map_err(|reason| (500, format!("sandbox: {reason}; see the daemon's log")))
    }

    /// The names of the headers it adds (in lower case), which a request's trailers may not set.
    pub(super) fn names(&self) -> &[String] {
        match &self.current {
            Ok(injected) => &injected.names,
            Err(_) => &[],
        }
    }

    /// An upstream answered 401 to a request that carried `injected`'s tokens.
    pub(super) fn rejected(&self, injected: &Injected) {
        if let Some(minted) = &self.minted {
            policy::rejected(&minted.integration, &minted.store, &injected.tokens);
        }
    }
}

impl Scope {
    /// Counts and logs the record of a request that ended.
    #[inline]
    pub(super) fn finished(&mut self, record: Record) {
        (self.counted)(&record);
        self.log.log(record);
    }

    /// The authority every request gets upstream: the server name, with the port unless it is 443.
    pub(super) fn authority(&self) -> String {
        if self.port == 443 {
            self.sni.clone()
        } else {
            format!("{}:{}", self.sni, self.port)
        }
    }
}
