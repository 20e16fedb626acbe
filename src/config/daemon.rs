//! `[daemon]`: the socket, the audit log, the address pools, resolvers, upstream roots and the state
//! directory (where rotated refresh tokens are kept). The pools
//! are checked here, where the file can still be pointed at, so that a pool too small for one
//! sandbox or over addresses the host needs is refused before any sandbox is made.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Deserializer};

use super::syntax::{parse_str, AbsolutePath};

pub const DEFAULT_SOCKET: &str = "/run/sandbox/sandbox.sock";
const DEFAULT_AUDIT_LOG: &str = "/var/log/sandbox/audit.jsonl";
/// systemd's `StateDirectory=sandbox`.
const DEFAULT_STATE_DIR: &str = "/var/lib/sandbox";
const DEFAULT_SUBNET: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(10, 233, 0, 0), 16);
const DNS_PORT: u16 = 53;
/// Each sandbox takes a /30 (host side, sandbox side).
const MAX_PREFIX_V4: u8 = 28;
/// Each sandbox takes a /64; a /56 holds 256 of them.
const MAX_PREFIX_V6: u8 = 56;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonSection {
    #[serde(deserialize_with = "absolute_path")]
    pub socket: PathBuf,
    pub socket_group: Option<String>,
    #[serde(deserialize_with = "subnet4")]
    pub subnet: Ipv4Net,
    #[serde(deserialize_with = "subnet6")]
    pub subnet6: Option<Ipv6Net>,
    #[serde(deserialize_with = "absolute_path")]
    pub audit_log: PathBuf,
    /// Empty: use the host's /etc/resolv.conf.
    #[serde(deserialize_with = "dns_servers")]
    pub dns: Vec<SocketAddr>,
    #[serde(deserialize_with = "absolute_paths")]
    pub upstream_ca: Vec<PathBuf>,
    /// Refresh tokens an OAuth2 server rotated, one file per secret (0600, written atomically).
    #[serde(deserialize_with = "absolute_path")]
    pub state_dir: PathBuf,
}

impl Default for DaemonSection {
    fn default() -> Self {
        DaemonSection {
            socket: PathBuf::from(DEFAULT_SOCKET),
            socket_group: None,
            subnet: DEFAULT_SUBNET,
            subnet6: None,
            audit_log: PathBuf::from(DEFAULT_AUDIT_LOG),
            dns: Vec::new(),
            upstream_ca: Vec::new(),
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
        }
    }
}

struct DnsServer(SocketAddr);

impl<'de> Deserialize<'de> for DnsServer {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_str(d, "a DNS server address", |s| {
            s.parse::<SocketAddr>()
                .or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, DNS_PORT)))
                .map(DnsServer)
                .map_err(|_| format!("invalid DNS server \"{s}\"; expected an IP address with an optional port, as in \"192.0.2.53\", \"192.0.2.53:5353\", \"2001:db8::53\" or \"[2001:db8::53]:5353\""))
        })
    }
}

fn absolute_path<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
    AbsolutePath::deserialize(d).map(|p| p.0)
}

fn absolute_paths<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PathBuf>, D::Error> {
    Ok(Vec::<AbsolutePath>::deserialize(d)?
        .into_iter()
        .map(|p| p.0)
        .collect())
}

fn dns_servers<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
    Ok(Vec::<DnsServer>::deserialize(d)?
        .into_iter()
        .map(|s| s.0)
        .collect())
}

fn subnet4<'de, D: Deserializer<'de>>(d: D) -> Result<Ipv4Net, D::Error> {
    parse_str(d, "an IPv4 network, as in \"10.233.0.0/16\"", |s| {
        let net: Ipv4Net = s.parse().map_err(|_| {
            format!("invalid IPv4 network \"{s}\"; expected CIDR notation, as in \"10.233.0.0/16\"")
        })?;
        check_network(s, net.into(), MAX_PREFIX_V4, "/30 block").map(|()| net)
    })
}

fn subnet6<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Ipv6Net>, D::Error> {
    parse_str(d, "an IPv6 network, as in \"fd00:5ba:d::/48\"", |s| {
        let net: Ipv6Net = s.parse().map_err(|_| {
            format!(
                "invalid IPv6 network \"{s}\"; expected CIDR notation, as in \"fd00:5ba:d::/48\""
            )
        })?;
        check_network(s, net.into(), MAX_PREFIX_V6, "/64").map(|()| Some(net))
    })
}

fn check_network(s: &str, net: IpNet, max_prefix: u8, block: &str) -> Result<(), String> {
    if net != net.trunc() {
        return Err(format!(
            "network \"{s}\" has host bits set; did you mean \"{}\"?",
            net.trunc()
        ));
    }
    if net.prefix_len() > max_prefix {
        return Err(format!(
            "network \"{s}\" is too small: each sandbox takes a {block}; use a prefix length of {max_prefix} or less"
        ));
    }
    // Sandbox addresses there would shadow the host's own (loopback, link-local) or be no unicast
    // addresses at all; a pool that large would take every address from the host's routes.
    let reserved = [
        "0.0.0.0/8",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "224.0.0.0/3",
        "::/8",
        "fe80::/10",
        "ff00::/8",
    ];
    let clash = reserved
        .iter()
        .filter_map(|r| r.parse::<IpNet>().ok())
        .find(|r| r.contains(&net.network()) || net.contains(&r.network()));
    if let Some(reserved) = clash {
        return Err(format!(
            "network \"{s}\" overlaps {reserved}, which the host needs for itself; use a private range, \
             as in \"10.233.0.0/16\" or \"fd00:5ba:d::/48\""
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
