//! `sandbox`: run programs in a network sandbox whose outbound traffic a privileged daemon relays, so that
//! secrets can be added to their HTTPS requests without ever entering the sandbox.
//!
//! The folders follow DESIGN's flow: `control` (step 1: `sandbox exec` reaches the daemon, speaking
//! `protocol`) → `sandbox` (steps 2 and 6: one sandbox's life: `lifecycle` starts and ends it, `live` is what
//! the rest may read of it) → `kernel` (step 3: veth, routes, the nftables table) → `proxy` (steps 4 and 5:
//! every connection a sandbox opens: `listener`, then `tcp_relay`, `dns` or `tls_router`, which splices or
//! hands it to `intercept`, where `policy` decides what goes out and `upstream` sends it, or `http2` relays
//! it) → `audit` (a line for each). `secrets` (step 5b) mints and refreshes the short-lived tokens that
//! `policy` reads. `redact` masks the secrets a response gives back: a sandbox gets its needles when it
//! starts, and the proxy masks with them. `config` feeds them all; `daemon` starts, reloads and stops them;
//! `doctor` checks the host.

pub mod audit;
pub mod config;
pub mod control;
pub mod daemon;
pub mod doctor;
pub mod kernel;
pub mod protocol;
pub mod proxy;
pub mod redact;
pub mod sandbox;
pub mod secrets;
#[cfg(test)]
mod testutil;
