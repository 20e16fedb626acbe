use std::net::SocketAddr;

use super::*;

// Shared with the tests of every file of `config`: most checks are tested through `Config::parse`, as
// a user meets them, with the position its error names.
pub(super) const PATH: &str = "/etc/sandbox/sandbox.toml";
/// Two lines defining secret "key", so that tests can start integrations on line 3.
pub(super) const SECRETS: &str = "[secrets]\nkey = { env = \"SBX_TEST_NEVER_SET\" }\n";

pub(super) fn parse(text: &str) -> Config {
    Config::parse(text, Path::new(PATH)).unwrap()
}

pub(super) fn error(text: &str) -> String {
    Config::parse(text, Path::new("t.toml"))
        .unwrap_err()
        .to_string()
}

pub(super) fn integration(body: &str) -> String {
    error(&format!("{SECRETS}[[integration]]\n{body}"))
}

/// A file under the temp dir, removed on drop even when the test fails.
pub(super) struct TempPath(pub(super) PathBuf);

impl TempPath {
    pub(super) fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("sbx-cfg-{}-{name}", std::process::id()));
        TempPath(path)
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
        let _ = fs::remove_file(&self.0);
    }
}

#[test]
fn empty_config_has_defaults() {
    let config = parse("");
    assert_eq!(config.path, Path::new(PATH));
    assert_eq!(config.daemon, DaemonSection::default());
    assert_eq!(config.daemon.socket, Path::new("/run/sandbox/sandbox.sock"));
    assert_eq!(config.daemon.subnet, "10.233.0.0/16".parse().unwrap());
    assert_eq!(config.daemon.subnet6, None);
    assert_eq!(config.daemon.socket_group, None);
    assert_eq!(
        config.daemon.audit_log,
        Path::new("/var/log/sandbox/audit.jsonl")
    );
    assert!(config.daemon.dns.is_empty());
    assert!(config.daemon.upstream_ca.is_empty());
    assert!(config.secrets.is_empty() && config.integrations.is_empty());
    assert!(config.profiles.is_empty());
}

#[test]
fn design_example_parses_and_loads_secrets() {
    let key_file = TempPath::new("stripe.key");
    fs::write(&key_file.0, "sk_test_stripe\r\n").unwrap();
    let credentials = TempPath::new("credentials");
    fs::create_dir(&credentials.0).unwrap();
    fs::write(credentials.0.join("github"), "ghp_token\n\n").unwrap();
    std::env::set_var("SBX_TEST_DESIGN_OPENAI", "sk-openai");
    let text = format!(
        r#"[daemon]
socket = "/run/sandbox/sandbox.sock"
socket_group = "sandbox"             # members may call sandbox exec
subnet = "10.233.0.0/16"             # IPv4 pool; each sandbox takes a small block
subnet6 = "fd00:5ba:d::/48"          # IPv6 pool (optional)
audit_log = "/var/log/sandbox/audit.jsonl"
dns = ["192.0.2.53", "192.0.2.54:5353", "2001:db8::53", "[2001:db8::54]:5353"]
upstream_ca = []                     # extra PEM roots for verifying upstreams (private CAs, tests)

[secrets]
openai = {{ env = "SBX_TEST_DESIGN_OPENAI" }}          # from the daemon's environment
stripe = {{ file = "{}" }} # trailing newline stripped
github = {{ credential = "github" }}           # systemd LoadCredential= ($CREDENTIALS_DIRECTORY)

[[integration]]
name = "openai"
hosts = ["api.openai.com"]                   # exact names, or "*.example.com"
headers = {{ Authorization = "Bearer ${{secret:openai}}" }}

[[integration]]
name = "stripe"
hosts = ["api.stripe.com"]
basic_auth = {{ username = "${{secret:stripe}}", password = "" }}
redact = false                               # default true: secrets echoed in responses are masked

[[profile]]
name = "default"
integrations = ["openai", "stripe"]
users = ["*"]                 # user names, "@group", or "*"
egress = "allow"              # "allow": other traffic is relayed untouched; "deny": only the hosts of
allow_hosts = []              #   its integrations and allow_hosts are reachable
"#,
        key_file.0.display()
    );
    let config = parse(&text);
    let daemon = &config.daemon;
    assert_eq!(daemon.socket_group.as_deref(), Some("sandbox"));
    assert_eq!(daemon.subnet6, Some("fd00:5ba:d::/48".parse().unwrap()));
    assert_eq!(
        daemon.dns,
        [
            "192.0.2.53:53",
            "192.0.2.54:5353",
            "[2001:db8::53]:53",
            "[2001:db8::54]:5353"
        ]
        .map(|s| s.parse::<SocketAddr>().unwrap())
    );
    assert_eq!(
        config.secrets["openai"],
        SecretDef {
            source: SecretSource::Env("SBX_TEST_DESIGN_OPENAI".into()),
            location: Location { line: 11, col: 1 },
        }
    );
    assert_eq!(
        config.secrets["github"].source,
        SecretSource::Credential("github".into())
    );
    let [openai, stripe] = &config.integrations[..] else {
        panic!("{:?}", config.integrations)
    };
    assert_eq!(openai.hosts, [HostPattern::Exact("api.openai.com".into())]);
    assert!(openai.basic_auth.is_none());
    assert!(stripe.headers.is_empty());
    assert!(openai.redact && !stripe.redact);
    let profile = config.select_profile(None, 1000, "anyone", &[]).unwrap();
    assert_eq!(profile.name, "default");
    assert_eq!(
        config
            .integrations_of(profile)
            .map(|i| i.name.as_str())
            .collect::<Vec<_>>(),
        ["openai", "stripe"]
    );

    std::env::set_var("CREDENTIALS_DIRECTORY", &credentials.0);
    // Only one trailing newline is stripped; the second one is part of the value.
    let two_newlines = config.load_secrets().unwrap_err().to_string();
    fs::write(credentials.0.join("github"), "ghp_token\n").unwrap();
    let secrets = config.load_secrets().unwrap();
    std::env::remove_var("CREDENTIALS_DIRECTORY");
    assert_eq!(
        two_newlines,
        format!("{PATH}:13:1: secret \"github\" from credential github: the value contains a control character, which cannot go in an HTTP header")
    );
    assert_eq!(secrets.get("github").unwrap().expose(), "ghp_token");
    assert_eq!(
        openai.headers["Authorization"].render(&secrets).unwrap(),
        "Bearer sk-openai"
    );
    let auth = stripe.basic_auth.as_ref().unwrap();
    assert_eq!(auth.username.render(&secrets).unwrap(), "sk_test_stripe");
    assert_eq!(auth.password.render(&secrets).unwrap(), "");
    let debug = format!("{secrets:?}");
    assert!(!debug.contains("ghp_token") && !debug.contains("sk-openai"));
    assert!(!debug.contains("sk_test_stripe"));
    assert!(debug.contains("<redacted>"));

    assert_eq!(
        config.load_secrets().unwrap_err().to_string(),
        format!("{PATH}:13:1: secret \"github\" from credential github: CREDENTIALS_DIRECTORY is not set; run the daemon from a systemd unit with LoadCredential=github:PATH")
    );
    std::env::remove_var("SBX_TEST_DESIGN_OPENAI");
}

#[test]
fn read_error() {
    let missing = TempPath::new("missing.toml");
    assert_eq!(
        Config::load(&missing.0).unwrap_err().to_string(),
        format!(
            "{}: cannot read: No such file or directory (os error 2)",
            missing.0.display()
        )
    );
}

#[test]
fn load_reads_the_file() {
    let file = TempPath::new("load.toml");
    fs::write(&file.0, "[daemon]\nsubnet = \"10.1.0.0/24\"\n").unwrap();
    let config = Config::load(&file.0).unwrap();
    assert_eq!(config.path, file.0);
    assert_eq!(config.daemon.subnet, "10.1.0.0/24".parse().unwrap());
}

#[test]
fn configs_that_could_not_work_are_refused() {
    let value = integration(
        "name = \"a\"\nhosts = [\"a.com\"]\nheaders = { X = \"Bearer ${secret:key}\\r\\nY: 1\" }\n",
    );
    assert!(
        value.starts_with("t.toml:6:17: the value holds the control character '\\r'"),
        "{value}"
    );
    let wildcard = integration("name = \"a\"\nhosts = [\"*.com\"]\nheaders = { X = \"1\" }\n");
    assert!(
        wildcard.starts_with("t.toml:5:10: \"*.com\" matches every name under a top-level domain"),
        "{wildcard}"
    );
    for (subnet, reserved) in [
        ("subnet = \"0.0.0.0/0\"", "0.0.0.0/8"),
        ("subnet = \"127.0.0.0/16\"", "127.0.0.0/8"),
        ("subnet = \"169.254.0.0/16\"", "169.254.0.0/16"),
        ("subnet6 = \"::/0\"", "::/8"),
        ("subnet6 = \"fe80::/48\"", "fe80::/10"),
    ] {
        let refused = error(&format!("[daemon]\n{subnet}\n"));
        assert!(
            refused.contains(&format!("overlaps {reserved}, which the host needs")),
            "{subnet}: {refused}"
        );
    }
    let two = |a: &str, b: &str| {
        error(&format!(
            "{SECRETS}[[integration]]\nname = \"a\"\nhosts = [\"{a}\"]\nheaders = {{ X = \"1\" }}\n\
             [[integration]]\nname = \"b\"\nhosts = [\"{b}\"]\nheaders = {{ X = \"2\" }}\n\
             [[profile]]\nname = \"p\"\nintegrations = [\"a\", \"b\"]\n"
        ))
    };
    for (a, b) in [
        ("api.example.com", "API.example.com"),
        ("*.example.com", "api.example.com"),
        ("api.example.com", "*.example.com"),
        ("*.example.com", "*.eu.example.com"),
    ] {
        assert!(
            two(a, b).contains("integrations \"a\" and \"b\" of profile \"p\" both match"),
            "{a} {b}: {}",
            two(a, b)
        );
    }
    let apart = Config::parse(
        &format!(
            "{SECRETS}[[integration]]\nname = \"a\"\nhosts = [\"*.example.com\"]\nheaders = {{ X = \"1\" }}\n\
             [[integration]]\nname = \"b\"\nhosts = [\"example.com\", \"*.example.org\"]\nheaders = {{ X = \"2\" }}\n\
             [[profile]]\nname = \"p\"\nintegrations = [\"a\", \"b\"]\n"
        ),
        Path::new("t.toml"),
    );
    assert!(apart.is_ok(), "{apart:?}");
}
