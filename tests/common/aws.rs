//! AWS as the SigV4 tests need it: `tests/servers/aws.py` in U (an S3 endpoint and a Bedrock-style JSON
//! API that verify every signature with botocore) under AWS's own names (`s3.us-west-2.amazonaws.com`,
//! a bucket's virtual host, `bedrock-runtime.us-west-2.amazonaws.com`), which the test resolver answers
//! with U's addresses and a test CA of their own certifies; and the integration `aws` that signs for
//! them with the real credentials, which only the daemon and the test servers hold.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use serde_json::Value;

use super::certs::{ca_dir, TestCa};
use super::daemon::DaemonBuilder;
use super::net::TestNet;
use super::tools::{unique_suffix, TempDir};
use super::upstream_processes::{add_host, ServerProcess};

pub const REGION: &str = "us-west-2";
pub const S3_HOST: &str = "s3.us-west-2.amazonaws.com";
/// The bucket the tests use, and its virtual host (the aws CLI's default addressing).
pub const BUCKET: &str = "sbx-bucket";
pub const BUCKET_HOST: &str = "sbx-bucket.s3.us-west-2.amazonaws.com";
pub const BEDROCK_HOST: &str = "bedrock-runtime.us-west-2.amazonaws.com";
/// The real access key id: its id is no secret, its secret key and session token are.
pub const ACCESS_KEY_ID: &str = "AKIASBXTESTREALKEY01";
/// The daemon's variable holding the session token.
const TOKEN_VAR: &str = "SBX_AWS_SESSION_TOKEN";

/// The credentials and the test CA of the AWS test servers.
pub struct Aws {
    /// 0755: the CA (0644); certificates, keys, credentials and logs (0600 where secret).
    pub dir: TempDir,
    ca: TestCa,
    pub ca_pem: PathBuf,
    /// The real secret access key, in a file only root reads (`{ file = ... }`).
    pub secret_access_key: String,
    pub secret_file: PathBuf,
    /// The real session token (from the daemon's environment).
    pub session_token: String,
    /// The credentials as the test servers read them (0600).
    credentials: PathBuf,
}

impl Default for Aws {
    fn default() -> Self {
        Self::new()
    }
}

impl Aws {
    pub fn new() -> Aws {
        let (dir, ca, ca_pem) = ca_dir("aws", "sbx-e2e AWS CA");
        let unique = unique_suffix().replace('-', "");
        // What AWS keys look like: base64, with '/' and '+'.
        let secret_access_key = format!("sbxReal/Secret+{unique}");
        let session_token = format!("sbxRealSessionToken+{unique}/xyz=");
        let secret_file = dir.join("aws.secret");
        let credentials = dir.join("credentials.json");
        let json = serde_json::json!({
            "access_key_id": ACCESS_KEY_ID,
            "secret_access_key": secret_access_key,
            "session_token": session_token,
        });
        for (path, text) in [
            (&secret_file, format!("{secret_access_key}\n")),
            (&credentials, json.to_string()),
        ] {
            fs::write(path, text).unwrap();
            fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
        }
        Aws {
            dir,
            ca,
            ca_pem,
            secret_access_key,
            secret_file,
            session_token,
            credentials,
        }
    }

    /// The daemon config: `upstream_ca`, and integration `aws` (SigV4 with the real key, no region or
    /// service: the client's credential scope, else the host, says them) for S3's names and Bedrock's,
    /// in profile `default`.
    pub fn configure<'n>(&self, builder: DaemonBuilder<'n>) -> DaemonBuilder<'n> {
        builder
            .env(TOKEN_VAR, &self.session_token)
            .upstream_ca(&self.ca_pem)
            .profile_toml("default", r#"integrations = ["aws"]"#)
            .extra_toml(&format!(
                r#"
[secrets]
aws_secret = {{ file = {secret_file:?} }}
aws_token = {{ env = "{TOKEN_VAR}" }}

[[integration]]
name = "aws"
hosts = ["{S3_HOST}", "*.{S3_HOST}", "{BEDROCK_HOST}"]
aws_sigv4 = {{ access_key_id = "{ACCESS_KEY_ID}", secret_access_key = "aws_secret", session_token = "aws_token" }}
"#,
                secret_file = self.secret_file.display().to_string(),
            ))
    }

    /// Every secret value: none may appear where the sandbox or a log could show it.
    pub fn secrets(&self) -> [&str; 2] {
        [&self.secret_access_key, &self.session_token]
    }
}

/// One `aws.py` in U, on `.N`/`::N`, serving `names`; what it received is in [`AwsServer::log`].
pub struct AwsServer {
    log: PathBuf,
    _process: ServerProcess,
}

impl AwsServer {
    /// S3 as AWS serves it: HTTP/1.1 only.
    pub fn s3(net: &TestNet, aws: &Aws, n: u8) -> AwsServer {
        Self::start(net, aws, n, "s3", &[S3_HOST, BUCKET_HOST], false)
    }

    /// The JSON API, offering h2 as Bedrock's endpoints do.
    pub fn bedrock(net: &TestNet, aws: &Aws, n: u8) -> AwsServer {
        Self::start(net, aws, n, "bedrock", &[BEDROCK_HOST], true)
    }

    fn start(net: &TestNet, aws: &Aws, n: u8, stem: &str, names: &[&str], h2: bool) -> AwsServer {
        let (v4, v6) = add_host(net, n, names);
        let (cert, key) = aws.ca.write_leaf(aws.dir.path(), stem, names);
        let log = aws.dir.join(format!("{stem}.jsonl"));
        let mut args = vec!["--region".to_string(), REGION.to_string()];
        if h2 {
            args.push("--h2".into());
        }
        args.extend([
            format!("{v4},{v6}"),
            cert.display().to_string(),
            key.display().to_string(),
            log.display().to_string(),
            aws.credentials.display().to_string(),
        ]);
        AwsServer {
            log,
            _process: ServerProcess::python(net, "aws.py", &args),
        }
    }

    /// Every request the server received, in order (see aws.py's docstring for the fields).
    pub fn log(&self) -> Vec<Value> {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).expect("a JSON line"))
            .collect()
    }
}
