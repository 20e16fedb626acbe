//! Connections to the real upstream of an intercepted request: TLS to the original destination address and
//! port, verified for the SNI name against the system roots and `daemon.upstream_ca`, ALPN h2/http1.1, and
//! pooled. A pool belongs to exactly one (destination, verified name) pair, so a connection verified for one
//! name never carries a request (and its secret) meant for another.
//!
//! HTTP/2 upstream connections are driven with the h2 crate directly rather than through hyper's client:
//! a request then goes from the client's stream to the upstream's in the task that proxies it, without
//! hyper's dispatch channel and the task it spawns per request.
//!
//! An HTTP/2 client's connection gets an upstream connection of its own instead (`http2` passes its
//! frames): each pool keeps one such connection dialled ahead (its spare), so that the client does not
//! wait for a TLS handshake with the upstream, and remembers an upstream that answered h2 with HTTP/1.1.
//!
//! Pools belong to the worker thread (`workers`) that made them, as do their connections' tasks: a request
//! and the upstream connection that carries it never wake another thread. An HTTP/2 upstream connection
//! carries the requests of its pool up to the number of streams the upstream allows at once; past that a
//! pool opens another, so that long-lived streams (server-sent events) never hold the next request back.
//! HTTP/1.1 connections carry one request at a time and go back to the pool when the response has been
//! read to its end.
//!
//! Upstreams close connections all the time (GOAWAY after so many requests, keep-alive timeouts, reloads,
//! restarts). A request the upstream did not process goes again on another connection (`replay` keeps what
//! it takes), so that a client never sees such churn: one never written, one above a GOAWAY's last stream or
//! refused (REFUSED_STREAM), one whose connection could not be made (after a pause, for `RECONNECT_FOR`);
//! and, once, an idempotent one whose connection closed before any of its response came. Nothing else that
//! the upstream may have processed is sent again. A connection going away takes no new request.

mod body;
mod connect;
mod error;
mod pool;
pub mod replay;
mod retry;
mod streams;

use std::collections::hash_map::Entry;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Request, Response, Uri, Version};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::sync::oneshot;
use tokio_rustls::TlsConnector;

use crate::proxy::http2;
use crate::proxy::policy::is_idempotent;
use crate::proxy::upstream::replay::Replayable;
use connect::{connect, dial, Connection, RelayConnection, CONNECT_TIMEOUT};

pub use body::{BoxError, ProxyBody, UpstreamBody};
pub use connect::client_config;
pub use error::{SendError, UpstreamError};
use pool::{sweep_forever, Checkout, Pool, PoolKey, IDLE_TIMEOUT, MAX_POOLS, POOLS};
pub use pool::{Lease, Protocols};
use retry::{
    closes_after, connect_failure, http1_failure, not_replayable, not_sent_again, Failure,
    Reconnect, Reuse, MAX_RETRIES,
};
use streams::send_http2;

/// What came of sending a request: the response (with the lease on its HTTP/1.1 connection), or why
/// there is none; either way, how many times the request went again.
pub struct Sent {
    pub result: Result<(Response<UpstreamBody>, Option<Lease>), SendError>,
    pub retries: u32,
}

/// The TLS settings of upstream connections, shared by every worker; the pools themselves are per worker.
pub struct Upstreams {
    tls: Mutex<Arc<rustls::ClientConfig>>,
    /// Bumped when the roots change, so that every worker drops the pools made with the old ones.
    generation: AtomicU64,
}

/// The upstream connection dialled for an HTTP/2 client.
pub enum RelayUpstream {
    /// The upstream speaks HTTP/2: the client's connection is relayed over this one.
    Http2(Box<RelayConnection>),
    /// It chose HTTP/1.1; the connection is in this worker's pool now.
    Http1,
}

impl Upstreams {
    pub fn new(config: Arc<rustls::ClientConfig>) -> Self {
        Upstreams {
            tls: Mutex::new(config),
            generation: AtomicU64::new(0),
        }
    }

    /// New roots (config reload): requests under way finish, new connections use the new roots.
    pub fn set_config(&self, config: Arc<rustls::ClientConfig>) {
        *self.tls.lock().unwrap_or_else(|e| e.into_inner()) = config;
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Sends `request` (absolute URI, no Host header) to `destination`, verified as `name`, again on
    /// another connection as long as the upstream did not process it (see the module's comment).
    pub async fn send(
        &self,
        destination: SocketAddr,
        name: &str,
        protocols: Protocols,
        request: Request<ProxyBody>,
    ) -> Sent {
        let key: PoolKey = (destination, name.to_string(), protocols);
        let generation = self.generation.load(Ordering::Acquire);
        let (mut replay, mut request) = Replayable::new(request);
        let mut retries = 0;
        let mut reuse = Reuse::Any;
        let mut closed_retried = false;
        let mut reconnect = Reconnect::default();
        loop {
            let (failure, error) = match self.attempt(&key, generation, reuse, request).await {
                Ok(answered) => {
                    return Sent {
                        result: Ok(answered),
                        retries,
                    }
                }
                Err(failed) => failed,
            };
            let again = match failure {
                Failure::Unprocessed => retries < MAX_RETRIES,
                Failure::NotConnected => match reconnect.pause() {
                    Some(pause) => {
                        tokio::time::sleep(pause).await;
                        true
                    }
                    None => false,
                },
                Failure::Closed if closed_retried => false,
                Failure::Closed if !is_idempotent(replay.method().as_str().as_bytes()) => {
                    let why = format!(
                        "{} is not idempotent, and the upstream may have processed it",
                        replay.method()
                    );
                    return Sent {
                        result: Err(not_sent_again(why, error)),
                        retries,
                    };
                }
                Failure::Closed => {
                    closed_retried = true;
                    true
                }
                Failure::Final => false,
            };
            if !again {
                return Sent {
                    result: Err(error),
                    retries,
                };
            }
            request = match replay.again() {
                Ok(request) => request,
                Err(why) => {
                    return Sent {
                        result: Err(not_replayable(why, error)),
                        retries,
                    }
                }
            };
            // After a failure the idle HTTP/1.1 connections of the pool are likely as stale as the one that
            // failed (closed by the same keep-alive timeout, or the same restart); after a connection
            // closed, so are the pool's HTTP/2 connections (a restart closes them all at once), while a
            // GOAWAY or a refused stream says nothing about the others.
            reuse = match failure {
                Failure::Unprocessed => Reuse::Http2,
                Failure::Closed => Reuse::Nothing,
                Failure::NotConnected | Failure::Final => reuse,
            };
            if failure != Failure::NotConnected {
                retries += 1;
                tracing::debug!(%error, ?failure, %name, %destination, "sending a request again");
            }
        }
    }

    /// One attempt at `request` on a pooled connection or a new one.
    async fn attempt(
        &self,
        key: &PoolKey,
        generation: u64,
        reuse: Reuse,
        mut request: Request<ProxyBody>,
    ) -> Result<(Response<UpstreamBody>, Option<Lease>), (Failure, SendError)> {
        let checkout = self
            .checkout(key, generation, reuse)
            .map_err(|error| (Failure::Final, error))?;
        let connection = match checkout {
            Checkout::Pooled(connection) => connection,
            Checkout::Connect(connector, server_name) => {
                // Boxed: dialling is rare, and its state would otherwise make every request's future
                // (allocated per request by hyper's service call) several KiB larger.
                let connection = Box::pin(connect(key.0, connector, server_name))
                    .await
                    .map_err(|error| (connect_failure(&error), error))?;
                self.keep(key, generation, &connection);
                connection
            }
        };
        match connection {
            Connection::Http2(sender) => send_http2(sender, request)
                .await
                .map(|response| (response, None))
                .map_err(|(failure, error)| (failure, error.into())),
            Connection::Http1(mut sender) => {
                to_origin_form(&mut request);
                match sender.try_send_request(request).await {
                    Ok(response) => {
                        // The upstream closes the connection after this response: it must not go back
                        // to the pool, where a request could find it before it is seen closed.
                        let lease = (!closes_after(&response)).then(|| Lease {
                            key: key.clone(),
                            generation,
                            sender,
                        });
                        Ok((response.map(UpstreamBody::Http1), lease))
                    }
                    Err(mut error) => {
                        let failure = match error.take_message() {
                            Some(_) => Failure::Unprocessed,
                            None => http1_failure(error.error()),
                        };
                        Err((failure, error.into_error().into()))
                    }
                }
            }
        }
    }

    /// An upstream connection of its own for an HTTP/2 client (`http2`): the pool's spare, dialled
    /// ahead, when it has one (a new spare is then dialled for the next client), else a new one. An
    /// upstream that chooses HTTP/1.1 instead has the connection put into the pool, where the client's
    /// first request finds it.
    pub async fn dial_relay(
        &self,
        destination: SocketAddr,
        name: &str,
    ) -> Result<RelayUpstream, SendError> {
        enum Plan {
            Http1,
            Spare(
                oneshot::Receiver<RelayConnection>,
                TlsConnector,
                ServerName<'static>,
            ),
            Dial(TlsConnector, ServerName<'static>),
        }
        let key: PoolKey = (destination, name.to_string(), Protocols::Any);
        let generation = self.generation.load(Ordering::Acquire);
        let plan = self.with_pool(&key, generation, |pool| {
            if pool.http1_only {
                return Plan::Http1;
            }
            let (connector, server_name) = (pool.connector.clone(), pool.name.clone());
            if let Some(spare) = pool.spare.take() {
                let (reply, taken) = oneshot::channel();
                if spare.send(reply).is_ok() {
                    return Plan::Spare(taken, connector, server_name);
                }
            }
            Plan::Dial(connector, server_name)
        })?;
        let dialled = match plan {
            Plan::Http1 => return Ok(RelayUpstream::Http1),
            Plan::Spare(taken, connector, server_name) => match taken.await {
                Ok(spare) => Some(spare),
                // It died, or the upstream was closing it, as it was taken.
                Err(_) => dial_http2_reconnecting(destination, connector, server_name).await?,
            },
            Plan::Dial(connector, server_name) => {
                dial_http2_reconnecting(destination, connector, server_name).await?
            }
        };
        match dialled {
            Some(connection) => {
                self.dial_spare(key, generation);
                Ok(RelayUpstream::Http2(Box::new(connection)))
            }
            None => {
                self.with_pool(&key, generation, |pool| pool.http1_only = true)?;
                Ok(RelayUpstream::Http1)
            }
        }
    }

    /// Dials the pool's next spare HTTP/2 connection, unless it has one or one is on its way. A task keeps
    /// it (`hold_spare`) until a client takes it, the pool goes unused, or the upstream closes it.
    fn dial_spare(&self, key: PoolKey, generation: u64) {
        let dial = self.with_pool(&key, generation, |pool| {
            if pool.spare.as_ref().is_some_and(|spare| !spare.is_closed()) || pool.spare_coming {
                return None;
            }
            pool.spare_coming = true;
            Some((pool.connector.clone(), pool.name.clone()))
        });
        let Ok(Some((connector, server_name))) = dial else {
            return;
        };
        tokio::spawn(async move {
            let dialled = dial_http2(key.0, connector, server_name).await;
            POOLS.with(|pools| {
                let mut pools = pools.borrow_mut();
                if pools.generation != generation {
                    return;
                }
                let Some(pool) = pools.pools.get_mut(&key) else {
                    return;
                };
                pool.spare_coming = false;
                match dialled {
                    Ok(Some(connection)) => {
                        let (take, taken) = oneshot::channel();
                        pool.spare = Some(take);
                        tokio::spawn(hold_spare(connection, taken));
                    }
                    Ok(None) => pool.http1_only = true,
                    Err(error) => tracing::debug!(%error, "dialling a spare upstream connection"),
                }
            });
        });
    }

    /// Runs `f` on the pool for `key` on this worker, made if need be.
    fn with_pool<T>(
        &self,
        key: &PoolKey,
        generation: u64,
        f: impl FnOnce(&mut Pool) -> T,
    ) -> Result<T, SendError> {
        POOLS.with(|pools| {
            let mut pools = pools.borrow_mut();
            if pools.generation != generation {
                pools.generation = generation;
                pools.pools.clear();
            }
            if !pools.sweeping {
                pools.sweeping = true;
                tokio::spawn(sweep_forever());
            }
            if pools.pools.len() >= MAX_POOLS && !pools.pools.contains_key(key) {
                pools.pools.clear();
            }
            let pool = match pools.pools.entry(key.clone()) {
                Entry::Occupied(pool) => pool.into_mut(),
                Entry::Vacant(vacant) => vacant.insert(self.new_pool(key)?),
            };
            pool.last_used = Instant::now();
            Ok(f(pool))
        })
    }

    /// A pooled connection ready for a request (of those `reuse` allows), or what it takes to make one. A
    /// connection going away is let go of: its requests under way finish on it, new ones go elsewhere.
    fn checkout(
        &self,
        key: &PoolKey,
        generation: u64,
        reuse: Reuse,
    ) -> Result<Checkout, SendError> {
        self.with_pool(key, generation, |pool| {
            pool.http2.retain_mut(|sender| !sender.is_going_away());
            let pooled = pool
                .http2
                .iter()
                .filter(|_| reuse != Reuse::Nothing)
                .find(|sender| sender.has_room());
            if let Some(sender) = pooled {
                return Checkout::Pooled(Connection::Http2(sender.clone()));
            }
            while let Some((sender, _)) = pool.idle.pop().filter(|_| reuse == Reuse::Any) {
                if sender.is_ready() {
                    return Checkout::Pooled(Connection::Http1(sender));
                }
            }
            Checkout::Connect(pool.connector.clone(), pool.name.clone())
        })
    }

    fn new_pool(&self, key: &PoolKey) -> Result<Pool, SendError> {
        let name = ServerName::try_from(key.1.clone()).map_err(|_| SendError::BadName)?;
        let mut config = self.tls.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if key.2 == Protocols::Http1Only {
            let mut http1 = (*config).clone();
            http1.alpn_protocols = vec![b"http/1.1".to_vec()];
            config = Arc::new(http1);
        }
        Ok(Pool {
            last_used: Instant::now(),
            connector: TlsConnector::from(config),
            name,
            http2: Vec::new(),
            idle: Vec::new(),
            http1_only: false,
            spare: None,
            spare_coming: false,
        })
    }

    /// Remembers a new HTTP/2 connection for the requests that follow (HTTP/1.1 ones come back by lease).
    /// It joins the pool's others: it was opened because they were full, or gone.
    fn keep(&self, key: &PoolKey, generation: u64, connection: &Connection) {
        POOLS.with(|pools| {
            let mut pools = pools.borrow_mut();
            if pools.generation != generation {
                return;
            }
            if let Some(pool) = pools.pools.get_mut(key) {
                match connection {
                    Connection::Http2(sender) => {
                        pool.http1_only = false;
                        pool.http2.push(sender.clone());
                    }
                    Connection::Http1(_) => pool.http1_only = key.2 == Protocols::Any,
                }
            }
        });
    }
}

/// HTTP/1.1 requests name their target in origin form and their host in a Host header.
fn to_origin_form(request: &mut Request<ProxyBody>) {
    *request.version_mut() = Version::HTTP_11;
    if let Some(authority) = request.uri().authority() {
        if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
            request.headers_mut().insert(header::HOST, host);
        }
    }
    let origin = request
        .uri()
        .path_and_query()
        .map(|path| Uri::from(path.clone()))
        .unwrap_or_else(|| Uri::from_static("/"));
    *request.uri_mut() = origin;
}

/// Dials a connection for the relay (`http2`) and opens HTTP/2 on it; None if the upstream chose HTTP/1.1
/// (the connection then joins the pool, where a request finds it).
async fn dial_http2(
    destination: SocketAddr,
    connector: TlsConnector,
    name: ServerName<'static>,
) -> Result<Option<RelayConnection>, SendError> {
    let key: PoolKey = (destination, name.to_str().into_owned(), Protocols::Any);
    let tls = dial(destination, connector, name).await?;
    if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
        return match tokio::time::timeout(CONNECT_TIMEOUT, http2::handshake(tls)).await {
            Ok(Ok(connection)) => Ok(Some(connection)),
            Ok(Err(error)) => Err(SendError::Connect(error)),
            Err(_) => Err(SendError::ConnectTimeout),
        };
    }
    let (sender, connection) = http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.with_upgrades().await {
            tracing::debug!(%error, "upstream HTTP/1.1 connection ended");
        }
    });
    let generation = POOLS.with(|pools| pools.borrow().generation);
    Lease {
        key,
        generation,
        sender,
    }
    .release();
    Ok(None)
}

/// `dial_http2`, again after a pause while the upstream refuses connections, for `RECONNECT_FOR` (the
/// client waits meanwhile, as a request of an HTTP/1.1 client would).
async fn dial_http2_reconnecting(
    destination: SocketAddr,
    connector: TlsConnector,
    name: ServerName<'static>,
) -> Result<Option<RelayConnection>, SendError> {
    let mut reconnect = Reconnect::default();
    loop {
        match dial_http2(destination, connector.clone(), name.clone()).await {
            Err(error) if connect_failure(&error) == Failure::NotConnected => {
                match reconnect.pause() {
                    Some(pause) => tokio::time::sleep(pause).await,
                    None => return Err(error),
                }
            }
            dialled => return dialled,
        }
    }
}

/// Keeps a spare connection in order until it is taken (or the pool lets go of it, or `IDLE_TIMEOUT`
/// passes, or the upstream ends it).
async fn hold_spare(
    mut connection: RelayConnection,
    mut take: oneshot::Receiver<oneshot::Sender<RelayConnection>>,
) {
    let taker = tokio::time::timeout(
        IDLE_TIMEOUT,
        poll_fn(|cx| {
            // What the upstream sent meanwhile is read before the connection is handed over: a GOAWAY
            // (an upstream reloading) makes it useless to the client about to take it.
            if let Poll::Ready(error) = connection.poll_idle(cx) {
                tracing::debug!(%error, "spare upstream connection ended");
                return Poll::Ready(None);
            }
            Pin::new(&mut take).poll(cx).map(Result::ok)
        }),
    )
    .await;
    if let Ok(Some(reply)) = taker {
        let _ = reply.send(connection);
    }
}

#[cfg(test)]
mod tests;
