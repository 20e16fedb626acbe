//! Why an upstream could not be set up (its TLS roots) or a request could not be sent or answered.

use std::path::PathBuf;

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
