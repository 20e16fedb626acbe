//! What the config says about a minted secret (`[secrets.NAME.github_app]`, `.oauth2`,
//! `.google_service_account`) and the same made ready to mint from: key fields resolved to the values of
//! the `[secrets]` they name, PEM keys and key files checked, URLs checked to be https.
//!
//! The config module deserializes into the `*Spec` types (with its own spans for `PATH:LINE:COL` errors)
//! and calls `MintSpec::resolve` once static secrets are loaded; `DefinitionError::field` says which field
//! an error is about. Two definitions are equal when their specs and root credentials are: a reload keeps
//! the token of a secret whose definition is equal.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use crate::secrets::exchange::{Endpoint, EndpointError};
use crate::secrets::github::{self, GithubApp};
use crate::secrets::google::{self, GoogleServiceAccount, KeyFileError};
use crate::secrets::jwt::{KeyError, RsaKey};
use crate::secrets::oauth2::{self, ClientAuth, Grant, Oauth2};
use crate::secrets::value::SecretValue;

/// The kinds of minted secret, as the config and `sandbox secrets` name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceKind {
    GithubApp,
    Oauth2,
    GoogleServiceAccount,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::GithubApp => "github_app",
            SourceKind::Oauth2 => "oauth2",
            SourceKind::GoogleServiceAccount => "google_service_account",
        }
    }
}

/// `[secrets.NAME.<kind>]` as written. Fields that hold key material name a secret of `[secrets]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MintSpec {
    GithubApp(GithubAppSpec),
    Oauth2(Oauth2Spec),
    GoogleServiceAccount(GoogleSpec),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GithubAppSpec {
    /// The App ID or the App's client ID.
    pub app_id: String,
    pub installation_id: u64,
    /// Names the secret holding the App's PEM key.
    pub private_key: String,
    pub repositories: Vec<String>,
    pub permissions: BTreeMap<String, String>,
    /// Default `https://api.github.com`; GitHub Enterprise Server's is `https://HOST/api/v3`.
    pub api: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Oauth2Spec {
    pub token_url: String,
    pub client_id: String,
    /// Names a secret; None for a public client.
    pub client_secret: Option<String>,
    pub grant: GrantKind,
    /// Names a secret; required by, and only taken with, `grant = "refresh_token"`.
    pub refresh_token: Option<String>,
    pub auth: ClientAuth,
    pub scope: Option<String>,
    pub params: BTreeMap<String, String>,
    /// The lifetime of a token whose answer has no `expires_in`; default one hour.
    pub default_expires_in: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GrantKind {
    #[default]
    ClientCredentials,
    RefreshToken,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoogleSpec {
    /// Names the secret holding the service account's JSON key file.
    pub key: String,
    pub scopes: Vec<String>,
}

/// A minted secret ready to mint from.
#[derive(Debug, PartialEq, Eq)]
pub struct Definition {
    pub name: String,
    pub minter: Minter,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Minter {
    GithubApp(GithubApp),
    Oauth2(Oauth2),
    GoogleServiceAccount(GoogleServiceAccount),
}

impl Definition {
    pub fn kind(&self) -> SourceKind {
        match self.minter {
            Minter::GithubApp(_) => SourceKind::GithubApp,
            Minter::Oauth2(_) => SourceKind::Oauth2,
            Minter::GoogleServiceAccount(_) => SourceKind::GoogleServiceAccount,
        }
    }

    pub fn endpoint(&self) -> &Endpoint {
        match &self.minter {
            Minter::GithubApp(app) => &app.endpoint,
            Minter::Oauth2(client) => &client.endpoint,
            Minter::GoogleServiceAccount(account) => &account.endpoint,
        }
    }
}

/// Why a minted secret's definition cannot be used; `field()` is the config key it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DefinitionError {
    #[error("{field}: secret \"{secret}\" is not defined in [secrets] (key material comes from a secret with env, file or credential)")]
    UnknownSecret { field: &'static str, secret: String },
    #[error("{field}: secret \"{secret}\" is not an RSA private key: {why}")]
    Key {
        field: &'static str,
        secret: String,
        why: KeyError,
    },
    #[error("{field}: secret \"{secret}\" is not a service account key file: {why}")]
    KeyFile {
        field: &'static str,
        secret: String,
        why: KeyFileError,
    },
    #[error("{field}: {why}")]
    Url {
        field: &'static str,
        why: EndpointError,
    },
    #[error("{field}: {why}")]
    Invalid { field: &'static str, why: String },
}

impl DefinitionError {
    pub fn field(&self) -> &'static str {
        match self {
            DefinitionError::UnknownSecret { field, .. }
            | DefinitionError::Key { field, .. }
            | DefinitionError::KeyFile { field, .. }
            | DefinitionError::Url { field, .. }
            | DefinitionError::Invalid { field, .. } => field,
        }
    }
}

impl MintSpec {
    pub fn kind(&self) -> SourceKind {
        match self {
            MintSpec::GithubApp(_) => SourceKind::GithubApp,
            MintSpec::Oauth2(_) => SourceKind::Oauth2,
            MintSpec::GoogleServiceAccount(_) => SourceKind::GoogleServiceAccount,
        }
    }

    /// The `[secrets]` this one's key material comes from, with the field naming each: for the config
    /// to check that they exist (and are not minted themselves) before any value is read.
    pub fn secret_names(&self) -> Vec<(&'static str, &str)> {
        match self {
            MintSpec::GithubApp(spec) => vec![("private_key", spec.private_key.as_str())],
            MintSpec::Oauth2(spec) => [
                ("client_secret", spec.client_secret.as_deref()),
                ("refresh_token", spec.refresh_token.as_deref()),
            ]
            .into_iter()
            .filter_map(|(field, name)| Some((field, name?)))
            .collect(),
            MintSpec::GoogleServiceAccount(spec) => vec![("key", spec.key.as_str())],
        }
    }

    /// The definition of secret `name`, with key material from `secret` (a static secret's value by
    /// name) and a rotated refresh token kept in `state_dir/NAME`.
    pub fn resolve<'v>(
        &self,
        name: &str,
        secret: &dyn Fn(&str) -> Option<&'v str>,
        state_dir: &Path,
    ) -> Result<Definition, DefinitionError> {
        let value = |field: &'static str, secret_name: &str| {
            secret(secret_name)
                .map(|value| SecretValue::new(value.to_owned()))
                .ok_or_else(|| DefinitionError::UnknownSecret {
                    field,
                    secret: secret_name.to_owned(),
                })
        };
        let url = |field: &'static str, text: &str| {
            Endpoint::parse(text).map_err(|why| DefinitionError::Url { field, why })
        };
        let minter = match self {
            MintSpec::GithubApp(spec) => {
                if spec.app_id.trim().is_empty() {
                    return Err(invalid("app_id", "empty; give the App ID or client ID"));
                }
                let private_key = value("private_key", &spec.private_key)?;
                RsaKey::from_pem(private_key.expose()).map_err(|why| DefinitionError::Key {
                    field: "private_key",
                    secret: spec.private_key.clone(),
                    why,
                })?;
                let api = url("api", spec.api.as_deref().unwrap_or(github::DEFAULT_API))?;
                let path = format!("/app/installations/{}/access_tokens", spec.installation_id);
                Minter::GithubApp(GithubApp {
                    endpoint: api
                        .join(&path)
                        .map_err(|why| DefinitionError::Url { field: "api", why })?,
                    app_id: spec.app_id.clone(),
                    private_key,
                    repositories: spec.repositories.clone(),
                    permissions: spec.permissions.clone(),
                })
            }
            MintSpec::Oauth2(spec) => {
                Minter::Oauth2(resolve_oauth2(spec, name, &value, state_dir)?)
            }
            MintSpec::GoogleServiceAccount(spec) => {
                if spec.scopes.is_empty() {
                    return Err(invalid(
                        "scopes",
                        "empty; Google needs at least one, as in [\"https://www.googleapis.com/auth/cloud-platform\"]",
                    ));
                }
                let key_file = value("key", &spec.key)?;
                let parsed = google::parse_key_file(key_file.expose()).map_err(|why| {
                    DefinitionError::KeyFile {
                        field: "key",
                        secret: spec.key.clone(),
                        why,
                    }
                })?;
                Minter::GoogleServiceAccount(GoogleServiceAccount {
                    endpoint: parsed.endpoint,
                    client_email: parsed.client_email,
                    key_id: parsed.key_id,
                    key_file,
                    scopes: spec.scopes.clone(),
                })
            }
        };
        Ok(Definition {
            name: name.to_owned(),
            minter,
        })
    }
}

fn resolve_oauth2(
    spec: &Oauth2Spec,
    name: &str,
    value: &dyn Fn(&'static str, &str) -> Result<SecretValue, DefinitionError>,
    state_dir: &Path,
) -> Result<Oauth2, DefinitionError> {
    let endpoint = Endpoint::parse(&spec.token_url).map_err(|why| DefinitionError::Url {
        field: "token_url",
        why,
    })?;
    if spec.client_id.is_empty() {
        return Err(invalid("client_id", "empty"));
    }
    if let Some(reserved) = spec
        .params
        .keys()
        .find(|param| oauth2::RESERVED_PARAMS.contains(&param.as_str()))
    {
        return Err(invalid(
            "params",
            format!("\"{reserved}\" is set by the daemon itself; use the field of that name"),
        ));
    }
    let grant = match (spec.grant, &spec.refresh_token) {
        (GrantKind::ClientCredentials, None) => Grant::ClientCredentials,
        (GrantKind::ClientCredentials, Some(_)) => {
            return Err(invalid(
                "refresh_token",
                "only used with grant = \"refresh_token\"",
            ))
        }
        (GrantKind::RefreshToken, None) => {
            return Err(invalid(
                "grant",
                "grant = \"refresh_token\" needs refresh_token = \"SECRET\", the secret holding the first refresh token",
            ))
        }
        (GrantKind::RefreshToken, Some(secret)) => Grant::RefreshToken {
            configured: value("refresh_token", secret)?,
            state_file: state_dir.join(name),
        },
    };
    let client_secret = spec
        .client_secret
        .as_deref()
        .map(|secret| value("client_secret", secret))
        .transpose()?;
    let default_lifetime = match spec.default_expires_in {
        Some(lifetime) if lifetime.is_zero() => {
            return Err(invalid(
                "default_expires_in",
                "zero; a token must live a while",
            ))
        }
        Some(lifetime) => lifetime,
        None => oauth2::DEFAULT_LIFETIME,
    };
    Ok(Oauth2 {
        endpoint,
        client_id: spec.client_id.clone(),
        client_secret,
        grant,
        auth: spec.auth,
        scope: spec.scope.clone(),
        params: spec.params.clone(),
        default_lifetime,
    })
}

fn invalid(field: &'static str, why: impl Into<String>) -> DefinitionError {
    DefinitionError::Invalid {
        field,
        why: why.into(),
    }
}

#[cfg(test)]
mod tests;
