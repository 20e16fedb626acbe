//! Steps 4 and 5: every connection a sandbox opens. `listener` accepts it (transparently) and hands it to one
//! of the `workers`; port 443 goes to `tls_router` (the ClientHello read by `clienthello`), which splices it
//! through or terminates it in `intercept`, where the request `policy` decides what may go out and
//! `upstream` sends it (again, with `replay`, if the upstream did not process it); an HTTP/2 client of an
//! HTTP/2 upstream is relayed frame by frame by `http2`. Other TCP goes through `tcp_relay`, DNS through `dns`.
//! `context` is what they all share.

pub mod clienthello;
pub mod context;
pub mod dns;
pub mod http2;
pub mod intercept;
pub mod listener;
pub mod policy;
pub mod tcp_relay;
pub mod tls_router;
pub mod upstream;
pub mod workers;
