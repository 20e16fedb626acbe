//! The HTTP proxy for intercepted connections: terminates TLS with a leaf minted from the sandbox's own CA,
//! serves HTTP/1.1 and HTTP/2 (hyper), and forwards each request to the verified upstream with the
//! integration's headers set. It injects nothing when the request's host is not the TLS server name (421),
//! when the upstream's certificate is not valid for that name (502), or for methods that could reflect or
//! smuggle the secret (TRACE, CONNECT, `Upgrade: h2c`). Bodies stream both ways; upgrades (WebSocket) tunnel
//! after the injected handshake. An integration with `aws_sigv4` gets each request signed instead, its body
//! held whole (up to `MAX_SIGNED_BODY`) where the client did not send its hash. Responses are masked on
//! their way back (`redact`): their head, body and trailers, and a tunnel's server-to-client bytes; one in
//! a content coding is refused (502). Every request gets an audit record when its response ends. A request
//! whose integration names minted secrets carries their current tokens (the `policy` decides: 503 when one
//! has none valid), and an upstream's 401 to it has the store fetch a new one.

use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Body, Bytes, Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use zeroize::Zeroizing;

use crate::audit::{Audit, Kind, Record, Verdict};
use crate::config::{AwsSigV4, Integration};
use crate::proxy::context::ProxyContext;
use crate::proxy::http2;
use crate::proxy::policy::{self, sigv4, Values, MAX_HEADER_BYTES};
use crate::proxy::upstream::{BoxError, Lease, Protocols, ProxyBody, RelayUpstream, UpstreamBody};
use crate::proxy::workers::{self, BulkSlot, InFlight, MovableStream};
use crate::redact::messages::{self, Redacted};
use crate::redact::tunnel::{TunnelMasker, Unscannable};
use crate::redact::{Masker, Needles};
use crate::sandbox::live::Sandbox;
use crate::secrets::SecretValue;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Also how long an idle HTTP/1.1 connection may wait for its next request.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Requests whose header list is larger go over an HTTP/1.1 upstream connection of their own rather than
/// the HTTP/2 connection that other clients' requests share: 16 KiB is a common limit of HTTP/2 servers
/// (hyper's, among others), and some answer a list several times theirs by closing the whole connection
/// (GOAWAY), which would fail every request on it.
const SHARED_HEADER_BYTES: usize = 16 * 1024;
const MAX_HTTP2_STREAMS: u32 = 128;
/// An HTTP/2 client connection with no request open for this long is closed (GOAWAY), as the relay does.
const HTTP2_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A response at least this large marks its client connection as one that moves bulk data.
const BULK_RESPONSE_BYTES: u64 = 256 * 1024;
/// The largest body the daemon holds whole to hash for an AWS signature (DESIGN: 16 MiB): a client that
/// sends no `x-amz-content-sha256` with a larger one gets 413.
const MAX_SIGNED_BODY: u64 = 16 * 1024 * 1024;
/// The most a sandbox's requests may hold of such bodies at once: beyond, 503. Without it, one sandbox's
/// slow uploads (4096 connections of 16 MiB) could take the daemon's memory from every other.
const MAX_SIGNING_HELD_PER_SANDBOX: u64 = 64 * 1024 * 1024;
/// What a masked tunnel reads from the upstream at once.
const TUNNEL_READ: usize = 16 * 1024;

/// One intercepted TLS connection: who it belongs to and what it may carry.
struct Intercept {
    /// Each request's audit record starts as a copy of this.
    record: Record,
    audit: Audit,
    context: Arc<ProxyContext>,
    sandbox: Arc<Sandbox>,
    destination: SocketAddr,
    sni: String,
    integration: Integration,
    /// Why the upstream could not be reached when this connection dialled it for itself: every request
    /// gets that answer.
    unreachable: Option<(String, Verdict)>,
    /// Set once a response on this connection is `BULK_RESPONSE_BYTES` or more: its later requests go
    /// over HTTP/1.1 upstream connections, and an HTTP/1.1 connection may move to another worker.
    bulk: Arc<AtomicBool>,
    /// The upgrade the client's HTTP/1.1 connection has been answered 101 for: the tunnel starts when
    /// hyper lets go of the client's stream.
    upgraded: Mutex<Option<Tunnel>>,
    /// Set once a request asked for the connection to end after its response: such a connection is not
    /// moved (it would wait on the other worker for a request that never comes).
    closing: AtomicBool,
    /// HTTP/2 clients only: their requests open now, which tell when the connection is idle.
    open: Option<Arc<OpenRequests>>,
}

/// How many requests an HTTP/2 client connection has open, and since when it has had none. hyper's server
/// closes an HTTP/2 connection only when the client goes, or stops answering pings.
struct OpenRequests {
    count: AtomicUsize,
    idle_since: Mutex<Instant>,
}

/// One open request, from its head until its response ends.
struct OpenRequest(Arc<OpenRequests>);

/// An upgraded connection (WebSocket and the like) once its 101 is on its way: the upstream's side, and
/// what is left to do with it.
struct Tunnel {
    upstream: hyper::upgrade::OnUpgrade,
    end: TunnelEnd,
}

/// What masks the upstream's bytes when its responses are masked, and the audit record of the request
/// that opened the tunnel, written when the tunnel ends (with the bytes each way and what was masked).
struct TunnelEnd {
    masker: Option<TunnelMasker>,
    record: Record,
    started: Instant,
    audit: Audit,
}

impl TunnelEnd {
    /// Writes the audit record of a tunnel that ended, or never began (`error`).
    fn log(mut self, error: Option<String>) {
        if let Some(masker) = &self.masker {
            self.record.redacted += masker.redacted();
        }
        self.record.log_redacted();
        let verdict = if error.is_some() {
            Verdict::Error
        } else {
            Verdict::Injected
        };
        self.record.finish(verdict, error, self.started);
        self.audit.log_now(self.record);
    }
}

impl OpenRequests {
    fn new() -> Arc<OpenRequests> {
        Arc::new(OpenRequests {
            count: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
        })
    }

    fn enter(self: &Arc<Self>) -> OpenRequest {
        self.count.fetch_add(1, Ordering::Relaxed);
        OpenRequest(self.clone())
    }

    /// When the connection will have been idle for `HTTP2_IDLE_TIMEOUT`; None while a request is open.
    fn idle_deadline(&self) -> Option<Instant> {
        if self.count.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let since = *self.idle_since.lock().ok()?;
        Some(since + HTTP2_IDLE_TIMEOUT)
    }
}

impl Drop for OpenRequest {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::Relaxed) == 1 {
            if let Ok(mut since) = self.0.idle_since.lock() {
                *since = Instant::now();
            }
        }
    }
}

/// What the HTTP/2 relay needs of this connection: the integration's headers ready to send (or the
/// reason they cannot be made), and audit records that count the sandbox's bytes as they are written.
fn relay_scope(
    context: &ProxyContext,
    sandbox: &Arc<Sandbox>,
    destination: SocketAddr,
    sni: String,
    integration: &Integration,
) -> http2::Scope {
    let record = connection_record(sandbox, destination, &sni, integration);
    let injection = http2::Injection::new(integration, sandbox.secrets.clone(), &context.minted);
    let redaction = integration.redact.then(|| sandbox.redaction.clone());
    let sandbox = sandbox.clone();
    http2::Scope {
        sni,
        port: destination.port(),
        injection,
        redaction,
        record,
        log: context.audit.polled(),
        counted: Box::new(move |record: &Record| {
            sandbox.stats.add_bytes(record.bytes_up, record.bytes_down);
        }),
    }
}

/// What the audit records of this connection's requests have in common.
fn connection_record(
    sandbox: &Sandbox,
    destination: SocketAddr,
    sni: &str,
    integration: &Integration,
) -> Record {
    let mut record = Record::new(sandbox, Kind::Https, destination);
    record.sni = Some(sni.into());
    record.integration = Some(integration.name.as_str().into());
    record
}

/// Terminates TLS on `client` and serves HTTP on it until the client or the upstream is done.
pub async fn serve(
    context: Arc<ProxyContext>,
    sandbox: Arc<Sandbox>,
    client: TcpStream,
    destination: SocketAddr,
    sni: String,
    integration: Integration,
) {
    let started = Instant::now();
    let acceptor = tokio_rustls::TlsAcceptor::from(sandbox.ca.server_config());
    let handshake = match tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        acceptor.accept(MovableStream::Registered(client)),
    )
    .await
    {
        Ok(Ok(tls)) => Ok(tls),
        // Most often the client does not trust the sandbox's CA (a store of its own, or a pinned key):
        // the operator should see that rather than a connection that never made a request.
        Ok(Err(error)) => Err(format!("TLS handshake with the client failed: {error}")),
        Err(_) => Err(format!(
            "the client did not finish its TLS handshake within {} s",
            HANDSHAKE_TIMEOUT.as_secs()
        )),
    };
    let tls = match handshake {
        Ok(tls) => tls,
        Err(error) => {
            let mut record = connection_record(&sandbox, destination, &sni, &integration);
            record.finish(Verdict::Error, Some(error), started);
            context.audit.log(record).await;
            return;
        }
    };
    // An HTTP/2 client gets an upstream connection of its own, and its frames are relayed; when that
    // cannot be (the upstream speaks only HTTP/1.1, or failed), it is served here. So is one of an
    // integration that signs: the relay adds one header block, made once for the connection, and passes
    // bodies frame by frame, while a signature is made for each request over its own headers and, unless
    // the client sent its hash, its whole body.
    let mut unreachable = None;
    if tls.get_ref().1.alpn_protocol() == Some(b"h2") && integration.aws_sigv4.is_none() {
        // The relay cannot wait for a token: a first one being fetched is waited for here, once (a
        // secret still without one then gets each request answered 503).
        if !integration.minted.is_empty() {
            let _ = policy::tokens(&integration, &context.minted).await;
        }
        match context.upstreams.dial_relay(destination, &sni).await {
            Ok(RelayUpstream::Http2(upstream)) => {
                let scope = relay_scope(&context, &sandbox, destination, sni, &integration);
                http2::relay(tls, *upstream, scope).await;
                return;
            }
            Ok(RelayUpstream::Http1) => {}
            Err(error) => unreachable = Some(describe_upstream_error(&error, &sni, destination)),
        }
    }
    let http2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let open = OpenRequests::new();
    let intercept = Arc::new(Intercept {
        record: connection_record(&sandbox, destination, &sni, &integration),
        audit: context.audit.clone(),
        context,
        sandbox,
        destination,
        sni,
        integration,
        unreachable,
        bulk: Arc::new(AtomicBool::new(false)),
        upgraded: Mutex::new(None),
        closing: AtomicBool::new(false),
        open: http2.then(|| open.clone()),
    });
    if http2 {
        serve_http2(tls, intercept, open).await;
    } else {
        // HTTP/2 over TLS is chosen with ALPN only (RFC 9113, 3.3).
        serve_http1(Prefixed::new(tls), intercept, None).await;
    }
}

type ClientStream = tokio_rustls::server::TlsStream<MovableStream>;

type ServiceFuture = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

fn service(
    intercept: Arc<Intercept>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<ProxyBody>,
    Error = Infallible,
    Future = ServiceFuture,
> + Unpin {
    service_fn(move |request| {
        let intercept = intercept.clone();
        // Boxed: hyper moves the future it gets (into each HTTP/2 stream's task), and this one is
        // kilobytes.
        Box::pin(async move { Ok::<_, Infallible>(intercept.proxy(request).await) })
            as ServiceFuture
    })
}

async fn serve_http2(tls: ClientStream, intercept: Arc<Intercept>, open: Arc<OpenRequests>) {
    let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_HTTP2_STREAMS)
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .serve_connection(TokioIo::new(tls), service(intercept));
    tokio::pin!(connection);
    let served = loop {
        let check = open
            .idle_deadline()
            .unwrap_or_else(|| Instant::now() + HTTP2_IDLE_TIMEOUT);
        tokio::select! {
            served = connection.as_mut() => break served,
            () = tokio::time::sleep_until(check.into()) => {
                if open.idle_deadline().is_some_and(|deadline| deadline <= Instant::now()) {
                    // GOAWAY, then the connection ends; bounded, for a client that reads nothing more.
                    connection.as_mut().graceful_shutdown();
                    break tokio::time::timeout(HANDSHAKE_TIMEOUT, connection.as_mut())
                        .await
                        .unwrap_or(Ok(()));
                }
            }
        }
    };
    if let Err(error) = served {
        tracing::debug!(%error, "intercepted connection ended with an error");
    }
}

/// Serves HTTP/1.1 on `client` until it is done, an upgrade tunnels, or the connection moves: once a
/// response on it is bulk (`Intercept::bulk`), it claims a `BulkSlot`, and if that is on another worker,
/// hyper finishes the response in hand and lets go of the stream, which goes on there with what hyper had
/// read ahead put back in front. The client sees one kept-alive connection throughout.
fn serve_http1(
    client: Prefixed<ClientStream>,
    intercept: Arc<Intercept>,
    slot: Option<BulkSlot>,
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    // Boxed as a `Send` future by name: it is spawned, and spawns itself.
    Box::pin(serve_http1_here(client, intercept, slot))
}

async fn serve_http1_here(
    client: Prefixed<ClientStream>,
    intercept: Arc<Intercept>,
    mut slot: Option<BulkSlot>,
) {
    let mut connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES)
        .serve_connection(TokioIo::new(client), service(intercept.clone()));
    let mut moving = false;
    let mut claimed = slot.is_some();
    let served = poll_fn(|cx| loop {
        let poll = connection.poll_without_shutdown(cx);
        // `proxy` marks a connection bulk when the response's head is ready, and hyper writes that head
        // in the same poll, before this: the head still says keep-alive, and no later response starts here.
        if poll.is_pending()
            && !claimed
            && intercept.bulk.load(Ordering::Relaxed)
            && !intercept.closing.load(Ordering::Relaxed)
        {
            claimed = true;
            slot = workers::claim_bulk();
            moving = slot.as_ref().is_some_and(|slot| !slot.is_here());
            if moving {
                Pin::new(&mut connection).graceful_shutdown();
                continue;
            }
        }
        return poll;
    })
    .await;
    let upgraded = intercept
        .upgraded
        .lock()
        .ok()
        .and_then(|mut upgraded| upgraded.take());
    if let Err(error) = served {
        tracing::debug!(%error, "intercepted connection ended with an error");
        if let Some(tunnel) = upgraded {
            tunnel
                .end
                .log(Some(format!("the client's connection ended: {error}")));
        }
        return;
    }
    let parts = connection.into_parts();
    let mut client = parts.io.into_inner();
    client.unread(parts.read_buf);
    if let Some(upgraded) = upgraded {
        tunnel(client, upgraded).await;
        return;
    }
    match slot {
        Some(slot) if moving => {
            if let Err(error) = client.get_mut().get_mut().0.detach() {
                tracing::debug!(%error, "moving an intercepted connection");
                return;
            }
            // This task stays until the connection ends there: what holds the connection's place in its
            // sandbox's counts is up the stack.
            let (done, ended) = tokio::sync::oneshot::channel::<()>();
            slot.move_there(move |slot| async move {
                match client.get_mut().get_mut().0.attach() {
                    Ok(()) => serve_http1(client, intercept, Some(slot)).await,
                    Err(error) => tracing::debug!(%error, "moving an intercepted connection"),
                }
                drop(done);
            });
            let _ = ended.await;
        }
        _ => {
            // close_notify, as hyper would have sent; bounded, for a client that reads nothing more.
            let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, client.shutdown()).await;
        }
    }
}

/// A client stream with the bytes already read from it (by a hyper connection that let go of it) put back
/// in front.
struct Prefixed<T> {
    unread: Bytes,
    inner: T,
}

impl<T> Prefixed<T> {
    fn new(inner: T) -> Self {
        Prefixed {
            unread: Bytes::new(),
            inner,
        }
    }

    fn unread(&mut self, bytes: Bytes) {
        if self.unread.is_empty() {
            self.unread = bytes;
        } else if !bytes.is_empty() {
            self.unread = [bytes, std::mem::take(&mut self.unread)].concat().into();
        }
    }

    fn get_mut(&mut self) -> &mut T {
        &mut self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.unread.is_empty() {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let n = buf.remaining().min(self.unread.len());
        buf.put_slice(&self.unread.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// One request on its way, from its head until its response ends: what its audit record needs.
struct Exchange {
    record: Record,
    started: Instant,
    /// The request body's bytes, as they are read from the client.
    sent: Arc<AtomicU64>,
    /// What its response is masked with (those in force when it began); `None` when nothing is.
    needles: Option<Arc<Needles>>,
    _in_flight: InFlight,
    _open: Option<OpenRequest>,
    /// The request body held to be signed, counted against the sandbox's limit until the response ends.
    held: Option<HeldForSigning>,
}

/// Request-body bytes one request holds in memory to be hashed for its signature, counted in its
/// sandbox's `Stats::signing_held` while this lives.
struct HeldForSigning {
    sandbox: Arc<Sandbox>,
    bytes: u64,
}

impl HeldForSigning {
    fn new(sandbox: Arc<Sandbox>) -> HeldForSigning {
        HeldForSigning { sandbox, bytes: 0 }
    }

    /// Counts `n` more bytes; false when the sandbox's requests then hold more than they may.
    fn add(&mut self, n: u64) -> bool {
        self.bytes += n;
        let before = self
            .sandbox
            .stats
            .signing_held
            .fetch_add(n, Ordering::Relaxed);
        before + n <= MAX_SIGNING_HELD_PER_SANDBOX
    }
}

impl Drop for HeldForSigning {
    fn drop(&mut self) {
        let held = &self.sandbox.stats.signing_held;
        held.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

impl Intercept {
    async fn proxy(&self, request: Request<Incoming>) -> Response<ProxyBody> {
        let mut exchange = Exchange {
            record: self.record.clone(),
            started: Instant::now(),
            sent: Arc::new(AtomicU64::new(0)),
            needles: self
                .integration
                .redact
                .then(|| self.sandbox.redaction.needles())
                .filter(|needles| !needles.is_empty()),
            _in_flight: InFlight::start(),
            _open: self.open.as_ref().map(OpenRequests::enter),
            held: None,
        };
        exchange.record.method = Some(request.method().to_string());
        exchange.record.path = Some(request.uri().path().to_string());
        let head_bytes = header_list_size(&request);
        let head = policy_head(&request, head_bytes);
        let hosts = || {
            request
                .headers()
                .get_all(header::HOST)
                .iter()
                .map(HeaderValue::as_bytes)
        };
        exchange.record.host = head.host(hosts());
        if let Some(refusal) = head.refusal(hosts(), &self.sni, self.destination.port()) {
            let status = StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::BAD_REQUEST);
            return self
                .answer(exchange, status, Verdict::Denied, refusal.message)
                .await;
        }

        let client_version = request.version();
        let upgrade_requested = is_upgrade(request.headers()) && client_version < Version::HTTP_2;
        if wants_close(client_version, request.headers()) {
            self.closing.store(true, Ordering::Relaxed);
        }
        // The current tokens of the integration's minted secrets: read at once, waited for only while a
        // first one is being fetched; with none valid, the daemon answers and nothing goes upstream.
        let tokens = if self.integration.minted.is_empty() {
            Vec::new()
        } else {
            match policy::tokens(&self.integration, &self.context.minted).await {
                Ok(tokens) => tokens,
                Err(why) => {
                    let refusal = policy::unavailable(&why);
                    let status = StatusCode::from_u16(refusal.status)
                        .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                    return self
                        .answer(exchange, status, Verdict::Error, refusal.message)
                        .await;
                }
            }
        };
        let upstream_request = match self
            .upstream_request(request, upgrade_requested, &mut exchange, &tokens)
            .await
        {
            Ok(request) => request,
            Err((status, verdict, message)) => {
                return self.answer(exchange, status, verdict, message).await
            }
        };

        // Requests of HTTP/1.1 clients too go over HTTP/2 when the upstream offers it: the requests of
        // many client connections then share one upstream connection and its writes (HTTP/1.1 kept-alive
        // req/s at 16 connections: 0.42x -> 0.46x of direct; one connection's p50 latency +10 us). Bulk
        // data is the other way round: HTTP/2's framing and flow control cost the upstream and the daemon
        // more per byte than HTTP/1.1 (1 MiB bodies: 0.40x of direct over HTTP/2, 0.47x over HTTP/1.1),
        // so a client connection that has received a large response gets HTTP/1.1 from then on (and may
        // move to another worker: `serve_http1`).
        // Upgrades exist only in HTTP/1.1.
        let bulk = client_version < Version::HTTP_2 && self.bulk.load(Ordering::Relaxed);
        let protocols = if upgrade_requested || bulk || head_bytes > SHARED_HEADER_BYTES {
            Protocols::Http1Only
        } else {
            Protocols::Any
        };
        if let Some((message, verdict)) = &self.unreachable {
            return self
                .answer(exchange, StatusCode::BAD_GATEWAY, *verdict, message.clone())
                .await;
        }
        let sent_request =
            self.context
                .upstreams
                .send(self.destination, &self.sni, protocols, upstream_request);
        let outcome = sent_request.await;
        exchange.record.retries = outcome.retries;
        match outcome.result {
            Ok((response, lease)) => {
                if response.status() == StatusCode::UNAUTHORIZED && !tokens.is_empty() {
                    policy::rejected(&self.integration, &self.context.minted, &tokens);
                }
                let head_request = exchange.record.method.as_deref() == Some("HEAD");
                let refused = exchange
                    .needles
                    .as_ref()
                    .and_then(|_| messages::unscannable(&response, head_request));
                if let Some(why) = refused {
                    let message = format!("sandbox: {why}");
                    return self
                        .answer(exchange, StatusCode::BAD_GATEWAY, Verdict::Error, message)
                        .await;
                }
                self.respond(response, lease, exchange, upgrade_requested, client_version)
            }
            Err(error) => {
                let (message, verdict) =
                    describe_upstream_error(&error, &self.sni, self.destination);
                exchange.record.bytes_up = exchange.sent.load(Ordering::Relaxed);
                self.answer(exchange, StatusCode::BAD_GATEWAY, verdict, message)
                    .await
            }
        }
    }

    /// The request as it goes upstream: hop-by-hop headers gone, the integration's headers set (and its
    /// signature), an absolute target naming the TLS server name; or the daemon's answer when it cannot
    /// be made.
    async fn upstream_request(
        &self,
        request: Request<Incoming>,
        upgrade_requested: bool,
        exchange: &mut Exchange,
        tokens: &[Arc<SecretValue>],
    ) -> Result<Request<ProxyBody>, (StatusCode, Verdict, String)> {
        let (mut parts, body) = request.into_parts();
        if parts.version < Version::HTTP_2 {
            strip_hop_by_hop(&mut parts.headers, upgrade_requested);
        }
        parts.headers.remove(header::HOST);
        let values = Values {
            integration: &self.integration,
            secrets: &self.sandbox.secrets,
            tokens,
        };
        if let Err(reason) = policy::inject(&mut parts.headers, &self.integration, &values) {
            let message = format!("sandbox: {reason}; see the daemon's log");
            return Err((StatusCode::INTERNAL_SERVER_ERROR, Verdict::Error, message));
        }
        if self.integration.redact {
            // A body the daemon can scan: an upstream that compresses anyway is refused (`proxy`).
            parts.headers.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            );
            // permessage-deflate would compress a WebSocket's frames past scanning.
            parts.headers.remove(header::SEC_WEBSOCKET_EXTENSIONS);
        }
        let authority = if self.destination.port() == 443 {
            self.sni.clone()
        } else {
            format!("{}:{}", self.sni, self.destination.port())
        };
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        parts.uri = Uri::builder()
            .scheme("https")
            .authority(authority)
            .path_and_query(path)
            .build()
            .map_err(|error| {
                let message = format!("sandbox: bad request target: {error}");
                (StatusCode::BAD_REQUEST, Verdict::Denied, message)
            })?;
        let body = Metered::new(body, exchange.sent.clone(), None);
        let body = match &self.integration.aws_sigv4 {
            Some(aws) => self.sign(aws, &values, &mut parts, body, exchange).await?,
            None => body.boxed(),
        };
        Ok(Request::from_parts(parts, body))
    }

    /// Signs a request for an `aws_sigv4` integration, its headers as they leave (hop-by-hop headers gone,
    /// the integration's set, its target and authority the upstream's), and gives the body to send:
    /// the client's as it streams when it sent `x-amz-content-sha256`, else the body read whole and
    /// hashed. What cannot be signed is answered here, before anything is sent.
    async fn sign(
        &self,
        aws: &AwsSigV4,
        values: &Values<'_>,
        parts: &mut http::request::Parts,
        body: Metered<Incoming>,
        exchange: &mut Exchange,
    ) -> Result<ProxyBody, (StatusCode, Verdict, String)> {
        let refused = |refusal: policy::Refusal| {
            let status =
                StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let verdict = if status.is_server_error() {
                Verdict::Error
            } else {
                Verdict::Denied
            };
            (status, verdict, refusal.message)
        };
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let authority = parts.uri.authority().map_or("", |a| a.as_str());
        let signer =
            policy::AwsSigner::new(aws, values, target.as_bytes(), &parts.headers, authority)
                .map_err(refused)?;
        let (payload, body) = match signer.payload() {
            Some(payload) => (payload.clone(), body.boxed()),
            None => self.hold_body(body, &parts.headers, exchange).await?,
        };
        signer
            .sign(
                parts.method.as_str().as_bytes(),
                target.as_bytes(),
                authority,
                &payload,
                &mut parts.headers,
            )
            .map_err(refused)?;
        Ok(body)
    }

    /// A body read whole to be hashed (a request without `x-amz-content-sha256`): its hash, and the body
    /// to send, with its trailers if it had any. Over `MAX_SIGNED_BODY`: 413; over what the sandbox's
    /// requests may hold at once: 503.
    async fn hold_body(
        &self,
        mut body: Metered<Incoming>,
        headers: &HeaderMap,
        exchange: &mut Exchange,
    ) -> Result<(sigv4::PayloadHash, ProxyBody), (StatusCode, Verdict, String)> {
        let too_large = || {
            let message = format!(
                "sandbox: a request body over {} MiB without x-amz-content-sha256 cannot be signed (the \
                 daemon holds a body whole to hash it); send its SHA-256 in x-amz-content-sha256, or \
                 UNSIGNED-PAYLOAD where the service takes it (S3)",
                MAX_SIGNED_BODY >> 20
            );
            (StatusCode::PAYLOAD_TOO_LARGE, Verdict::Denied, message)
        };
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|length| length.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|length| length > MAX_SIGNED_BODY) {
            return Err(too_large());
        }
        let held = exchange
            .held
            .insert(HeldForSigning::new(self.sandbox.clone()));
        let mut data = Vec::with_capacity(declared.map_or(0, |length| length as usize));
        let mut trailers = None;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|error| {
                let message = format!("sandbox: the request body could not be read: {error}");
                (StatusCode::BAD_REQUEST, Verdict::Error, message)
            })?;
            let frame = match frame.into_data() {
                Ok(chunk) => {
                    if data.len() as u64 + chunk.len() as u64 > MAX_SIGNED_BODY {
                        return Err(too_large());
                    }
                    if !held.add(chunk.len() as u64) {
                        let message = format!(
                            "sandbox: this sandbox's requests already hold {} MiB of bodies the daemon \
                             reads whole to sign; send fewer at once, or send x-amz-content-sha256 so \
                             that the body streams",
                            MAX_SIGNING_HELD_PER_SANDBOX >> 20
                        );
                        return Err((StatusCode::SERVICE_UNAVAILABLE, Verdict::Denied, message));
                    }
                    data.extend_from_slice(&chunk);
                    continue;
                }
                Err(frame) => frame,
            };
            if let Ok(fields) = frame.into_trailers() {
                trailers = Some(fields);
            }
        }
        let hash = sigv4::PayloadHash::of_body(&data);
        let data = Bytes::from(data);
        let body = match trailers {
            // A known length: an HTTP/1.1 upstream gets Content-Length rather than chunks.
            None => Full::new(data)
                .map_err(|never: Infallible| match never {})
                .boxed(),
            Some(trailers) => {
                let frames = [Frame::data(data), Frame::trailers(trailers)].map(Ok);
                StreamBody::new(futures::stream::iter(frames)).boxed()
            }
        };
        Ok((hash, body))
    }

    /// The daemon's own answer to a request, and its audit record.
    async fn answer(
        &self,
        mut exchange: Exchange,
        status: StatusCode,
        verdict: Verdict,
        message: String,
    ) -> Response<ProxyBody> {
        exchange.record.status = Some(status.as_u16());
        let response = text(status, &message);
        exchange
            .record
            .finish(verdict, Some(message), exchange.started);
        self.audit.log(exchange.record).await;
        response
    }

    /// The upstream's response on its way to the client; its audit record is written when it ends.
    fn respond(
        &self,
        mut response: Response<UpstreamBody>,
        mut lease: Option<Lease>,
        exchange: Exchange,
        upgrade_requested: bool,
        client_version: Version,
    ) -> Response<ProxyBody> {
        let Exchange {
            mut record,
            started,
            sent,
            needles,
            _in_flight,
            _open,
            held,
        } = exchange;
        record.status = Some(response.status().as_u16());
        let masked_in_head = needles.as_ref().map_or(0, |needles| {
            messages::mask_headers(response.headers_mut(), needles)
                + messages::mask_reason(&mut response, needles)
        });
        let mut tunnelled = false;
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            // The connection now belongs to the tunnel.
            lease = None;
            if upgrade_requested {
                tunnelled = true;
                let websocket = response
                    .headers()
                    .get(header::UPGRADE)
                    .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"websocket"));
                let mut record = record.clone();
                record.redacted = masked_in_head;
                let tunnel = Tunnel {
                    upstream: hyper::upgrade::on(&mut response),
                    end: TunnelEnd {
                        masker: needles
                            .as_ref()
                            .map(|needles| TunnelMasker::new(needles.clone(), websocket)),
                        record,
                        started,
                        audit: self.audit.clone(),
                    },
                };
                if let Ok(mut upgraded) = self.upgraded.lock() {
                    *upgraded = Some(tunnel);
                }
            }
        } else if response.version() < Version::HTTP_2 {
            strip_hop_by_hop(response.headers_mut(), false);
        }
        let declared = response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|length| length.to_str().ok()?.parse::<u64>().ok());
        if client_version < Version::HTTP_2
            && declared.is_some_and(|length| length >= BULK_RESPONSE_BYTES)
        {
            self.bulk.store(true, Ordering::Relaxed);
        }
        let sandbox = self.sandbox.clone();
        let audit = self.audit.clone();
        let (parts, body) = response.into_parts();
        let received = Arc::new(AtomicU64::new(0));
        let masked_in_body = Arc::new(AtomicU64::new(0));
        let finished = {
            let received = received.clone();
            let masked_in_body = masked_in_body.clone();
            let bulk = self.bulk.clone();
            move |error: Option<String>| {
                drop(_in_flight);
                drop(_open);
                drop(held);
                if tunnelled {
                    // Its record is written when the tunnel ends (`tunnel`).
                    return;
                }
                record.bytes_up = sent.load(Ordering::Relaxed);
                record.bytes_down = received.load(Ordering::Relaxed);
                record.redacted = masked_in_head + masked_in_body.load(Ordering::Relaxed);
                record.log_redacted();
                if record.bytes_down >= BULK_RESPONSE_BYTES {
                    bulk.store(true, Ordering::Relaxed);
                }
                sandbox.stats.add_bytes(record.bytes_up, record.bytes_down);
                let verdict = if error.is_some() {
                    Verdict::Error
                } else {
                    if let Some(lease) = lease {
                        lease.release();
                    }
                    Verdict::Injected
                };
                record.finish(verdict, error, started);
                audit.log_now(record);
            }
        };
        let finished: OnEnd = Box::new(finished);
        let body = match needles {
            Some(needles) => {
                let body = Redacted::new(body, Masker::new(needles), masked_in_body);
                Metered::new(body, received, Some(finished)).boxed()
            }
            None => Metered::new(body, received, Some(finished)).boxed(),
        };
        Response::from_parts(parts, body)
    }
}

/// What the request policy reads of a request's head.
fn policy_head<B>(request: &Request<B>, head_bytes: usize) -> policy::Head<'_> {
    let headers = request.headers();
    let h2c = headers.get_all(header::UPGRADE).iter().any(|value| {
        value
            .to_str()
            .is_ok_and(|v| v.to_ascii_lowercase().contains("h2c"))
    });
    policy::Head {
        method: request.method().as_str().as_bytes(),
        authority: request.uri().authority().map(|a| a.as_str().as_bytes()),
        tunnel: false,
        h2c: h2c || headers.contains_key("http2-settings"),
        // hyper's HTTP/1.1 limit is on its read buffer, which one read may overshoot.
        too_large: head_bytes > MAX_HEADER_BYTES,
    }
}

/// The size of a request's header list as HTTP/2 counts it (RFC 9113, 6.5.2), pseudo-fields included.
fn header_list_size<B>(request: &Request<B>) -> usize {
    let fields: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 32)
        .sum();
    let target = request
        .uri()
        .path_and_query()
        .map_or(1, |p| p.as_str().len());
    let authority = request.uri().authority().map_or(0, |a| a.as_str().len());
    fields + request.method().as_str().len() + target + authority + 4 * 32
}

/// Whether an HTTP/1 request asks for its connection to end after the response.
fn wants_close(version: Version, headers: &HeaderMap) -> bool {
    let says = |token: &str| {
        headers.get_all(header::CONNECTION).iter().any(|value| {
            value
                .to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    match version {
        Version::HTTP_10 | Version::HTTP_09 => !says("keep-alive"),
        Version::HTTP_11 => says("close"),
        _ => false,
    }
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers.get_all(header::CONNECTION).iter().any(|value| {
            value
                .to_str()
                .is_ok_and(|v| v.to_ascii_lowercase().contains("upgrade"))
        })
}

/// Removes the connection-specific headers of an HTTP/1 message, which must not cross a proxy. (HTTP/2
/// forbids them: hyper refuses a message that has them.)
fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    const ALWAYS: [HeaderName; 4] = [
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::TRANSFER_ENCODING,
        header::TE,
    ];
    // TE belongs to this hop, but "trailers" holds for the next one too (trailers pass through), and
    // HTTP/2 servers such as gRPC's want it: the one TE value HTTP/2 allows.
    let trailers = headers.get_all(header::TE).iter().any(|value| {
        value.to_str().is_ok_and(|value| {
            value.split(',').any(|coding| {
                let name = coding.split(';').next().unwrap_or_default();
                name.trim().eq_ignore_ascii_case("trailers")
            })
        })
    });
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        if !(keep_upgrade && name == header::UPGRADE) {
            headers.remove(name);
        }
    }
    for name in ALWAYS {
        headers.remove(name);
    }
    if !keep_upgrade {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Copies bytes both ways between the client's stream and the upgraded upstream connection (WebSocket
/// and the like), the upstream's through the tunnel's masker when its responses are masked; then writes
/// its audit record.
async fn tunnel(client: Prefixed<ClientStream>, tunnel: Tunnel) {
    let Tunnel { upstream, mut end } = tunnel;
    let ended = match upstream.await {
        Ok(upstream) => copy_tunnel(client, TokioIo::new(upstream), end.masker.as_mut()).await,
        Err(error) => Err(std::io::Error::other(error)),
    };
    let error = match ended {
        Ok((up, down)) => {
            end.record.bytes_up = up;
            end.record.bytes_down = down;
            None
        }
        Err(error) => {
            if let Some(why) = error
                .get_ref()
                .and_then(|e| e.downcast_ref::<Unscannable>())
            {
                tracing::warn!(
                    sandbox = %end.record.sandbox,
                    host = end.record.host.as_deref().unwrap_or("-"),
                    path = end.record.path.as_deref().unwrap_or("-"),
                    "a tunnel was cut: {why}"
                );
            }
            Some(format!("the tunnel ended: {error}"))
        }
    };
    end.log(error);
}

/// The bytes of a tunnel each way until both ends are done: (client to upstream, upstream to client).
async fn copy_tunnel<U: AsyncRead + AsyncWrite + Unpin>(
    mut client: Prefixed<ClientStream>,
    mut upstream: U,
    masker: Option<&mut TunnelMasker>,
) -> std::io::Result<(u64, u64)> {
    let Some(masker) = masker else {
        return tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    };
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut upstream_read, mut upstream_write) = tokio::io::split(upstream);
    let up = async {
        let sent = tokio::io::copy(&mut client_read, &mut upstream_write).await?;
        upstream_write.shutdown().await?;
        Ok::<u64, std::io::Error>(sent)
    };
    let down = async {
        let mut read = Zeroizing::new(vec![0u8; TUNNEL_READ]);
        let mut out = Vec::with_capacity(TUNNEL_READ);
        let mut received = 0u64;
        loop {
            out.clear();
            let n = upstream_read.read(&mut read).await?;
            if n == 0 {
                masker.finish(&mut out);
                client_write.write_all(&out).await?;
                client_write.shutdown().await?;
                return Ok::<u64, std::io::Error>(received);
            }
            received += n as u64;
            masker
                .push(&read[..n], &mut out)
                .map_err(std::io::Error::other)?;
            client_write.write_all(&out).await?;
            client_write.flush().await?;
        }
    };
    tokio::try_join!(up, down)
}

fn describe_upstream_error(
    error: &(dyn std::error::Error + 'static),
    sni: &str,
    destination: SocketAddr,
) -> (String, Verdict) {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        if let Some(tls) = current.downcast_ref::<rustls::Error>() {
            if matches!(tls, rustls::Error::InvalidCertificate(_)) {
                return (
                    format!("sandbox: the server at {destination} has no valid certificate for {sni} ({tls}); nothing was sent to it"),
                    Verdict::Denied,
                );
            }
        }
        if let Some(io) = current.downcast_ref::<std::io::Error>() {
            if let Some(tls) = io
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            {
                if matches!(tls, rustls::Error::InvalidCertificate(_)) {
                    return (
                        format!("sandbox: the server at {destination} has no valid certificate for {sni} ({tls}); nothing was sent to it"),
                        Verdict::Denied,
                    );
                }
            }
        }
        source = current.source();
    }
    let detail = std::iter::successors(Some(error as &dyn std::error::Error), |e| e.source())
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(": ");
    (
        format!("sandbox: upstream {sni} at {destination} failed: {detail}"),
        Verdict::Error,
    )
}

fn text(status: StatusCode, message: &str) -> Response<ProxyBody> {
    let mut response = Response::new(
        Full::new(Bytes::from(format!("{message}\n")))
            .map_err(|never: Infallible| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

type OnEnd = Box<dyn FnOnce(Option<String>) + Send + Sync>;

/// A body that counts the bytes passing through and reports once when it ends (or is dropped early).
struct Metered<B> {
    inner: B,
    bytes: Arc<AtomicU64>,
    on_end: Option<OnEnd>,
}

impl<B: Body> Metered<B> {
    fn new(inner: B, bytes: Arc<AtomicU64>, mut on_end: Option<OnEnd>) -> Self {
        // hyper never polls a body that is over before it begins (an empty response, a HEAD's): it
        // ends here, rather than as one dropped unread.
        if is_over(&inner) {
            if let Some(on_end) = on_end.take() {
                on_end(None);
            }
        }
        Metered {
            inner,
            bytes,
            on_end,
        }
    }
}

/// Whether nothing more of `body` will be read: it says it ended, or its declared length is reached
/// (hyper stops polling there, while an HTTP/2 upstream may send its END_STREAM in a frame of its own).
fn is_over(body: &impl Body) -> bool {
    body.is_end_stream() || body.size_hint().exact() == Some(0)
}

impl<B> Body for Metered<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner)
            .poll_frame(cx)
            .map(|frame| frame.map(|frame| frame.map_err(Into::into)));
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                if is_over(&self.inner) {
                    if let Some(on_end) = self.on_end.take() {
                        on_end(None);
                    }
                }
            }
            Poll::Ready(Some(Err(error))) => {
                let message = error.to_string();
                if let Some(on_end) = self.on_end.take() {
                    on_end(Some(message));
                }
            }
            Poll::Ready(None) => {
                if let Some(on_end) = self.on_end.take() {
                    on_end(None);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for Metered<B> {
    fn drop(&mut self) {
        if let Some(on_end) = self.on_end.take() {
            on_end(Some("the response was not read to its end".into()));
        }
    }
}

#[cfg(test)]
mod tests;
