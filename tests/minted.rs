//! End-to-end tests of minted secrets (issue 21; DESIGN "Minted secrets", step 5b, invariant 1): the daemon
//! holds a root credential (a GitHub App's key, an OAuth2 client or refresh token, a Google service
//! account key), mints short-lived tokens from it, refreshes them itself and injects them; a sandbox gets
//! a working API and git with no key in its hands. The token endpoints and the APIs are
//! `tests/servers/tokens.py` in U (JWTs checked with python3-cryptography), tokens there live seconds, so
//! each test sees several lifetimes. Root only; all traffic stays inside the test's namespaces.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::tls_upstream::{TlsUpstream, UpstreamRequest, API_HOST, GIT_MARKER};
use common::tokens::*;
use common::*;
use serde_json::{json, Value};

/// U's address for the token server (TlsUpstream takes .3 to .5).
const TOKENS_AT: u8 = 20;

fn skip() -> bool {
    skip_unless_privileged_with(&["openssl", "git", "node"])
}

/// `sandbox secrets --json` as root.
fn secrets_json(d: &Daemon) -> Vec<Value> {
    let out = Command::new(bin())
        .args(["secrets", "--json", "--socket"])
        .arg(&d.socket)
        .stdin(Stdio::null())
        .output()
        .expect("run sandbox secrets");
    assert_code(&out, 0);
    serde_json::from_slice::<Vec<Value>>(&out.stdout)
        .unwrap_or_else(|e| panic!("sandbox secrets --json: {e}: {}", describe(&out)))
}

/// The `sandbox secrets` entry of secret `name`.
fn secret(d: &Daemon, name: &str) -> Value {
    secrets_json(d)
        .into_iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no secret {name} in sandbox secrets"))
}

/// Waits (up to `limit`) until secret `name`'s entry satisfies `want`; panics with the last one.
fn wait_secret(d: &Daemon, name: &str, limit: Duration, want: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let found = wait_for(limit, || {
        last = secret(d, name);
        want(&last).then(|| last.clone())
    });
    found.unwrap_or_else(|| {
        panic!(
            "secret {name} never got there; last: {last:#}\n{}",
            d.logs()
        )
    })
}

/// The audit log's token lines.
fn token_lines(d: &Daemon) -> Vec<Value> {
    d.audit_lines()
        .into_iter()
        .filter(|line| line["kind"] == "token")
        .collect()
}

/// curl in a sandbox as the test user: `-w` adds a last line with the status.
fn sandboxed_curl(d: &Daemon, args: &[&str]) -> Output {
    let mut argv = vec![
        "curl",
        "-sS",
        "--max-time",
        "20",
        "-w",
        "\nstatus=%{http_code}\n",
    ];
    argv.extend(args);
    d.exec(&test_user()).args(argv).run()
}

fn status_of(o: &Output) -> u16 {
    stdout(o)
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("status="))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {}", describe(o)))
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// What a sandbox of the test user can see: its environment (and PID 1's), the daemon's config, the
/// secret and key files, the state directory, and every file it can read that is new since `since` in
/// the places the test and the daemon write.
fn sandbox_view(d: &Daemon, server: &TokenServer, since: &Path) -> String {
    let mut paths: Vec<String> = vec![
        d.config.display().to_string(),
        server.app_key_file.display().to_string(),
        server.google_key_file.display().to_string(),
        server.refresh_token_file.display().to_string(),
        server.state_dir().join("crm").display().to_string(),
    ];
    paths.extend(
        server
            .client_secrets
            .iter()
            .map(|(_, file)| file.display().to_string()),
    );
    let script = format!(
        "env; cat /proc/self/environ /proc/1/environ; for f in {files}; do cat \"$f\"; done; \
         ls -la {state}; \
         find /tmp /var/tmp /run /dev/shm {dirs} -xdev -type f -readable -newer {since} -size -1024k \
            -print0 2>/dev/null | xargs -0 -r cat; true",
        files = paths.join(" "),
        state = server.state_dir().display(),
        dirs = [d.dir.path(), d.work.path(), server.dir.path()]
            .map(|p| p.display().to_string())
            .join(" "),
        since = since.display(),
    );
    let o = d.exec(&test_user()).args(["sh", "-c", &script]).run();
    format!("{}{}", stdout(&o), stderr(&o))
}

/// Invariant 1 for minted secrets: the root credentials, every token the server issued (and every
/// refresh token it rotated to) appear nowhere in `texts` (what sandboxes saw), the daemon's log or the
/// audit log.
fn assert_secrets_stay_secret(d: &Daemon, server: &TokenServer, texts: &[&str]) {
    let mut needles = server.root_credentials();
    needles.extend(server.issued().into_iter().map(|(_, _, token)| token));
    assert!(needles.len() > 5, "nothing to look for: {needles:?}");
    let logs = d.logs();
    let audit = fs::read_to_string(&d.audit_log).unwrap_or_default();
    for needle in &needles {
        assert!(
            !logs.contains(needle.as_str()),
            "the daemon log holds a secret"
        );
        assert!(
            !audit.contains(needle.as_str()),
            "the audit log holds a secret"
        );
        for (n, text) in texts.iter().enumerate() {
            assert!(
                !text.contains(needle.as_str()),
                "what a sandbox saw (#{n}) holds a secret"
            );
        }
    }
}

/// A file whose mtime marks the test's start, for [`sandbox_view`].
fn start_marker(d: &Daemon) -> std::path::PathBuf {
    let marker = d.work.join("started");
    fs::write(&marker, "").unwrap();
    thread::sleep(Duration::from_millis(20));
    marker
}

/// The token requests of `family` the server answered (or closed) since the start.
fn fetches(server: &TokenServer, family: &str) -> Vec<Value> {
    server.requests(family)
}

/// The issue's first test: one GitHub App secret serves the API (Bearer) and git (basic auth
/// `x-access-token`); tokens live 6 s; requests from a sandbox over 3+ lifetimes all succeed, the API (which
/// takes only the current token, and the one it replaced for a second) saw 3+ distinct tokens and never
/// an expired one, and the JWTs verified. `sandbox secrets` shows it (root only); nothing leaks.
#[test]
fn a_github_app_token_serves_the_api_and_git_over_three_lifetimes() {
    if skip() {
        return;
    }
    let net = TestNet::new();
    let server = TokenServer::start(&net, TOKENS_AT, json!({"lifetime": 6, "grace": 1}));
    let d = net
        .daemon()
        .daemon_toml(&server.daemon_toml(None))
        .profile_toml("default", r#"integrations = ["github-api", "github-git"]"#)
        .extra_toml(&format!(
            r#"
[secrets]
gh_app_key = {{ file = "{key}" }}

[secrets.github.github_app]
app_id = "{APP_ID}"
installation_id = {INSTALLATION_ID}
private_key = "gh_app_key"

[[integration]]
name = "github-api"
hosts = ["{GITHUB_API}"]
headers = {{ Authorization = "Bearer ${{secret:github}}" }}

[[integration]]
name = "github-git"
hosts = ["{GITHUB}"]
basic_auth = {{ username = "x-access-token", password = "${{secret:github}}" }}
"#,
            key = server.app_key_file.display()
        ))
        .start();
    let since = start_marker(&d);
    let user = test_user();

    // Requests every 0.4 s for 21 s: 3.5 lifetimes.
    let script = format!(
        "end=$(($(date +%s) + 21)); while [ $(date +%s) -lt $end ]; do \
           curl -sS --max-time 10 -o /dev/null -w '%{{http_code}}\\n' https://{GITHUB_API}/api/user; \
           sleep 0.4; done; curl -sS https://{GITHUB_API}/api/user"
    );
    let o = d
        .exec(&user)
        .args(["sh", "-c", &script])
        .timeout(Duration::from_secs(90))
        .run();
    assert_code(&o, 0);
    let out = stdout(&o);
    let codes: Vec<&str> = out.lines().filter(|l| l.len() == 3).collect();
    assert!(codes.len() >= 20, "{}", describe(&o));
    assert!(codes.iter().all(|c| *c == "200"), "{}", describe(&o));
    assert!(out.contains(r#""family": "github""#), "{}", describe(&o));

    let api = server.requests("api");
    assert!(api.iter().all(|r| r["accepted"] == true), "{api:#?}");
    assert!(api.iter().all(|r| r["expired"] == false), "{api:#?}");
    let serials: BTreeSet<u64> = api.iter().map(|r| r["serial"].as_u64().unwrap()).collect();
    assert!(
        serials.len() >= 3,
        "distinct tokens the API saw: {serials:?}"
    );
    let minted = fetches(&server, "github");
    assert!(minted.len() >= 3, "{minted:#?}");
    for fetch in &minted {
        assert_eq!(fetch["status"], 201, "{fetch:#}");
        assert_eq!(fetch["iss"], APP_ID, "{fetch:#}");
        assert_eq!(fetch["installation"], INSTALLATION_ID.to_string());
        assert!(fetch.get("why").is_none(), "{fetch:#}");
    }
    let (_, _, token) = &server.issued()[0];
    assert!(token.len() >= 500, "GitHub's new tokens are long");

    // git over smart HTTP, through the github.com stand-in, with the same secret as basic auth.
    let git = format!(
        "git ls-remote https://{GITHUB}/{GIT_REPO} && git clone -q https://{GITHUB}/{GIT_REPO} cloned \
         && cat cloned/README"
    );
    let git_out = d
        .exec(&user)
        .args(["sh", "-c", &git])
        .env("GIT_TERMINAL_PROMPT", "0")
        .run();
    assert_code(&git_out, 0);
    assert!(
        stdout(&git_out).contains("refs/heads/main"),
        "{}",
        describe(&git_out)
    );
    assert!(
        stdout(&git_out).contains(GIT_MARKER),
        "{}",
        describe(&git_out)
    );
    let git_seen = server.requests("git");
    assert!(git_seen.len() >= 3, "{git_seen:#?}");
    for r in &git_seen {
        assert_eq!(r["accepted"], true, "{r:#}");
        assert_eq!(r["user"], "x-access-token", "{r:#}");
        assert_eq!(r["status"], 200, "{r:#}");
    }
    assert!(git_seen
        .iter()
        .any(|r| r["path"].as_str().unwrap().ends_with("/git-upload-pack")));

    // sandbox secrets: root sees both secrets, never a value; anyone else is refused.
    let github = secret(&d, "github");
    assert_eq!(github["source"], "github_app");
    assert_eq!(github["from"], GITHUB_API);
    assert!(["ok", "refreshing"].contains(&github["state"].as_str().unwrap()));
    assert!(
        github["expires_in_secs"].as_u64().unwrap() <= 6,
        "{github:#}"
    );
    assert!(github["last_refresh"].is_string(), "{github:#}");
    let key = secret(&d, "gh_app_key");
    assert_eq!(
        (key["source"].as_str(), key["state"].as_str()),
        (Some("file"), Some("ok"))
    );
    let table = Command::new(bin())
        .args(["secrets", "--socket"])
        .arg(&d.socket)
        .output()
        .unwrap();
    assert_code(&table, 0);
    assert!(
        stdout(&table).contains("github_app"),
        "{}",
        describe(&table)
    );
    let mut refused = d.caller_command(&user, bin());
    refused.args(["secrets", "--socket"]).arg(&d.socket);
    let refused = run_command(refused, Duration::from_secs(10));
    assert_code(&refused, 1);
    assert!(
        stderr(&refused).contains("root only"),
        "{}",
        describe(&refused)
    );

    // One audit line per fetch, kind token; the requests' lines say injected.
    let tokens = token_lines(&d);
    assert!(tokens.len() >= minted.len() - 1, "{tokens:#?}");
    for line in &tokens {
        assert_eq!(line["secret"], "github", "{line:#}");
        assert_eq!(line["source"], "github_app");
        assert_eq!(line["endpoint"], GITHUB_API);
        assert_eq!(line["verdict"], "minted", "{line:#}");
        assert_eq!(line["status"], 201);
        assert!(line["expires"].is_string(), "{line:#}");
    }
    let injected = d
        .audit_lines()
        .into_iter()
        .filter(|l| l["kind"] == "https" && l["host"] == GITHUB_API && l["verdict"] == "injected")
        .count();
    assert!(injected >= 20, "{injected}");

    let view = sandbox_view(&d, &server, &since);
    assert_secrets_stay_secret(&d, &server, &[&out, &stdout(&git_out), &view]);
    d.finish();
}

/// OAuth2 client credentials with client_secret_basic (form-urlencoded id and secret, scope, extra
/// params), client_secret_post, a public client (its id only), and a Google service account (the
/// JWT-bearer grant: iss = client_email, scope = the scopes joined by spaces, aud = token_uri, RS256);
/// each token works at its API. Nothing leaks.
#[test]
fn oauth2_client_credentials_and_a_google_service_account() {
    if skip() {
        return;
    }
    let net = TestNet::new();
    // Three OAuth2 clients share the server's "oauth2" family of tokens, so the API takes any unexpired
    // one; the test checks below that each API got the token minted for its own client.
    let server = TokenServer::start(
        &net,
        TOKENS_AT,
        json!({"lifetime": 60, "accept": "unexpired"}),
    );
    let (_, basic_file) = server.client_secret("basic-client");
    let (_, post_file) = server.client_secret("post-client");
    let token_url = format!("https://{LOGIN}/oauth2/token");
    let d = net
        .daemon()
        .daemon_toml(&server.daemon_toml(None))
        .profile_toml(
            "default",
            r#"integrations = ["crm-basic", "crm-post", "crm-public", "gcs"]"#,
        )
        .extra_toml(&format!(
            r#"
[secrets]
basic_secret = {{ file = "{basic}" }}
post_secret = {{ file = "{post}" }}
gcp_key = {{ file = "{google}" }}

[secrets.crm.oauth2]
token_url = "{token_url}"
client_id = "basic-client"
client_secret = "basic_secret"
scope = "read write"
params = {{ audience = "https://{api1}", resource = "urn:sbx:e2e" }}

[secrets.crm_post.oauth2]
token_url = "{token_url}"
client_id = "post-client"
client_secret = "post_secret"
auth = "post"
scope = "read"

[secrets.crm_public.oauth2]
token_url = "{token_url}"
client_id = "{PUBLIC_CLIENT}"

[secrets.gcp.google_service_account]
key = "gcp_key"
scopes = {scopes:?}

[[integration]]
name = "crm-basic"
hosts = ["{api1}"]
headers = {{ Authorization = "Bearer ${{secret:crm}}" }}

[[integration]]
name = "crm-post"
hosts = ["{api2}"]
headers = {{ Authorization = "Bearer ${{secret:crm_post}}" }}

[[integration]]
name = "crm-public"
hosts = ["{api3}"]
headers = {{ Authorization = "Bearer ${{secret:crm_public}}" }}

[[integration]]
name = "gcs"
hosts = ["{gcs}"]
headers = {{ Authorization = "Bearer ${{secret:gcp}}" }}
"#,
            basic = basic_file.display(),
            post = post_file.display(),
            google = server.google_key_file.display(),
            api1 = APIS[0],
            api2 = APIS[1],
            api3 = APIS[2],
            gcs = APIS[4],
            scopes = GOOGLE_SCOPES,
        ))
        .start();
    let since = start_marker(&d);

    let mut seen = Vec::new();
    let mut served = Vec::new();
    for host in [APIS[0], APIS[1], APIS[2], APIS[4]] {
        let o = sandboxed_curl(&d, &[&format!("https://{host}/api/x")]);
        assert_eq!(status_of(&o), 200, "{host}: {}", describe(&o));
        let answer: Value = serde_json::from_str(stdout(&o).lines().next().unwrap_or_default())
            .unwrap_or_else(|e| panic!("{host}: {e}: {}", describe(&o)));
        served.push(answer);
        seen.push(stdout(&o));
    }

    let oauth2 = fetches(&server, "oauth2");
    let by_client = |id: &str| {
        oauth2
            .iter()
            .find(|f| f["client_id"] == id)
            .unwrap_or_else(|| panic!("no token request of {id}: {oauth2:#?}"))
            .clone()
    };
    // Each API got a token minted for its own secret's client.
    for (answer, client) in served
        .iter()
        .zip(["basic-client", "post-client", PUBLIC_CLIENT])
    {
        assert_eq!(answer["family"], "oauth2");
        assert!(
            oauth2
                .iter()
                .any(|f| f["client_id"] == client && f["serial"] == answer["serial"]),
            "{client} got token {}: {oauth2:#?}",
            answer["serial"]
        );
    }
    assert_eq!(served[3]["family"], "google");
    let basic = by_client("basic-client");
    assert_eq!(basic["status"], 200, "{basic:#}");
    assert_eq!(basic["auth"], "basic");
    assert_eq!(basic["grant_type"], "client_credentials");
    assert_eq!(basic["scope"], "read write");
    assert_eq!(
        basic["params"],
        json!({"audience": format!("https://{}", APIS[0]), "resource": "urn:sbx:e2e"})
    );
    let post = by_client("post-client");
    assert_eq!(
        (post["status"].as_u64(), post["auth"].as_str()),
        (Some(200), Some("post"))
    );
    assert_eq!(post["scope"], "read");
    let public = by_client(PUBLIC_CLIENT);
    assert_eq!(
        (public["status"].as_u64(), public["auth"].as_str()),
        (Some(200), Some("public"))
    );
    let google = fetches(&server, "google");
    let google = google.first().expect("a Google token request");
    assert_eq!(google["status"], 200, "{google:#}");
    assert_eq!(google["iss"], CLIENT_EMAIL);
    assert_eq!(google["scope"], GOOGLE_SCOPES.join(" "));
    assert_eq!(
        google["aud"],
        format!("https://{GOOGLE_TOKEN}/google/token")
    );

    let sources: Vec<(String, String)> = secrets_json(&d)
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().into(),
                s["source"].as_str().unwrap().into(),
            )
        })
        .collect();
    for (name, source) in [
        ("crm", "oauth2"),
        ("crm_public", "oauth2"),
        ("gcp", "google_service_account"),
        ("post_secret", "file"),
    ] {
        assert!(
            sources.contains(&(name.into(), source.into())),
            "{sources:?}"
        );
    }

    let view = sandbox_view(&d, &server, &since);
    let mut texts: Vec<&str> = seen.iter().map(String::as_str).collect();
    texts.push(&view);
    assert_secrets_stay_secret(&d, &server, &texts);
    d.finish();
}

/// The token endpoint goes down: requests go on while the token is valid, then get the daemon's 503
/// naming the secret (nothing reaches the upstream with an expired token); once the endpoint is back, a
/// retry mints a token and requests work again, without a restart.
#[test]
fn requests_outlive_a_token_endpoint_outage_then_get_503_and_recover() {
    if skip() {
        return;
    }
    let net = TestNet::new();
    let server = TokenServer::start(&net, TOKENS_AT, json!({"lifetime": 8}));
    let (_, basic_file) = server.client_secret("basic-client");
    let d = oauth2_daemon(&net, &server, basic_file, APIS[0], None);
    let url = format!("https://{}/api/outage", APIS[0]);

    let first = sandboxed_curl(&d, &[&url]);
    assert_eq!(status_of(&first), 200, "{}", describe(&first));
    let issued_at = fetches(&server, "oauth2")[0]["time"].as_f64().unwrap();
    server.set_mode(json!({"mode": "down"}));

    // Every 0.5 s: 200 while the token is usable (past its refresh time, which fails), then 503.
    let mut last_ok = issued_at;
    let refused = wait_for(Duration::from_secs(25), || {
        let o = sandboxed_curl(&d, &[&url]);
        match status_of(&o) {
            200 => {
                last_ok = now_secs();
                thread::sleep(Duration::from_millis(500));
                None
            }
            503 => Some(o),
            other => panic!("status {other}: {}", describe(&o)),
        }
    })
    .expect("no 503 once the token expired");
    assert!(
        last_ok - issued_at > 5.0,
        "requests went on past the failed refresh at half-life: {:.1} s",
        last_ok - issued_at
    );
    let body = stdout(&refused);
    assert!(
        body.contains("secret \"crm\" has no valid token"),
        "{}",
        describe(&refused)
    );
    let down = fetches(&server, "oauth2")
        .into_iter()
        .filter(|f| f["mode"] == "down")
        .count();
    assert!(down >= 2, "the daemon retried: {down}");
    let api = server.requests("api");
    assert!(
        api.iter()
            .all(|r| r["expired"] == false && r["accepted"] == true),
        "{api:#?}"
    );
    let state = secret(&d, "crm");
    assert!(
        ["expired", "refreshing"].contains(&state["state"].as_str().unwrap()),
        "{state:#}"
    );
    assert!(
        state["last_error"]
            .as_str()
            .is_some_and(|e| e.contains(LOGIN)),
        "{state:#}"
    );
    let errors = token_lines(&d)
        .into_iter()
        .filter(|l| l["verdict"] == "error")
        .count();
    assert!(errors >= 2, "audit lines of failed fetches: {errors}");
    // The audit log is written behind the requests: wait for the line.
    let refused_line = wait_for(Duration::from_secs(5), || {
        d.audit_lines()
            .into_iter()
            .find(|l| l["kind"] == "https" && l["status"] == 503)
    });
    assert!(refused_line.is_some(), "the 503 has its audit line");

    server.set_mode(json!({"mode": "ok"}));
    let back = wait_for(Duration::from_secs(45), || {
        let o = sandboxed_curl(&d, &[&url]);
        (status_of(&o) == 200).then_some(o)
    });
    assert!(
        back.is_some(),
        "requests work again once the endpoint is back\n{}",
        d.logs()
    );
    assert!(
        d.logs().matches("--- daemon run").count() == 1,
        "no restart"
    );
    assert_secrets_stay_secret(&d, &server, &[&body]);
    d.finish();
}

/// A daemon with OAuth2 client-credentials secret `crm` (client `basic-client`, its secret in
/// `secret_file`) injected at `api`; `extra_ca` verifies an upstream other than the token server.
fn oauth2_daemon<'n>(
    net: &'n TestNet,
    server: &TokenServer,
    secret_file: &Path,
    api: &str,
    extra_ca: Option<&Path>,
) -> Daemon<'n> {
    net.daemon()
        .daemon_toml(&server.daemon_toml(extra_ca))
        .profile_toml("default", r#"integrations = ["crm"]"#)
        .extra_toml(&format!(
            r#"
[secrets]
crm_secret = {{ file = "{secret}" }}

[secrets.crm.oauth2]
token_url = "https://{LOGIN}/oauth2/token"
client_id = "basic-client"
client_secret = "crm_secret"

[[integration]]
name = "crm"
hosts = ["{api}"]
headers = {{ Authorization = "Bearer ${{secret:crm}}" }}
"#,
            secret = secret_file.display(),
        ))
        .start()
}

/// Each bad answer of a token endpoint (500; success with `{}` or with HTML; 429 with Retry-After; a
/// token without expiry; a body over the 64 KiB cap; no answer within 10 s) ends in the documented state
/// with its error, and is retried (429 no sooner than it asked); the daemon never stops. A token without
/// expiry is an error from GitHub and takes `default_expires_in` from an OAuth2 endpoint.
#[test]
fn bad_token_endpoint_answers_end_in_their_state_and_are_retried() {
    if skip() {
        return;
    }
    let net = TestNet::new();
    let server = TokenServer::start(&net, TOKENS_AT, json!({"lifetime": 4}));
    let (_, basic_file) = server.client_secret("basic-client");
    let mut d = net
        .daemon()
        .daemon_toml(&server.daemon_toml(None))
        .profile_toml("default", r#"integrations = ["github-api", "crm"]"#)
        .extra_toml(&format!(
            r#"
[secrets]
gh_app_key = {{ file = "{key}" }}
crm_secret = {{ file = "{secret}" }}

[secrets.github.github_app]
app_id = "{APP_ID}"
installation_id = {INSTALLATION_ID}
private_key = "gh_app_key"

[secrets.crm.oauth2]
token_url = "https://{LOGIN}/oauth2/token"
client_id = "basic-client"
client_secret = "crm_secret"
default_expires_in = 5

[[integration]]
name = "github-api"
hosts = ["{GITHUB_API}"]
headers = {{ Authorization = "Bearer ${{secret:github}}" }}

[[integration]]
name = "crm"
hosts = ["{api}"]
headers = {{ Authorization = "Bearer ${{secret:crm}}" }}
"#,
            key = server.app_key_file.display(),
            secret = basic_file.display(),
            api = APIS[0],
        ))
        .start();
    for name in ["github", "crm"] {
        wait_secret(&d, name, Duration::from_secs(15), |s| s["state"] == "ok");
    }

    // (mode, what GitHub's failure says, what the OAuth2 endpoint's says)
    let cases: [(Value, &str, &str); 6] = [
        (
            json!({"mode": "500"}),
            "HTTP 500: server_error",
            "HTTP 500: server_error",
        ),
        (
            json!({"mode": "empty"}),
            "HTTP 201 with no token",
            "HTTP 200 with no access_token",
        ),
        (
            json!({"mode": "html"}),
            "text/html body that is not a token",
            "text/html body that is not a token response",
        ),
        (
            json!({"mode": "429", "retry_after": 3}),
            "HTTP 429: slow_down",
            "HTTP 429: slow_down",
        ),
        (
            json!({"mode": "huge"}),
            "answered more than 65536 bytes",
            "answered more than 65536 bytes",
        ),
        (
            json!({"mode": "slow", "sleep": 12}),
            "did not answer within 10s",
            "did not answer within 10s",
        ),
    ];
    for (mode, github_error, oauth2_error) in cases {
        let name = mode["mode"].as_str().unwrap().to_string();
        let before = server.log().len();
        server.set_mode(mode.clone());
        for (secret_name, family, error) in [
            ("github", "github", github_error),
            ("crm", "oauth2", oauth2_error),
        ] {
            // Failing past the token's usable time: expired (a token, none usable), the error kept.
            let state = wait_secret(&d, secret_name, Duration::from_secs(40), |s| {
                s["state"] == "expired"
                    && s["last_error"].as_str().is_some_and(|e| e.contains(error))
            });
            assert!(state["last_refresh"].is_string(), "{name}: {state:#}");
            // Retried: two failed requests in this mode, 429's at least Retry-After apart.
            let retried = wait_for(Duration::from_secs(40), || {
                let tries: Vec<f64> = server.log()[before..]
                    .iter()
                    .filter(|r| r["kind"] == family && r["mode"] == name.as_str())
                    .map(|r| r["time"].as_f64().unwrap())
                    .collect();
                (tries.len() >= 2).then_some(tries)
            })
            .unwrap_or_else(|| panic!("{name}: {secret_name} was not retried\n{}", d.logs()));
            if name == "429" {
                assert!(retried[1] - retried[0] >= 2.9, "{name}: {retried:?}");
            }
        }
        assert!(d.is_running(), "{name}: the daemon stopped\n{}", d.logs());
        let failed = token_lines(&d)
            .into_iter()
            .filter(|l| {
                l["verdict"] == "error"
                    && l["error"]
                        .as_str()
                        .is_some_and(|e| e.contains(oauth2_error))
            })
            .count();
        assert!(failed >= 1, "{name}: no audit line says {oauth2_error}");
        server.set_mode(json!({"mode": "ok"}));
        for secret_name in ["github", "crm"] {
            wait_secret(&d, secret_name, Duration::from_secs(40), |s| {
                s["state"] == "ok"
            });
        }
    }

    // A token without expiry: GitHub's answer is not taken; an OAuth2 token lives default_expires_in.
    server.set_mode(json!({"mode": "no-expiry"}));
    wait_secret(&d, "github", Duration::from_secs(40), |s| {
        s["state"] == "expired"
            && s["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("a token but no expires_at"))
    });
    let before = fetches(&server, "oauth2")
        .iter()
        .filter(|r| r["mode"] == "no-expiry")
        .count();
    let crm = wait_secret(&d, "crm", Duration::from_secs(20), |s| {
        s["state"] == "ok"
            && fetches(&server, "oauth2")
                .iter()
                .filter(|r| r["mode"] == "no-expiry" && r["status"] == 200)
                .count()
                > before
    });
    assert!(crm["expires_in_secs"].as_u64().unwrap() <= 5, "{crm:#}");
    server.set_mode(json!({"mode": "ok"}));
    assert!(d.is_running());
    assert_secrets_stay_secret(&d, &server, &[]);
    d.finish();
}

/// 50 requests at once, at the moment the token expires while its refresh is still running (a slow
/// endpoint): they wait for that one fetch and all carry the new token. Then the API refuses every token
/// (revoked): 50 requests that get 401 make exactly one more fetch, and the next request works.
#[test]
fn fifty_requests_at_expiry_wait_for_one_fetch_and_fifty_401s_make_one_more() {
    if skip() {
        return;
    }
    let net = TestNet::new();
    let server = TokenServer::start(&net, TOKENS_AT, json!({"lifetime": 10}));
    let (_, basic_file) = server.client_secret("basic-client");
    let d = oauth2_daemon(&net, &server, basic_file, APIS[0], None);
    let url = format!("https://{}/api/burst[1-50]", APIS[0]);
    let burst = || {
        d.exec(&test_user())
            .args([
                "curl",
                "-sS",
                "--http1.1",
                "--parallel",
                "--parallel-immediate",
                "--parallel-max",
                "50",
                "--max-time",
                "30",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}\\n",
                &url,
            ])
            .timeout(Duration::from_secs(60))
            .run()
    };

    let first = sandboxed_curl(&d, &[&format!("https://{}/api/first", APIS[0])]);
    assert_eq!(status_of(&first), 200, "{}", describe(&first));
    let first_fetch = fetches(&server, "oauth2")[0].clone();
    let issued_at = first_fetch["time"].as_f64().unwrap();
    // The refresh (due at 4.5 to 5.5 s) takes 7 s: the token is unusable from 9 s until it ends.
    server.set_mode(json!({"mode": "slow", "sleep": 7, "count": 1}));
    let wait = issued_at + 9.4 - now_secs();
    assert!(wait > 0.0, "too slow to set the scene: {wait}");
    thread::sleep(Duration::from_secs_f64(wait));
    assert_eq!(
        secret(&d, "crm")["state"],
        "refreshing",
        "the slow refresh runs"
    );
    let o = burst();
    let burst_ended = now_secs();
    assert_code(&o, 0);
    let codes: Vec<String> = stdout(&o).lines().map(str::to_string).collect();
    assert_eq!(codes.len(), 50, "{}", describe(&o));
    assert!(codes.iter().all(|c| c == "200"), "{}", describe(&o));
    // Those begun before the burst ended: the next scheduled refresh is seconds after that.
    let minted: Vec<Value> = fetches(&server, "oauth2")
        .into_iter()
        .filter(|f| f["time"].as_f64().unwrap() < burst_ended)
        .collect();
    assert_eq!(minted.len(), 2, "one fetch for the 50: {minted:#?}");
    let new_serial = minted[1]["serial"].as_u64().unwrap();
    let burst_seen: Vec<Value> = server
        .requests("api")
        .into_iter()
        .filter(|r| r["path"].as_str().unwrap().starts_with("/api/burst"))
        .collect();
    assert_eq!(burst_seen.len(), 50);
    assert!(
        burst_seen
            .iter()
            .all(|r| r["serial"] == new_serial && r["expired"] == false),
        "all 50 waited for the new token: {burst_seen:#?}"
    );

    // Tokens now live a minute: once one is in place, no refresh is due during what follows.
    server.set_mode(json!({"mode": "ok", "lifetime": 60}));
    wait_secret(&d, "crm", Duration::from_secs(20), |s| {
        s["state"] == "ok" && s["expires_in_secs"].as_u64().unwrap_or(0) > 30
    });
    let count = fetches(&server, "oauth2").len();
    // Every token refused: the 401s start one fetch between them.
    server.revoke();
    let o = burst();
    assert_code(&o, 0);
    let codes: Vec<String> = stdout(&o).lines().map(str::to_string).collect();
    assert!(
        codes.iter().all(|c| c == "200" || c == "401"),
        "{}",
        describe(&o)
    );
    assert!(codes.iter().any(|c| c == "401"), "{}", describe(&o));
    thread::sleep(Duration::from_secs(2));
    let minted = fetches(&server, "oauth2");
    assert_eq!(
        minted.len(),
        count + 1,
        "one fetch for the 401s: {minted:#?}"
    );
    let after = sandboxed_curl(&d, &[&format!("https://{}/api/after", APIS[0])]);
    assert_eq!(status_of(&after), 200, "{}", describe(&after));
    assert!(server.requests("api").iter().all(|r| r["expired"] == false));
    assert_secrets_stay_secret(&d, &server, &[]);
    d.finish();
}

/// The refresh-token grant against a server that rotates: each refresh spends the refresh token and
/// issues the next, which the daemon saves (state_dir/crm, 0600) before using the access token. After
/// several rotations the daemon is killed (-9) and started again: it spends the saved token, not the
/// configured (spent) one, and requests work. No refresh ever overlaps another (invalid_grant).
#[test]
fn a_rotated_refresh_token_is_saved_and_survives_kill_9() {
    if skip() {
        return;
    }
    let net = TestNet::new();
    let server = TokenServer::start(&net, TOKENS_AT, json!({"lifetime": 3}));
    let (_, client_file) = server.client_secret("refresh-client");
    let mut d = net
        .daemon()
        .daemon_toml(&server.daemon_toml(None))
        .profile_toml("default", r#"integrations = ["crm"]"#)
        .extra_toml(&format!(
            r#"
[secrets]
crm_client = {{ file = "{client}" }}
crm_refresh = {{ file = "{refresh}" }}

[secrets.crm.oauth2]
token_url = "https://{LOGIN}/oauth2/token"
client_id = "refresh-client"
client_secret = "crm_client"
grant = "refresh_token"
refresh_token = "crm_refresh"

[[integration]]
name = "crm"
hosts = ["{api}"]
headers = {{ Authorization = "Bearer ${{secret:crm}}" }}
"#,
            client = client_file.display(),
            refresh = server.refresh_token_file.display(),
            api = APIS[0],
        ))
        .start();
    let since = start_marker(&d);
    let state_file = server.state_dir().join("crm");
    let rotations = || {
        fetches(&server, "oauth2")
            .into_iter()
            .filter(|f| f["issued_refresh"].is_string())
            .collect::<Vec<Value>>()
    };
    assert!(
        wait_for(Duration::from_secs(30), || (rotations().len() >= 4)
            .then_some(()))
        .is_some(),
        "{:#?}",
        fetches(&server, "oauth2")
    );
    // Killed right after a rotation was saved: the next one is more than a second away.
    let saved = wait_for(Duration::from_secs(10), || {
        let last = rotations().last().cloned()?;
        let stored: Value = serde_json::from_str(&fs::read_to_string(&state_file).ok()?).ok()?;
        let token = stored["refresh_token"].as_str()?;
        (sha12(token) == last["issued_refresh"].as_str()?).then(|| sha12(token))
    })
    .expect("the state file holds the last rotated refresh token");
    d.kill9();
    let metadata = fs::metadata(&state_file).unwrap();
    assert_eq!(metadata.permissions().mode() & 0o777, 0o600);
    assert_eq!(
        fs::metadata(server.state_dir())
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
    let before_restart = fetches(&server, "oauth2").len();
    d.restart();

    let resumed = wait_for(Duration::from_secs(20), || {
        fetches(&server, "oauth2").get(before_restart).cloned()
    })
    .expect("the restarted daemon refreshes");
    assert_eq!(
        resumed["spent"], saved,
        "it spent the saved token: {resumed:#}"
    );
    assert_eq!(resumed["status"], 200, "{resumed:#}");
    let o = sandboxed_curl(&d, &[&format!("https://{}/api/after-restart", APIS[0])]);
    assert_eq!(status_of(&o), 200, "{}", describe(&o));
    let all = fetches(&server, "oauth2");
    assert!(
        all.iter().all(|f| f["status"] == 200),
        "no refresh was refused (none overlapped another, none spent a spent token): {all:#?}"
    );
    let view = sandbox_view(&d, &server, &since);
    assert_secrets_stay_secret(&d, &server, &[&view]);
    d.finish();
}

/// The first 12 hex digits of SHA-256, as tokens.py logs tokens.
fn sha12(token: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    digest.as_ref()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The HTTP/2 relay (an h2 client of an h2 upstream, relayed frame by frame) with a minted secret: no
/// valid token is a 503 per request naming the secret, nothing sent upstream; one connection's requests
/// follow the token as it is refreshed; an upstream 401 makes the daemon fetch a new token at once.
#[test]
fn the_http2_relay_follows_the_current_token() {
    if skip() {
        return;
    }
    let net = TestNet::new();
    let up = TlsUpstream::new(&net);
    let server = TokenServer::start(&net, TOKENS_AT, json!({"lifetime": 6}));
    // The first fetch fails: the first requests find no valid token.
    server.set_mode(json!({"mode": "500"}));
    let (_, basic_file) = server.client_secret("basic-client");
    let d = oauth2_daemon(&net, &server, basic_file, API_HOST, Some(&up.ca_pem));
    wait_secret(&d, "crm", Duration::from_secs(15), |s| {
        s["state"] == "error"
    });
    let o = sandboxed_curl(
        &d,
        &["--http2", &format!("https://{API_HOST}/echo?quiet&c=first")],
    );
    assert_eq!(status_of(&o), 503, "{}", describe(&o));
    assert!(
        stdout(&o).contains("secret \"crm\" has no valid token"),
        "{}",
        describe(&o)
    );
    assert!(
        stdout(&o).contains("HTTP 500"),
        "the last error: {}",
        describe(&o)
    );
    assert!(tagged(&up, "c=first").is_empty(), "nothing went upstream");

    server.set_mode(json!({"mode": "ok"}));
    wait_secret(&d, "crm", Duration::from_secs(40), |s| s["state"] == "ok");
    // One HTTP/2 connection, a request every 0.4 s for 10 s: the token is refreshed about every 3 s.
    let js = format!(
        "const c = require('http2').connect('https://{API_HOST}'); let n = 0, bad = 0;\n\
         function one() {{\n\
           const r = c.request({{':path': '/echo?quiet&c=h2seq&n=' + n}});\n\
           r.on('response', h => {{ if (h[':status'] !== 200) bad++; }});\n\
           r.resume();\n\
           r.on('end', () => {{ if (++n < 25) setTimeout(one, 400); else {{ console.log('done', n, 'bad', bad); c.close(); }} }});\n\
           r.end();\n\
         }}\n\
         c.on('error', e => {{ console.error(e); process.exit(1); }});\n\
         one();"
    );
    let o = d
        .exec(&test_user())
        .args(["node", "-e", &js])
        .timeout(Duration::from_secs(60))
        .run();
    assert_code(&o, 0);
    assert!(stdout(&o).contains("done 25 bad 0"), "{}", describe(&o));
    let seen = tagged(&up, "c=h2seq");
    assert_eq!(seen.len(), 25);
    let connections: BTreeSet<u64> = seen.iter().map(|r| r.connection).collect();
    assert_eq!(
        connections.len(),
        1,
        "one upstream connection: {connections:?}"
    );
    assert!(
        seen.iter().all(|r| r.version == "HTTP/2.0"),
        "relayed as HTTP/2"
    );
    let issued = server.issued();
    let serial_of = |r: &UpstreamRequest| {
        let authorization = r.header("authorization");
        let token = authorization[0]
            .strip_prefix("Bearer ")
            .expect("a Bearer token");
        issued
            .iter()
            .find(|(_, _, t)| t == token)
            .map(|(serial, _, _)| *serial)
            .unwrap_or_else(|| panic!("a token the server did not issue"))
    };
    let serials: Vec<u64> = seen.iter().map(serial_of).collect();
    assert!(
        serials.windows(2).all(|w| w[0] <= w[1]),
        "the connection moves to each new token and never back: {serials:?}"
    );
    let distinct: BTreeSet<u64> = serials.iter().copied().collect();
    assert!(
        distinct.len() >= 2,
        "the relay followed the refreshes: {serials:?}"
    );

    // An upstream 401 on the relay: a fetch at once, though the next refresh is half a minute away.
    server.set_mode(json!({"mode": "ok", "lifetime": 60}));
    wait_secret(&d, "crm", Duration::from_secs(20), |s| {
        s["state"] == "ok" && s["expires_in_secs"].as_u64().unwrap_or(0) > 30
    });
    let fetched = || fetches(&server, "oauth2").len();
    let count = fetched();
    let o = sandboxed_curl(
        &d,
        &["--http2", &format!("https://{API_HOST}/unauthorized?c=401")],
    );
    assert_eq!(status_of(&o), 401, "{}", describe(&o));
    assert_eq!(tagged(&up, "c=401")[0].version, "HTTP/2.0");
    let forced = wait_for(Duration::from_secs(5), || (fetched() > count).then_some(()));
    assert!(forced.is_some(), "the 401 started a fetch at once");
    thread::sleep(Duration::from_secs(1));
    assert_eq!(fetched(), count + 1, "one fetch");
    assert_secrets_stay_secret(&d, &server, &[&stdout(&o)]);

    // Redaction covers minted tokens: an upstream that echoes the request's headers gives the token back,
    // and the sandbox gets it masked, over HTTP/1.1 and HTTP/2 alike.
    let current = server
        .issued()
        .last()
        .expect("tokens were issued")
        .2
        .clone();
    // The header value as injected is itself a needle: all of it is masked.
    let masked = format!("\"{}\"", "*".repeat(format!("Bearer {current}").len()));
    for version in ["--http1.1", "--http2"] {
        let o = sandboxed_curl(&d, &[version, &format!("https://{API_HOST}/echo?c=echo")]);
        assert_eq!(status_of(&o), 200, "{}", describe(&o));
        assert!(
            stdout(&o).contains(&masked),
            "{version}: the echoed token, masked: {}",
            describe(&o)
        );
        assert_secrets_stay_secret(&d, &server, &[&stdout(&o)]);
    }
    assert!(
        tagged(&up, "c=echo")
            .iter()
            .all(|r| r.header("authorization") == [format!("Bearer {current}")]),
        "the upstream got the token itself"
    );
    d.finish();
}

/// The requests the upstream saw whose query has `tag` as a parameter.
fn tagged(up: &TlsUpstream, tag: &str) -> Vec<UpstreamRequest> {
    up.requests()
        .into_iter()
        .filter(|r| r.query().split('&').any(|p| p == tag))
        .collect()
}
