//! The daemon's TOML configuration (DESIGN, "contract"): parsing and validation with
//! `PATH:LINE:COL: message` errors, loading secret values, host patterns, header templates and
//! choosing a caller's profile.
//!
//! A file per table, or per kind of value that tables hold, each with its TOML shape and its checks and
//! each using only the files named before it: `syntax` (what every table shares: errors that point into
//! the file, names, absolute paths), `daemon` (`[daemon]`), `minted` (the tables of minted secrets,
//! `[secrets.NAME.github_app]` and the like), `secrets` (`[secrets]`, and reading their values), `hosts`
//! (host patterns), `templates` (header values with `${secret:NAME}`), `aws_sigv4` (an integration's AWS
//! signing credentials), `integrations` (`[[integration]]`), `profiles` (`[[profile]]`, and choosing a
//! caller's). Here, on top: the file whole, the checks between tables (the secrets a minted secret's key
//! fields name, the integrations a profile lists), minted secrets resolved against the static values, and
//! `Current`, the config in force.
//!
//! The config imports the spec types of `secrets` (the minted secrets' module), never the other way.

mod aws_sigv4;
mod daemon;
mod hosts;
mod integrations;
mod minted;
mod profiles;
mod secrets;
mod syntax;
mod templates;

pub use aws_sigv4::{is_aws_scope_name, AwsSigV4};
pub use daemon::{DaemonSection, DEFAULT_SOCKET};
pub use hosts::HostPattern;
pub use integrations::{basic_credentials, BasicAuth, Integration};
pub use minted::MintedSecret;
pub use profiles::{Egress, Profile, ProfileError, UnixSocketPattern, UserMatcher};
pub use secrets::{SecretDef, SecretSource, Secrets};
pub use syntax::{ConfigError, Location};
pub use templates::{MissingSecret, SecretValues, Template};

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::Deserialize;
use toml::Spanned;

use crate::secrets::Definition;
use integrations::RawIntegration;
use profiles::RawProfile;
use secrets::RawSource;
use syntax::{check_name, Source};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Where the config was read from; error messages name it.
    pub path: PathBuf,
    pub daemon: DaemonSection,
    pub secrets: BTreeMap<String, SecretDef>,
    pub integrations: Vec<Integration>,
    pub profiles: Vec<Profile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    daemon: DaemonSection,
    #[serde(default)]
    secrets: BTreeMap<Spanned<String>, RawSource>,
    #[serde(default)]
    integration: Vec<RawIntegration>,
    #[serde(default)]
    profile: Vec<RawProfile>,
}

impl Config {
    /// Reads and validates the config; secret values are not read (see [`Config::load_secrets`]).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Validates `text`; `path` is only used in error messages and kept in [`Config::path`].
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let src = Source { path, text };
        let raw: RawConfig = toml::from_str(text).map_err(|e| src.toml_error(&e))?;

        let mut secrets = BTreeMap::new();
        for (name, source) in raw.secrets {
            check_name("secret", name.get_ref()).map_err(|m| src.at(name.span(), m))?;
            let location = src.location(name.span().start);
            let source = match source {
                RawSource::Static(source) => source,
                RawSource::Minted(spec, spans) => SecretSource::Minted(Box::new(MintedSecret {
                    spec,
                    fields: spans
                        .into_iter()
                        .map(|(field, span)| (field, src.location(span.start)))
                        .collect(),
                })),
            };
            secrets.insert(name.into_inner(), SecretDef { source, location });
        }
        check_key_fields(&src, &secrets)?;

        let mut integrations: Vec<Integration> = Vec::new();
        for raw in raw.integration {
            let name = raw.name.get_ref();
            check_name("integration", name).map_err(|m| src.at(raw.name.span(), m))?;
            if integrations.iter().any(|i| i.name == *name) {
                return Err(src.at(
                    raw.name.span(),
                    format!("integration \"{name}\" is defined twice"),
                ));
            }
            integrations.push(raw.validate(&src, &secrets)?);
        }

        let mut profiles: Vec<Profile> = Vec::new();
        for raw in raw.profile {
            let name = raw.name.get_ref();
            check_name("profile", name).map_err(|m| src.at(raw.name.span(), m))?;
            if profiles.iter().any(|p| p.name == *name) {
                return Err(src.at(
                    raw.name.span(),
                    format!("profile \"{name}\" is defined twice"),
                ));
            }
            let names = profile_integrations(&src, name, raw.integrations, &integrations)?;
            profiles.push(Profile {
                name: raw.name.into_inner(),
                integrations: names,
                users: raw.users,
                egress: raw.egress,
                allow_hosts: raw.allow_hosts,
                unix_sockets: raw.unix_sockets,
            });
        }

        Ok(Config {
            path: path.to_owned(),
            daemon: raw.daemon,
            secrets,
            integrations,
            profiles,
        })
    }

    /// Reads every static secret's value from its source.
    pub fn load_secrets(&self) -> Result<Secrets, ConfigError> {
        let templated: BTreeSet<&str> = self
            .integrations
            .iter()
            .flat_map(Integration::templates)
            .flat_map(Template::secret_names)
            .collect();
        let key_material: BTreeSet<&str> = self
            .minted()
            .flat_map(|(_, _, minted)| minted.spec.secret_names())
            .map(|(_, name)| name)
            .filter(|name| !templated.contains(name))
            .collect();
        Secrets::load(&self.path, &self.secrets, &key_material)
    }

    /// The minted secrets made ready to mint from, their key material taken from `secrets` (this
    /// config's, loaded): RSA keys and JSON key files are checked here, and URLs are https. A rotated
    /// refresh token is kept in `daemon.state_dir`.
    pub fn minted_definitions(&self, secrets: &Secrets) -> Result<Vec<Definition>, ConfigError> {
        let value = |name: &str| secrets.get(name).map(|value| value.expose());
        self.minted()
            .map(|(name, def, minted)| {
                minted
                    .spec
                    .resolve(name, &value, &self.daemon.state_dir)
                    .map_err(|error| ConfigError::At {
                        path: self.path.clone(),
                        location: minted.field_location(error.field()).unwrap_or(def.location),
                        message: format!("secret \"{name}\": {error}"),
                    })
            })
            .collect()
    }

    fn minted(&self) -> impl Iterator<Item = (&str, &SecretDef, &MintedSecret)> {
        self.secrets
            .iter()
            .filter_map(|(name, def)| match &def.source {
                SecretSource::Minted(minted) => Some((name.as_str(), def, &**minted)),
                _ => None,
            })
    }

    /// Without a request: "default" if the user may use it, else the first profile they may use.
    pub fn select_profile(
        &self,
        requested: Option<&str>,
        uid: u32,
        user: &str,
        groups: &[String],
    ) -> Result<&Profile, ProfileError> {
        profiles::select(&self.profiles, &self.path, requested, uid, user, groups)
    }

    pub fn integrations_of<'a>(
        &'a self,
        profile: &'a Profile,
    ) -> impl Iterator<Item = &'a Integration> + 'a {
        profile
            .integrations
            .iter()
            .filter_map(|name| self.integrations.iter().find(|i| i.name == *name))
    }
}

/// Every field of a minted secret that holds key material names a static secret of `[secrets]` (one the
/// daemon reads, not one it mints).
fn check_key_fields(
    src: &Source,
    secrets: &BTreeMap<String, SecretDef>,
) -> Result<(), ConfigError> {
    for (name, def) in secrets {
        let SecretSource::Minted(minted) = &def.source else {
            continue;
        };
        for (field, named) in minted.spec.secret_names() {
            let why = match secrets.get(named).map(|named| &named.source) {
                None => "is not defined in [secrets]",
                Some(SecretSource::Minted(_)) => "is minted itself",
                Some(_) => continue,
            };
            return Err(ConfigError::At {
                path: src.path.to_owned(),
                location: minted.field_location(field).unwrap_or(def.location),
                message: format!(
                    "secret \"{name}\": {field} names secret \"{named}\", which {why}; key material comes \
                     from a secret with env, file or credential"
                ),
            });
        }
    }
    Ok(())
}

/// The integrations that profile `name` lists: each defined, listed once, and no two of them
/// matching one host name.
fn profile_integrations(
    src: &Source,
    name: &str,
    listed: Vec<Spanned<String>>,
    integrations: &[Integration],
) -> Result<Vec<String>, ConfigError> {
    let mut names: Vec<String> = Vec::new();
    for integration in listed {
        let wanted = integration.get_ref();
        if !integrations.iter().any(|i| i.name == *wanted) {
            let defined = if integrations.is_empty() {
                "no [[integration]] is defined".to_owned()
            } else {
                let names: Vec<&str> = integrations.iter().map(|i| i.name.as_str()).collect();
                format!("defined: {}", names.join(", "))
            };
            return Err(src.at(
                integration.span(),
                format!("unknown integration \"{wanted}\" in profile \"{name}\"; {defined}"),
            ));
        }
        if names.contains(wanted) {
            return Err(src.at(
                integration.span(),
                format!("integration \"{wanted}\" is listed twice in profile \"{name}\""),
            ));
        }
        // A connection takes one integration's headers: with two for a name, which one would
        // depend on the order in the file.
        let hosts_of = |wanted: &str| -> &[HostPattern] {
            integrations
                .iter()
                .find(|i| i.name == wanted)
                .map_or(&[], |i| &i.hosts)
        };
        for earlier in &names {
            let clash = hosts_of(wanted)
                .iter()
                .find(|host| hosts_of(earlier).iter().any(|other| host.overlaps(other)));
            if let Some(host) = clash {
                return Err(src.at(
                    integration.span(),
                    format!(
                        "integrations \"{earlier}\" and \"{wanted}\" of profile \"{name}\" both match \
                         {host}; a name may have one integration per profile"
                    ),
                ));
            }
        }
        names.push(integration.into_inner());
    }
    Ok(names)
}

/// The config in force and its secrets, swapped together on reload: a sandbox never gets the integrations
/// of one config and the secrets of another.
pub struct Current(RwLock<(Arc<Config>, Arc<Secrets>)>);

impl Current {
    pub fn new(config: Arc<Config>, secrets: Arc<Secrets>) -> Current {
        Current(RwLock::new((config, secrets)))
    }

    pub fn get(&self) -> (Arc<Config>, Arc<Secrets>) {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn config(&self) -> Arc<Config> {
        self.get().0
    }

    pub fn set(&self, config: Arc<Config>, secrets: Arc<Secrets>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = (config, secrets);
    }
}

#[cfg(test)]
mod tests;
