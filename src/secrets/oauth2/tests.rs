use super::*;
use crate::secrets::testing::token_response as answer;

fn client(secret: Option<&str>, auth: ClientAuth) -> Oauth2 {
    Oauth2 {
        endpoint: Endpoint::parse("https://login.example.com/oauth2/token").unwrap(),
        client_id: "sandbox prod:1".into(),
        client_secret: secret.map(|s| SecretValue::new(s.into())),
        grant: Grant::ClientCredentials,
        auth,
        scope: None,
        params: BTreeMap::new(),
        default_lifetime: DEFAULT_LIFETIME,
    }
}

fn body(request: &TokenRequest) -> &str {
    std::str::from_utf8(&request.body).unwrap()
}

#[test]
fn client_credentials_with_basic_auth_urlencodes_id_and_secret_first() {
    let mut client = client(Some("s3cr/t+%"), ClientAuth::Basic);
    client.scope = Some("api read".into());
    client.params = [(
        "audience".to_string(),
        "https://api.example.com".to_string(),
    )]
    .into();
    let request = request(&client, None);
    assert_eq!(
        body(&request),
        "grant_type=client_credentials&scope=api+read&audience=https%3A%2F%2Fapi.example.com"
    );
    let authorization = &request.headers["authorization"];
    assert!(authorization.is_sensitive());
    let encoded = authorization
        .to_str()
        .unwrap()
        .strip_prefix("Basic ")
        .unwrap();
    assert_eq!(
        STANDARD.decode(encoded).unwrap(),
        b"sandbox+prod%3A1:s3cr%2Ft%2B%25"
    );
    assert_eq!(
        request.headers["content-type"],
        "application/x-www-form-urlencoded"
    );
    assert_eq!(request.headers["accept"], "application/json");
    assert_eq!(request.mask.len(), 1);
    assert_eq!(request.mask[0].as_str(), "s3cr/t+%");
}

#[test]
fn post_auth_puts_id_and_secret_in_the_form() {
    let request = request(&client(Some("s3cret"), ClientAuth::Post), None);
    assert_eq!(
        body(&request),
        "grant_type=client_credentials&client_id=sandbox+prod%3A1&client_secret=s3cret"
    );
    assert!(request.headers.get("authorization").is_none());
}

#[test]
fn a_public_client_sends_only_its_id() {
    for auth in [ClientAuth::Basic, ClientAuth::Post] {
        let request = request(&client(None, auth), None);
        assert_eq!(
            body(&request),
            "grant_type=client_credentials&client_id=sandbox+prod%3A1"
        );
        assert!(request.headers.get("authorization").is_none());
        assert!(request.mask.is_empty());
    }
}

#[test]
fn the_refresh_grant_spends_the_token_it_is_given() {
    let mut client = client(Some("s3cret"), ClientAuth::Basic);
    client.grant = Grant::RefreshToken {
        configured: SecretValue::new("configured".into()),
        state_file: "/var/lib/sandbox/crm".into(),
    };
    let rotated = SecretValue::new("rt-2".into());
    let request = request(&client, Some(&rotated));
    assert_eq!(
        body(&request),
        "grant_type=refresh_token&refresh_token=rt-2"
    );
    let masked: Vec<&str> = request.mask.iter().map(|m| m.as_str()).collect();
    assert_eq!(masked, ["rt-2", "s3cret"]);
}

#[test]
fn form_encoding_is_whatwg_urlencoded() {
    let mut form = Form::default();
    form.field("a b", "x*-._~é&=+");
    assert_eq!(form.0.as_str(), "a+b=x*-._%7E%C3%A9%26%3D%2B");
    form.field("k", "");
    assert_eq!(form.0.as_str(), "a+b=x*-._%7E%C3%A9%26%3D%2B&k=");
    let mut big = Form::default();
    let long = "%".repeat(1000);
    big.field("v", &long);
    assert_eq!(big.0.len(), 2 + 3000);
}

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

fn parse(status: u16, body: &str) -> Fetched {
    response(
        &answer(status, &[], body),
        Duration::from_secs(600),
        now(),
        &[],
    )
}

#[test]
fn a_token_lives_expires_in_or_the_default() {
    let minted = parse(
        200,
        r#"{"access_token":"at-1","token_type":"Bearer","expires_in":3599}"#,
    )
    .unwrap();
    assert_eq!(
        (minted.value.expose(), minted.lifetime, minted.status),
        ("at-1", Duration::from_secs(3599), 200)
    );
    assert!(minted.refresh_token.is_none());
    let quoted = parse(200, r#"{"access_token":"at","expires_in":"120"}"#).unwrap();
    assert_eq!(quoted.lifetime, Duration::from_secs(120));
    let none = parse(200, r#"{"access_token":"at"}"#).unwrap();
    assert_eq!(none.lifetime, Duration::from_secs(600));
    let null = parse(200, r#"{"access_token":"at","expires_in":null}"#).unwrap();
    assert_eq!(null.lifetime, Duration::from_secs(600));
    let huge = parse(200, r#"{"access_token":"at","expires_in":1e300}"#).unwrap();
    assert_eq!(huge.lifetime, exchange::MAX_LIFETIME);
    let created = parse(201, r#"{"access_token":"at","expires_in":60}"#).unwrap();
    assert_eq!(created.status, 201);
}

#[test]
fn a_rotated_refresh_token_comes_back() {
    let minted = parse(
        200,
        r#"{"access_token":"at","expires_in":60,"refresh_token":"rt-3"}"#,
    )
    .unwrap();
    assert_eq!(minted.refresh_token.unwrap().expose(), "rt-3");
}

#[test]
fn a_success_without_a_usable_token_is_transient() {
    for (body, says) in [
        ("{}", "HTTP 200 with no access_token"),
        (
            "<html>login</html>",
            "HTTP 200 with a 18 byte body that is not a token response",
        ),
        (
            "",
            "HTTP 200 with an empty body that is not a token response",
        ),
        (r#"{"access_token":""}"#, "HTTP 200 with an empty token"),
        (r#"{"access_token":"a\nb"}"#, "control characters"),
        (r#"{"access_token":"at","expires_in":0}"#, "already expired"),
        (
            r#"{"access_token":"at","expires_in":-5}"#,
            "already expired",
        ),
        (
            r#"{"access_token":"at","expires_in":"soon"}"#,
            "not a number",
        ),
        (
            r#"{"access_token":"at","refresh_token":""}"#,
            "as refresh_token",
        ),
        (
            r#"{"error":"server_error","error_description":"try again"}"#,
            "HTTP 200 with no access_token but an error: server_error: try again",
        ),
    ] {
        let failure = parse(200, body).unwrap_err();
        assert_eq!(failure.kind, FailureKind::Transient, "{body}");
        assert_eq!(failure.status, Some(200));
        assert!(failure.message.contains(says), "{}", failure.message);
        assert!(!failure.message.contains("at\""), "{}", failure.message);
    }
}

#[test]
fn errors_carry_the_providers_words_and_their_kind() {
    let grant = parse(
        400,
        r#"{"error":"invalid_grant","error_description":"Token has been expired or revoked."}"#,
    )
    .unwrap_err();
    assert_eq!(grant.kind, FailureKind::Permanent);
    assert_eq!(
        grant.message,
        "HTTP 400: invalid_grant: Token has been expired or revoked."
    );
    let client = parse(401, r#"{"error":"invalid_client"}"#).unwrap_err();
    assert_eq!(
        (client.kind, client.message.as_str()),
        (FailureKind::Permanent, "HTTP 401: invalid_client")
    );
    let later = parse(400, r#"{"error":"temporarily_unavailable"}"#).unwrap_err();
    assert_eq!(later.kind, FailureKind::Transient);
    let limited = response(
        &answer(429, &[("retry-after", "30")], "too many"),
        DEFAULT_LIFETIME,
        now(),
        &[],
    )
    .unwrap_err();
    assert_eq!(
        (limited.kind, limited.retry_after, limited.message.as_str()),
        (
            FailureKind::Transient,
            Some(Duration::from_secs(30)),
            "HTTP 429"
        )
    );
    let mask = [Zeroizing::new("s3cret".to_string())];
    let echoed = response(
        &answer(
            401,
            &[],
            r#"{"error":"invalid_client","error_description":"secret s3cret is wrong"}"#,
        ),
        DEFAULT_LIFETIME,
        now(),
        &mask,
    )
    .unwrap_err();
    assert_eq!(
        echoed.message,
        "HTTP 401: invalid_client: secret *** is wrong"
    );
}
