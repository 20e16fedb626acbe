//! The token endpoints of the minted-secret tests: `tests/servers/tokens.py` run as root in U (as
//! `upstream_processes` runs its Python servers), with a certificate from a test CA of its own for every
//! name below, playing GitHub (installation tokens, the API, git's smart HTTP), an OAuth2 provider and
//! Google. It checks the daemon's JWTs with python3-cryptography. The keys and client secrets are made
//! here, at run time, as root's 0600 files the daemon reads as `[secrets]`; every token the server issues
//! is written to a file only the test reads (`TokenServer::issued`), for the leak checks.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};

use super::certs::TestCa;
use super::net::TestNet;
use super::tls_upstream::make_git_repository;
use super::tools::{describe, read_json_lines, run_tool, tool, unique_suffix, TempDir, STD_PATH};
use super::upstream_processes::{add_host, wait_listening, ServerProcess};

/// GitHub's API: the installation token endpoint (the daemon's default `api`) and the test API.
pub const GITHUB_API: &str = "api.github.com";
/// GitHub's git host, served over smart HTTP.
pub const GITHUB: &str = "github.com";
/// The OAuth2 token endpoint.
pub const LOGIN: &str = "login.oauth.test";
/// Google's token endpoint (the key file's `token_uri`).
pub const GOOGLE_TOKEN: &str = "oauth2.google.test";
/// APIs that take the tokens, one name per integration a test needs.
pub const APIS: [&str; 6] = [
    "api1.oauth.test",
    "api2.oauth.test",
    "api3.oauth.test",
    "api4.oauth.test",
    "storage.google.test",
    "api5.oauth.test",
];
pub const APP_ID: &str = "123456";
pub const INSTALLATION_ID: u64 = 7890123;
pub const CLIENT_EMAIL: &str = "robot@sbx-e2e.iam.gserviceaccount.com";
pub const GOOGLE_SCOPES: [&str; 2] = [
    "https://www.googleapis.com/auth/cloud-platform",
    "https://www.googleapis.com/auth/devstorage.read_only",
];
/// The repository served at `https://github.com/sbx-org/repo.git` (README = `tls_upstream::GIT_MARKER`).
pub const GIT_REPO: &str = "sbx-org/repo.git";
/// The OAuth2 clients the server knows: (id, auth it insists on); their secrets are in `client_secrets`.
pub const CLIENTS: [(&str, &str); 3] = [
    ("basic-client", "basic"),
    ("post-client", "post"),
    ("refresh-client", "any"),
];
pub const PUBLIC_CLIENT: &str = "public-client";

pub struct TokenServer {
    /// 0755: the CA (0644); keys, secrets, config and logs in `private/` (0700).
    pub dir: TempDir,
    pub ca_pem: PathBuf,
    netns: String,
    addr4: Ipv4Addr,
    /// The GitHub App's private key (PKCS#1 PEM, as GitHub hands it out) and its file.
    pub app_key: String,
    pub app_key_file: PathBuf,
    /// The service account's JSON key file (PKCS#8 key inside, as Google hands it out), and its file.
    pub google_key: String,
    pub google_key_file: PathBuf,
    /// Each client of [`CLIENTS`]: its secret and the file holding it.
    pub client_secrets: Vec<(String, PathBuf)>,
    /// The refresh token the server takes at start, and its file.
    pub refresh_token: String,
    pub refresh_token_file: PathBuf,
    log: PathBuf,
    issued: PathBuf,
    _process: ServerProcess,
}

impl TokenServer {
    /// Starts the server on U's `.N`/`::N`, port 443, for every name above. `settings` is merged into
    /// its config (e.g. `{"lifetime": 6, "grace": 1}`).
    pub fn start(net: &TestNet, n: u8, settings: Value) -> TokenServer {
        let dir = TempDir::new("tokens", 0o755);
        // Keys, secrets, the server's config and logs: root's alone (a sandbox must not find them where
        // the test left them either).
        let private_dir = dir.join("private");
        fs::create_dir(&private_dir).unwrap();
        fs::set_permissions(&private_dir, fs::Permissions::from_mode(0o700)).unwrap();
        let ca = TestCa::new("sbx-e2e token CA");
        let ca_pem = dir.join("ca.pem");
        fs::write(&ca_pem, &ca.pem).unwrap();
        fs::set_permissions(&ca_pem, fs::Permissions::from_mode(0o644)).unwrap();
        let mut names = vec![GITHUB_API, GITHUB, LOGIN, GOOGLE_TOKEN];
        names.extend(APIS);
        let (addr4, addr6) = add_host(net, n, &names);
        let (cert, key) = ca.write_leaf(&private_dir, "server", &names);

        let private = |name: &str, content: &str| {
            let path = private_dir.join(name);
            fs::write(&path, content).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
            path
        };
        let app_key_file = private_dir.join("app.pem");
        run_tool(
            "openssl",
            &[
                "genrsa",
                "-traditional",
                "-out",
                &app_key_file.display().to_string(),
                "2048",
            ],
        );
        fs::set_permissions(&app_key_file, fs::Permissions::from_mode(0o600)).unwrap();
        let app_key = fs::read_to_string(&app_key_file).unwrap();
        assert!(app_key.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
        let google_pem = private_dir.join("google.pem");
        run_tool(
            "openssl",
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                &google_pem.display().to_string(),
            ],
        );
        fs::set_permissions(&google_pem, fs::Permissions::from_mode(0o600)).unwrap();
        let google_token_uri = format!("https://{GOOGLE_TOKEN}/google/token");
        let google_key = format!(
            "{:#}\n",
            json!({
                "type": "service_account",
                "project_id": "sbx-e2e",
                "private_key_id": format!("kid-{}", unique_suffix()),
                "private_key": fs::read_to_string(&google_pem).unwrap(),
                "client_email": CLIENT_EMAIL,
                "client_id": "1234567890",
                "token_uri": google_token_uri,
            })
        );
        let google_key_file = private("google.json", &google_key);
        let suffix = unique_suffix();
        let client_secrets: Vec<(String, PathBuf)> = CLIENTS
            .iter()
            .map(|(id, _)| {
                // Characters that form-urlencoding changes, so that client_secret_basic's encoding counts.
                let secret = format!("sbx-e2e-{id}-secret+/={suffix}");
                let file = private(&format!("{id}.secret"), &format!("{secret}\n"));
                (secret, file)
            })
            .collect();
        let refresh_token = format!("rt-initial-{suffix}");
        let refresh_token_file = private("refresh.token", &format!("{refresh_token}\n"));

        let git_root = private_dir.join("git");
        make_git_repository(&git_root.join(GIT_REPO), &private_dir.join("git-work"));
        let log = private_dir.join("tokens.jsonl");
        let issued = private_dir.join("issued.jsonl");
        let mut clients = serde_json::Map::new();
        for ((id, auth), (secret, _)) in CLIENTS.iter().zip(&client_secrets) {
            clients.insert(id.to_string(), json!({"secret": secret, "auth": auth}));
        }
        clients.insert(PUBLIC_CLIENT.into(), json!({"secret": null}));
        let mut config = json!({
            "port": 443,
            "issued_file": issued,
            "git_root": git_root,
            "github": {"app_id": APP_ID, "installation_id": INSTALLATION_ID, "public_key": app_key_file},
            "oauth2": {"clients": clients, "refresh_tokens": [refresh_token], "rotate": true},
            "google": {"client_email": CLIENT_EMAIL, "public_key": google_pem,
                       "token_uri": google_token_uri, "scopes": GOOGLE_SCOPES},
        });
        for (key, value) in settings.as_object().expect("settings are an object") {
            config[key] = value.clone();
        }
        let config_file = private_dir.join("config.json");
        fs::write(&config_file, format!("{config:#}")).unwrap();

        let args: Vec<String> = vec![
            format!("{addr4},{addr6}"),
            cert.display().to_string(),
            key.display().to_string(),
            log.display().to_string(),
            config_file.display().to_string(),
        ];
        let process = ServerProcess::python(net, "tokens.py", &args);
        wait_listening(net, SocketAddr::from((addr4, 443)));
        TokenServer {
            dir,
            ca_pem,
            netns: net.u.clone(),
            addr4,
            app_key,
            app_key_file,
            google_key,
            google_key_file,
            client_secrets,
            refresh_token,
            refresh_token_file,
            log,
            issued,
            _process: process,
        }
    }

    /// Every request the server answered (or closed), in order: see tokens.py for the fields.
    pub fn log(&self) -> Vec<Value> {
        read_json_lines(&self.log)
    }

    /// The requests of `kind` (`github`, `oauth2`, `google`, `api`, `git`).
    pub fn requests(&self, kind: &str) -> Vec<Value> {
        self.log()
            .into_iter()
            .filter(|entry| entry["kind"] == kind)
            .collect()
    }

    /// Every token issued so far: (serial, family, token).
    pub fn issued(&self) -> Vec<(u64, String, String)> {
        read_json_lines(&self.issued)
            .into_iter()
            .map(|entry| {
                (
                    entry["serial"].as_u64().unwrap(),
                    entry["family"].as_str().unwrap().to_string(),
                    entry["token"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    /// How the next token requests are answered (`{"mode": "500"}`, `{"mode": "slow", "sleep": 7,
    /// "count": 1}`, ...; see tokens.py's POST /control).
    pub fn set_mode(&self, mode: Value) {
        let out = self.curl(&["-X", "POST", "--data", &mode.to_string()], "/control");
        assert!(out.status.success(), "set mode {mode}: {}", describe(&out));
    }

    /// Makes every token issued so far unacceptable to the API (as a revoked installation token is).
    pub fn revoke(&self) {
        let out = self.curl(&["-X", "POST", "--data", r#"{"revoke": true}"#], "/control");
        assert!(out.status.success(), "revoke: {}", describe(&out));
    }

    /// curl in U against the server's `GITHUB_API` name.
    fn curl(&self, args: &[&str], path: &str) -> Output {
        Command::new(tool("ip"))
            .args(["netns", "exec", &self.netns])
            .arg(tool("curl"))
            .args(["-sS", "--max-time", "10", "--cacert"])
            .arg(&self.ca_pem)
            .arg("--resolve")
            .arg(format!("{GITHUB_API}:443:{}", self.addr4))
            .args(args)
            .arg(format!("https://{GITHUB_API}{path}"))
            .env_clear()
            .env("PATH", STD_PATH)
            .stdin(Stdio::null())
            .output()
            .expect("run curl")
    }

    /// `[daemon]` lines: the server's CA as `upstream_ca` (with `extra_ca`, if any), and `state_dir`.
    pub fn daemon_toml(&self, extra_ca: Option<&Path>) -> String {
        let mut cas = vec![self.ca_pem.display().to_string()];
        cas.extend(extra_ca.map(|ca| ca.display().to_string()));
        format!(
            "upstream_ca = {cas:?}\nstate_dir = {:?}",
            self.state_dir().display().to_string()
        )
    }

    /// The daemon's state directory in these tests (made by the daemon when it first saves).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// The client secret of client `id` of [`CLIENTS`], and its file.
    pub fn client_secret(&self, id: &str) -> (&str, &Path) {
        let index = CLIENTS.iter().position(|(c, _)| *c == id).unwrap();
        let (secret, file) = &self.client_secrets[index];
        (secret, file)
    }

    /// The root credentials the daemon holds (key material and client secrets, the first refresh
    /// token): each must appear nowhere a sandbox or a log could show it. The keys are given by a line
    /// of their base64 body, which any leak of the PEM would contain.
    pub fn root_credentials(&self) -> Vec<String> {
        let key_line = |pem: &str| pem.lines().nth(3).unwrap().to_string();
        let google_pem = serde_json::from_str::<Value>(&self.google_key).unwrap()["private_key"]
            .as_str()
            .unwrap()
            .to_string();
        let mut credentials = vec![key_line(&self.app_key), key_line(&google_pem)];
        credentials.extend(self.client_secrets.iter().map(|(secret, _)| secret.clone()));
        credentials.push(self.refresh_token.clone());
        credentials
    }
}
