//! New upstream connections: TCP to the original destination, TLS verified for the SNI name against the
//! system roots and `daemon.upstream_ca`, then HTTP/2 or HTTP/1.1 as ALPN chose.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::proxy::http2;

use super::body::ProxyBody;
use super::error::{SendError, UpstreamError};
use super::streams::Http2Sender;

pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// HTTP/2 receive windows (those of hyper's client): large enough that one stream's download is not held
/// back by round trips to the upstream.
pub(super) const HTTP2_CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;

pub(super) const HTTP2_STREAM_WINDOW: u32 = 2 * 1024 * 1024;

/// The most response-header bytes an HTTP/2 upstream may send (the client side's limit on requests).
pub(super) const HTTP2_MAX_HEADER_BYTES: u32 = 64 * 1024;

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

pub(super) enum Connection {
    Http2(Http2Sender),
    Http1(http1::SendRequest<ProxyBody>),
}

/// Dials the destination and verifies it as `name`.
pub(super) async fn dial(
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
pub(super) type RelayConnection = http2::Upstream<TlsStream<TcpStream>>;

/// A pool's spare: handing it a sender makes its task send the connection.
pub(super) type Spare = oneshot::Sender<oneshot::Sender<RelayConnection>>;

/// Dials the destination, verifies it as `name`, and starts the HTTP connection ALPN chose.
pub(super) async fn connect(
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
