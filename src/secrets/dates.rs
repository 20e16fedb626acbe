//! The two date formats token endpoints send: RFC 3339 (GitHub's `expires_at`) and HTTP's IMF-fixdate
//! (a `Retry-After` that is a date). Pure parsing into `SystemTime`; a date the parser does not take is
//! `None`, and the caller decides what that means (a failed fetch, or no Retry-After).
//!
//! humantime (already a dependency) reads RFC 3339 only with a `Z` offset; GitHub Enterprise Server and
//! other providers may write `+00:00`, and a token refused for that would be a needless outage.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `2016-07-11T22:14:10Z`, `2016-07-11T22:14:10.123+02:00`; `t` and a space are taken for `T` (RFC 3339
/// §5.6 allows both).
pub fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let b = text.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    if !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let year = digits(&b[0..4])?;
    let month = digits(&b[5..7])?;
    let day = digits(&b[8..10])?;
    let (hour, minute, second) = (
        digits(&b[11..13])?,
        digits(&b[14..16])?,
        digits(&b[17..19])?,
    );
    let mut rest = &b[19..];
    let mut nanos = 0u32;
    if let Some(fraction) = rest.strip_prefix(b".") {
        let len = fraction.iter().take_while(|c| c.is_ascii_digit()).count();
        if len == 0 {
            return None;
        }
        // Digits past nanoseconds are dropped, not rounded: an expiry a nanosecond early is harmless.
        for (i, c) in fraction[..len].iter().enumerate() {
            if i < 9 {
                nanos = nanos * 10 + u32::from(c - b'0');
            }
        }
        nanos *= 10u32.pow(9u32.saturating_sub(len as u32));
        rest = &fraction[len..];
    }
    let offset: i64 = match rest {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let (h, m) = (digits(&[*h1, *h2])?, digits(&[*m1, *m2])?);
            if h > 23 || m > 59 {
                return None;
            }
            let minutes = i64::from(h * 60 + m);
            if *sign == b'+' {
                minutes * 60
            } else {
                -minutes * 60
            }
        }
        _ => return None,
    };
    let local = seconds_since_epoch(year, month, day, hour, minute, second)?;
    at(local - offset, nanos)
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` (RFC 9110 §5.6.7). The obsolete RFC 850 and asctime forms are not
/// taken: a Retry-After in them is ignored, and the usual backoff applies.
pub fn parse_http_date(text: &str) -> Option<SystemTime> {
    let mut parts = text.split(' ');
    let (Some(weekday), Some(day), Some(month), Some(year), Some(time), Some("GMT"), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    if weekday.len() != 4 || !weekday.ends_with(',') || day.len() != 2 || year.len() != 4 {
        return None;
    }
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| *m == month)? as u32 + 1;
    let t = time.as_bytes();
    if t.len() != 8 || t[2] != b':' || t[5] != b':' {
        return None;
    }
    let seconds = seconds_since_epoch(
        digits(year.as_bytes())?,
        month,
        digits(day.as_bytes())?,
        digits(&t[0..2])?,
        digits(&t[3..5])?,
        digits(&t[6..8])?,
    )?;
    at(seconds, 0)
}

fn digits(b: &[u8]) -> Option<u32> {
    b.iter().try_fold(0u32, |n, c| {
        c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
    })
}

fn at(seconds: i64, nanos: u32) -> Option<SystemTime> {
    let seconds = u64::try_from(seconds).ok()?;
    UNIX_EPOCH.checked_add(Duration::new(seconds, nanos))
}

/// Seconds since 1970-01-01T00:00:00 of a calendar date and time, validated (a 60th second, for a leap
/// second, is taken).
fn seconds_since_epoch(
    year: u32,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
) -> Option<i64> {
    let leap = year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400));
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if day == 0 || day > days_in_month || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    // Days from civil (H. Hinnant's algorithm): years start in March, so the leap day is last.
    let y = i64::from(year) - i64::from(month <= 2);
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let day_of_year = (153 * i64::from((month + 9) % 12) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    Some(days * 86_400 + i64::from(hour * 3600 + minute * 60 + second))
}

#[cfg(test)]
mod tests;
