use super::*;
use crate::secrets::testing::token_response as response;

#[test]
fn endpoints_are_https_urls_with_a_host_and_no_user_info() {
    let e = Endpoint::parse("https://login.example.com/oauth2/token?x=1").unwrap();
    assert_eq!(
        (e.host(), e.port(), e.uri().path()),
        ("login.example.com", 443, "/oauth2/token")
    );
    let e = Endpoint::parse("https://[fd00::1]:8443/token").unwrap();
    assert_eq!((e.host(), e.port()), ("fd00::1", 8443));
    assert_eq!(
        Endpoint::parse("http://login.example.com/token"),
        Err(EndpointError::NotHttps(
            "http://login.example.com/token".into()
        ))
    );
    assert_eq!(
        Endpoint::parse("https://user:hunter2@login.example.com/token"),
        Err(EndpointError::UserInfo)
    );
    assert!(!Endpoint::parse("https://user:hunter2@x y/")
        .unwrap_err()
        .to_string()
        .contains("hunter2"));
    assert_eq!(
        Endpoint::parse("/token"),
        Err(EndpointError::NoHost("/token".into()))
    );
    assert_eq!(
        Endpoint::parse("not a url"),
        Err(EndpointError::NotUrl("not a url".into()))
    );
    let ghe = Endpoint::parse("https://ghe.example.com/api/v3/").unwrap();
    assert_eq!(
        ghe.join("/app/installations/7/access_tokens")
            .unwrap()
            .to_string(),
        "https://ghe.example.com/api/v3/app/installations/7/access_tokens"
    );
    let github = Endpoint::parse("https://api.github.com").unwrap();
    assert_eq!(
        github.join("/app").unwrap().to_string(),
        "https://api.github.com/app"
    );
}

#[test]
fn statuses_are_transient_or_permanent_and_retry_after_is_read() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_000);
    for (status, kind) in [
        (500, FailureKind::Transient),
        (503, FailureKind::Transient),
        (408, FailureKind::Transient),
        (429, FailureKind::Transient),
        (400, FailureKind::Permanent),
        (401, FailureKind::Permanent),
        (403, FailureKind::Permanent),
        (404, FailureKind::Permanent),
        (302, FailureKind::Permanent),
    ] {
        let failure = failure_for_status(&response(status, &[], ""), now, None);
        assert_eq!((failure.kind, failure.status), (kind, Some(status)));
    }
    let failure = failure_for_status(
        &response(429, &[("retry-after", "7")], ""),
        now,
        Some("slow down".into()),
    );
    assert_eq!(failure.retry_after, Some(Duration::from_secs(7)));
    assert_eq!(failure.message, "HTTP 429: slow down");
    let dated = response(503, &[("retry-after", "Sun, 06 Nov 1994 08:49:37 GMT")], "");
    assert_eq!(
        failure_for_status(&dated, now, None).retry_after,
        Some(Duration::from_secs(777))
    );
    let past = SystemTime::UNIX_EPOCH + Duration::from_secs(784_112_000);
    assert_eq!(
        failure_for_status(&dated, past, None).retry_after,
        Some(Duration::ZERO)
    );
    let junk = response(503, &[("retry-after", "soon")], "");
    assert_eq!(failure_for_status(&junk, now, None).retry_after, None);
}

#[test]
fn provider_errors_are_quoted_cleaned_cut_and_masked() {
    let mask = vec![Zeroizing::new("s3cret".to_string())];
    assert_eq!(
        provider_error(
            br#"{"error":"invalid_client","error_description":"bad secret s3cret\n"}"#,
            &mask
        )
        .as_deref(),
        Some("invalid_client: bad secret ***")
    );
    assert_eq!(
        provider_error(br#"{"error":"invalid_grant"}"#, &mask).as_deref(),
        Some("invalid_grant")
    );
    assert_eq!(
        provider_error(
            br#"{"message":"Bad credentials","documentation_url":"https://docs"}"#,
            &mask
        )
        .as_deref(),
        Some("Bad credentials")
    );
    assert_eq!(
        provider_error(br#"{"error":{"code":7}}"#, &mask).as_deref(),
        Some(r#"{"code":7}"#)
    );
    assert_eq!(provider_error(b"<html>oops</html>", &mask), None);
    assert_eq!(provider_error(br#"{"access_token":"t"}"#, &mask), None);
    let long = format!(r#"{{"error":"{}"}}"#, "é".repeat(1000));
    assert_eq!(
        provider_error(long.as_bytes(), &mask)
            .unwrap()
            .chars()
            .count(),
        MAX_DETAIL + 3
    );
}

#[test]
fn bodies_are_described_without_being_quoted() {
    assert_eq!(
        describe_body(&response(
            200,
            &[("content-type", "text/html")],
            "<b>tok</b>"
        )),
        "a 10 byte text/html body"
    );
    assert_eq!(describe_body(&response(200, &[], "")), "an empty body");
    assert_eq!(describe_body(&response(200, &[], "x")), "a 1 byte body");
}

#[test]
fn tokens_must_fit_in_a_header() {
    assert!(check_token("ghs_abc").is_ok());
    assert!(check_token(&"x".repeat(520)).is_ok());
    assert!(check_token("").is_err());
    assert!(check_token("a\r\nb").is_err());
}
