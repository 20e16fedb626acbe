//! One token fetch, end to end: the provider's request built, sent by `client`, its answer read by the
//! provider. The store calls it through the `Fetcher` trait, which its unit tests replace with a fake.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::secrets::client;
use crate::secrets::definition::{Definition, Minter};
use crate::secrets::exchange::{Failure, FailureKind, Fetched};
use crate::secrets::value::SecretValue;
use crate::secrets::{github, google, oauth2};

pub type FetchFuture<'a> = Pin<Box<dyn Future<Output = Fetched> + Send + 'a>>;

pub trait Fetcher: Send + Sync + 'static {
    /// Fetches a token for `definition`; `refresh_token` is the one to spend for an OAuth2 refresh grant
    /// (the configured one, or the one it was rotated to).
    fn fetch<'a>(
        &'a self,
        definition: &'a Definition,
        refresh_token: Option<&'a SecretValue>,
    ) -> FetchFuture<'a>;
}

/// Fetches over HTTPS, with the TLS settings upstreams use.
pub struct HttpFetcher {
    tls: Mutex<Arc<rustls::ClientConfig>>,
}

impl HttpFetcher {
    /// `tls`: the system roots and `daemon.upstream_ca`, as `proxy::upstream::client_config` makes them.
    pub fn new(tls: Arc<rustls::ClientConfig>) -> HttpFetcher {
        HttpFetcher {
            tls: Mutex::new(tls),
        }
    }

    /// A reload may change `daemon.upstream_ca`.
    pub fn set_tls(&self, tls: Arc<rustls::ClientConfig>) {
        *self.tls.lock().unwrap_or_else(|e| e.into_inner()) = tls;
    }
}

impl Fetcher for HttpFetcher {
    fn fetch<'a>(
        &'a self,
        definition: &'a Definition,
        refresh_token: Option<&'a SecretValue>,
    ) -> FetchFuture<'a> {
        Box::pin(async move {
            let now = SystemTime::now();
            let request = match &definition.minter {
                Minter::GithubApp(app) => github::request(app, now),
                Minter::Oauth2(client) => Ok(oauth2::request(client, refresh_token)),
                Minter::GoogleServiceAccount(account) => google::request(account, now),
            }
            // The key was checked when the config was read; failing now is not something a retry fixes.
            .map_err(|error| Failure {
                kind: FailureKind::Permanent,
                status: None,
                retry_after: None,
                message: format!("building the token request: {error}"),
            })?;
            let tls = self.tls.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let response = client::post(&tls, &request)
                .await
                .map_err(|error| Failure::transient(None, error.to_string()))?;
            let now = SystemTime::now();
            match &definition.minter {
                Minter::GithubApp(_) => github::response(&response, now, &request.mask),
                Minter::Oauth2(client) => {
                    oauth2::response(&response, client.default_lifetime, now, &request.mask)
                }
                Minter::GoogleServiceAccount(_) => google::response(&response, now, &request.mask),
            }
        })
    }
}

#[cfg(test)]
mod tests;
