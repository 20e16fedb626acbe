//! Step 3: the kernel objects the daemon owns, through their APIs: `netlink` (veth, addresses, routes,
//! policy routing), `nft` (the `inet sandbox` table), the numbers they share (`marks`) and the host's own
//! addresses (`host_addresses`).

pub mod host_addresses;
pub mod marks;
pub mod netlink;
pub mod nft;
