//! `[secrets]`: where each secret's value comes from, and the values once read. The config names
//! sources only, never values, and a value once read is kept where it can neither be logged nor
//! swapped out.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;

use super::syntax::{AbsolutePath, ConfigError, Location};

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

/// Secret values, by secret name.
#[derive(Debug)]
pub struct Secrets(BTreeMap<String, SecretValue>);

impl Secrets {
    /// Reads every secret's value from its source; errors name `path`, the config's.
    pub(super) fn load(
        path: &Path,
        definitions: &BTreeMap<String, SecretDef>,
    ) -> Result<Secrets, ConfigError> {
        definitions
            .iter()
            .map(|(name, def)| match def.source.read() {
                Ok(value) => Ok((name.clone(), SecretValue::new(value))),
                Err(why) => Err(ConfigError::At {
                    path: path.to_owned(),
                    location: def.location,
                    message: format!("secret \"{name}\" from {}: {why}", def.source),
                }),
            })
            .collect::<Result<_, _>>()
            .map(Secrets)
    }

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

#[cfg(test)]
mod tests;
