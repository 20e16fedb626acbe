//! End-to-end tests of issue 23's side doors, each trying to get through one: host Unix sockets
//! (invariant 3), root callers (invariant 4), a table emptied of its rules (invariant 3), caller CA paths
//! swapped for symbolic links (invariant 4). Root only; all traffic stays in the test's namespaces.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::certs;
use common::side_doors::*;
use common::*;
use serde_json::{json, Value};

/// Tries every way to a host Unix socket it is given (JSON in argv[1]) and prints one JSON object: for
/// each way, "reached" or the errno's name. Waits for a line on stdin before trying the socket the host
/// makes after the sandbox started.
const PROBE: &str = r#"
import ctypes, errno, json, os, socket, struct, subprocess, sys, threading, time
a = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
out = {}

def name(e):
    return errno.errorcode.get(e, str(e))

def attempt(what, fn):
    try:
        fn()
        out[what] = "reached"
    except OSError as e:
        out[what] = name(e.errno)

def stream(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(3)
    try:
        s.connect(path)
    finally:
        s.close()

def raw(path):
    return struct.pack("H", socket.AF_UNIX) + path.encode().ljust(108, b"\0")

attempt("existing", lambda: stream(a["existing"]))
attempt("datagram", lambda: socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"x", a["datagram"]))
def sendmsg_datagram():
    socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendmsg([b"x"], [], 0, a["datagram"])
attempt("datagram sendmsg", sendmsg_datagram)
link = os.path.join(a["own_dir"], "link.sock")
os.symlink(a["existing"], link)
attempt("symlink", lambda: stream(link))
fd = os.open(a["existing"], os.O_PATH)
attempt("o_path", lambda: stream("/proc/self/fd/%d" % fd))
os.chdir(os.path.dirname(a["existing"]))
attempt("relative", lambda: stream(os.path.basename(a["existing"])))
attempt("abstract", lambda: stream("\0" + a["abstract"]))

s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
address = ctypes.create_string_buffer(raw(a["existing"]), 110)
got = libc.syscall(ctypes.c_long(0x40000000 | 42), ctypes.c_long(s.fileno()), address, ctypes.c_long(110))
out["x32"] = "reached" if got == 0 else name(ctypes.get_errno())
params = ctypes.create_string_buffer(120)
got = libc.syscall(ctypes.c_long(425), ctypes.c_long(8), params)
out["io_uring_setup"] = "set up" if got >= 0 else name(ctypes.get_errno())
if a["connect32"]:
    status = subprocess.run([a["connect32"], a["existing"]]).returncode
    out["i386"] = {0: "refused", 1: "reached (connect)", 2: "reached (socketcall)", 3: "reached (both)"}.get(status, "exit %d" % status)

# Races: one thread connects while another rewrites the address between the sandbox's own socket and the
# host's, or swaps the descriptor between a TCP socket and a Unix one.
own = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
own.bind(os.path.join(a["own_dir"], "own.sock"))
own.listen(128)
def accept():
    while True:
        own.accept()[0].close()
threading.Thread(target=accept, daemon=True).start()
def race(swap, fd_of):
    stop = time.monotonic() + 1.5
    t = threading.Thread(target=lambda: [swap() for _ in iter(lambda: time.monotonic() < stop, False)])
    t.start()
    calls = 0
    while time.monotonic() < stop:
        libc.connect(fd_of(), address, 110)
        calls += 1
    t.join()
    return calls
buffers = [raw(os.path.join(a["own_dir"], "own.sock")), raw(a["existing"])]
def rewrite():
    ctypes.memmove(address, buffers[1], 110)
    ctypes.memmove(address, buffers[0], 110)
sockets = []
def fresh():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sockets.append(s)
    if len(sockets) > 64:
        sockets.pop(0).close()
    return s.fileno()
out["memory race calls"] = race(rewrite, fresh)
ctypes.memmove(address, buffers[1], 110)
tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
def swap():
    libc.dup2(unix.fileno(), 200)
    libc.dup2(tcp.fileno(), 200)
out["descriptor race calls"] = race(swap, lambda: 200)

print("ready", flush=True)
sys.stdin.readline()
attempt("later", lambda: stream(a["later"]))
print(json.dumps(out), flush=True)
"#;

/// A sandbox of an egress "deny" profile tries every way to host Unix sockets: one a root service made
/// before it started (0777 in /tmp), one made after, a datagram socket, through a symbolic link, an O_PATH
/// descriptor or a relative name, as a 32-bit (i386) program, with x32's numbers, through io_uring, by
/// racing the address in its memory or the descriptor in its table against the check, and a host's
/// abstract socket. None reaches one.
#[test]
fn host_unix_sockets_are_out_of_reach() {
    if skip_unless_privileged_with(&["python3"]) {
        return;
    }
    let net = TestNet::new();
    let d = net.daemon().start();
    let user = test_user();
    let host = TempDir::new("host-sockets", 0o755);
    let existing = HostUnixSocket::stream(&host.join("service.sock"), 0o777, None);
    let datagram = HostUnixSocket::datagram(&host.join("log.sock"));
    let abstract_name = format!("sbx-e2e-{}-abstract", net.suffix);
    let _abstract = abstract_listener(&net.h, &abstract_name);
    let tools = TempDir::new("connect32", 0o755);
    let connect32 = i386_connect_program(tools.path());
    if connect32.is_none() {
        eprintln!("no gcc -m32: the 32-bit program is not tried");
    }
    let own_dir = TempDir::new("own", 0o777);
    let later_path = host.join("later.sock");
    let args = json!({
        "existing": existing.path,
        "datagram": datagram.path,
        "abstract": abstract_name,
        "own_dir": own_dir.path(),
        "later": later_path,
        "connect32": connect32,
    })
    .to_string();
    let mut running = d
        .exec(&user)
        .profile("locked")
        .args(["python3", "-c", PROBE, &args])
        .stdin_piped()
        .timeout(Duration::from_secs(60))
        .spawn();
    running.wait_for_line("ready");
    let later = HostUnixSocket::stream(&later_path, 0o777, None);
    running.write_stdin(b"go\n");
    let o = running.finish();
    assert_code(&o, 0);
    let out: Value = serde_json::from_str(stdout(&o).lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {}", describe(&o)));
    println!("{out}");
    for (way, refused) in [
        ("existing", "EACCES"),
        ("later", "EACCES"),
        ("datagram", "EACCES"),
        ("datagram sendmsg", "EACCES"),
        ("symlink", "EACCES"),
        ("o_path", "EACCES"),
        ("relative", "EACCES"),
        ("x32", "EACCES"),
        ("io_uring_setup", "ENOSYS"),
        // Another network namespace's abstract socket does not exist for the sandbox.
        ("abstract", "ECONNREFUSED"),
    ] {
        assert_eq!(out[way], refused, "{way}: {out}");
    }
    if connect32.is_some() {
        assert_eq!(out["i386"], "refused", "{out}");
    }
    for race in ["memory race calls", "descriptor race calls"] {
        assert!(out[race].as_u64().unwrap_or(0) > 100, "{race}: {out}");
    }
    assert_eq!(existing.reached(), [], "the socket made before the sandbox");
    assert_eq!(
        later.reached(),
        [],
        "the socket made after the sandbox started"
    );
    assert_eq!(datagram.reached(), [], "the datagram socket");
    d.finish();
}

/// Serves a Unix socket of its own in the sandbox's /tmp, connects to it and to the host sockets it is
/// given (argv[1]: JSON {"listed", "unlisted"}), and prints what each gave: the line read or the errno.
const OWN_AND_LISTED: &str = r#"
import errno, json, os, socket, sys, tempfile, threading
a = json.loads(sys.argv[1])
out = {}
def read_line(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect(path)
        return s.makefile().readline().strip()
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
    finally:
        s.close()
own = os.path.join(tempfile.mkdtemp(), "own.sock")
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(own)
server.listen(1)
def serve():
    c, _ = server.accept()
    c.sendall(b"own\n")
    c.close()
threading.Thread(target=serve, daemon=True).start()
out["own"] = read_line(own)
d = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
d.bind(own + ".dgram")
socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"x", own + ".dgram")
out["own datagram"] = d.recv(8).decode()
out["listed"] = read_line(a["listed"])
out["unlisted"] = read_line(a["unlisted"])
print(json.dumps(out), flush=True)
"#;

/// A profile's `unix_sockets` (with %U) opens those sockets and no other, and the host service sees the
/// caller's uid, not root's; sockets the command makes itself (in the sandbox's /tmp) work as before.
/// (On 53ed7b8 `unix_sockets` was an unknown key.)
#[test]
fn listed_and_own_unix_sockets_work() {
    if skip_unless_privileged_with(&["python3"]) {
        return;
    }
    let net = TestNet::new();
    let user = test_user();
    let host = TempDir::new("listed-sockets", 0o755);
    let listed_path = host.join(format!("agent-{}.sock", user.uid));
    let listed = HostUnixSocket::stream(&listed_path, 0o600, Some((user.uid, user.gid)));
    let unlisted = HostUnixSocket::stream(&host.join("other.sock"), 0o777, None);
    let d = net
        .daemon()
        .profile_toml(
            "locked",
            &format!(
                "unix_sockets = [\"{}/agent-%U.sock\"]",
                host.path().display()
            ),
        )
        .start();
    let args = json!({ "listed": listed.path, "unlisted": unlisted.path }).to_string();
    let o = d
        .exec(&user)
        .profile("locked")
        .args(["python3", "-c", OWN_AND_LISTED, &args])
        .run();
    assert_code(&o, 0);
    let out: Value =
        serde_json::from_str(stdout(&o).trim()).unwrap_or_else(|e| panic!("{e}: {}", describe(&o)));
    assert_eq!(
        out,
        json!({ "own": "own", "own datagram": "x", "listed": "hello", "unlisted": "EACCES" })
    );
    let peers = listed.reached();
    assert_eq!(peers.len(), 1, "{peers:?}");
    assert_eq!(
        peers[0].uid, user.uid,
        "the listed socket's peer is the caller"
    );
    assert_eq!(unlisted.reached(), []);
    d.finish();
}

/// Tries to make itself non-dumpable (so that the supervisor could not take its sockets), then connects
/// over TCP to a listener of its own, to its own Unix socket and to the unlisted host socket (argv[1]:
/// JSON {"unlisted"}), and prints what each gave: the line read or the errno.
const UNDUMPABLE: &str = r#"
import ctypes, errno, json, os, socket, sys, tempfile, threading
a = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
out = {}
PR_GET_DUMPABLE, PR_SET_DUMPABLE = 3, 4
got = libc.prctl(PR_SET_DUMPABLE, ctypes.c_ulong(0), 0, 0, 0)
out["prctl"] = "done" if got == 0 else errno.errorcode[ctypes.get_errno()]
out["dumpable"] = libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0)
def read_line(family, address):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect(address)
        return s.makefile().readline().strip()
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
    finally:
        s.close()
def serve(family, address, line):
    server = socket.socket(family, socket.SOCK_STREAM)
    server.bind(address)
    server.listen(1)
    def answer():
        c, _ = server.accept()
        c.sendall(line)
        c.close()
    threading.Thread(target=answer, daemon=True).start()
    return server.getsockname()
tcp = serve(socket.AF_INET, ("127.0.0.1", 0), b"tcp\n")
out["tcp"] = read_line(socket.AF_INET, tcp)
own = serve(socket.AF_UNIX, os.path.join(tempfile.mkdtemp(), "own.sock"), b"own\n")
out["own"] = read_line(socket.AF_UNIX, own)
out["unlisted"] = read_line(socket.AF_UNIX, a["unlisted"])
print(json.dumps(out), flush=True)
"#;

/// The supervisor takes a program's sockets with the rights of a process of the same user, which the
/// kernel refuses for a non-dumpable one. A program asking prctl for that is refused (EPERM); one the
/// kernel made non-dumpable (an executable the caller may run but not read) has its calls served through
/// the keeper. Both keep their TCP and their own Unix sockets, and the host's stay shut. Before, the first
/// program's TCP connect failed (EPERM), and then the second's.
#[test]
fn a_non_dumpable_program_neither_escapes_nor_loses_its_sockets() {
    if skip_unless_privileged_with(&["python3"]) {
        return;
    }
    let net = TestNet::new();
    let d = net.daemon().start();
    let user = test_user();
    let host = TempDir::new("undumpable", 0o755);
    let unlisted = HostUnixSocket::stream(&host.join("service.sock"), 0o777, None);
    let args = json!({ "unlisted": unlisted.path }).to_string();
    let probe = |python: &str| {
        let o = d
            .exec(&user)
            .profile("locked")
            .args([python, "-c", UNDUMPABLE, &args])
            .run();
        assert_code(&o, 0);
        let out: Value = serde_json::from_str(stdout(&o).trim())
            .unwrap_or_else(|e| panic!("{e}: {}", describe(&o)));
        (out, stderr(&o))
    };
    let (out, _) = probe("python3");
    assert_eq!(
        out,
        json!({ "prctl": "EPERM", "dumpable": 1, "tcp": "tcp", "own": "own", "unlisted": "EACCES" })
    );

    // A copy of python3 the test user may execute but not read: exec makes it non-dumpable.
    let unreadable = host.join("python3");
    std::fs::copy(std::fs::canonicalize(tool("python3")).unwrap(), &unreadable).unwrap();
    std::fs::set_permissions(&unreadable, std::fs::Permissions::from_mode(0o711)).unwrap();
    let (out, told) = probe(unreadable.to_str().unwrap());
    assert_eq!(
        out,
        json!({ "prctl": "EPERM", "dumpable": 0, "tcp": "tcp", "own": "own", "unlisted": "EACCES" }),
        "{told}"
    );
    assert!(!told.contains("is not dumpable"), "{told}");
    assert_eq!(unlisted.reached(), []);
    d.finish();
}

/// Connects to the host's own service (argv[1]:8080) every few milliseconds until a line arrives on
/// stdin, then prints the CLOCK_MONOTONIC times (seconds) at which its banner was read.
const RETRY_HOST_SERVICE: &str = r#"
import json, select, socket, sys, time
reached = []
print("ready", flush=True)
while not select.select([sys.stdin], [], [], 0.005)[0]:
    s = socket.socket()
    s.settimeout(0.3)
    try:
        s.connect((sys.argv[1], 8080))
        if s.recv(64):
            reached.append(time.monotonic())
    except OSError:
        pass
    finally:
        s.close()
print(json.dumps(reached), flush=True)
"#;

/// How often the daemon's guard checks the table when it was not told of a change.
const GUARD_PERIOD: Duration = Duration::from_secs(2);

/// CLOCK_MONOTONIC, which Python's time.monotonic() in the sandbox reads too (no time namespace).
fn monotonic() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec.
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) },
        0
    );
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// The host flushes the table, flushes its chain, deletes a rule and replaces the first rule with a plain
/// `return` (as many rules as before, so a guard that counts them misses it), while a sandbox retries the
/// host's own service. Each time the daemon puts the same table back within the guard's period, and the
/// sandbox never reaches the service later than that period after a change. (On 53ed7b8 only a deleted
/// table was noticed; on the guard that counted rules, the replaced rule stayed.)
#[test]
fn a_gutted_or_altered_table_is_restored() {
    if skip_unless_privileged_with(&["python3"]) {
        return;
    }
    let net = TestNet::new();
    let d = net.daemon().start();
    let mut running = d
        .exec(&test_user())
        .args(["python3", "-c", RETRY_HOST_SERVICE, &net.h4.to_string()])
        .stdin_piped()
        .timeout(Duration::from_secs(60))
        .spawn();
    running.wait_for_line("ready");
    let installed = table_content(&net).expect("the table");
    let mut changes = Vec::new();
    for change in ["flush table", "flush chain", "delete rule", "replace rule"] {
        let handle = |needle| {
            rule_handle(&net, needle)
                .unwrap_or_else(|| panic!("no rule with {needle}"))
                .to_string()
        };
        let args: Vec<String> = match change {
            "flush table" => vec!["flush".into(), "table".into()],
            "flush chain" => vec!["flush".into(), "chain".into()],
            "delete rule" => vec!["delete".into(), "rule".into()],
            _ => vec!["replace".into(), "rule".into()],
        };
        let mut args = [args, vec!["inet".into(), "sandbox".into()]].concat();
        match change {
            "flush table" => {}
            "flush chain" => args.push("prerouting".into()),
            "delete rule" => args.extend(["prerouting".into(), "handle".into(), handle("fib")]),
            _ => args.extend([
                "prerouting".into(),
                "handle".into(),
                handle("@ifaces"),
                "return".into(),
            ]),
        }
        let at = monotonic();
        let started = Instant::now();
        nft(&net, &args.iter().map(String::as_str).collect::<Vec<_>>());
        let restored = wait_for(GUARD_PERIOD * 3, || {
            (table_content(&net).as_ref() == Some(&installed)).then(|| started.elapsed())
        });
        let Some(window) = restored else {
            panic!(
                "{change}: the table was not restored\n{:?}\n{}",
                table_content(&net),
                d.logs()
            );
        };
        println!("{change}: restored after {window:?}");
        assert!(window < GUARD_PERIOD, "{change}: restored after {window:?}");
        changes.push(at);
        std::thread::sleep(Duration::from_millis(300));
    }
    running.write_stdin(b"stop\n");
    let o = running.finish();
    assert_code(&o, 0);
    let reached: Vec<f64> = serde_json::from_str(stdout(&o).lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {}", describe(&o)));
    println!("reached the host's service at {reached:?}, changes at {changes:?}");
    for time in reached {
        let time = Duration::from_secs_f64(time);
        assert!(
            changes
                .iter()
                .any(|&at| time >= at && time <= at + GUARD_PERIOD),
            "reached at {time:?}, not within {GUARD_PERIOD:?} of a change at {changes:?}"
        );
    }
    d.finish();
}

/// Root without capabilities still reads every root-owned 0600 file of the host, so "*" and "@root" do
/// not give uid 0 a sandbox: only a profile that names root does, and a refused root is told how to allow
/// it. (On 53ed7b8 root got a sandbox from "*".)
#[test]
fn root_gets_a_sandbox_only_where_named() {
    if skip_unless_privileged() {
        return;
    }
    let net = TestNet::new();
    let d = net
        .daemon()
        .extra_toml("[[profile]]\nname = \"everyone\"\nusers = [\"*\", \"@root\"]\n")
        .start();
    let refused = d.exec(&root()).profile("everyone").args(["true"]).run();
    assert_code(&refused, 125);
    assert!(
        stderr(&refused).contains("to allow it, add \"root\" to the users of profile \"everyone\""),
        "{}",
        describe(&refused)
    );
    // The test user still gets it from "*", and root from a profile that names it.
    assert_code(
        &d.exec(&test_user())
            .profile("everyone")
            .args(["true"])
            .run(),
        0,
    );
    let allowed = d.exec(&root()).profile("rootonly").args(["id", "-u"]).run();
    assert_code(&allowed, 0);
    assert_eq!(stdout(&allowed).trim(), "0");
    d.finish();
}

/// Prints, as JSON, whether the file argv[1] is a mount point in this sandbox, and how many certificates
/// it and the bundle SSL_CERT_FILE names hold.
const VIEW_OF_BUNDLES: &str = r#"
import json, os, sys
victim = sys.argv[1]
mounts = [line.split()[4] for line in open("/proc/self/mountinfo")]
def certificates(path):
    try:
        return open(path).read().count("BEGIN CERTIFICATE")
    except OSError:
        return None
print(json.dumps({"victim mounted": victim in mounts, "victim": certificates(victim),
                  "bundle": certificates(os.environ["SSL_CERT_FILE"])}))
"#;

/// A caller's CA bundle path (SSL_CERT_FILE) that is, or becomes while sandboxes start, a symbolic link
/// to a root-owned file: the sandbox's CA is added to a real file of the caller's, and never mounted over
/// the file the link leads to. (On 53ed7b8 the link was followed and the root's file mounted over.)
#[test]
fn a_ca_bundle_path_swapped_for_a_symlink_mounts_nothing_outside() {
    if skip_unless_privileged_with(&["python3"]) {
        return;
    }
    let net = TestNet::new();
    let d = net.daemon().start();
    let user = test_user();
    let root_dir = TempDir::new("victim", 0o755);
    let victim = root_dir.join("victim.conf");
    // A bundle of root's: a file the caller may read, and whose place nobody but root may take.
    std::fs::write(&victim, certs::TestCa::new("root's own CA").pem).unwrap();
    let own = TempDir::new("bundles", 0o755);
    nix::unistd::chown(own.path(), Some(user.uid.into()), Some(user.gid.into())).unwrap();
    let bundle = own.join("ca.pem");
    let real = own.join("real.pem");
    let caller_ca = certs::TestCa::new("the caller's own CA").pem;
    std::fs::write(&real, &caller_ca).unwrap();
    let view = |expect_ca: bool| -> Value {
        let o = d
            .exec(&user)
            .env("SSL_CERT_FILE", &bundle)
            .args(["python3", "-c", VIEW_OF_BUNDLES])
            .args([&victim])
            .run();
        assert_code(&o, 0);
        let view: Value = serde_json::from_str(stdout(&o).trim())
            .unwrap_or_else(|e| panic!("{e}: {}", describe(&o)));
        assert_eq!(view["victim mounted"], false, "{view}");
        assert_eq!(view["victim"], 1, "root's file as it is: {view}");
        if expect_ca {
            assert_eq!(
                view["bundle"], 2,
                "the caller's certificate and the CA: {view}"
            );
        }
        view
    };

    std::fs::copy(&real, &bundle).unwrap();
    view(true);
    std::fs::remove_file(&bundle).unwrap();
    std::os::unix::fs::symlink(&victim, &bundle).unwrap();
    view(false);

    // The path flips between the caller's file and the link while sandboxes start.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flipper = {
        let (stop, bundle, victim) = (stop.clone(), bundle.clone(), victim.clone());
        let caller_ca = caller_ca.clone();
        let (file, symlink) = (own.join("flip-file"), own.join("flip-link"));
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::fs::write(&file, &caller_ca).unwrap();
                std::fs::rename(&file, &bundle).unwrap();
                std::os::unix::fs::symlink(&victim, &symlink).unwrap();
                std::fs::rename(&symlink, &bundle).unwrap();
            }
        })
    };
    for _ in 0..6 {
        view(false);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    flipper.join().unwrap();
    d.finish();
}
