use crate::config::tests::{error, integration, SECRETS};

#[test]
fn integrations_are_checked() {
    assert_eq!(
        integration("name = \"\"\nhosts = [\"a.com\"]\n"),
        "t.toml:4:8: integration name is empty"
    );
    assert_eq!(
        integration("name = \"a\"\nhosts = []\nheaders = { X = \"1\" }\n"),
        "t.toml:5:9: integration \"a\" has no hosts; list at least one, as in hosts = [\"api.example.com\"]"
    );
    assert_eq!(
        integration("name = \"a\"\nhosts = [\"a.com\"]\n"),
        "t.toml:4:8: integration \"a\" injects nothing; give it headers = { ... }, basic_auth = { ... } or aws_sigv4 = { ... }"
    );
    assert_eq!(
        integration("name = \"a\"\nhosts = [\"a.com\"]\nbasic_auth = { username = \"u\", password = \"p\" }\nheaders = { X = \"1\", authorization = \"x\" }\n"),
        "t.toml:7:22: integration \"a\" sets header \"authorization\" and basic_auth, which also sets it; keep one"
    );
    assert_eq!(
        integration("name = \"a\"\nhosts = [\"a.com\"]\nheaders = { X-Key = \"1\", x-key = \"2\" }\n"),
        "t.toml:6:26: header \"x-key\" is given twice in integration \"a\" (header names are case-insensitive)"
    );
    assert_eq!(
        integration("name = \"a\"\nhosts = [\"a.com\"]\nheaders = { \"X Key\" = \"1\" }\n"),
        "t.toml:6:13: invalid header name \"X Key\""
    );
    assert_eq!(
        integration("name = \"a\"\nhosts = [\"a.com\"]\nheaders = { Host = \"evil.com\" }\n"),
        "t.toml:6:13: header \"Host\" cannot be set by an integration"
    );
    assert_eq!(
        integration(
            "name = \"a\"\nhosts = [\"a.com\"]\nheaders = { X = \"1\" }\nredact = \"no\"\n"
        ),
        "t.toml:7:10: invalid type: string \"no\", expected a boolean"
    );
    assert_eq!(
        error(&format!(
            "{SECRETS}[[integration]]\nname = \"a\"\nhosts = [\"a.com\"]\nheaders = {{ X = \"1\" }}\n\
             [[integration]]\nname = \"a\"\nhosts = [\"b.com\"]\nheaders = {{ X = \"1\" }}\n"
        )),
        "t.toml:8:8: integration \"a\" is defined twice"
    );
}
