//! Steps 2 and 6: one sandbox, from the exec request to nothing left. `lifecycle` starts and ends it (the
//! only module that starts processes), with `init` (the processes inside), `unix_sockets` (the host Unix
//! sockets it may reach, decided inside by its PID 1), `pool` (its addresses), `ca` (its own CA), `trust`
//! (where that CA is trusted inside) and `resolv_conf` (the resolver it is given); `live` is what the rest
//! of the daemon may read of a running sandbox.

pub mod ca;
pub mod init;
pub mod lifecycle;
pub mod live;
pub mod pool;
pub mod resolv_conf;
pub mod trust;
pub mod unix_sockets;
