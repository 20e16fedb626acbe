use crate::config::tests::{error, parse};

#[test]
fn daemon_values_are_checked() {
    let daemon = |line: &str| error(&format!("[daemon]\n{line}\n"));
    assert_eq!(
        daemon("subnet = \"10.233.0.1/16\""),
        "t.toml:2:10: network \"10.233.0.1/16\" has host bits set; did you mean \"10.233.0.0/16\"?"
    );
    assert_eq!(
        daemon("subnet = \"10.233.0.0/29\""),
        "t.toml:2:10: network \"10.233.0.0/29\" is too small: each sandbox takes a /30 block; use a prefix length of 28 or less"
    );
    assert_eq!(
        daemon("subnet = \"10.233.0.0\""),
        "t.toml:2:10: invalid IPv4 network \"10.233.0.0\"; expected CIDR notation, as in \"10.233.0.0/16\""
    );
    assert_eq!(
        daemon("subnet = \"fd00::/48\""),
        "t.toml:2:10: invalid IPv4 network \"fd00::/48\"; expected CIDR notation, as in \"10.233.0.0/16\""
    );
    assert_eq!(
        daemon("subnet6 = \"fd00:5ba:d::/57\""),
        "t.toml:2:11: network \"fd00:5ba:d::/57\" is too small: each sandbox takes a /64; use a prefix length of 56 or less"
    );
    assert_eq!(
        daemon("subnet6 = \"fd00:5ba:d::1/48\""),
        "t.toml:2:11: network \"fd00:5ba:d::1/48\" has host bits set; did you mean \"fd00:5ba:d::/48\"?"
    );
    assert_eq!(
        daemon("dns = [\"192.0.2.1\", \"dns.example\"]"),
        "t.toml:2:21: invalid DNS server \"dns.example\"; expected an IP address with an optional port, as in \"192.0.2.53\", \"192.0.2.53:5353\", \"2001:db8::53\" or \"[2001:db8::53]:5353\""
    );
    assert_eq!(
        daemon("upstream_ca = [\"/ok.pem\", \"ca.pem\"]"),
        "t.toml:2:27: path \"ca.pem\" is not absolute"
    );
    assert_eq!(
        daemon("audit_log = \"audit.jsonl\""),
        "t.toml:2:13: path \"audit.jsonl\" is not absolute"
    );
    let config = parse("[daemon]\nsubnet = \"10.0.0.0/28\"\nsubnet6 = \"fd00::/56\"\n");
    assert_eq!(config.daemon.subnet.prefix_len(), 28);
    assert_eq!(config.daemon.subnet6.unwrap().prefix_len(), 56);
}
