//! `[[profile]]`: what a sandbox gets (integrations, egress, other hosts it may reach, host Unix sockets it
//! may connect to) and who may ask for it. The daemon knows its caller only from the socket's peer
//! credentials, so a profile names users and groups; a caller refused one is told which profiles they may
//! use instead. Root is a caller apart: only a profile that names it gets it (invariant 4).

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
    /// Host Unix sockets the sandbox may connect to (`sandbox::unix_sockets`); none by default.
    pub unix_sockets: Vec<UnixSocketPattern>,
}

impl Profile {
    /// Whether the caller may use the profile. uid 0 only by name: "*" and groups do not include it, since
    /// root without capabilities still owns, reads and writes every file root owns on the host.
    pub fn allows(&self, uid: u32, user: &str, groups: &[String]) -> bool {
        self.users.iter().any(|m| match m {
            UserMatcher::User(name) => name == user,
            UserMatcher::Any => uid != 0,
            UserMatcher::Group(group) => uid != 0 && groups.contains(group),
        })
    }
}

/// A host Unix socket a profile lets its sandboxes reach: an exact absolute path in which `%U` stands for
/// the caller's uid. Nothing else is special: no wildcards (a pattern wide enough to match a Docker or a
/// systemd socket by accident would open what the profile meant to keep closed), no `.` or `..`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixSocketPattern(String);

impl UnixSocketPattern {
    fn parse(s: &str) -> Result<Self, String> {
        let invalid = |why: &str| {
            Err(format!(
                "invalid unix_sockets entry \"{s}\": {why}; give an exact absolute path, with %U for the \
                 caller's uid"
            ))
        };
        let Some(relative) = s.strip_prefix('/') else {
            return invalid("not an absolute path");
        };
        if relative.is_empty() {
            return invalid("\"/\" is a directory");
        }
        if s.contains('\0') {
            return invalid("it holds a NUL byte");
        }
        for component in relative.split('/') {
            match component {
                "" => return invalid("empty path component (\"//\" or a trailing \"/\")"),
                "." | ".." => return invalid("\".\" and \"..\" are not allowed"),
                _ => {}
            }
        }
        if s.replace("%U", "").contains('%') {
            return invalid("%U (the caller's uid) is the only % sequence");
        }
        Ok(UnixSocketPattern(s.to_owned()))
    }

    /// The path for the caller `uid`.
    pub fn for_uid(&self, uid: u32) -> PathBuf {
        PathBuf::from(self.0.replace("%U", &uid.to_string()))
    }
}

impl<'de> Deserialize<'de> for UnixSocketPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_str(
            d,
            "an absolute path (%U: the caller's uid)",
            UnixSocketPattern::parse,
        )
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
    #[serde(default)]
    pub(super) unix_sockets: Vec<UnixSocketPattern>,
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
    #[error("profile \"{name}\" does not name \"{user}\" in its users; {ROOT_BY_NAME_ONLY}; to allow it, add \"{user}\" to the users of profile \"{name}\"")]
    RootNotNamed { name: String, user: String },
    #[error("no [[profile]] in {} names \"{user}\" in its users; {ROOT_BY_NAME_ONLY}; to allow it, add \"{user}\" to the users of a profile", .path.display())]
    NoProfileNamesRoot { path: PathBuf, user: String },
}

const ROOT_BY_NAME_ONLY: &str =
    "uid 0 gets a sandbox only from a profile that names it (\"*\" and groups \
    do not include it: without capabilities, root still reads and writes every file root owns)";

fn may_use(user: &str, usable: &[String]) -> String {
    if usable.is_empty() {
        format!("user \"{user}\" may use no profile")
    } else {
        format!("user \"{user}\" may use: {}", usable.join(", "))
    }
}

/// Without a request: "default" if the user may use it, else the first profile they may use. `path`
/// is the config's, named when no profile allows the user. A refused root is told how to allow it.
pub(super) fn select<'a>(
    profiles: &'a [Profile],
    path: &Path,
    requested: Option<&str>,
    uid: u32,
    user: &str,
    groups: &[String],
) -> Result<&'a Profile, ProfileError> {
    let mut usable = profiles.iter().filter(|p| p.allows(uid, user, groups));
    let (path, user_name) = (path.to_owned(), user.to_owned());
    let Some(name) = requested else {
        return usable
            .clone()
            .find(|p| p.name == "default")
            .or_else(|| usable.next())
            .ok_or(if uid == 0 {
                ProfileError::NoProfileNamesRoot {
                    path,
                    user: user_name,
                }
            } else {
                ProfileError::NoneAllowed {
                    path,
                    user: user_name,
                }
            });
    };
    let found = profiles.iter().find(|p| p.name == name);
    if let Some(profile) = found.filter(|p| p.allows(uid, user, groups)) {
        return Ok(profile);
    }
    let (name, user) = (name.to_owned(), user_name);
    let usable = usable.map(|p| p.name.clone()).collect();
    Err(match found {
        Some(_) if uid == 0 => ProfileError::RootNotNamed { name, user },
        Some(_) => ProfileError::NotAllowed { name, user, usable },
        None => ProfileError::Unknown { name, user, usable },
    })
}

#[cfg(test)]
mod tests;
