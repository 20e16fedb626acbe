//! End-to-end tests of redaction (DESIGN "Redaction", invariant 1): a test upstream gives back what the
//! daemon injected (in a JSON echo, a header, a status reason, trailers, a body cut anywhere across chunks
//! or DATA frames, server-sent events, WebSocket frames, compressed bodies) and the sandbox's clients
//! (curl over HTTP/1.1 and HTTP/2, python, node) see each value masked, the right length, and every
//! other byte as the upstream sent it; what cannot be scanned never arrives; `redact = false` turns it
//! off. Root only; all traffic stays inside the test's namespaces (see `common::tls_upstream`).

mod common;

use std::fs;
use std::process::Command;

use common::tls_upstream::*;
use common::*;
use serde_json::Value;

/// One value the daemon injects that an upstream can give back: the host it goes to, the request header
/// that carries it, the value as injected and the secret's own value. A new kind of secret (minted tokens)
/// is one more row in [`injected`]; [`secret_forms`] follows.
struct Injected {
    host: &'static str,
    header: &'static str,
    value: String,
    secret: String,
}

/// Every value the default profile injects, with its host and header.
fn injected(up: &TlsUpstream) -> Vec<Injected> {
    vec![
        Injected {
            host: API_HOST,
            header: "authorization",
            value: format!("Bearer {}", up.secret),
            secret: up.secret.clone(),
        },
        Injected {
            host: API_HOST,
            header: "x-api-key",
            value: up.secret.clone(),
            secret: up.secret.clone(),
        },
        Injected {
            host: BASIC_HOST,
            header: "authorization",
            value: up.basic_authorization(),
            secret: up.basic_secret.clone(),
        },
    ]
}

/// Every form in which a secret may come back in these tests: the values as injected, without their
/// scheme (basic auth's base64 credentials alone), and the secrets themselves.
fn secret_forms(up: &TlsUpstream) -> Vec<String> {
    let mut forms = Vec::new();
    for injected in injected(up) {
        if let Some((_, credentials)) = injected.value.split_once(' ') {
            forms.push(credentials.to_string());
        }
        forms.extend([injected.value, injected.secret]);
    }
    forms
}

/// `text` as the sandbox must see it: every occurrence of every form masked with as many `*`, and how
/// many runs of masked bytes that makes (what the audit line counts).
fn masked(text: &str, forms: &[String]) -> (String, u64) {
    let mut hidden = vec![false; text.len()];
    for form in forms {
        for (at, _) in text.match_indices(form.as_str()) {
            hidden[at..at + form.len()]
                .iter_mut()
                .for_each(|h| *h = true);
        }
    }
    let mut out = String::with_capacity(text.len());
    let mut runs = 0;
    for (i, c) in text.char_indices() {
        if hidden[i] {
            runs += u64::from(i == 0 || !hidden[i - 1]);
            out.push('*');
        } else {
            out.push(c);
        }
    }
    (out, runs)
}

fn stars(value: &str) -> String {
    "*".repeat(value.len())
}

/// The integration `plain` injects the `api` bearer into [`OTHER_HOST`] with `redact = false`; profile
/// `unredacted` has only it.
const UNREDACTED: &str = r#"
[[integration]]
name = "plain"
hosts = ["other.test"]
headers = { Authorization = "Bearer ${secret:t}" }
redact = false

[[profile]]
name = "unredacted"
users = ["*"]
integrations = ["plain"]
"#;

fn start<'n>(net: &'n TestNet, up: &TlsUpstream) -> Daemon<'n> {
    up.configure(net.daemon()).extra_toml(UNREDACTED).start()
}

/// curl without URL globbing turned off (the every-offset loops use it), quiet but for errors.
fn curl(args: &[&str]) -> Vec<String> {
    ["curl", "-sS", "--noproxy", "*", "--max-time", "20"]
        .iter()
        .chain(args)
        .map(|s| s.to_string())
        .collect()
}

/// The requests whose target has `tag` as one of its query parameters.
fn tagged(up: &TlsUpstream, tag: &str) -> Vec<UpstreamRequest> {
    up.requests()
        .into_iter()
        .filter(|r| r.query().split('&').any(|p| p == tag))
        .collect()
}

/// The audit lines of requests to `host` for `path`, waiting up to [`SETTLE`] for at least `n`.
fn audited(d: &Daemon, host: &str, path: &str, n: usize) -> Vec<Value> {
    wait_for(SETTLE, || {
        let lines: Vec<Value> = d
            .audit_lines()
            .into_iter()
            .filter(|l| l["host"] == host && l["path"] == path)
            .collect();
        (lines.len() >= n).then_some(lines)
    })
    .unwrap_or_else(|| {
        panic!(
            "expected {n} audit line(s) for {host}{path} in:\n{}",
            fs::read_to_string(&d.audit_log).unwrap_or_default()
        )
    })
}

/// How many secrets the audit line says were masked (0 when it says nothing).
fn redacted(line: &Value) -> u64 {
    line.get("redacted").map_or(0, |n| n.as_u64().unwrap())
}

/// Asserts that no form of any secret appears in `text`.
fn assert_no_secret(up: &TlsUpstream, what: &str, text: &str) {
    for form in secret_forms(up) {
        assert!(!text.contains(&form), "a secret's form in {what}:\n{text}");
    }
}

/// An echo of the whole request, from each client: the body is what the upstream sent with the injected
/// values masked (same length, every other byte the same); the audit line counts them, the daemon's log
/// warns with integration, host and path, never the value. With `redact = false` the value comes back.
#[test]
fn an_echoed_secret_reaches_every_client_masked_and_the_rest_byte_for_byte() {
    if skip_unless_privileged() {
        return;
    }
    let net = TestNet::new();
    let up = TlsUpstream::new(&net);
    let d = start(&net, &up);
    let user = test_user();
    let forms = secret_forms(&up);
    for host in [API_HOST, BASIC_HOST] {
        let clients: [(&str, Vec<String>); 4] = [
            ("curl-h1", curl(&["--http1.1"])),
            ("curl-h2", curl(&["--http2"])),
            (
                "python",
                vec![
                    "python3".into(),
                    "-c".into(),
                    "import sys, urllib.request as u\n\
                 sys.stdout.buffer.write(u.urlopen(sys.argv[1], timeout=10).read())"
                        .into(),
                ],
            ),
            (
                "node",
                vec![
                "node".into(),
                "-e".into(),
                "fetch(process.argv[1]).then(r => r.text()).then(t => process.stdout.write(t), \
                 e => { console.error(e); process.exit(1); })"
                    .into(),
            ],
            ),
        ];
        for (n, (client, args)) in clients.into_iter().enumerate() {
            let tag = format!("c=echo-{client}-{host}");
            let o = d
                .exec(&user)
                .args(args)
                .args([format!("https://{host}/echo?{tag}")])
                .run();
            assert_code(&o, 0);
            let seen = tagged(&up, &tag);
            assert_eq!(seen.len(), 1, "{client}: {seen:?}");
            let sent = echo_body(&seen[0]);
            let (expected, count) = masked(&sent, &forms);
            // Control: each value was injected, and the upstream gave it back.
            for value in injected(&up).iter().filter(|v| v.host == host) {
                assert_eq!(seen[0].header(value.header), [value.value.as_str()]);
                assert!(sent.contains(&value.value), "{client}: {sent}");
            }
            assert_eq!(stdout(&o), expected, "{client} to {host}: {}", describe(&o));
            let line = &audited(&d, host, "/echo", n + 1)[n];
            assert_eq!(redacted(line), count, "{client} to {host}: {line}");
        }
    }
    let logs = d.logs();
    let warning = logs
        .lines()
        .find(|l| l.contains("gave back secrets") && l.contains(BASIC_HOST))
        .unwrap_or_else(|| panic!("no warning about {BASIC_HOST} in the daemon's log:\n{logs}"));
    for field in ["basic", "/echo"] {
        assert!(warning.contains(field), "{field} in: {warning}");
    }
    assert_no_secret(&up, "the daemon's log", &logs);
    assert_no_secret(
        &up,
        "the audit log",
        &fs::read_to_string(&d.audit_log).unwrap(),
    );

    // The switch: `plain` has redaction off, so its echo carries the value.
    let o = d
        .exec(&user)
        .profile("unredacted")
        .args(curl(&[
            "--http2",
            &format!("https://{OTHER_HOST}/echo?c=plain"),
        ]))
        .run();
    assert_code(&o, 0);
    let bearer = format!("Bearer {}", up.secret);
    assert!(stdout(&o).contains(&bearer), "{}", describe(&o));
    let line = &audited(&d, OTHER_HOST, "/echo", 1)[0];
    assert_eq!(line["integration"], "plain", "{line}");
    assert_eq!(redacted(line), 0, "{line}");
    d.finish();
}

/// The value in a header and in a body cut at each of its offsets into two chunks (HTTP/1.1, with and
/// without Content-Length), two DATA frames (HTTP/2, relayed), or two writes of a body the close ends
/// (whose status reason carries it too): masked every time, whole. Each loop is one curl, over one
/// client connection where the framing allows.
#[test]
fn a_secret_cut_at_every_offset_across_chunks_and_frames_is_masked() {
    if skip_unless_privileged() {
        return;
    }
    let net = TestNet::new();
    let up = TlsUpstream::new(&net);
    let d = start(&net, &up);
    let user = test_user();
    let value = format!("Bearer {}", up.secret);
    let len = value.len();
    let masked_value = stars(&value);
    for (label, flag, host, framing) in [
        ("h1-chunked", "--http1.1", H1_HOST, ""),
        ("h1-length", "--http1.1", H1_HOST, "&len"),
        ("h1-of-h2", "--http1.1", API_HOST, ""),
        ("h2-frames", "--http2", API_HOST, ""),
    ] {
        let tag = format!("c=split-{label}");
        let o = d
            .exec(&user)
            .args(curl(&[
                flag,
                "-w",
                "x-echo=%header{x-echo}\\n",
                &format!("https://{host}/split?h=authorization&at=[0-{len}]{framing}&{tag}"),
            ]))
            .run();
        assert_code(&o, 0);
        let expected = format!("[{masked_value}]\nx-echo={masked_value}\n").repeat(len + 1);
        assert_eq!(stdout(&o), expected, "{label}: {}", describe(&o));
        assert_eq!(tagged(&up, &tag).len(), len + 1, "{label}");
    }
    let lines = audited(&d, API_HOST, "/split", 2 * (len + 1));
    assert!(
        lines.iter().all(|l| redacted(l) == 2),
        "a header and a body each: {lines:?}"
    );

    // Close-delimited, with the value in the reason phrase as well.
    let value = up.secret.clone();
    let len = value.len();
    let masked_value = stars(&value);
    let o = d
        .exec(&user)
        .args(curl(&[
            "--http1.1",
            "-i",
            &format!("https://{RAW_HOST}/split?h=x-api-key&at=[0-{len}]&c=raw"),
        ]))
        .run();
    assert_code(&o, 0);
    let out = stdout(&o);
    assert_no_secret(&up, "close-delimited responses", &out);
    for (what, want) in [
        (
            "status line",
            format!("HTTP/1.1 200 Echo {masked_value}\r\n"),
        ),
        ("header", format!("\r\nx-echo: {masked_value}\r\n")),
        ("body", format!("\r\n\r\n[{masked_value}]\n")),
    ] {
        assert_eq!(
            out.to_ascii_lowercase()
                .matches(&want.to_ascii_lowercase())
                .count(),
            len + 1,
            "{what} {want:?}: {}",
            describe(&o)
        );
    }
    let lines = audited(&d, RAW_HOST, "/split", len + 1);
    assert!(
        lines.iter().all(|l| redacted(l) == 3),
        "reason, header and body each: {lines:?}"
    );
    d.finish();
}

/// A WebSocket client (stdlib only) that offers permessage-deflate, reads the upstream's two messages
/// (a text one in two frames, a binary one) and sends a close, then prints each message and the close's
/// reason.
const WS_CLIENT: &str = r#"
import base64, os, socket, ssl, sys
host, path = sys.argv[1], sys.argv[2]
s = ssl.create_default_context().wrap_socket(socket.create_connection((host, 443), timeout=10), server_hostname=host)
key = base64.b64encode(os.urandom(16)).decode()
s.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
           "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n" % (path, host, key)).encode())
buf = b""
while b"\r\n\r\n" not in buf:
    chunk = s.recv(4096)
    if not chunk:
        sys.exit("closed during the handshake")
    buf += chunk
head, _, rest = buf.partition(b"\r\n\r\n")
if not head.startswith(b"HTTP/1.1 101"):
    sys.exit(head.decode())
def need(n):
    global rest
    while len(rest) < n:
        chunk = s.recv(4096)
        if not chunk:
            sys.exit("eof")
        rest += chunk
    data, rest = rest[:n], rest[n:]
    return data
def frame():
    b0, b1 = need(2)
    n = b1 & 0x7f
    if n == 126:
        n = int.from_bytes(need(2), "big")
    elif n == 127:
        n = int.from_bytes(need(8), "big")
    return b0 & 0x80, b0 & 0x0f, need(n)
for _ in range(2):
    fin, opcode, message = frame()
    while not fin:
        fin, _, more = frame()
        message += more
    print(("text " if opcode == 1 else "binary ") + message.decode(), flush=True)
mask = os.urandom(4)
s.sendall(bytes([0x88, 0x82]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate((1000).to_bytes(2, "big"))))
_, opcode, payload = frame()
print("close %d %s" % (int.from_bytes(payload[:2], "big"), payload[2:].decode()), flush=True)
"#;

/// Streams: server-sent events each arrive before the next is sent (one with the value's first half,
/// which is not held once other text follows it, then one with the whole value, masked); a WebSocket's
/// messages and close reason arrive masked (a value cut across two frames too), and permessage-deflate
/// is not offered upstream; trailers arrive masked over HTTP/1.1 and HTTP/2.
#[test]
fn events_websocket_messages_and_trailers_are_masked_as_they_stream() {
    if skip_unless_privileged() {
        return;
    }
    let net = TestNet::new();
    let up = TlsUpstream::new(&net);
    let d = start(&net, &up);
    let user = test_user();
    let bearer = format!("Bearer {}", up.secret);
    let half = &bearer[..bearer.len() / 2];
    for flag in ["--http1.1", "--http2"] {
        let mut client = d
            .exec(&user)
            .args(curl(&[
                flag,
                "-N",
                &format!("https://{API_HOST}/sse-secret?h=authorization&c=sse{flag}"),
            ]))
            .spawn();
        // The upstream sends the second event only once the first has reached the client.
        let first = client.wait_for_line("and more");
        assert_eq!(first.trim_end(), format!("data: {half} and more"), "{flag}");
        up.release_sse();
        let o = client.finish();
        assert_code(&o, 0);
        assert!(
            stdout(&o).contains(&format!("data: {} again\n", stars(&bearer))),
            "{flag}: {}",
            describe(&o)
        );
        assert_no_secret(&up, "events", &stdout(&o));
    }

    for host in [H1_HOST, API_HOST] {
        let tag = format!("c=ws-{host}");
        let o = d
            .exec(&user)
            .args([
                "python3",
                "-c",
                WS_CLIENT,
                host,
                &format!("/ws?h=authorization&{tag}"),
            ])
            .run();
        assert_code(&o, 0);
        let masked_value = stars(&bearer);
        assert_eq!(
            stdout(&o),
            format!(
                "text you sent {masked_value}, thanks\nbinary {masked_value}\nclose 1000 bye {masked_value}\n"
            ),
            "{host}: {}",
            describe(&o)
        );
        let seen = tagged(&up, &tag);
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert!(
            seen[0].header("sec-websocket-extensions").is_empty(),
            "permessage-deflate reached the upstream: {:?}",
            seen[0]
        );
        let line = &audited(&d, host, "/ws", 1)[0];
        assert_eq!(redacted(line), 3, "{line}");
    }

    let py = format!(
        r#"
import socket, ssl
tls = ssl.create_default_context().wrap_socket(socket.create_connection(("{API_HOST}", 443)), server_hostname="{API_HOST}")
tls.settimeout(10)
tls.sendall(b"GET /trailers?h=x-api-key&c=h1-trailers HTTP/1.1\r\nHost: {API_HOST}\r\nTE: trailers\r\nConnection: TE\r\n\r\n")
response = b""
while b"\r\n0\r\n" not in response or not response.endswith(b"\r\n\r\n"):
    chunk = tls.recv(65536)
    if not chunk:
        break
    response += chunk
print(response.decode().lower().split("\r\n0\r\n", 1)[1])
"#
    );
    let o = d.exec(&user).args(["python3", "-c", &py]).run();
    assert_code(&o, 0);
    assert!(
        stdout(&o).contains(&format!("x-echo: {}\r\n", stars(&up.secret))),
        "HTTP/1.1 trailers: {}",
        describe(&o)
    );
    let js = format!(
        r#"
const http2 = require('http2');
const fail = e => {{ console.error(e); process.exit(1); }};
const client = http2.connect('https://{API_HOST}');
client.on('error', fail);
const req = client.request({{ ':path': '/trailers?h=x-api-key&c=h2-trailers' }});
req.on('error', fail);
req.on('trailers', t => console.log('x-echo ' + t['x-echo']));
req.on('data', () => {{}});
req.on('end', () => client.close());
"#
    );
    let o = d.exec(&user).args(["node", "-e", &js]).run();
    assert_code(&o, 0);
    assert_eq!(
        stdout(&o),
        format!("x-echo {}\n", stars(&up.secret)),
        "HTTP/2 trailers: {}",
        describe(&o)
    );
    d.finish();
}

/// `data` compressed by the `tool` (`gzip`, `brotli`, `zstd`), as the system's own tool writes it.
fn compress(tool_name: &str, data: &[u8], dir: &std::path::Path) -> Vec<u8> {
    let input = dir.join(format!("plain-for-{tool_name}"));
    fs::write(&input, data).unwrap();
    let out = Command::new(tool(tool_name))
        .args(["-c"])
        .arg(&input)
        .output()
        .unwrap();
    assert!(out.status.success(), "{tool_name}: {out:?}");
    out.stdout
}

/// A response compressed (gzip, br, zstd) with a secret inside, from an upstream that compresses although
/// it was asked for `identity`: refused with 502 over HTTP/1.1 and HTTP/2, its bytes never delivered.
/// Under `redact = false` the client's own Accept-Encoding goes upstream and such a response passes.
#[test]
fn compressed_responses_are_refused_never_delivered() {
    if skip_unless_privileged_with(&["gzip", "brotli", "zstd"]) {
        return;
    }
    let net = TestNet::new();
    let up = TlsUpstream::new(&net);
    let d = start(&net, &up);
    let user = test_user();
    let plain = format!("the key is Bearer {} and that is all\n", up.secret).repeat(20);
    for (tool_name, coding) in [("gzip", "gzip"), ("brotli", "br"), ("zstd", "zstd")] {
        let coded = compress(tool_name, plain.as_bytes(), d.work.path());
        let file = format!("secret.{coding}");
        up.serve_file(&file, &coded);
        for flag in ["--http1.1", "--http2"] {
            let tag = format!("c=coded-{coding}{flag}");
            let body = d.work.join(format!("body-{coding}{flag}"));
            let _ = fs::remove_file(&body);
            let o = d
                .exec(&user)
                .args(curl(&[
                    flag,
                    "--compressed",
                    "-o",
                    body.to_str().unwrap(),
                    "-w",
                    "%{http_code}",
                    &format!("https://{API_HOST}/encoded/{file}?ce={coding}&{tag}"),
                ]))
                .run();
            let got = fs::read(&body).unwrap_or_default();
            let text = String::from_utf8_lossy(&got);
            assert_eq!(
                stdout(&o),
                "502",
                "{coding} {flag}: {} {text}",
                describe(&o)
            );
            assert!(
                text.contains(&format!("Content-Encoding {coding}")),
                "{coding} {flag}: the refusal says why: {text}"
            );
            assert!(
                !got.windows(16).any(|w| coded.windows(16).any(|c| c == w)),
                "{coding} {flag}: compressed bytes reached the client"
            );
            let seen = tagged(&up, &tag);
            assert_eq!(seen.len(), 1, "{seen:?}");
            assert_eq!(seen[0].header("accept-encoding"), ["identity"], "{seen:?}");
        }
    }
    let lines = audited(&d, API_HOST, "/encoded/secret.gzip", 2);
    assert!(lines.iter().all(|l| l["status"] == 502), "{lines:?}");

    // The switch: unscanned, the client's own Accept-Encoding goes up and the coded body comes back.
    let o = d
        .exec(&user)
        .profile("unredacted")
        .args(curl(&[
            "--http1.1",
            "--compressed",
            &format!("https://{OTHER_HOST}/encoded/secret.gzip?ce=gzip&c=coded-plain"),
        ]))
        .run();
    assert_code(&o, 0);
    assert_eq!(stdout(&o), plain, "{}", describe(&o));
    let seen = tagged(&up, "c=coded-plain");
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_ne!(seen[0].header("accept-encoding"), ["identity"], "{seen:?}");
    d.finish();
}
