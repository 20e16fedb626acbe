//! `sandbox`: run programs in a network sandbox whose outbound traffic a privileged daemon relays, so that
//! secrets can be added to their HTTPS requests without ever entering the sandbox.
//!
//! The path of a command and its packets, module by module:
//! `client` (sandbox exec) → `protocol` → `control` (daemon socket) → `lifecycle` (one sandbox) →
//! `init` (the processes inside) + `netlink` (veth, addresses, routes) + `nft` (the `inet sandbox` table);
//! then every packet the sandbox sends: `tproxy` (TCP relay) or `dns` (DNS relay), each writing `audit`.
//! `config` and `pool` feed the daemon; `daemon` starts and stops it all; `doctor` checks the host.

pub mod audit;
pub mod ca;
pub mod client;
pub mod clienthello;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dns;
pub mod doctor;
pub mod http_proxy;
pub mod init;
pub mod lifecycle;
pub mod netlink;
pub mod nft;
pub mod pool;
pub mod protocol;
pub mod systemd;
#[cfg(test)]
mod testutil;
pub mod tls;
pub mod tproxy;
pub mod trust;
pub mod upstream;
