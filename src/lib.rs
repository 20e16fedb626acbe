//! `sandbox`: run programs in a network sandbox whose outbound traffic a privileged daemon relays, so that
//! secrets can be added to their HTTPS requests without ever entering the sandbox.
//!
//! The folders follow DESIGN's flow: `control` (step 1: `sandbox exec` reaches the daemon, speaking
//! `protocol`) → `sandbox` (steps 2 and 6: one sandbox's life) → `kernel` (step 3: veth, routes, the
//! nftables table) → `proxy` (steps 4 and 5: every connection a sandbox opens) → `audit` (a line for each).
//! `config` feeds them all; `daemon` starts, reloads and stops them; `doctor` checks the host.

pub mod audit;
pub mod config;
pub mod control;
pub mod daemon;
pub mod doctor;
pub mod kernel;
pub mod protocol;
pub mod proxy;
pub mod sandbox;
pub mod secrets;
#[cfg(test)]
mod testutil;
