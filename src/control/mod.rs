//! Step 1 of the flow: `sandbox exec` reaches the daemon. `client` is the unprivileged command, `socket` the
//! daemon's end (who is calling, what they ask, handed to the sandbox lifecycle); both speak `protocol`.

pub mod client;
pub mod socket;
