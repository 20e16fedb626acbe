//! What the relay's tests share: a test upstream (h2), a scope whose audit records can be read back, an h2
//! client set up through the relay (`setup`), and a raw peer that writes frames by hand (`Raw`).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderMap, Method, Request, Response};
use hyper::body::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use zeroize::Zeroizing;

use super::buffers::{InBuf, READ_CHUNK};
use super::frame::{
    write_frame, write_settings, write_window_update, Head, END_HEADERS, GOAWAY, HEADERS, HEAD_LEN,
    PREFACE,
};
use super::machine::TABLE_SIZE;
use super::{handshake, hpack, relay, Injected, Injection, Scope};
use crate::audit::{Entry, Kind, PolledLog, Record, Verdict};
use crate::config::{Config, Secrets};
use crate::redact::profiles::{ProfileRedaction, Redactions};

pub(super) const SNI: &str = "api.test";
pub(super) const SECRET: &str = "Bearer s3cret-value";

pub(super) type Records = Arc<Mutex<Vec<Record>>>;
/// Requests as the upstream saw them: (method, authority, path, headers).
pub(super) type Seen = Arc<Mutex<Vec<(Method, String, String, HeaderMap)>>>;

/// A scope whose audit records end up in `records`, through a queue.
pub(super) fn scope(records: &Records, injected: Result<Injected, String>) -> Scope {
    scope_masking(records, injected, None)
}

/// The secret the test scope's masking knows: what [`SECRET`] injects.
pub(super) const SECRET_VALUE: &str = "s3cret-value";

/// What a sandbox whose integration injects [`SECRET`] masks.
pub(super) fn masking() -> Option<Arc<ProfileRedaction>> {
    let config = Config::parse(
        r#"
[secrets]
t = { env = "SBX_TEST_NEVER_SET" }
[[integration]]
name = "api"
hosts = ["api.test"]
headers = { Authorization = "Bearer ${secret:t}" }
"#,
        Path::new("t.toml"),
    )
    .unwrap();
    let secrets = Arc::new(Secrets::of(&[("t", SECRET_VALUE)]));
    Some(
        Redactions::default()
            .for_sandbox(&config.integrations, &secrets)
            .unwrap(),
    )
}

/// As [`scope`], masking responses with `redaction`.
pub(super) fn scope_masking(
    records: &Records,
    injected: Result<Injected, String>,
    redaction: Option<Arc<ProfileRedaction>>,
) -> Scope {
    let records = records.clone();
    let (queue, mut logged) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        while let Some(entry) = logged.recv().await {
            if let Entry::Record(record) = entry {
                records.lock().unwrap().push(record);
            }
        }
    });
    Scope {
        sni: SNI.into(),
        port: 443,
        injection: Injection::fixed(injected),
        redaction,
        record: Record {
            time: std::time::SystemTime::UNIX_EPOCH,
            sandbox: "t1".into(),
            uid: 1000,
            profile: "default".into(),
            kind: Kind::Https,
            destination: "10.0.0.3:443".into(),
            sni: Some(SNI.into()),
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
            retries: 0,
            redacted: 0,
        },
        log: PolledLog::new(queue),
        counted: Box::new(|_| {}),
    }
}

pub(super) fn authorization() -> Result<Injected, String> {
    let mut block = Zeroizing::new(Vec::new());
    hpack::encode_field(b"authorization", SECRET.as_bytes(), true, &mut block);
    Ok(Injected {
        names: vec!["authorization".into()],
        block,
        tokens: Vec::new(),
    })
}

/// The test upstream: records each request, then answers by path. `/echo`: 200 "ok"; `/upload`: the
/// body's length; `/big?N`: N bytes; `/trailers`: a body and trailers; `/early`: 413 at once, without
/// reading the body; `/continue`: 100 before it reads the body; `/split?N`: the request's authorization
/// back in a header, in a body of two DATA frames cut at its N-th byte (`<`, value, `>`) and in a
/// trailer; `/held?N`: N bytes of `s3cret-valu.` over and over (each frame may end in what could begin
/// the secret); `/gzip`: a body in Content-Encoding gzip.
/// `pong`: told when a PING the upstream sends at once has been answered.
pub(super) async fn upstream(
    io: DuplexStream,
    seen: Seen,
    max_streams: Option<u32>,
    pong: Option<tokio::sync::oneshot::Sender<()>>,
) {
    let mut builder = h2::server::Builder::new();
    if let Some(max) = max_streams {
        builder.max_concurrent_streams(max);
    }
    let Ok(mut connection) = builder.handshake::<_, Bytes>(io).await else {
        return;
    };
    if let (Some(pong), Some(mut pinger)) = (pong, connection.ping_pong()) {
        tokio::spawn(async move {
            if pinger.ping(h2::Ping::opaque()).await.is_ok() {
                let _ = pong.send(());
            }
        });
    }
    while let Some(Ok((request, mut respond))) = connection.accept().await {
        let seen = seen.clone();
        tokio::spawn(async move {
            let (parts, mut body) = request.into_parts();
            seen.lock().unwrap().push((
                parts.method.clone(),
                parts
                    .uri
                    .authority()
                    .map(|a| a.to_string())
                    .unwrap_or_default(),
                parts.uri.path().to_string(),
                parts.headers.clone(),
            ));
            let path = parts.uri.path().to_string();
            let query = parts.uri.query().unwrap_or_default().to_string();
            if path == "/early" {
                let response = Response::builder().status(413).body(()).unwrap();
                let _ = respond.send_response(response, true);
                return;
            }
            if path == "/continue" {
                let go_on = Response::builder().status(100).body(()).unwrap();
                let _ = respond.send_informational(go_on);
            }
            let mut received = 0usize;
            while let Some(Ok(chunk)) = body.data().await {
                received += chunk.len();
                let _ = body.flow_control().release_capacity(chunk.len());
            }
            let authorization = parts
                .headers
                .get("authorization")
                .map(|v| v.as_bytes().to_vec())
                .unwrap_or_default();
            let mut response = Response::builder().status(200);
            if path == "/split" {
                response = response.header("x-echo", authorization.as_slice());
            }
            if path == "/gzip" {
                response = response.header("content-encoding", "gzip");
            }
            let Ok(mut send) = respond.send_response(response.body(()).unwrap(), false) else {
                return;
            };
            if path == "/split" {
                let at = query.parse::<usize>().unwrap().min(authorization.len());
                let first = [b"<".as_slice(), &authorization[..at]].concat();
                let second = [&authorization[at..], b">".as_slice()].concat();
                for part in [first, second] {
                    send.reserve_capacity(part.len());
                    let _ = std::future::poll_fn(|cx| send.poll_capacity(cx)).await;
                    let _ = send.send_data(Bytes::from(part), false);
                }
                let mut trailers = HeaderMap::new();
                trailers.insert(
                    "x-echo-trailer",
                    http::HeaderValue::from_bytes(&authorization).unwrap(),
                );
                let _ = send.send_trailers(trailers);
                return;
            }
            let payload: Vec<u8> = match path.as_str() {
                "/upload" => received.to_string().into_bytes(),
                "/big" => (0..query.parse::<usize>().unwrap())
                    .map(|i| (i % 251) as u8)
                    .collect(),
                "/held" => b"s3cret-valu."
                    .iter()
                    .copied()
                    .cycle()
                    .take(query.parse::<usize>().unwrap())
                    .collect(),
                _ => b"ok".to_vec(),
            };
            let mut rest = Bytes::from(payload);
            while !rest.is_empty() {
                send.reserve_capacity(rest.len());
                let Some(Ok(n)) = std::future::poll_fn(|cx| send.poll_capacity(cx)).await else {
                    return;
                };
                let chunk = rest.split_to(n.min(rest.len()));
                if send.send_data(chunk, false).is_err() {
                    return;
                }
            }
            if path == "/trailers" {
                let mut trailers = HeaderMap::new();
                trailers.insert("x-checksum", "abc".parse().unwrap());
                let _ = send.send_trailers(trailers);
            } else {
                let _ = send.send_data(Bytes::new(), true);
            }
        });
    }
}

pub(super) struct Setup {
    pub(super) client: h2::client::SendRequest<Bytes>,
    pub(super) records: Records,
    pub(super) seen: Seen,
}

/// client ⇄ relay ⇄ upstream over in-memory pipes.
pub(super) async fn setup(
    connection_window: u32,
    injected: Result<Injected, String>,
    max_streams: Option<u32>,
) -> Setup {
    setup_masking(connection_window, injected, max_streams, None).await
}

/// As [`setup`], the relay masking responses with `redaction`.
pub(super) async fn setup_masking(
    connection_window: u32,
    injected: Result<Injected, String>,
    max_streams: Option<u32>,
    redaction: Option<Arc<ProfileRedaction>>,
) -> Setup {
    let records = Records::default();
    let seen = Seen::default();
    let (relay_up, upstream_io) = tokio::io::duplex(64 * 1024);
    tokio::spawn(upstream(upstream_io, seen.clone(), max_streams, None));
    let up = handshake(relay_up).await.unwrap();
    let (client_io, relay_client) = tokio::io::duplex(64 * 1024);
    tokio::spawn(relay(
        relay_client,
        up,
        scope_masking(&records, injected, redaction),
    ));
    let (client, connection) = h2::client::Builder::new()
        .initial_connection_window_size(connection_window)
        .handshake::<_, Bytes>(client_io)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Setup {
        client,
        records,
        seen,
    }
}

pub(super) async fn get(
    client: &mut h2::client::SendRequest<Bytes>,
    request: Request<()>,
    body: Option<Bytes>,
) -> Result<(Response<()>, Vec<u8>, Option<HeaderMap>), h2::Error> {
    let mut client = client.clone().ready().await?;
    let (response, mut send) = client.send_request(request, body.is_none())?;
    if let Some(body) = body {
        let mut rest = body;
        while !rest.is_empty() {
            send.reserve_capacity(rest.len());
            let n = std::future::poll_fn(|cx| send.poll_capacity(cx))
                .await
                .unwrap()?;
            let chunk = rest.split_to(n.min(rest.len()));
            send.send_data(chunk, rest.is_empty())?;
        }
    }
    let (parts, mut body) = response.await?.into_parts();
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await?;
    Ok((Response::from_parts(parts, ()), data, trailers))
}

pub(super) fn request(method: &str, uri: &str) -> Request<()> {
    Request::builder().method(method).uri(uri).body(()).unwrap()
}

pub(super) async fn records_settled(records: &Records, n: usize) -> Vec<Record> {
    for _ in 0..200 {
        if records.lock().unwrap().len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    records.lock().unwrap().clone()
}

/// A raw client: frames written by hand, so that it can send what no library would.
pub(super) struct Raw {
    pub(super) io: DuplexStream,
    pub(super) input: InBuf,
    pub(super) records: Records,
    pub(super) seen: Seen,
}

impl Raw {
    pub(super) async fn start() -> Raw {
        let records = Records::default();
        let seen = Seen::default();
        let (relay_up, upstream_io) = tokio::io::duplex(64 * 1024);
        tokio::spawn(upstream(upstream_io, seen.clone(), None, None));
        let up = handshake(relay_up).await.unwrap();
        let (mut io, relay_client) = tokio::io::duplex(256 * 1024);
        tokio::spawn(relay(relay_client, up, scope(&records, authorization())));
        let mut out = PREFACE.to_vec();
        write_settings(&mut out, &[]);
        write_window_update(&mut out, 0, 1 << 20);
        io.write_all(&out).await.unwrap();
        Raw {
            io,
            input: InBuf::default(),
            records,
            seen,
        }
    }

    pub(super) async fn send(&mut self, frames: &[u8]) {
        self.io.write_all(frames).await.unwrap();
    }

    /// The next frame (head, payload); None at the end of the connection.
    pub(super) async fn frame(&mut self) -> Option<(Head, Vec<u8>)> {
        loop {
            if let Some(head) = self.input.frame_head() {
                if self.input.unread().len() >= HEAD_LEN + head.len {
                    let payload = self.input.unread()[HEAD_LEN..HEAD_LEN + head.len].to_vec();
                    self.input.consume(HEAD_LEN + head.len);
                    return Some((head, payload));
                }
            }
            let space = self.input.space(READ_CHUNK);
            let n = tokio::time::timeout(Duration::from_secs(5), self.io.read(space))
                .await
                .expect("the relay answers within 5 s")
                .ok()?;
            if n == 0 {
                return None;
            }
            self.input.filled(n);
        }
    }

    /// Frames until one of `kind` (on `stream`) comes; returns it.
    pub(super) async fn until(&mut self, kind: u8, stream: u32) -> (Head, Vec<u8>) {
        loop {
            let (head, payload) = self.frame().await.expect("the connection ended first");
            if head.kind == kind && head.stream == stream {
                return (head, payload);
            }
        }
    }

    pub(super) async fn goaway_code(&mut self) -> u32 {
        let (_, payload) = self.until(GOAWAY, 0).await;
        u32::from_be_bytes(payload[4..8].try_into().unwrap())
    }
}

pub(super) fn headers_frame(stream: u32, flags: u8, fields: &[(&str, &str)]) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in fields {
        hpack::encode_field(name.as_bytes(), value.as_bytes(), false, &mut block);
    }
    let mut out = Vec::new();
    write_frame(&mut out, HEADERS, flags | END_HEADERS, stream, &block);
    out
}

pub(super) fn get_fields(path: &str) -> Vec<(&'static str, String)> {
    vec![
        (":method", "GET".into()),
        (":scheme", "https".into()),
        (":authority", SNI.into()),
        (":path", path.into()),
    ]
}

pub(super) fn status(block: &[u8]) -> Vec<u8> {
    let mut status = Vec::new();
    hpack::Decoder::new(TABLE_SIZE)
        .decode(block, |name, value| {
            if name == b":status" {
                status = value.to_vec();
            }
        })
        .unwrap();
    status
}
