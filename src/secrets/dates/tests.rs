use std::time::Duration;

use super::*;

fn unix(seconds: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(seconds)
}

#[test]
fn rfc3339_as_github_writes_it_and_with_offsets_and_fractions() {
    // `date -u -d 2016-07-11T22:14:10Z +%s`
    assert_eq!(
        parse_rfc3339("2016-07-11T22:14:10Z"),
        Some(unix(1_468_275_250))
    );
    assert_eq!(
        parse_rfc3339("2016-07-11t22:14:10z"),
        Some(unix(1_468_275_250))
    );
    assert_eq!(
        parse_rfc3339("2016-07-12T00:14:10+02:00"),
        Some(unix(1_468_275_250))
    );
    assert_eq!(
        parse_rfc3339("2016-07-11T17:44:10-04:30"),
        Some(unix(1_468_275_250))
    );
    assert_eq!(
        parse_rfc3339("2016-07-11 22:14:10.25Z"),
        Some(unix(1_468_275_250) + Duration::from_millis(250))
    );
    assert_eq!(
        parse_rfc3339("2016-07-11T22:14:10.1234567891Z"),
        Some(unix(1_468_275_250) + Duration::from_nanos(123_456_789))
    );
    assert_eq!(
        parse_rfc3339("2000-02-29T00:00:00Z"),
        Some(unix(951_782_400))
    );
    assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(unix(0)));
}

#[test]
fn rfc3339_refuses_what_is_not_a_valid_date() {
    for text in [
        "",
        "2016-07-11",
        "2016-07-11T22:14:10",
        "2016-07-11T22:14:10+0200",
        "2016-07-11T22:14:10.Z",
        "2016-13-11T22:14:10Z",
        "2016-02-30T22:14:10Z",
        "1900-02-29T00:00:00Z",
        "2016-07-11T24:00:00Z",
        "2016-07-11T22:14:10Z trailing",
        "1969-12-31T23:59:59Z",
        "２016-07-11T22:14:10Z",
        "+016-07-11T22:14:10Z",
    ] {
        assert_eq!(parse_rfc3339(text), None, "{text}");
    }
}

#[test]
fn http_dates() {
    assert_eq!(
        parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
        Some(unix(784_111_777))
    );
    // The obsolete forms, which RFC 9110 says a recipient must still take.
    for text in ["Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994"] {
        assert_eq!(parse_http_date(text), Some(unix(784_111_777)), "{text}");
    }
    for text in [
        "Sun, 06 Nov 1994 08:49:37 UTC",
        "Sun, 31 Nov 1994 08:49:37 GMT",
        "120",
    ] {
        assert_eq!(parse_http_date(text), None, "{text}");
    }
}
