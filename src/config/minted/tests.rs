use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::Duration;

use crate::config::tests::{error, TempPath};
use crate::config::{Config, SecretSource};
use crate::secrets::definition::{GithubAppSpec, GoogleSpec, GrantKind, MintSpec, Oauth2Spec};
use crate::secrets::oauth2::ClientAuth;
use crate::secrets::testing::rsa_pem;

/// The minted secrets of DESIGN's example, with their key material in files.
const DESIGN: &str = r#"[secrets]
gh_app_key = { file = "GH_KEY" }
crm_secret = { file = "CRM_SECRET" }
gcp_key = { file = "GCP_KEY" }

[secrets.github.github_app]                  # GitHub App installation token (1 h)
app_id = "123456"                            # or the App's client ID
installation_id = 7890123
private_key = "gh_app_key"                   # a secret holding the App's PEM key
repositories = ["repo"]
permissions = { contents = "read", pull_requests = "write" }

[secrets.crm.oauth2]                         # OAuth2 token endpoint
token_url = "https://login.example.com/oauth2/token"
client_id = "sandbox-prod"
client_secret = "crm_secret"                 # a secret
scope = "api"
params = { audience = "https://api.example.com" }
default_expires_in = 600

[secrets.gcp.google_service_account]         # OAuth2 JWT-bearer grant (RFC 7523)
key = "gcp_key"                              # a secret holding the service account's JSON key
scopes = ["https://www.googleapis.com/auth/cloud-platform"]

[[integration]]
name = "github-api"
hosts = ["api.github.com"]
headers = { Authorization = "Bearer ${secret:github}" }

[[integration]]
name = "github-git"
hosts = ["github.com"]
basic_auth = { username = "x-access-token", password = "${secret:github}" }

[[integration]]
name = "crm"
hosts = ["api.example.com"]
headers = { Authorization = "Bearer ${secret:crm}", X-Key = "${secret:crm_secret}" }
"#;

/// DESIGN with its key files in `dir`, holding what `files` gives (name, content).
struct Files {
    dir: TempPath,
}

impl Files {
    fn new(tag: &str, files: &[(&str, &str)]) -> Files {
        let dir = TempPath::new(tag);
        fs::create_dir_all(&dir.0).unwrap();
        for (name, content) in files {
            fs::write(dir.0.join(name), content).unwrap();
        }
        Files { dir }
    }

    fn config(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for name in ["GH_KEY", "CRM_SECRET", "GCP_KEY"] {
            text = text.replace(name, &self.dir.0.join(name).display().to_string());
        }
        text
    }
}

fn google_key(fields: serde_json::Value) -> String {
    let mut key = serde_json::json!({
        "type": "service_account",
        "client_email": "robot@p.iam.gserviceaccount.com",
        "private_key": rsa_pem(),
        "token_uri": "https://oauth2.example.com/token",
    });
    for (name, value) in fields.as_object().unwrap() {
        if value.is_null() {
            key.as_object_mut().unwrap().remove(name);
        } else {
            key[name] = value.clone();
        }
    }
    format!("{key:#}\n")
}

/// The error `Config::parse`, `load_secrets` or `minted_definitions` gives for `text`.
fn definition_error(files: &Files, text: &str) -> String {
    let config = Config::parse(&files.config(text), Path::new("t.toml")).unwrap();
    let secrets = config.load_secrets().unwrap();
    config.minted_definitions(&secrets).unwrap_err().to_string()
}

#[test]
fn designs_minted_secrets_parse_resolve_and_are_used_in_templates() {
    // PEM keys and JSON key files span lines: as key material they may.
    let files = Files::new(
        "design-minted",
        &[
            ("GH_KEY", &rsa_pem()),
            ("CRM_SECRET", "s3cret\n"),
            ("GCP_KEY", &google_key(serde_json::json!({}))),
        ],
    );
    let config = Config::parse(&files.config(DESIGN), Path::new("t.toml")).unwrap();
    let SecretSource::Minted(github) = &config.secrets["github"].source else {
        panic!("{:?}", config.secrets["github"])
    };
    assert_eq!(
        github.spec,
        MintSpec::GithubApp(GithubAppSpec {
            app_id: "123456".into(),
            installation_id: 7890123,
            private_key: "gh_app_key".into(),
            repositories: vec!["repo".into()],
            permissions: BTreeMap::from([
                ("contents".into(), "read".into()),
                ("pull_requests".into(), "write".into())
            ]),
            api: None,
        })
    );
    let SecretSource::Minted(crm) = &config.secrets["crm"].source else {
        panic!()
    };
    assert_eq!(
        crm.spec,
        MintSpec::Oauth2(Oauth2Spec {
            token_url: "https://login.example.com/oauth2/token".into(),
            client_id: "sandbox-prod".into(),
            client_secret: Some("crm_secret".into()),
            grant: GrantKind::ClientCredentials,
            refresh_token: None,
            auth: ClientAuth::Basic,
            scope: Some("api".into()),
            params: BTreeMap::from([("audience".into(), "https://api.example.com".into())]),
            default_expires_in: Some(Duration::from_secs(600)),
        })
    );
    let SecretSource::Minted(gcp) = &config.secrets["gcp"].source else {
        panic!()
    };
    assert_eq!(
        gcp.spec,
        MintSpec::GoogleServiceAccount(GoogleSpec {
            key: "gcp_key".into(),
            scopes: vec!["https://www.googleapis.com/auth/cloud-platform".into()],
        })
    );
    assert_eq!(config.secrets["github"].source.kind(), "github_app");
    // One minted secret serves the API (Bearer) and git (basic auth).
    let minted: Vec<(&str, &[String])> = config
        .integrations
        .iter()
        .map(|i| (i.name.as_str(), i.minted.as_slice()))
        .collect();
    assert_eq!(
        minted,
        [
            ("github-api", &["github".to_string()][..]),
            ("github-git", &["github".to_string()][..]),
            ("crm", &["crm".to_string()][..]),
        ]
    );

    let secrets = config.load_secrets().unwrap();
    assert!(
        secrets.get("github").is_none(),
        "a minted secret is not read"
    );
    let definitions = config.minted_definitions(&secrets).unwrap();
    let names: Vec<&str> = definitions.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["crm", "gcp", "github"]);
    assert_eq!(
        definitions[2].endpoint().to_string(),
        "https://api.github.com/app/installations/7890123/access_tokens"
    );
    assert_eq!(definitions[1].endpoint().host(), "oauth2.example.com");
}

#[test]
fn the_app_id_may_be_a_number_and_auth_and_grant_are_named() {
    let files = Files::new(
        "numbers",
        &[
            ("GH_KEY", &rsa_pem()),
            ("CRM_SECRET", "s"),
            ("GCP_KEY", "x"),
        ],
    );
    let text = files.config(
        "[secrets]\nk = { file = \"GH_KEY\" }\nrt = { file = \"CRM_SECRET\" }\n\
         [secrets.gh.github_app]\napp_id = 42\ninstallation_id = 1\nprivate_key = \"k\"\n\
         [secrets.o.oauth2]\ntoken_url = \"https://a.example/t\"\nclient_id = \"c\"\n\
         grant = \"refresh_token\"\nrefresh_token = \"rt\"\nauth = \"post\"\n",
    );
    let config = Config::parse(&text, Path::new("t.toml")).unwrap();
    let SecretSource::Minted(gh) = &config.secrets["gh"].source else {
        panic!()
    };
    let MintSpec::GithubApp(spec) = &gh.spec else {
        panic!()
    };
    assert_eq!(spec.app_id, "42");
    let SecretSource::Minted(o) = &config.secrets["o"].source else {
        panic!()
    };
    let MintSpec::Oauth2(spec) = &o.spec else {
        panic!()
    };
    assert_eq!(
        (spec.grant, spec.auth, spec.client_secret.as_deref()),
        (GrantKind::RefreshToken, ClientAuth::Post, None)
    );
    let secrets = config.load_secrets().unwrap();
    assert_eq!(config.minted_definitions(&secrets).unwrap().len(), 2);
}

#[test]
fn the_shape_of_a_minted_secret_is_checked_where_it_is_written() {
    assert_eq!(
        error("[secrets.x.vault]\naddress = \"https://vault\"\n"),
        "t.toml:1:10: unknown key \"vault\" in a [secrets] entry; expected one of: env, file, \
         credential, github_app, oauth2, google_service_account"
    );
    assert_eq!(
        error(
            "[secrets]\nk = { env = \"K\" }\n[secrets.gh.github_app]\napp_id = \"1\"\n\
             installation_id = 2\nprivate_key = \"k\"\nrepos = []\n"
        ),
        "t.toml:7:1: unknown key \"repos\" in [secrets.NAME.github_app]; expected one of: app_id, \
         installation_id, private_key, repositories, permissions, api"
    );
    let oauth2 = error(
        "[secrets.o.oauth2]\ntoken_url = \"https://a/t\"\nclient_id = \"c\"\nsecret = \"s\"\n",
    );
    assert!(
        oauth2.starts_with("t.toml:4:1: unknown key \"secret\" in [secrets.NAME.oauth2]"),
        "{oauth2}"
    );
    let google = error("[secrets.g.google_service_account]\nkey = \"k\"\nscope = \"x\"\n");
    assert!(
        google.starts_with(
            "t.toml:3:1: unknown key \"scope\" in [secrets.NAME.google_service_account]"
        ),
        "{google}"
    );
    assert_eq!(
        error("[secrets.o.oauth2]\ntoken_url = \"https://a/t\"\nclient_id = \"c\"\ngrant = \"password\"\n"),
        "t.toml:4:9: unknown variant `password`, expected `client_credentials` or `refresh_token`"
    );
    assert_eq!(
        error("[secrets.o.oauth2]\ntoken_url = \"https://a/t\"\n"),
        "t.toml:1:1: missing key \"client_id\""
    );
    assert!(error("[secrets.o]\nenv = \"A\"\noauth2 = {}\n")
        .contains("a secret has exactly one source"));
}

#[test]
fn key_fields_name_a_static_secret_of_secrets() {
    assert_eq!(
        error("[secrets.gh.github_app]\napp_id = \"1\"\ninstallation_id = 2\nprivate_key = \"nokey\"\n"),
        "t.toml:4:15: secret \"gh\": private_key names secret \"nokey\", which is not defined in \
         [secrets]; key material comes from a secret with env, file or credential"
    );
    assert_eq!(
        error(
            "[secrets.a.oauth2]\ntoken_url = \"https://a/t\"\nclient_id = \"c\"\n\
             [secrets.b.oauth2]\ntoken_url = \"https://a/t\"\nclient_id = \"c\"\nclient_secret = \"a\"\n"
        ),
        "t.toml:7:17: secret \"b\": client_secret names secret \"a\", which is minted itself; key \
         material comes from a secret with env, file or credential"
    );
}

#[test]
fn key_material_and_urls_are_checked_once_the_values_are_read() {
    let ec_key = rcgen::KeyPair::generate().unwrap().serialize_pem();
    let files = Files::new(
        "checks",
        &[
            ("GH_KEY", &ec_key),
            ("CRM_SECRET", "s3cret"),
            (
                "GCP_KEY",
                &google_key(serde_json::json!({"client_email": null})),
            ),
        ],
    );
    let github = "[secrets]\nk = { file = \"GH_KEY\" }\n[secrets.gh.github_app]\napp_id = \"1\"\n\
                  installation_id = 2\nprivate_key = \"k\"\n";
    let not_rsa = definition_error(&files, github);
    assert!(
        not_rsa.starts_with(
            "t.toml:6:15: secret \"gh\": private_key: secret \"k\" is not an RSA private key: "
        ),
        "{not_rsa}"
    );
    assert!(
        !not_rsa.contains("BEGIN"),
        "the key is not quoted: {not_rsa}"
    );

    let google = "[secrets]\nk = { file = \"GCP_KEY\" }\n[secrets.g.google_service_account]\n\
                  key = \"k\"\nscopes = [\"s\"]\n";
    assert_eq!(
        definition_error(&files, google),
        "t.toml:4:7: secret \"g\": key: secret \"k\" is not a service account key file: the key \
         file has no client_email"
    );
    fs::write(
        files.dir.0.join("GCP_KEY"),
        google_key(serde_json::json!({"private_key": null})),
    )
    .unwrap();
    assert!(definition_error(&files, google).ends_with("the key file has no private_key"));

    let oauth2 = |fields: &str| {
        definition_error(
            &files,
            &format!("[secrets]\ncs = {{ file = \"CRM_SECRET\" }}\n[secrets.o.oauth2]\nclient_id = \"c\"\n{fields}"),
        )
    };
    assert_eq!(
        oauth2("token_url = \"http://login.example.com/token\"\n"),
        "t.toml:5:13: secret \"o\": token_url: \"http://login.example.com/token\" is not https; \
         token endpoints are reached over verified TLS only"
    );
    assert_eq!(
        oauth2("token_url = \"https://a.example/t\"\ngrant = \"refresh_token\"\n"),
        "t.toml:6:9: secret \"o\": grant: grant = \"refresh_token\" needs refresh_token = \"SECRET\", \
         the secret holding the first refresh token"
    );
    assert_eq!(
        oauth2("token_url = \"https://a.example/t\"\nrefresh_token = \"cs\"\n"),
        "t.toml:6:17: secret \"o\": refresh_token: only used with grant = \"refresh_token\""
    );
    assert_eq!(
        oauth2("token_url = \"https://a.example/t\"\ndefault_expires_in = 0\n"),
        "t.toml:6:22: secret \"o\": default_expires_in: zero; a token must live a while"
    );
}

#[test]
fn a_secret_used_in_a_header_may_not_span_lines_even_if_it_is_also_key_material() {
    let files = Files::new("header", &[("GH_KEY", &rsa_pem())]);
    let text = files.config(
        "[secrets]\nk = { file = \"GH_KEY\" }\n[secrets.gh.github_app]\napp_id = \"1\"\n\
         installation_id = 2\nprivate_key = \"k\"\n\
         [[integration]]\nname = \"i\"\nhosts = [\"a.example\"]\nheaders = { X = \"${secret:k}\" }\n",
    );
    let config = Config::parse(&text, Path::new("t.toml")).unwrap();
    let refused = config.load_secrets().unwrap_err().to_string();
    assert!(
        refused
            .ends_with("the value contains a control character, which cannot go in an HTTP header"),
        "{refused}"
    );
}
