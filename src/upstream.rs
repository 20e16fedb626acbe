//! Connections to the real upstream of an intercepted request: TLS to the original destination address and
//! port, verified for the SNI name against the system roots and `daemon.upstream_ca`, ALPN h2/http1.1, and
//! pooled. A pool belongs to exactly one (destination, verified name) pair, so a connection verified for one
//! name never carries a request (and its secret) meant for another.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::combinators::BoxBody;
use hyper::body::Bytes;
use hyper::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Distinct (destination, name) pools kept; the least recently made go first past this.
const MAX_POOLS: usize = 4096;

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

/// Dials one fixed destination and verifies one fixed name, whatever the request URI says.
#[derive(Clone)]
pub struct Connector {
    destination: SocketAddr,
    name: ServerName<'static>,
    tls: TlsConnector,
}

pub struct Stream(TokioIo<TlsStream<TcpStream>>);

impl Connection for Stream {
    fn connected(&self) -> Connected {
        let (_, session) = self.0.inner().get_ref();
        if session.alpn_protocol() == Some(b"h2") {
            Connected::new().negotiated_h2()
        } else {
            Connected::new()
        }
    }
}

impl hyper::rt::Read for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl tower_service::Service<Uri> for Connector {
    type Response = Stream;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Stream>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let connector = self.clone();
        Box::pin(async move {
            let connect = async {
                let tcp = TcpStream::connect(connector.destination).await?;
                let _ = tcp.set_nodelay(true);
                connector.tls.connect(connector.name.clone(), tcp).await
            };
            let tls = tokio::time::timeout(CONNECT_TIMEOUT, connect)
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "connecting timed out")
                })??;
            Ok(Stream(TokioIo::new(tls)))
        })
    }
}

pub type Pool = Client<Connector, ProxyBody>;

/// Which protocols an upstream connection may speak. Upgrades (WebSocket) exist only in HTTP/1.1, so a
/// request asking for one goes over a connection that offered nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocols {
    Any,
    Http1Only,
}

/// A pool's identity: its destination and verified name, what its connections may speak, and the worker
/// whose thread runs them (a connection used from another thread would cost a cross-thread wakeup per
/// request).
type PoolKey = (SocketAddr, String, Protocols, Option<usize>);

/// The pools of all upstreams, shared by every sandbox (keyed by destination and verified name only).
pub struct Upstreams {
    tls: Mutex<Arc<rustls::ClientConfig>>,
    pools: Mutex<HashMap<PoolKey, Pool>>,
}

impl Upstreams {
    pub fn new(config: Arc<rustls::ClientConfig>) -> Self {
        Upstreams {
            tls: Mutex::new(config),
            pools: Mutex::default(),
        }
    }

    /// New roots (config reload): existing pools drain, new connections use the new roots.
    pub fn set_config(&self, config: Arc<rustls::ClientConfig>) {
        *self.tls.lock().unwrap_or_else(|e| e.into_inner()) = config;
        self.pools.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    pub fn pool(&self, destination: SocketAddr, name: &str, protocols: Protocols) -> Option<Pool> {
        let server_name = ServerName::try_from(name.to_string()).ok()?;
        let key = (
            destination,
            name.to_string(),
            protocols,
            crate::workers::current(),
        );
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pool) = pools.get(&key) {
            return Some(pool.clone());
        }
        if pools.len() >= MAX_POOLS {
            pools.clear();
        }
        let mut config = self.tls.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if protocols == Protocols::Http1Only {
            let mut http1 = (*config).clone();
            http1.alpn_protocols = vec![b"http/1.1".to_vec()];
            config = Arc::new(http1);
        }
        let connector = Connector {
            destination,
            name: server_name,
            tls: TlsConnector::from(config),
        };
        let pool = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(IDLE_TIMEOUT)
            .build(connector);
        pools.insert(key, pool.clone());
        Some(pool)
    }
}
