//! Harness for the privileged end-to-end tests: throwaway network namespaces with test upstreams, the
//! daemon started inside them, clients run as the unprivileged test user, and the leak checks.
//! Everything a test creates is removed by a guard's `Drop`, also on panic. `use common::*;` brings the
//! first seven parts below; the last five are named (`use common::tls_upstream::*;`) where needed:
//!
//!   tools                whether a test may run (root, tools, CI), running tools, polling, temp dirs
//!   net                  the namespaces H and U and the veth between them (`TestNet`), `in_netns`
//!   servers              the plain servers in U (HTTP, TCP and UDP echo) and H, and what they saw
//!   resolver             the test DNS resolver in U (hickory-proto)
//!   clients              the test user, `sandbox exec` as a caller (`Exec`), a running client
//!   daemon               the daemon under test (`DaemonBuilder`, `Daemon`)
//!   leaks                what a test may leave behind (links, nft elements, rules, routes, processes)
//!   certs                test CAs and certificates
//!   tls_upstream         HTTPS upstreams in U for the interception tests
//!   upstream_processes   upstreams that are other programs (e.g. nginx) run in U
//!   aws                  AWS's test servers (S3, a Bedrock-style API: tests/servers/aws.py) and the
//!                        integration that signs for them
//!   side_doors           host Unix services recording who reached them, a 32-bit program, nft content
//!   tokens               the token endpoints of minted secrets (tests/servers/tokens.py) in U

// Each test binary includes this module and uses a different part of it.
#![allow(dead_code)]

pub mod aws;
pub mod certs;
mod clients;
mod daemon;
mod leaks;
mod net;
mod resolver;
mod servers;
pub mod side_doors;
pub mod tls_upstream;
pub mod tokens;
mod tools;
pub mod upstream_processes;

// What `use common::*` brings; like the items themselves, each binary uses some of them.
#[allow(unused_imports)]
pub use {clients::*, daemon::*, leaks::*, net::*, resolver::*, servers::*, tools::*};
