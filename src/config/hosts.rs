//! Host patterns: the names an integration or a profile's `allow_hosts` applies to, matched against
//! TLS SNI and HTTP Host. They decide which requests get secrets, so a pattern is refused when it
//! would match more than its author could mean (an address, a whole top-level domain).

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Deserializer};

use super::syntax::parse_str;

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

    /// Whether some name matches both patterns.
    pub(super) fn overlaps(&self, other: &HostPattern) -> bool {
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

    /// Case-insensitive; one trailing dot on `host` is ignored.
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

impl<'de> Deserialize<'de> for HostPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_str(
            d,
            "a host name, as in \"api.example.com\" or \"*.example.com\"",
            HostPattern::parse,
        )
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

#[cfg(test)]
mod tests;
