//! An upstream connection kept idle (the pool's spare) stays in order, then relays.

use std::time::Duration;

use http::StatusCode;

use super::*;
use crate::proxy::http2::relay;
use crate::proxy::http2::test_support::*;

#[tokio::test]
async fn a_spare_kept_idle_answers_the_upstream_and_then_relays() {
    let records = Records::default();
    let seen = Seen::default();
    let (pong, ponged) = tokio::sync::oneshot::channel();
    let (relay_up, upstream_io) = tokio::io::duplex(64 * 1024);
    tokio::spawn(upstream(upstream_io, seen.clone(), None, Some(pong)));
    let mut spare = handshake(relay_up).await.unwrap();
    let idle = tokio::time::timeout(
        Duration::from_millis(300),
        std::future::poll_fn(|cx| {
            let _ = spare.poll_idle(cx);
            Poll::<()>::Pending
        }),
    );
    let (idled, ponged) = tokio::join!(idle, ponged);
    assert!(idled.is_err(), "still usable after its idle time");
    ponged.expect("the spare answered the upstream's PING");
    assert_eq!(
        spare.unacked, 0,
        "the upstream acknowledged the relay's SETTINGS meanwhile"
    );
    let (client_io, relay_client) = tokio::io::duplex(64 * 1024);
    tokio::spawn(relay(relay_client, spare, scope(&records, authorization())));
    let (mut client, connection) = h2::client::handshake(client_io).await.unwrap();
    tokio::spawn(connection);
    let (response, body, _) = get(&mut client, request("GET", "https://api.test/echo"), None)
        .await
        .unwrap();
    assert_eq!(
        (response.status(), body.as_slice()),
        (StatusCode::OK, &b"ok"[..])
    );
    assert_eq!(seen.lock().unwrap().len(), 1);
}
