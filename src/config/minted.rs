//! `[secrets.NAME.github_app]`, `[secrets.NAME.oauth2]` and `[secrets.NAME.google_service_account]`: the
//! TOML shapes of minted secrets (DESIGN, "Minted secrets"), read into `secrets::MintSpec` together with
//! where each field was written. A minted secret is checked in two steps: its shape here, as the file is
//! read; its key material (an RSA key, a JSON key file) and URLs once the values of `[secrets]` are loaded
//! (`MintSpec::resolve`), whose errors name a field: the spans kept here turn that field back into a
//! `PATH:LINE:COL`. Uses only `syntax`.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use toml::Spanned;

use super::syntax::Location;
use crate::secrets::definition::{GithubAppSpec, GoogleSpec, GrantKind, MintSpec, Oauth2Spec};
use crate::secrets::oauth2::ClientAuth;

/// The kinds of minted secret, as the config names their tables.
pub(super) const KINDS: [&str; 3] = ["github_app", "oauth2", "google_service_account"];

/// The byte span of each field as written, by field name.
pub(super) type Spans = Vec<(&'static str, Range<usize>)>;

/// A minted secret as the config defines it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MintedSecret {
    pub spec: MintSpec,
    /// Where each field is written: errors found when the definition is resolved point there.
    pub fields: Vec<(&'static str, Location)>,
}

impl MintedSecret {
    pub fn field_location(&self, field: &str) -> Option<Location> {
        self.fields
            .iter()
            .find(|(name, _)| *name == field)
            .map(|(_, location)| *location)
    }
}

/// Reads the table of minted secret `kind` (one of `KINDS`) from a `[secrets]` entry.
pub(super) fn read<'de, A: de::MapAccess<'de>>(
    kind: &str,
    map: &mut A,
) -> Result<(MintSpec, Spans), A::Error> {
    let mut spans = Spans::new();
    let spec = match kind {
        "github_app" => map.next_value::<RawGithubApp>()?.into_spec(&mut spans),
        "oauth2" => map.next_value::<RawOauth2>()?.into_spec(&mut spans),
        "google_service_account" => map.next_value::<RawGoogle>()?.into_spec(&mut spans),
        other => return Err(de::Error::unknown_field(other, &KINDS)),
    };
    Ok((spec, spans))
}

/// Takes a field's value and records where it was written.
fn take<T>(spans: &mut Spans, field: &'static str, value: Spanned<T>) -> T {
    spans.push((field, value.span()));
    value.into_inner()
}

fn take_opt<T>(spans: &mut Spans, field: &'static str, value: Option<Spanned<T>>) -> Option<T> {
    value.map(|value| take(spans, field, value))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGithubApp {
    app_id: Spanned<AppId>,
    installation_id: Spanned<u64>,
    private_key: Spanned<String>,
    repositories: Option<Spanned<Vec<String>>>,
    permissions: Option<Spanned<BTreeMap<String, String>>>,
    api: Option<Spanned<String>>,
}

impl RawGithubApp {
    fn into_spec(self, spans: &mut Spans) -> MintSpec {
        MintSpec::GithubApp(GithubAppSpec {
            app_id: take(spans, "app_id", self.app_id).0,
            installation_id: take(spans, "installation_id", self.installation_id),
            private_key: take(spans, "private_key", self.private_key),
            repositories: take_opt(spans, "repositories", self.repositories).unwrap_or_default(),
            permissions: take_opt(spans, "permissions", self.permissions).unwrap_or_default(),
            api: take_opt(spans, "api", self.api),
        })
    }
}

/// The App ID as written: GitHub shows it as a number, the client ID (which may stand in for it) is
/// text; either is taken.
struct AppId(String);

impl<'de> Deserialize<'de> for AppId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct AppIdVisitor;
        impl Visitor<'_> for AppIdVisitor {
            type Value = AppId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("the App ID (\"123456\" or 123456) or the App's client ID")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<AppId, E> {
                Ok(AppId(v.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<AppId, E> {
                Ok(AppId(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<AppId, E> {
                Ok(AppId(v.to_string()))
            }
        }
        d.deserialize_any(AppIdVisitor)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOauth2 {
    token_url: Spanned<String>,
    client_id: Spanned<String>,
    client_secret: Option<Spanned<String>>,
    grant: Option<Spanned<RawGrant>>,
    refresh_token: Option<Spanned<String>>,
    auth: Option<Spanned<RawAuth>>,
    scope: Option<Spanned<String>>,
    params: Option<Spanned<BTreeMap<String, String>>>,
    /// Seconds; the lifetime of a token whose answer has no `expires_in`.
    default_expires_in: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum RawGrant {
    ClientCredentials,
    RefreshToken,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum RawAuth {
    Basic,
    Post,
}

impl RawOauth2 {
    fn into_spec(self, spans: &mut Spans) -> MintSpec {
        let grant = match take_opt(spans, "grant", self.grant) {
            None | Some(RawGrant::ClientCredentials) => GrantKind::ClientCredentials,
            Some(RawGrant::RefreshToken) => GrantKind::RefreshToken,
        };
        let auth = match take_opt(spans, "auth", self.auth) {
            None | Some(RawAuth::Basic) => ClientAuth::Basic,
            Some(RawAuth::Post) => ClientAuth::Post,
        };
        MintSpec::Oauth2(Oauth2Spec {
            token_url: take(spans, "token_url", self.token_url),
            client_id: take(spans, "client_id", self.client_id),
            client_secret: take_opt(spans, "client_secret", self.client_secret),
            grant,
            refresh_token: take_opt(spans, "refresh_token", self.refresh_token),
            auth,
            scope: take_opt(spans, "scope", self.scope),
            params: take_opt(spans, "params", self.params).unwrap_or_default(),
            default_expires_in: take_opt(spans, "default_expires_in", self.default_expires_in)
                .map(Duration::from_secs),
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGoogle {
    key: Spanned<String>,
    scopes: Spanned<Vec<String>>,
}

impl RawGoogle {
    fn into_spec(self, spans: &mut Spans) -> MintSpec {
        MintSpec::GoogleServiceAccount(GoogleSpec {
            key: take(spans, "key", self.key),
            scopes: take(spans, "scopes", self.scopes),
        })
    }
}

#[cfg(test)]
mod tests;
