//! The minted secrets as the daemon runs them: one `secrets::Store`, fetching over HTTPS with the roots
//! upstreams are verified against (the system's and `daemon.upstream_ca`) from the daemon's own network
//! namespace, its definitions given at start and on every reload. What the store reports goes to the audit
//! log (a line of kind `token` per fetch; the daemon log has its own line from the store) and, for a
//! changed value, to redaction's hook.

use std::sync::Arc;

use crate::audit::{Audit, Kind, TokenRecord, TokenVerdict};
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
        definitions: Vec<Definition>,
    ) -> Minted {
        let fetcher = Arc::new(HttpFetcher::new(tls));
        let store = Store::new(fetcher.clone(), Arc::new(AuditObserver { audit }));
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

struct AuditObserver {
    audit: Audit,
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

    /// Redaction's hook (issue 22 connects `Redactions::value_changed` here): it is to mask both values
    /// while the previous one is still valid upstream, and its error keeps the new value unused. Until
    /// then the change is logged, never the values.
    fn value_changed(&self, change: &ValueChange<'_>) -> Result<(), String> {
        tracing::debug!(
            secret = change.secret,
            current = change.current.is_some(),
            previous = change.previous.is_some(),
            "a minted secret's value changed"
        );
        Ok(())
    }
}
