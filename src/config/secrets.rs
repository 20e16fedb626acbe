//! `[secrets]`: where each secret's value comes from, and the values once read. The config names
//! sources only, never values, and a value once read is kept where it can neither be logged nor
//! swapped out (`secrets::SecretValue`, the one type for static and minted values). A minted secret
//! (`minted`) has no value to read: the daemon makes its tokens, from the key material of the secrets
//! its key fields name. Uses `syntax` and `minted`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;

use super::minted::{self, MintedSecret, Spans};
use super::syntax::{AbsolutePath, ConfigError, Location};
use crate::secrets::SecretValue;

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
    /// Tokens the daemon mints and refreshes itself.
    Minted(Box<MintedSecret>),
}

impl SecretSource {
    /// The source's kind, as `sandbox secrets` names it.
    pub fn kind(&self) -> &'static str {
        match self {
            SecretSource::Env(_) => "env",
            SecretSource::File(_) => "file",
            SecretSource::Credential(_) => "credential",
            SecretSource::Minted(minted) => minted.spec.kind().as_str(),
        }
    }
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Env(var) => write!(f, "env {var}"),
            SecretSource::File(path) => write!(f, "file {}", path.display()),
            SecretSource::Credential(name) => write!(f, "credential {name}"),
            SecretSource::Minted(minted) => f.write_str(minted.spec.kind().as_str()),
        }
    }
}

impl SecretSource {
    /// The value of a static secret. `header_safe`: the value goes in HTTP headers (a template names
    /// it, or nothing does), so control characters are refused; key material (a PEM key, a JSON key
    /// file) may span lines.
    fn read(&self, header_safe: bool) -> Result<String, String> {
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
            SecretSource::Minted(_) => return Err("a minted secret has no value to read".into()),
        };
        if value.is_empty() {
            return Err("the value is empty".into());
        }
        if header_safe && value.chars().any(char::is_control) {
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

const SECRET_FORMS: &str =
    "{ env = \"VARIABLE\" }, { file = \"/absolute/path\" } or { credential = \"name\" }, or a minted \
     secret's table ([secrets.NAME.github_app], .oauth2 or .google_service_account)";

/// A `[secrets]` entry as read: a static source, or a minted secret with the spans of its fields.
pub(super) enum RawSource {
    Static(SecretSource),
    Minted(crate::secrets::MintSpec, Spans),
}

impl<'de> Deserialize<'de> for RawSource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct SourceVisitor;
        impl<'de> Visitor<'de> for SourceVisitor {
            type Value = RawSource;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(SECRET_FORMS)
            }
            // The default message would quote the string, which may be a pasted secret.
            fn visit_str<E: de::Error>(self, _: &str) -> Result<RawSource, E> {
                Err(E::custom(format!(
                    "a secret's value does not go in the config; write {SECRET_FORMS}"
                )))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawSource, A::Error> {
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
                        RawSource::Static(SecretSource::Env(var))
                    }
                    "file" => {
                        RawSource::Static(SecretSource::File(map.next_value::<AbsolutePath>()?.0))
                    }
                    "credential" => {
                        let name: String = map.next_value()?;
                        if name.is_empty() || name.contains(['/', '\0']) || name == ".." {
                            return Err(de::Error::custom(format!(
                                "invalid credential name \"{name}\""
                            )));
                        }
                        RawSource::Static(SecretSource::Credential(name))
                    }
                    kind if minted::KINDS.contains(&kind) => {
                        let (spec, spans) = minted::read(kind, &mut map)?;
                        RawSource::Minted(spec, spans)
                    }
                    other => {
                        return Err(de::Error::unknown_field(
                            other,
                            &[
                                "env",
                                "file",
                                "credential",
                                minted::KINDS[0],
                                minted::KINDS[1],
                                minted::KINDS[2],
                            ],
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

/// The values of the static secrets, by secret name, and when they were read.
#[derive(Debug)]
pub struct Secrets {
    values: BTreeMap<String, SecretValue>,
    loaded_at: SystemTime,
}

impl Secrets {
    /// Reads the value of every static secret from its source; errors name `path`, the config's.
    /// `key_material`: secrets only minted secrets' key fields name, whose values may span lines.
    pub(super) fn load(
        path: &Path,
        definitions: &BTreeMap<String, SecretDef>,
        key_material: &BTreeSet<&str>,
    ) -> Result<Secrets, ConfigError> {
        let mut values = BTreeMap::new();
        for (name, def) in definitions {
            if matches!(def.source, SecretSource::Minted(_)) {
                continue;
            }
            match def.source.read(!key_material.contains(name.as_str())) {
                Ok(value) => {
                    values.insert(name.clone(), SecretValue::new(value));
                }
                Err(why) => {
                    return Err(ConfigError::At {
                        path: path.to_owned(),
                        location: def.location,
                        message: format!("secret \"{name}\" from {}: {why}", def.source),
                    })
                }
            }
        }
        Ok(Secrets {
            values,
            loaded_at: SystemTime::now(),
        })
    }

    pub fn get(&self, name: &str) -> Option<&SecretValue> {
        self.values.get(name)
    }

    /// When the values were read (at start, or by the last reload).
    pub fn loaded_at(&self) -> SystemTime {
        self.loaded_at
    }

    #[cfg(test)]
    pub(crate) fn of(pairs: &[(&str, &str)]) -> Secrets {
        Secrets {
            values: pairs
                .iter()
                .map(|(name, value)| (name.to_string(), SecretValue::new(value.to_string())))
                .collect(),
            loaded_at: SystemTime::now(),
        }
    }
}

#[cfg(test)]
mod tests;
