//! Harness for the privileged end-to-end tests: throwaway network namespaces with test upstreams (HTTP,
//! TCP/UDP echo, DNS), the daemon started inside them, the unprivileged test user, clients run as that
//! user, and the leak checks. Everything a test creates is removed by a guard's `Drop`, also on panic.
//!
//! Topology (no interface in the real host's netns, so no packet can leave the test's namespaces):
//!   H-<suffix>  the test's "host": the daemon runs here; `uplink` 10.a.b.1/24, fd77:x::1/64;
//!               a TCP service on :8080 that sandboxes must never reach.
//!   U-<suffix>  the upstream: `eth0` 10.a.b.2/24, fd77:x::2/64 and 169.254.169.254/32 (a metadata impostor);
//!               HTTP :80, TCP echo :443, UDP echo :9999, DNS :53 (upstream.test; more names with
//!               `TestNet::add_dns_name`).
//!   `tls_upstream::TlsUpstream` adds HTTPS servers on further addresses of U (interception tests).

// Each test binary includes this module and uses a different part of it.
#![allow(dead_code)]

pub mod certs;
pub mod tls_upstream;
pub mod upstream_processes;

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::sys::socket::{
    bind, listen, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType,
    SockaddrStorage,
};
use nix::sys::time::{TimeVal, TimeValLike};
use nix::unistd::Pid;
use serde_json::Value;

/// The binary under test. THE one line to change when these tests move into the main crate:
/// `Some(PathBuf::from(env!("CARGO_BIN_EXE_sandbox")))`.
fn binary_under_test() -> Option<PathBuf> {
    Some(PathBuf::from(env!("CARGO_BIN_EXE_sandbox")))
}

/// PATH for everything the tests run: independent of the caller's PATH, and readable by the test user.
pub const STD_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
pub const TEST_USER: &str = "sbxtest";
pub const TEST_GROUP2: &str = "sbxtest2";
/// Every client and so every sandboxed command carries this variable; the guards use it to find and kill
/// whatever a failed test left running.
pub const RUN_TAG_VAR: &str = "SBX_E2E_RUN";
/// Appears in every body the upstream HTTP server sends.
pub const UPSTREAM_MARKER: &str = "sbx-e2e-upstream";
/// The first line of what the host's own service (H :8080) sends.
pub const HOST_SERVICE_BANNER: &str = "sbx-e2e-host-service";
/// A comment in the daemon's config, to detect that a sandbox could read it.
pub const CONFIG_MARKER: &str = "sbx-e2e-config-marker";
pub const POOL4: &str = "10.233.0.0/16";
pub const POOL6: &str = "fd00:5ba:d::/48";
pub const FWMARK: u64 = 0x5ba;
pub const ROUTE_TABLE: &str = "1466";

const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Bounded wait for asynchronous effects (teardown, audit lines): generous, it only ends a failing test.
pub const SETTLE: Duration = Duration::from_secs(5);
const SERVER_POLL: i64 = 100;

// ---------------------------------------------------------------------------------------------------
// Preconditions

pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// True (after saying why) when this test must be skipped: not root, a tool or the binary missing.
/// With CI=true it fails instead.
pub fn skip_unless_privileged() -> bool {
    skip_if(missing_requirements(true, true))
}

/// [`skip_unless_privileged`], and these tools too.
pub fn skip_unless_privileged_with(tools: &[&str]) -> bool {
    let mut missing = missing_requirements(true, true);
    missing.extend(
        tools
            .iter()
            .filter(|t| find_tool(t).is_none())
            .map(|t| format!("`{t}` not found in {STD_PATH} (scripts/test installs it)")),
    );
    skip_if(missing)
}

/// Like [`skip_unless_privileged`] for tests that need only the binary.
pub fn skip_without_binary() -> bool {
    skip_if(missing_requirements(false, true))
}

/// Like [`skip_unless_privileged`] for tests of the harness itself (no binary needed).
pub fn skip_unless_root() -> bool {
    skip_if(missing_requirements(true, false))
}

fn missing_requirements(privileged: bool, binary: bool) -> Vec<String> {
    let mut missing = Vec::new();
    match binary_under_test() {
        _ if !binary => {}
        None => missing.push("the binary under test is not set (SANDBOX_BIN)".to_string()),
        Some(p) if !p.is_file() => missing.push(format!("{} does not exist", p.display())),
        Some(_) => {}
    }
    if privileged {
        if !nix::unistd::geteuid().is_root() {
            missing.push("not root".to_string());
        }
        for t in [
            "ip", "nft", "curl", "python3", "getent", "sh", "bash", "id", "useradd", "groupadd",
            "usermod",
        ] {
            if find_tool(t).is_none() {
                missing.push(format!("`{t}` not found in {STD_PATH}"));
            }
        }
    }
    missing
}

fn skip_if(missing: Vec<String>) -> bool {
    if missing.is_empty() {
        return false;
    }
    let test = thread::current().name().unwrap_or("?").to_string();
    let why = missing.join("; ");
    if ci() {
        panic!("{test}: cannot run with CI=true: {why}");
    }
    // Straight to fd 2: the test runner's capture hides println!/eprintln! of passing tests.
    let _ = writeln!(io::stderr(), "SKIP {test}: {why}");
    true
}

fn find_tool(name: &str) -> Option<PathBuf> {
    STD_PATH
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// Absolute path of a system tool (the tests' own PATH may point at per-user shims).
pub fn tool(name: &str) -> PathBuf {
    find_tool(name).unwrap_or_else(|| PathBuf::from(name))
}

/// The binary under test, at a path the test user can execute (a private copy when the original's
/// directories are closed to others, e.g. a checkout under /root).
pub fn bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let orig = binary_under_test().expect("binary under test not set");
        if others_can_execute(&orig) {
            return orig;
        }
        let dir = bin_copy_dir();
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let copy = dir.join("sandbox");
        fs::copy(&orig, &copy).unwrap();
        fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).unwrap();
        // SAFETY: registers a plain extern "C" function; it runs once when the test process exits.
        unsafe { libc::atexit(remove_bin_copy) };
        copy
    })
}

fn bin_copy_dir() -> PathBuf {
    PathBuf::from(format!("/tmp/sbx-e2e-bin-{}", std::process::id()))
}

extern "C" fn remove_bin_copy() {
    let _ = fs::remove_dir_all(bin_copy_dir());
}

fn others_can_execute(path: &Path) -> bool {
    let Ok(real) = fs::canonicalize(path) else {
        return false;
    };
    real.ancestors()
        .all(|p| fs::metadata(p).is_ok_and(|m| m.mode() & 0o001 != 0))
}

// ---------------------------------------------------------------------------------------------------
// Running tools (as root, from the test process)

/// Runs a tool and returns its stdout; panics with its stderr when it fails.
pub fn run_tool<S: AsRef<OsStr>>(program: &str, args: &[S]) -> String {
    let out = try_tool(program, args);
    assert!(
        out.status.success(),
        "{program} {:?} failed: {}",
        args.iter().map(|a| a.as_ref()).collect::<Vec<_>>(),
        describe(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn try_tool<S: AsRef<OsStr>>(program: &str, args: &[S]) -> Output {
    Command::new(tool(program))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

/// `ip -n NS ARGS...`, panicking on failure.
pub fn ip(ns: &str, args: &[&str]) -> String {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    run_tool("ip", &all)
}

/// `ip -j -n NS ARGS...` parsed; empty output is an empty list.
pub fn ip_json(ns: &str, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["-j", "-n", ns];
    all.extend_from_slice(args);
    let text = run_tool("ip", &all);
    if text.trim().is_empty() {
        return Vec::new();
    }
    match serde_json::from_str(&text) {
        Ok(Value::Array(v)) => v,
        other => panic!("ip {all:?}: unexpected JSON {other:?} from {text:?}"),
    }
}

/// `nft -j ARGS...` inside netns NS; None when nft fails (e.g. the table does not exist).
pub fn nft_json(ns: &str, args: &[&str]) -> Option<Value> {
    let nft = tool("nft");
    let mut all: Vec<&OsStr> = vec!["netns".as_ref(), "exec".as_ref(), ns.as_ref(), nft.as_ref()];
    all.push("-j".as_ref());
    all.extend(args.iter().map(OsStr::new));
    let out = try_tool("ip", &all);
    if !out.status.success() {
        return None;
    }
    Some(serde_json::from_slice(&out.stdout).expect("nft -j output is JSON"))
}

pub fn describe(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Exit code of a client; a client killed by a signal is itself a failure.
pub fn code(o: &Output) -> i32 {
    o.status
        .code()
        .unwrap_or_else(|| panic!("client died of a signal: {}", describe(o)))
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts exit code `want`, showing the whole output otherwise.
pub fn assert_code(o: &Output, want: i32) {
    assert_eq!(code(o), want, "unexpected exit code: {}", describe(o));
}

/// Polls `f` until it returns Some or `limit` passes.
pub fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------------
// Names and temporary directories

/// pid + counter + time: unique across parallel test threads and across test processes.
pub fn unique_suffix() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{:x}-{n:x}-{:x}", std::process::id(), nanos >> 10)
}

fn fnv(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str, mode: u32) -> TempDir {
        let path = std::env::temp_dir().join(format!("sbx-e2e-{tag}-{}", unique_suffix()));
        fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.path.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

// ---------------------------------------------------------------------------------------------------
// Callers

#[derive(Clone, Debug)]
pub struct Caller {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups, including the primary one.
    pub groups: Vec<u32>,
}

pub fn root() -> Caller {
    Caller {
        name: "root".into(),
        uid: 0,
        gid: 0,
        groups: vec![0],
    }
}

/// The unprivileged test user (created once, idempotently, under a lock shared with other test
/// processes): primary group `sbxtest`, supplementary group `sbxtest2`.
pub fn test_user() -> Caller {
    static USER: OnceLock<Caller> = OnceLock::new();
    USER.get_or_init(|| {
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open("/run/lock/sbx-e2e-user.lock")
            .unwrap();
        let _held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .expect("flock user lock");
        run_tool("groupadd", &["-f", TEST_USER]);
        run_tool("groupadd", &["-f", TEST_GROUP2]);
        if lookup_user().is_none() {
            run_tool(
                "useradd",
                &[
                    "-M",
                    "-N",
                    "-g",
                    TEST_USER,
                    "-G",
                    TEST_GROUP2,
                    "-d",
                    "/nonexistent",
                    "-s",
                    "/bin/sh",
                    TEST_USER,
                ],
            );
        }
        let group2 = nix::unistd::Group::from_name(TEST_GROUP2)
            .unwrap()
            .expect("group sbxtest2");
        if !group2.mem.iter().any(|m| m == TEST_USER) {
            run_tool("usermod", &["-a", "-G", TEST_GROUP2, TEST_USER]);
        }
        let user = lookup_user().expect("user sbxtest exists after useradd");
        let gid = user.gid.as_raw();
        Caller {
            name: TEST_USER.into(),
            uid: user.uid.as_raw(),
            gid,
            groups: vec![gid, group2.gid.as_raw()],
        }
    })
    .clone()
}

fn lookup_user() -> Option<nix::unistd::User> {
    nix::unistd::User::from_name(TEST_USER).ok().flatten()
}

/// A command run as `caller` (uid, gid, groups), with a small fixed environment and cwd.
pub fn caller_command(
    caller: &Caller,
    program: impl AsRef<OsStr>,
    cwd: &Path,
    run_tag: &str,
) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .env("PATH", STD_PATH)
        .env("HOME", cwd)
        .env("LANG", "C.UTF-8")
        .env("USER", &caller.name)
        .env("LOGNAME", &caller.name)
        .env(RUN_TAG_VAR, run_tag)
        .current_dir(cwd);
    if caller.uid != 0 {
        let (uid, gid, groups) = (caller.uid, caller.gid, caller.groups.clone());
        // std's uid()/gid() run before pre_exec and cannot set supplementary groups on stable, so the
        // whole switch happens here, in the order setgroups, setgid, setuid.
        // SAFETY: only async-signal-safe libc calls on memory allocated before fork.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || libc::setresgid(gid, gid, gid) != 0
                    || libc::setresuid(uid, uid, uid) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    cmd
}

// ---------------------------------------------------------------------------------------------------
// Network namespaces and sockets inside them

/// Runs `f` on a fresh thread that entered netns `ns`. Sockets created there stay in that netns for
/// their whole life, whichever thread uses them later.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = Path::new("/var/run/netns").join(ns);
    thread::spawn(move || {
        let fd = File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        setns(&fd, CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

fn bound_socket(addr: SocketAddr, ty: SockType) -> OwnedFd {
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(family, ty, SockFlag::SOCK_CLOEXEC, None).expect("socket");
    setsockopt(&fd, sockopt::ReuseAddr, &true).unwrap();
    if addr.is_ipv6() {
        setsockopt(&fd, sockopt::Ipv6V6Only, &true).unwrap();
    }
    // Lets accept()/recv() wake up regularly, so servers notice that they should stop.
    setsockopt(
        &fd,
        sockopt::ReceiveTimeout,
        &TimeVal::milliseconds(SERVER_POLL),
    )
    .unwrap();
    bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))
        .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    fd
}

fn tcp_listen(addr: SocketAddr) -> TcpListener {
    let fd = bound_socket(addr, SockType::Stream);
    listen(&fd, Backlog::new(256).unwrap()).expect("listen");
    TcpListener::from(fd)
}

fn udp_bind(addr: SocketAddr) -> UdpSocket {
    UdpSocket::from(bound_socket(addr, SockType::Datagram))
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

type TcpHandler = Arc<dyn Fn(TcpStream) + Send + Sync>;

/// Server threads; dropping this stops and joins them.
#[derive(Default)]
struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Servers {
    fn tcp(&mut self, listener: TcpListener, handler: TcpHandler) {
        let stop = self.stop.clone();
        self.threads.push(thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let h = handler.clone();
                        thread::spawn(move || {
                            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                            let _ = s.set_write_timeout(Some(Duration::from_secs(10)));
                            h(s)
                        });
                    }
                    Err(e) if is_timeout(&e) => {}
                    Err(_) => thread::sleep(Duration::from_millis(SERVER_POLL as u64)),
                }
            }
        }));
    }

    fn udp(
        &mut self,
        sock: UdpSocket,
        handler: impl Fn(&UdpSocket, &[u8], SocketAddr) + Send + 'static,
    ) {
        let stop = self.stop.clone();
        self.threads.push(thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::SeqCst) {
                match sock.recv_from(&mut buf) {
                    Ok((n, peer)) => handler(&sock, &buf[..n], peer),
                    Err(e) if is_timeout(&e) => {}
                    Err(_) => thread::sleep(Duration::from_millis(SERVER_POLL as u64)),
                }
            }
        }));
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[derive(Clone, Debug)]
pub struct HttpRequest {
    pub local: SocketAddr,
    pub peer: SocketAddr,
    pub head: String,
}

/// What the test servers saw.
#[derive(Default)]
pub struct Seen {
    pub http: Mutex<Vec<HttpRequest>>,
    pub udp_echo: Mutex<Vec<(SocketAddr, Vec<u8>)>>,
    /// "name TYPE" per DNS question over UDP.
    pub dns: Mutex<Vec<String>>,
    /// "name TYPE" per DNS question over TCP.
    pub dns_tcp: Mutex<Vec<String>>,
    /// Every DNS message that arrived, over either transport, as it came (whether it parses or not).
    pub dns_raw: Mutex<Vec<Vec<u8>>>,
    /// Peers that connected to the host's own service (H :8080).
    pub host_service: Mutex<Vec<SocketAddr>>,
}

fn serve_http(mut s: TcpStream, name: &str, seen: &Seen) {
    let (Ok(local), Ok(peer)) = (s.local_addr(), s.peer_addr()) else {
        return;
    };
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    seen.http.lock().unwrap().push(HttpRequest {
        local,
        peer,
        head: head.clone(),
    });
    let body = format!("{UPSTREAM_MARKER} {name} local={local}\n{head}");
    let resp = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(resp.as_bytes());
}

fn serve_echo(mut s: TcpStream) {
    let mut buf = [0u8; 16384];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// DNS (just enough for glibc's stub resolver)

pub const DNS_NAME: &str = "upstream.test";
const QTYPE_A: u16 = 1;
const QTYPE_AAAA: u16 = 28;

/// Names the test resolver knows, with their A and AAAA answers.
pub type DnsNames = Arc<Mutex<Vec<(String, Ipv4Addr, Ipv6Addr)>>>;

/// Answers A/AAAA for the names in `names`, NODATA for their other types, NXDOMAIN for the rest.
fn dns_answer(q: &[u8], names: &DnsNames) -> Option<(String, Vec<u8>)> {
    if q.len() < 12 || q[2] & 0x80 != 0 || u16::from_be_bytes([q[4], q[5]]) != 1 {
        return None;
    }
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*q.get(i)?);
        i += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        labels.push(String::from_utf8_lossy(q.get(i..i + len)?).to_ascii_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*q.get(i)?, *q.get(i + 1)?]);
    i += 4;
    let question = q.get(12..i)?;
    let name = labels.join(".");
    let entry = names
        .lock()
        .unwrap()
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|&(_, v4, v6)| (v4, v6));
    let known = entry.is_some();
    let rdata = match (entry, qtype) {
        (Some((v4, _)), QTYPE_A) => Some(v4.octets().to_vec()),
        (Some((_, v6)), QTYPE_AAAA) => Some(v6.octets().to_vec()),
        _ => None,
    };
    let mut r = Vec::with_capacity(64);
    r.extend_from_slice(&q[0..2]);
    r.push(0x84 | (q[2] & 0x01)); // QR, AA, the query's RD
    r.push(0x80 | if known { 0 } else { 3 }); // RA, NOERROR or NXDOMAIN
    r.extend_from_slice(&1u16.to_be_bytes());
    r.extend_from_slice(&u16::from(rdata.is_some()).to_be_bytes());
    r.extend_from_slice(&[0, 0, 0, 0]);
    r.extend_from_slice(question);
    if let Some(d) = rdata {
        r.extend_from_slice(&[0xc0, 0x0c]); // the name at offset 12
        r.extend_from_slice(&qtype.to_be_bytes());
        r.extend_from_slice(&1u16.to_be_bytes());
        r.extend_from_slice(&60u32.to_be_bytes());
        r.extend_from_slice(&(d.len() as u16).to_be_bytes());
        r.extend_from_slice(&d);
    }
    Some((format!("{name} {qtype}"), r))
}

/// A DNS query (id 0x5ba0, RD) for `name`/`qtype`.
pub fn dns_query(name: &str, qtype: u16) -> Vec<u8> {
    let mut q = vec![0x5b, 0xa0, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    q
}

/// (rcode, addresses) of a response to [`dns_query`].
pub fn dns_parse_response(r: &[u8]) -> (u8, Vec<IpAddr>) {
    assert!(r.len() >= 12 && r[0..2] == [0x5b, 0xa0] && r[2] & 0x80 != 0);
    let rcode = r[3] & 0x0f;
    let ancount = u16::from_be_bytes([r[6], r[7]]);
    let mut i = 12;
    while r[i] != 0 {
        i += 1 + usize::from(r[i]);
    }
    i += 5;
    let mut addrs = Vec::new();
    for _ in 0..ancount {
        assert_eq!(r[i] & 0xc0, 0xc0, "answer names are compressed pointers");
        let rdlen = usize::from(u16::from_be_bytes([r[i + 10], r[i + 11]]));
        let d = &r[i + 12..i + 12 + rdlen];
        match rdlen {
            4 => addrs.push(IpAddr::from(<[u8; 4]>::try_from(d).unwrap())),
            16 => addrs.push(IpAddr::from(<[u8; 16]>::try_from(d).unwrap())),
            _ => {}
        }
        i += 12 + rdlen;
    }
    (rcode, addrs)
}

pub const DNS_TYPE_A: u16 = QTYPE_A;
pub const DNS_TYPE_AAAA: u16 = QTYPE_AAAA;

// ---------------------------------------------------------------------------------------------------
// TestNet

/// Deletes the namespaces and /etc/netns/<H> and kills whatever still runs with this test's tag.
struct NetnsGuard {
    names: Vec<String>,
    etc_dir: PathBuf,
    run_tag: String,
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        for pid in tagged_processes(&self.run_tag) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        for n in &self.names {
            let _ = Command::new(tool("ip"))
                .args(["netns", "del", n])
                .stderr(Stdio::null())
                .status();
        }
        let _ = fs::remove_dir_all(&self.etc_dir);
    }
}

pub struct TestNet {
    pub suffix: String,
    /// The "host" netns the daemon runs in.
    pub h: String,
    /// The upstream netns.
    pub u: String,
    pub h4: Ipv4Addr,
    pub u4: Ipv4Addr,
    pub h6: Ipv6Addr,
    pub u6: Ipv6Addr,
    /// An address of U that plays the cloud metadata service (H routes it to U).
    pub metadata4: Ipv4Addr,
    pub seen: Arc<Seen>,
    /// What the test resolver in U answers (at first only [`DNS_NAME`]).
    pub dns_names: DnsNames,
    servers: Servers,
    guard: NetnsGuard,
}

impl TestNet {
    /// H and U with the veth between them, upstream servers in U and the host's own service in H.
    pub fn new() -> TestNet {
        let suffix = unique_suffix();
        let (h, u) = (format!("H-{suffix}"), format!("U-{suffix}"));
        let guard = NetnsGuard {
            names: vec![h.clone(), u.clone()],
            etc_dir: Path::new("/etc/netns").join(&h),
            run_tag: suffix.clone(),
        };
        let hash = fnv(&suffix);
        // Inside 10.0.0.0/8, never the sandbox pool 10.233/16 nor 10.255/16.
        let a = match 1 + (hash % 253) as u8 {
            233 => 234,
            a => a,
        };
        let b = (hash >> 8) as u8;
        let x = (hash >> 16) as u16;
        let h4 = Ipv4Addr::new(10, a, b, 1);
        let u4 = Ipv4Addr::new(10, a, b, 2);
        let h6 = Ipv6Addr::new(0xfd77, x, 0, 0, 0, 0, 0, 1);
        let u6 = Ipv6Addr::new(0xfd77, x, 0, 0, 0, 0, 0, 2);
        let metadata4 = Ipv4Addr::new(169, 254, 169, 254);

        run_tool("ip", &["netns", "add", &h]);
        run_tool("ip", &["netns", "add", &u]);
        ip(&h, &["link", "set", "lo", "up"]);
        ip(&u, &["link", "set", "lo", "up"]);
        ip(
            &h,
            &[
                "link", "add", "uplink", "type", "veth", "peer", "name", "eth0", "netns", &u,
            ],
        );
        ip(&h, &["addr", "add", &format!("{h4}/24"), "dev", "uplink"]);
        ip(
            &h,
            &["addr", "add", &format!("{h6}/64"), "dev", "uplink", "nodad"],
        );
        ip(&u, &["addr", "add", &format!("{u4}/24"), "dev", "eth0"]);
        ip(
            &u,
            &["addr", "add", &format!("{u6}/64"), "dev", "eth0", "nodad"],
        );
        ip(
            &u,
            &["addr", "add", &format!("{metadata4}/32"), "dev", "eth0"],
        );
        ip(&h, &["link", "set", "uplink", "up"]);
        ip(&u, &["link", "set", "eth0", "up"]);
        ip(
            &h,
            &["route", "add", &format!("{metadata4}/32"), "dev", "uplink"],
        );

        let seen = Arc::new(Seen::default());
        let dns_names: DnsNames = Arc::new(Mutex::new(vec![(DNS_NAME.to_string(), u4, u6)]));
        let mut servers = Servers::default();
        let any4 = |port| SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
        let any6 = |port| SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));

        let (http, echo, udp, dns, dns_tcp) = in_netns(&u, move || {
            (
                [tcp_listen(any4(80)), tcp_listen(any6(80))],
                // U's own two addresses only: other addresses of U may serve HTTPS on 443.
                [
                    tcp_listen(SocketAddr::from((u4, 443))),
                    tcp_listen(SocketAddr::from((u6, 443))),
                ],
                [udp_bind(any4(9999)), udp_bind(any6(9999))],
                [udp_bind(any4(53)), udp_bind(any6(53))],
                [tcp_listen(any4(53)), tcp_listen(any6(53))],
            )
        });
        for l in http {
            let (seen, name) = (seen.clone(), u.clone());
            servers.tcp(l, Arc::new(move |s| serve_http(s, &name, &seen)));
        }
        for l in echo {
            servers.tcp(l, Arc::new(serve_echo));
        }
        for s in udp {
            let seen = seen.clone();
            servers.udp(s, move |sock, data, peer| {
                seen.udp_echo.lock().unwrap().push((peer, data.to_vec()));
                let _ = sock.send_to(data, peer);
            });
        }
        for s in dns {
            let (seen, names) = (seen.clone(), dns_names.clone());
            servers.udp(s, move |sock, data, peer| {
                seen.dns_raw.lock().unwrap().push(data.to_vec());
                if let Some((question, answer)) = dns_answer(data, &names) {
                    seen.dns.lock().unwrap().push(question);
                    let _ = sock.send_to(&answer, peer);
                }
            });
        }
        for l in dns_tcp {
            let (seen, names) = (seen.clone(), dns_names.clone());
            servers.tcp(
                l,
                Arc::new(move |mut s: TcpStream| {
                    // RFC 7766 framing: a two-byte length before each message.
                    let mut len = [0u8; 2];
                    while s.read_exact(&mut len).is_ok() {
                        let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
                        if s.read_exact(&mut query).is_err() {
                            return;
                        }
                        seen.dns_raw.lock().unwrap().push(query.clone());
                        let Some((question, answer)) = dns_answer(&query, &names) else {
                            return;
                        };
                        seen.dns_tcp.lock().unwrap().push(question);
                        let mut framed = (answer.len() as u16).to_be_bytes().to_vec();
                        framed.extend_from_slice(&answer);
                        if s.write_all(&framed).is_err() {
                            return;
                        }
                    }
                }),
            );
        }
        let host_service = in_netns(&h, move || [tcp_listen(any4(8080)), tcp_listen(any6(8080))]);
        for l in host_service {
            let seen = seen.clone();
            servers.tcp(
                l,
                Arc::new(move |mut s: TcpStream| {
                    if let Ok(peer) = s.peer_addr() {
                        seen.host_service.lock().unwrap().push(peer);
                    }
                    let _ = s.write_all(format!("{HOST_SERVICE_BANNER}\n").as_bytes());
                }),
            );
        }

        TestNet {
            suffix,
            h,
            u,
            h4,
            u4,
            h6,
            u6,
            metadata4,
            seen,
            dns_names,
            servers,
            guard,
        }
    }

    /// A daemon for this net, to configure and `start()`.
    pub fn daemon(&self) -> DaemonBuilder<'_> {
        DaemonBuilder {
            net: self,
            extra_toml: String::new(),
            daemon_toml: String::new(),
            profile_toml: Vec::new(),
            resolv_conf: format!("nameserver {}\n", self.u4),
            env: Vec::new(),
            stray_file: None,
        }
    }

    /// Makes the test resolver answer `name` with these addresses.
    pub fn add_dns_name(&self, name: &str, v4: Ipv4Addr, v6: Ipv6Addr) {
        self.dns_names
            .lock()
            .unwrap()
            .push((name.to_ascii_lowercase(), v4, v6));
    }

    /// Sends one UDP datagram from H to `to` and waits up to 2 s for the echo.
    pub fn udp_roundtrip_from_h(&self, to: SocketAddr, payload: &[u8]) -> Option<Vec<u8>> {
        let local: SocketAddr = if to.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let sock = in_netns(&self.h, move || UdpSocket::bind(local).unwrap());
        sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        sock.send_to(payload, to).unwrap();
        let mut buf = [0u8; 2048];
        sock.recv_from(&mut buf)
            .ok()
            .map(|(n, _)| buf[..n].to_vec())
    }

    pub fn host_service_connections(&self) -> Vec<SocketAddr> {
        self.seen.host_service.lock().unwrap().clone()
    }

    pub fn http_requests(&self) -> Vec<HttpRequest> {
        self.seen.http.lock().unwrap().clone()
    }

    // --- leak checks -------------------------------------------------------------------------------

    pub fn sbx_links(&self) -> Vec<String> {
        ip_json(&self.h, &["link", "show"])
            .iter()
            .filter_map(|l| l["ifname"].as_str())
            .filter(|n| n.starts_with("sbx"))
            .map(String::from)
            .collect()
    }

    /// `nft -j list table inet sandbox` in H, None when the table does not exist.
    pub fn sandbox_table(&self) -> Option<Value> {
        nft_json(&self.h, &["list", "table", "inet", "sandbox"])
    }

    /// Element counts of the sets `ifaces`, `src4`, `src6`; Err when the table or a set is missing.
    pub fn set_elements(&self) -> Result<Vec<(String, usize)>, String> {
        let table = self
            .sandbox_table()
            .ok_or("table inet sandbox does not exist")?;
        let items = table["nftables"].as_array().cloned().unwrap_or_default();
        ["ifaces", "src4", "src6"]
            .iter()
            .map(|name| {
                let set = items
                    .iter()
                    .find(|i| i["set"]["name"] == *name)
                    .ok_or(format!("set {name} missing in table inet sandbox"))?;
                let n = set["set"]["elem"].as_array().map_or(0, Vec::len);
                Ok((name.to_string(), n))
            })
            .collect()
    }

    /// `ip rule` entries (v4 and v6) that use the sandbox's fwmark or route table.
    pub fn mark_rules(&self) -> Vec<Value> {
        let mut rules = ip_json(&self.h, &["rule", "show"]);
        rules.extend(ip_json(&self.h, &["-6", "rule", "show"]));
        rules
            .into_iter()
            .filter(|r| {
                let mark = r["fwmark"]
                    .as_str()
                    .and_then(|m| u64::from_str_radix(m.trim_start_matches("0x"), 16).ok());
                mark == Some(FWMARK) || r["table"] == ROUTE_TABLE
            })
            .collect()
    }

    /// Routes (v4 and v6) in the sandbox's route table.
    pub fn table_routes(&self) -> Vec<Value> {
        ["-4", "-6"]
            .iter()
            .flat_map(|family| {
                let args = [
                    "-j",
                    "-n",
                    &self.h,
                    family,
                    "route",
                    "show",
                    "table",
                    ROUTE_TABLE,
                ];
                let out = try_tool("ip", &args);
                // A table that was never used or was emptied does not exist for the kernel.
                if stderr(&out).contains("table does not exist") {
                    return Vec::new();
                }
                assert!(out.status.success(), "ip {args:?}: {}", describe(&out));
                match serde_json::from_slice(&out.stdout) {
                    Ok(Value::Array(v)) => v,
                    other => panic!("ip {args:?}: unexpected JSON {other:?}"),
                }
            })
            .collect()
    }

    /// What is left of sandboxes while the daemon runs (empty when clean).
    fn sandbox_leftovers(&self) -> Vec<String> {
        let mut left: Vec<String> = self
            .sbx_links()
            .into_iter()
            .map(|l| format!("link {l}"))
            .collect();
        match self.set_elements() {
            Err(e) => left.push(e),
            Ok(sets) => left.extend(
                sets.into_iter()
                    .filter(|(_, n)| *n > 0)
                    .map(|(s, n)| format!("{n} element(s) in set {s}")),
            ),
        }
        left
    }

    /// While the daemon runs and no sandbox does: no `sbx*` link in H, the sets are empty (and exist).
    /// Waits up to [`SETTLE`] for teardown that finishes after the client returned.
    pub fn assert_no_sandbox_objects(&self) {
        let mut last = Vec::new();
        let clean = wait_for(SETTLE, || {
            last = self.sandbox_leftovers();
            last.is_empty().then_some(())
        });
        assert!(clean.is_some(), "sandbox objects left behind: {last:?}");
    }

    /// While a sandbox runs: its link and its set elements exist (proves the leak checks can see them).
    pub fn assert_sandbox_objects_present(&self) {
        assert!(
            !self.sbx_links().is_empty(),
            "no sbx link in H while a sandbox runs"
        );
        let sets = self.set_elements().unwrap_or_else(|e| panic!("{e}"));
        for (name, n) in sets {
            assert!(n > 0, "set {name} is empty while a sandbox runs");
        }
    }

    /// After the daemon stopped: no table, no fwmark rule, no route in its table, no `sbx*` link.
    pub fn assert_no_daemon_objects(&self) {
        let mut last = Vec::new();
        let clean = wait_for(SETTLE, || {
            last.clear();
            if self.sandbox_table().is_some() {
                last.push("table inet sandbox".to_string());
            }
            last.extend(self.mark_rules().iter().map(|r| format!("rule {r}")));
            last.extend(self.table_routes().iter().map(|r| format!("route {r}")));
            last.extend(self.sbx_links().iter().map(|l| format!("link {l}")));
            last.is_empty().then_some(())
        });
        assert!(clean.is_some(), "left behind by the daemon: {last:?}");
    }
}

// ---------------------------------------------------------------------------------------------------
// Processes

fn read_proc(pid: i32, file: &str) -> Option<Vec<u8>> {
    fs::read(format!("/proc/{pid}/{file}")).ok()
}

fn all_pids() -> Vec<i32> {
    fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Processes whose environment carries this test's run tag (clients and what runs in their sandboxes).
fn tagged_processes(run_tag: &str) -> Vec<i32> {
    let needle = format!("{RUN_TAG_VAR}={run_tag}");
    all_pids()
        .into_iter()
        .filter(|&pid| {
            read_proc(pid, "environ")
                .is_some_and(|env| env.split(|&b| b == 0).any(|kv| kv == needle.as_bytes()))
        })
        .collect()
}

/// Pids of processes owned by `uid` whose argv is exactly `argv`.
pub fn processes_with_argv(uid: u32, argv: &[&str]) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|&pid| {
            let Some(cmdline) = read_proc(pid, "cmdline") else {
                return false;
            };
            let args: Vec<&[u8]> = cmdline
                .strip_suffix(&[0])
                .unwrap_or(&cmdline)
                .split(|&b| b == 0)
                .collect();
            let same =
                args.len() == argv.len() && args.iter().zip(argv).all(|(a, b)| *a == b.as_bytes());
            same && proc_uid(pid) == Some(uid)
        })
        .collect()
}

fn proc_uid(pid: i32) -> Option<u32> {
    let status = String::from_utf8(read_proc(pid, "status")?).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Waits until no process of `uid` runs exactly `argv`; panics naming the survivors otherwise.
pub fn assert_no_process(uid: u32, argv: &[&str]) {
    let gone = wait_for(SETTLE, || {
        processes_with_argv(uid, argv).is_empty().then_some(())
    });
    assert!(
        gone.is_some(),
        "still running {argv:?}: pids {:?}",
        processes_with_argv(uid, argv)
    );
}

/// A unique `sleep` argument, so a test can find exactly its own sleeping process.
pub fn unique_sleep() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    format!(
        "{}.{}{n}",
        1000 + std::process::id() % 9000,
        fnv(&unique_suffix()) % 1000
    )
}

/// Reads a pipe on a thread, line by line, into a channel.
struct PipeReader {
    rx: Receiver<Vec<u8>>,
    collected: Vec<u8>,
}

impl PipeReader {
    fn new(pipe: impl Read + Send + 'static) -> PipeReader {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut r = BufReader::new(pipe);
            loop {
                let mut line = Vec::new();
                match r.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        if tx.send(line).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        PipeReader {
            rx,
            collected: Vec::new(),
        }
    }

    /// Reads until a line containing `want`; None on EOF or timeout.
    fn line_containing(&mut self, want: &str, limit: Duration) -> Option<String> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.rx.recv_timeout(left).ok()?;
            self.collected.extend_from_slice(&line);
            let text = String::from_utf8_lossy(&line).into_owned();
            if text.contains(want) {
                return Some(text);
            }
        }
    }

    /// Everything until EOF, waiting at most `limit` (something in the sandbox may hold the pipe).
    fn drain(&mut self, limit: Duration) -> Vec<u8> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => self.collected.extend_from_slice(&line),
                Err(RecvTimeoutError::Timeout) => {
                    self.collected
                        .extend_from_slice(b"\n[harness: pipe still open, stopped reading]\n");
                    break;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        std::mem::take(&mut self.collected)
    }

    fn so_far(&mut self) -> String {
        while let Ok(line) = self.rx.try_recv() {
            self.collected.extend_from_slice(&line);
        }
        String::from_utf8_lossy(&self.collected).into_owned()
    }
}

/// A running client; dropping it kills it.
pub struct Running {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Option<PipeReader>,
    stderr: PipeReader,
    timeout: Duration,
}

impl Running {
    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    pub fn signal(&self, sig: Signal) {
        kill(self.pid(), sig).expect("signal the client");
    }

    /// Waits (up to 10 s) for a stdout line containing `want`.
    pub fn wait_for_line(&mut self, want: &str) -> String {
        let out = self.stdout.as_mut().expect("stdout is piped");
        match out.line_containing(want, Duration::from_secs(10)) {
            Some(line) => line,
            None => {
                let so_far = out.so_far();
                panic!(
                    "no line containing {want:?} on stdout; stdout so far:\n{so_far}\nstderr:\n{}",
                    self.stderr.so_far()
                )
            }
        }
    }

    pub fn write_stdin(&mut self, data: &[u8]) {
        self.stdin
            .as_mut()
            .expect("stdin is piped")
            .write_all(data)
            .expect("write to client stdin");
    }

    /// Waits for the client (closing its stdin first) and returns its whole output.
    pub fn finish(mut self) -> Output {
        self.stdin = None;
        let deadline = Instant::now() + self.timeout;
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait for client") {
                break s;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let out = self.stdout.as_mut().map(|s| s.so_far()).unwrap_or_default();
                panic!(
                    "client still running after {:?}; stdout:\n{out}\nstderr:\n{}",
                    self.timeout,
                    self.stderr.so_far()
                );
            }
            thread::sleep(Duration::from_millis(10));
        };
        let stdout = self
            .stdout
            .as_mut()
            .map(|s| s.drain(SETTLE))
            .unwrap_or_default();
        let stderr = self.stderr.drain(SETTLE);
        Output {
            status,
            stdout,
            stderr,
        }
    }

    /// Waits for the client's exit status only.
    pub fn wait(mut self, limit: Duration) -> ExitStatus {
        self.timeout = limit;
        self.finish().status
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub enum Input {
    Null,
    Bytes(Vec<u8>),
    Piped,
}

/// `sandbox exec` as some caller, built step by step.
pub struct Exec {
    caller: Caller,
    socket: PathBuf,
    cwd: PathBuf,
    run_tag: String,
    profile: Option<String>,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    stdin: Input,
    stdout_file: Option<File>,
    timeout: Duration,
}

impl Exec {
    pub fn args<I, S>(mut self, args: I) -> Exec
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn profile(mut self, p: &str) -> Exec {
        self.profile = Some(p.into());
        self
    }

    pub fn env(mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> Exec {
        self.env.push((k.as_ref().into(), v.as_ref().into()));
        self
    }

    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Exec {
        self.cwd = dir.into();
        self
    }

    pub fn socket(mut self, path: impl Into<PathBuf>) -> Exec {
        self.socket = path.into();
        self
    }

    pub fn stdin(mut self, data: impl Into<Vec<u8>>) -> Exec {
        self.stdin = Input::Bytes(data.into());
        self
    }

    pub fn stdin_piped(mut self) -> Exec {
        self.stdin = Input::Piped;
        self
    }

    pub fn stdout_file(mut self, f: File) -> Exec {
        self.stdout_file = Some(f);
        self
    }

    /// How long [`Exec::run`] waits for the client before it kills it and fails.
    pub fn timeout(mut self, limit: Duration) -> Exec {
        self.timeout = limit;
        self
    }

    /// The client command line without stdio: `sandbox exec --socket S [--profile P] -- ARGS`.
    pub fn command(&self) -> Command {
        let mut cmd = caller_command(&self.caller, bin(), &self.cwd, &self.run_tag);
        cmd.arg("exec").arg("--socket").arg(&self.socket);
        if let Some(p) = &self.profile {
            cmd.arg("--profile").arg(p);
        }
        cmd.arg("--").args(&self.args);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    pub fn spawn(self) -> Running {
        let mut cmd = self.command();
        cmd.stdin(match self.stdin {
            Input::Null => Stdio::null(),
            Input::Bytes(_) | Input::Piped => Stdio::piped(),
        });
        let piped_stdout = self.stdout_file.is_none();
        cmd.stdout(match self.stdout_file {
            Some(f) => Stdio::from(f),
            None => Stdio::piped(),
        });
        cmd.stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn sandbox exec");
        let stdout = piped_stdout.then(|| PipeReader::new(child.stdout.take().unwrap()));
        let stderr = PipeReader::new(child.stderr.take().unwrap());
        let mut stdin = child.stdin.take();
        if let Input::Bytes(data) = self.stdin {
            let mut pipe = stdin.take().unwrap();
            // A writer thread: the command may not read everything before it answers.
            thread::spawn(move || {
                let _ = pipe.write_all(&data);
            });
        }
        Running {
            child,
            stdin,
            stdout,
            stderr,
            timeout: self.timeout,
        }
    }

    pub fn run(self) -> Output {
        self.spawn().finish()
    }
}

/// Runs `cmd` with stdin from /dev/null and piped stdout/stderr, killing it after `limit`.
pub fn run_command(mut cmd: Command, limit: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    Running {
        stdout: Some(PipeReader::new(child.stdout.take().unwrap())),
        stderr: PipeReader::new(child.stderr.take().unwrap()),
        child,
        stdin: None,
        timeout: limit,
    }
    .finish()
}

// ---------------------------------------------------------------------------------------------------
// The daemon

/// Where [`DaemonBuilder::stray_fd`] puts its file in the daemon.
pub const STRAY_FD: i32 = 20;

pub struct DaemonBuilder<'n> {
    net: &'n TestNet,
    extra_toml: String,
    daemon_toml: String,
    profile_toml: Vec<(String, String)>,
    resolv_conf: String,
    env: Vec<(String, String)>,
    stray_file: Option<PathBuf>,
}

impl<'n> DaemonBuilder<'n> {
    /// Starts the daemon with `path` open at descriptor [`STRAY_FD`], not close-on-exec: what a daemon
    /// started from a careless shell or supervisor inherits.
    pub fn stray_fd(mut self, path: &Path) -> Self {
        self.stray_file = Some(path.to_owned());
        self
    }

    /// TOML appended after the base config (profiles `default`, `locked` (egress deny), `rootonly`).
    pub fn extra_toml(mut self, toml: &str) -> Self {
        self.extra_toml.push_str(toml);
        self
    }

    /// TOML lines added to the base config's `[daemon]` table (e.g. `upstream_ca = [...]`).
    pub fn daemon_toml(mut self, toml: &str) -> Self {
        self.daemon_toml.push_str(toml);
        self.daemon_toml.push('\n');
        self
    }

    /// TOML lines added to the base profile `profile` (`default`, `locked` or `rootonly`), e.g.
    /// `integrations = ["api"]`.
    pub fn profile_toml(mut self, profile: &str, toml: &str) -> Self {
        self.profile_toml.push((profile.into(), toml.into()));
        self
    }

    /// The daemon's /etc/resolv.conf (default: `nameserver <U v4>`).
    pub fn resolv_conf(mut self, text: &str) -> Self {
        self.resolv_conf = text.into();
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    pub fn start(self) -> Daemon<'n> {
        let net = self.net;
        let etc = Path::new("/etc/netns").join(&net.h);
        fs::create_dir_all(&etc).unwrap();
        // `ip netns exec` bind-mounts this over /etc/resolv.conf for the daemon.
        fs::write(etc.join("resolv.conf"), &self.resolv_conf).unwrap();
        let dir = TempDir::new("d", 0o755);
        let work = TempDir::new("w", 0o755);
        let user = test_user();
        nix::unistd::chown(work.path(), Some(user.uid.into()), Some(user.gid.into())).unwrap();
        let mut d = Daemon {
            net,
            config: dir.join("sandbox.toml"),
            socket: dir.join("sandbox.sock"),
            audit_log: dir.join("audit.jsonl"),
            dir,
            work,
            env: self.env,
            daemon_toml: self.daemon_toml,
            profile_toml: self.profile_toml,
            stray_file: self.stray_file,
            child: None,
            starts: 0,
        };
        d.write_config(&d.config_text(&self.extra_toml));
        d.spawn();
        d
    }
}

pub struct Daemon<'n> {
    pub net: &'n TestNet,
    /// Config, socket, audit log and daemon logs (0755: the test user must reach the socket).
    pub dir: TempDir,
    /// The callers' working directory, owned by the test user, apart from `dir` (which the daemon may
    /// hide from sandboxes).
    pub work: TempDir,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub audit_log: PathBuf,
    env: Vec<(String, String)>,
    daemon_toml: String,
    profile_toml: Vec<(String, String)>,
    stray_file: Option<PathBuf>,
    child: Option<Child>,
    starts: u32,
}

impl Daemon<'_> {
    /// The config file text: the base config (with the builder's `daemon_toml` and `profile_toml`)
    /// plus `extra`.
    pub fn config_text(&self, extra: &str) -> String {
        let profile = |name: &str| -> String {
            self.profile_toml
                .iter()
                .filter(|(p, _)| p == name)
                .map(|(_, t)| format!("{t}\n"))
                .collect()
        };
        format!(
            r#"# {CONFIG_MARKER}
[daemon]
socket = "{socket}"
socket_group = "{TEST_USER}"
subnet = "{POOL4}"
subnet6 = "{POOL6}"
audit_log = "{audit}"
dns = ["{dns}"]
{daemon_toml}
[[profile]]
name = "default"
users = ["*"]
{default}
[[profile]]
name = "locked"
users = ["*"]
egress = "deny"
{locked}
[[profile]]
name = "rootonly"
users = ["root"]
{rootonly}
{extra}
"#,
            socket = self.socket.display(),
            audit = self.audit_log.display(),
            dns = self.net.u4,
            daemon_toml = self.daemon_toml,
            default = profile("default"),
            locked = profile("locked"),
            rootonly = profile("rootonly"),
        )
    }

    pub fn write_config(&self, text: &str) {
        fs::write(&self.config, text).unwrap();
    }

    fn log_path(&self, n: u32) -> PathBuf {
        self.dir.join(format!("daemon-{n}.log"))
    }

    /// Everything every daemon run of this test wrote to stdout/stderr.
    pub fn logs(&self) -> String {
        (1..=self.starts)
            .map(|n| {
                format!(
                    "--- daemon run {n} ---\n{}",
                    fs::read_to_string(self.log_path(n)).unwrap_or_default()
                )
            })
            .collect()
    }

    /// Starts `ip netns exec H sandbox daemon --config C` and waits until `ls` answers.
    fn spawn(&mut self) {
        assert!(self.child.is_none(), "daemon already running");
        self.starts += 1;
        let log = File::create(self.log_path(self.starts)).unwrap();
        let mut command = Command::new(tool("ip"));
        command
            .args(["netns", "exec", &self.net.h])
            .arg(bin())
            .arg("daemon")
            .arg("--config")
            .arg(&self.config)
            .env("NO_COLOR", "1")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let stray = self
            .stray_file
            .as_ref()
            .map(|path| File::open(path).unwrap());
        if let Some(stray) = &stray {
            let raw = stray.as_raw_fd();
            // SAFETY: dup2 only, between fork and exec.
            unsafe {
                command.pre_exec(move || {
                    if nix::libc::dup2(raw, STRAY_FD) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = command.spawn().expect("spawn daemon");
        drop(stray);
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                panic!("daemon exited during start-up: {status}\n{}", self.logs());
            }
            if self.ls().status.success() {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "daemon not ready after {READY_TIMEOUT:?} (`ls` fails)\n{}",
                    self.logs()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the daemon again (same config, socket and netns) after it stopped.
    pub fn restart(&mut self) {
        self.spawn();
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("daemon running").id() as i32)
    }

    pub fn signal(&self, sig: Signal) {
        kill(self.pid(), sig).expect("signal the daemon");
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    /// Waits for the daemon to exit; panics (with its logs) after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("daemon running");
        let status = wait_for(limit, || child.try_wait().unwrap());
        match status {
            Some(s) => {
                self.child = None;
                s
            }
            None => panic!("daemon still running after {limit:?}\n{}", self.logs()),
        }
    }

    pub fn kill9(&mut self) {
        self.signal(Signal::SIGKILL);
        let status = self.wait_exit(Duration::from_secs(10));
        assert_eq!(status.signal(), Some(libc::SIGKILL));
    }

    /// `sandbox ls --socket S` as root.
    pub fn ls(&self) -> Output {
        Command::new(bin())
            .arg("ls")
            .arg("--socket")
            .arg(&self.socket)
            .stdin(Stdio::null())
            .output()
            .expect("run sandbox ls")
    }

    /// `sandbox exec` as `caller` against this daemon; add args and run or spawn.
    pub fn exec(&self, caller: &Caller) -> Exec {
        Exec {
            caller: caller.clone(),
            socket: self.socket.clone(),
            cwd: self.work.path().to_owned(),
            run_tag: self.net.suffix.clone(),
            profile: None,
            args: Vec::new(),
            env: Vec::new(),
            stdin: Input::Null,
            stdout_file: None,
            timeout: CLIENT_TIMEOUT,
        }
    }

    /// A command as `caller` in this test's work dir (e.g. a python3 driving the client on a pty).
    pub fn caller_command(&self, caller: &Caller, program: impl AsRef<OsStr>) -> Command {
        caller_command(caller, program, self.work.path(), &self.net.suffix)
    }

    /// The audit log's JSON lines (panics on a line that is not JSON).
    pub fn audit_lines(&self) -> Vec<Value> {
        let text = fs::read_to_string(&self.audit_log).unwrap_or_default();
        // A line the daemon is writing now is not complete yet.
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        complete
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line {l:?}: {e}")))
            .collect()
    }

    /// Namespaces the daemon holds open (by descriptor) while no sandbox runs: those of an ended sandbox
    /// would outlive it, with whatever is inside them.
    pub fn held_namespaces(&self) -> Vec<String> {
        let Some(pid) = self.child.as_ref().map(Child::id) else {
            return Vec::new();
        };
        fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|entries| {
                entries
                    .filter_map(|entry| fs::read_link(entry.ok()?.path()).ok())
                    .map(|target| target.display().to_string())
                    .filter(|target| {
                        ["net:[", "mnt:[", "pid:[", "ipc:[", "uts:["]
                            .iter()
                            .any(|kind| target.starts_with(kind))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The end of every test: no sandbox object left, no sandbox namespace held; SIGTERM; exit status 0;
    /// nothing of the daemon left.
    pub fn finish(mut self) {
        self.net.assert_no_sandbox_objects();
        let mut held = Vec::new();
        let released = wait_for(SETTLE, || {
            held = self.held_namespaces();
            held.is_empty().then_some(())
        });
        assert!(
            released.is_some(),
            "the daemon still holds namespaces of ended sandboxes: {held:?}"
        );
        self.signal(Signal::SIGTERM);
        let status = self.wait_exit(Duration::from_secs(15));
        assert!(status.success(), "daemon exit on SIGTERM: {status}");
        self.net.assert_no_daemon_objects();
    }
}

impl Drop for Daemon<'_> {
    fn drop(&mut self) {
        if thread::panicking() {
            if let Some(c) = &self.child {
                eprintln!(
                    "--- daemon process tree ---\n{}",
                    process_tree(c.id() as i32)
                );
            }
            eprintln!("{}", self.logs());
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `pid` and its descendants with state, wait channel and argv: shows where a stuck sandbox hangs.
pub fn process_tree(pid: i32) -> String {
    let parent_of = |p: i32| -> Option<i32> {
        let stat = String::from_utf8(read_proc(p, "stat")?).ok()?;
        stat.rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    let pids = all_pids();
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let p = tree[i];
        tree.extend(pids.iter().copied().filter(|&c| parent_of(c) == Some(p)));
        i += 1;
    }
    tree.iter()
        .map(|&p| {
            let text =
                |f| String::from_utf8_lossy(&read_proc(p, f).unwrap_or_default()).into_owned();
            let state = text("status")
                .lines()
                .find(|l| l.starts_with("State:"))
                .unwrap_or_default()
                .to_string();
            format!(
                "{p} ppid={:?} {state} wchan={} argv={:?}\n",
                parent_of(p),
                text("wchan"),
                text("cmdline").replace('\0', " ")
            )
        })
        .collect()
}
