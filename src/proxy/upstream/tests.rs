use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::time::Duration;

use super::body::ProxyBody;
use super::connect::Connection;
use super::pool::{Checkout, Lease, PoolKey, Protocols, POOLS};
use super::retry::{closes_after, Reconnect, Reuse, RECONNECT_FOR};
use super::streams::Http2Sender;
use super::*;

#[test]
fn reconnecting_pauses_double_up_to_a_ceiling_and_stop_after_a_while() {
    let mut reconnect = Reconnect::default();
    let pauses: Vec<Duration> = (0..7).map_while(|_| reconnect.pause()).collect();
    assert_eq!(
        pauses,
        [25, 50, 100, 200, 400, 500, 500].map(Duration::from_millis)
    );
    reconnect.first_failure = Some(Instant::now() - RECONNECT_FOR);
    assert_eq!(reconnect.pause(), None);
}

#[test]
fn a_response_that_ends_its_connection_is_told_apart() {
    let response = |version: Version, connection: Option<&str>| {
        let mut builder = Response::builder().version(version);
        if let Some(value) = connection {
            builder = builder.header(header::CONNECTION, value);
        }
        builder.body(()).unwrap()
    };
    let closes = |r: Response<()>| closes_after(&r);
    assert!(!closes(response(Version::HTTP_11, None)));
    assert!(closes(response(Version::HTTP_11, Some("close"))));
    assert!(closes(response(
        Version::HTTP_11,
        Some("Keep-Alive, Close")
    )));
    assert!(!closes(response(Version::HTTP_11, Some("keep-alive"))));
    assert!(closes(response(Version::HTTP_10, None)));
    assert!(!closes(response(Version::HTTP_10, Some("keep-alive"))));
}

/// Pool keys each of which differs from the first in one part: address, port, address family, verified
/// name, protocols. Loopback addresses, though nothing is dialled: the connections are in-memory pipes.
fn keys() -> [PoolKey; 6] {
    let key = |destination: &str, name: &str, protocols| -> PoolKey {
        (destination.parse().unwrap(), name.to_string(), protocols)
    };
    [
        key("127.0.0.1:443", "api.test", Protocols::Any),
        key("127.0.0.2:443", "api.test", Protocols::Any),
        key("127.0.0.1:8443", "api.test", Protocols::Any),
        key("[::1]:443", "api.test", Protocols::Any),
        key("127.0.0.1:443", "other.test", Protocols::Any),
        key("127.0.0.1:443", "api.test", Protocols::Http1Only),
    ]
}

fn upstreams() -> Upstreams {
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Upstreams::new(Arc::new(config))
}

/// What a checkout gave.
#[derive(Debug, PartialEq, Eq)]
enum Got {
    Http1,
    Http2,
    /// Nothing pooled: a new connection, to be verified as `name`, offering `alpn`.
    Connect {
        name: String,
        alpn: Vec<Vec<u8>>,
    },
}

fn checkout(upstreams: &Upstreams, key: &PoolKey) -> Got {
    match upstreams.checkout(key, 0, Reuse::Any) {
        Ok(Checkout::Pooled(Connection::Http1(_))) => Got::Http1,
        Ok(Checkout::Pooled(Connection::Http2(_))) => Got::Http2,
        Ok(Checkout::Connect(connector, name)) => Got::Connect {
            name: name.to_str().into_owned(),
            alpn: connector.config().alpn_protocols.clone(),
        },
        Err(error) => panic!("checkout of {key:?}: {error}"),
    }
}

/// The new connection `key`'s pool makes when it has none to give.
fn new_connection(key: &PoolKey) -> Got {
    let alpn: &[&[u8]] = match key.2 {
        Protocols::Any => &[b"h2", b"http/1.1"],
        Protocols::Http1Only => &[b"http/1.1"],
    };
    Got::Connect {
        name: key.1.clone(),
        alpn: alpn.iter().map(|protocol| protocol.to_vec()).collect(),
    }
}

/// The pools live in a thread local, which a test run with one thread shares between tests.
fn forget_pools() {
    POOLS.with(|pools| pools.borrow_mut().pools.clear());
}

/// An HTTP/1.1 connection ready for a request, over an in-memory pipe whose other end is returned: the
/// connection stays open while it is kept.
async fn http1_connection() -> (http1::SendRequest<ProxyBody>, tokio::io::DuplexStream) {
    let (ours, theirs) = tokio::io::duplex(4096);
    let (mut sender, connection) = http1::handshake(TokioIo::new(ours)).await.unwrap();
    tokio::spawn(connection);
    sender.ready().await.unwrap();
    (sender, theirs)
}

/// An HTTP/2 connection to an in-memory server that accepts streams and never answers.
async fn http2_connection() -> Http2Sender {
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        let mut server = h2::server::handshake(theirs).await.unwrap();
        while server.accept().await.is_some() {}
    });
    let (send, connection) = h2::client::handshake(ours).await.unwrap();
    tokio::spawn(connection);
    Http2Sender {
        send,
        closed: Arc::new(AtomicBool::new(false)),
        open: Arc::new(AtomicUsize::new(0)),
    }
}

#[tokio::test]
async fn a_new_connection_is_verified_for_its_pools_name_and_offers_only_its_protocols() {
    forget_pools();
    let upstreams = upstreams();
    let [any, .., http1_only] = keys();
    assert_eq!(
        checkout(&upstreams, &any),
        Got::Connect {
            name: "api.test".into(),
            alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        }
    );
    // Upgrades exist only in HTTP/1.1: such a request must not land on a connection that chose h2.
    assert_eq!(
        checkout(&upstreams, &http1_only),
        Got::Connect {
            name: "api.test".into(),
            alpn: vec![b"http/1.1".to_vec()]
        }
    );
}

/// A connection verified for one name must never carry a request (and its secret) meant for another, nor
/// stand for another destination than the one it was made to; and the Any and Http1Only pools stay apart
/// (an Any pool's connections may speak h2, which has no upgrades).
#[tokio::test]
async fn an_idle_http1_connection_serves_only_its_own_destination_name_and_protocols() {
    forget_pools();
    let upstreams = upstreams();
    let keys = keys();
    for key in &keys {
        assert_eq!(checkout(&upstreams, key), new_connection(key));
    }
    for pooled in &keys {
        let (sender, _upstream) = http1_connection().await;
        Lease {
            key: pooled.clone(),
            generation: 0,
            sender,
        }
        .release();
        for other in keys.iter().filter(|key| *key != pooled) {
            assert_eq!(
                checkout(&upstreams, other),
                new_connection(other),
                "{pooled:?}'s connection offered for {other:?}"
            );
        }
        assert_eq!(checkout(&upstreams, pooled), Got::Http1);
        // It is lent to one request at a time.
        assert_eq!(checkout(&upstreams, pooled), new_connection(pooled));
    }
}

#[tokio::test]
async fn an_http2_connection_serves_only_its_own_destination_name_and_protocols() {
    let upstreams = upstreams();
    let keys = keys();
    for pooled in &keys {
        forget_pools();
        assert_eq!(checkout(&upstreams, pooled), new_connection(pooled));
        let connection = Connection::Http2(http2_connection().await);
        upstreams.keep(pooled, 0, &connection);
        for other in keys.iter().filter(|key| *key != pooled) {
            assert_eq!(
                checkout(&upstreams, other),
                new_connection(other),
                "{pooled:?}'s connection offered for {other:?}"
            );
        }
        // It carries the requests of its own pool side by side.
        assert_eq!(checkout(&upstreams, pooled), Got::Http2);
        assert_eq!(checkout(&upstreams, pooled), Got::Http2);
    }
}
