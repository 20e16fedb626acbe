use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Barrier;
use std::thread::{self, JoinHandle};

use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConnection};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::*;

fn hosts(list: &[&str]) -> Vec<String> {
    list.iter().map(|host| host.to_string()).collect()
}

fn roots(ca: &SandboxCa) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert_der().clone()).unwrap();
    Arc::new(roots)
}

/// What a rustls client does with the chain the server sends.
fn verify(
    trusted: &SandboxCa,
    chain: &[CertificateDer<'static>],
    name: &str,
) -> Result<(), rustls::Error> {
    let verifier =
        WebPkiServerVerifier::builder_with_provider(roots(trusted), Arc::clone(provider()))
            .build()
            .unwrap();
    let name = ServerName::try_from(name.to_owned()).unwrap();
    verifier
        .verify_server_cert(&chain[0], &chain[1..], &name, &[], UnixTime::now())
        .map(|_| ())
}

fn cert(der: &[u8]) -> X509Certificate<'_> {
    let (rest, cert) = X509Certificate::from_der(der).unwrap();
    assert!(rest.is_empty());
    cert
}

/// ECDSA with P-256: the key's curve, and the signature it was signed with.
fn assert_p256_ecdsa(parsed: &X509Certificate<'_>) {
    use x509_parser::oid_registry::{
        OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_SIG_ECDSA_WITH_SHA256,
    };
    let key = &parsed.public_key().algorithm;
    assert_eq!(key.algorithm, OID_KEY_TYPE_EC_PUBLIC_KEY);
    let curve = key.parameters.as_ref().unwrap().as_oid().unwrap();
    assert_eq!(curve, OID_EC_P256);
    assert_eq!(
        parsed.signature_algorithm.algorithm,
        OID_SIG_ECDSA_WITH_SHA256
    );
}

fn describe(name: &GeneralName<'_>) -> String {
    match name {
        GeneralName::DNSName(dns) => format!("dns:{dns}"),
        GeneralName::IPAddress(bytes) => format!("ip:{bytes:?}"),
        other => format!("{other:?}"),
    }
}

/// The CA's permitted and excluded subtrees, as "dns:..." / "ip:[...]".
fn subtrees(der: &[u8]) -> Option<(Vec<String>, Vec<String>)> {
    let cert = cert(der);
    let ext = cert.name_constraints().unwrap()?;
    assert!(ext.critical);
    let list = |trees: &Option<Vec<x509_parser::extensions::GeneralSubtree<'_>>>| {
        trees
            .iter()
            .flatten()
            .map(|tree| describe(&tree.base))
            .collect::<Vec<_>>()
    };
    Some((
        list(&ext.value.permitted_subtrees),
        list(&ext.value.excluded_subtrees),
    ))
}

const NO_IPS: [&str; 2] = ["ip:[0, 0, 0, 0, 0, 0, 0, 0]", "ip:[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]"];

#[test]
fn leaf_verifies_for_its_name_and_no_other() {
    let ca = SandboxCa::new("7", &hosts(&["api.example.com", "other.example.com"])).unwrap();
    let leaf = ca.leaf("api.example.com").unwrap();
    verify(&ca, &leaf.cert, "api.example.com").unwrap();
    assert!(verify(&ca, &leaf.cert, "other.example.com").is_err());
    let other = ca.leaf("other.example.com").unwrap();
    verify(&ca, &other.cert, "other.example.com").unwrap();
}

#[test]
fn another_ca_does_not_trust_the_leaf_even_with_the_same_id() {
    let first = SandboxCa::new("7", &hosts(&["api.example.com"])).unwrap();
    let second = SandboxCa::new("7", &hosts(&["api.example.com"])).unwrap();
    let third = SandboxCa::new("8", &hosts(&["api.example.com"])).unwrap();
    let leaf = first.leaf("api.example.com").unwrap();
    verify(&first, &leaf.cert, "api.example.com").unwrap();
    assert!(verify(&second, &leaf.cert, "api.example.com").is_err());
    assert!(verify(&third, &leaf.cert, "api.example.com").is_err());
    assert_ne!(first.cert_der(), second.cert_der());
}

#[test]
fn chain_is_leaf_then_ca() {
    let ca = SandboxCa::new("7", &hosts(&["api.example.com"])).unwrap();
    let leaf = ca.leaf("api.example.com").unwrap();
    assert_eq!(leaf.cert.len(), 2);
    assert_eq!(&leaf.cert[1], ca.cert_der());
    let parsed = cert(&leaf.cert[0]);
    assert_eq!(parsed.issuer(), cert(ca.cert_der()).subject());
}

#[test]
fn serials_are_random_positive_and_16_bytes() {
    let a = SandboxCa::new("7", &hosts(&["*.example.com"])).unwrap();
    let b = SandboxCa::new("7", &hosts(&["*.example.com"])).unwrap();
    let ders = [
        a.cert_der().to_vec(),
        b.cert_der().to_vec(),
        a.leaf("x.example.com").unwrap().cert[0].to_vec(),
        a.leaf("y.example.com").unwrap().cert[0].to_vec(),
        b.leaf("x.example.com").unwrap().cert[0].to_vec(),
    ];
    let serials: BTreeSet<Vec<u8>> = ders
        .iter()
        .map(|der| cert(der).raw_serial().to_vec())
        .collect();
    assert_eq!(serials.len(), ders.len());
    for serial in serials {
        assert_eq!(serial.len(), 16);
        assert_eq!(serial[0] & 0xc0, 0x40);
    }
}

#[test]
fn ca_certificate_is_a_constrained_short_lived_ca() {
    let before = unix_now().unwrap();
    let ca = SandboxCa::new("abc", &hosts(&["api.example.com"])).unwrap();
    let after = unix_now().unwrap();
    let parsed = cert(ca.cert_der());
    let cn: Vec<_> = parsed
        .subject()
        .iter_common_name()
        .map(|cn| cn.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(cn, ["sandbox abc CA"]);
    assert_eq!(parsed.subject(), parsed.issuer());
    assert_p256_ecdsa(&parsed);
    let bc = parsed.basic_constraints().unwrap().unwrap();
    assert!(bc.critical && bc.value.ca);
    assert_eq!(bc.value.path_len_constraint, Some(0));
    let ku = parsed.key_usage().unwrap().unwrap();
    assert!(ku.critical && ku.value.key_cert_sign() && ku.value.crl_sign());
    assert!(!ku.value.digital_signature());
    let not_before = parsed.validity().not_before.timestamp() as u64;
    let not_after = parsed.validity().not_after.timestamp() as u64;
    assert!((before - HOUR..=after - HOUR).contains(&not_before));
    assert!((before + 30 * DAY..=after + 30 * DAY).contains(&not_after));
    assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(ca.cert_pem().ends_with("-----END CERTIFICATE-----\n"));
}

#[test]
fn leaf_certificate_fields() {
    let ca = SandboxCa::new("7", &hosts(&["*.example.com"])).unwrap();
    let now = unix_now().unwrap();
    let leaf = ca.leaf("API.Example.com.").unwrap();
    let parsed = cert(&leaf.cert[0]);
    let cn: Vec<_> = parsed
        .subject()
        .iter_common_name()
        .map(|cn| cn.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(cn, ["api.example.com"]);
    assert_p256_ecdsa(&parsed);
    let san = parsed.subject_alternative_name().unwrap().unwrap();
    let names: Vec<_> = san.value.general_names.iter().map(describe).collect();
    assert_eq!(names, ["dns:api.example.com"]);
    let eku = parsed.extended_key_usage().unwrap().unwrap();
    assert!(eku.value.server_auth && !eku.value.client_auth && !eku.value.any);
    let bc = parsed.basic_constraints().unwrap().unwrap();
    assert!(!bc.value.ca);
    assert!(parsed
        .key_usage()
        .unwrap()
        .unwrap()
        .value
        .digital_signature());
    let not_before = parsed.validity().not_before.timestamp() as u64;
    let not_after = parsed.validity().not_after.timestamp() as u64;
    assert!(not_before.abs_diff(now - HOUR) <= 2);
    assert!(not_after.abs_diff(now + 7 * DAY) <= 2);
    // Names too long for a commonName go only in the subjectAltName.
    let long = format!("{}.example.com", "a".repeat(60));
    let leaf = ca.leaf(&long).unwrap();
    let parsed = cert(&leaf.cert[0]);
    assert_eq!(parsed.subject().iter_common_name().count(), 0);
    assert!(parsed.subject_alternative_name().unwrap().unwrap().critical);
    verify(&ca, &leaf.cert, &long).unwrap();
}

#[test]
fn name_constraints_as_designed() {
    let ca = SandboxCa::new(
        "7",
        &hosts(&[
            "API.example.com.",
            "*.Example.org",
            "b.example.net",
            "*.b.example.net",
        ]),
    )
    .unwrap();
    let (permitted, excluded) = subtrees(ca.cert_der()).unwrap();
    assert_eq!(
        permitted,
        [
            "dns:.b.example.net",
            "dns:.example.org",
            "dns:api.example.com",
            "dns:b.example.net"
        ]
    );
    // b.example.net's subdomains are wanted by *.b.example.net, so they are not excluded.
    let mut expected = vec!["dns:.api.example.com".to_owned()];
    expected.extend(NO_IPS.map(String::from));
    assert_eq!(excluded, expected);

    let nothing = SandboxCa::new("8", &[]).unwrap();
    let (permitted, excluded) = subtrees(nothing.cert_der()).unwrap();
    assert_eq!(permitted, ["dns:invalid"]);
    assert_eq!(excluded, NO_IPS);
    assert!(matches!(
        nothing.leaf("api.example.com"),
        Err(CaError::NotPermitted(_))
    ));
    assert!(!nothing.permits("invalid"));
}

#[test]
fn exclusions_never_cut_out_a_permitted_host() {
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["example.com", "a.example.com"],
            &["example.com", "a.example.com"],
        ),
        (
            &["example.com", "*.a.example.com"],
            &["example.com", "x.a.example.com"],
        ),
        (
            &["a.example.com", "*.example.com"],
            &["a.example.com", "x.a.example.com"],
        ),
        (
            &["example.com", "*.example.com"],
            &["example.com", "x.example.com"],
        ),
    ];
    let now = unix_now().unwrap();
    for (permitted, names) in cases {
        let ca = SandboxCa::new("7", &hosts(permitted)).unwrap();
        for name in *names {
            assert!(ca.permits(name));
            let san = SanType::DnsName((*name).try_into().unwrap());
            let leaf = ca.minter.mint(san, None, now).unwrap().0;
            verify(&ca, &leaf.cert, name).unwrap_or_else(|e| panic!("{permitted:?} {name}: {e}"));
        }
    }
}

#[test]
fn wildcard_ca_issues_below_the_suffix_only() {
    let ca = SandboxCa::new("7", &hosts(&["*.example.com"])).unwrap();
    for name in ["a.example.com", "a.b.example.com"] {
        let leaf = ca.leaf(name).unwrap();
        verify(&ca, &leaf.cert, name).unwrap();
    }
    for name in [
        "example.org",
        "example.com",
        "aexample.com",
        "a.example.com.evil.org",
    ] {
        assert!(
            matches!(ca.leaf(name), Err(CaError::NotPermitted(_))),
            "{name}"
        );
        assert!(!ca.permits(name));
    }
    assert!(ca.permits("X.Example.COM."));
    for name in [
        "",
        "a..example.com",
        "1.2.3.4",
        "*.example.com",
        "a b.example.com",
    ] {
        assert!(
            matches!(ca.leaf(name), Err(CaError::BadHost { .. })),
            "{name:?}"
        );
    }
}

#[test]
fn bad_hosts_and_ids_are_refused() {
    for host in [
        "a.*.com",
        "*",
        "1.2.3.4",
        "",
        "a..b",
        "ü.example.com",
        "*.*.example.com",
    ] {
        assert!(
            matches!(
                SandboxCa::new("7", &hosts(&[host])),
                Err(CaError::BadHost { .. })
            ),
            "{host:?}"
        );
    }
    assert!(matches!(
        SandboxCa::new("", &[]),
        Err(CaError::BadSandboxId(_))
    ));
    let long = "x".repeat(60);
    assert!(matches!(
        SandboxCa::new(&long, &[]),
        Err(CaError::BadSandboxId(_))
    ));
}

#[test]
fn name_constraints_stop_leaves_the_ca_should_never_sign() {
    let ca = SandboxCa::new("7", &hosts(&["api.example.com", "*.example.org"])).unwrap();
    let now = unix_now().unwrap();
    let rogue = |name: &str| {
        let san = match name.parse() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(name.try_into().unwrap()),
        };
        ca.minter.mint(san, None, now).unwrap().0
    };
    // The control: what the constraints allow verifies.
    for name in ["api.example.com", "a.example.org", "a.b.example.org"] {
        verify(&ca, &rogue(name).cert, name).unwrap();
    }
    for name in [
        "evil.com",
        "x.api.example.com",
        "example.org",
        "1.2.3.4",
        "::1",
    ] {
        let error = verify(&ca, &rogue(name).cert, name).unwrap_err();
        assert!(
            format!("{error:?}").contains("NameConstraint"),
            "{name}: {error:?}"
        );
    }
}

#[test]
fn leaves_are_cached_refreshed_and_never_outlive_the_ca() {
    let ca = SandboxCa::new("7", &hosts(&["api.example.com"])).unwrap();
    let minter = &ca.minter;
    let now = unix_now().unwrap();
    let first = minter.leaf("api.example.com", now).unwrap();
    let again = minter.leaf("API.example.com.", now + 1).unwrap();
    assert!(Arc::ptr_eq(&first, &again));
    let refreshed = minter.leaf("api.example.com", now + 6 * DAY).unwrap();
    assert!(!Arc::ptr_eq(&first, &refreshed));

    let late = minter.ca_not_after - 3 * DAY;
    let short = minter.leaf("api.example.com", late).unwrap();
    let not_after = cert(&short.cert[0]).validity().not_after.timestamp() as u64;
    assert_eq!(not_after, minter.ca_not_after);
    let kept = minter
        .leaf("api.example.com", minter.ca_not_after - 1)
        .unwrap();
    assert!(Arc::ptr_eq(&short, &kept));
    assert!(matches!(
        minter.leaf("api.example.com", minter.ca_not_after),
        Err(CaError::Expired)
    ));
}

#[test]
fn cache_is_bounded_and_evicts_the_oldest() {
    let ca = SandboxCa::new("7", &hosts(&["*.example.com"])).unwrap();
    let first = ca.leaf("n0.example.com").unwrap();
    let second = ca.leaf("n1.example.com").unwrap();
    for n in 2..=CACHE_CAPACITY {
        ca.leaf(&format!("n{n}.example.com")).unwrap();
    }
    let cache = ca.minter.lock_cache();
    assert_eq!(cache.leaves.len(), CACHE_CAPACITY);
    assert_eq!(cache.order.len(), CACHE_CAPACITY);
    drop(cache);
    assert!(Arc::ptr_eq(&second, &ca.leaf("n1.example.com").unwrap()));
    assert!(!Arc::ptr_eq(&first, &ca.leaf("n0.example.com").unwrap()));
}

#[test]
fn concurrent_first_use_hands_out_one_leaf() {
    let ca = Arc::new(SandboxCa::new("7", &hosts(&["api.example.com"])).unwrap());
    let barrier = Arc::new(Barrier::new(8));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (ca, barrier) = (Arc::clone(&ca), Arc::clone(&barrier));
            thread::spawn(move || {
                barrier.wait();
                ca.leaf("api.example.com").unwrap().cert[0].to_vec()
            })
        })
        .collect();
    let leaves: BTreeSet<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(leaves.len(), 1);
}

#[test]
fn debug_shows_no_key_material() {
    let ca = SandboxCa::new("dbg-1", &hosts(&["api.example.com"])).unwrap();
    ca.leaf("api.example.com").unwrap();
    let text = format!("{ca:?} {:?}", ca.server_config());
    assert!(text.contains("dbg-1"), "{text}");
    for window in ca.minter.ca_key.serialized_der().windows(8) {
        let bytes = format!("{window:?}");
        assert!(!text.contains(bytes.trim_matches(['[', ']'])));
    }
    assert!(!text.contains("PRIVATE") && !text.contains("serialized_der"));
}

fn client_config(
    trusted: &SandboxCa,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> ClientConfig {
    let mut config = ClientConfig::builder_with_provider(Arc::clone(provider()))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots(trusted))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config
}

/// A handshake in memory between a rustls client and the CA's server config.
fn handshake(
    ca: &SandboxCa,
    client: ClientConfig,
    name: &str,
) -> Result<ClientConnection, rustls::Error> {
    let name = ServerName::try_from(name.to_owned()).unwrap();
    let mut client = ClientConnection::new(Arc::new(client), name)?;
    let mut server = ServerConnection::new(ca.server_config())?;
    for _ in 0..10 {
        let mut bytes = Vec::new();
        client.write_tls(&mut bytes).unwrap();
        if !bytes.is_empty() {
            server.read_tls(&mut bytes.as_slice()).unwrap();
        }
        let served = server.process_new_packets();
        bytes.clear();
        server.write_tls(&mut bytes).unwrap();
        if !bytes.is_empty() {
            client.read_tls(&mut bytes.as_slice()).unwrap();
        }
        client.process_new_packets()?;
        served?;
        if !client.is_handshaking() && !server.is_handshaking() {
            return Ok(client);
        }
    }
    panic!("the handshake did not finish");
}

#[test]
fn server_config_serves_minted_leaves() {
    let ca = SandboxCa::new("7", &hosts(&["api.example.com"])).unwrap();
    assert!(Arc::ptr_eq(&ca.server_config(), &ca.server_config()));
    assert_eq!(
        ca.server_config().alpn_protocols,
        [b"h2".to_vec(), b"http/1.1".to_vec()]
    );
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let client = handshake(&ca, client_config(&ca, &[version]), "api.example.com").unwrap();
        assert_eq!(client.alpn_protocol(), Some(&b"h2"[..]));
        assert_eq!(client.protocol_version(), Some(version.version));
    }
    // Not permitted: no certificate. Another CA's client: not trusted.
    assert!(handshake(
        &ca,
        client_config(&ca, &[&rustls::version::TLS13]),
        "evil.com"
    )
    .is_err());
    let other = SandboxCa::new("7", &hosts(&["api.example.com"])).unwrap();
    assert!(handshake(
        &ca,
        client_config(&other, &[&rustls::version::TLS13]),
        "api.example.com"
    )
    .is_err());
    // No SNI: no certificate either.
    let mut no_sni = client_config(&ca, &[&rustls::version::TLS13]);
    no_sni.enable_sni = false;
    assert!(handshake(&ca, no_sni, "api.example.com").is_err());
}

/// A directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sandbox-ca-test-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn write(&self, name: &str, content: impl AsRef<[u8]>) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, content).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A TLS server on 127.0.0.1 that answers any request with "ok" and records its first line.
struct TestServer {
    port: u16,
    seen: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    fn start(config: Arc<ServerConfig>) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stop2) = (Arc::clone(&seen), Arc::clone(&stop));
        let thread = thread::spawn(move || {
            for stream in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let (config, seen) = (Arc::clone(&config), Arc::clone(&seen2));
                thread::spawn(move || Self::serve(stream, config, seen));
            }
        });
        TestServer {
            port,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn serve(stream: TcpStream, config: Arc<ServerConfig>, seen: Arc<Mutex<Vec<String>>>) {
        let timeout = Some(Duration::from_secs(30));
        stream.set_read_timeout(timeout).unwrap();
        stream.set_write_timeout(timeout).unwrap();
        let mut tls = rustls::StreamOwned::new(ServerConnection::new(config).unwrap(), stream);
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            match tls.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
        let line = String::from_utf8_lossy(&request)
            .lines()
            .next()
            .unwrap_or("")
            .to_owned();
        seen.lock().unwrap().push(line);
        let _ =
            tls.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n");
        tls.conn.send_close_notify();
        let _ = tls.flush();
    }

    fn saw(&self, path: &str) -> bool {
        let prefix = format!("GET {path}");
        self.seen
            .lock()
            .unwrap()
            .iter()
            .any(|line| line.starts_with(&prefix))
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `program` under a time limit, with no proxy settings: the traffic must stay on loopback.
fn tool(program: &str) -> Command {
    let mut command = Command::new("timeout");
    command.arg("60").arg(program);
    for var in [
        "http_proxy",
        "https_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "all_proxy",
    ] {
        command.env_remove(var);
    }
    command
}

fn run(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("running {command:?} (is it installed?): {e}"))
}

const PYTHON: &str = r#"
import socket, ssl, sys
host, port, cafile, path, strict = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5] == "strict"
ctx = ssl.create_default_context(cafile=cafile)
if strict:
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
    with ctx.wrap_socket(raw, server_hostname=host) as tls:
        tls.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (path, host)).encode())
        sys.stdout.write(tls.recv(4096).decode())
"#;

const NODE: &str = r#"
const tls = require('tls');
const [host, port, path] = [process.argv[1], Number(process.argv[2]), process.argv[3]];
const socket = tls.connect({ host: '127.0.0.1', port, servername: host }, () => {
  socket.write(`GET ${path} HTTP/1.1\r\nHost: ${host}\r\n\r\n`);
});
socket.setEncoding('utf8');
socket.on('data', (data) => { process.stdout.write(data); socket.end(); });
socket.on('error', (error) => { console.error(error.message); process.exit(1); });
"#;

/// The TLS stacks to check: OpenSSL (curl at TLS 1.3 and 1.2, python also in the strict mode
/// that Python 3.13 makes the default, node) and GnuTLS (git, through libcurl-gnutls).
const CLIENTS: [&str; 6] = [
    "curl",
    "curl-tls12",
    "python",
    "python-strict",
    "node",
    "git",
];

/// Asks `https://host:port/tag/client/` from 127.0.0.1:port with `ca_file` as the only root.
/// git fails after the TLS handshake (this is no git server), so success is judged by what
/// the server saw: every client sends its request only after verifying the certificate.
fn fetch(client: &str, ca_file: &Path, host: &str, port: u16, tag: &str, dir: &Path) -> Output {
    let path = format!("/{tag}/{client}/");
    let url = format!("https://{host}:{port}{path}");
    let resolve = format!("{host}:{port}:127.0.0.1");
    let port = port.to_string();
    let mut command = match client {
        "curl" | "curl-tls12" => {
            let mut command = tool("curl");
            command
                .args(["-sS", "--noproxy", "*", "--http1.1", "--max-time", "30"])
                .arg("--cacert")
                .arg(ca_file)
                .args(["--resolve", &resolve, &url]);
            if client == "curl-tls12" {
                command.args(["--tls-max", "1.2"]);
            }
            command
        }
        "python" | "python-strict" => {
            let mode = client.strip_prefix("python-").unwrap_or("default");
            let mut command = tool("python3");
            command
                .args(["-c", PYTHON, host, &port])
                .arg(ca_file)
                .args([&path, mode]);
            command
        }
        "node" => {
            let mut command = tool("node");
            command
                .env("NODE_EXTRA_CA_CERTS", ca_file)
                .args(["-e", NODE, host, &port, &path]);
            command
        }
        "git" => {
            let mut command = tool("git");
            command
                .env("HOME", dir)
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .env("GIT_TERMINAL_PROMPT", "0")
                // `-c http.sslCAInfo=` on the command line did not reach libcurl here; the
                // variable does.
                .env("GIT_SSL_CAINFO", ca_file)
                .env_remove("GIT_SSL_NO_VERIFY")
                .arg("-c")
                .arg(format!("http.curloptResolve={resolve}"))
                .args([
                    "-c",
                    "http.version=HTTP/1.1",
                    "-c",
                    "http.proxy=",
                    "ls-remote",
                    &url,
                ]);
            command
        }
        other => panic!("unknown client {other}"),
    };
    run(&mut command)
}

fn text(output: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn real_clients_accept_the_leaf_and_only_with_this_ca() {
    let ca = SandboxCa::new("7", &hosts(&["api.example.com"])).unwrap();
    let other = SandboxCa::new("7", &hosts(&["api.example.com"])).unwrap();
    let dir = TempDir::new();
    let ca_file = dir.write("ca.pem", ca.cert_pem());
    let other_file = dir.write("other.pem", other.cert_pem());
    let server = TestServer::start(ca.server_config());
    for client in CLIENTS {
        let output = fetch(
            client,
            &ca_file,
            "api.example.com",
            server.port,
            "good",
            &dir.0,
        );
        let path = format!("/good/{client}/");
        assert!(server.saw(&path), "{client}: {}", text(&output));
        if client != "git" {
            assert!(output.status.success(), "{client}: {}", text(&output));
            assert!(
                output.stdout.ends_with(b"ok\n"),
                "{client}: {}",
                text(&output)
            );
        }
        let output = fetch(
            client,
            &other_file,
            "api.example.com",
            server.port,
            "other",
            &dir.0,
        );
        assert!(!output.status.success(), "{client}: {}", text(&output));
        assert!(
            !server.saw(&format!("/other/{client}/")),
            "{client} trusted another CA"
        );
    }
}

/// Always serves the same chain, whatever the SNI.
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }
}

/// Leaves that `leaf` would never mint, served to real clients that ask for exactly the name
/// in them: only the name constraints stand in the way, and every client must honour them.
#[test]
fn real_clients_enforce_the_name_constraints() {
    let ca = SandboxCa::new("7", &hosts(&["api.example.com", "*.example.org"])).unwrap();
    let dir = TempDir::new();
    let ca_file = dir.write("ca.pem", ca.cert_pem());
    let now = unix_now().unwrap();
    for (name, allowed) in [
        ("a.example.org", true),
        ("x.api.example.com", false),
        ("evil.com", false),
        ("example.org", false),
    ] {
        let san = SanType::DnsName(name.try_into().unwrap());
        let (leaf, _) = ca.minter.mint(san, Some(name), now).unwrap();
        let config = ServerConfig::builder_with_provider(Arc::clone(provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Fixed(leaf)));
        let server = TestServer::start(Arc::new(config));
        for client in CLIENTS {
            let output = fetch(client, &ca_file, name, server.port, "rogue", &dir.0);
            let seen = server.saw(&format!("/rogue/{client}/"));
            assert_eq!(seen, allowed, "{client} for {name}: {}", text(&output));
        }
    }
}

/// `openssl verify` checks the chain and the name constraints without a host name: only what
/// the constraints permit passes.
#[test]
fn openssl_enforces_the_name_constraints() {
    let ca = SandboxCa::new("7", &hosts(&["api.example.com", "*.example.org"])).unwrap();
    let dir = TempDir::new();
    let ca_file = dir.write("ca.pem", ca.cert_pem());
    let now = unix_now().unwrap();
    let verify = |name: &str| {
        let san = match name.parse() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(name.try_into().unwrap()),
        };
        let leaf = ca.minter.mint(san, Some(name), now).unwrap().0;
        // OpenSSL 3 reads DER as readily as PEM.
        let leaf_file = dir.write("leaf.der", &leaf.cert[0]);
        run(tool("openssl")
            .args(["verify", "-x509_strict", "-purpose", "sslserver", "-CAfile"])
            .arg(&ca_file)
            .arg(leaf_file))
    };
    for name in ["api.example.com", "a.example.org", "a.b.example.org"] {
        let output = verify(name);
        assert!(output.status.success(), "{name}: {}", text(&output));
    }
    for (name, why) in [
        ("evil.com", "permitted subtree violation"),
        ("example.org", "permitted subtree violation"),
        ("x.api.example.com", "excluded subtree violation"),
        ("10.0.0.1", "excluded subtree violation"),
    ] {
        let output = verify(name);
        assert!(!output.status.success(), "{name}: {}", text(&output));
        assert!(text(&output).contains(why), "{name}: {}", text(&output));
    }
}
