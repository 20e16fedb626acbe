//! `sandbox`: run programs in a network sandbox whose outbound traffic a privileged daemon relays, so that
//! secrets can be added to their HTTPS requests without ever entering the sandbox.
//!
//! The path of a command and its packets, module by module:
//! `client` (sandbox exec) → `protocol` → `control` (daemon socket) → `lifecycle` (one sandbox, with its
//! `ca` and `trust` bundle) → `init` (the processes inside) + `netlink` (veth, addresses, routes) + `nft`
//! (the `inet sandbox` table); then every connection the sandbox opens is accepted by `tproxy` and handed
//! to one of the `workers`: port 443 goes to `tls` (ClientHello peeked by `clienthello`), which either
//! splices it through or terminates it in `http_proxy`, whose requests go out through `upstream` (which
//! sends again, with `replay`, what an upstream did not process; an HTTP/2 client's frames, when the
//! upstream speaks HTTP/2 too, are relayed by `http2_relay`, with `hpack`); other TCP is relayed by `tproxy`, DNS (UDP, and TCP handed over by `tproxy`) answered by `dns`, which under
//! `egress = "deny"` also records the addresses that `tls` and `tproxy` let allowed names reach; each writes
//! `audit`. `config` and `pool` feed the daemon; `daemon` starts and stops it all (`systemd` tells the
//! service manager); `doctor` checks the host.

pub mod audit;
pub mod ca;
pub mod client;
pub mod clienthello;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dns;
pub mod doctor;
pub mod hpack;
pub mod http2_relay;
pub mod http_proxy;
pub mod init;
pub mod lifecycle;
pub mod netlink;
pub mod nft;
pub mod policy;
pub mod pool;
pub mod protocol;
pub mod replay;
pub mod systemd;
#[cfg(test)]
mod testutil;
pub mod tls;
pub mod tproxy;
pub mod trust;
pub mod upstream;
pub mod workers;
