//! The numbers the daemon's kernel objects share: packet and socket marks, the policy-routing table, the
//! veth name prefix. The nftables rules, the policy routing, the listeners and `sandbox doctor` all use them.

/// Packets TPROXYed to the daemon carry this mark; policy routing delivers marked packets locally.
pub const MARK: u32 = 0x5ba;
pub const ROUTE_TABLE: u32 = 0x5ba;
/// Set (SO_MARK) on every connection the daemon accepts from a sandbox, so that nftables can hand the rest
/// of its packets straight to its socket. No bit in common with `MARK`: what the daemon sends back on
/// such a connection must not match the policy-routing rule.
pub const SOCKET_MARK: u32 = 0x5ba00;
/// Host-side veth names: `sbx<slot>`. Anything with this prefix at start-up is a leftover.
pub const LINK_PREFIX: &str = "sbx";
