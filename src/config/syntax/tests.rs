use super::*;
use crate::config::tests::{error, integration};

#[test]
fn toml_syntax_error() {
    assert_eq!(
        error("[daemon]\nsocket = \"/x\n"),
        "t.toml:2:13: invalid basic string"
    );
    assert_eq!(
        error("[daemon\n"),
        "t.toml:1:8: invalid table header; expected `.`, `]`"
    );
}

#[test]
fn unknown_keys_name_their_table() {
    assert_eq!(
        error("[daemon]\n\nsokcet = \"/x\"\n"),
        "t.toml:3:1: unknown key \"sokcet\" in [daemon]; expected one of: socket, socket_group, subnet, subnet6, audit_log, dns, upstream_ca, state_dir"
    );
    assert_eq!(
        error("[deamon]\n"),
        "t.toml:1:2: unknown key \"deamon\" at the top level; expected one of: daemon, secrets, integration, profile"
    );
    assert_eq!(
        integration("name = \"a\"\nhost = [\"a.com\"]\n"),
        "t.toml:5:1: unknown key \"host\" in [[integration]]; expected one of: name, hosts, headers, basic_auth, aws_sigv4, redact"
    );
    assert_eq!(
        integration(
            "name = \"a\"\nhosts = [\"a.com\"]\nbasic_auth = { user = \"\", password = \"\" }\n"
        ),
        "t.toml:6:16: unknown key \"user\" in basic_auth; expected one of: username, password"
    );
    assert_eq!(
        error("[[profile]]\nname = \"p\"\nuser = []\n"),
        "t.toml:3:1: unknown key \"user\" in [[profile]]; expected one of: name, integrations, users, egress, allow_hosts, unix_sockets"
    );
    assert_eq!(
        error("[secrets]\na = { enf = \"X\" }\n"),
        "t.toml:2:5: unknown key \"enf\" in a [secrets] entry; expected one of: env, file, credential, github_app, oauth2, google_service_account"
    );
}

#[test]
fn missing_and_mistyped_keys() {
    assert_eq!(
        integration("hosts = [\"a.com\"]\n"),
        "t.toml:3:1: missing key \"name\""
    );
    assert_eq!(
        error("[daemon]\nsocket = 5\n"),
        "t.toml:2:10: invalid type: integer `5`, expected an absolute path"
    );
    assert_eq!(
        error("[[profile]]\nname = \"p\"\negress = \"dny\"\n"),
        "t.toml:3:10: unknown variant `dny`, expected `allow` or `deny`"
    );
}

#[test]
fn location_counts_characters_and_handles_crlf() {
    let src = Source {
        path: Path::new("t"),
        text: "a\r\nüü = 1\n",
    };
    assert_eq!(src.location(0), Location { line: 1, col: 1 });
    assert_eq!(src.location(3), Location { line: 2, col: 1 });
    assert_eq!(src.location(8), Location { line: 2, col: 4 });
    assert_eq!(
        error("[daemon]\r\n\"ü\" = 1 \r\n"),
        "t.toml:2:1: unknown key \"ü\" in [daemon]; expected one of: socket, socket_group, subnet, subnet6, audit_log, dns, upstream_ca, state_dir"
    );
}
