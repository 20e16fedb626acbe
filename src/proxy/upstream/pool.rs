//! The pools of upstream connections of one worker thread, keyed by (destination, verified name,
//! protocols): a connection verified for one name never carries a request (and its secret) meant for
//! another. Idle connections are closed after a while.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hyper::client::conn::http1;
use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

use super::body::ProxyBody;
use super::connect::{Connection, Spare};
use super::streams::Http2Sender;

pub(super) const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Distinct (destination, name) pools a worker keeps; past this they are all dropped and made anew.
pub(super) const MAX_POOLS: usize = 4096;

/// Idle HTTP/1.1 connections a pool keeps.
pub(super) const MAX_IDLE: usize = 64;

/// How often a worker closes the upstream connections that have been idle for `IDLE_TIMEOUT`.
pub(super) const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// Which protocols an upstream connection may speak. Upgrades (WebSocket) exist only in HTTP/1.1, so a
/// request asking for one goes over a connection that offered nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocols {
    Any,
    Http1Only,
}

/// An HTTP/1.1 connection lent to one request; `release` it when the response has been read to its end.
pub struct Lease {
    pub(super) key: PoolKey,
    pub(super) generation: u64,
    pub(super) sender: http1::SendRequest<ProxyBody>,
}

impl Lease {
    /// Gives the connection back to its pool, unless it cannot carry another request.
    pub fn release(self) {
        if self.sender.is_closed() {
            return;
        }
        POOLS.with(|pools| {
            let mut pools = pools.borrow_mut();
            if pools.generation != self.generation {
                return;
            }
            if let Some(pool) = pools.pools.get_mut(&self.key) {
                if pool.idle.len() < MAX_IDLE {
                    pool.idle.push((self.sender, Instant::now()));
                }
            }
        });
    }
}

pub(super) type PoolKey = (SocketAddr, String, Protocols);

pub(super) struct Pool {
    pub(super) last_used: Instant,
    pub(super) connector: TlsConnector,
    pub(super) name: ServerName<'static>,
    pub(super) http2: Vec<Http2Sender>,
    pub(super) idle: Vec<(http1::SendRequest<ProxyBody>, Instant)>,
    /// The upstream chose HTTP/1.1 when offered h2: HTTP/2 clients are then served without dialling first.
    pub(super) http1_only: bool,
    /// An HTTP/2 connection dialled ahead for the next HTTP/2 client, and whether one is being dialled.
    pub(super) spare: Option<Spare>,
    pub(super) spare_coming: bool,
}

#[derive(Default)]
pub(super) struct Pools {
    pub(super) generation: u64,
    pub(super) pools: HashMap<PoolKey, Pool>,
    pub(super) sweeping: bool,
}

thread_local! {
    pub(super) static POOLS: RefCell<Pools> = RefCell::default();
}

pub(super) enum Checkout {
    Pooled(Connection),
    Connect(TlsConnector, ServerName<'static>),
}

/// Closes this worker's upstream connections that have been idle for `IDLE_TIMEOUT` (dropping the last
/// sender of a connection ends its task once its requests are done).
pub(super) async fn sweep_forever() {
    loop {
        tokio::time::sleep(SWEEP_INTERVAL).await;
        POOLS.with(|pools| {
            let mut pools = pools.borrow_mut();
            for pool in pools.pools.values_mut() {
                pool.idle.retain(|(sender, since)| {
                    since.elapsed() < IDLE_TIMEOUT && !sender.is_closed()
                });
                let unused = pool.last_used.elapsed() >= IDLE_TIMEOUT;
                if unused {
                    pool.http2.clear();
                    pool.spare = None;
                }
                // Connections opened for a burst go once they are idle; the first one stays.
                let mut first = true;
                pool.http2.retain(|sender| {
                    let keep = !sender.is_closed() && (first || sender.is_busy());
                    first &= !keep;
                    keep
                });
            }
            pools.pools.retain(|_, pool| {
                !pool.http2.is_empty()
                    || !pool.idle.is_empty()
                    || pool.last_used.elapsed() < IDLE_TIMEOUT
            });
        });
    }
}
