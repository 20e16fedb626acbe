//! A request's head as the client sent it: `RequestHead` takes the fields of a decoded header block one by
//! one, checks each as RFC 9113 section 8 asks (names, values, pseudo-headers, connection-specific fields)
//! and keeps them in one buffer that every request reuses; `check` and `check_trailers` say whether the whole
//! is well-formed. It also encodes the head again for the upstream, the client's fields but those the
//! integration replaces (the integration's own are `machine`'s to add).

use std::ops::Range;

use super::hpack;
use crate::proxy::policy::MAX_HEADER_BYTES;

/// Fields in one request's header list.
pub(super) const MAX_FIELDS: usize = 256;

/// A request's fields as the client sent them, their bytes in one buffer that each request reuses.
#[derive(Default)]
pub(super) struct RequestHead {
    bytes: Vec<u8>,
    method: Option<Range<usize>>,
    scheme: Option<Range<usize>>,
    authority: Option<Range<usize>>,
    path: Option<Range<usize>>,
    pub(super) protocol: bool,
    hosts: Vec<Range<usize>>,
    fields: Vec<(Range<usize>, Range<usize>)>,
    malformed: Option<&'static str>,
    list_size: usize,
    pub(super) too_large: bool,
}

impl RequestHead {
    pub(super) fn clear(&mut self) {
        self.bytes.clear();
        self.method = None;
        self.scheme = None;
        self.authority = None;
        self.path = None;
        self.protocol = false;
        self.hosts.clear();
        self.fields.clear();
        self.malformed = None;
        self.list_size = 0;
        self.too_large = false;
    }

    fn keep(&mut self, bytes: &[u8]) -> Range<usize> {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(bytes);
        start..self.bytes.len()
    }

    fn get(&self, range: &Range<usize>) -> &[u8] {
        self.bytes.get(range.clone()).unwrap_or_default()
    }

    pub(super) fn method(&self) -> &[u8] {
        self.method.as_ref().map_or(&[], |range| self.get(range))
    }

    pub(super) fn path(&self) -> Option<&[u8]> {
        self.path.as_ref().map(|range| self.get(range))
    }

    pub(super) fn authority(&self) -> Option<&[u8]> {
        self.authority.as_ref().map(|range| self.get(range))
    }

    pub(super) fn hosts(&self) -> impl Iterator<Item = &[u8]> {
        self.hosts.iter().map(|range| self.get(range))
    }

    pub(super) fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.fields
            .iter()
            .map(|(name, value)| (self.get(name), self.get(value)))
    }

    /// Takes one decoded field (in order) into the request, noting the first way it is malformed.
    pub(super) fn field(&mut self, name: &[u8], value: &[u8]) {
        self.list_size += name.len() + value.len() + 32;
        if self.list_size > MAX_HEADER_BYTES || self.fields.len() >= MAX_FIELDS {
            self.too_large = true;
            return;
        }
        if self.malformed.is_some() {
            return;
        }
        if !valid_value(value) {
            self.malformed = Some("a field value holds NUL, CR or LF");
            return;
        }
        if let Some(pseudo) = name.strip_prefix(b":") {
            if !self.fields.is_empty() || !self.hosts.is_empty() {
                self.malformed = Some("a pseudo-header after the regular fields");
                return;
            }
            if pseudo == b"protocol" {
                if self.protocol {
                    self.malformed = Some("a repeated pseudo-header");
                }
                self.protocol = true;
                return;
            }
            let kept = self.keep(value);
            let slot = match pseudo {
                b"method" => &mut self.method,
                b"scheme" => &mut self.scheme,
                b"authority" => &mut self.authority,
                b"path" => &mut self.path,
                _ => {
                    self.malformed = Some("an unknown pseudo-header");
                    return;
                }
            };
            if slot.is_some() {
                self.malformed = Some("a repeated pseudo-header");
                return;
            }
            *slot = Some(kept);
            return;
        }
        if !valid_name(name) {
            self.malformed = Some("a field name that is not a lower-case token");
            return;
        }
        if connection_specific(name, value) {
            self.malformed = Some("a connection-specific field (Connection, Upgrade, ...)");
            return;
        }
        if name == b"host" {
            let kept = self.keep(value);
            self.hosts.push(kept);
            return;
        }
        let name = self.keep(name);
        let value = self.keep(value);
        self.fields.push((name, value));
    }

    /// Whether the head is a request (RFC 9113 section 8.3.1); if not, why.
    #[inline]
    pub(super) fn check(&self) -> Result<(), &'static str> {
        if let Some(why) = self.malformed {
            return Err(why);
        }
        if self.method().is_empty() {
            return Err("no :method");
        }
        if self.method() != b"CONNECT"
            && (self.scheme.is_none() || self.path().is_none_or(<[u8]>::is_empty))
        {
            return Err("no :scheme or :path");
        }
        Ok(())
    }

    /// Whether the head is trailers: well-formed, and no pseudo-headers; if not, why.
    pub(super) fn check_trailers(&self) -> Result<(), &'static str> {
        if let Some(why) = self.malformed {
            return Err(why);
        }
        if self.method.is_some()
            || self.scheme.is_some()
            || self.authority.is_some()
            || self.path.is_some()
            || self.protocol
        {
            return Err("pseudo-headers in trailers");
        }
        Ok(())
    }

    /// The head as the upstream gets it, HPACK-encoded into `out`: the client's method and path, the
    /// connection's own scheme and authority, then the client's fields but those named in `replaced`.
    pub(super) fn encode_for_upstream(
        &self,
        authority: &[u8],
        replaced: &[String],
        out: &mut Vec<u8>,
    ) {
        hpack::encode_field(b":method", self.method(), false, out);
        hpack::encode_field(b":scheme", b"https", false, out);
        hpack::encode_field(b":authority", authority, false, out);
        hpack::encode_field(b":path", self.path().unwrap_or(b"/"), false, out);
        self.encode_fields(replaced, out);
    }

    /// The client's regular fields (or trailers), HPACK-encoded into `out`, but those named in `replaced`.
    pub(super) fn encode_fields(&self, replaced: &[String], out: &mut Vec<u8>) {
        for (name, value) in self.fields() {
            if !replaced.iter().any(|n| n.as_bytes() == name) {
                hpack::encode_field(name, value, false, out);
            }
        }
    }
}

/// Whether `name` may appear in an HTTP/2 field name: a token, in lower case.
fn valid_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.iter().all(|&b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b)
        })
}

fn valid_value(value: &[u8]) -> bool {
    !value.iter().any(|&b| b == 0 || b == b'\r' || b == b'\n')
}

/// Fields that are about one HTTP/1.1 connection and have no place in HTTP/2 (RFC 9113 §8.2.2).
fn connection_specific(name: &[u8], value: &[u8]) -> bool {
    matches!(
        name,
        b"connection" | b"keep-alive" | b"proxy-connection" | b"transfer-encoding" | b"upgrade"
    ) || (name == b"te" && value != b"trailers")
}

#[cfg(test)]
mod tests;
