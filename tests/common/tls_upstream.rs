//! An HTTPS upstream in U for the interception tests: certificates from a test CA made at run time
//! (passed to the daemon as `upstream_ca`), HTTP/1.1 and HTTP/2 (hyper, ALPN h2 and http/1.1), and
//! a second server whose certificate for the same names comes from another CA the daemon does not
//! trust. Every request either server parses is recorded, so a test sees exactly what arrived.
//!
//! Addresses (added to U's `eth0`; H reaches them on the uplink's /24 and /64):
//!   .3 / ::3  the good server, :443, cert from the test CA for [`GOOD_NAMES`] (and the resolver's
//!             answer for those names);
//!   .4 / ::4  the impostor, :443, cert for the same names plus [`EVIL_HOST`] from the other CA;
//!   .5 / ::5  the good server again, but offering only http/1.1 in ALPN ([`H1_HOST`]);
//!   .6 / ::6  a raw HTTP/1.1 server ([`RAW_HOST`], cert from the test CA): one request per connection,
//!             answered with a body that ends when the connection closes (see [`raw_server`]).
//!
//! Paths: `/echo` (JSON of method, target, version, host, headers; `?quiet` gives header names only),
//! `/upload` (the body's length), `/sse` (`data: first`, then `data: second` once the test calls
//! [`TlsUpstream::release_sse`]), `/big?mib=N` (N MiB), `/ws` (WebSocket echo after an HTTP/1.1
//! upgrade), `/unauthorized` (401) and `/repo.git/...` (a git repository for dumb HTTP, see
//! [`TlsUpstream::serve_git_repo`]).
//! Paths that give back what the daemon injected (redaction tests), `h=NAME` naming the request header:
//! `/split?h=NAME&at=N` (its value in an `x-echo` header, and in a body `[`, value, `]` sent as two
//! chunks or DATA frames cut at its N-th byte, 10 ms apart; `&len`: with a Content-Length),
//! `/sse-secret?h=NAME` (an event with the value's first half then other text, then, once released, one
//! with the whole value), `/trailers?h=NAME` (the value in trailer `x-echo`), `/ws?h=NAME` (before the
//! echo, a text message of two frames cut inside the value, and a binary one with the value; the close
//! it answers gives it as the reason) and `/encoded/FILE?ce=CODING` (a file of
//! [`TlsUpstream::serve_file`] in that Content-Encoding, whatever the request accepts).

use std::convert::Infallible;
use std::fs;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::channel::mpsc as stream_channel;
use futures::SinkExt;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Semaphore;

use super::certs::TestCa;
use super::daemon::DaemonBuilder;
use super::net::{in_netns, TestNet};
use super::servers::tcp_listen;
use super::tools::{describe, ip, tool, unique_suffix, TempDir, STD_PATH};

/// The integration `api` (header injection).
pub const API_HOST: &str = "api.test";
/// The integration `basic` (basic_auth).
pub const BASIC_HOST: &str = "basic.test";
/// In no integration: passed through under egress = allow.
pub const PLAIN_HOST: &str = "plain.test";
/// In the `locked` profile's allow_hosts.
pub const ALLOWED_HOST: &str = "allowed.test";
/// A name the good server's certificate also covers (Host / SNI mismatch tests).
pub const OTHER_HOST: &str = "other.test";
/// Resolves to the impostor.
pub const EVIL_HOST: &str = "evil.test";
/// For an integration a test adds: no certificate of either server covers it.
pub const NOCERT_HOST: &str = "nocert.test";
/// Also in integration `api`; served by a good server that speaks only HTTP/1.1.
pub const H1_HOST: &str = "h1.test";
/// Also in integration `api`; served by [`raw_server`] (HTTP/1.1, bodies delimited by the close).
pub const RAW_HOST: &str = "raw.test";
pub const GOOD_NAMES: &[&str] = &[
    API_HOST,
    BASIC_HOST,
    PLAIN_HOST,
    ALLOWED_HOST,
    OTHER_HOST,
    H1_HOST,
    RAW_HOST,
];
pub const TEST_CA_CN: &str = "sbx-e2e test CA";
pub const OTHER_CA_CN: &str = "sbx-e2e other CA";
pub const BASIC_USER: &str = "sbx-basic-user";
/// The daemon's variable holding the `t` secret.
pub const SECRET_VAR: &str = "SBX_TEST_SECRET";
/// The content of README in the git repository the upstream serves.
pub const GIT_MARKER: &str = "sbx-e2e git repository";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Server {
    /// Certificate from the test CA (trusted by the daemon through `upstream_ca`).
    Good,
    /// Certificate for the same names from a CA nobody trusts.
    Evil,
}

/// One request as a server parsed it.
#[derive(Clone, Debug)]
pub struct UpstreamRequest {
    pub server: Server,
    pub local: SocketAddr,
    pub peer: SocketAddr,
    /// Which TCP connection it came on, numbered as the servers accept them (a peer's port can come back
    /// for a new connection once the server has closed the old one).
    pub connection: u64,
    /// `HTTP/1.1`, `HTTP/2.0`.
    pub version: String,
    pub method: String,
    /// Path and query.
    pub target: String,
    /// `:authority` or `Host`.
    pub host: Option<String>,
    /// Names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
    pub body_len: u64,
    /// FNV-1a 64 of the body.
    pub body_fnv: u64,
}

impl UpstreamRequest {
    /// Every value of header `name`.
    pub fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }

    pub fn query(&self) -> &str {
        self.target.split_once('?').map_or("", |(_, q)| q)
    }

    /// Whether any header name or value, or the target, contains `needle`.
    pub fn mentions(&self, needle: &str) -> bool {
        self.target.contains(needle)
            || self
                .headers
                .iter()
                .any(|(n, v)| n.contains(needle) || v.contains(needle))
    }
}

pub fn fnv64(data: &[u8], mut hash: u64) -> u64 {
    for &b in data {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}
pub const FNV64_INIT: u64 = 0xcbf2_9ce4_8422_2325;

type Log = Arc<Mutex<Vec<UpstreamRequest>>>;
type ProxyBody = BoxBody<Bytes, Infallible>;

/// Streams the servers allow at once on one HTTP/2 connection: few, so that a test can go past it.
pub const UPSTREAM_MAX_STREAMS: u32 = 4;

struct State {
    server: Server,
    log: Log,
    sse_release: Arc<Semaphore>,
    sse_abandoned: Arc<AtomicU64>,
    www: PathBuf,
}

/// The HTTPS servers in U; dropping this stops them.
pub struct TlsUpstream {
    /// 0755: the test CA (`ca.pem`, 0644, so the test user can pass it to curl), the other CA, the
    /// file secret (0600) and the served files.
    pub dir: TempDir,
    pub ca_pem: PathBuf,
    pub other_ca_pem: PathBuf,
    pub good4: Ipv4Addr,
    pub good6: Ipv6Addr,
    pub evil4: Ipv4Addr,
    pub evil6: Ipv6Addr,
    /// The good server without h2 ([`H1_HOST`]).
    pub h1_4: Ipv4Addr,
    pub h1_6: Ipv6Addr,
    /// The raw server ([`RAW_HOST`]).
    pub raw4: Ipv4Addr,
    pub raw6: Ipv6Addr,
    /// The value of secret `t` (header integration `api`), from the daemon's environment.
    pub secret: String,
    /// The value of secret `b` (basic_auth integration `basic`), from a file.
    pub basic_secret: String,
    pub basic_secret_file: PathBuf,
    www: PathBuf,
    log: Log,
    sse_release: Arc<Semaphore>,
    sse_abandoned: Arc<AtomicU64>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl TlsUpstream {
    /// Adds the servers' addresses to U and their names to the test resolver, and starts them.
    pub fn new(net: &TestNet) -> TlsUpstream {
        let [a, b, c, _] = net.u4.octets();
        let good4 = Ipv4Addr::new(a, b, c, 3);
        let evil4 = Ipv4Addr::new(a, b, c, 4);
        let s = net.u6.segments();
        let good6 = Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 3);
        let evil6 = Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 4);
        let h1_4 = Ipv4Addr::new(a, b, c, 5);
        let h1_6 = Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 5);
        let raw4 = Ipv4Addr::new(a, b, c, 6);
        let raw6 = Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 6);
        for addr in [good4, evil4, h1_4, raw4] {
            ip(
                &net.u,
                &["addr", "add", &format!("{addr}/32"), "dev", "eth0"],
            );
        }
        for addr in [good6, evil6, h1_6, raw6] {
            ip(
                &net.u,
                &[
                    "addr",
                    "add",
                    &format!("{addr}/128"),
                    "dev",
                    "eth0",
                    "nodad",
                ],
            );
        }
        for name in GOOD_NAMES {
            if *name == H1_HOST {
                net.add_dns_name(name, h1_4, h1_6);
            } else if *name == RAW_HOST {
                net.add_dns_name(name, raw4, raw6);
            } else {
                net.add_dns_name(name, good4, good6);
            }
        }
        net.add_dns_name(EVIL_HOST, evil4, evil6);

        let dir = TempDir::new("tls", 0o755);
        let www = dir.join("www");
        fs::create_dir(&www).unwrap();
        let test_ca = TestCa::new(TEST_CA_CN);
        let other_ca = TestCa::new(OTHER_CA_CN);
        let ca_pem = dir.join("ca.pem");
        let other_ca_pem = dir.join("other-ca.pem");
        for (path, pem) in [(&ca_pem, &test_ca.pem), (&other_ca_pem, &other_ca.pem)] {
            fs::write(path, pem).unwrap();
            fs::set_permissions(path, fs::Permissions::from_mode(0o644)).unwrap();
        }
        let suffix = unique_suffix();
        let secret = format!("sbx-e2e-secret-{suffix}");
        let basic_secret = format!("sbx-e2e-basic-{suffix}");
        let basic_secret_file = dir.join("basic.key");
        fs::write(&basic_secret_file, format!("{basic_secret}\n")).unwrap();
        fs::set_permissions(&basic_secret_file, fs::Permissions::from_mode(0o600)).unwrap();

        let mut evil_names = GOOD_NAMES.to_vec();
        evil_names.push(EVIL_HOST);
        let both: &[&[u8]] = &[b"h2", b"http/1.1"];
        let good_tls = server_config(test_ca.leaf(GOOD_NAMES), both);
        let h1_tls = server_config(test_ca.leaf(GOOD_NAMES), &[b"http/1.1"]);
        let evil_tls = server_config(other_ca.leaf(&evil_names), both);
        let servers = [
            (good4.into(), Server::Good, good_tls.clone()),
            (good6.into(), Server::Good, good_tls),
            (evil4.into(), Server::Evil, evil_tls.clone()),
            (evil6.into(), Server::Evil, evil_tls),
            (h1_4.into(), Server::Good, h1_tls.clone()),
            (h1_6.into(), Server::Good, h1_tls),
        ];
        let addrs: Vec<std::net::IpAddr> = servers.iter().map(|s| s.0).collect();
        let raw_addrs: Vec<std::net::IpAddr> = vec![raw4.into(), raw6.into()];
        let (listeners, raw_listeners) = in_netns(&net.u, move || {
            let listen = |addrs: Vec<std::net::IpAddr>| {
                addrs
                    .into_iter()
                    .map(|ip| tcp_listen(SocketAddr::new(ip, 443)))
                    .collect::<Vec<_>>()
            };
            (listen(addrs), listen(raw_addrs))
        });
        let raw_tls = server_config(test_ca.leaf(GOOD_NAMES), &[b"http/1.1"]);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("tls-upstream")
            .enable_all()
            .build()
            .expect("tokio runtime for the TLS upstream");
        let log = Log::default();
        let sse_release = Arc::new(Semaphore::new(0));
        let sse_abandoned = Arc::new(AtomicU64::new(0));
        for (listener, (_, server, tls)) in listeners.into_iter().zip(servers) {
            let state = Arc::new(State {
                server,
                log: log.clone(),
                sse_release: sse_release.clone(),
                sse_abandoned: sse_abandoned.clone(),
                www: www.clone(),
            });
            listener.set_nonblocking(true).unwrap();
            let _entered = runtime.enter();
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            runtime.spawn(accept_loop(listener, tls, state));
        }
        for listener in raw_listeners {
            listener.set_nonblocking(true).unwrap();
            let _entered = runtime.enter();
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            runtime.spawn(raw_server(listener, raw_tls.clone(), log.clone()));
        }
        TlsUpstream {
            dir,
            ca_pem,
            other_ca_pem,
            good4,
            good6,
            evil4,
            evil6,
            h1_4,
            h1_6,
            raw4,
            raw6,
            secret,
            basic_secret,
            basic_secret_file,
            www,
            log,
            sse_release,
            sse_abandoned,
            runtime: Some(runtime),
        }
    }

    /// The daemon config for interception: `upstream_ca`, secrets `t` (env) and `b` (file),
    /// integrations `api` (headers) and `basic` (basic_auth); profile `default` gets both, `locked`
    /// (egress deny) allows [`ALLOWED_HOST`], and `apionly` is egress deny with `api`.
    pub fn configure<'n>(&self, builder: DaemonBuilder<'n>) -> DaemonBuilder<'n> {
        builder
            .env(SECRET_VAR, &self.secret)
            .upstream_ca(&self.ca_pem)
            .profile_toml("default", r#"integrations = ["api", "basic"]"#)
            .profile_toml("locked", &format!(r#"allow_hosts = ["{ALLOWED_HOST}"]"#))
            .extra_toml(&format!(
                r#"
[secrets]
t = {{ env = "{SECRET_VAR}" }}
b = {{ file = {file:?} }}

[[integration]]
name = "api"
hosts = ["{API_HOST}", "{H1_HOST}", "{RAW_HOST}"]
headers = {{ Authorization = "Bearer ${{secret:t}}", "X-Api-Key" = "${{secret:t}}" }}

[[integration]]
name = "basic"
hosts = ["{BASIC_HOST}"]
basic_auth = {{ username = "{BASIC_USER}", password = "${{secret:b}}" }}

[[profile]]
name = "apionly"
users = ["*"]
egress = "deny"
integrations = ["api"]
"#,
                file = self.basic_secret_file.display().to_string(),
            ))
    }

    /// What `Authorization` the `basic` integration must send.
    pub fn basic_authorization(&self) -> String {
        format!(
            "Basic {}",
            base64(format!("{BASIC_USER}:{}", self.basic_secret).as_bytes())
        )
    }

    /// Serves `data` as `/encoded/NAME` (in the Content-Encoding the request's `ce` names).
    pub fn serve_file(&self, name: &str, data: &[u8]) {
        fs::write(self.www.join(name), data).unwrap();
    }

    /// Every request either server parsed so far.
    pub fn requests(&self) -> Vec<UpstreamRequest> {
        self.log.lock().unwrap().clone()
    }

    pub fn requests_to(&self, server: Server) -> Vec<UpstreamRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.server == server)
            .collect()
    }

    /// Lets one `/sse` response send its second event and end.
    pub fn release_sse(&self) {
        self.sse_release.add_permits(1);
    }

    /// How many `/sse` responses were dropped by the server's HTTP layer (their stream reset or
    /// connection closed) while waiting to send their second event.
    pub fn sse_abandoned(&self) -> u64 {
        self.sse_abandoned.load(Ordering::SeqCst)
    }

    /// Makes `/repo.git/` a bare repository with one commit (README = [`GIT_MARKER`]) prepared for
    /// git's dumb HTTP protocol.
    pub fn serve_git_repo(&self) {
        let bare = self.www.join("repo.git");
        make_git_repository(&bare, &self.dir.join("git-work"));
        git_in(
            self.dir.path(),
            &["-C", &bare.display().to_string(), "update-server-info"],
        );
    }
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

/// Runs git with no system or user configuration, as a test author and committer; `HOME` is `home`.
fn git_in(home: &Path, args: &[&str]) {
    let out = Command::new(tool("git"))
        .args(args)
        .env_clear()
        .env("PATH", STD_PATH)
        .env("HOME", home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "sbx")
        .env("GIT_AUTHOR_EMAIL", "sbx@e2e.test")
        .env("GIT_COMMITTER_NAME", "sbx")
        .env("GIT_COMMITTER_EMAIL", "sbx@e2e.test")
        .stdin(Stdio::null())
        .output()
        .expect("run git");
    assert!(out.status.success(), "git {args:?}: {}", describe(&out));
}

/// Makes `bare` a bare repository with one commit (README = [`GIT_MARKER`]), through the work tree
/// `work` (whose parent is git's `HOME`).
pub(super) fn make_git_repository(bare: &Path, work: &Path) {
    let (work_s, bare_s) = (work.display().to_string(), bare.display().to_string());
    let git = |args: &[&str]| git_in(work.parent().expect("work is not /"), args);
    fs::create_dir_all(bare.parent().expect("bare is not /")).unwrap();
    git(&["init", "-q", "-b", "main", &work_s]);
    fs::write(work.join("README"), format!("{GIT_MARKER}\n")).unwrap();
    git(&["-C", &work_s, "add", "README"]);
    git(&["-C", &work_s, "commit", "-q", "-m", "first"]);
    git(&["clone", "-q", "--bare", &work_s, &bare_s]);
}

fn server_config(
    (chain, key): (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>),
    alpn: &[&[u8]],
) -> tokio_rustls::TlsAcceptor {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

// ---------------------------------------------------------------------------------------------------
// The servers

async fn accept_loop(
    listener: tokio::net::TcpListener,
    tls: tokio_rustls::TlsAcceptor,
    state: Arc<State>,
) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // As servers that answer small requests do: without it, a response written in two parts waited
        // for the daemon's delayed ACK, 40 ms.
        let _ = tcp.set_nodelay(true);
        let local = tcp.local_addr().unwrap_or(peer);
        static ACCEPTED: AtomicU64 = AtomicU64::new(0);
        let connection = ACCEPTED.fetch_add(1, Ordering::Relaxed);
        let (tls, state) = (tls.clone(), state.clone());
        tokio::spawn(async move {
            let Ok(stream) = tls.accept(tcp).await else {
                return;
            };
            // `goaway` in a query: this connection ends gracefully after that request (an HTTP/2 GOAWAY).
            let goaway = Arc::new(tokio::sync::Notify::new());
            let asked = goaway.clone();
            let service = hyper::service::service_fn(move |request| {
                let at = Accepted {
                    local,
                    peer,
                    connection,
                    goaway: asked.clone(),
                };
                handle(state.clone(), at, request)
            });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder.http2().max_concurrent_streams(UPSTREAM_MAX_STREAMS);
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = goaway.notified() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
}

/// The raw HTTP/1.1 server of [`RAW_HOST`]: one request per connection, recorded as the others record
/// theirs. `/split?h=NAME&at=N` gets the value in its reason phrase and an `x-echo` header, and a body of
/// `[`, value, `]` and a newline cut at the value's N-th byte, 10 ms apart, that ends when the connection
/// closes (no Content-Length, not chunked); anything else a 404, also ended by the close.
async fn raw_server(listener: tokio::net::TcpListener, tls: tokio_rustls::TlsAcceptor, log: Log) {
    static ACCEPTED: AtomicU64 = AtomicU64::new(1 << 32);
    loop {
        let Ok((tcp, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let local = tcp.local_addr().unwrap_or(peer);
        let connection = ACCEPTED.fetch_add(1, Ordering::Relaxed);
        let (tls, log) = (tls.clone(), log.clone());
        tokio::spawn(async move {
            let Ok(mut stream) = tls.accept(tcp).await else {
                return;
            };
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
                if head.len() > 64 * 1024 {
                    return;
                }
            }
            let text = String::from_utf8_lossy(&head).into_owned();
            let mut lines = text.split("\r\n");
            let mut request_line = lines.next().unwrap_or_default().split(' ');
            let method = request_line.next().unwrap_or_default().to_string();
            let target = request_line.next().unwrap_or("/").to_string();
            let headers: Vec<(String, String)> = lines
                .take_while(|line| !line.is_empty())
                .filter_map(|line| line.split_once(':'))
                .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
                .collect();
            let record = UpstreamRequest {
                server: Server::Good,
                local,
                peer,
                connection,
                version: "HTTP/1.1".into(),
                method,
                host: headers
                    .iter()
                    .find(|(n, _)| n == "host")
                    .map(|(_, v)| v.clone()),
                target,
                headers,
                body_len: 0,
                body_fnv: FNV64_INIT,
            };
            log.lock().unwrap().push(record.clone());
            let echoed = record
                .query()
                .split('&')
                .find_map(|p| p.strip_prefix("h="))
                .and_then(|name| record.header(name).first().map(|v| v.to_string()));
            let at: usize = record
                .query()
                .split('&')
                .find_map(|p| p.strip_prefix("at="))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            let parts = match (record.path(), echoed) {
                ("/split", Some(value)) => {
                    let at = at.min(value.len());
                    vec![
                        format!(
                            "HTTP/1.1 200 Echo {value}\r\nX-Echo: {value}\r\nContent-Type: text/plain\r\n\
                             Connection: close\r\n\r\n[{}",
                            &value[..at]
                        ),
                        format!("{}]\n", &value[at..]),
                    ]
                }
                _ => vec!["HTTP/1.1 404 Not Found\r\nConnection: close\r\n\r\nnot found\n".into()],
            };
            for part in parts {
                if stream.write_all(part.as_bytes()).await.is_err() || stream.flush().await.is_err()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let _ = stream.shutdown().await;
        });
    }
}

/// The connection a request came on.
struct Accepted {
    local: SocketAddr,
    peer: SocketAddr,
    connection: u64,
    /// Notified to end the connection after this request.
    goaway: Arc<tokio::sync::Notify>,
}

async fn handle(
    state: Arc<State>,
    at: Accepted,
    mut request: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let headers = request
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let host = request
        .uri()
        .authority()
        .map(|a| a.to_string())
        .or_else(|| {
            request
                .headers()
                .get("host")
                .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
        });
    let mut record = UpstreamRequest {
        server: state.server,
        local: at.local,
        peer: at.peer,
        connection: at.connection,
        version: format!("{:?}", request.version()),
        method: request.method().to_string(),
        target: request
            .uri()
            .path_and_query()
            .map_or("/".to_string(), |p| p.as_str().to_string()),
        host,
        headers,
        body_len: 0,
        body_fnv: FNV64_INIT,
    };
    // The value of the request header `h` names, for the paths that give back what was injected.
    let echoed = record
        .query()
        .split('&')
        .find_map(|p| p.strip_prefix("h="))
        .and_then(|name| record.header(name).first().map(|v| v.to_string()));
    if record.path() == "/ws" {
        state.log.lock().unwrap().push(record);
        return Ok(websocket(&mut request, echoed));
    }
    let mut body = request.into_body();
    let mut client_trailer = None;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            break;
        };
        if let Some(data) = frame.data_ref() {
            record.body_len += data.len() as u64;
            record.body_fnv = fnv64(data, record.body_fnv);
        }
        if let Some(trailers) = frame.trailers_ref() {
            client_trailer = trailers
                .get("x-client-trailer")
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        }
    }
    state.log.lock().unwrap().push(record.clone());
    let response = match record.path() {
        "/echo" => echo(&record),
        "/upload" => text(StatusCode::OK, format!("received {}\n", record.body_len)),
        "/sse" => sse(state.sse_release.clone(), state.sse_abandoned.clone()),
        "/trailers" => with_trailers(client_trailer.as_deref().unwrap_or("none"), echoed),
        "/split" => {
            let at = record
                .query()
                .split('&')
                .find_map(|p| p.strip_prefix("at="))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            let length = record.query().split('&').any(|p| p == "len");
            split(echoed.unwrap_or_default(), at, length)
        }
        "/sse-secret" => sse_secret(state.sse_release.clone(), echoed.unwrap_or_default()),
        path if path.starts_with("/encoded/") => {
            let coding = record
                .query()
                .split('&')
                .find_map(|p| p.strip_prefix("ce="))
                .unwrap_or("gzip")
                .to_string();
            let mut response = file(&state.www, &path["/encoded".len()..]);
            response.headers_mut().insert(
                "content-encoding",
                hyper::header::HeaderValue::from_str(&coding).unwrap(),
            );
            response
        }
        "/big" => {
            let mib = record
                .query()
                .split('&')
                .find_map(|p| p.strip_prefix("mib="))
                .and_then(|n| n.parse().ok())
                .unwrap_or(20);
            big(mib)
        }
        // As an API refusing the credentials it was given.
        "/unauthorized" => text(StatusCode::UNAUTHORIZED, "bad credentials\n".into()),
        path if path.starts_with("/repo.git/") => file(&state.www, path),
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    };
    // `close`: this HTTP/1.1 connection ends after the response, as a server ending idle ones would.
    let mut response = response;
    if record.query().split('&').any(|p| p == "goaway") {
        at.goaway.notify_one();
    }
    // hyper leaves HEAD to the service over HTTP/2 (it would send the body); real servers send none.
    if record.method == "HEAD" {
        response = response.map(|_| Empty::new().boxed());
    }
    if record.query().split('&').any(|p| p == "close") {
        response.headers_mut().insert(
            "connection",
            hyper::header::HeaderValue::from_static("close"),
        );
    }
    Ok(response)
}

fn text(status: StatusCode, body: String) -> Response<ProxyBody> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from(body)).boxed())
        .unwrap()
}

fn echo(r: &UpstreamRequest) -> Response<ProxyBody> {
    Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(echo_body(r))).boxed())
        .unwrap()
}

/// The body `/echo` answers `r` with.
pub fn echo_body(r: &UpstreamRequest) -> String {
    let server = format!("{:?}", r.server);
    let quiet = r.query().split('&').any(|p| p == "quiet");
    let body = if quiet {
        json!({
            "server": server,
            "method": r.method,
            "target": r.target,
            "header_names": r.headers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        })
    } else {
        json!({
            "server": server,
            "method": r.method,
            "target": r.target,
            "version": r.version,
            "host": r.host,
            "headers": r.headers,
            "body_len": r.body_len,
        })
    };
    format!("{body}\n")
}

/// A body followed by trailers, one of which says which `x-client-trailer` the request ended with (and
/// `x-echo`, the `echoed` value, if any).
fn with_trailers(client_trailer: &str, echoed: Option<String>) -> Response<ProxyBody> {
    let mut trailers = hyper::HeaderMap::new();
    trailers.insert(
        "x-upstream-trailer",
        hyper::header::HeaderValue::from_static("done"),
    );
    trailers.insert(
        "x-saw-client-trailer",
        hyper::header::HeaderValue::from_str(client_trailer).unwrap(),
    );
    let declared = if let Some(echoed) = echoed {
        trailers.insert(
            "x-echo",
            hyper::header::HeaderValue::from_str(&echoed).unwrap(),
        );
        "x-upstream-trailer, x-saw-client-trailer, x-echo"
    } else {
        "x-upstream-trailer, x-saw-client-trailer"
    };
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
        Ok(Frame::data(Bytes::from_static(b"trailers follow\n"))),
        Ok(Frame::trailers(trailers)),
    ];
    // Declared, as RFC 9110 6.6.2 asks: an HTTP/1.1 server (hyper, here the daemon) sends no others.
    Response::builder()
        .header("content-type", "text/plain")
        .header("trailer", declared)
        .body(StreamBody::new(futures::stream::iter(frames)).boxed())
        .unwrap()
}

/// `[`, `value`, `]` and a newline in two chunks cut at `value`'s `at`-th byte, 10 ms apart, with a
/// Content-Length if `length`; `value` in header `x-echo` too.
fn split(value: String, at: usize, length: bool) -> Response<ProxyBody> {
    let at = at.min(value.len());
    let first = Bytes::from(format!("[{}", &value[..at]));
    let second = Bytes::from(format!("{}]\n", &value[at..]));
    let total = first.len() + second.len();
    let (mut tx, rx) = stream_channel::channel::<Result<Frame<Bytes>, Infallible>>(2);
    tokio::spawn(async move {
        if tx.send(Ok(Frame::data(first))).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let _ = tx.send(Ok(Frame::data(second))).await;
        }
    });
    let mut response = Response::builder()
        .header("content-type", "text/plain")
        .header("x-echo", value.as_str());
    if length {
        response = response.header("content-length", total);
    }
    response.body(StreamBody::new(rx).boxed()).unwrap()
}

/// An event with the first half of `value` then other text; once released, one with all of it.
fn sse_secret(release: Arc<Semaphore>, value: String) -> Response<ProxyBody> {
    let (mut tx, rx) = stream_channel::channel::<Result<Frame<Bytes>, Infallible>>(4);
    tokio::spawn(async move {
        let half = &value[..value.len() / 2];
        let first = Frame::data(Bytes::from(format!("data: {half} and more\n\n")));
        if tx.send(Ok(first)).await.is_err() {
            return;
        }
        if let Ok(Ok(permit)) =
            tokio::time::timeout(Duration::from_secs(20), release.acquire()).await
        {
            permit.forget();
        }
        let second = Frame::data(Bytes::from(format!("data: {value} again\n\n")));
        let _ = tx.send(Ok(second)).await;
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(StreamBody::new(rx).boxed())
        .unwrap()
}

fn sse(release: Arc<Semaphore>, abandoned: Arc<AtomicU64>) -> Response<ProxyBody> {
    let (mut tx, rx) = stream_channel::channel::<Result<Frame<Bytes>, Infallible>>(4);
    tokio::spawn(async move {
        let first = Frame::data(Bytes::from_static(b"data: first\n\n"));
        if tx.send(Ok(first)).await.is_err() {
            return;
        }
        let dropped = async {
            while !tx.is_closed() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        // Bounded, so a test that never releases cannot keep the task forever.
        tokio::select! {
            released = tokio::time::timeout(Duration::from_secs(20), release.acquire()) => {
                if let Ok(Ok(permit)) = released {
                    permit.forget();
                }
            }
            () = dropped => {
                abandoned.fetch_add(1, Ordering::SeqCst);
                return;
            }
        }
        let _ = tx
            .send(Ok(Frame::data(Bytes::from_static(b"data: second\n\n"))))
            .await;
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(StreamBody::new(rx).boxed())
        .unwrap()
}

fn big(mib: u64) -> Response<ProxyBody> {
    const CHUNK: usize = 64 * 1024;
    let (mut tx, rx) = stream_channel::channel::<Result<Frame<Bytes>, Infallible>>(8);
    tokio::spawn(async move {
        let chunk = Bytes::from(vec![b'x'; CHUNK]);
        for _ in 0..mib * (1 << 20) / CHUNK as u64 {
            if tx.send(Ok(Frame::data(chunk.clone()))).await.is_err() {
                return;
            }
        }
    });
    Response::builder()
        .header("content-type", "application/octet-stream")
        .header("content-length", mib << 20)
        .body(StreamBody::new(rx).boxed())
        .unwrap()
}

fn file(www: &Path, path: &str) -> Response<ProxyBody> {
    let rel = path.trim_start_matches('/');
    if rel
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return text(StatusCode::NOT_FOUND, "not found\n".into());
    }
    match fs::read(www.join(rel)) {
        Ok(data) => Response::builder()
            .header("content-type", "application/octet-stream")
            .body(Full::new(Bytes::from(data)).boxed())
            .unwrap(),
        Err(_) => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

/// Answers an HTTP/1.1 `Upgrade: websocket` with 101 and then echoes every frame (after sending
/// `greet`, if given: see the module's documentation).
fn websocket(request: &mut Request<Incoming>, greet: Option<String>) -> Response<ProxyBody> {
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let is_websocket = header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let (true, Some(key)) = (is_websocket, header("sec-websocket-key")) else {
        return text(
            StatusCode::UPGRADE_REQUIRED,
            format!(
                "test upstream: /ws wants an HTTP/1.1 Upgrade: websocket with Sec-WebSocket-Key; got {:?} upgrade={:?}\n",
                request.version(),
                header("upgrade")
            ),
        );
    };
    let on_upgrade = hyper::upgrade::on(request);
    tokio::spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            websocket_echo(TokioIo::new(upgraded), greet).await;
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("upgrade", "websocket")
        .header("connection", "Upgrade")
        .header("sec-websocket-accept", websocket_accept(&key))
        .body(Empty::new().boxed())
        .unwrap()
}

/// RFC 6455 4.2.2: base64(SHA-1(key + GUID)).
pub fn websocket_accept(key: &str) -> String {
    base64(&sha1(
        format!("{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11").as_bytes(),
    ))
}

/// A frame as a server sends it (unmasked).
fn websocket_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n < 65536 => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    out
}

async fn websocket_echo<S: AsyncRead + AsyncWrite + Unpin>(mut io: S, greet: Option<String>) {
    if let Some(value) = &greet {
        let half = value.len() / 2;
        let hello = websocket_frame(false, 1, format!("you sent {}", &value[..half]).as_bytes());
        let rest = websocket_frame(true, 0, format!("{}, thanks", &value[half..]).as_bytes());
        let binary = websocket_frame(true, 2, value.as_bytes());
        // The message's two frames in two writes, 10 ms apart: they cross the daemon in two reads.
        for part in [hello, [rest, binary].concat()] {
            if io.write_all(&part).await.is_err() || io.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    loop {
        let mut head = [0u8; 2];
        if io.read_exact(&mut head).await.is_err() {
            return;
        }
        let opcode = head[0] & 0x0f;
        let mut len = u64::from(head[1] & 0x7f);
        if len == 126 {
            let mut b = [0u8; 2];
            if io.read_exact(&mut b).await.is_err() {
                return;
            }
            len = u64::from(u16::from_be_bytes(b));
        } else if len == 127 {
            let mut b = [0u8; 8];
            if io.read_exact(&mut b).await.is_err() {
                return;
            }
            len = u64::from_be_bytes(b);
        }
        let mut mask = [0u8; 4];
        if head[1] & 0x80 != 0 && io.read_exact(&mut mask).await.is_err() {
            return;
        }
        if len > 1 << 20 {
            return;
        }
        let mut payload = vec![0u8; len as usize];
        if io.read_exact(&mut payload).await.is_err() {
            return;
        }
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
        if let (8, Some(value)) = (opcode, &greet) {
            payload = [
                &1000u16.to_be_bytes()[..],
                format!("bye {value}").as_bytes(),
            ]
            .concat();
        }
        let out = websocket_frame(true, opcode, &payload);
        if io.write_all(&out).await.is_err() || io.flush().await.is_err() || opcode == 8 {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// SHA-1 and base64 (for the WebSocket handshake and basic auth; not dependencies of the crate)

pub fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [
        0x6745_2301,
        0xefcd_ab89,
        0x98ba_dcfe,
        0x1032_5476,
        0xc3d2_e1f0,
    ];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64).wrapping_mul(8)).to_be_bytes());
    for block in msg.chunks(64) {
        let mut w = [0u32; 80];
        for (wi, bytes) in w.iter_mut().zip(block.chunks(4)) {
            *wi = u32::from_be_bytes(bytes.try_into().unwrap());
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5a82_7999),
                20..=39 => (b ^ c ^ d, 0x6ed9_eba1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8f1b_bcdc),
                _ => (b ^ c ^ d, 0xca62_c1d6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 20];
    for (o, x) in out.chunks_mut(4).zip(h) {
        o.copy_from_slice(&x.to_be_bytes());
    }
    out
}

/// Standard base64 with padding.
pub fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
