//! resolv.conf: the resolvers it names (the DNS relay asks the host's), and the one a sandbox sees when the
//! host's resolver is one it cannot reach (a loopback stub such as 127.0.0.53).

use std::net::IpAddr;

pub fn nameservers(resolv_conf: &str) -> Vec<IpAddr> {
    resolv_conf
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
        })
        .filter_map(|word| word.split('%').next().and_then(|ip| ip.parse().ok()))
        .collect()
}

/// The resolv.conf a sandbox sees when a host resolver is unreachable from it (`unreachable` says which):
/// the host's file with its nameserver lines replaced by the relay's addresses. None: keep the host's.
pub fn for_sandbox(
    host: &str,
    relay: &[IpAddr],
    unreachable: impl Fn(IpAddr) -> bool,
) -> Option<String> {
    if !nameservers(host).into_iter().any(unreachable) {
        return None;
    }
    let mut text: String = host
        .lines()
        .filter(|line| line.split_whitespace().next() != Some("nameserver"))
        .map(|line| format!("{line}\n"))
        .collect();
    for ip in relay {
        text.push_str(&format!("nameserver {ip}\n"));
    }
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_resolvers_are_replaced_by_the_relay() {
        let host = "# managed\nnameserver 127.0.0.53\noptions edns0 trust-ad\nsearch lan\n";
        let relay = ["10.233.0.1".parse().unwrap()];
        let text = for_sandbox(host, &relay, |ip| ip.is_loopback()).unwrap();
        assert_eq!(
            text,
            "# managed\noptions edns0 trust-ad\nsearch lan\nnameserver 10.233.0.1\n"
        );
        assert_eq!(
            for_sandbox("nameserver 192.0.2.53\n", &relay, |ip| ip.is_loopback()),
            None
        );
    }

    #[test]
    fn nameservers_skip_junk_and_zone_ids() {
        let text = "nameserver 192.0.2.1\nnameserver fe80::1%eth0\nnameserver nonsense\n#nameserver 1.1.1.1\n";
        let expected: Vec<IpAddr> = vec!["192.0.2.1".parse().unwrap(), "fe80::1".parse().unwrap()];
        assert_eq!(nameservers(text), expected);
    }
}
