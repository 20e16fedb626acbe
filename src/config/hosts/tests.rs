use super::*;
use crate::config::tests::{integration, parse};

#[test]
fn host_patterns_are_checked() {
    let host = |h: &str| {
        integration(&format!(
            "name = \"a\"\nhosts = [\"ok.com\", \"{h}\"]\nheaders = {{ X = \"1\" }}\n"
        ))
    };
    assert_eq!(
        host("a.*.com"),
        "t.toml:5:20: invalid host \"a.*.com\": \"*\" is allowed only as the whole first label, as in \"*.example.com\""
    );
    assert_eq!(
        host("*"),
        "t.toml:5:20: invalid host \"*\": \"*\" is allowed only as the whole first label, as in \"*.example.com\""
    );
    assert_eq!(
        host("*x.com"),
        "t.toml:5:20: invalid host \"*x.com\": \"*\" is allowed only as the whole first label, as in \"*.example.com\""
    );
    assert_eq!(
        host("192.0.2.1"),
        "t.toml:5:20: \"192.0.2.1\" is an IP address; hosts are matched against TLS SNI and HTTP Host names, so give a name"
    );
    assert_eq!(
        host("2001:db8::1"),
        "t.toml:5:20: \"2001:db8::1\" is an IP address; hosts are matched against TLS SNI and HTTP Host names, so give a name"
    );
    assert_eq!(
        host("bücher.de"),
        "t.toml:5:20: invalid host \"bücher.de\": character 'ü' is not allowed; write internationalized names in their xn-- form"
    );
    assert_eq!(
        host("a..com"),
        "t.toml:5:20: invalid host \"a..com\": empty label"
    );
    assert_eq!(
        host("-a.com"),
        "t.toml:5:20: invalid host \"-a.com\": label \"-a\" starts or ends with '-'"
    );
    assert_eq!(
        host("a.com:443"),
        "t.toml:5:20: invalid host \"a.com:443\": character ':' is not allowed"
    );
    let config = parse(
        "[[profile]]\nname = \"p\"\nallow_hosts = [\"API.Example.COM.\", \"*.Example.org\"]\n",
    );
    assert_eq!(
        config.profiles[0].allow_hosts,
        [
            HostPattern::Exact("api.example.com".into()),
            HostPattern::Wildcard("example.org".into())
        ]
    );
    assert_eq!(
        config.profiles[0].allow_hosts[1].to_string(),
        "*.example.org"
    );
}

#[test]
fn host_matching() {
    let exact = HostPattern::parse("api.example.com").unwrap();
    assert!(exact.matches("api.example.com"));
    assert!(exact.matches("API.Example.com."));
    assert!(!exact.matches("api.example.com.."));
    assert!(!exact.matches("x.api.example.com"));
    assert!(!exact.matches("example.com"));
    let wildcard = HostPattern::parse("*.example.com").unwrap();
    assert!(wildcard.matches("a.example.com"));
    assert!(wildcard.matches("a.b.EXAMPLE.com."));
    assert!(!wildcard.matches("example.com"));
    assert!(!wildcard.matches(".example.com"));
    assert!(!wildcard.matches("aexample.com"));
    assert!(!wildcard.matches("a.example.org"));
    assert!(!wildcard.matches("ü.example.co"));
    assert!(wildcard.matches("ü.example.com"));
}
