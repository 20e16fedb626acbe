use std::path::PathBuf;

use super::*;
use crate::secrets::testing::rsa_pem;

fn github_spec() -> MintSpec {
    MintSpec::GithubApp(GithubAppSpec {
        app_id: "123456".into(),
        installation_id: 7890123,
        private_key: "gh_app_key".into(),
        repositories: vec![],
        permissions: BTreeMap::new(),
        api: None,
    })
}

fn oauth2_spec() -> Oauth2Spec {
    Oauth2Spec {
        token_url: "https://login.example.com/oauth2/token".into(),
        client_id: "sandbox-prod".into(),
        client_secret: Some("crm_secret".into()),
        grant: GrantKind::ClientCredentials,
        refresh_token: None,
        auth: ClientAuth::Basic,
        scope: None,
        params: BTreeMap::new(),
        default_expires_in: None,
    }
}

fn google_key() -> String {
    serde_json::json!({
        "type": "service_account",
        "private_key": rsa_pem(),
        "client_email": "robot@p.iam.gserviceaccount.com",
        "token_uri": "https://oauth2.test/token",
    })
    .to_string()
}

fn resolve_with(spec: &MintSpec, values: &[(&str, &str)]) -> Result<Definition, DefinitionError> {
    let values: BTreeMap<String, String> = values
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    spec.resolve(
        "it",
        &|name| values.get(name).map(String::as_str),
        Path::new("/var/lib/sandbox"),
    )
}

#[test]
fn a_github_app_resolves_to_its_installations_endpoint() {
    let pem = rsa_pem();
    let definition = resolve_with(&github_spec(), &[("gh_app_key", &pem)]).unwrap();
    assert_eq!(definition.kind(), SourceKind::GithubApp);
    assert_eq!(
        definition.endpoint().to_string(),
        "https://api.github.com/app/installations/7890123/access_tokens"
    );
    let MintSpec::GithubApp(mut spec) = github_spec() else {
        unreachable!()
    };
    spec.api = Some("https://ghe.example.com/api/v3".into());
    let ghe = resolve_with(&MintSpec::GithubApp(spec), &[("gh_app_key", &pem)]).unwrap();
    assert_eq!(
        ghe.endpoint().to_string(),
        "https://ghe.example.com/api/v3/app/installations/7890123/access_tokens"
    );
}

#[test]
fn github_app_errors_name_their_field() {
    let error = resolve_with(&github_spec(), &[]).unwrap_err();
    assert_eq!(error.field(), "private_key");
    assert_eq!(
        error.to_string(),
        "private_key: secret \"gh_app_key\" is not defined in [secrets] (key material comes from a secret with env, file or credential)"
    );
    let error = resolve_with(&github_spec(), &[("gh_app_key", "ghp_oops")]).unwrap_err();
    assert_eq!(
        error,
        DefinitionError::Key {
            field: "private_key",
            secret: "gh_app_key".into(),
            why: KeyError::NoKey
        }
    );
    assert!(!error.to_string().contains("ghp_oops"));
    let MintSpec::GithubApp(mut spec) = github_spec() else {
        unreachable!()
    };
    spec.api = Some("http://ghe.example.com/api/v3".into());
    let error =
        resolve_with(&MintSpec::GithubApp(spec), &[("gh_app_key", &rsa_pem())]).unwrap_err();
    assert_eq!(error.field(), "api");
}

#[test]
fn oauth2_resolves_secrets_grant_and_state_file() {
    let mut spec = oauth2_spec();
    spec.grant = GrantKind::RefreshToken;
    spec.refresh_token = Some("crm_refresh".into());
    spec.default_expires_in = Some(Duration::from_secs(300));
    let definition = resolve_with(
        &MintSpec::Oauth2(spec),
        &[("crm_secret", "s3cret"), ("crm_refresh", "rt-1")],
    )
    .unwrap();
    let Minter::Oauth2(client) = &definition.minter else {
        panic!("{definition:?}")
    };
    assert_eq!(client.client_secret.as_ref().unwrap().expose(), "s3cret");
    assert_eq!(
        client.grant,
        Grant::RefreshToken {
            configured: SecretValue::new("rt-1".into()),
            state_file: PathBuf::from("/var/lib/sandbox/it"),
        }
    );
    assert_eq!(client.default_lifetime, Duration::from_secs(300));
    let mut public = oauth2_spec();
    public.client_secret = None;
    let definition = resolve_with(&MintSpec::Oauth2(public), &[]).unwrap();
    let Minter::Oauth2(client) = &definition.minter else {
        panic!("{definition:?}")
    };
    assert!(client.client_secret.is_none());
    assert_eq!(client.default_lifetime, oauth2::DEFAULT_LIFETIME);
}

#[test]
fn oauth2_errors_name_their_field() {
    let field = |change: &dyn Fn(&mut Oauth2Spec)| {
        let mut spec = oauth2_spec();
        change(&mut spec);
        resolve_with(&MintSpec::Oauth2(spec), &[("crm_secret", "s"), ("rt", "r")])
            .unwrap_err()
            .field()
    };
    assert_eq!(
        field(&|s| s.token_url = "http://login.example.com/token".into()),
        "token_url"
    );
    assert_eq!(field(&|s| s.grant = GrantKind::RefreshToken), "grant");
    assert_eq!(
        field(&|s| s.refresh_token = Some("rt".into())),
        "refresh_token"
    );
    assert_eq!(
        field(&|s| s.client_secret = Some("nope".into())),
        "client_secret"
    );
    assert_eq!(
        field(&|s| {
            s.grant = GrantKind::RefreshToken;
            s.refresh_token = Some("nope".into());
        }),
        "refresh_token"
    );
    assert_eq!(field(&|s| s.client_id = String::new()), "client_id");
    assert_eq!(
        field(&|s| s.params = [("grant_type".to_string(), "password".to_string())].into()),
        "params"
    );
    assert_eq!(
        field(&|s| s.default_expires_in = Some(Duration::ZERO)),
        "default_expires_in"
    );
}

#[test]
fn a_google_service_account_resolves_from_its_key_file() {
    let spec = MintSpec::GoogleServiceAccount(GoogleSpec {
        key: "gcp_key".into(),
        scopes: vec!["https://www.googleapis.com/auth/cloud-platform".into()],
    });
    let definition = resolve_with(&spec, &[("gcp_key", &google_key())]).unwrap();
    assert_eq!(definition.kind(), SourceKind::GoogleServiceAccount);
    assert_eq!(
        definition.endpoint().to_string(),
        "https://oauth2.test/token"
    );
    let error = resolve_with(&spec, &[("gcp_key", r#"{"private_key":"x"}"#)]).unwrap_err();
    assert_eq!(
        error.to_string(),
        "key: secret \"gcp_key\" is not a service account key file: the key file has no client_email"
    );
    let no_scopes = MintSpec::GoogleServiceAccount(GoogleSpec {
        key: "gcp_key".into(),
        scopes: vec![],
    });
    assert_eq!(
        resolve_with(&no_scopes, &[("gcp_key", &google_key())])
            .unwrap_err()
            .field(),
        "scopes"
    );
}

#[test]
fn definitions_are_equal_when_specs_and_root_credentials_are() {
    let spec = MintSpec::Oauth2(oauth2_spec());
    let a = resolve_with(&spec, &[("crm_secret", "s1")]).unwrap();
    assert_eq!(a, resolve_with(&spec, &[("crm_secret", "s1")]).unwrap());
    assert_ne!(a, resolve_with(&spec, &[("crm_secret", "s2")]).unwrap());
    let mut scoped = oauth2_spec();
    scoped.scope = Some("api".into());
    assert_ne!(
        a,
        resolve_with(&MintSpec::Oauth2(scoped), &[("crm_secret", "s1")]).unwrap()
    );
}

#[test]
fn secret_names_list_the_key_fields() {
    let mut spec = oauth2_spec();
    spec.refresh_token = Some("rt".into());
    assert_eq!(
        MintSpec::Oauth2(spec).secret_names(),
        [("client_secret", "crm_secret"), ("refresh_token", "rt")]
    );
    assert_eq!(
        github_spec().secret_names(),
        [("private_key", "gh_app_key")]
    );
    assert_eq!(github_spec().kind().as_str(), "github_app");
}
