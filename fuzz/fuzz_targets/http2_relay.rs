//! Fuzzes `sandbox::http2_relay` whole: a client that has sent a valid preface and SETTINGS then sends
//! arbitrary bytes, and an upstream that has sent its SETTINGS then sends arbitrary bytes, both over
//! in-memory pipes. The relay must end (it does when the client's side closes) without panicking, it
//! must then close the client's side, and nothing it wrote to the client may hold the secret it adds to
//! requests.
//!
//! Input: a byte `n`, then `n * 4` bytes (at most the rest) for the client, the rest for the upstream.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use sandbox::audit::{Kind, Record, Verdict};
use sandbox::hpack::encode_field;
use sandbox::http2_relay::{handshake, relay, Injected, Scope};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zeroize::Zeroizing;

const SECRET: &[u8] = b"Bearer fuzz-secret-5f1c0e9a7d3b";
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame.
const SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
    })
}

fn scope() -> Scope {
    let mut block = Zeroizing::new(Vec::new());
    encode_field(b"authorization", SECRET, true, &mut block);
    Scope {
        sni: "api.test".into(),
        port: 443,
        injected: Ok(Injected {
            names: vec!["authorization".into()],
            block,
        }),
        record: Record {
            time: String::new(),
            sandbox: "fuzz".into(),
            uid: 1000,
            profile: "default".into(),
            kind: Kind::Https,
            destination: "10.0.0.3:443".into(),
            sni: Some("api.test".into()),
            method: None,
            host: None,
            path: None,
            status: None,
            integration: Some("api".into()),
            bytes_up: 0,
            bytes_down: 0,
            duration_ms: 0,
            verdict: Verdict::Passed,
            error: None,
        },
        finished: Box::new(|_| {}),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let (from_client, from_upstream) = rest.split_at((usize::from(n) * 4).min(rest.len()));
    runtime().block_on(async {
        let (relay_side, mut upstream) = tokio::io::duplex(1 << 20);
        upstream.write_all(SETTINGS).await.expect("pipe");
        let Ok(connection) = handshake(relay_side).await else {
            return;
        };
        let (mut client, relay_client) = tokio::io::duplex(1 << 20);
        let relayed = tokio::spawn(relay(relay_client, connection, scope()));
        client.write_all(PREFACE).await.expect("pipe");
        client.write_all(SETTINGS).await.expect("pipe");
        let _ = upstream.write_all(from_upstream).await;
        let _ = client.write_all(from_client).await;
        // Lets the relay take in what both sides sent before its client goes.
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
        let _ = client.shutdown().await;
        let mut to_client = Vec::new();
        let read = client.read_to_end(&mut to_client);
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("the relay closes the client's side once the client is gone")
            .expect("a pipe");
        drop(upstream);
        tokio::time::timeout(Duration::from_secs(10), relayed)
            .await
            .expect("the relay ends once its client is gone")
            .expect("the relay does not panic");
        if !from_upstream.windows(SECRET.len()).any(|w| w == SECRET) {
            assert!(
                !to_client.windows(SECRET.len()).any(|w| w == SECRET),
                "the secret reached the client"
            );
        }
    });
});
