//! `aws_sigv4 = { access_key_id, secret_access_key, session_token?, region?, service? }` on an integration:
//! the daemon signs each request with AWS Signature Version 4 in place of the client's signature. Checked
//! whole when the config is read: the key id is a plain value, the key and token name secrets, region and
//! service are names a credential scope can hold, and the integration's hosts are no way to STS.
//!
//! Why STS is refused here: a sandbox that can have the daemon sign a GetSessionToken, AssumeRole or
//! GetFederationToken call gets temporary credentials back in the answer, usable anywhere and by anyone
//! for hours: the key leaves by the front door. No integration for a service endpoint needs STS, so an
//! `aws_sigv4` integration whose hosts could name an STS endpoint (`sts.*`, `sts-fips.*`, a VPC endpoint
//! of STS, or a wildcard over a whole AWS domain or region) is a config error. Other APIs that answer
//! with credentials (IAM's CreateAccessKey, SSO, Cognito) are the key's IAM policy's to deny: README says
//! so.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::hosts::HostPattern;
use super::secrets::SecretDef;
use super::syntax::{check_name, ConfigError, Source};

/// The domains AWS's endpoints are under (`api.aws`: the dual-stack endpoints).
const AWS_DOMAINS: &[&str] = &["amazonaws.com", "amazonaws.com.cn", "api.aws"];

/// STS endpoints' first label.
const STS_LABELS: &[&str] = &["sts", "sts-fips"];

/// The signing part of an integration. The secret fields hold names of `[secrets]`, never values: the
/// request path looks their values up in the sandbox's `Secrets` at each request, as templates do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsSigV4 {
    /// A plain value: it names the key, and every signature carries it in its `Credential=`.
    pub access_key_id: String,
    /// The secret holding the secret access key.
    pub secret_access_key: String,
    /// The secret holding the session token of temporary credentials.
    pub session_token: Option<String>,
    /// The credential scope's region and service; each, when absent, is taken from the client's own
    /// signature, else from the host name.
    pub region: Option<String>,
    pub service: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAwsSigV4 {
    access_key_id: Spanned<String>,
    secret_access_key: Spanned<String>,
    session_token: Option<Spanned<String>>,
    region: Option<Spanned<String>>,
    service: Option<Spanned<String>>,
}

impl RawAwsSigV4 {
    /// Checks the fields and the integration's `hosts`; errors point at the field (or at `hosts`).
    pub(super) fn validate(
        self,
        src: &Source,
        hosts: &Spanned<Vec<HostPattern>>,
        secrets: &BTreeMap<String, SecretDef>,
    ) -> Result<AwsSigV4, ConfigError> {
        check_access_key_id(self.access_key_id.get_ref())
            .map_err(|m| src.at(self.access_key_id.span(), m))?;
        let secret = |field: &str, raw: Spanned<String>| -> Result<String, ConfigError> {
            check_secret_name(field, raw.get_ref(), secrets).map_err(|m| src.at(raw.span(), m))?;
            Ok(raw.into_inner())
        };
        let secret_access_key = secret("secret_access_key", self.secret_access_key)?;
        let session_token = match self.session_token {
            Some(raw) => Some(secret("session_token", raw)?),
            None => None,
        };
        let scope = |what: &str, example: &str, raw: Option<Spanned<String>>| {
            match raw {
            Some(raw) if !is_aws_scope_name(raw.get_ref()) => Err(src.at(
                raw.span(),
                format!(
                    "{what} \"{}\" is not an AWS {what} name (lower-case letters, digits and '-', as in \"{example}\")",
                    raw.get_ref()
                ),
            )),
            raw => Ok(raw.map(Spanned::into_inner)),
        }
        };
        let region = scope("region", "us-east-1", self.region)?;
        let service = scope("service", "bedrock", self.service)?;
        if let Some(host) = hosts.get_ref().iter().find(|host| reaches_sts(host)) {
            return Err(src.at(
                hosts.span(),
                format!(
                    "host \"{host}\" may name an AWS STS endpoint, and an integration that signs for STS \
                     lets the sandbox take temporary credentials away (GetSessionToken, AssumeRole); list \
                     the service endpoints it needs, as in \"bedrock-runtime.us-east-1.amazonaws.com\""
                ),
            ));
        }
        Ok(AwsSigV4 {
            access_key_id: self.access_key_id.into_inner(),
            secret_access_key,
            session_token,
            region,
            service,
        })
    }
}

/// Whether `name` can be a region or service in a credential scope: what AWS uses (lower-case letters,
/// digits, `-`), which also keeps it from breaking the `Authorization` header it goes into.
pub fn is_aws_scope_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// An access key id is letters and digits (`AKIA...`, `ASIA...`; IAM allows `_` too). The value is
/// not repeated in the message: a secret pasted into the wrong field must not reach the log.
fn check_access_key_id(id: &str) -> Result<(), String> {
    let valid =
        (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if valid {
        Ok(())
    } else {
        Err("access_key_id is not an AWS access key id (letters and digits, as in \"AKIAIOSFODNN7EXAMPLE\"); \
             it is the key's plain id, the secret access key goes in secret_access_key"
            .into())
    }
}

/// A secret field names a defined secret. The value is not repeated in the message: it may be the key
/// itself, pasted in place of a name.
fn check_secret_name(
    field: &str,
    name: &str,
    secrets: &BTreeMap<String, SecretDef>,
) -> Result<(), String> {
    if check_name("secret", name).is_ok() && secrets.contains_key(name) {
        return Ok(());
    }
    Err(format!(
        "{field} must name a secret of [secrets], as in {field} = \"aws_secret\"; no secret has this \
         name (not repeated here, in case it is the key itself)"
    ))
}

/// Whether `host` may name an STS endpoint: `sts.amazonaws.com`, `sts[-fips].<region>.amazonaws.com`
/// (and `.amazonaws.com.cn`, `.api.aws`; not an S3 bucket named sts), an STS VPC endpoint (`vpce-....sts.<region>.vpce.amazonaws.com`),
/// or a wildcard that covers any of them: over a whole AWS domain, a region (`*.us-east-1.amazonaws.com`,
/// any one label but S3's), VPC endpoints, or STS's names. Names outside AWS's domains are the operator's
/// own endpoints (a private S3, a test server) and are not judged.
fn reaches_sts(host: &HostPattern) -> bool {
    let (name, wildcard) = match host {
        HostPattern::Exact(name) => (name, false),
        HostPattern::Wildcard(suffix) => (suffix, true),
    };
    let labels: Vec<&str> = match AWS_DOMAINS.iter().find_map(|domain| {
        if name == domain {
            Some("")
        } else {
            name.strip_suffix(domain)?.strip_suffix('.')
        }
    }) {
        Some("") => Vec::new(),
        Some(rest) => rest.split('.').collect(),
        None => return false,
    };
    let sts = |label: &&str| STS_LABELS.contains(label);
    if wildcard {
        let one_label_not_s3 = matches!(labels.as_slice(), [label] if !label.starts_with("s3"));
        labels.is_empty() || one_label_not_s3 || labels.iter().any(sts) || labels.contains(&"vpce")
    } else {
        // `sts.s3.<region>.amazonaws.com` is a bucket named sts.
        let bucket = labels.get(1).is_some_and(|next| next.starts_with("s3"));
        (labels.first().is_some_and(sts) && !bucket)
            || (labels.contains(&"vpce") && labels.iter().any(sts))
    }
}

#[cfg(test)]
mod tests;
