//! `[[profile]]`: what a sandbox gets (integrations, egress, other hosts it may reach) and who may ask
//! for it. The daemon knows its caller only from the socket's peer credentials, so a profile names
//! users and groups; a caller refused one is told which profiles they may use instead.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};
use thiserror::Error;
use toml::Spanned;

use super::hosts::HostPattern;
use super::syntax::parse_str;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub name: String,
    /// Names of integrations, all defined in the config.
    pub integrations: Vec<String>,
    /// Empty: nobody may use the profile.
    pub users: Vec<UserMatcher>,
    pub egress: Egress,
    pub allow_hosts: Vec<HostPattern>,
}

impl Profile {
    pub fn allows(&self, user: &str, groups: &[String]) -> bool {
        self.users.iter().any(|m| match m {
            UserMatcher::Any => true,
            UserMatcher::User(name) => name == user,
            UserMatcher::Group(group) => groups.contains(group),
        })
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Egress {
    /// Traffic to hosts without an integration is relayed untouched.
    #[default]
    Allow,
    /// Only the hosts of the profile's integrations and its `allow_hosts` are reachable, at the addresses
    /// the sandbox's DNS lookups returned for them (`dns::Resolved`).
    Deny,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserMatcher {
    Any,
    User(String),
    Group(String),
}

impl UserMatcher {
    fn parse(s: &str) -> Result<Self, String> {
        if s == "*" {
            return Ok(UserMatcher::Any);
        }
        let name = s.strip_prefix('@').unwrap_or(s);
        if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "invalid user \"{s}\"; expected a user name, \"@group\" or \"*\""
            ));
        }
        Ok(if name.len() < s.len() {
            UserMatcher::Group(name.to_owned())
        } else {
            UserMatcher::User(name.to_owned())
        })
    }
}

impl<'de> Deserialize<'de> for UserMatcher {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_str(d, "a user name, \"@group\" or \"*\"", UserMatcher::parse)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProfile {
    pub(super) name: Spanned<String>,
    #[serde(default)]
    pub(super) integrations: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) users: Vec<UserMatcher>,
    #[serde(default)]
    pub(super) egress: Egress,
    #[serde(default)]
    pub(super) allow_hosts: Vec<HostPattern>,
}

#[derive(Debug, Error)]
pub enum ProfileError {
    #[error("profile \"{name}\" does not exist; {}", may_use(.user, .usable))]
    Unknown {
        name: String,
        user: String,
        usable: Vec<String>,
    },
    #[error("profile \"{name}\" does not allow user \"{user}\"; {}", may_use(.user, .usable))]
    NotAllowed {
        name: String,
        user: String,
        usable: Vec<String>,
    },
    #[error("no [[profile]] in {} allows user \"{user}\"", .path.display())]
    NoneAllowed { path: PathBuf, user: String },
}

fn may_use(user: &str, usable: &[String]) -> String {
    if usable.is_empty() {
        format!("user \"{user}\" may use no profile")
    } else {
        format!("user \"{user}\" may use: {}", usable.join(", "))
    }
}

/// Without a request: "default" if the user may use it, else the first profile they may use. `path`
/// is the config's, named when no profile allows the user.
pub(super) fn select<'a>(
    profiles: &'a [Profile],
    path: &Path,
    requested: Option<&str>,
    user: &str,
    groups: &[String],
) -> Result<&'a Profile, ProfileError> {
    let mut usable = profiles.iter().filter(|p| p.allows(user, groups));
    let Some(name) = requested else {
        return usable
            .clone()
            .find(|p| p.name == "default")
            .or_else(|| usable.next())
            .ok_or_else(|| ProfileError::NoneAllowed {
                path: path.to_owned(),
                user: user.to_owned(),
            });
    };
    let found = profiles.iter().find(|p| p.name == name);
    if let Some(profile) = found.filter(|p| p.allows(user, groups)) {
        return Ok(profile);
    }
    let (name, user) = (name.to_owned(), user.to_owned());
    let usable = usable.map(|p| p.name.clone()).collect();
    Err(match found {
        Some(_) => ProfileError::NotAllowed { name, user, usable },
        None => ProfileError::Unknown { name, user, usable },
    })
}

#[cfg(test)]
mod tests;
