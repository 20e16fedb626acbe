//! Step 3: the kernel objects the daemon owns, through their APIs: `netlink` (veth, addresses, routes,
//! policy routing), `nft` (the `inet sandbox` table), the numbers they share (`marks`), the host's own
//! addresses (`host_addresses`) and running code inside another network namespace (`netns`).

pub mod host_addresses;
pub mod marks;
pub mod netlink;
pub mod netns;
pub mod nft;
