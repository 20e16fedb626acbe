//! The TLS router: every TCP connection a sandbox opens to port 443 arrives here (TPROXY). It peeks the
//! whole ClientHello without consuming it and routes by SNI: a host of one of the profile's integrations is
//! terminated and proxied (`intercept`); any other host is spliced through untouched when the profile allows
//! egress, or lists the host in `allow_hosts`; else refused. Under egress = "deny" either goes only to an
//! address the sandbox's DNS relay gave for that very name (`live::Resolved`). A connection without SNI is
//! never terminated.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};

use crate::audit::{Kind, Record, Verdict};
use crate::config::Integration;
use crate::proxy::clienthello;
use crate::proxy::context::ProxyContext;
use crate::proxy::listener::{self, ActiveConnection};
use crate::proxy::tcp_relay;
use crate::proxy::workers::Workers;
use crate::sandbox::live::Sandbox;

const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn serve(socket: TcpListener, context: Arc<ProxyContext>, workers: Arc<Workers>) {
    listener::accept_loop(socket, context, workers, handle).await
}

enum Route {
    // Boxed: an integration is a few hundred bytes, the other routes a few words.
    Intercept(Box<Integration>),
    Passthrough,
    Deny(String),
}

/// Where a connection to `destination` with this SNI goes for this sandbox.
fn route(sandbox: &Sandbox, destination: SocketAddr, sni: Option<&str>) -> Route {
    let Some(sni) = sni else {
        return if sandbox.egress_allowed() {
            Route::Passthrough
        } else {
            Route::Deny("no TLS server name (SNI), and the profile allows only named hosts".into())
        };
    };
    let intercepted = sandbox
        .integrations
        .iter()
        .find(|integration| integration.hosts.iter().any(|host| host.matches(sni)));
    if !sandbox.egress_allowed() {
        if intercepted.is_none()
            && !sandbox
                .profile
                .allow_hosts
                .iter()
                .any(|host| host.matches(sni))
        {
            return Route::Deny(format!(
                "profile {:?} does not allow {sni}",
                sandbox.profile.name
            ));
        }
        // Anyone can write an allowed name into a ClientHello: the address must be the name's as well.
        // An integration's host too, though its upstream must prove the name: the daemon's own connection
        // to an address of the sandbox's choosing would carry that choice out.
        if !sandbox.resolved.resolves(destination.ip(), sni) {
            return Route::Deny(format!(
                "{} is not an address the sandbox's DNS gave for {sni} (egress = \"deny\" reaches a \
                 host only at the addresses its DNS lookups inside the sandbox returned)",
                destination.ip()
            ));
        }
    }
    match intercepted {
        Some(integration) => Route::Intercept(Box::new(integration.clone())),
        None => Route::Passthrough,
    }
}

async fn handle(context: Arc<ProxyContext>, client: TcpStream, peer: SocketAddr) {
    let Some((sandbox, destination)) = listener::admit(&context, &client, peer) else {
        return;
    };
    let started = Instant::now();
    sandbox.stats.connections.fetch_add(1, Ordering::Relaxed);
    let active = ActiveConnection::enter(&sandbox);
    if let Some(reason) =
        listener::refusal(&context, &sandbox, destination, active.over_limit, false)
    {
        let mut record = Record::new(&sandbox, Kind::TlsPassthrough, destination);
        record.finish(Verdict::Denied, Some(reason), started);
        context.audit.log(record).await;
        listener::reset(client);
        return;
    }
    let hello = tokio::time::timeout(HELLO_TIMEOUT, clienthello::peek(&client)).await;
    let sni = match hello {
        Ok(Ok(hello)) => hello.sni,
        // Not TLS, or too slow: never terminated; relayed only where any traffic may go.
        Ok(Err(error)) => {
            tracing::debug!(id = %sandbox.id, %destination, %error, "no usable ClientHello");
            None
        }
        Err(_) => None,
    };
    match route(&sandbox, destination, sni.as_deref()) {
        Route::Intercept(integration) => {
            // Responses are small writes; Nagle's delay against the client's delayed ACK costs milliseconds.
            let _ = client.set_nodelay(true);
            let sni = sni.unwrap_or_default();
            crate::proxy::intercept::serve(
                context,
                sandbox.clone(),
                client,
                destination,
                sni,
                *integration,
            )
            .await;
        }
        Route::Passthrough => {
            let mut record = Record::new(&sandbox, Kind::TlsPassthrough, destination);
            record.sni = sni.map(Into::into);
            tcp_relay::splice(&context, &sandbox, client, destination, record, started).await;
        }
        Route::Deny(reason) => {
            let mut record = Record::new(&sandbox, Kind::TlsPassthrough, destination);
            record.sni = sni.map(Into::into);
            record.finish(Verdict::Denied, Some(reason), started);
            context.audit.log(record).await;
            listener::reset(client);
        }
    }
}
