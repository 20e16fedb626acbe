//! Header templates: the values an integration injects, with `${secret:NAME}` where a secret goes.
//! The values are rendered at request time, so a template is checked once, when the config is read,
//! for everything that would otherwise break a request: placeholders and control characters.

use std::mem;

use thiserror::Error;

use super::secrets::Secrets;
use super::syntax::check_name;

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

/// Where a template finds the values of the secrets it names: the static secrets (`Secrets`), or those
/// and the minted tokens of a request (the request policy's).
pub trait SecretValues {
    fn value(&self, name: &str) -> Option<&str>;
}

impl SecretValues for Secrets {
    fn value(&self, name: &str) -> Option<&str> {
        self.get(name).map(|value| value.expose())
    }
}

impl Template {
    pub(super) fn parse(s: &str) -> Result<Self, String> {
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

    pub fn render(&self, values: &impl SecretValues) -> Result<String, MissingSecret> {
        self.render_with(|name| values.value(name))
    }

    /// As [`Template::render`], with each secret's value from `value` (redaction renders the values a
    /// secret is injected in with the value it is changing to, or from).
    pub fn render_with<'v>(
        &self,
        value: impl Fn(&str) -> Option<&'v str>,
    ) -> Result<String, MissingSecret> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Secret(name) => {
                    out.push_str(value(name).ok_or_else(|| MissingSecret(name.clone()))?)
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
