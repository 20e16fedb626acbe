//! The token endpoint client: one HTTPS POST from the daemon's own network namespace, a new connection
//! each time (a fetch every half hour or so gains nothing from pooling), TLS verified for the endpoint's
//! host against the roots the caller gives (the system's and `daemon.upstream_ca`, as for upstreams),
//! HTTP/2 or HTTP/1.1 as ALPN chooses. The whole exchange, name lookup included, has 10 seconds; the
//! response body at most 64 KiB. A failure here is always transient: the endpoint may be back soon.

use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderValue, HOST};
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use zeroize::Zeroizing;

use crate::secrets::exchange::{TokenRequest, TokenResponse};

pub const TIMEOUT: Duration = Duration::from_secs(10);
/// Token responses are a few hundred bytes to a few KiB; more is not a token response.
pub const MAX_BODY: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("looking up {host}: {source}")]
    Resolve {
        host: String,
        source: std::io::Error,
    },
    #[error("{host} has no address")]
    NoAddress { host: String },
    #[error("connecting to {host}: {source}")]
    Connect {
        host: String,
        source: std::io::Error,
    },
    /// A certificate that does not verify lands here too: rustls reports it as an I/O error of the
    /// handshake, with the reason.
    #[error("TLS with {host}: {source}")]
    Tls {
        host: String,
        source: std::io::Error,
    },
    #[error("{host} is not a valid TLS server name")]
    BadName { host: String },
    #[error("HTTP with {host}: {source}")]
    Http { host: String, source: hyper::Error },
    #[error("{host} answered more than {MAX_BODY} bytes")]
    TooLarge { host: String },
    #[error("{host} did not answer within {}s", TIMEOUT.as_secs())]
    Timeout { host: String },
}

/// POSTs `request` and reads the whole response, within `TIMEOUT`.
pub async fn post(
    tls: &Arc<rustls::ClientConfig>,
    request: &TokenRequest,
) -> Result<TokenResponse, ClientError> {
    post_within(tls, request, TIMEOUT).await
}

async fn post_within(
    tls: &Arc<rustls::ClientConfig>,
    request: &TokenRequest,
    timeout: Duration,
) -> Result<TokenResponse, ClientError> {
    let host = request.endpoint.host().to_owned();
    match tokio::time::timeout(timeout, exchange(tls, request)).await {
        Ok(result) => result,
        Err(_) => Err(ClientError::Timeout { host }),
    }
}

async fn exchange(
    tls: &Arc<rustls::ClientConfig>,
    request: &TokenRequest,
) -> Result<TokenResponse, ClientError> {
    let endpoint = &request.endpoint;
    let host = endpoint.host().to_owned();
    let name = ServerName::try_from(host.clone())
        .map_err(|_| ClientError::BadName { host: host.clone() })?;
    let tcp = connect(&host, endpoint.port()).await?;
    let stream = TlsConnector::from(tls.clone())
        .connect(name, tcp)
        .await
        .map_err(|source| ClientError::Tls {
            host: host.clone(),
            source,
        })?;
    let http2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(stream);
    let http = |source| ClientError::Http {
        host: host.clone(),
        source,
    };
    // The connection is driven here, next to the exchange, rather than by a task of its own: it then
    // ends with this function, whatever way it ends.
    if http2 {
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(http)?;
        let exchange = async {
            let response = sender
                .send_request(build(request, endpoint.uri().clone()))
                .await
                .map_err(http)?;
            read(response, &host).await
        };
        drive(exchange, connection).await
    } else {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(http)?;
        let origin = endpoint
            .uri()
            .path_and_query()
            .map_or_else(|| Uri::from_static("/"), |path| Uri::from(path.clone()));
        let mut http1_request = build(request, origin);
        let authority = endpoint
            .uri()
            .authority()
            .map(|a| a.as_str())
            .unwrap_or(&host);
        if let Ok(value) = HeaderValue::from_str(authority) {
            http1_request.headers_mut().insert(HOST, value);
        }
        let exchange = async {
            let response = sender.send_request(http1_request).await.map_err(http)?;
            read(response, &host).await
        };
        drive(exchange, connection).await
    }
}

/// Runs the exchange while polling the connection. A connection that ends first (the server closed it
/// after answering) may still have the response in its buffers: the exchange then goes on alone.
async fn drive<E, C>(exchange: E, connection: C) -> Result<TokenResponse, ClientError>
where
    E: std::future::Future<Output = Result<TokenResponse, ClientError>>,
    C: std::future::Future,
{
    tokio::pin!(exchange, connection);
    tokio::select! {
        biased;
        result = &mut exchange => result,
        _ = &mut connection => exchange.await,
    }
}

/// Tries each address of `host` in turn.
async fn connect(host: &str, port: u16) -> Result<TcpStream, ClientError> {
    let addresses = tokio::net::lookup_host((host, port))
        .await
        .map_err(|source| ClientError::Resolve {
            host: host.to_owned(),
            source,
        })?;
    let mut last = None;
    for address in addresses {
        match TcpStream::connect(address).await {
            Ok(tcp) => {
                let _ = tcp.set_nodelay(true);
                return Ok(tcp);
            }
            Err(error) => last = Some(error),
        }
    }
    Err(match last {
        Some(source) => ClientError::Connect {
            host: host.to_owned(),
            source,
        },
        None => ClientError::NoAddress {
            host: host.to_owned(),
        },
    })
}

fn build(request: &TokenRequest, uri: Uri) -> Request<Full<SecretBuf>> {
    let mut built = Request::new(Full::new(SecretBuf::new(&request.body)));
    *built.method_mut() = http::Method::POST;
    *built.uri_mut() = uri;
    *built.headers_mut() = request.headers.clone();
    built
}

/// Reads the body into zeroed memory, refusing it as soon as it is larger than `MAX_BODY`.
async fn read(response: Response<Incoming>, host: &str) -> Result<TokenResponse, ClientError> {
    let (parts, mut body) = response.into_parts();
    let too_large = || ClientError::TooLarge {
        host: host.to_owned(),
    };
    let declared = body.size_hint().exact().unwrap_or(0);
    if declared > MAX_BODY as u64 {
        return Err(too_large());
    }
    // Sized for the largest body up front: a Vec that grew would leave copies of the token behind.
    let mut bytes = Zeroizing::new(Vec::with_capacity(MAX_BODY));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|source| ClientError::Http {
            host: host.to_owned(),
            source,
        })?;
        if let Ok(data) = frame.into_data() {
            if bytes.len() + data.len() > MAX_BODY {
                return Err(too_large());
            }
            bytes.extend_from_slice(&data);
        }
    }
    Ok(TokenResponse {
        status: parts.status,
        headers: parts.headers,
        body: bytes,
    })
}

/// A request body (credentials, an assertion) that is zeroed when hyper is done with it. hyper and rustls
/// copy it into their own buffers on the way out; this keeps at least the daemon's copy from lingering.
struct SecretBuf {
    bytes: Zeroizing<Vec<u8>>,
    at: usize,
}

impl SecretBuf {
    fn new(bytes: &[u8]) -> SecretBuf {
        SecretBuf {
            bytes: Zeroizing::new(bytes.to_vec()),
            at: 0,
        }
    }
}

impl hyper::body::Buf for SecretBuf {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }

    fn chunk(&self) -> &[u8] {
        &self.bytes[self.at..]
    }

    fn advance(&mut self, count: usize) {
        self.at = (self.at + count).min(self.bytes.len());
    }
}

#[cfg(test)]
mod tests;
