//! `[[integration]]`: which hosts get which headers, or an AWS signature (`aws_sigv4`), and whether their
//! responses are scanned for secrets (`redact`). An integration is checked whole, when the config is read:
//! its header names, its templates and the secrets they name, its signing part, so that a request never
//! meets one that cannot be injected.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use serde::Deserialize;
use toml::Spanned;

use super::aws_sigv4::{AwsSigV4, RawAwsSigV4};
use super::hosts::HostPattern;
use super::secrets::{SecretDef, SecretSource};
use super::syntax::{ConfigError, Source};
use super::templates::Template;

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

/// Headers the AWS signature sets (`aws_sigv4`): an integration that signs cannot set them too.
const SIGNATURE_HEADERS: &[&str] = &[
    "authorization",
    "x-amz-date",
    "x-amz-security-token",
    "x-amz-content-sha256",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Integration {
    pub name: String,
    pub hosts: Vec<HostPattern>,
    /// Header names as written in the config (HTTP header names are case-insensitive).
    pub headers: BTreeMap<String, Template>,
    pub basic_auth: Option<BasicAuth>,
    /// Each request is signed with these credentials (the client's signature removed).
    pub aws_sigv4: Option<AwsSigV4>,
    /// Whether its hosts' responses are scanned for secrets and masked (`redact`, default true).
    pub redact: bool,
    /// The minted secrets its templates and its `aws_sigv4` name, each once: empty for an integration of
    /// static secrets, whose requests then cost what they always did.
    pub minted: Vec<String>,
}

impl Integration {
    /// Every template it renders: its headers', then basic auth's.
    pub fn templates(&self) -> impl Iterator<Item = &Template> {
        self.headers.values().chain(
            self.basic_auth
                .iter()
                .flat_map(|auth| [&auth.username, &auth.password]),
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BasicAuth {
    pub username: Template,
    pub password: Template,
}

/// The `Authorization` value of basic auth (RFC 7617) for `user` and `password`: what the proxy sends, and
/// what redaction masks.
pub fn basic_credentials(user: &str, password: &str) -> String {
    format!("Basic {}", BASE64.encode(format!("{user}:{password}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIntegration {
    pub(super) name: Spanned<String>,
    hosts: Spanned<Vec<HostPattern>>,
    #[serde(default)]
    headers: BTreeMap<Spanned<String>, Spanned<String>>,
    basic_auth: Option<RawBasicAuth>,
    aws_sigv4: Option<Spanned<RawAwsSigV4>>,
    #[serde(default = "redact_by_default")]
    redact: bool,
}

fn redact_by_default() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBasicAuth {
    username: Spanned<String>,
    password: Spanned<String>,
}

impl RawIntegration {
    pub(super) fn validate(
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
            // Other headers may go with a signature: API Gateway wants an x-api-key beside IAM's.
            if self.aws_sigv4.is_some()
                && SIGNATURE_HEADERS
                    .iter()
                    .any(|signed| header.eq_ignore_ascii_case(signed))
            {
                return Err(src.at(
                    span,
                    format!("integration \"{name}\" sets header \"{header}\", which its aws_sigv4 signature sets; remove it"),
                ));
            }
            headers.insert(header, template(src, value, secrets)?);
        }
        let aws_sigv4 = match self.aws_sigv4 {
            Some(raw) if self.basic_auth.is_some() => {
                return Err(src.at(
                    raw.span(),
                    format!("integration \"{name}\" has basic_auth and aws_sigv4, which both set Authorization; keep one"),
                ))
            }
            Some(raw) => Some(raw.into_inner().validate(src, &self.hosts, secrets)?),
            None => None,
        };
        let basic_auth = match self.basic_auth {
            Some(auth) => Some(BasicAuth {
                username: template(src, auth.username, secrets)?,
                password: template(src, auth.password, secrets)?,
            }),
            None if headers.is_empty() && aws_sigv4.is_none() => {
                return Err(src.at(
                    name_span,
                    format!("integration \"{name}\" injects nothing; give it headers = {{ ... }}, basic_auth = {{ ... }} or aws_sigv4 = {{ ... }}"),
                ))
            }
            None => None,
        };
        let mut integration = Integration {
            name,
            hosts: self.hosts.into_inner(),
            headers,
            basic_auth,
            aws_sigv4,
            redact: self.redact,
            minted: Vec::new(),
        };
        let mut minted: Vec<String> = Vec::new();
        let signing = integration.aws_sigv4.iter().flat_map(|aws| {
            std::iter::once(aws.secret_access_key.as_str()).chain(aws.session_token.as_deref())
        });
        for name in integration
            .templates()
            .flat_map(Template::secret_names)
            .chain(signing)
        {
            let is_minted = secrets
                .get(name)
                .is_some_and(|def| matches!(def.source, SecretSource::Minted(_)));
            if is_minted && !minted.iter().any(|m| m == name) {
                minted.push(name.to_owned());
            }
        }
        integration.minted = minted;
        Ok(integration)
    }
}

/// A template where the config gives it: errors point at its value, and every secret it names is
/// defined in `[secrets]`.
fn template(
    src: &Source,
    raw: Spanned<String>,
    secrets: &BTreeMap<String, SecretDef>,
) -> Result<Template, ConfigError> {
    let template = Template::parse(raw.get_ref()).map_err(|m| src.at(raw.span(), m))?;
    if let Some(name) = template.secret_names().find(|n| !secrets.contains_key(*n)) {
        return Err(src.at(
            raw.span(),
            format!("secret \"{name}\" is not defined in [secrets]"),
        ));
    }
    Ok(template)
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

#[cfg(test)]
mod tests;
