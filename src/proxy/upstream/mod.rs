//! Connections to the real upstream of an intercepted request: TLS to the original destination address and
//! port, verified for the SNI name against the system roots and `daemon.upstream_ca`, ALPN h2/http1.1, and
//! pooled. A pool belongs to exactly one (destination, verified name) pair, so a connection verified for one
//! name never carries a request (and its secret) meant for another.
//!
//! HTTP/2 upstream connections are driven with the h2 crate directly rather than through hyper's client:
//! a request then goes from the client's stream to the upstream's in the task that proxies it, without
//! hyper's dispatch channel and the task it spawns per request.
//!
//! An HTTP/2 client's connection gets an upstream connection of its own instead (`http2_relay` passes its
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

pub mod replay;

use std::cell::RefCell;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll, Waker};
use std::time::{Duration, Instant};

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, Uri, Version};
use http_body_util::combinators::BoxBody;
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::proxy::http2;
use crate::proxy::policy::is_idempotent;
use crate::proxy::upstream::replay::{NotReplayable, Replayable};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ProxyBody = BoxBody<Bytes, BoxError>;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Distinct (destination, name) pools a worker keeps; past this they are all dropped and made anew.
const MAX_POOLS: usize = 4096;
/// Idle HTTP/1.1 connections a pool keeps.
const MAX_IDLE: usize = 64;
/// How often a worker closes the upstream connections that have been idle for `IDLE_TIMEOUT`.
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);
/// HTTP/2 receive windows (those of hyper's client): large enough that one stream's download is not held
/// back by round trips to the upstream.
const HTTP2_CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;
const HTTP2_STREAM_WINDOW: u32 = 2 * 1024 * 1024;
/// The most response-header bytes an HTTP/2 upstream may send (the client side's limit on requests).
const HTTP2_MAX_HEADER_BYTES: u32 = 64 * 1024;
/// How many times a request the upstream did not process may go again: each time on a stream it refused,
/// above a GOAWAY, or on a connection that closed before the request was written.
const MAX_RETRIES: u32 = 4;
/// How long after a first failed attempt to connect (refused, reset in the handshake: an upstream
/// restarting) a request keeps trying, with pauses from `FIRST_PAUSE` doubling up to `LONGEST_PAUSE`.
const RECONNECT_FOR: Duration = Duration::from_secs(3);
const FIRST_PAUSE: Duration = Duration::from_millis(25);
const LONGEST_PAUSE: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("reading {path}: {source}")]
    CaFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("no trusted root certificates: install ca-certificates or set daemon.upstream_ca")]
    NoRoots,
    #[error("building the TLS client: {0}")]
    Tls(#[from] rustls::Error),
}

/// Why a request could not be sent or answered.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("the TLS server name is not a valid DNS name")]
    BadName,
    #[error("connecting")]
    Connect(#[source] std::io::Error),
    #[error("connecting: timed out")]
    ConnectTimeout,
    #[error(transparent)]
    Http(#[from] hyper::Error),
    #[error(transparent)]
    Http2(#[from] h2::Error),
    #[error("the upstream closed the connection before answering, and the request was not sent again: {why}")]
    NotSentAgain {
        why: String,
        #[source]
        source: Box<SendError>,
    },
}

/// What came of sending a request: the response (with the lease on its HTTP/1.1 connection), or why
/// there is none; either way, how many times the request went again.
pub struct Sent {
    pub result: Result<(Response<UpstreamBody>, Option<Lease>), SendError>,
    pub retries: u32,
}

/// Which pooled connections an attempt may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reuse {
    Any,
    /// Not an idle HTTP/1.1 connection.
    Http2,
    /// None: a new connection.
    Nothing,
}

/// How far a failed attempt got, as far as sending the request again goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// The upstream did not process it: it was never written, or went on a stream above a GOAWAY's last
    /// stream id or refused with REFUSED_STREAM (RFC 9113 §8.7). Any request may go again.
    Unprocessed,
    /// No connection could be made (refused, or reset during the handshake): it may go again after a pause.
    NotConnected,
    /// The connection closed before any of the response arrived: the upstream may have processed it, so
    /// only an idempotent request goes again, and once (RFC 9110 §9.2.2).
    Closed,
    /// Anything else (a response began, a certificate or protocol error): never sent again.
    Final,
}

/// The TLS client settings every upstream connection uses.
pub fn client_config(upstream_ca: &[PathBuf]) -> Result<Arc<rustls::ClientConfig>, UpstreamError> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::warn!(%error, "reading the system's root certificates");
    }
    roots.add_parsable_certificates(native.certs);
    for path in upstream_ca {
        let pem = std::fs::read(path).map_err(|source| UpstreamError::CaFile {
            path: path.clone(),
            source,
        })?;
        let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
            .filter_map(Result::ok)
            .collect();
        if certs.is_empty() {
            return Err(UpstreamError::NoCertificate { path: path.clone() });
        }
        roots.add_parsable_certificates(certs);
    }
    if roots.is_empty() {
        return Err(UpstreamError::NoRoots);
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Which protocols an upstream connection may speak. Upgrades (WebSocket) exist only in HTTP/1.1, so a
/// request asking for one goes over a connection that offered nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocols {
    Any,
    Http1Only,
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

/// An HTTP/1.1 connection lent to one request; `release` it when the response has been read to its end.
pub struct Lease {
    key: PoolKey,
    generation: u64,
    sender: http1::SendRequest<ProxyBody>,
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

type PoolKey = (SocketAddr, String, Protocols);

struct Pool {
    last_used: Instant,
    connector: TlsConnector,
    name: ServerName<'static>,
    http2: Vec<Http2Sender>,
    idle: Vec<(http1::SendRequest<ProxyBody>, Instant)>,
    /// The upstream chose HTTP/1.1 when offered h2: HTTP/2 clients are then served without dialling first.
    http1_only: bool,
    /// An HTTP/2 connection dialled ahead for the next HTTP/2 client, and whether one is being dialled.
    spare: Option<Spare>,
    spare_coming: bool,
}

#[derive(Default)]
struct Pools {
    generation: u64,
    pools: HashMap<PoolKey, Pool>,
    sweeping: bool,
}

thread_local! {
    static POOLS: RefCell<Pools> = RefCell::default();
}

enum Checkout {
    Pooled(Connection),
    Connect(TlsConnector, ServerName<'static>),
}

enum Connection {
    Http2(Http2Sender),
    Http1(http1::SendRequest<ProxyBody>),
}

/// A handle on a pooled HTTP/2 upstream connection.
#[derive(Clone)]
struct Http2Sender {
    send: h2::client::SendRequest<Bytes>,
    /// Set by the connection's task when the connection ends.
    closed: Arc<AtomicBool>,
    /// Requests whose responses have not ended yet.
    open: Arc<AtomicUsize>,
}

impl Http2Sender {
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Whether the connection can take no new stream: it ended, or the upstream sent GOAWAY (h2 then
    /// refuses new streams at once, without waiting to be polled).
    fn is_going_away(&mut self) -> bool {
        self.is_closed()
            || matches!(
                self.send
                    .poll_ready(&mut Context::from_waker(Waker::noop())),
                Poll::Ready(Err(_))
            )
    }

    fn is_busy(&self) -> bool {
        self.open.load(Ordering::Relaxed) > 0
    }

    /// Whether the upstream would take one more stream on this connection now.
    fn has_room(&self) -> bool {
        self.open.load(Ordering::Relaxed) < self.send.current_max_send_streams()
    }

    fn claim(&self) -> StreamSlot {
        self.open.fetch_add(1, Ordering::Relaxed);
        StreamSlot(self.open.clone())
    }
}

/// One request's place among its connection's open streams, given back when dropped (the response
/// ended, or failed).
struct StreamSlot(Arc<AtomicUsize>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The body of an upstream's response.
pub enum UpstreamBody {
    Http1(Incoming),
    Http2(Http2Body),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamBody::Http1(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|frame| frame.map(|frame| frame.map_err(BoxError::from))),
            UpstreamBody::Http2(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Http1(body) => body.is_end_stream(),
            UpstreamBody::Http2(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Http1(body) => body.size_hint(),
            UpstreamBody::Http2(body) => body.size_hint(),
        }
    }
}

/// A response body arriving on an HTTP/2 stream: its data, then its trailers if any. Each chunk handed on
/// is given back to the upstream's flow-control window, so the upstream sends no faster than the client
/// reads.
pub struct Http2Body {
    stream: h2::RecvStream,
    data_done: bool,
    length: Option<u64>,
    _slot: StreamSlot,
}

impl Http2Body {
    fn new(stream: h2::RecvStream, headers: &HeaderMap, slot: StreamSlot) -> Self {
        let length = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse().ok());
        Http2Body {
            stream,
            data_done: false,
            length,
            _slot: slot,
        }
    }
}

impl Body for Http2Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if !self.data_done {
            match ready!(self.stream.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = self.stream.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(error)) => return Poll::Ready(Some(Err(error.into()))),
                None => self.data_done = true,
            }
        }
        match ready!(self.stream.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(error) => Poll::Ready(Some(Err(error.into()))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.stream.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.stream.is_end_stream() {
            return SizeHint::with_exact(0);
        }
        match self.length {
            Some(length) if !self.data_done => SizeHint::with_exact(length),
            _ => SizeHint::default(),
        }
    }
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

    /// An upstream connection of its own for an HTTP/2 client (`http2_relay`): the pool's spare, dialled
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

/// Dials the destination and verifies it as `name`.
async fn dial(
    destination: SocketAddr,
    connector: TlsConnector,
    name: ServerName<'static>,
) -> Result<TlsStream<TcpStream>, SendError> {
    let dial = async {
        let tcp = TcpStream::connect(destination).await?;
        let _ = tcp.set_nodelay(true);
        connector.connect(name, tcp).await
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, dial).await {
        Ok(Ok(tls)) => Ok(tls),
        Ok(Err(error)) => Err(SendError::Connect(error)),
        Err(_) => Err(SendError::ConnectTimeout),
    }
}

/// An upstream connection relayed for one HTTP/2 client.
type RelayConnection = http2::Upstream<TlsStream<TcpStream>>;

/// A pool's spare: handing it a sender makes its task send the connection.
type Spare = oneshot::Sender<oneshot::Sender<RelayConnection>>;

/// Dials a connection for `http2_relay` and opens HTTP/2 on it; None if the upstream chose HTTP/1.1
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

/// Dials the destination, verifies it as `name`, and starts the HTTP connection ALPN chose.
async fn connect(
    destination: SocketAddr,
    connector: TlsConnector,
    name: ServerName<'static>,
) -> Result<Connection, SendError> {
    let tls = dial(destination, connector, name).await?;
    let http2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    if http2 {
        let (send, connection) = h2::client::Builder::new()
            // Until the upstream's SETTINGS say otherwise, as hyper assumes.
            .initial_max_send_streams(100)
            .initial_window_size(HTTP2_STREAM_WINDOW)
            .initial_connection_window_size(HTTP2_CONNECTION_WINDOW)
            .max_header_list_size(HTTP2_MAX_HEADER_BYTES)
            .enable_push(false)
            .handshake::<_, Bytes>(tls)
            .await?;
        let closed = Arc::new(AtomicBool::new(false));
        let ended = closed.clone();
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "upstream HTTP/2 connection ended");
            }
            ended.store(true, Ordering::Release);
        });
        Ok(Connection::Http2(Http2Sender {
            send,
            closed,
            open: Arc::new(AtomicUsize::new(0)),
        }))
    } else {
        let (sender, connection) = http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!(%error, "upstream HTTP/1.1 connection ended");
            }
        });
        Ok(Connection::Http1(sender))
    }
}

/// Opens a stream for `request` on an HTTP/2 connection and waits for the response head. The request body,
/// if any, is streamed by a task of its own, since the response may begin before the body ends.
async fn send_http2(
    sender: Http2Sender,
    request: Request<ProxyBody>,
) -> Result<Response<UpstreamBody>, (Failure, h2::Error)> {
    let slot = sender.claim();
    let mut send = sender.send;
    // Until a stream is opened, nothing of the request has gone out: whatever the error, the upstream
    // did not process it (a malformed request fails the same way each time, and retries are counted).
    let unsent = |error| (Failure::Unprocessed, error);
    poll_fn(|cx| send.poll_ready(cx)).await.map_err(unsent)?;
    let (parts, body) = request.into_parts();
    let end_of_stream = body.is_end_stream();
    let (response, stream) = send
        .send_request(Request::from_parts(parts, ()), end_of_stream)
        .map_err(unsent)?;
    if !end_of_stream {
        tokio::spawn(send_body(body, stream));
    }
    match response.await {
        Ok(response) => {
            let (parts, stream) = response.into_parts();
            let body = Http2Body::new(stream, &parts.headers, slot);
            Ok(Response::from_parts(parts, UpstreamBody::Http2(body)))
        }
        Err(error) => Err((http2_failure(&error), error)),
    }
}

/// How far a request on an HTTP/2 stream got, from the error that ended the stream before its response.
fn http2_failure(error: &h2::Error) -> Failure {
    // h2 fails the streams above a GOAWAY's last stream id with the GOAWAY itself, and those at or below
    // it (which the upstream may have processed) with the I/O error that ends the connection.
    let above_goaway = error.is_go_away() && error.is_remote();
    let refused =
        error.is_reset() && error.is_remote() && error.reason() == Some(h2::Reason::REFUSED_STREAM);
    if above_goaway || refused {
        Failure::Unprocessed
    } else if error.is_io() {
        Failure::Closed
    } else {
        Failure::Final
    }
}

/// How far a request on an HTTP/1.1 connection got, from hyper's error for a request it did write (or
/// began to).
fn http1_failure(error: &hyper::Error) -> Failure {
    let io = std::error::Error::source(error)
        .is_some_and(|source| source.downcast_ref::<std::io::Error>().is_some());
    if error.is_incomplete_message() || error.is_canceled() || error.is_closed() || io {
        Failure::Closed
    } else {
        Failure::Final
    }
}

/// Whether a failure to connect came before anything could be sent, and may be over soon (an upstream
/// restarting refuses connections, or resets those it accepted as it stops).
fn connect_failure(error: &SendError) -> Failure {
    use std::io::ErrorKind::*;
    let transient = |error: &std::io::Error| {
        matches!(
            error.kind(),
            ConnectionRefused | ConnectionReset | ConnectionAborted | UnexpectedEof | BrokenPipe
        )
    };
    match error {
        SendError::Connect(error) if transient(error) => Failure::NotConnected,
        SendError::Http2(error) if error.get_io().is_some_and(transient) => Failure::NotConnected,
        _ => Failure::Final,
    }
}

/// Pauses between attempts to connect, for `RECONNECT_FOR` after the first failure.
#[derive(Default)]
struct Reconnect {
    first_failure: Option<Instant>,
    next_pause: Duration,
}

impl Reconnect {
    /// How long to wait before the next attempt; None once `RECONNECT_FOR` has passed.
    fn pause(&mut self) -> Option<Duration> {
        let since = *self.first_failure.get_or_insert_with(Instant::now);
        if since.elapsed() >= RECONNECT_FOR {
            return None;
        }
        let pause = self.next_pause.max(FIRST_PAUSE);
        self.next_pause = (pause * 2).min(LONGEST_PAUSE);
        Some(pause)
    }
}

fn not_sent_again(why: String, error: SendError) -> SendError {
    SendError::NotSentAgain {
        why,
        source: Box::new(error),
    }
}

fn not_replayable(why: NotReplayable, error: SendError) -> SendError {
    not_sent_again(why.to_string(), error)
}

/// Whether an HTTP/1 response ends its connection (RFC 9112 §9.3).
fn closes_after<B>(response: &Response<B>) -> bool {
    let says = |token: &str| {
        response
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|option| option.trim().eq_ignore_ascii_case(token))
    };
    match response.version() {
        Version::HTTP_11 => says("close"),
        _ => !says("keep-alive"),
    }
}

/// Streams a request body onto its HTTP/2 stream. As hyper does: the next chunk is read from the client
/// only once the last one found send window, so a slow upstream slows the upload instead of filling
/// memory; and no window is reserved before a chunk is in hand (two streams could otherwise hold the
/// connection's window against each other). A client's body that fails resets the upstream stream.
async fn send_body(mut body: ProxyBody, mut stream: h2::SendStream<Bytes>) {
    loop {
        let next = poll_fn(|cx| {
            if stream.poll_reset(cx).is_ready() {
                return Poll::Ready(None);
            }
            Pin::new(&mut body).poll_frame(cx).map(Some)
        })
        .await;
        let frame = match next {
            // The upstream reset the stream, or the connection is gone: it wants no more.
            None => return,
            Some(None) => {
                let _ = stream.send_data(Bytes::new(), true);
                return;
            }
            Some(Some(Err(_))) => {
                stream.send_reset(h2::Reason::CANCEL);
                return;
            }
            Some(Some(Ok(frame))) => frame,
        };
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    let _ = stream.send_trailers(trailers);
                    return;
                }
                continue;
            }
        };
        let end_of_stream = body.is_end_stream();
        if !data.is_empty() {
            stream.reserve_capacity(1);
            let has_window = poll_fn(|cx| loop {
                if stream.capacity() > 0 {
                    return Poll::Ready(true);
                }
                match ready!(stream.poll_capacity(cx)) {
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return Poll::Ready(false),
                }
            })
            .await;
            if !has_window {
                return;
            }
        }
        if stream.send_data(data, end_of_stream).is_err() || end_of_stream {
            return;
        }
    }
}

/// Closes this worker's upstream connections that have been idle for `IDLE_TIMEOUT` (dropping the last
/// sender of a connection ends its task once its requests are done).
async fn sweep_forever() {
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

#[cfg(test)]
mod tests;
