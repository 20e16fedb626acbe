//! The plain TCP relay: a connection to any port but 443 that its sandbox may make goes out on a connection
//! the daemon opens itself, and bytes are copied both ways. Connections to port 53 are DNS over TCP, handed
//! to `dns`. The TLS router splices the connections it does not intercept through here too.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};

use crate::audit::{Kind, Record, Verdict};
use crate::proxy::context::ProxyContext;
use crate::proxy::workers::Workers;
use crate::proxy::{dns, listener};
use crate::sandbox::live::Sandbox;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn serve(socket: TcpListener, context: Arc<ProxyContext>, workers: Arc<Workers>) {
    listener::accept_loop(socket, context, workers, relay).await
}

async fn relay(context: Arc<ProxyContext>, client: TcpStream, peer: SocketAddr) {
    let Some((sandbox, destination)) = listener::admit(&context, &client, peer) else {
        return;
    };
    let started = Instant::now();
    sandbox.stats.connections.fetch_add(1, Ordering::Relaxed);
    let active = listener::ActiveConnection::enter(&sandbox);
    // TCP to port 53 is DNS: answered as over UDP, whatever the profile's egress.
    if destination.port() == 53 && !active.over_limit {
        dns::serve_tcp(&context, &sandbox, client, destination).await;
        return;
    }
    let mut record = Record::new(&sandbox, Kind::Tcp, destination);
    // Under egress = "deny", plain TCP carries no name of its own: it may go to an address the sandbox's
    // DNS gave for a host it may reach, and the audit names that host.
    record.host = sandbox.resolved.name_of(destination.ip());
    let check_egress = record.host.is_none();
    if let Some(reason) = listener::refusal(
        &context,
        &sandbox,
        destination,
        active.over_limit,
        check_egress,
    ) {
        deny(&context, client, record, reason, started).await;
        return;
    }
    splice(&context, &sandbox, client, destination, record, started).await;
}

async fn deny(
    context: &ProxyContext,
    client: TcpStream,
    mut record: Record,
    reason: String,
    started: Instant,
) {
    tracing::debug!(sandbox = %record.sandbox, destination = %record.destination, %reason, "connection refused");
    record.finish(Verdict::Denied, Some(reason), started);
    context.audit.log(record).await;
    listener::reset(client);
}

/// Opens the outbound connection and copies bytes both ways until both sides are done.
pub async fn splice(
    context: &ProxyContext,
    sandbox: &Sandbox,
    mut client: TcpStream,
    destination: SocketAddr,
    mut record: Record,
    started: Instant,
) {
    let mut upstream =
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(destination)).await {
            Ok(Ok(upstream)) => upstream,
            Ok(Err(error)) => {
                record.finish(Verdict::Error, Some(format!("connect: {error}")), started);
                context.audit.log(record).await;
                listener::reset(client);
                return;
            }
            Err(_) => {
                record.finish(Verdict::Error, Some("connect: timed out".into()), started);
                context.audit.log(record).await;
                listener::reset(client);
                return;
            }
        };
    let _ = upstream.set_nodelay(true);
    let _ = client.set_nodelay(true);
    let (up, down, error) = match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((up, down)) => (up, down, None),
        Err(error) => (0, 0, Some(error.to_string())),
    };
    sandbox.stats.add_bytes(up, down);
    record.bytes_up = up;
    record.bytes_down = down;
    let verdict = if error.is_some() {
        Verdict::Error
    } else {
        Verdict::Passed
    };
    record.finish(verdict, error, started);
    context.audit.log(record).await;
}
