//! The minted secrets as the daemon runs them: one `secrets::Store`, fetching over HTTPS with the roots
//! upstreams are verified against (the system's and `daemon.upstream_ca`) from the daemon's own network
//! namespace, its definitions given at start and on every reload. What the store reports goes to the audit
//! log (a line of kind `token` per fetch; the daemon log has its own line from the store) and, for a
//! changed value, to redaction (`Redactions::value_changed`), before the value is used.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::audit::{Audit, Kind, TokenRecord, TokenVerdict};
use crate::redact::profiles::Redactions;
use crate::secrets::store::{FetchEvent, FetchVerdict, ValueChange};
use crate::secrets::{Definition, HttpFetcher, Observer, Store};

/// The store and the fetcher whose TLS settings a reload may change.
pub struct Minted {
    pub store: Store,
    fetcher: Arc<HttpFetcher>,
}

impl Minted {
    /// Starts fetching the first tokens of `definitions` in the background: the daemon is ready without
    /// them. Runs its refresh tasks on the current (the daemon's) runtime.
    pub fn start(
        tls: Arc<rustls::ClientConfig>,
        audit: Audit,
        redactions: Arc<Redactions>,
        definitions: Vec<Definition>,
    ) -> Minted {
        let fetcher = Arc::new(HttpFetcher::new(tls));
        let observer = AuditObserver { audit, redactions };
        let store = Store::new(fetcher.clone(), Arc::new(observer));
        store.reload(definitions);
        Minted { store, fetcher }
    }

    /// A reload: new roots for the token endpoints, and the new definitions (an unchanged one keeps its
    /// token).
    pub fn reload(&self, tls: Arc<rustls::ClientConfig>, definitions: Vec<Definition>) {
        self.fetcher.set_tls(tls);
        self.store.reload(definitions);
    }
}

/// A replaced token whose expiry the endpoint did not say stays masked this long: OAuth2's default
/// lifetime, the longest a token of unknown expiry is assumed to open anything.
const UNKNOWN_EXPIRY: Duration = Duration::from_secs(3600);

struct AuditObserver {
    audit: Audit,
    redactions: Arc<Redactions>,
}

impl Observer for AuditObserver {
    fn fetched(&self, event: &FetchEvent) {
        self.audit.log_token(TokenRecord {
            time: std::time::SystemTime::now(),
            kind: Kind::Token,
            secret: event.secret.clone(),
            source: event.source.as_str(),
            endpoint: event.endpoint_host.clone(),
            status: event.status,
            verdict: match event.verdict {
                FetchVerdict::Minted => TokenVerdict::Minted,
                FetchVerdict::Error => TokenVerdict::Error,
            },
            expires: event.expires_at,
            duration_ms: event.duration.as_millis() as u64,
            error: event.error.clone(),
        });
    }

    /// Every live sandbox that injects the secret masks the new value from now on, and the one it
    /// replaces until that one expires; an error keeps the new value unused (it would not be masked).
    fn value_changed(&self, change: &ValueChange<'_>) -> Result<(), String> {
        let Some(current) = change.current else {
            // A reload removed the secret: nothing injects it any more.
            return Ok(());
        };
        let previous_expires_at = match change.previous_expires_at {
            Some(at) => {
                Instant::now()
                    + at.duration_since(SystemTime::now())
                        .unwrap_or(Duration::ZERO)
            }
            None => Instant::now() + UNKNOWN_EXPIRY,
        };
        self.redactions
            .value_changed(
                change.secret,
                current.expose(),
                change.previous.map(|previous| previous.expose()),
                previous_expires_at,
            )
            .map_err(|error| format!("redaction cannot take the new value: {error}"))
    }
}
