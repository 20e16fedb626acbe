//! The two date formats token endpoints send: RFC 3339 (GitHub's `expires_at`) and HTTP's dates (a
//! `Retry-After` that is a date), read by maintained parsers (`time`, `httpdate`; both were already in
//! the tree, under rcgen and hyper). A date they do not take is `None`, and the caller decides what that
//! means (a failed fetch, or no Retry-After).
//!
//! Not humantime's RFC 3339 reader, which takes only a `Z` offset: GitHub Enterprise Server and other
//! providers may write `+00:00`, and a token refused for that would be a needless outage.

use std::time::{SystemTime, UNIX_EPOCH};

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// `2016-07-11T22:14:10Z`, `2016-07-11T22:14:10.123+02:00`. Dates before 1970 are refused: no token
/// expired then, and such a date is a broken endpoint.
pub fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let parsed = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    Some(SystemTime::from(parsed)).filter(|at| *at >= UNIX_EPOCH)
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` (RFC 9110 §5.6.7), and the obsolete RFC 850 and asctime forms that
/// a recipient must still take.
pub fn parse_http_date(text: &str) -> Option<SystemTime> {
    httpdate::parse_http_date(text).ok()
}

#[cfg(test)]
mod tests;
