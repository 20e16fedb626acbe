//! The daemon's TOML configuration (DESIGN, "contract"): parsing and validation with
//! `PATH:LINE:COL: message` errors, loading secret values, host patterns, header templates and
//! choosing a caller's profile.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use thiserror::Error;
use toml::Spanned;

pub const DEFAULT_SOCKET: &str = "/run/sandbox/sandbox.sock";
const DEFAULT_AUDIT_LOG: &str = "/var/log/sandbox/audit.jsonl";
const DEFAULT_SUBNET: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(10, 233, 0, 0), 16);
const DNS_PORT: u16 = 53;
/// Each sandbox takes a /30 (host side, sandbox side).
const MAX_PREFIX_V4: u8 = 28;
/// Each sandbox takes a /64; a /56 holds 256 of them.
const MAX_PREFIX_V6: u8 = 56;
/// Headers whose value framing or routing the proxy owns; injecting them would corrupt requests.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{}: cannot read: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{}:{location}: {message}", path.display())]
    At {
        path: PathBuf,
        location: Location,
        message: String,
    },
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
}

/// 1-based line and column (in characters) in the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub col: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Where the config was read from; error messages name it.
    pub path: PathBuf,
    pub daemon: DaemonSection,
    pub secrets: BTreeMap<String, SecretDef>,
    pub integrations: Vec<Integration>,
    pub profiles: Vec<Profile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonSection {
    #[serde(deserialize_with = "absolute_path")]
    pub socket: PathBuf,
    pub socket_group: Option<String>,
    #[serde(deserialize_with = "subnet4")]
    pub subnet: Ipv4Net,
    #[serde(deserialize_with = "subnet6")]
    pub subnet6: Option<Ipv6Net>,
    #[serde(deserialize_with = "absolute_path")]
    pub audit_log: PathBuf,
    /// Empty: use the host's /etc/resolv.conf.
    #[serde(deserialize_with = "dns_servers")]
    pub dns: Vec<SocketAddr>,
    #[serde(deserialize_with = "absolute_paths")]
    pub upstream_ca: Vec<PathBuf>,
}

impl Default for DaemonSection {
    fn default() -> Self {
        DaemonSection {
            socket: PathBuf::from(DEFAULT_SOCKET),
            socket_group: None,
            subnet: DEFAULT_SUBNET,
            subnet6: None,
            audit_log: PathBuf::from(DEFAULT_AUDIT_LOG),
            dns: Vec::new(),
            upstream_ca: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretDef {
    pub source: SecretSource,
    /// Where the secret is named in the config, for errors found when reading its value.
    pub location: Location,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    Env(String),
    File(PathBuf),
    /// A systemd credential: `$CREDENTIALS_DIRECTORY/NAME`.
    Credential(String),
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Env(var) => write!(f, "env {var}"),
            SecretSource::File(path) => write!(f, "file {}", path.display()),
            SecretSource::Credential(name) => write!(f, "credential {name}"),
        }
    }
}

/// Secret values, by secret name.
#[derive(Debug)]
pub struct Secrets(BTreeMap<String, SecretValue>);

impl Secrets {
    pub fn get(&self, name: &str) -> Option<&SecretValue> {
        self.0.get(name)
    }

    #[cfg(test)]
    pub(crate) fn of(pairs: &[(&str, &str)]) -> Secrets {
        Secrets(
            pairs
                .iter()
                .map(|(name, value)| (name.to_string(), SecretValue::new(value.to_string())))
                .collect(),
        )
    }
}

/// A secret's value. Its Debug says `<redacted>` and it has no Display, so it cannot be logged
/// by accident. Its memory is locked (never swapped, where the kernel allows) and zeroed on drop.
pub struct SecretValue(String);

impl SecretValue {
    fn new(value: String) -> Self {
        // SAFETY: the range is the string's own allocation, alive as long as the value.
        unsafe { libc::mlock(value.as_ptr().cast(), value.capacity()) };
        SecretValue(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Drop for SecretValue {
    /// Zeroed, but not unlocked: locks are per page, not per range, and the page may hold another
    /// secret that must stay locked.
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Integration {
    pub name: String,
    pub hosts: Vec<HostPattern>,
    /// Header names as written in the config (HTTP header names are case-insensitive).
    pub headers: BTreeMap<String, Template>,
    pub basic_auth: Option<BasicAuth>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BasicAuth {
    pub username: Template,
    pub password: Template,
}

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

/// A host name to match against SNI and Host: exact, or `*.suffix` for any name under suffix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// Lowercase, without a trailing dot.
    Exact(String),
    /// The lowercase suffix after `*.`.
    Wildcard(String),
}

impl HostPattern {
    fn parse(s: &str) -> Result<Self, String> {
        let name = s.strip_suffix('.').unwrap_or(s).to_ascii_lowercase();
        let looks_numeric = name
            .rsplit('.')
            .next()
            .is_some_and(|last| !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()));
        if looks_numeric || name.parse::<IpAddr>().is_ok() {
            return Err(format!(
                "\"{s}\" is an IP address; hosts are matched against TLS SNI and HTTP Host names, so give a name"
            ));
        }
        let (wildcard, suffix) = match name.strip_prefix("*.") {
            Some(suffix) => (true, suffix),
            None => (false, name.as_str()),
        };
        check_dns_name(suffix).map_err(|why| format!("invalid host \"{s}\": {why}"))?;
        if wildcard && !suffix.contains('.') {
            return Err(format!(
                "\"{s}\" matches every name under a top-level domain; a wildcard needs a name of two \
                 labels or more after \"*.\", as in \"*.example.com\""
            ));
        }
        Ok(if wildcard {
            HostPattern::Wildcard(suffix.to_owned())
        } else {
            HostPattern::Exact(name)
        })
    }

    /// Case-insensitive; one trailing dot on `host` is ignored.
    /// Whether some name matches both patterns.
    fn overlaps(&self, other: &HostPattern) -> bool {
        match (self, other) {
            (HostPattern::Exact(a), HostPattern::Exact(b)) => a == b,
            (HostPattern::Exact(name), wildcard) | (wildcard, HostPattern::Exact(name)) => {
                wildcard.matches(name)
            }
            (HostPattern::Wildcard(a), HostPattern::Wildcard(b)) => {
                a == b || self.matches(b) || other.matches(a)
            }
        }
    }

    pub fn matches(&self, host: &str) -> bool {
        let host = host.strip_suffix('.').unwrap_or(host);
        match self {
            HostPattern::Exact(name) => host.eq_ignore_ascii_case(name),
            HostPattern::Wildcard(suffix) => {
                // Bytes, not str: a non-ASCII host must not make split_at panic.
                let host = host.as_bytes();
                host.len() > suffix.len() + 1 && {
                    let (head, tail) = host.split_at(host.len() - suffix.len());
                    head.ends_with(b".") && tail.eq_ignore_ascii_case(suffix.as_bytes())
                }
            }
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(name) => f.write_str(name),
            HostPattern::Wildcard(suffix) => write!(f, "*.{suffix}"),
        }
    }
}

fn check_dns_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the name is empty".into());
    }
    if name.len() > 253 {
        return Err("longer than 253 characters".into());
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("empty label".into());
        }
        if label.len() > 63 {
            return Err(format!("label \"{label}\" is longer than 63 characters"));
        }
        if label.contains('*') {
            return Err(
                "\"*\" is allowed only as the whole first label, as in \"*.example.com\"".into(),
            );
        }
        if let Some(c) = label
            .chars()
            .find(|&c| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        {
            let hint = if c.is_ascii() {
                ""
            } else {
                "; write internationalized names in their xn-- form"
            };
            return Err(format!("character {c:?} is not allowed{hint}"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label \"{label}\" starts or ends with '-'"));
        }
    }
    Ok(())
}

/// A header value with `${secret:NAME}` placeholders; `$$` is a literal `$`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Secret(String),
}

#[derive(Debug, Error)]
#[error("secret \"{0}\" has no loaded value")]
pub struct MissingSecret(pub String);

impl Template {
    fn parse(s: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut rest = s;
        while let Some(i) = rest.find('$') {
            text.push_str(&rest[..i]);
            rest = &rest[i..];
            if let Some(after) = rest.strip_prefix("$$") {
                text.push('$');
                rest = after;
            } else if let Some(after) = rest.strip_prefix("${") {
                let Some(end) = after.find('}') else {
                    return Err(
                        "unclosed \"${\" in template; write \"$$\" for a literal \"$\"".into(),
                    );
                };
                let inner = &after[..end];
                let name = inner.strip_prefix("secret:").ok_or_else(|| {
                    format!(
                        "unknown placeholder \"${{{inner}}}\"; the only one is \"${{secret:NAME}}\" (write \"$$\" for a literal \"$\")"
                    )
                })?;
                check_name("secret", name)?;
                if !text.is_empty() {
                    parts.push(Part::Text(mem::take(&mut text)));
                }
                parts.push(Part::Secret(name.to_owned()));
                rest = &after[end + 1..];
            } else {
                // A lone `$` is literal, so values like "pa$word" need no escaping.
                text.push('$');
                rest = &rest[1..];
            }
        }
        text.push_str(rest);
        if let Some(c) = text.chars().find(|&c| c.is_control() && c != '\t') {
            return Err(format!(
                "the value holds the control character {c:?}, which cannot go in an HTTP header"
            ));
        }
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        Ok(Template { parts })
    }

    pub fn secret_names(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|part| match part {
            Part::Secret(name) => Some(name.as_str()),
            Part::Text(_) => None,
        })
    }

    pub fn render(&self, secrets: &Secrets) -> Result<String, MissingSecret> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Secret(name) => out.push_str(
                    secrets
                        .get(name)
                        .ok_or_else(|| MissingSecret(name.clone()))?
                        .expose(),
                ),
            }
        }
        Ok(out)
    }
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
            secrets.insert(name.into_inner(), SecretDef { source, location });
        }

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
            let mut names: Vec<String> = Vec::new();
            for integration in raw.integrations {
                let wanted = integration.get_ref();
                if !integrations.iter().any(|i| i.name == *wanted) {
                    let defined = if integrations.is_empty() {
                        "no [[integration]] is defined".to_owned()
                    } else {
                        let names: Vec<&str> =
                            integrations.iter().map(|i| i.name.as_str()).collect();
                        format!("defined: {}", names.join(", "))
                    };
                    return Err(src.at(
                        integration.span(),
                        format!(
                            "unknown integration \"{wanted}\" in profile \"{name}\"; {defined}"
                        ),
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
            profiles.push(Profile {
                name: raw.name.into_inner(),
                integrations: names,
                users: raw.users,
                egress: raw.egress,
                allow_hosts: raw.allow_hosts,
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

    /// Reads every secret's value from its source.
    pub fn load_secrets(&self) -> Result<Secrets, ConfigError> {
        self.secrets
            .iter()
            .map(|(name, def)| match def.source.read() {
                Ok(value) => Ok((name.clone(), SecretValue::new(value))),
                Err(why) => Err(ConfigError::At {
                    path: self.path.clone(),
                    location: def.location,
                    message: format!("secret \"{name}\" from {}: {why}", def.source),
                }),
            })
            .collect::<Result<_, _>>()
            .map(Secrets)
    }

    /// Without a request: "default" if the user may use it, else the first profile they may use.
    pub fn select_profile(
        &self,
        requested: Option<&str>,
        user: &str,
        groups: &[String],
    ) -> Result<&Profile, ProfileError> {
        let mut usable = self.profiles.iter().filter(|p| p.allows(user, groups));
        let Some(name) = requested else {
            return usable
                .clone()
                .find(|p| p.name == "default")
                .or_else(|| usable.next())
                .ok_or_else(|| ProfileError::NoneAllowed {
                    path: self.path.clone(),
                    user: user.to_owned(),
                });
        };
        let found = self.profiles.iter().find(|p| p.name == name);
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

impl SecretSource {
    fn read(&self) -> Result<String, String> {
        let value = match self {
            SecretSource::Env(var) => std::env::var_os(var)
                .ok_or("the variable is not set")?
                .into_string()
                .map_err(|_| "the value is not valid UTF-8")?,
            SecretSource::File(path) => read_value(path)?,
            SecretSource::Credential(name) => {
                let dir = std::env::var_os("CREDENTIALS_DIRECTORY").ok_or_else(|| {
                    format!("CREDENTIALS_DIRECTORY is not set; run the daemon from a systemd unit with LoadCredential={name}:PATH")
                })?;
                read_value(&Path::new(&dir).join(name))?
            }
        };
        if value.is_empty() {
            return Err("the value is empty".into());
        }
        if value.chars().any(char::is_control) {
            return Err(
                "the value contains a control character, which cannot go in an HTTP header".into(),
            );
        }
        Ok(value)
    }
}

/// Reads a secret file; editors end files with a newline that is not part of the secret.
fn read_value(path: &Path) -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(metadata) = fs::metadata(path) {
        if metadata.permissions().mode() & 0o004 != 0 {
            tracing::warn!(path = %path.display(), "secret file is readable by every user; chmod o-r it");
        }
    }
    let bytes = fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut value = String::from_utf8(bytes).map_err(|_| "the value is not valid UTF-8")?;
    let len = value
        .strip_suffix("\r\n")
        .or_else(|| value.strip_suffix('\n'))
        .map_or(value.len(), str::len);
    value.truncate(len);
    Ok(value)
}

/// Secret, integration and profile names.
fn check_name(kind: &str, name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("{kind} name is empty"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(format!(
            "invalid {kind} name \"{name}\"; use letters, digits, '_' and '-'"
        ));
    }
    Ok(())
}

/// RFC 9110 token characters, minus names the proxy must own.
fn check_header_name(name: &str) -> Result<(), String> {
    let tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() || !name.chars().all(tchar) {
        return Err(format!("invalid header name \"{name}\""));
    }
    if RESERVED_HEADERS
        .iter()
        .any(|h| h.eq_ignore_ascii_case(name))
    {
        return Err(format!("header \"{name}\" cannot be set by an integration"));
    }
    Ok(())
}

/// The config text, to turn byte offsets into `PATH:LINE:COL` errors.
struct Source<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Source<'_> {
    fn location(&self, offset: usize) -> Location {
        let before = self.text.get(..offset).unwrap_or(self.text);
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        Location {
            line: before.matches('\n').count() + 1,
            col: before[line_start..].chars().count() + 1,
        }
    }

    fn at(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        ConfigError::At {
            path: self.path.to_owned(),
            location: self.location(span.start),
            message: message.into(),
        }
    }

    fn toml_error(&self, error: &toml::de::Error) -> ConfigError {
        let message = reword(error.message());
        match error.span() {
            Some(span) => self.at(span, message),
            None => ConfigError::Invalid {
                path: self.path.to_owned(),
                message,
            },
        }
    }

    fn template(
        &self,
        raw: Spanned<String>,
        secrets: &BTreeMap<String, SecretDef>,
    ) -> Result<Template, ConfigError> {
        let template = Template::parse(raw.get_ref()).map_err(|m| self.at(raw.span(), m))?;
        if let Some(name) = template.secret_names().find(|n| !secrets.contains_key(*n)) {
            return Err(self.at(
                raw.span(),
                format!("secret \"{name}\" is not defined in [secrets]"),
            ));
        }
        Ok(template)
    }
}

/// Rewords serde's messages into the config's terms. Serde's unknown-field error does not say
/// which table it is in, but its list of expected keys does.
fn reword(message: &str) -> String {
    let message = message.trim_end();
    if let Some((key, expected)) = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split_once("`, expected "))
    {
        let expected: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        let place = [
            ("socket", " in [daemon]"),
            ("hosts", " in [[integration]]"),
            ("allow_hosts", " in [[profile]]"),
            ("username", " in basic_auth"),
            ("credential", " in a [secrets] entry"),
            ("daemon", " at the top level"),
        ]
        .into_iter()
        .find(|(field, _)| expected.contains(field))
        .map_or("", |(_, place)| place);
        return format!(
            "unknown key \"{key}\"{place}; expected one of: {}",
            expected.join(", ")
        );
    }
    if let Some(key) = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.strip_suffix('`'))
    {
        return format!("missing key \"{key}\"");
    }
    // toml's syntax errors span several lines; the contract wants one.
    message.replace('\n', "; ")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    daemon: DaemonSection,
    #[serde(default)]
    secrets: BTreeMap<Spanned<String>, SecretSource>,
    #[serde(default)]
    integration: Vec<RawIntegration>,
    #[serde(default)]
    profile: Vec<RawProfile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIntegration {
    name: Spanned<String>,
    hosts: Spanned<Vec<HostPattern>>,
    #[serde(default)]
    headers: BTreeMap<Spanned<String>, Spanned<String>>,
    basic_auth: Option<RawBasicAuth>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBasicAuth {
    username: Spanned<String>,
    password: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    name: Spanned<String>,
    #[serde(default)]
    integrations: Vec<Spanned<String>>,
    #[serde(default)]
    users: Vec<UserMatcher>,
    #[serde(default)]
    egress: Egress,
    #[serde(default)]
    allow_hosts: Vec<HostPattern>,
}

impl RawIntegration {
    fn validate(
        self,
        src: &Source,
        secrets: &BTreeMap<String, SecretDef>,
    ) -> Result<Integration, ConfigError> {
        let name_span = self.name.span();
        let name = self.name.into_inner();
        if self.hosts.get_ref().is_empty() {
            return Err(src.at(
                self.hosts.span(),
                format!("integration \"{name}\" has no hosts; list at least one, as in hosts = [\"api.example.com\"]"),
            ));
        }
        // In file order, so that a duplicate is reported where it is repeated.
        let mut raw_headers: Vec<_> = self.headers.into_iter().collect();
        raw_headers.sort_by_key(|(header, _)| header.span().start);
        let mut headers: BTreeMap<String, Template> = BTreeMap::new();
        for (header, value) in raw_headers {
            let span = header.span();
            let header = header.into_inner();
            check_header_name(&header).map_err(|m| src.at(span.clone(), m))?;
            if headers.keys().any(|h| h.eq_ignore_ascii_case(&header)) {
                return Err(src.at(
                    span,
                    format!("header \"{header}\" is given twice in integration \"{name}\" (header names are case-insensitive)"),
                ));
            }
            if self.basic_auth.is_some() && header.eq_ignore_ascii_case("authorization") {
                return Err(src.at(
                    span,
                    format!("integration \"{name}\" sets header \"{header}\" and basic_auth, which also sets it; keep one"),
                ));
            }
            headers.insert(header, src.template(value, secrets)?);
        }
        let basic_auth = match self.basic_auth {
            Some(auth) => Some(BasicAuth {
                username: src.template(auth.username, secrets)?,
                password: src.template(auth.password, secrets)?,
            }),
            None if headers.is_empty() => {
                return Err(src.at(
                    name_span,
                    format!("integration \"{name}\" injects nothing; give it headers = {{ ... }} or basic_auth = {{ ... }}"),
                ))
            }
            None => None,
        };
        Ok(Integration {
            name,
            hosts: self.hosts.into_inner(),
            headers,
            basic_auth,
        })
    }
}

/// Deserializes a string with `parse` inside the visitor: toml attaches the location of the
/// string itself (not of the enclosing value) only to errors raised there.
fn parse_str<'de, D: Deserializer<'de>, T>(
    deserializer: D,
    expecting: &'static str,
    parse: fn(&str) -> Result<T, String>,
) -> Result<T, D::Error> {
    struct StrVisitor<T> {
        expecting: &'static str,
        parse: fn(&str) -> Result<T, String>,
    }
    impl<T> Visitor<'_> for StrVisitor<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.expecting)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
            (self.parse)(v).map_err(E::custom)
        }
    }
    deserializer.deserialize_str(StrVisitor { expecting, parse })
}

impl<'de> Deserialize<'de> for HostPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_str(
            d,
            "a host name, as in \"api.example.com\" or \"*.example.com\"",
            HostPattern::parse,
        )
    }
}

impl<'de> Deserialize<'de> for UserMatcher {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_str(d, "a user name, \"@group\" or \"*\"", UserMatcher::parse)
    }
}

const SECRET_FORMS: &str =
    "{ env = \"VARIABLE\" }, { file = \"/absolute/path\" } or { credential = \"name\" }";

impl<'de> Deserialize<'de> for SecretSource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct SourceVisitor;
        impl<'de> Visitor<'de> for SourceVisitor {
            type Value = SecretSource;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(SECRET_FORMS)
            }
            // The default message would quote the string, which may be a pasted secret.
            fn visit_str<E: de::Error>(self, _: &str) -> Result<SecretSource, E> {
                Err(E::custom(format!(
                    "a secret's value does not go in the config; write {SECRET_FORMS}"
                )))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SecretSource, A::Error> {
                let Some(kind) = map.next_key::<String>()? else {
                    return Err(de::Error::custom(format!(
                        "empty secret; write {SECRET_FORMS}"
                    )));
                };
                let source = match kind.as_str() {
                    "env" => {
                        let var: String = map.next_value()?;
                        if var.is_empty() || var.contains(['=', '\0']) {
                            return Err(de::Error::custom(format!(
                                "invalid environment variable name \"{var}\""
                            )));
                        }
                        SecretSource::Env(var)
                    }
                    "file" => SecretSource::File(map.next_value::<AbsolutePath>()?.0),
                    "credential" => {
                        let name: String = map.next_value()?;
                        if name.is_empty() || name.contains(['/', '\0']) || name == ".." {
                            return Err(de::Error::custom(format!(
                                "invalid credential name \"{name}\""
                            )));
                        }
                        SecretSource::Credential(name)
                    }
                    other => {
                        return Err(de::Error::unknown_field(
                            other,
                            &["env", "file", "credential"],
                        ))
                    }
                };
                if map.next_key::<IgnoredAny>()?.is_some() {
                    return Err(de::Error::custom(format!(
                        "a secret has exactly one source; write {SECRET_FORMS}"
                    )));
                }
                Ok(source)
            }
        }
        d.deserialize_map(SourceVisitor)
    }
}

struct AbsolutePath(PathBuf);

impl<'de> Deserialize<'de> for AbsolutePath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_str(d, "an absolute path", |s| {
            if Path::new(s).is_absolute() {
                Ok(AbsolutePath(PathBuf::from(s)))
            } else {
                Err(format!("path \"{s}\" is not absolute"))
            }
        })
    }
}

struct DnsServer(SocketAddr);

impl<'de> Deserialize<'de> for DnsServer {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_str(d, "a DNS server address", |s| {
            s.parse::<SocketAddr>()
                .or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, DNS_PORT)))
                .map(DnsServer)
                .map_err(|_| format!("invalid DNS server \"{s}\"; expected an IP address with an optional port, as in \"192.0.2.53\", \"192.0.2.53:5353\", \"2001:db8::53\" or \"[2001:db8::53]:5353\""))
        })
    }
}

fn absolute_path<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
    AbsolutePath::deserialize(d).map(|p| p.0)
}

fn absolute_paths<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PathBuf>, D::Error> {
    Ok(Vec::<AbsolutePath>::deserialize(d)?
        .into_iter()
        .map(|p| p.0)
        .collect())
}

fn dns_servers<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
    Ok(Vec::<DnsServer>::deserialize(d)?
        .into_iter()
        .map(|s| s.0)
        .collect())
}

fn subnet4<'de, D: Deserializer<'de>>(d: D) -> Result<Ipv4Net, D::Error> {
    parse_str(d, "an IPv4 network, as in \"10.233.0.0/16\"", |s| {
        let net: Ipv4Net = s.parse().map_err(|_| {
            format!("invalid IPv4 network \"{s}\"; expected CIDR notation, as in \"10.233.0.0/16\"")
        })?;
        check_network(s, net.into(), MAX_PREFIX_V4, "/30 block").map(|()| net)
    })
}

fn subnet6<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Ipv6Net>, D::Error> {
    parse_str(d, "an IPv6 network, as in \"fd00:5ba:d::/48\"", |s| {
        let net: Ipv6Net = s.parse().map_err(|_| {
            format!(
                "invalid IPv6 network \"{s}\"; expected CIDR notation, as in \"fd00:5ba:d::/48\""
            )
        })?;
        check_network(s, net.into(), MAX_PREFIX_V6, "/64").map(|()| Some(net))
    })
}

fn check_network(s: &str, net: IpNet, max_prefix: u8, block: &str) -> Result<(), String> {
    if net != net.trunc() {
        return Err(format!(
            "network \"{s}\" has host bits set; did you mean \"{}\"?",
            net.trunc()
        ));
    }
    if net.prefix_len() > max_prefix {
        return Err(format!(
            "network \"{s}\" is too small: each sandbox takes a {block}; use a prefix length of {max_prefix} or less"
        ));
    }
    // Sandbox addresses there would shadow the host's own (loopback, link-local) or be no unicast
    // addresses at all; a pool that large would take every address from the host's routes.
    let reserved = [
        "0.0.0.0/8",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "224.0.0.0/3",
        "::/8",
        "fe80::/10",
        "ff00::/8",
    ];
    let clash = reserved
        .iter()
        .filter_map(|r| r.parse::<IpNet>().ok())
        .find(|r| r.contains(&net.network()) || net.contains(&r.network()));
    if let Some(reserved) = clash {
        return Err(format!(
            "network \"{s}\" overlaps {reserved}, which the host needs for itself; use a private range, \
             as in \"10.233.0.0/16\" or \"fd00:5ba:d::/48\""
        ));
    }
    Ok(())
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
mod tests {
    use super::*;

    const PATH: &str = "/etc/sandbox/sandbox.toml";
    /// Two lines defining secret "key", so that tests can start integrations on line 3.
    const SECRETS: &str = "[secrets]\nkey = { env = \"SBX_TEST_NEVER_SET\" }\n";

    fn parse(text: &str) -> Config {
        Config::parse(text, Path::new(PATH)).unwrap()
    }

    fn error(text: &str) -> String {
        Config::parse(text, Path::new("t.toml"))
            .unwrap_err()
            .to_string()
    }

    fn integration(body: &str) -> String {
        error(&format!("{SECRETS}[[integration]]\n{body}"))
    }

    fn strings(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    /// A file under the temp dir, removed on drop even when the test fails.
    struct TempPath(PathBuf);

    impl TempPath {
        fn new(name: &str) -> Self {
            let path = std::env::temp_dir().join(format!("sbx-cfg-{}-{name}", std::process::id()));
            TempPath(path)
        }
    }

    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
            let _ = fs::remove_file(&self.0);
        }
    }

    #[test]
    fn empty_config_has_defaults() {
        let config = parse("");
        assert_eq!(config.path, Path::new(PATH));
        assert_eq!(config.daemon, DaemonSection::default());
        assert_eq!(config.daemon.socket, Path::new("/run/sandbox/sandbox.sock"));
        assert_eq!(config.daemon.subnet, "10.233.0.0/16".parse().unwrap());
        assert_eq!(config.daemon.subnet6, None);
        assert_eq!(config.daemon.socket_group, None);
        assert_eq!(
            config.daemon.audit_log,
            Path::new("/var/log/sandbox/audit.jsonl")
        );
        assert!(config.daemon.dns.is_empty());
        assert!(config.daemon.upstream_ca.is_empty());
        assert!(config.secrets.is_empty() && config.integrations.is_empty());
        assert!(config.profiles.is_empty());
    }

    #[test]
    fn profile_defaults() {
        let config = parse("[[profile]]\nname = \"p\"\n");
        let profile = &config.profiles[0];
        assert!(profile.integrations.is_empty());
        assert!(profile.users.is_empty());
        assert_eq!(profile.egress, Egress::Allow);
        assert!(profile.allow_hosts.is_empty());
        assert!(!profile.allows("root", &[]));
    }

    #[test]
    fn design_example_parses_and_loads_secrets() {
        let key_file = TempPath::new("stripe.key");
        fs::write(&key_file.0, "sk_test_stripe\r\n").unwrap();
        let credentials = TempPath::new("credentials");
        fs::create_dir(&credentials.0).unwrap();
        fs::write(credentials.0.join("github"), "ghp_token\n\n").unwrap();
        std::env::set_var("SBX_TEST_DESIGN_OPENAI", "sk-openai");
        let text = format!(
            r#"[daemon]
socket = "/run/sandbox/sandbox.sock"
socket_group = "sandbox"             # members may call sandbox exec
subnet = "10.233.0.0/16"             # IPv4 pool; each sandbox takes a small block
subnet6 = "fd00:5ba:d::/48"          # IPv6 pool (optional)
audit_log = "/var/log/sandbox/audit.jsonl"
dns = ["192.0.2.53", "192.0.2.54:5353", "2001:db8::53", "[2001:db8::54]:5353"]
upstream_ca = []                     # extra PEM roots for verifying upstreams (private CAs, tests)

[secrets]
openai = {{ env = "SBX_TEST_DESIGN_OPENAI" }}          # from the daemon's environment
stripe = {{ file = "{}" }} # trailing newline stripped
github = {{ credential = "github" }}           # systemd LoadCredential= ($CREDENTIALS_DIRECTORY)

[[integration]]
name = "openai"
hosts = ["api.openai.com"]                   # exact names, or "*.example.com"
headers = {{ Authorization = "Bearer ${{secret:openai}}" }}

[[integration]]
name = "stripe"
hosts = ["api.stripe.com"]
basic_auth = {{ username = "${{secret:stripe}}", password = "" }}

[[profile]]
name = "default"
integrations = ["openai", "stripe"]
users = ["*"]                 # user names, "@group", or "*"
egress = "allow"              # "allow": other traffic is relayed untouched; "deny": only the hosts of
allow_hosts = []              #   its integrations and allow_hosts are reachable
"#,
            key_file.0.display()
        );
        let config = parse(&text);
        let daemon = &config.daemon;
        assert_eq!(daemon.socket_group.as_deref(), Some("sandbox"));
        assert_eq!(daemon.subnet6, Some("fd00:5ba:d::/48".parse().unwrap()));
        assert_eq!(
            daemon.dns,
            [
                "192.0.2.53:53",
                "192.0.2.54:5353",
                "[2001:db8::53]:53",
                "[2001:db8::54]:5353"
            ]
            .map(|s| s.parse::<SocketAddr>().unwrap())
        );
        assert_eq!(
            config.secrets["openai"],
            SecretDef {
                source: SecretSource::Env("SBX_TEST_DESIGN_OPENAI".into()),
                location: Location { line: 11, col: 1 },
            }
        );
        assert_eq!(
            config.secrets["github"].source,
            SecretSource::Credential("github".into())
        );
        let [openai, stripe] = &config.integrations[..] else {
            panic!("{:?}", config.integrations)
        };
        assert_eq!(openai.hosts, [HostPattern::Exact("api.openai.com".into())]);
        assert!(openai.basic_auth.is_none());
        assert!(stripe.headers.is_empty());
        let profile = config.select_profile(None, "anyone", &[]).unwrap();
        assert_eq!(profile.name, "default");
        assert_eq!(
            config
                .integrations_of(profile)
                .map(|i| i.name.as_str())
                .collect::<Vec<_>>(),
            ["openai", "stripe"]
        );

        std::env::set_var("CREDENTIALS_DIRECTORY", &credentials.0);
        // Only one trailing newline is stripped; the second one is part of the value.
        let two_newlines = config.load_secrets().unwrap_err().to_string();
        fs::write(credentials.0.join("github"), "ghp_token\n").unwrap();
        let secrets = config.load_secrets().unwrap();
        std::env::remove_var("CREDENTIALS_DIRECTORY");
        assert_eq!(
            two_newlines,
            format!("{PATH}:13:1: secret \"github\" from credential github: the value contains a control character, which cannot go in an HTTP header")
        );
        assert_eq!(secrets.get("github").unwrap().expose(), "ghp_token");
        assert_eq!(
            openai.headers["Authorization"].render(&secrets).unwrap(),
            "Bearer sk-openai"
        );
        let auth = stripe.basic_auth.as_ref().unwrap();
        assert_eq!(auth.username.render(&secrets).unwrap(), "sk_test_stripe");
        assert_eq!(auth.password.render(&secrets).unwrap(), "");
        let debug = format!("{secrets:?}");
        assert!(!debug.contains("ghp_token") && !debug.contains("sk-openai"));
        assert!(!debug.contains("sk_test_stripe"));
        assert!(debug.contains("<redacted>"));

        assert_eq!(
            config.load_secrets().unwrap_err().to_string(),
            format!("{PATH}:13:1: secret \"github\" from credential github: CREDENTIALS_DIRECTORY is not set; run the daemon from a systemd unit with LoadCredential=github:PATH")
        );
        std::env::remove_var("SBX_TEST_DESIGN_OPENAI");
    }

    #[test]
    fn secrets_value_errors_name_the_secret_and_source() {
        let load = |text: &str| parse(text).load_secrets().unwrap_err().to_string();
        assert_eq!(
            load("[secrets]\n  a = { env = \"SBX_TEST_UNSET_VAR\" }\n"),
            format!(
                "{PATH}:2:3: secret \"a\" from env SBX_TEST_UNSET_VAR: the variable is not set"
            )
        );
        std::env::set_var("SBX_TEST_EMPTY_VAR", "");
        assert_eq!(
            load("[secrets]\na = { env = \"SBX_TEST_EMPTY_VAR\" }\n"),
            format!("{PATH}:2:1: secret \"a\" from env SBX_TEST_EMPTY_VAR: the value is empty")
        );
        std::env::set_var("SBX_TEST_NEWLINE_VAR", "abc\r\nX-Evil: 1");
        assert_eq!(
            load("[secrets]\na = { env = \"SBX_TEST_NEWLINE_VAR\" }\n"),
            format!("{PATH}:2:1: secret \"a\" from env SBX_TEST_NEWLINE_VAR: the value contains a control character, which cannot go in an HTTP header")
        );
        let missing = TempPath::new("missing.key");
        assert_eq!(
            load(&format!("[secrets]\nb = {{ file = \"{}\" }}\n", missing.0.display())),
            format!(
                "{PATH}:2:1: secret \"b\" from file {0}: cannot read {0}: No such file or directory (os error 2)",
                missing.0.display()
            )
        );
        let empty = TempPath::new("empty.key");
        fs::write(&empty.0, "\n").unwrap();
        assert_eq!(
            load(&format!(
                "[secrets]\nb = {{ file = \"{}\" }}\n",
                empty.0.display()
            )),
            format!(
                "{PATH}:2:1: secret \"b\" from file {}: the value is empty",
                empty.0.display()
            )
        );
    }

    #[test]
    fn read_error() {
        let missing = TempPath::new("missing.toml");
        assert_eq!(
            Config::load(&missing.0).unwrap_err().to_string(),
            format!(
                "{}: cannot read: No such file or directory (os error 2)",
                missing.0.display()
            )
        );
    }

    #[test]
    fn load_reads_the_file() {
        let file = TempPath::new("load.toml");
        fs::write(&file.0, "[daemon]\nsubnet = \"10.1.0.0/24\"\n").unwrap();
        let config = Config::load(&file.0).unwrap();
        assert_eq!(config.path, file.0);
        assert_eq!(config.daemon.subnet, "10.1.0.0/24".parse().unwrap());
    }

    #[test]
    fn toml_syntax_error() {
        assert_eq!(
            error("[daemon]\nsocket = \"/x\n"),
            "t.toml:2:13: invalid basic string"
        );
        assert_eq!(
            error("[daemon\n"),
            "t.toml:1:8: invalid table header; expected `.`, `]`"
        );
    }

    #[test]
    fn unknown_keys_name_their_table() {
        assert_eq!(
            error("[daemon]\n\nsokcet = \"/x\"\n"),
            "t.toml:3:1: unknown key \"sokcet\" in [daemon]; expected one of: socket, socket_group, subnet, subnet6, audit_log, dns, upstream_ca"
        );
        assert_eq!(
            error("[deamon]\n"),
            "t.toml:1:2: unknown key \"deamon\" at the top level; expected one of: daemon, secrets, integration, profile"
        );
        assert_eq!(
            integration("name = \"a\"\nhost = [\"a.com\"]\n"),
            "t.toml:5:1: unknown key \"host\" in [[integration]]; expected one of: name, hosts, headers, basic_auth"
        );
        assert_eq!(
            integration("name = \"a\"\nhosts = [\"a.com\"]\nbasic_auth = { user = \"\", password = \"\" }\n"),
            "t.toml:6:16: unknown key \"user\" in basic_auth; expected one of: username, password"
        );
        assert_eq!(
            error("[[profile]]\nname = \"p\"\nuser = []\n"),
            "t.toml:3:1: unknown key \"user\" in [[profile]]; expected one of: name, integrations, users, egress, allow_hosts"
        );
        assert_eq!(
            error("[secrets]\na = { enf = \"X\" }\n"),
            "t.toml:2:5: unknown key \"enf\" in a [secrets] entry; expected one of: env, file, credential"
        );
    }

    #[test]
    fn configs_that_could_not_work_are_refused() {
        let value = integration(
            "name = \"a\"\nhosts = [\"a.com\"]\nheaders = { X = \"Bearer ${secret:key}\\r\\nY: 1\" }\n",
        );
        assert!(
            value.starts_with("t.toml:6:17: the value holds the control character '\\r'"),
            "{value}"
        );
        let wildcard = integration("name = \"a\"\nhosts = [\"*.com\"]\nheaders = { X = \"1\" }\n");
        assert!(
            wildcard
                .starts_with("t.toml:5:10: \"*.com\" matches every name under a top-level domain"),
            "{wildcard}"
        );
        for (subnet, reserved) in [
            ("subnet = \"0.0.0.0/0\"", "0.0.0.0/8"),
            ("subnet = \"127.0.0.0/16\"", "127.0.0.0/8"),
            ("subnet = \"169.254.0.0/16\"", "169.254.0.0/16"),
            ("subnet6 = \"::/0\"", "::/8"),
            ("subnet6 = \"fe80::/48\"", "fe80::/10"),
        ] {
            let refused = error(&format!("[daemon]\n{subnet}\n"));
            assert!(
                refused.contains(&format!("overlaps {reserved}, which the host needs")),
                "{subnet}: {refused}"
            );
        }
        let two = |a: &str, b: &str| {
            error(&format!(
                "{SECRETS}[[integration]]\nname = \"a\"\nhosts = [\"{a}\"]\nheaders = {{ X = \"1\" }}\n\
                 [[integration]]\nname = \"b\"\nhosts = [\"{b}\"]\nheaders = {{ X = \"2\" }}\n\
                 [[profile]]\nname = \"p\"\nintegrations = [\"a\", \"b\"]\n"
            ))
        };
        for (a, b) in [
            ("api.example.com", "API.example.com"),
            ("*.example.com", "api.example.com"),
            ("api.example.com", "*.example.com"),
            ("*.example.com", "*.eu.example.com"),
        ] {
            assert!(
                two(a, b).contains("integrations \"a\" and \"b\" of profile \"p\" both match"),
                "{a} {b}: {}",
                two(a, b)
            );
        }
        let apart = Config::parse(
            &format!(
                "{SECRETS}[[integration]]\nname = \"a\"\nhosts = [\"*.example.com\"]\nheaders = {{ X = \"1\" }}\n\
                 [[integration]]\nname = \"b\"\nhosts = [\"example.com\", \"*.example.org\"]\nheaders = {{ X = \"2\" }}\n\
                 [[profile]]\nname = \"p\"\nintegrations = [\"a\", \"b\"]\n"
            ),
            Path::new("t.toml"),
        );
        assert!(apart.is_ok(), "{apart:?}");
    }

    #[test]
    fn missing_and_mistyped_keys() {
        assert_eq!(
            integration("hosts = [\"a.com\"]\n"),
            "t.toml:3:1: missing key \"name\""
        );
        assert_eq!(
            error("[daemon]\nsocket = 5\n"),
            "t.toml:2:10: invalid type: integer `5`, expected an absolute path"
        );
        assert_eq!(
            error("[[profile]]\nname = \"p\"\negress = \"dny\"\n"),
            "t.toml:3:10: unknown variant `dny`, expected `allow` or `deny`"
        );
    }

    #[test]
    fn daemon_values_are_checked() {
        let daemon = |line: &str| error(&format!("[daemon]\n{line}\n"));
        assert_eq!(
            daemon("subnet = \"10.233.0.1/16\""),
            "t.toml:2:10: network \"10.233.0.1/16\" has host bits set; did you mean \"10.233.0.0/16\"?"
        );
        assert_eq!(
            daemon("subnet = \"10.233.0.0/29\""),
            "t.toml:2:10: network \"10.233.0.0/29\" is too small: each sandbox takes a /30 block; use a prefix length of 28 or less"
        );
        assert_eq!(
            daemon("subnet = \"10.233.0.0\""),
            "t.toml:2:10: invalid IPv4 network \"10.233.0.0\"; expected CIDR notation, as in \"10.233.0.0/16\""
        );
        assert_eq!(
            daemon("subnet = \"fd00::/48\""),
            "t.toml:2:10: invalid IPv4 network \"fd00::/48\"; expected CIDR notation, as in \"10.233.0.0/16\""
        );
        assert_eq!(
            daemon("subnet6 = \"fd00:5ba:d::/57\""),
            "t.toml:2:11: network \"fd00:5ba:d::/57\" is too small: each sandbox takes a /64; use a prefix length of 56 or less"
        );
        assert_eq!(
            daemon("subnet6 = \"fd00:5ba:d::1/48\""),
            "t.toml:2:11: network \"fd00:5ba:d::1/48\" has host bits set; did you mean \"fd00:5ba:d::/48\"?"
        );
        assert_eq!(
            daemon("dns = [\"192.0.2.1\", \"dns.example\"]"),
            "t.toml:2:21: invalid DNS server \"dns.example\"; expected an IP address with an optional port, as in \"192.0.2.53\", \"192.0.2.53:5353\", \"2001:db8::53\" or \"[2001:db8::53]:5353\""
        );
        assert_eq!(
            daemon("upstream_ca = [\"/ok.pem\", \"ca.pem\"]"),
            "t.toml:2:27: path \"ca.pem\" is not absolute"
        );
        assert_eq!(
            daemon("audit_log = \"audit.jsonl\""),
            "t.toml:2:13: path \"audit.jsonl\" is not absolute"
        );
        let config = parse("[daemon]\nsubnet = \"10.0.0.0/28\"\nsubnet6 = \"fd00::/56\"\n");
        assert_eq!(config.daemon.subnet.prefix_len(), 28);
        assert_eq!(config.daemon.subnet6.unwrap().prefix_len(), 56);
    }

    #[test]
    fn secret_definitions_are_checked() {
        let secret = |line: &str| error(&format!("[secrets]\n{line}\n"));
        assert_eq!(
            secret("a = { env = \"A\", file = \"/a\" }"),
            "t.toml:2:5: a secret has exactly one source; write { env = \"VARIABLE\" }, { file = \"/absolute/path\" } or { credential = \"name\" }"
        );
        assert_eq!(
            secret("a = {}"),
            "t.toml:2:5: empty secret; write { env = \"VARIABLE\" }, { file = \"/absolute/path\" } or { credential = \"name\" }"
        );
        let pasted = secret("a = \"sk-live-123\"");
        assert_eq!(
            pasted,
            "t.toml:2:5: a secret's value does not go in the config; write { env = \"VARIABLE\" }, { file = \"/absolute/path\" } or { credential = \"name\" }"
        );
        assert!(!pasted.contains("sk-live"));
        assert_eq!(
            secret("a = { file = \"key.txt\" }"),
            "t.toml:2:14: path \"key.txt\" is not absolute"
        );
        assert_eq!(
            secret("a = { env = \"\" }"),
            "t.toml:2:5: invalid environment variable name \"\""
        );
        assert_eq!(
            secret("a = { credential = \"../x\" }"),
            "t.toml:2:5: invalid credential name \"../x\""
        );
        assert_eq!(
            secret("\"my.key\" = { env = \"A\" }"),
            "t.toml:2:1: invalid secret name \"my.key\"; use letters, digits, '_' and '-'"
        );
    }

    #[test]
    fn integrations_are_checked() {
        assert_eq!(
            integration("name = \"\"\nhosts = [\"a.com\"]\n"),
            "t.toml:4:8: integration name is empty"
        );
        assert_eq!(
            integration("name = \"a\"\nhosts = []\nheaders = { X = \"1\" }\n"),
            "t.toml:5:9: integration \"a\" has no hosts; list at least one, as in hosts = [\"api.example.com\"]"
        );
        assert_eq!(
            integration("name = \"a\"\nhosts = [\"a.com\"]\n"),
            "t.toml:4:8: integration \"a\" injects nothing; give it headers = { ... } or basic_auth = { ... }"
        );
        assert_eq!(
            integration("name = \"a\"\nhosts = [\"a.com\"]\nbasic_auth = { username = \"u\", password = \"p\" }\nheaders = { X = \"1\", authorization = \"x\" }\n"),
            "t.toml:7:22: integration \"a\" sets header \"authorization\" and basic_auth, which also sets it; keep one"
        );
        assert_eq!(
            integration("name = \"a\"\nhosts = [\"a.com\"]\nheaders = { X-Key = \"1\", x-key = \"2\" }\n"),
            "t.toml:6:26: header \"x-key\" is given twice in integration \"a\" (header names are case-insensitive)"
        );
        assert_eq!(
            integration("name = \"a\"\nhosts = [\"a.com\"]\nheaders = { \"X Key\" = \"1\" }\n"),
            "t.toml:6:13: invalid header name \"X Key\""
        );
        assert_eq!(
            integration("name = \"a\"\nhosts = [\"a.com\"]\nheaders = { Host = \"evil.com\" }\n"),
            "t.toml:6:13: header \"Host\" cannot be set by an integration"
        );
        assert_eq!(
            error(&format!(
                "{SECRETS}[[integration]]\nname = \"a\"\nhosts = [\"a.com\"]\nheaders = {{ X = \"1\" }}\n\
                 [[integration]]\nname = \"a\"\nhosts = [\"b.com\"]\nheaders = {{ X = \"1\" }}\n"
            )),
            "t.toml:8:8: integration \"a\" is defined twice"
        );
    }

    #[test]
    fn host_patterns_are_checked() {
        let host = |h: &str| {
            integration(&format!(
                "name = \"a\"\nhosts = [\"ok.com\", \"{h}\"]\nheaders = {{ X = \"1\" }}\n"
            ))
        };
        assert_eq!(
            host("a.*.com"),
            "t.toml:5:20: invalid host \"a.*.com\": \"*\" is allowed only as the whole first label, as in \"*.example.com\""
        );
        assert_eq!(
            host("*"),
            "t.toml:5:20: invalid host \"*\": \"*\" is allowed only as the whole first label, as in \"*.example.com\""
        );
        assert_eq!(
            host("*x.com"),
            "t.toml:5:20: invalid host \"*x.com\": \"*\" is allowed only as the whole first label, as in \"*.example.com\""
        );
        assert_eq!(
            host("192.0.2.1"),
            "t.toml:5:20: \"192.0.2.1\" is an IP address; hosts are matched against TLS SNI and HTTP Host names, so give a name"
        );
        assert_eq!(
            host("2001:db8::1"),
            "t.toml:5:20: \"2001:db8::1\" is an IP address; hosts are matched against TLS SNI and HTTP Host names, so give a name"
        );
        assert_eq!(
            host("bücher.de"),
            "t.toml:5:20: invalid host \"bücher.de\": character 'ü' is not allowed; write internationalized names in their xn-- form"
        );
        assert_eq!(
            host("a..com"),
            "t.toml:5:20: invalid host \"a..com\": empty label"
        );
        assert_eq!(
            host("-a.com"),
            "t.toml:5:20: invalid host \"-a.com\": label \"-a\" starts or ends with '-'"
        );
        assert_eq!(
            host("a.com:443"),
            "t.toml:5:20: invalid host \"a.com:443\": character ':' is not allowed"
        );
        let config = parse(
            "[[profile]]\nname = \"p\"\nallow_hosts = [\"API.Example.COM.\", \"*.Example.org\"]\n",
        );
        assert_eq!(
            config.profiles[0].allow_hosts,
            [
                HostPattern::Exact("api.example.com".into()),
                HostPattern::Wildcard("example.org".into())
            ]
        );
        assert_eq!(
            config.profiles[0].allow_hosts[1].to_string(),
            "*.example.org"
        );
    }

    #[test]
    fn host_matching() {
        let exact = HostPattern::parse("api.example.com").unwrap();
        assert!(exact.matches("api.example.com"));
        assert!(exact.matches("API.Example.com."));
        assert!(!exact.matches("api.example.com.."));
        assert!(!exact.matches("x.api.example.com"));
        assert!(!exact.matches("example.com"));
        let wildcard = HostPattern::parse("*.example.com").unwrap();
        assert!(wildcard.matches("a.example.com"));
        assert!(wildcard.matches("a.b.EXAMPLE.com."));
        assert!(!wildcard.matches("example.com"));
        assert!(!wildcard.matches(".example.com"));
        assert!(!wildcard.matches("aexample.com"));
        assert!(!wildcard.matches("a.example.org"));
        assert!(!wildcard.matches("ü.example.co"));
        assert!(wildcard.matches("ü.example.com"));
    }

    #[test]
    fn templates() {
        let mut values = BTreeMap::new();
        values.insert("k".to_owned(), SecretValue::new("V".into()));
        values.insert("other-1".to_owned(), SecretValue::new("W".into()));
        let secrets = Secrets(values);
        let render = |s: &str| Template::parse(s).unwrap().render(&secrets).unwrap();
        assert_eq!(render("Bearer ${secret:k}"), "Bearer V");
        assert_eq!(render("${secret:k}:${secret:other-1}"), "V:W");
        assert_eq!(render("$$${secret:k}$$"), "$V$");
        assert_eq!(render("pa$word $"), "pa$word $");
        assert_eq!(render("$${secret:k}"), "${secret:k}");
        assert_eq!(render(""), "");
        let template = Template::parse("${secret:k} ${secret:x} ${secret:k}").unwrap();
        assert_eq!(template.secret_names().collect::<Vec<_>>(), ["k", "x", "k"]);
        assert_eq!(
            template.render(&secrets).unwrap_err().to_string(),
            "secret \"x\" has no loaded value"
        );
    }

    #[test]
    fn template_errors() {
        let header = |value: &str| {
            integration(&format!(
                "name = \"a\"\nhosts = [\"a.com\"]\nheaders = {{ X = {value} }}\n"
            ))
        };
        assert_eq!(
            header("\"Bearer ${secret:key\""),
            "t.toml:6:17: unclosed \"${\" in template; write \"$$\" for a literal \"$\""
        );
        assert_eq!(
            header("\"${env:HOME}\""),
            "t.toml:6:17: unknown placeholder \"${env:HOME}\"; the only one is \"${secret:NAME}\" (write \"$$\" for a literal \"$\")"
        );
        assert_eq!(
            header("\"${secret:}\""),
            "t.toml:6:17: secret name is empty"
        );
        assert_eq!(
            header("\"Bearer ${secret:nope}\""),
            "t.toml:6:17: secret \"nope\" is not defined in [secrets]"
        );
        assert_eq!(
            integration("name = \"a\"\nhosts = [\"a.com\"]\nbasic_auth = { username = \"u\", password = \"${secret:x}\" }\n"),
            "t.toml:6:43: secret \"x\" is not defined in [secrets]"
        );
    }

    #[test]
    fn profiles_are_checked() {
        let base = format!(
            "{SECRETS}[[integration]]\nname = \"a\"\nhosts = [\"a.com\"]\nheaders = {{ X = \"1\" }}\n\
             [[integration]]\nname = \"b\"\nhosts = [\"b.com\"]\nheaders = {{ X = \"1\" }}\n"
        );
        assert_eq!(
            error(&format!(
                "{base}[[profile]]\nname = \"y\"\nintegrations = [\"a\", \"x\"]\n"
            )),
            "t.toml:13:22: unknown integration \"x\" in profile \"y\"; defined: a, b"
        );
        assert_eq!(
            error("[[profile]]\nname = \"y\"\nintegrations = [\"x\"]\n"),
            "t.toml:3:17: unknown integration \"x\" in profile \"y\"; no [[integration]] is defined"
        );
        assert_eq!(
            error(&format!(
                "{base}[[profile]]\nname = \"y\"\nintegrations = [\"a\", \"a\"]\n"
            )),
            "t.toml:13:22: integration \"a\" is listed twice in profile \"y\""
        );
        assert_eq!(
            error(
                "[[profile]]\nname = \"p\"\n[[profile]]\nname = \"q\"\n[[profile]]\nname = \"p\"\n"
            ),
            "t.toml:6:8: profile \"p\" is defined twice"
        );
        assert_eq!(
            error("[[profile]]\nname = \"p q\"\n"),
            "t.toml:2:8: invalid profile name \"p q\"; use letters, digits, '_' and '-'"
        );
        assert_eq!(
            error("[[profile]]\nname = \"p\"\nusers = [\"alice\", \"@\"]\n"),
            "t.toml:3:19: invalid user \"@\"; expected a user name, \"@group\" or \"*\""
        );
        let config = parse(&format!(
            "{base}[[profile]]\nname = \"y\"\nintegrations = [\"b\", \"a\"]\negress = \"deny\"\n"
        ));
        let profile = &config.profiles[0];
        assert_eq!(profile.egress, Egress::Deny);
        assert_eq!(
            config
                .integrations_of(profile)
                .map(|i| i.name.as_str())
                .collect::<Vec<_>>(),
            ["b", "a"]
        );
    }

    #[test]
    fn users_matching() {
        let config = parse(
            "[[profile]]\nname = \"p\"\nusers = [\"alice\", \"@dev\"]\n\
             [[profile]]\nname = \"all\"\nusers = [\"*\"]\n",
        );
        let [p, all] = &config.profiles[..] else {
            panic!()
        };
        assert_eq!(
            p.users,
            [
                UserMatcher::User("alice".into()),
                UserMatcher::Group("dev".into())
            ]
        );
        assert!(p.allows("alice", &[]));
        assert!(p.allows("bob", &strings(&["users", "dev"])));
        assert!(!p.allows("bob", &strings(&["users", "developers"])));
        assert!(!p.allows("dev", &[]));
        assert!(all.allows("anyone", &[]));
    }

    #[test]
    fn profile_selection() {
        let config = parse(
            "[[profile]]\nname = \"ops\"\nusers = [\"@ops\"]\n\
             [[profile]]\nname = \"dev\"\nusers = [\"alice\", \"bob\"]\n\
             [[profile]]\nname = \"default\"\nusers = [\"alice\"]\n\
             [[profile]]\nname = \"nobody\"\n",
        );
        let select = |requested, user, groups: &[&str]| {
            config
                .select_profile(requested, user, &strings(groups))
                .map(|p| p.name.as_str())
                .map_err(|e| e.to_string())
        };
        assert_eq!(select(None, "alice", &[]), Ok("default"));
        assert_eq!(select(None, "bob", &[]), Ok("dev"));
        assert_eq!(select(None, "carol", &["ops"]), Ok("ops"));
        assert_eq!(select(Some("dev"), "alice", &[]), Ok("dev"));
        assert_eq!(
            select(Some("ops"), "alice", &[]),
            Err("profile \"ops\" does not allow user \"alice\"; user \"alice\" may use: dev, default".into())
        );
        assert_eq!(
            select(Some("prod"), "bob", &[]),
            Err("profile \"prod\" does not exist; user \"bob\" may use: dev".into())
        );
        assert_eq!(
            select(Some("nobody"), "carol", &[]),
            Err("profile \"nobody\" does not allow user \"carol\"; user \"carol\" may use no profile".into())
        );
        assert_eq!(
            select(None, "carol", &["users"]),
            Err(format!("no [[profile]] in {PATH} allows user \"carol\""))
        );
        assert_eq!(
            parse("")
                .select_profile(None, "root", &[])
                .unwrap_err()
                .to_string(),
            format!("no [[profile]] in {PATH} allows user \"root\"")
        );
    }

    #[test]
    fn secret_values_do_not_leak_through_debug() {
        let value = SecretValue::new("hunter2".into());
        assert_eq!(format!("{value:?}"), "<redacted>");
        let secrets = Secrets(BTreeMap::from([("pw".to_owned(), value)]));
        assert_eq!(format!("{secrets:?}"), "Secrets({\"pw\": <redacted>})");
    }

    #[test]
    fn location_counts_characters_and_handles_crlf() {
        let src = Source {
            path: Path::new("t"),
            text: "a\r\nüü = 1\n",
        };
        assert_eq!(src.location(0), Location { line: 1, col: 1 });
        assert_eq!(src.location(3), Location { line: 2, col: 1 });
        assert_eq!(src.location(8), Location { line: 2, col: 4 });
        assert_eq!(
            error("[daemon]\r\n\"ü\" = 1 \r\n"),
            "t.toml:2:1: unknown key \"ü\" in [daemon]; expected one of: socket, socket_group, subnet, subnet6, audit_log, dns, upstream_ca"
        );
    }
}
