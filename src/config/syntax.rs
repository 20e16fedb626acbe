//! What every table of the config shares. The contract promises errors that name the file, line and
//! column; toml gives byte spans and serde's own wording, so this is where spans become `PATH:LINE:COL`
//! and messages are put in the config's terms. Names and absolute paths are checked here so that every
//! table spells them alike. It uses no other part of the config.

use std::fmt;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use thiserror::Error;

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

/// The config text, to turn byte offsets into `PATH:LINE:COL` errors.
pub(super) struct Source<'a> {
    pub(super) path: &'a Path,
    pub(super) text: &'a str,
}

impl Source<'_> {
    pub(super) fn location(&self, offset: usize) -> Location {
        let before = self.text.get(..offset).unwrap_or(self.text);
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        Location {
            line: before.matches('\n').count() + 1,
            col: before[line_start..].chars().count() + 1,
        }
    }

    pub(super) fn at(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        ConfigError::At {
            path: self.path.to_owned(),
            location: self.location(span.start),
            message: message.into(),
        }
    }

    pub(super) fn toml_error(&self, error: &toml::de::Error) -> ConfigError {
        let message = reword(error.message());
        match error.span() {
            Some(span) => self.at(span, message),
            None => ConfigError::Invalid {
                path: self.path.to_owned(),
                message,
            },
        }
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
            ("secret_access_key", " in aws_sigv4"),
            ("credential", " in a [secrets] entry"),
            ("installation_id", " in [secrets.NAME.github_app]"),
            ("token_url", " in [secrets.NAME.oauth2]"),
            ("scopes", " in [secrets.NAME.google_service_account]"),
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

/// Deserializes a string with `parse` inside the visitor: toml attaches the location of the
/// string itself (not of the enclosing value) only to errors raised there.
pub(super) fn parse_str<'de, D: Deserializer<'de>, T>(
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

pub(super) struct AbsolutePath(pub(super) PathBuf);

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

/// Secret, integration and profile names.
pub(super) fn check_name(kind: &str, name: &str) -> Result<(), String> {
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

#[cfg(test)]
mod tests;
