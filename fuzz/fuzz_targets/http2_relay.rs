//! Fuzzes the HTTP/2 relay (`sandbox::proxy::http2`) whole: a client and an upstream, both played by the
//! input, take turns sending it arbitrary bytes over in-memory pipes (after the prefaces a real pair would
//! begin with), and time passes between turns when the input says so. Whatever they send:
//!
//! - the relay does not panic, and once its client is gone it ends and closes the client's side;
//! - it writes both peers whole frames, and names no stream the client did not open (an odd number, at
//!   most the highest one the client sent HEADERS on);
//! - a request reaches the upstream only if every `:authority` and `host` it has names the server name,
//!   and not as TRACE, CONNECT, a tunnel or h2c; it arrives with the fields the client sent, in order,
//!   the authority set, the client's own `authorization` gone and the secret in its place, once; trailers
//!   carry no secret;
//! - every header block the client gets decodes on a decoder that follows the header table sizes the
//!   client asked for as their acknowledgements reach it: the relay's own answers must carry the size
//!   updates that are due, or the client's table and the upstream's drift apart;
//! - the secret reaches neither the client nor an audit record (unless a peer sent it itself), and each
//!   request forwarded gets an audit record of its own, none lost (the log's queue is small, so records
//!   wait).
//!
//! Input: steps, each a tag byte and, but for a close, a big-endian u16 `n`. Tag % 4: 0, the client sends
//! the next `n` bytes (or what is left); 1, the upstream does; 2, `n` × 10 ms pass; 3, the upstream
//! closes its side. After each step everything runs until it waits: the clock is paused, and moves
//! only then, so a run is deterministic and the relay's timers (2 s, 30 s, 60 s) cost no real time.
#![no_main]

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use sandbox::audit::{Entry, Kind, PolledLog, Record, Verdict};
use sandbox::proxy::http2::hpack::{encode_field, Decoder};
use sandbox::proxy::http2::{handshake, relay, Injected, Injection, Scope};
use sandbox::proxy::policy::host_matches;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use zeroize::Zeroizing;

const SNI: &str = "api.test";
const SECRET: &str = "Bearer fuzz-secret-5f1c0e9a7d3b";
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const EMPTY_SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];
/// Small, so that the relay's writes are often partial.
const PIPE: usize = 16 * 1024;
/// Records the audit log's queue holds: few, so that the relay must keep some waiting and stop reading
/// its client until the queue takes them.
const LOG_QUEUE: usize = 2;
/// On the paused clock, waiting costs no real time: a relay that hangs fails the run at once.
const PATIENCE: Duration = Duration::from_secs(24 * 3600);
/// The header table size HTTP/2 starts with, the relay's decoder for requests keeps, and the relay
/// never offers the client another.
const TABLE_SIZE: usize = 4096;

const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const CONTINUATION: u8 = 0x9;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
const HEADER_TABLE_SIZE: u16 = 0x1;

type Fields = Vec<(Vec<u8>, Vec<u8>)>;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("a runtime")
    })
}

enum Step<'a> {
    Client(&'a [u8]),
    Upstream(&'a [u8]),
    Wait(Duration),
    UpstreamCloses,
}

fn steps(mut data: &[u8]) -> Vec<Step<'_>> {
    let mut steps = Vec::new();
    while let Some((&tag, rest)) = data.split_first() {
        if tag % 4 == 3 {
            steps.push(Step::UpstreamCloses);
            data = rest;
            continue;
        }
        let [hi, lo, rest @ ..] = rest else {
            break;
        };
        let n = u16::from_be_bytes([*hi, *lo]);
        if tag % 4 == 2 {
            steps.push(Step::Wait(Duration::from_millis(10 * u64::from(n))));
            data = rest;
            continue;
        }
        let (bytes, rest) = rest.split_at(usize::from(n).min(rest.len()));
        steps.push(if tag % 4 == 0 {
            Step::Client(bytes)
        } else {
            Step::Upstream(bytes)
        });
        data = rest;
    }
    steps
}

fn scope(queue: mpsc::Sender<Entry>, counted: Arc<AtomicUsize>) -> Scope {
    let mut block = Zeroizing::new(Vec::new());
    encode_field(b"authorization", SECRET.as_bytes(), true, &mut block);
    Scope {
        sni: SNI.into(),
        port: 443,
        injection: Injection::fixed(Ok(Injected {
            names: vec!["authorization".into()],
            block,
            tokens: Vec::new(),
        })),
        // Responses pass unmasked (`redact = false`), as the checks below expect: the secret may reach the
        // client when a peer sent it. The matcher is fuzzed by the `redaction` target.
        redaction: None,
        record: Record {
            time: SystemTime::UNIX_EPOCH,
            sandbox: "fuzz".into(),
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
        counted: Box::new(move |_| {
            counted.fetch_add(1, Ordering::Relaxed);
        }),
    }
}

/// What a peer has received so far: the checks need to know how much it had when it sent something.
type Received = Arc<Mutex<Vec<u8>>>;

async fn receive(mut from: impl AsyncRead + Unpin, into: Received) {
    let mut chunk = [0u8; 4096];
    while let Ok(n @ 1..) = from.read(&mut chunk).await {
        into.lock()
            .expect("no reader panicked")
            .extend_from_slice(&chunk[..n]);
    }
}

fn taken(received: Received) -> Vec<u8> {
    std::mem::take(&mut *received.lock().expect("no reader panicked"))
}

/// Sends `bytes` unless the relay is gone (then the write fails, which is no matter).
async fn send(to: &mut (impl AsyncWrite + Unpin), bytes: &[u8]) {
    let _ = tokio::time::timeout(PATIENCE, to.write_all(bytes))
        .await
        .expect("the relay takes in what it is sent");
}

/// Lets every task run until all of them wait: only then does the paused clock move on to this sleep.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

fuzz_target!(|data: &[u8]| {
    runtime().block_on(run(data));
});

async fn run(data: &[u8]) {
    let (relay_up, upstream) = tokio::io::duplex(PIPE);
    let (from_relay_up, mut upstream_tx) = tokio::io::split(upstream);
    let to_upstream = Received::default();
    let upstream_rx = tokio::spawn(receive(from_relay_up, to_upstream.clone()));
    let mut sent_upstream = EMPTY_SETTINGS.to_vec();
    upstream_tx.write_all(&sent_upstream).await.expect("a pipe");
    let connection = handshake(relay_up)
        .await
        .expect("the handshake with an upstream that sent SETTINGS");

    let (queue, mut logged) = mpsc::channel(LOG_QUEUE);
    let records = tokio::spawn(async move {
        let mut all = Vec::new();
        while let Some(entry) = logged.recv().await {
            // The relay logs requests; token fetches are the secret store's.
            if let Entry::Record(record) = entry {
                all.push(record);
            }
        }
        all
    });
    let counted = Arc::new(AtomicUsize::new(0));
    let (client, relay_client) = tokio::io::duplex(PIPE);
    let (from_relay, mut client_tx) = tokio::io::split(client);
    let to_client = Received::default();
    let client_rx = tokio::spawn(receive(from_relay, to_client.clone()));
    let relayed = tokio::spawn(relay(
        relay_client,
        connection,
        scope(queue, counted.clone()),
    ));

    let mut sent_client = [PREFACE, EMPTY_SETTINGS].concat();
    // For each time the client sent: how much it had sent then, and how much it had received before.
    let mut client_sends = vec![(sent_client.len(), 0)];
    send(&mut client_tx, &sent_client).await;
    settle().await;
    for step in steps(data) {
        match step {
            Step::Client(bytes) => {
                sent_client.extend_from_slice(bytes);
                client_sends.push((
                    sent_client.len(),
                    to_client.lock().expect("no reader panicked").len(),
                ));
                send(&mut client_tx, bytes).await;
            }
            Step::Upstream(bytes) => {
                sent_upstream.extend_from_slice(bytes);
                send(&mut upstream_tx, bytes).await;
            }
            Step::Wait(time) => tokio::time::sleep(time).await,
            Step::UpstreamCloses => {
                let _ = upstream_tx.shutdown().await;
            }
        }
        settle().await;
    }

    let _ = client_tx.shutdown().await;
    tokio::time::timeout(PATIENCE, client_rx)
        .await
        .expect("the relay closes the client's side once the client is gone")
        .expect("the client's reader");
    tokio::time::timeout(PATIENCE, relayed)
        .await
        .expect("the relay ends once its client is gone")
        .expect("the relay does not panic");
    upstream_rx.await.expect("the upstream's reader");
    let records = records.await.expect("the audit log's reader");
    let to_client = taken(to_client);
    let to_upstream = taken(to_upstream);

    let client_frames = frames(&sent_client, PREFACE.len()).0;
    let requests = decoded_requests(&client_frames);
    let opened = client_frames
        .iter()
        .filter(|frame| frame.kind == HEADERS)
        .map(|frame| frame.stream)
        .max()
        .unwrap_or(0);

    let (frames_to_client, cut) = frames(&to_client, 0);
    assert!(
        cut.is_empty(),
        "the client got {} bytes of a frame",
        cut.len()
    );
    let preface = to_upstream.get(..PREFACE.len());
    assert_eq!(
        preface,
        Some(PREFACE),
        "the relay's preface to the upstream"
    );
    let (frames_to_upstream, cut) = frames(&to_upstream, PREFACE.len());
    assert!(
        cut.is_empty(),
        "the upstream got {} bytes of a frame",
        cut.len()
    );
    for (peer, frame) in frames_to_client
        .iter()
        .map(|frame| ("client", frame))
        .chain(frames_to_upstream.iter().map(|frame| ("upstream", frame)))
    {
        assert!(
            frame.stream == 0 || (frame.stream % 2 == 1 && frame.stream <= opened),
            "the {peer} got frame type {} on stream {}, but the client opened streams up to {opened}",
            frame.kind,
            frame.stream
        );
    }

    let forwarded = check_forwarded(&frames_to_upstream, &requests);
    check_client_reads_its_blocks(&client_frames, &client_sends, &frames_to_client);

    let peers_sent_secret = [&sent_client, &sent_upstream]
        .iter()
        .any(|sent| contains(sent, SECRET.as_bytes()));
    if !peers_sent_secret {
        assert!(
            !contains(&to_client, SECRET.as_bytes()),
            "the secret reached the client"
        );
        for record in &records {
            assert!(
                !format!("{record:?}").contains(SECRET),
                "the secret is in an audit record"
            );
        }
    }
    assert_eq!(
        counted.load(Ordering::Relaxed),
        records.len(),
        "records counted and records logged"
    );
    // Requests the relay refused or did not send have records too: each forwarded one must have its own.
    let mut unmatched: Vec<_> = records
        .iter()
        .filter(|record| record.verdict != Verdict::Denied)
        .map(|record| (record.method.clone(), record.path.clone()))
        .collect();
    for (method, path) in forwarded {
        let path = path.split(|&b| b == b'?').next().unwrap_or_default();
        let key = (
            Some(String::from_utf8_lossy(&method).into_owned()),
            Some(String::from_utf8_lossy(path).into_owned()),
        );
        let Some(at) = unmatched.iter().position(|record| *record == key) else {
            panic!("no audit record for the forwarded request {key:?}");
        };
        unmatched.swap_remove(at);
    }
}

struct Frame<'a> {
    /// Where its head begins in the bytes it came in.
    at: usize,
    kind: u8,
    flags: u8,
    stream: u32,
    payload: &'a [u8],
}

/// The whole frames in `bytes` from `at` on, and what is left after them.
fn frames(bytes: &[u8], mut at: usize) -> (Vec<Frame<'_>>, &[u8]) {
    let mut frames = Vec::new();
    while let Some(head) = bytes[at..].first_chunk::<9>() {
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let Some(payload) = bytes.get(at + 9..at + 9 + len) else {
            break;
        };
        frames.push(Frame {
            at,
            kind: head[3],
            flags: head[4],
            stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
            payload,
        });
        at += 9 + len;
    }
    (frames, &bytes[at..])
}

/// The header blocks of `frames` in order, each with its stream (HEADERS, less its padding and priority,
/// joined with its CONTINUATIONs), up to where the relay would end the connection; and why it would
/// there, if it would: a header block interrupted, bad padding, or one left unfinished at the end.
fn header_blocks(frames: &[Frame]) -> (Vec<(u32, Vec<u8>)>, Option<&'static str>) {
    let mut blocks = Vec::new();
    let mut pending: Option<(u32, Vec<u8>)> = None;
    for frame in frames {
        match (&mut pending, frame.kind) {
            (Some((stream, block)), CONTINUATION) if *stream == frame.stream => {
                block.extend_from_slice(frame.payload);
            }
            (Some(_), _) => return (blocks, Some("a header block was interrupted")),
            (None, HEADERS) => {
                let mut fragment = frame.payload;
                let mut pad = 0;
                if frame.flags & PADDED != 0 {
                    let Some((&length, rest)) = fragment.split_first() else {
                        return (blocks, Some("no pad length"));
                    };
                    pad = usize::from(length);
                    fragment = rest;
                }
                if frame.flags & PRIORITY != 0 {
                    let Some(rest) = fragment.get(5..) else {
                        return (blocks, Some("no room for the priority"));
                    };
                    fragment = rest;
                }
                let Some(fragment) = fragment.get(..fragment.len().wrapping_sub(pad)) else {
                    return (blocks, Some("padding longer than the frame"));
                };
                pending = Some((frame.stream, fragment.to_vec()));
            }
            (None, CONTINUATION) => return (blocks, Some("CONTINUATION without HEADERS")),
            (None, _) => continue,
        }
        if frame.flags & END_HEADERS != 0 {
            blocks.extend(pending.take());
        }
    }
    let unfinished = pending.map(|_| "a header block left unfinished");
    (blocks, unfinished)
}

/// The header blocks the client sent on each stream, in order, decoded as the relay's decoder reads
/// them, up to the first that does not decode (where the relay ends the connection).
fn decoded_requests(client_frames: &[Frame]) -> HashMap<u32, Vec<Fields>> {
    let mut decoder = Decoder::new(TABLE_SIZE);
    let mut requests: HashMap<u32, Vec<Fields>> = HashMap::new();
    for (stream, block) in header_blocks(client_frames).0 {
        let mut fields = Vec::new();
        let decoded = decoder.decode(&block, |name, value| {
            fields.push((name.to_vec(), value.to_vec()))
        });
        if decoded.is_err() {
            break;
        }
        requests.entry(stream).or_default().push(fields);
    }
    requests
}

/// Checks each request the upstream got against what the client sent on its stream; returns the method
/// and path of each.
fn check_forwarded(
    frames_to_upstream: &[Frame],
    requests: &HashMap<u32, Vec<Fields>>,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let (blocks, fault) = header_blocks(frames_to_upstream);
    assert_eq!(fault, None, "the relay's header blocks to the upstream");
    let mut decoder = Decoder::new(TABLE_SIZE);
    let mut forwarded: HashMap<u32, Vec<Fields>> = HashMap::new();
    for (stream, block) in blocks {
        let mut fields = Vec::new();
        decoder
            .decode(&block, |name, value| {
                fields.push((name.to_vec(), value.to_vec()))
            })
            .expect("the relay's header blocks decode");
        forwarded.entry(stream).or_default().push(fields);
    }
    for (stream, blocks) in &forwarded {
        let sent = requests.get(stream).unwrap_or_else(|| {
            panic!("the upstream got stream {stream}, which the client never sent")
        });
        assert!(
            blocks.len() <= 2,
            "{} blocks on stream {stream}",
            blocks.len()
        );
        let expected = expected_head(&sent[0]);
        assert!(
            blocks[0] == expected,
            "the upstream got {:?} on stream {stream}, where {:?} was due",
            shown(&blocks[0]),
            shown(&expected)
        );
        if let Some(trailers) = blocks.get(1) {
            let Some(sent_trailers) = sent.get(1) else {
                panic!("the upstream got trailers on stream {stream}, which the client never sent");
            };
            // The relay passes no `host` in trailers either: it keeps that field apart from the rest.
            let without_secret: Fields = sent_trailers
                .iter()
                .filter(|(name, _)| name != b"authorization" && name != b"host")
                .cloned()
                .collect();
            assert!(
                *trailers == without_secret,
                "the upstream got trailers {:?} on stream {stream}, where {:?} were due",
                shown(trailers),
                shown(&without_secret)
            );
        }
    }
    // Each head is as `expected_head` makes it: :method, :scheme, :authority, :path, ...
    forwarded
        .values()
        .map(|blocks| (blocks[0][0].1.clone(), blocks[0][3].1.clone()))
        .collect()
}

/// The request the upstream may get for the head the client sent; panics if it may get none.
fn expected_head(sent: &Fields) -> Fields {
    let value = |wanted: &[u8]| {
        sent.iter()
            .find(|(name, _)| name == wanted)
            .map(|(_, value)| value.clone())
    };
    let hosts: Vec<_> = sent
        .iter()
        .filter(|(name, _)| name == b":authority" || name == b"host")
        .map(|(_, value)| String::from_utf8_lossy(value))
        .collect();
    assert!(
        !hosts.is_empty() && hosts.iter().all(|host| host_matches(host, SNI, 443)),
        "a request for {hosts:?} reached the upstream"
    );
    let method = value(b":method").expect("a request without :method reached the upstream");
    assert!(
        method != b"TRACE" && method != b"CONNECT" && value(b":protocol").is_none(),
        "a {} (a tunnel, or a method that reflects the request) reached the upstream",
        String::from_utf8_lossy(&method)
    );
    assert!(
        value(b"http2-settings").is_none(),
        "a request to switch to h2c reached the upstream"
    );
    let path = value(b":path").expect("a request without :path reached the upstream");
    let mut expected = vec![
        (b":method".to_vec(), method),
        (b":scheme".to_vec(), b"https".to_vec()),
        (b":authority".to_vec(), SNI.as_bytes().to_vec()),
        (b":path".to_vec(), path),
    ];
    expected.extend(
        sent.iter()
            .filter(|(name, _)| {
                !name.starts_with(b":") && name != b"host" && name != b"authorization"
            })
            .cloned(),
    );
    expected.push((b"authorization".to_vec(), SECRET.as_bytes().to_vec()));
    expected
}

/// Reads every header block the client got as the client would: its decoder's table size follows the
/// client's SETTINGS, each taking effect when an acknowledgement reaches the client after it sent them
/// (an upstream may acknowledge what it never got; the relay passes that on).
fn check_client_reads_its_blocks(
    client_frames: &[Frame],
    client_sends: &[(usize, usize)],
    frames_to_client: &[Frame],
) {
    let mut asked: VecDeque<(usize, Option<usize>)> = client_frames
        .iter()
        .filter(|frame| frame.kind == SETTINGS && frame.flags & ACK == 0)
        .map(|frame| {
            // Read by the relay once its last byte came, in the first send that reached that far.
            let end = frame.at + 9 + frame.payload.len();
            let received_before = client_sends
                .iter()
                .find(|(sent, _)| *sent >= end)
                .map_or(usize::MAX, |(_, received)| *received);
            let size = frame
                .payload
                .chunks_exact(6)
                .rfind(|entry| u16::from_be_bytes([entry[0], entry[1]]) == HEADER_TABLE_SIZE)
                .map(|entry| u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]) as usize);
            (received_before, size)
        })
        .collect();
    let mut decoder = Decoder::new(TABLE_SIZE);
    let mut from = 0;
    for (i, frame) in frames_to_client.iter().enumerate() {
        let acknowledged = frame.kind == SETTINGS && frame.flags & ACK != 0;
        let block_ends =
            matches!(frame.kind, HEADERS | CONTINUATION) && frame.flags & END_HEADERS != 0;
        if !acknowledged && !block_ends {
            continue;
        }
        let (blocks, fault) = header_blocks(&frames_to_client[from..=i]);
        assert_eq!(fault, None, "the relay's header blocks to the client");
        for (stream, block) in blocks {
            decoder
                .decode_wanted(&block, |name| name == b":status", |_, _| {})
                .unwrap_or_else(|error| {
                    panic!("the client cannot read the header block on stream {stream}: {error}")
                });
        }
        from = i + 1;
        if acknowledged && asked.front().is_some_and(|(sent, _)| *sent <= frame.at) {
            if let Some((_, Some(size))) = asked.pop_front() {
                decoder.set_max_table_size(size);
            }
        }
    }
    let (_, fault) = header_blocks(&frames_to_client[from..]);
    assert_eq!(fault, None, "the relay's header blocks to the client");
}

/// Fields as `name: value` lines, for messages.
fn shown(fields: &Fields) -> Vec<String> {
    fields
        .iter()
        .map(|(name, value)| {
            format!(
                "{}: {}",
                String::from_utf8_lossy(name),
                String::from_utf8_lossy(value)
            )
        })
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    // Slices compared only where the first byte matches: libFuzzer traces each comparison of slices,
    // and one per window took 8% of the target's time.
    haystack
        .windows(needle.len())
        .any(|window| window[0] == needle[0] && window == needle)
}
